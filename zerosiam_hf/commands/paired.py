"""Paired differences between two sets of runs: the same methods and seeds on the same problems, under two conditions
(with and without the collapse guard, two batch sizes, a noised stream beside the clean one, two dtypes).

Each folder is a comparison's (`compare.py --output_dir`) or a folder of its runs (`<method>-seed<k>/`, as a
scenario's cells hold them under `runs/<cell>/`). For each method in both, seed k of one is paired with seed k of the
other, problem by problem (`index` in predictions.jsonl): a run pair that answered other problems is refused, and a
noised run pairs with a clean one (the same problems, worded otherwise). Per method and accuracy (strict, flexible):
both accuracies, the difference `after - before` in points with the comparisons' bootstrap interval over seeds and
problems, wins and losses over problems and the exact sign test's p (`zerosiam_hf.significance`).

Usage:

    # the collapse guard against the same runs without it
    python scripts/paired.py --before results/scenario-batch1-synthetic/plain \\
        --after results/scenario-batch1-synthetic/guard --labels plain guard

    # one cell of a scenario against another
    python scripts/paired.py --before results/scenario-stream-synthetic/plain/runs/iid \\
        --after results/scenario-stream-synthetic/plain/runs/blocked --methods none tent
"""

from dataclasses import dataclass, field
from pathlib import Path

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.pairing import paired_rows, paired_table, runs_in
from zerosiam_hf.records import write_json


@dataclass
class PairedArguments:
    """Command-line arguments: the two folders, which methods, and how to name the two columns."""

    before: str = field(metadata={"help": "A comparison's folder, or a folder of its runs (<method>-seed<k>/)."})
    after: str = field(metadata={"help": "The same for the other condition: the difference is after - before."})
    methods: list[str] | None = field(
        default=None, metadata={"help": "Methods to pair, in this order (default: every method both folders hold)."}
    )
    labels: list[str] | None = field(
        default=None, metadata={"help": "Two column names, before and after (default: the folders' names)."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the rows as JSON to this file."})

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != 2:
            raise ValueError(f"--labels takes two names (before, after), got {len(self.labels)}: {self.labels}.")


@exits_cleanly
def main(argv: list[str] | None = None) -> list[dict]:
    """Pair the two folders' runs, print the table (and write the JSON); return the rows."""
    (args,) = parse_args((PairedArguments,), argv)
    before, after = runs_in(args.before), runs_in(args.after)
    shared = [m for m in before if m in after]
    methods = args.methods or shared
    missing = [m for m in methods if m not in shared]
    if missing:
        raise ValueError(
            f"--methods {' '.join(missing)}: not in both folders, which share {', '.join(shared) or 'none'}."
        )
    rows = paired_rows(before, after, methods)
    labels = tuple(args.labels or (Path(args.before).name, Path(args.after).name))
    print(paired_table(rows, labels), end="")
    if args.output_json:
        write_json(args.output_json, {"before": args.before, "after": args.after, "labels": labels, "rows": rows})
    return rows


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
