"""Compare adaptation methods over several seeds under the online protocol: a markdown table and PNG plots.

Usage:

    # none / tent / come / zerosiam x 3 seeds on 64 synthetic problems (the `base` preset), embedded model, CPU
    python scripts/compare.py --model llama --synthetic_preset base --max_samples 64 --max_new_tokens 96 \\
        --per_device_train_batch_size 8 --output_dir outputs/compare

    # the same on GSM8K test (first 200 problems)
    python scripts/compare.py --model llama --dataset gsm8k --max_samples 200 --output_dir outputs/compare-gsm8k

    # a collapse stress test: a learning rate where Tent collapses
    python scripts/compare.py --model llama --synthetic_preset base --methods tent zerosiam --learning_rate 5e-3 \\
        --output_dir outputs/stress

Each run is a full adapt.py run in <output_dir>/runs/<method>-seed<k>/ (adapter, run.json, predictions.jsonl);
a run already finished there with the same settings is reused, so an interrupted comparison resumes.
The comparison is written to <output_dir>/comparison.md, comparison.json and one PNG per diagnostic.
"""

import dataclasses
import logging
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from adapt import AdaptArguments, run

from zerosiam_hf.cli import exits_cleanly, parse_args
from zerosiam_hf.config import METHODS, ZeroSiamConfig
from zerosiam_hf.data import DataArguments
from zerosiam_hf.modeling import ModelArguments
from zerosiam_hf.records import check_output_dir, config_dict, matching_record, versions, write_json, write_jsonl
from zerosiam_hf.synthetic import SHIFTS, generate_problems


logger = logging.getLogger("zerosiam_hf")
PLOTTED = {
    "collapse/entropy": "mean entropy of the clean branch (nats)",
    "collapse/logit_norm": "mean logit L2 norm",
    "online/accuracy_flexible": "running accuracy, flexible (%)",
    "answers/degenerate": "degenerate answers (share)",
}


@dataclass
class CompareArguments:
    """Which methods and seeds to compare, and on what."""

    methods: list[str] = field(
        default_factory=lambda: ["none", "tent", "come", "zerosiam"], metadata={"help": f"Methods, from {METHODS}."}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds, one run each per method."})
    synthetic_preset: str | None = field(
        default=None,
        metadata={
            "help": f"Generate the problems from a synthetic preset ({', '.join(SHIFTS)}) instead of --dataset."
        },
    )
    synthetic_n: int = field(default=128, metadata={"help": "Number of synthetic problems to generate."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an output_dir that holds a different run."})

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}.")
        if len(self.seeds) < 1:
            raise ValueError("--seeds needs at least one seed.")
        if self.synthetic_preset is not None and self.synthetic_preset not in SHIFTS:
            raise ValueError(f"--synthetic_preset must be one of {', '.join(SHIFTS)}; got {self.synthetic_preset!r}.")


def _series(record: dict, key: str) -> list[tuple[int, float]]:
    return [(entry["step"], entry[key]) for entry in record["log_history"] if key in entry]


def _last(record: dict, key: str) -> float | None:
    series = _series(record, key)
    return series[-1][1] if series else None


def _label(method: str, runs: list[dict]) -> str:
    ablation = runs[0]["config"]["ZeroSiamConfig"]["ablation"]
    return method if ablation == "none" else f"{method} ({ablation})"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: dict[str, list[dict]]) -> list[dict]:
    """One row per method: accuracy mean and std over seeds, final collapse diagnostics, mean degenerate share."""
    rows = []
    for method, runs in records.items():
        strict = _mean_std([r["results"]["online"]["accuracy_strict"] for r in runs])
        flexible = _mean_std([r["results"]["online"]["accuracy_flexible"] for r in runs])
        row = {"method": _label(method, runs), "seeds": len(runs), "n": runs[0]["results"]["online"]["n"]}
        row.update({"strict_mean": strict[0], "strict_std": strict[1]})
        row.update({"flexible_mean": flexible[0], "flexible_std": flexible[1]})
        for key, name in (("collapse/entropy", "final_entropy"), ("collapse/logit_norm", "final_logit_norm")):
            finals = [_last(r, key) for r in runs]
            row[name] = statistics.fmean(finals) if None not in finals else None
        degenerate = [v for r in runs for _, v in _series(r, "answers/degenerate")]
        row["degenerate"] = statistics.fmean(degenerate) if degenerate else None
        row["seconds"] = statistics.fmean(r["timings"]["adapt_seconds"] for r in runs)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Render the summary rows as a markdown table."""

    def fmt(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| method | seeds | n | strict acc. % | flexible acc. % | final entropy | final logit norm | degenerate "
        "| s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['n']} | {fmt(r['strict_mean'])} ± {fmt(r['strict_std'])} "
            f"| {fmt(r['flexible_mean'])} ± {fmt(r['flexible_std'])} | {fmt(r['final_entropy'], 3)} "
            f"| {fmt(r['final_logit_norm'], 1)} | {fmt(r['degenerate'], 3)} | {fmt(r['seconds'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: dict[str, list[dict]], output_dir: Path) -> list[str]:
    """One PNG per diagnostic: its per-step value, averaged over seeds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # One colour per method across every plot, also where a method has no series (`none` logs no entropy).
    colours = {method: f"C{i}" for i, method in enumerate(records)}
    for key, label in PLOTTED.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for method, runs in records.items():
            by_step: dict[int, list[float]] = {}
            for r in runs:
                for step, value in _series(r, key):
                    by_step.setdefault(step, []).append(value)
            if by_step:
                steps = sorted(by_step)
                means = [statistics.fmean(by_step[s]) for s in steps]
                ax.plot(steps, means, marker="o", ms=3, color=colours[method], label=_label(method, runs))
        ax.set_xlabel("step (online batch)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        name = key.replace("/", "_") + ".png"
        fig.savefig(output_dir / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Run every method x seed and write the comparison."""
    # ------------------------------------------------------------------------------------------------ arguments
    model_args, data_args, compare_args, args = parse_args(
        (ModelArguments, DataArguments, CompareArguments, ZeroSiamConfig), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.protocol != "online":
        raise ValueError("compare.py compares online accuracy; use --protocol online.")
    output_dir = Path(args.output_dir)
    config = config_dict(model_args, data_args, compare_args, args)
    # A folder without comparison.json is an interrupted comparison: its finished runs are reused below.
    if (output_dir / "comparison.json").is_file():
        check_output_dir(str(output_dir), config, compare_args.overwrite, record_file="comparison.json")
    output_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------ data
    # Synthetic problems are drawn anew for each seed (shared by every method), so the spread over seeds covers
    # the test sample as well as the adapter's initialisation; a fixed dataset varies only the latter.
    seed_data = {seed: data_args for seed in compare_args.seeds}
    if compare_args.synthetic_preset is not None:
        preset = compare_args.synthetic_preset
        for seed in compare_args.seeds:
            shift = dataclasses.replace(SHIFTS[preset], seed=seed)
            problems_file = write_jsonl(
                output_dir / f"synthetic-{preset}-seed{seed}.jsonl", generate_problems(compare_args.synthetic_n, shift)
            )
            seed_data[seed] = dataclasses.replace(data_args, dataset=problems_file)

    # ------------------------------------------------------------------------------------------------ runs
    records: dict[str, list[dict]] = {}
    for method in compare_args.methods:
        for seed in compare_args.seeds:
            run_dir = output_dir / "runs" / f"{method}-seed{seed}"
            logger.info("run %s", run_dir)
            run_args = dataclasses.replace(args, method=method, seed=seed, output_dir=str(run_dir))
            script_args = AdaptArguments(overwrite=compare_args.overwrite)
            # A finished run with the same settings (an earlier, interrupted comparison) is read, not redone.
            record = matching_record(str(run_dir), config_dict(model_args, seed_data[seed], script_args, run_args))
            if record is None or compare_args.overwrite:
                record = run(model_args, seed_data[seed], script_args, run_args)
            else:
                logger.info("reusing the finished run in %s", run_dir)
            records.setdefault(method, []).append(record)

    # ------------------------------------------------------------------------------------------------ report
    rows = summarize(records)
    table = markdown_table(rows)
    plots = plot(records, output_dir)
    (output_dir / "comparison.md").write_text(table)
    write_json(
        output_dir / "comparison.json",
        {"config": config, "command": sys.argv, "versions": versions(), "rows": rows, "plots": plots},
    )
    print(table)
    print(f"comparison and plots in {output_dir}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
