"""Speed and memory of the adaptation step's costs. Stage "loss head": lm_head + loss, forward and backward, naive
(`chunk_size=0`, full logits and autograd) against chunked, for Tent, ZeroSiam and COME on the same tokens.

Peak extra memory is measured on each variant's first call: on a GPU, the rise of `torch.cuda.max_memory_allocated`
above the memory allocated once the inputs exist; on CPU, where each variant runs in a fresh child process, its peak
resident set size (`ru_maxrss`) minus its resident size once the inputs exist. Times are medians of repeated calls,
the variants taking turns on the same inputs: wall time, and on CPU also the process's CPU time, the figure to read
where other processes share the cores. The table ends with the ratios that docs/SPEED.md sets goals for;
the stages and their helpers are in `zerosiam_hf.bench`.

Usage (from the repository root, with the package installed, `pip install -e .`):

    # CPU: the embedded model's head (d 576, vocab 49152) on 512 tokens, chunks of 128
    python scripts/measure_speed.py --output_json results/speed/loss_head.json

    # GPU: the embedded model's head on 16384 tokens and a Llama-3.1-8B head (8192 x 4096 x 128256), bf16
    python scripts/measure_speed.py --output_json results/speed/loss_head_gpu.json

    # the online loop: none / tent / zerosiam against plain evaluation, same prompts and batch size
    python scripts/measure_speed.py --stages online --online_prompts 32 --output_json results/speed/online.json

    # generation backends: continuous / static tokens per second on 64 GSM8K prompts, batches of 16 and 64
    python scripts/measure_speed.py --stages generation --threads 1 --output_json results/speed/generation.json

    # compiled decoding against generate() as the runs call it: a step's time, the compile's, its break-even
    python scripts/measure_speed.py --stages decoding --repeats 3 --output_json results/speed/decoding-cpu.json

    # one shape, some methods, several repeats
    python scripts/measure_speed.py --tokens 2048 --chunk_size 256 --methods tent zerosiam --repeats 5
"""

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from zerosiam_hf.bench.decoding import (
    VARIANTS,
    check_answer,
    check_variants,
    format_decoding,
    measure_decoding,
    variants_for,
)
from zerosiam_hf.bench.online import measure_generation, measure_online
from zerosiam_hf.bench.speed import CPU_CHUNK, CPU_TOKENS, GPU_CHUNK, machine_info, measure_loss_head
from zerosiam_hf.cli import exits_cleanly, parse_args
from zerosiam_hf.engines import hide_optional_engines
from zerosiam_hf.losses import HEADS
from zerosiam_hf.methods import METHODS
from zerosiam_hf.methods.head import HeadMethod
from zerosiam_hf.records import versions, write_json


logger = logging.getLogger(__name__)


STAGES = ("loss_head", "online", "generation", "roofline", "decoding")


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
            "two backends), roofline (the machine's ceilings and each phase of one online step against them), "
            "decoding (compiled decoding against generate() as the runs call it)."
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
    roofline_model: str = field(default="llama", metadata={"help": "Model of the roofline and decoding stages."})
    roofline_dtype: str = field(
        default="auto", metadata={"help": "Its weights dtype, as adapt's --dtype (auto: what a run would load)."}
    )
    roofline_method: str = field(default="zerosiam", metadata={"help": "Method whose update the roofline times."})
    roofline_batch: int = field(default=8, metadata={"help": "Prompts per online step (the README's batch)."})
    roofline_prompt: int = field(default=150, metadata={"help": "Tokens per prompt (a GSM8K prompt's length)."})
    roofline_answer: int = field(default=96, metadata={"help": "Tokens per answer (the README's cap)."})
    decoding_variants: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Variants of the decoding stage, from {', '.join(VARIANTS)} (eager is always timed, as the "
            "reference); default: all, compiled_cpp on a CPU only. The stage uses the roofline's model, dtype and "
            "shape."
        },
    )

    def __post_init__(self):
        heads = [name for name, method in METHODS.items() if isinstance(method, HeadMethod)]
        if self.roofline_method not in heads:
            raise ValueError(
                f"--roofline_method times a loss-head update: one of {', '.join(heads)}; got {self.roofline_method!r}."
            )
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
        check_variants(self.decoding_variants or [], "cuda" if torch.cuda.is_available() else "cpu")
        if "decoding" in self.stages:
            check_answer(self.roofline_answer)
        if self.dtype != "auto" and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"--dtype must be auto or a torch dtype name such as bfloat16; got {self.dtype!r}.")


def measure_roofline(args: SpeedArguments, device: str) -> dict:
    """The machine's ceilings, then each phase of one online step of the embedded (or given) model against them."""
    from zerosiam_hf.bench.roofline import ceilings, format_rows, measure_phases
    from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer

    model, tokenizer, spec = load_model_and_tokenizer(
        ModelArguments(model=args.roofline_model, dtype=args.roofline_dtype)
    )
    model.to(device)
    dtypes = list(dict.fromkeys([torch.float32, torch.bfloat16, model.dtype]))  # the model's own among them
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


def measure_compiled_decoding(args: SpeedArguments, device: str) -> dict:
    """Compiled decoding against generate() as the runs call it, on the roofline's model and shape."""
    from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer

    model, _, spec = load_model_and_tokenizer(ModelArguments(model=args.roofline_model, dtype=args.roofline_dtype))
    model.to(device)
    report = measure_decoding(
        model,
        batch=args.roofline_batch,
        prompt=args.roofline_prompt,
        answer=args.roofline_answer,
        repeats=args.repeats,
        variants=args.decoding_variants or variants_for(device),
    )
    print(format_decoding(report), flush=True)
    report["settings"].update(model=args.roofline_model, dtype=spec["dtype"])
    return report


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
    report = {"args": dataclasses.asdict(args), "machine": machine_info(device), "versions": versions()}
    logger.info("machine: %s", report["machine"])

    # ------------------------------------------------------------------ loss head
    if "loss_head" in args.stages:
        report["loss_head"] = measure_loss_head(
            device,
            dtype,
            methods=args.methods,
            tokens=args.tokens,
            hidden=args.hidden,
            vocab=args.vocab,
            chunk_size=args.chunk_size,
            seed=args.seed,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
        )

    # ------------------------------------------------------------------ online loop
    if "online" in args.stages:
        report["online"] = measure_online(
            device,
            model=args.online_model,
            dataset=args.online_dataset,
            prompts=args.online_prompts,
            batch_size=args.online_batch_size,
            max_new_tokens=args.online_max_new_tokens,
            rounds=args.online_rounds,
            seed=args.seed,
        )

    # ------------------------------------------------------------------ generation backends
    if "generation" in args.stages:
        report["generation"] = measure_generation(
            device,
            model=args.online_model,
            dataset=args.online_dataset,
            prompts=args.generation_prompts,
            batch_sizes=args.generation_batch_sizes,
            max_new_tokens=args.generation_max_new_tokens,
            rounds=args.generation_rounds,
        )

    # ------------------------------------------------------------------ roofline
    if "roofline" in args.stages:
        report["roofline"] = measure_roofline(args, device)

    # ------------------------------------------------------------------ compiled decoding
    if "decoding" in args.stages:
        report["decoding"] = measure_compiled_decoding(args, device)

    # ------------------------------------------------------------------ save
    write_json(args.output_json, report)
    logger.info("wrote %s", args.output_json)
    return report


if __name__ == "__main__":
    main()
