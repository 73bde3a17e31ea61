"""Batched greedy generation from pre-tokenized prompts, with LoRA merged for speed, and answering a test set."""

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from .checkers import score_completions
from .scoring import accuracy


@dataclass
class GenerationArguments:
    """How the commands that only answer (evaluate, calibrate_synthetic) generate. `ZeroSiamConfig` declares its
    max_new_tokens and max_prompt_length from these fields; an adaptation run's batch size is its
    generation_batch_size (default: per_device_train_batch_size)."""

    batch_size: int = field(default=32, metadata={"help": "Prompts per generate() call."})
    max_new_tokens: int = field(default=256, metadata={"help": "Tokens generated per answer."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts longer than this many tokens are cut from the left."}
    )

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}.")


def pad(sequences: list[list[int]], pad_id: int, *, side: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists on the `side` ("left" for prompts, "right" for answers) into `input_ids` and
    `attention_mask`, both [B, T] with T at least 1, so that a batch of empty answers still has a column."""
    width = max(1, max(len(s) for s in sequences))
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        if seq:
            cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long, device=device)
            attention_mask[row, cols] = 1
    return input_ids, attention_mask


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """[B, G] mask of the generated tokens up to and including the first end-of-sequence token."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # Positions after the first EOS have a positive count of earlier EOS tokens.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def greedy_config(model, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding that stops at any of the model's end tokens, whatever sampling defaults the model ships."""
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos if eos is not None else tokenizer.eos_token_id]
    if tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=model.generation_config.bos_token_id,
    )


@contextmanager
def merged_lora(model):
    """Generate through base weights with the active LoRA deltas folded in, without touching the base tensors.

    Each adapted linear layer gets a temporary weight W + scale * B @ A and the LoRA path is switched off, so a
    forward costs one matmul per layer instead of three. The original tensors are put back afterwards untouched,
    which in-place `merge_adapter`/`unmerge_adapter` cannot promise in bf16. Quantized bases are left unmerged.
    """
    if not isinstance(model, PeftModel):
        yield
        return
    swapped = []
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            base = module.get_base_layer()
            adapters = [name for name in module.active_adapters if name in module.lora_A]
            if type(base) is not torch.nn.Linear or not adapters:
                continue
            original = base.weight.data
            merged = original.clone()
            for name in adapters:
                merged += module.get_delta_weight(name).to(merged.dtype)
            base.weight.data = merged
            swapped.append((base, original))
    try:
        with model.disable_adapter() if swapped else nullcontext():
            yield
    finally:
        for base, original in swapped:
            base.weight.data = original


def sampling_config(config: GenerationConfig, temperature: float) -> GenerationConfig:
    """`config` turned into plain sampling at `temperature`: no top-k or top-p cut, whatever the model ships."""
    return GenerationConfig(**{**config.to_diff_dict(), "do_sample": True, "temperature": temperature, "top_k": 0})


@torch.no_grad()
def generate_batch(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig, logits_processor=None
) -> list[list[int]]:
    """Completions of one left-padded batch (greedy unless `config` samples), each cut after its first end token.

    `logits_processor`: transformers `LogitsProcessor`s applied at every decoding step (a decoding-time method).
    """
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        logits_processor=LogitsProcessorList(logits_processor or []),
    )
    generated = output[:, input_ids.shape[1] :]
    lengths = completion_mask(generated, config.eos_token_id).sum(dim=1).tolist()
    return [row[:length].tolist() for row, length in zip(generated, lengths)]


def generate_batches(
    model, batches, config: GenerationConfig, *, merge_lora: bool = True, logits_processor=None
) -> list[list[int]]:
    """Completions for an iterable of left-padded `(input_ids, attention_mask)` batches, in order.

    The model answers in eval mode (with LoRA merged when `merge_lora`) and gets its train/eval mode back after.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions = []
    try:
        with merged_lora(model) if merge_lora else nullcontext():
            for input_ids, attention_mask in batches:
                completions += generate_batch(
                    model, input_ids.to(device), attention_mask.to(device), config, logits_processor
                )
    finally:
        model.train(was_training)
    return completions


def generate_completions(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    merge_lora: bool = True,
    show_progress: bool = False,
) -> list[list[int]]:
    """Greedy completions (token ids, cut after the first end token) for pre-tokenized prompts, in input order."""
    starts = tqdm(range(0, len(prompt_ids), batch_size), desc="Generating", disable=not show_progress)
    batches = (pad(prompt_ids[start : start + batch_size], tokenizer.pad_token_id, side="left") for start in starts)
    return generate_batches(model, batches, greedy_config(model, tokenizer, max_new_tokens), merge_lora=merge_lora)


def answer_and_score(
    model,
    tokenizer,
    prompts,
    gold: dict,
    checker,
    *,
    max_new_tokens: int,
    batch_size: int,
    show_progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Answer every prompt (`index`, `prompt_ids`) greedily and score it: the accuracy summary with the seconds spent
    generating, and the scored records in prompt order."""
    start = time.perf_counter()
    completions = generate_completions(
        model,
        tokenizer,
        prompts["prompt_ids"],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    seconds = time.perf_counter() - start
    records = score_completions(checker, tokenizer, prompts["index"], completions, gold)
    return {**accuracy(records), "generate_seconds": seconds}, records
