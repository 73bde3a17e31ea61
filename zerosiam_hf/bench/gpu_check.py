"""The GPU check (scripts/gpu_check.py): what ZeroSiam costs at real shapes, on a machine with only torch,
transformers, peft and accelerate (no hub, no network; the roofline section also needs datasets).

Models are built from their configs with random weights, which cost the same time and memory as trained ones; with
random weights an answer never stops early, so every generated answer has its full length. Sections:

- `loss_head`: the loss head alone (Tent and ZeroSiam, naive and chunked) at Llama-3.1-8B's head, time and peak;
- `online_step`: one step of the online protocol at the paper's settings (answer a batch greedily, then one update
  of LoRA and the predictor on prompt + answer), against generation alone;
- `roofline`: the machine's ceilings, then each phase of one online step against them (`bench.roofline`);
- `generation`: the pipeline's two generation backends (`--generation_backend static`, `continuous`), as a run calls
  them for one batch (continuous batching starts its manager at each call);
- `long_answers`: one update's time and peak memory against answer length and batch, with and without gradient
  checkpointing, the points the memory model in docs/BENCHMARKS.md is checked against;
- `decoding`: generate()'s decoding step compiled (CUDA graphs) against generate() as the runs call it, the compile's
  time and the steps after which it pays (`bench.decoding`, as measure_speed.py's decoding stage); last, as it may
  not fit the call after the others: `--sections decoding` runs it alone.

`PLANS["gpu"]` sizes the check to end within one 8-minute call on one H100 (78 GiB; the estimate per section is in
docs/BENCHMARKS.md); `PLANS["tiny"]` runs the same code at toy shapes on a CPU in the tests, so the check cannot rot.
The JSON is rewritten after each section: a run cut short keeps what it measured.
"""

import gc
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import accelerate
import peft
import torch
import transformers
from tokenizers import Tokenizer, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..config import ZeroSiamConfig
from ..generation import generate_batch, generate_continuous
from ..losses import head_loss, head_transform
from ..methods import METHODS
from ..methods.base import final_hidden_states
from ..modeling import build_adapted_model, method_optimizer
from ..predictor import find_predictor
from .speed import measure_peak, time_round_robin


# Llama-architecture shapes. Llama-3.1-8B's rope scaling is left out: it changes no shape and no cost.
SHAPES = {
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(  # the embedded default model
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
}
# The project's default LoRA: rank 8, alpha 16, on the attention block's linear layers (modeling.lora_target_modules).

# Sections run in this order: the memory points first, the generation backends (the least certain to finish) last.
# A generation step's `budget_s` bounds its time: a row predicted to end past it is skipped (recorded as such).
PLANS = {
    "gpu": {
        "long_answers": [
            {"shape": "smollm2-135m", "dtype": "float32", "batches": [1, 4], "answers": [256, 1024, 3072]},
            {"shape": "llama-3.1-8b", "dtype": "bfloat16", "batches": [1, 4], "answers": [1024, 3072]},
        ],
        "online_step": {"shape": "llama-3.1-8b", "dtype": "bfloat16", "batch": 8, "prompt": 512, "answer": 512},
        "loss_head": {"shape": "llama-3.1-8b", "tokens": 8192, "dtype": "bfloat16", "chunk_size": 1024, "repeats": 5},
        "roofline": {
            "shape": "llama-3.1-8b",
            "dtype": "bfloat16",
            "method": "zerosiam",
            "batch": 8,
            "prompt": 512,
            "answer": 128,
            "repeats": 3,
            "matrix": 8192,  # the product size and read buffer of measure_speed.py's roofline stage on a GPU
            "read_bytes": 4 << 30,
        },
        "generation": [
            {
                "shape": "llama-3.1-8b",
                "dtype": "bfloat16",
                "batches": [8, 64],
                "prompt": 128,
                "answer": 128,
                "budget_s": 150,
            },
            {
                "shape": "smollm2-135m",
                "dtype": "float32",
                "batches": [64],
                "prompt": 128,
                "answer": 128,
                "budget_s": 45,
            },
        ],
        "decoding": {  # 64 tokens: the section must fit the call's last 100 s or so
            "shape": "llama-3.1-8b",
            "dtype": "bfloat16",
            "batch": 8,
            "prompt": 512,
            "answer": 64,
            "repeats": 1,
            "variants": ["static", "compiled"],
        },
    },
    "tiny": {
        "long_answers": [{"shape": "tiny", "dtype": "float32", "batches": [1, 2], "answers": [8, 16]}],
        "online_step": {"shape": "tiny", "dtype": "float32", "batch": 2, "prompt": 8, "answer": 8},
        "loss_head": {"shape": "tiny", "tokens": 64, "dtype": "float32", "chunk_size": 16, "repeats": 2},
        "roofline": {
            "shape": "tiny",
            "dtype": "float32",
            "method": "zerosiam",
            "batch": 2,
            "prompt": 8,
            "answer": 4,
            "repeats": 1,
            "matrix": 64,
            "read_bytes": 1 << 20,
        },
        "generation": [
            {"shape": "tiny", "dtype": "float32", "batches": [2], "prompt": 8, "answer": 8, "budget_s": 600}
        ],
        # no compiled variant: compiling even the tiny model takes a minute on a CPU
        "decoding": {
            "shape": "tiny",
            "dtype": "float32",
            "batch": 2,
            "prompt": 8,
            "answer": 4,
            "repeats": 1,
            "variants": ["static"],
        },
    },
}
PROMPT_TOKENS = 128  # the prompt before each long answer
WARMUP_TOKENS = 8  # a warm-up's answer: enough to run every kernel of prefill and decoding once


def run_check(plan: str, output: str | Path, device: str | None = None, sections: list[str] | None = None) -> dict:
    """Run the plan's sections in order, rewriting the JSON at `output` after each, and return the result."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = PLANS[plan]
    sections = sections or list(steps)
    if "roofline" in sections:
        try:
            import datasets  # noqa: F401  (ZeroSiamTrainer's prompts, which bench.roofline builds)
        except ImportError:
            raise ValueError(
                "the roofline section needs the datasets package: install it, or give --sections without roofline."
            ) from None
    result = {"plan": plan, "environment": environment(device), "sections": {}}
    for name in sections:
        start = time.perf_counter()
        result["sections"][name] = SECTIONS[name](steps[name], device)
        result["sections"][name]["seconds"] = time.perf_counter() - start
        _write(output, result)
    return result


def environment(device: str) -> dict:
    info = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30)
    return info


# ------------------------------------------------------------------------------------------------------- sections
def loss_head_section(step: dict, device: str) -> dict:
    """Tent and ZeroSiam, naive (chunk 0) and chunked, at one model's head: median time and peak above the inputs."""
    shape = SHAPES[step["shape"]]
    setting = {
        "device": device,
        "tokens": step["tokens"],
        "hidden": shape["hidden_size"],
        "vocab": shape["vocab_size"],
        "dtype": step["dtype"],
        "seed": 0,
        "threads": 0,
    }
    variants = [(m, c) for m in ("tent", "zerosiam") for c in (0, step["chunk_size"])]
    timings = time_round_robin(setting, variants, warmup=1, repeats=step["repeats"])
    rows = []
    for (method, chunk_size), timing in zip(variants, timings):
        row = {"method": method, "chunk_size": chunk_size, "time_ms": timing["time_ms"]}
        if device.startswith("cuda"):
            row.update(measure_peak(setting, method, chunk_size))
        rows.append(row)
    return {**step, "rows": rows}


def online_step_section(step: dict, device: str) -> dict:
    """Generation alone against generation followed by one update (ZeroSiam, then Tent) on the same batch."""
    model, predictor, optimizer = adapted_model(step["shape"], step["dtype"], device)
    prompts = random_prompts(step["shape"], step["batch"], step["prompt"], device)
    greedy(model, prompts, WARMUP_TOKENS)  # a short warm-up: the timed call's answers are the ones trained on
    rows = {}
    rows["generate"], ids = _timed(partial(greedy, model, prompts, step["answer"]), device)
    for method in ("zerosiam", "tent"):
        step_once = partial(update, model, predictor, optimizer, ids, step["prompt"], method)
        rows[f"update_{method}"] = _measured(step_once, device, optimizer)
    gen = rows["generate"]["time_s"]
    ratios = {
        f"(generate + update_{m}) / generate": (gen + rows[f"update_{m}"]["time_s"]) / gen
        for m in ("zerosiam", "tent")
        if "time_s" in rows[f"update_{m}"]
    }
    del model, predictor, optimizer
    _free()
    return {**step, "rows": rows, "ratios": ratios}


def generation_section(steps: list[dict], device: str) -> dict:
    """Tokens per second of the static and continuous backends (generation.py), greedy. A row whose warm-up predicts
    that it would end past its step's `budget_s` (counted from the model's build) is recorded as skipped."""
    rows = []
    for step in steps:
        start = time.perf_counter()
        model = build_model(step["shape"], step["dtype"], device)
        for batch in step["batches"]:
            prompts = random_prompts(step["shape"], batch, step["prompt"], device)
            for backend in ("static", "continuous"):
                row = {"shape": step["shape"], "dtype": step["dtype"], "batch": batch, "backend": backend}
                try:
                    warmup = _timed(partial(_generate, model, prompts, WARMUP_TOKENS, backend), device)[0]["time_s"]
                    # the warm-up's time per token, start-up included, over-predicts the timed call
                    predicted = warmup * step["answer"] / WARMUP_TOKENS
                    spent = time.perf_counter() - start
                    if spent + predicted > step["budget_s"]:
                        row["skipped"] = f"{spent:.0f} s spent + {predicted:.0f} s predicted > {step['budget_s']} s"
                    else:
                        measured, tokens = _timed(partial(_generate, model, prompts, step["answer"], backend), device)
                        row.update(measured, tokens=tokens, tokens_per_s=tokens / measured["time_s"])
                except Exception as error:  # an API this transformers lacks: recorded, the check goes on
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
                rows.append(row)
        del model
        _free()
    return {"steps": steps, "rows": rows}


def long_answers_section(steps: list[dict], device: str) -> dict:
    """One ZeroSiam update on PROMPT_TOKENS + answer tokens, per batch and answer length, checkpointing off and on."""
    rows, held = [], []
    for step in steps:
        model, predictor, optimizer = adapted_model(step["shape"], step["dtype"], device)
        for checkpointing in (False, True):
            if checkpointing:
                # transformers 5.24 renames it; the bare GPU image may hold an older one
                enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
                enable({"use_reentrant": False})  # the kwargs come first under either name
            for batch in step["batches"]:
                for answer in step["answers"]:
                    row = {"shape": step["shape"], "dtype": step["dtype"], "batch": batch, "answer": answer}
                    row["gradient_checkpointing"] = checkpointing
                    ids = random_prompts(step["shape"], batch, PROMPT_TOKENS + answer, device)
                    step_once = partial(update, model, predictor, optimizer, ids, PROMPT_TOKENS, "zerosiam")
                    row.update(_measured(step_once, device, optimizer))
                    rows.append(row)
        held.append({"shape": step["shape"], "dtype": step["dtype"], **_model_bytes(model, optimizer)})
        del model, predictor, optimizer
        _free()
    return {"steps": steps, "prompt": PROMPT_TOKENS, "rows": rows, "held": held}


def roofline_section(step: dict, device: str) -> dict:
    """The machine's matrix peaks per dtype and read bandwidth, then each phase of one online step of the shape's
    model against the floor they set (`bench.roofline`, as measure_speed.py's roofline stage)."""
    from .roofline import ceilings, measure_phases  # imports datasets, which the other sections do without

    peaks = ceilings(device, [torch.float32, torch.bfloat16], step["matrix"], step["read_bytes"])
    model = build_model(step["shape"], step["dtype"], device)
    rows = measure_phases(
        model,
        special_tokenizer(),
        method=step["method"],
        batch=step["batch"],
        prompt=step["prompt"],
        answer=step["answer"],
        peaks=peaks,
        repeats=step["repeats"],
    )
    del model
    _free()
    return {**step, "ceilings": peaks, "rows": rows}


def decoding_section(step: dict, device: str) -> dict:
    """A decoding step of the shape's model through generate(): eager against the static cache and its compiled
    decoding (`bench.decoding`)."""
    from .decoding import measure_decoding

    model = build_model(step["shape"], step["dtype"], device)
    settings = {name: step[name] for name in ("batch", "prompt", "answer", "repeats", "variants")}
    report = measure_decoding(model, **settings)
    del model
    _free()
    return {**step, **report}


SECTIONS = {
    "loss_head": loss_head_section,
    "online_step": online_step_section,
    "roofline": roofline_section,
    "generation": generation_section,
    "long_answers": long_answers_section,
    "decoding": decoding_section,
}


# --------------------------------------------------------------------------------------------------------- pieces
def build_model(shape: str, dtype: str, device: str) -> LlamaForCausalLM:
    """A random-weight Llama of `shape`, initialised on `device` (an 8B model initialises in seconds on a GPU)."""
    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.config.use_cache = False
    return model.eval()


def adapted_model(shape: str, dtype: str, device: str):
    """The model adapted as a ZeroSiam run at its defaults adapts it (`build_adapted_model`: LoRA and the predictor),
    its predictor, and the Trainer's optimizer over the method's parameter groups."""
    # the settings of a run given no option; nothing is written to output_dir
    args = ZeroSiamConfig(
        output_dir=tempfile.gettempdir(), method="zerosiam", report_to="none", use_cpu=device == "cpu"
    )
    model = build_adapted_model(build_model(shape, dtype, device), args)
    return model, find_predictor(model), method_optimizer(args, model)


def special_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer of the configs' pad, bos and eos tokens only: what a trainer reads from one when its prompts are
    token ids already (the random models have no tokenizer of their own)."""
    specials = {"<pad>": 0, "<s>": 1, "</s>": 2}  # the ids of build_model's config
    backend = Tokenizer(models.WordLevel(specials, unk_token="<pad>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.padding_side = "left"
    return tokenizer


def random_prompts(shape: str, batch: int, length: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 100003 + length)
    # ids from 3 on: 0-2 are the pad, bos and eos of the configs above
    return torch.randint(3, SHAPES[shape]["vocab_size"], (batch, length), generator=generator).to(device)


def greedy(model, prompts: torch.Tensor, answer: int) -> torch.Tensor:
    """Prompts + `answer` greedy tokens each (EOS suppressed, so every answer has its full length)."""
    config = GenerationConfig(
        max_new_tokens=answer, min_new_tokens=answer, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    with torch.no_grad():
        return model.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=config, use_cache=True
        )


def _generate(model, prompts: torch.Tensor, answer: int, backend: str) -> int:
    """Answer `prompts` greedily through the pipeline's `backend` and return the number of new tokens."""
    # greedy from random weights seldom meets EOS; the rate counts the tokens each backend really made
    config = GenerationConfig(max_new_tokens=answer, do_sample=False, pad_token_id=0, eos_token_id=2)
    with torch.no_grad():
        if backend == "static":
            completions = generate_batch(model, prompts, torch.ones_like(prompts), config)
        else:
            completions = generate_continuous(model, prompts.tolist(), config, max_concurrent=len(prompts))
    return sum(len(ids) for ids in completions)


def update(model, predictor, optimizer, ids: torch.Tensor, prompt_length: int, method: str) -> None:
    """One optimiser step of `method`'s loss on the answer positions of `ids` (prompt first), as the trainer does."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    method_loss(model, predictor, ids, prompt_length, method).backward()
    optimizer.step()
    model.eval()


def method_loss(model, predictor, ids: torch.Tensor, prompt_length: int, method: str) -> torch.Tensor:
    """`method`'s loss on the answer positions of `ids` (prompt first): `head_loss` with the arguments the method
    passes (`methods.head`), its options at a run's defaults."""
    spec = METHODS[method]
    mask = torch.ones_like(ids)
    _, hidden = final_hidden_states(model, ids, mask)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, prompt_length - 1 : -1] = True  # the positions that predict answer tokens
    head = model.get_output_embeddings()
    options = SimpleNamespace(**spec.options)  # the method's defaults, as a run given none of its options
    return head_loss(
        spec.head,
        hidden,
        head.weight,
        loss_mask,
        predictor_weight=predictor.weight if spec.trains == "lora+predictor" else None,
        chunk_size=ZeroSiamConfig.loss_chunk_size,
        lm_head_bias=head.bias,
        **spec.head_kwargs(options, head_transform(model.get_base_model().config)),
    ).loss


def _measured(step_once, device: str, optimizer) -> dict:
    """`_timed`'s row of one update after an untimed one, or `out_of_memory` where the card is too small for it."""
    try:
        step_once()
        return _timed(step_once, device)[0]
    except torch.OutOfMemoryError:  # a point past the card is a finding, not a failure
        optimizer.zero_grad(set_to_none=True)
        _free()
        return {"out_of_memory": True}


def _timed(fn, device: str) -> tuple[dict, object]:
    """Wall time of one call and, on a GPU, the peak allocated memory during it and the memory held before it; and
    the call's result."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    row = {"time_s": time.perf_counter() - start}
    if cuda:
        row.update(held_gib=held / 2**30, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    return row, result


def _model_bytes(model, optimizer) -> dict:
    """What the model holds: frozen and trainable parameter bytes and the optimiser state's bytes."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {"frozen_gib": frozen / 2**30, "trainable_gib": trainable / 2**30, "optimizer_state_gib": state / 2**30}


def _free() -> None:
    """Return what the last section's models held to the device, so that each section's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write(output: str | Path, result: dict) -> None:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
