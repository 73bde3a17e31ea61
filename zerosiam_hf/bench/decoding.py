"""Compiled decoding against generate() as the runs call it: what a decoding step costs in each variant, what the
compile costs, after how many decoding steps it pays for itself, and whether the greedy tokens stay the same.

Variants, all through generate() on the same random prompts, every answer run to its cap:
- `eager`: generate() as `generation.generate_batch` calls it (a cache that grows by concatenation);
- `static`: a static KV cache (preallocated to the answer's full length), not compiled;
- `compiled`: the static cache with generate()'s decoding forward compiled by transformers' own path
  (`GenerationConfig.compile_config`), which transformers takes on accelerators only and is told to take on a CPU;
  CUDA graphs (`mode="reduce-overhead"`) on a GPU, inductor's default mode on a CPU;
- `compiled_cpp` (CPU only): the same with inductor's C++ wrapper, which calls the compiled kernels from C++ instead of
  Python (the per-operation cost that bounds decoding on a CPU).
The prefill is never compiled (transformers compiles the decoding steps only).
"""

import math
import time

import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from .roofline import synchronizer


VARIANTS = ("eager", "static", "compiled", "compiled_cpp")
COMPILED = ("compiled", "compiled_cpp")


def variants_for(device: str) -> list[str]:
    """The variants worth timing on `device`: the C++ wrapper is a CPU matter (CUDA graphs take its place on a GPU)."""
    return ["eager", "static", "compiled"] + (["compiled_cpp"] if device == "cpu" else [])


def decoding_config(base: GenerationConfig, variant: str, device: str) -> GenerationConfig:
    """`base` as `variant` decodes: its cache and, for the compiled variants, transformers' compile settings."""
    config = GenerationConfig(**base.to_diff_dict())
    if variant == "eager":
        return config
    config.cache_implementation = "static"
    if variant in COMPILED:
        # torch.compile takes a mode or inductor options, not both
        options = {"cpp_wrapper": True} if variant == "compiled_cpp" else None
        mode = None if options else ("reduce-overhead" if device == "cuda" else "default")
        compile_config = CompileConfig(fullgraph=False, dynamic=False, mode=mode, options=options)
        compile_config._compile_all_devices = True  # transformers' own switch for devices it does not compile on
        config.compile_config = compile_config
    return config


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (the shorter one's length if one is the other's start);
    None when equal."""
    for position, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


def check_variants(variants: list[str], device: str) -> None:
    """Refuse a variant this module does not know, and the C++ wrapper off a CPU."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"--decoding_variants takes {', '.join(VARIANTS)}; got {unknown}.")
    if "compiled_cpp" in variants and device != "cpu":
        raise ValueError("--decoding_variants compiled_cpp is a CPU variant (CUDA graphs take its place on a GPU).")


def check_answer(answer: int) -> None:
    """Refuse answers too short to hold a decoding step (the prefill gives the first token)."""
    if answer < 2:
        raise ValueError(f"the decoding stage times answers of 2 or more tokens (--roofline_answer); got {answer}.")


def measure_decoding(model, *, batch: int, prompt: int, answer: int, repeats: int, variants: list[str]) -> dict:
    """Time each variant's generate() on `batch` random prompts of `prompt` tokens answered to `answer` tokens.

    Per variant: `first_s` (its first call), `answer_s` (the best of `repeats` later calls), `prefill_s` (the best of
    `repeats` calls that stop after the first token, the prefill's), `step_ms` (the answer less the prefill over the
    `answer - 1` decoding steps), `rows_equal` (answers token for token equal to eager's) and `first_differences`
    (per row, the first position where it leaves eager's tokens; None where it does not). Against eager: `speedup`
    of a step; for the compiled variants `compile_s` (the first call less a later one) and `break_even_steps`, the
    decoding steps after which the compile has paid for itself (None where a step is not faster).
    """
    device = next(model.parameters()).device
    check_variants(variants, device.type)
    check_answer(answer)
    sync = synchronizer(device.type)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), generator=generator).to(device)
    mask = torch.ones_like(ids)
    model.eval()

    def run(config: GenerationConfig) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        sync()
        return output, time.perf_counter() - start

    results, reference = {}, None
    for variant in ["eager", *[name for name in variants if name != "eager"]]:  # eager first: the reference
        torch._dynamo.reset()  # each compiled variant compiles from nothing
        counters.clear()
        full = decoding_config(_capped(answer), variant, device.type)
        prefill_only = decoding_config(_capped(1), variant, device.type)
        with fresh_cache():  # inductor's (and triton's) on-disk caches empty: the compile is timed from nothing
            output, first = run(full)
            # transformers logs a warning and decodes eagerly where its compile criteria refuse
            if variant in COMPILED and not counters["stats"]["unique_graphs"]:
                raise RuntimeError(f"transformers did not compile the decoding step of variant {variant}.")
            answer_s = min(run(full)[1] for _ in range(repeats))
            prefill_s = min(run(prefill_only)[1] for _ in range(repeats))
        tokens = output[:, prompt:].tolist()
        reference = reference or tokens  # eager's
        differences = [first_difference(row, ref) for row, ref in zip(tokens, reference)]
        results[variant] = {
            "first_s": first,
            "answer_s": answer_s,
            "prefill_s": prefill_s,
            "step_ms": 1000 * (answer_s - prefill_s) / (answer - 1),
            "rows_equal": differences.count(None),
            "first_differences": differences,
        }
    eager = results["eager"]["step_ms"]
    for variant, row in results.items():
        row["speedup"] = eager / row["step_ms"]
        if variant in COMPILED:
            saving = eager - row["step_ms"]
            row["compile_s"] = max(row["first_s"] - row["answer_s"], 0.0)
            row["break_even_steps"] = math.ceil(row["compile_s"] * 1000 / saving) if saving > 0 else None
    return {"settings": {"batch": batch, "prompt": prompt, "answer": answer, "repeats": repeats}, "variants": results}


def _capped(tokens: int) -> GenerationConfig:
    """Greedy decoding of exactly `tokens` tokens: the model's end tokens are masked until then."""
    return GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1, pad_token_id=0)


def format_decoding(report: dict) -> str:
    """The stage's markdown table."""
    lines = [
        "| variant | ms a step | vs eager | first call s | compile s | pays off after (steps) | rows equal to eager |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = report["variants"]
    batch = report["settings"]["batch"]
    for name, row in rows.items():
        compile_s = "-" if "compile_s" not in row else f"{row['compile_s']:.1f}"
        even = "-" if row.get("break_even_steps") is None else str(row["break_even_steps"])
        lines.append(
            f"| {name} | {row['step_ms']:.1f} | {row['speedup']:.2f}x | {row['first_s']:.1f} | {compile_s}"
            f" | {even} | {row['rows_equal']} of {batch} |"
        )
    return "\n".join(lines)
