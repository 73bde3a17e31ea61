"""Write synthetic GSM8K-format word problems to a jsonl file with ``question`` and ``answer`` columns.

A preset of ``zerosiam_hf.synthetic.SHIFTS`` gives the starting knobs; any knob given on the command line overrides it.
The file loads with ``datasets.load_dataset("json", data_files=PATH, split="train")``. It appears whole or not at all,
and an existing file is replaced only with ``--overwrite true``.

Usage:

    # 512 problems of the calibrated base distribution
    python scripts/make_synthetic.py --output outputs/synthetic/base.jsonl --n 512

    # the same problems, wrapped in a verbose narrative (a known shift in wording; same answers)
    python scripts/make_synthetic.py --output outputs/synthetic/verbose.jsonl --n 512 --preset verbose

    # a custom shift: three steps over all four operations, two distractor sentences, another seed
    python scripts/make_synthetic.py --output outputs/synthetic/custom.jsonl --n 256 \\
        --num_steps 3 --operations "+-*/" --num_distractors 2 --seed 1
"""

import dataclasses
import logging
from dataclasses import dataclass, field

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.synthetic import SHIFTS, SyntheticConfig, generate_problems, write_problems


logger = logging.getLogger(__name__)


@dataclass
class MakeSyntheticArguments:
    """Command-line arguments: where to write, how many problems, and the generator knobs."""

    output: str = field(metadata={"help": "Path of the jsonl file to write (its folder is created)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace --output if it exists (refused otherwise)."})
    n: int = field(default=512, metadata={"help": "Number of problems."})
    preset: str = field(default="base", metadata={"help": f"Starting knobs, one of {list(SHIFTS)}."})
    num_steps: int | None = field(default=None, metadata={"help": "Arithmetic operations chained per problem."})
    max_value: int | None = field(default=None, metadata={"help": "Largest starting count and added amount."})
    num_distractors: int | None = field(default=None, metadata={"help": "Irrelevant sentences with numbers."})
    phrasing: str | None = field(default=None, metadata={"help": "One of 'plain', 'verbose', 'words'."})
    operations: str | None = field(default=None, metadata={"help": "Subset of '+-*/' (division is exact)."})
    seed: int | None = field(default=None, metadata={"help": "Generator seed."})

    def __post_init__(self):
        if self.preset not in SHIFTS:
            raise ValueError(f"--preset must be one of {', '.join(SHIFTS)}, got {self.preset!r}.")
        if self.n < 1:
            raise ValueError(f"--n must be a positive number of problems, got {self.n}.")

    def config(self) -> SyntheticConfig:
        """Return the preset with the knobs given on the command line applied (validated by SyntheticConfig)."""
        knobs = {f.name for f in dataclasses.fields(SyntheticConfig)}
        overrides = {k: v for k, v in dataclasses.asdict(self).items() if k in knobs and v is not None}
        return dataclasses.replace(SHIFTS[self.preset], **overrides)


@exits_cleanly
def main(argv: list[str] | None = None):
    """Parse the arguments, generate the problems and write them."""
    # ---- logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # ---- arguments and data: a knob value that cannot work raises ValueError, reported like a malformed flag
    (args,) = parse_args((MakeSyntheticArguments,), argv)
    config = args.config()
    rows = generate_problems(args.n, config)

    # ---- save
    path = write_problems(args.output, rows, args.overwrite)
    logger.info("Wrote %d problems to %s with %s", len(rows), path, config)


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
