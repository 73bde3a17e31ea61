"""What ZeroSiam costs on a GPU at real shapes, with random-weight models: the loss head, one online step at the
paper's settings against generation alone, static against continuous-batching generation, and one update's memory
against answer length (see zerosiam_hf/gpu_check.py). Needs only torch, transformers, peft and accelerate; writes one
JSON. On one H200 all but the generation section took 2 minutes (docs/BENCHMARKS.md):

    python scripts/gpu_check.py --output gpu_check.json

`--plan tiny` runs the same code at toy shapes (on a CPU: seconds).
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a bare checkout, nothing installed

from zerosiam_hf.gpu_check import PLANS, SECTIONS, run_check  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check.json", help="The JSON to write (rewritten after each section).")
    parser.add_argument("--plan", choices=sorted(PLANS), default="gpu", help="Shapes and sizes: gpu (real) or tiny.")
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=None, help="Default: all, in order.")
    args = parser.parse_args(argv)
    result = run_check(args.plan, args.output, device=args.device, sections=args.sections)
    print(f"GPU check ({args.plan}) written to {args.output}: {', '.join(result['sections'])}")
    return result


if __name__ == "__main__":
    main()
