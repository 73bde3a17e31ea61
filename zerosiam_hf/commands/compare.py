"""Compare adaptation methods over seeds (and benchmarks) under the online protocol: markdown tables and PNG plots.

Usage:

    # none / tent / come / zerosiam x 3 seeds on 64 synthetic problems (the `base` preset), embedded model, CPU
    python scripts/compare.py --model llama --synthetic_preset base --max_samples 64 --max_new_tokens 96 \\
        --per_device_train_batch_size 8 --output_dir outputs/compare

    # the same on GSM8K test (first 200 problems)
    python scripts/compare.py --model llama --dataset gsm8k --max_samples 200 --output_dir outputs/compare-gsm8k

    # the paper's table: four benchmarks, one column each plus their average (configs/paper_suite_llama3.1_8b.yaml
    # holds the paper's model and settings for a GPU; --dry_run true resolves everything and runs nothing)
    python scripts/compare.py --model llama --datasets math500 college_math aime24 minerva_math --max_samples 64 \\
        --max_new_tokens 128 --per_device_train_batch_size 8 --seeds 0 --output_dir outputs/paper-suite

    # a collapse stress test: a learning rate where Tent collapses
    python scripts/compare.py --model llama --synthetic_preset base --methods tent zerosiam --learning_rate 5e-3 \\
        --output_dir outputs/stress

Each run is a full adapt.py run in <output_dir>/runs/<method>-seed<k>/ (with --datasets, in
<output_dir>/runs/<dataset>/<method>-seed<k>/): adapter, run.json, predictions.jsonl. A run already finished there
with the same settings is reused, and one stopped after a checkpoint resumes from it, so an interrupted
comparison resumes. The comparison is written to
<output_dir>/comparison.md, comparison.json and one PNG per diagnostic (one panel per benchmark).
"""

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.comparison import dataset_key, plot, report, run_all
from zerosiam_hf.config import SharedRunConfig
from zerosiam_hf.data import DataArguments, load_problems
from zerosiam_hf.methods import METHODS
from zerosiam_hf.modeling import ModelArguments, resolve_model
from zerosiam_hf.records import config_dict, versions, write_json, write_jsonl
from zerosiam_hf.staging import OutputArguments, check_output_dir
from zerosiam_hf.synthetic import SHIFTS, generate_problems
from zerosiam_hf.tasks import BENCHMARKS


logger = logging.getLogger("zerosiam_hf")


@dataclass
class CompareArguments:
    """Which methods and seeds to compare, and on what."""

    methods: list[str] = field(
        default_factory=lambda: ["none", "tent", "come", "zerosiam"],
        metadata={"help": f"Methods, from {tuple(METHODS)}."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds, one run each per method."})
    datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Several benchmarks (or data files) in one comparison, one table column each plus their "
            f"average, e.g. math500 college_math aime24 minerva_math ({', '.join(BENCHMARKS)}); default --dataset."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Resolve the model and load every benchmark, print the runs to do, and run nothing."},
    )
    synthetic_preset: str | None = field(
        default=None,
        metadata={
            "help": f"Generate the problems from a synthetic preset ({', '.join(SHIFTS)}) instead of --dataset."
        },
    )
    synthetic_n: int = field(default=128, metadata={"help": "Number of synthetic problems to generate."})
    runs_only: bool = field(
        default=False,
        metadata={
            "help": "Run (or reuse) the runs and write no comparison: for several compare processes sharing one "
            "--output_dir (one per GPU or method, say); the same command with every method then writes it."
        },
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}.")
        if len(self.seeds) < 1:
            raise ValueError("--seeds needs at least one seed.")
        if self.synthetic_preset is not None and self.synthetic_preset not in SHIFTS:
            raise ValueError(f"--synthetic_preset must be one of {', '.join(SHIFTS)}; got {self.synthetic_preset!r}.")
        if self.datasets is not None and self.synthetic_preset is not None:
            raise ValueError("--datasets and --synthetic_preset exclude each other; give one of them.")
        if self.datasets is not None and len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"--datasets names a benchmark twice: {' '.join(self.datasets)}.")


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Run every method x seed (x benchmark) and write the comparison."""
    # ------------------------------------------------------------------------------------------------ arguments
    model_args, data_args, compare_args, output_args, args = parse_args(
        (ModelArguments, DataArguments, CompareArguments, OutputArguments, SharedRunConfig), argv
    )
    args.check_methods(compare_args.methods)
    resolve_model(model_args.model)  # an unknown model is one line before any problem file is written
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.protocol != "online":
        raise ValueError("compare.py compares online accuracy; use --protocol online.")
    output_dir = Path(args.output_dir)
    config = config_dict(model_args, data_args, compare_args, output_args, args)

    # ------------------------------------------------------------------------------------------------ data
    # One entry per table column. Synthetic problems are drawn anew for each seed (shared by every method), so the
    # spread over seeds covers the test sample as well as the adapter's initialisation; a fixed dataset varies only
    # the latter.
    suite = compare_args.datasets is not None
    columns = {
        dataset_key(name): {seed: data_args.for_dataset(name) for seed in compare_args.seeds}
        for name in (compare_args.datasets or [data_args.dataset])
    }
    if compare_args.dry_run:
        return dry_run(model_args, columns, compare_args, output_dir)
    # A folder without comparison.json is an interrupted comparison: its finished runs are reused below. A process
    # that writes no comparison may share a folder with another comparison's.
    if (output_dir / "comparison.json").is_file() and not compare_args.runs_only:
        check_output_dir(str(output_dir), config, output_args.overwrite, record_file="comparison.json")
    output_dir.mkdir(parents=True, exist_ok=True)
    if compare_args.synthetic_preset is not None:
        preset = compare_args.synthetic_preset
        for seed, seed_data in next(iter(columns.values())).items():
            shift = dataclasses.replace(SHIFTS[preset], seed=seed)
            problems_file = write_jsonl(
                output_dir / f"synthetic-{preset}-seed{seed}.jsonl", generate_problems(compare_args.synthetic_n, shift)
            )
            next(iter(columns.values()))[seed] = dataclasses.replace(seed_data, dataset=problems_file)

    # ------------------------------------------------------------------------------------------------ runs
    records = run_all(
        model_args, columns, compare_args.methods, compare_args.seeds, output_args, args, output_dir, suite
    )
    if compare_args.runs_only:
        runs = sum(len(seeds) for methods in records.values() for seeds in methods.values())
        print(f"{runs} runs finished in {output_dir}/runs; without --runs_only the command writes the comparison")
        return {"runs": runs}

    # ------------------------------------------------------------------------------------------------ report
    plots = plot(records, output_dir)
    result, table = report(records, suite, compare_args.methods)
    (output_dir / "comparison.md").write_text(table)
    write_json(
        output_dir / "comparison.json",
        {"config": config, "command": sys.argv, "versions": versions(), **result, "plots": plots},
    )
    print(table)
    print(f"comparison and plots in {output_dir}")
    return result


def dry_run(model_args: ModelArguments, columns: dict, compare_args: CompareArguments, output_dir: Path) -> dict:
    """Resolve the model and every benchmark (loading and validating its problems) and list the runs; run nothing."""
    spec = resolve_model(model_args.model)
    plan = {}
    for key, seed_data in columns.items():
        problems, identity = load_problems(next(iter(seed_data.values())))
        plan[key] = {"problems": len(problems), "checker": identity["checker"], "source": identity.get("path")}
        plan[key]["source"] = plan[key]["source"] or identity.get("id")
        print(f"{key}: {len(problems)} problems from {plan[key]['source']}, checker {identity['checker']}")
    runs = len(columns) * len(compare_args.methods) * len(compare_args.seeds)
    print(f"model {spec['name_or_path']}; {runs} runs into {output_dir}/runs (dry run: nothing was run)")
    return {"model": spec, "plan": plan, "runs": runs}


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
