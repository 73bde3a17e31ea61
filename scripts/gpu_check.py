"""What ZeroSiam costs on a GPU at real shapes, with random-weight models: one update's memory against answer length,
one online step at the paper's settings against generation alone, the loss head, a roofline of the online step's
phases, static against continuous-batching generation, and compiled decoding (CUDA graphs) against generate() as
the runs call it (see zerosiam_hf/bench/gpu_check.py). Needs torch, transformers, peft and accelerate (and datasets
for the roofline); writes one JSON, rewritten as each section ends. Sized to end within one 8-minute call on one
H100 (docs/BENCHMARKS.md), the decoding section last, on an estimate of its compile; if the call ends before it:

    python scripts/gpu_check.py --output gpu_check.json
    python scripts/gpu_check.py --sections decoding --output gpu_check_decoding.json

    # from a checkout with nothing installed (a bare GPU image)
    PYTHONPATH=. python scripts/gpu_check.py --output gpu_check.json

`--plan tiny` runs the same code at toy shapes (on a CPU: seconds); `--sections` runs some sections only.
"""

from dataclasses import dataclass, field
from typing import Literal

from zerosiam_hf.engines import hide_optional_engines


hide_optional_engines()  # before bench.gpu_check imports peft, as every command does

from zerosiam_hf.bench.gpu_check import PLANS, SECTIONS, run_check  # noqa: E402
from zerosiam_hf.cli import exits_cleanly, parse_args  # noqa: E402


@dataclass
class GpuCheckArguments:
    """Arguments of scripts/gpu_check.py."""

    output: str = field(
        default="gpu_check.json", metadata={"help": "The JSON to write (rewritten after each section)."}
    )
    plan: Literal[tuple(sorted(PLANS))] = field(
        default="gpu", metadata={"help": "Shapes and sizes: gpu (real) or tiny."}
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    sections: list[str] | None = field(
        default=None, metadata={"choices": list(SECTIONS), "help": "Default: all, in order."}
    )


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, run the check's sections and say where their JSON is."""
    (args,) = parse_args((GpuCheckArguments,), argv)
    result = run_check(args.plan, args.output, device=args.device, sections=args.sections)
    print(f"GPU check ({args.plan}) written to {args.output}: {', '.join(result['sections'])}")
    return result


if __name__ == "__main__":
    main()
