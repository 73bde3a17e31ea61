"""Speed and memory of the adaptation step's costs. Stage "loss head": lm_head + loss, forward and backward, naive
(`chunk_size=0`, full logits and autograd) against chunked, for Tent, ZeroSiam and COME on the same tokens.

Peak extra memory is measured on each variant's first call: on a GPU, the rise of `torch.cuda.max_memory_allocated`
above the memory allocated once the inputs exist; on CPU, where each variant runs in a fresh child process, its peak
resident set size (`ru_maxrss`) minus its resident size once the inputs exist. Times are medians of repeated calls,
the variants taking turns on the same inputs: wall time, and on CPU also the process's CPU time, the figure to read
where other processes share the cores. The table ends with the ratios that docs/SPEED.md sets goals for;
the measuring helpers are in `zerosiam_hf.speed`.

Usage (from the repository root, with the package installed, `pip install -e .`):

    # CPU: the embedded model's head (d 576, vocab 49152) on 512 tokens, chunks of 128
    python scripts/measure_speed.py --output_json results/speed/loss_head.json

    # GPU: the embedded model's head on 16384 tokens and a Llama-3.1-8B head (8192 x 4096 x 128256), bf16
    python scripts/measure_speed.py --output_json results/speed/loss_head_gpu.json

    # the online loop: none / tent / zerosiam against plain evaluation, same prompts and batch size
    python scripts/measure_speed.py --stages online --online_prompts 32 --output_json results/speed/online.json

    # generation backends: continuous / static tokens per second on 64 GSM8K prompts, batches of 16 and 64
    python scripts/measure_speed.py --stages generation --threads 1 --output_json results/speed/generation.json

    # one shape, some methods, several repeats
    python scripts/measure_speed.py --tokens 2048 --chunk_size 256 --methods tent zerosiam --repeats 5
"""

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass, field

import torch

from zerosiam_hf.cli import exits_cleanly, parse_args
from zerosiam_hf.engines import hide_optional_engines
from zerosiam_hf.losses import HEADS
from zerosiam_hf.records import write_json
from zerosiam_hf.speed import (
    format_table,
    machine_info,
    measure_peak,
    measure_peak_in_child,
    ratios,
    time_round_robin,
)


logger = logging.getLogger(__name__)

EMBEDDED_HEAD = {"hidden": 576, "vocab": 49152}  # SmolLM2-135M-Instruct, the project's embedded model
GPU_SHAPES = [(16384, 576, 49152), (8192, 4096, 128256)]  # (tokens, hidden, vocab); the second is Llama-3.1-8B's
CPU_TOKENS, CPU_CHUNK, GPU_CHUNK = 512, 128, 1024


STAGES = ("loss_head", "online", "generation", "roofline")


@dataclass
class SpeedArguments:
    """Arguments of scripts/measure_speed.py."""

    tokens: int | None = field(
        default=None,
        metadata={
            "help": f"Selected positions N. Default: {CPU_TOKENS} on CPU; on a GPU, with no shape given, two shapes: "
            "16384 tokens with d 576 and V 49152, and 8192 tokens with d 4096 and V 128256."
        },
    )
    hidden: int | None = field(default=None, metadata={"help": "Hidden size d (default 576, the embedded model's)."})
    vocab: int | None = field(
        default=None, metadata={"help": "Vocabulary size V (default 49152, the embedded model's)."}
    )
    methods: list[str] = field(
        default_factory=lambda: ["tent", "zerosiam", "come"], metadata={"help": "Methods to time."}
    )
    chunk_size: int | None = field(
        default=None,
        metadata={
            "help": f"Positions per chunk of the chunked variants. Default: {GPU_CHUNK} (head_loss's default) on a "
            f"GPU, {CPU_CHUNK} on CPU (4 chunks of the default {CPU_TOKENS} tokens; smaller chunks pay per-op "
            "overhead there)."
        },
    )
    dtype: str = field(
        default="auto", metadata={"help": "Input dtype: auto (bfloat16 on GPU, float32 on CPU) or a name."}
    )
    warmup: int = field(default=1, metadata={"help": "Untimed calls of each variant before the timed ones."})
    repeats: int = field(default=5, metadata={"help": "Timed calls of each variant; the table reports their median."})
    seed: int = field(default=0, metadata={"help": "Seed of the random inputs."})
    threads: int | None = field(default=None, metadata={"help": "CPU intra-op threads (default: torch's choice)."})
    output_json: str = field(default="results/speed/loss_head.json", metadata={"help": "Where to write the results."})
    stages: list[str] = field(
        default_factory=lambda: ["loss_head"],
        metadata={
            "help": "Stages to run: loss_head, online (the online loop against plain evaluation), generation (the "
            "two backends), roofline (the machine's ceilings and each phase of one online step against them)."
        },
    )
    online_model: str = field(default="llama", metadata={"help": "Model of the online stage (alias, id or folder)."})
    online_dataset: str = field(default="gsm8k", metadata={"help": "Prompts of the online stage."})
    online_prompts: int = field(default=32, metadata={"help": "Prompts answered by each online variant."})
    online_batch_size: int = field(default=16, metadata={"help": "Prompts per batch, for all online variants."})
    online_max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per answer."})
    online_rounds: int = field(default=1, metadata={"help": "Rounds of the online variants, taking turns."})
    generation_prompts: int = field(default=64, metadata={"help": "GSM8K prompts answered by each backend."})
    generation_batch_sizes: list[int] = field(
        default_factory=lambda: [16, 64], metadata={"help": "Batch sizes of the generation stage."}
    )
    generation_max_new_tokens: int = field(default=256, metadata={"help": "Token cap of the generation stage."})
    generation_rounds: int = field(default=1, metadata={"help": "Rounds of the two backends, taking turns."})
    roofline_model: str = field(default="llama", metadata={"help": "Model of the roofline stage."})
    roofline_dtype: str = field(
        default="auto", metadata={"help": "Its weights dtype, as adapt's --dtype (auto: what a run would load)."}
    )
    roofline_method: str = field(default="zerosiam", metadata={"help": "Method whose update the roofline times."})
    roofline_batch: int = field(default=8, metadata={"help": "Prompts per online step (the README's batch)."})
    roofline_prompt: int = field(default=150, metadata={"help": "Tokens per prompt (a GSM8K prompt's length)."})
    roofline_answer: int = field(default=96, metadata={"help": "Tokens per answer (the README's cap)."})

    def __post_init__(self):
        unknown = sorted(set(self.methods) - set(HEADS))
        if unknown:
            raise ValueError(f"--methods takes {', '.join(HEADS)}; got {unknown}.")
        for name in ("tokens", "hidden", "vocab", "chunk_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1; got {value}.")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"--warmup must be >= 0 and --repeats >= 1; got {self.warmup} and {self.repeats}.")
        unknown_stages = sorted(set(self.stages) - set(STAGES))
        if unknown_stages:
            raise ValueError(f"--stages takes {', '.join(STAGES)}; got {unknown_stages}.")
        for name in ("roofline_batch", "roofline_prompt", "roofline_answer"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1; got {getattr(self, name)}.")
        for name in ("generation_prompts", "generation_max_new_tokens", "generation_rounds", "online_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1; got {getattr(self, name)}.")
        if not self.generation_batch_sizes or min(self.generation_batch_sizes) < 1:
            raise ValueError(f"--generation_batch_sizes must be positive; got {self.generation_batch_sizes}.")
        if self.dtype != "auto" and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"--dtype must be auto or a torch dtype name such as bfloat16; got {self.dtype!r}.")


def measure_loss_head(args: SpeedArguments, device: str, dtype: str) -> list[dict]:
    """Time and measure every (method, naive | chunked) variant at each shape."""
    cuda = device.startswith("cuda")
    if args.tokens is None and args.hidden is None and args.vocab is None and cuda:
        shapes = GPU_SHAPES
    else:
        shapes = [
            (
                args.tokens or (GPU_SHAPES[0][0] if cuda else CPU_TOKENS),
                args.hidden or EMBEDDED_HEAD["hidden"],
                args.vocab or EMBEDDED_HEAD["vocab"],
            )
        ]
    chunk_size = args.chunk_size or (GPU_CHUNK if cuda else CPU_CHUNK)
    variants = [(method, size) for method in args.methods for size in (0, chunk_size)]
    report = []
    for tokens, hidden, vocab in shapes:
        shape = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": dtype}
        setting = {**shape, "device": device, "seed": args.seed, "threads": args.threads}
        results = []
        for method, size in variants:
            measure = measure_peak if cuda else measure_peak_in_child
            result = {"method": method, "implementation": "chunked" if size else "naive", "chunk_size": size}
            result.update(measure(setting, method, size))
            if cuda:
                torch.cuda.empty_cache()
            logger.info("memory: %s", result)
            results.append(result)
        for result, timing in zip(results, time_round_robin(setting, variants, args.warmup, args.repeats)):
            result.update(timing)
        shape.update(results=results, ratios=ratios(results))
        print(format_table(shape) + "\n", flush=True)
        report.append(shape)
    return report


def measure_online(args: SpeedArguments, device: str) -> dict:
    """Wall time of the online protocol (none, tent, zerosiam) against plain evaluation on the same prompts.

    Every variant loads the model afresh and answers the same prompts at the same batch size; `evaluate` is
    `generate_completions` on the base model, the others are `ZeroSiamTrainer.train()` with one update per batch
    (none: no update). Generated lengths differ once a model adapts, so they are reported beside the times.
    """
    import tempfile

    from zerosiam_hf.config import ZeroSiamConfig
    from zerosiam_hf.data import DataArguments, build_prompts, gold_answers, load_problems
    from zerosiam_hf.generation import generate_completions
    from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer
    from zerosiam_hf.trainer import ZeroSiamTrainer

    data_args = DataArguments(dataset=args.online_dataset, max_samples=args.online_prompts)
    problems, identity = load_problems(data_args)
    gold = gold_answers(problems, data_args.make_checker())
    times: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    for _ in range(args.online_rounds):
        for variant in ("evaluate", "none", "tent", "zerosiam"):
            model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=args.online_model))
            model.to(device)
            prompts = build_prompts(problems, tokenizer, data_args.instruction, max_prompt_length=512)
            with tempfile.TemporaryDirectory() as tmp:
                if variant == "evaluate":
                    start = time.perf_counter()
                    completions = generate_completions(
                        model,
                        tokenizer,
                        prompts["prompt_ids"],
                        max_new_tokens=args.online_max_new_tokens,
                        batch_size=args.online_batch_size,
                    )
                    seconds = time.perf_counter() - start
                    lengths = [len(c) for c in completions]
                else:
                    config = ZeroSiamConfig(
                        output_dir=tmp,
                        method=variant,
                        per_device_train_batch_size=args.online_batch_size,
                        max_new_tokens=args.online_max_new_tokens,
                        report_to="none",
                        disable_tqdm=True,
                        seed=args.seed,
                        use_cpu=device == "cpu",
                    )
                    trainer = ZeroSiamTrainer(model, config, prompts, tokenizer, gold=gold)
                    start = time.perf_counter()
                    trainer.train()
                    seconds = time.perf_counter() - start
                    lengths = [r["tokens"] for r in trainer.online_records.values()]
            times.setdefault(variant, []).append(seconds)
            tokens.setdefault(variant, []).append(statistics.fmean(lengths))
            logger.info("online %s: %.1f s, %.1f tokens per answer", variant, seconds, tokens[variant][-1])
    rows = [
        {"variant": v, "seconds": statistics.median(times[v]), "answer_tokens": statistics.fmean(tokens[v])}
        for v in times
    ]
    base = times["evaluate"]
    for row in rows:
        row["ratio_to_evaluate"] = row["seconds"] / statistics.median(base)
    lines = ["| variant | wall s | tokens per answer | / evaluate |", "|---|---|---|---|"]
    lines += [
        f"| {r['variant']} | {r['seconds']:.1f} | {r['answer_tokens']:.1f} | {r['ratio_to_evaluate']:.2f} |"
        for r in rows
    ]
    print("\n".join(lines) + "\n", flush=True)
    settings = {k: getattr(args, k) for k in ("online_model", "online_prompts", "online_batch_size")}
    settings["online_max_new_tokens"] = args.online_max_new_tokens
    return {
        "settings": settings,
        "data": identity,
        "rows": rows,
    }


def measure_generation(args: SpeedArguments, device: str) -> dict:
    """Tokens per second of the continuous backend against the static one: the embedded model answers the same GSM8K
    prompts greedily with each backend at each batch size, the backends taking turns in every round so that a
    shared CPU's load hits both alike; the ratio is of wall times, with the process's CPU time (all its threads:
    continuous batching decodes in a thread of its own) beside it. Greedy answers must be equal; the report says
    whether they were."""
    from zerosiam_hf.data import DataArguments, build_prompts, load_problems
    from zerosiam_hf.generation import generate_completions
    from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer

    data_args = DataArguments(dataset=args.online_dataset, max_samples=args.generation_prompts)
    problems, identity = load_problems(data_args)
    model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=args.online_model))
    model.to(device)
    prompts = build_prompts(problems, tokenizer, data_args.instruction, max_prompt_length=512)["prompt_ids"]
    rows = []
    for batch_size in args.generation_batch_sizes:
        seconds, cpu_seconds, answers = {"static": [], "continuous": []}, {"static": [], "continuous": []}, {}
        for round_ in range(args.generation_rounds):
            # alternate which backend goes first, so that neither always follows the other's cache state
            order = ("static", "continuous") if round_ % 2 == 0 else ("continuous", "static")
            for backend in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                answers[backend] = generate_completions(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens=args.generation_max_new_tokens,
                    batch_size=batch_size,
                    backend=backend,
                )
                seconds[backend].append(time.perf_counter() - start)
                cpu_seconds[backend].append(time.process_time() - start_cpu)  # every thread of the process
                logger.info(
                    "generation batch %d %s: %.1f s (CPU %.1f s)",
                    batch_size,
                    backend,
                    seconds[backend][-1],
                    cpu_seconds[backend][-1],
                )
        tokens = sum(len(answer) for answer in answers["static"])
        ratios_ = [s / c for s, c in zip(seconds["static"], seconds["continuous"])]
        rows.append(
            {
                "batch_size": batch_size,
                "tokens": tokens,
                "answer_lengths": [len(answer) for answer in answers["static"]],
                "same_answers": answers["static"] == answers["continuous"],
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "static_tokens_per_s": tokens / statistics.median(seconds["static"]),
                "continuous_tokens_per_s": tokens / statistics.median(seconds["continuous"]),
                "ratio_per_round": ratios_,
                "ratio": statistics.median(ratios_),
                "cpu_ratio": statistics.median(
                    s / c for s, c in zip(cpu_seconds["static"], cpu_seconds["continuous"])
                ),
            }
        )
    lines = [
        "| batch | prompts | tokens | cut at cap | static tok/s | continuous tok/s | continuous / static | CPU time "
        "static / continuous | same |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cut = sum(n >= args.generation_max_new_tokens for n in r["answer_lengths"])
        lines.append(
            f"| {r['batch_size']} | {len(prompts)} | {r['tokens']} | {cut} | {r['static_tokens_per_s']:.1f} | "
            f"{r['continuous_tokens_per_s']:.1f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['same_answers']} |"
        )
    print("\n".join(lines) + "\n", flush=True)
    settings = {"model": args.online_model, "prompts": len(prompts), "max_new_tokens": args.generation_max_new_tokens}
    return {"settings": settings, "data": identity, "rows": rows}


def measure_roofline(args: SpeedArguments, device: str) -> dict:
    """The machine's ceilings, then each phase of one online step of the embedded (or given) model against them."""
    from zerosiam_hf.bench.roofline import ceilings, format_rows, measure_phases
    from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer

    model, tokenizer, spec = load_model_and_tokenizer(
        ModelArguments(model=args.roofline_model, dtype=args.roofline_dtype)
    )
    model.to(device)
    dtypes = [torch.float32, torch.bfloat16]
    # a matrix of 2048 fills the CPU's units; a GPU needs larger ones, and a buffer well past its cache
    size, nbytes = (8192, 4 << 30) if device == "cuda" else (2048, 1 << 30)
    peaks = ceilings(device, dtypes, size, nbytes)
    lines = [f"| {name} matrix product | {flops / 1e12:.2f} TFLOP/s |" for name, flops in peaks["flops"].items()]
    lines.append(f"| memory read | {peaks['bandwidth'] / 1e9:.1f} GB/s |")
    print("| ceiling | measured |\n|---|---|\n" + "\n".join(lines) + "\n", flush=True)
    rows = measure_phases(
        model,
        tokenizer,
        method=args.roofline_method,
        batch=args.roofline_batch,
        prompt=args.roofline_prompt,
        answer=args.roofline_answer,
        peaks=peaks,
        repeats=args.repeats,
    )
    print(format_rows(rows), flush=True)
    settings = {
        k: getattr(args, k) for k in ("roofline_method", "roofline_batch", "roofline_prompt", "roofline_answer")
    }
    return {
        "settings": {**settings, "model": args.roofline_model, "dtype": spec["dtype"]},
        "ceilings": peaks,
        "rows": rows,
    }


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, run the measuring stages and write their report."""
    (args,) = parse_args((SpeedArguments,), argv)

    # ------------------------------------------------------------------ setup
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    hide_optional_engines()  # before the online stage imports peft or accelerate
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"args": dataclasses.asdict(args), "machine": machine_info(device)}
    logger.info("machine: %s", report["machine"])

    # ------------------------------------------------------------------ loss head
    if "loss_head" in args.stages:
        report["loss_head"] = measure_loss_head(args, device, dtype)

    # ------------------------------------------------------------------ online loop
    if "online" in args.stages:
        report["online"] = measure_online(args, device)

    # ------------------------------------------------------------------ generation backends
    if "generation" in args.stages:
        report["generation"] = measure_generation(args, device)

    # ------------------------------------------------------------------ roofline
    if "roofline" in args.stages:
        report["roofline"] = measure_roofline(args, device)

    # ------------------------------------------------------------------ save
    write_json(args.output_json, report)
    logger.info("wrote %s", args.output_json)
    return report


if __name__ == "__main__":
    main()
