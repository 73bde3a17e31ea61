"""Batched greedy generation from pre-tokenized prompts, with LoRA merged for speed, and answering a test set."""

import inspect
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm
from transformers import ContinuousBatchingConfig, GenerationConfig, LogitsProcessorList, cache_utils

from .checkers import score_completions
from .scoring import accuracy


GENERATION_BACKENDS = ("static", "continuous")
# Tokens per page of the continuous backend's paged KV cache: short pages waste less of each answer's last page.
CONTINUOUS_PAGE_SIZE = 64
# Tokens through one forward of the continuous backend: transformers 5.24's default; 5.17, given the cache size, sizes
# it from the free memory instead (a tiny model's answers were killed for memory on a 23 GB CPU machine).
CONTINUOUS_BATCH_TOKENS = 8192
# transformers 5.17 (a bare GPU image's) names it block_size; later versions page_size, with block_size deprecated
_PAGE_SIZE_FIELD = next(f.name for f in fields(ContinuousBatchingConfig) if f.name in ("page_size", "block_size"))


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
    generation_backend: Literal[GENERATION_BACKENDS] = field(
        default="static",
        metadata={
            "help": "static: generate() on left-padded batches, each decoding until its longest answer ends. "
            "continuous: transformers' continuous batching (generate_batch, paged attention): an answer that ends "
            "leaves the batch and a waiting prompt takes its place, the batch size capping the answers decoded "
            "together. Greedy answers are the same token for token in float32; speeds in docs/BENCHMARKS.md."
        },
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be a positive integer, got {self.batch_size}.")
        check_lengths(self.max_prompt_length, self.max_new_tokens)
        check_backend(self.generation_backend)


def check_lengths(max_prompt_length: int, max_new_tokens: int, context: int | None = None, model: str = "") -> None:
    """Refuse a `--max_prompt_length` or `--max_new_tokens` that is no positive integer and, given the `context`
    (positions) of `--model`, lengths that do not fit in it: the advice names values that fit when followed."""
    for name, value in (("max_prompt_length", max_prompt_length), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")
    if context is None or max_prompt_length + max_new_tokens <= context:
        return
    # Each way out keeps the other length as given, and exists only while that one leaves a token for this one.
    fixes = []
    if context - max_prompt_length >= 1:
        fixes.append(f"lower --max_new_tokens to {context - max_prompt_length}")
    if context - max_new_tokens >= 1:
        fixes.append(f"lower --max_prompt_length to {context - max_new_tokens} (longer prompts are cut from the left)")
    if not fixes:
        half = context // 2
        fixes.append(
            f"lower both so that they add up to {context} at most, say --max_prompt_length {context - half} "
            f"--max_new_tokens {half}"
        )
    raise ValueError(
        f"--model {model} holds {context} positions, but --max_prompt_length {max_prompt_length} + --max_new_tokens "
        f"{max_new_tokens} = {max_prompt_length + max_new_tokens} do not fit; {' or '.join(fixes)}."
    )


def check_backend(backend: str) -> None:
    """Refuse a `--generation_backend` that is not one of GENERATION_BACKENDS."""
    if backend not in GENERATION_BACKENDS:
        raise ValueError(f"--generation_backend must be one of {', '.join(GENERATION_BACKENDS)}; got {backend!r}.")


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
        # set, not left at their defaults: generate() fills an unset setting from the model's own generation config,
        # and a shipped repetition penalty (Qwen2.5-Instruct's 1.05) would change the greedy answers
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=model.generation_config.bos_token_id,
    )


@contextmanager
def merged_lora(model):
    """Generate through base weights with the active LoRA deltas folded in, without touching the base tensors.

    Each adapted linear layer gets a temporary weight W + scale * B @ A and the LoRA path is switched off, so a
    forward costs one matmul per layer instead of three. The original tensors are put back afterwards untouched,
    which in-place `merge_adapter`/`unmerge_adapter` cannot promise in bf16. Quantized bases are left unmerged, and
    so are layers whose adapters are off (inside `disable_adapter()`), which must keep computing with the base.
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
            if type(base) is not torch.nn.Linear or not adapters or module.disable_adapters:
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


def sampling_config(config: GenerationConfig, temperature: float, top_p: float = 1.0) -> GenerationConfig:
    """`config` turned into sampling at `temperature`, cut to the nucleus of probability `top_p` (1: no cut) and never
    to the top k, whatever the model ships. Both are set explicitly: generate() fills a setting left unset from the
    model's own generation config (a shipped top_p of 0.8 would otherwise apply)."""
    settings = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
    return GenerationConfig(**{**config.to_diff_dict(), **settings})


# inference_mode: no version counters or views kept for autograd; 3% off a decoding step here (docs/SPEED.md)
@torch.inference_mode()
def generate_batch(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    logits_processor=None,
    samples: int = 1,
) -> list[list[int]]:
    """Completions of one left-padded batch (greedy unless `config` samples), each cut after its first end token.

    `logits_processor`: transformers `LogitsProcessor`s applied at every decoding step (a decoding-time method).
    `samples`: answers per prompt, consecutive in the output. Their prompt is read once: its KV cache, computed
    for one copy, is repeated for the samples, which then decode from its last token.
    """
    cache = {}
    if samples > 1:
        cache = prompt_cache(model, input_ids, attention_mask, samples)
        input_ids, attention_mask = (
            input_ids.repeat_interleave(samples, 0),
            attention_mask.repeat_interleave(samples, 0),
        )
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        logits_processor=LogitsProcessorList(logits_processor or []),
        **cache,
    )
    generated = output[:, input_ids.shape[1] :]
    lengths = completion_mask(generated, config.eos_token_id).sum(dim=1).tolist()
    return [row[:length].tolist() for row, length in zip(generated, lengths)]


# The cache layers of hybrid models (linear attention, Mamba-style conv) that hold recurrent states; transformers
# before 5.2x has no such mixin, and no repeat to get wrong.
_RECURRENT_LAYERS = tuple(filter(None, [getattr(cache_utils, "LinearAttentionCacheLayerMixin", None)]))


def cache_argument(model) -> str:
    """The name under which `model`'s forward and generate() take a KV cache, and its output holds one: cache since
    transformers 5.2x (the lock's), past_key_values before (a bare GPU image's 5.17)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, samples: int) -> dict:
    """generate()'s cache argument holding the KV cache of every prompt token but the last, computed once per prompt
    and repeated `samples` times (consecutive rows); empty for one-token prompts, which have nothing to cache, and
    for hybrid models, whose recurrent states are not repeated (generate() then reads every copy of the prompt).
    generate() then reads only the last token of each copy, at the position it would have given it."""
    if input_ids.shape[1] < 2:
        return {}
    name = cache_argument(model)
    # generate()'s positions for left-padded rows: count real tokens, padding at 1
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    cache = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, :-1],
        use_cache=True,
        logits_to_keep=1,  # the cache is what this forward is for
    )[name]
    if any(isinstance(layer, _RECURRENT_LAYERS) for layer in getattr(cache, "layers", ())):
        return {}  # a recurrent state (linear attention, conv) is not repeated by batch_repeat_interleave
    cache.batch_repeat_interleave(samples)
    return {name: cache}


def generate_continuous(
    model, prompt_ids: list[list[int]], config: GenerationConfig, max_concurrent: int
) -> list[list[int]]:
    """Greedy completions of unpadded prompts by transformers' continuous batching, in input order, each ending with
    its first end token; at most `max_concurrent` answers are decoded together.

    The paged KV cache is sized for those answers at full length: left to itself, transformers sizes it from the
    device's free memory (0.6 of the RAM on a CPU). Works with transformers 5.17 and later.
    """
    if config.do_sample:
        raise ValueError("--generation_backend continuous decodes greedily here; use --generation_backend static.")
    if not prompt_ids:
        return []
    concurrent = min(max_concurrent, len(prompt_ids))
    pages = math.ceil((max(len(ids) for ids in prompt_ids) + config.max_new_tokens) / CONTINUOUS_PAGE_SIZE)
    cb_config = ContinuousBatchingConfig(
        **{_PAGE_SIZE_FIELD: CONTINUOUS_PAGE_SIZE},
        num_blocks=pages * concurrent,
        max_batch_tokens=CONTINUOUS_BATCH_TOKENS,
        max_requests_per_batch=concurrent,
    )
    outputs = list(
        model.generate_batch(prompt_ids, generation_config=config, continuous_batching_config=cb_config).values()
    )
    # generate_batch logs a failed request and goes on: a missing or failed answer must not pass as an empty one
    failed = [output.error for output in outputs if output.error is not None]
    if len(outputs) != len(prompt_ids) or failed:
        cause = failed[0] if failed else "no error reported"
        raise RuntimeError(
            f"continuous batching answered {len(outputs) - len(failed)} of {len(prompt_ids)} prompts ({cause}); "
            "use --generation_backend static."
        )
    return [output.generated_tokens for output in outputs]  # each stops at its first end token


def generate_batches(
    model,
    batches,
    config: GenerationConfig,
    *,
    merge_lora: bool = True,
    logits_processor=None,
    backend: str = "static",
    samples: int = 1,
) -> list[list[int]]:
    """Completions for an iterable of left-padded `(input_ids, attention_mask)` batches, in order: `samples`
    consecutive answers per prompt (see `generate_batch`).

    The model answers in eval mode (with LoRA merged when `merge_lora`) and gets its train/eval mode back after.
    `backend` "continuous" answers every batch's prompts in one continuous batch of at most the largest batch's
    size (`generate_continuous`); it applies no `logits_processor` and answers once per prompt.
    """
    check_backend(backend)
    if backend == "continuous" and (logits_processor or samples > 1):
        what = "applies no logits processor" if logits_processor else "answers once per prompt"
        raise ValueError(f"--generation_backend continuous {what}; use --generation_backend static.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions = []
    try:
        with merged_lora(model) if merge_lora else nullcontext():
            if backend == "continuous":
                batches = list(batches)
                prompts = [row[keep.bool()].tolist() for ids, mask in batches for row, keep in zip(ids, mask)]
                completions = generate_continuous(
                    model, prompts, config, max((len(ids) for ids, _ in batches), default=1)
                )
            else:
                for input_ids, attention_mask in batches:
                    completions += generate_batch(
                        model, input_ids.to(device), attention_mask.to(device), config, logits_processor, samples
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
    backend: str = "static",
    config: GenerationConfig | None = None,
    samples: int = 1,
) -> list[list[int]]:
    """Completions (token ids, cut after the first end token) for pre-tokenized prompts, in input order: greedy, or
    `samples` per prompt under a sampling `config` (one prefill each, consecutive); `batch_size` prompts per
    generate() call, or at most that many decoded together by the continuous `backend`."""
    desc = "Generating" if samples == 1 else f"Sampling {samples} answers"
    starts = tqdm(range(0, len(prompt_ids), batch_size), desc=desc, disable=not show_progress)
    batches = (pad(prompt_ids[start : start + batch_size], tokenizer.pad_token_id, side="left") for start in starts)
    config = config or greedy_config(model, tokenizer, max_new_tokens)
    return generate_batches(model, batches, config, merge_lora=merge_lora, backend=backend, samples=samples)


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
    backend: str = "static",
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
        backend=backend,
    )
    seconds = time.perf_counter() - start
    records = score_completions(checker, tokenizer, prompts["index"], completions, gold)
    return {**accuracy(records), "generate_seconds": seconds}, records
