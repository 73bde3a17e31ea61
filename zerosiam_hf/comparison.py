"""A comparison of adaptation methods over seeds (and benchmarks): the runs, one `pipeline.adapt_or_reuse` each, then
markdown tables (one row per method; the paper's layout for several benchmarks) and PNG plots of the diagnostics."""

import logging
import statistics
from pathlib import Path

from .config import SharedRunConfig
from .modeling import ModelArguments
from .pipeline import adapt_or_reuse
from .records import logged_series
from .staging import OutputArguments
from .tasks import BENCHMARKS, PAPER_RESULTS


logger = logging.getLogger("zerosiam_hf")
PLOTTED = {
    "collapse/entropy": "mean entropy of the clean branch (nats)",
    "collapse/logit_norm": "mean logit L2 norm",
    "online/accuracy_flexible": "running accuracy, flexible (%)",
    "answers/degenerate": "degenerate answers (share)",
}


def _last(record: dict, key: str) -> float | None:
    series = logged_series(record, key)
    return series[-1][1] if series else None


def _label(method: str, runs: list[dict]) -> str:
    ablation = runs[0]["config"]["ZeroSiamConfig"]["ablation"]
    return method if ablation in (None, "none") else f"{method} ({ablation})"


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
        degenerate = [v for r in runs for _, v in logged_series(r, "answers/degenerate")]
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


COSTS = (
    ("generated_tokens", "generated tokens"),
    ("trained_tokens", "forward-backward tokens"),
    ("forward_tokens", "extra forward tokens"),
    ("seconds", "seconds"),
)


def cost_rows(records: dict[str, list[dict]]) -> list[dict]:
    """Per method, what it spent per problem (mean over its runs), and the same relative to `none`'s spend.

    Tokens come from each run's `results.cost`; seconds are the run's adaptation wall time (answering included).
    A run recorded before the cost was counted has none: its row reads n/a.
    """

    def per_problem(run: dict) -> dict | None:
        cost = run["results"].get("cost")
        if cost is None:
            return None
        spent = {key: cost[key] for key, _ in COSTS if key != "seconds"}
        spent["seconds"] = run["timings"]["adapt_seconds"]
        return {key: value / cost["problems"] for key, value in spent.items()}

    rows = {}
    for method, runs in records.items():
        spent = [per_problem(run) for run in runs]
        means = None if None in spent else {key: statistics.fmean(s[key] for s in spent) for key, _ in COSTS}
        rows[method] = {"method": _label(method, runs), "per_problem": means}
    baseline = rows.get("none", {}).get("per_problem")
    for row in rows.values():
        mine = row["per_problem"]
        row["relative"] = (
            None
            if mine is None or baseline is None
            else {key: mine[key] / baseline[key] if baseline[key] else None for key, _ in COSTS}
        )
    return list(rows.values())


def cost_table(rows: list[dict]) -> str:
    """Markdown for `cost_rows`: each cost per problem, with its ratio to `none` in brackets."""
    lines = [
        "| method | " + " | ".join(f"{name} / problem" for _, name in COSTS) + " |",
        "|---|" + "---|" * len(COSTS),
    ]
    for r in rows:
        cells = []
        for key, _ in COSTS:
            if r["per_problem"] is None:
                cells.append("n/a")
                continue
            ratio = (r["relative"] or {}).get(key)
            digits = 2 if key == "seconds" else 0
            cells.append(f"{r['per_problem'][key]:.{digits}f}" + ("" if ratio is None else f" ({ratio:.2f}x)"))
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sample_rows(records: dict[str, list[dict]]) -> list[dict]:
    """Sampling methods: first-sample, avg@k and maj@k accuracy (flexible), mean over runs."""
    rows = []
    for method, runs in records.items():
        online = [r["results"]["online"] for r in runs]
        if all("avg_at_k" in o for o in online):
            k = runs[0]["config"]["ZeroSiamConfig"]["num_generations"]
            row = {"method": _label(method, runs), "k": k}
            for key in ("accuracy_flexible", "avg_at_k", "maj_at_k"):
                row[key] = statistics.fmean(o[key] for o in online)
            rows.append(row)
    return rows


def sample_table(rows: list[dict]) -> str:
    """Markdown for `sample_rows`."""
    lines = ["| method | k | first sample % | avg@k % | maj@k % |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['k']} | {r['accuracy_flexible']:.2f} | {r['avg_at_k']:.2f} | {r['maj_at_k']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def dataset_key(name: str) -> str:
    """A benchmark's name, or a data file's stem: the folder and column of its runs."""
    return name if name in BENCHMARKS else Path(name).stem


def _title(key: str) -> str:
    return BENCHMARKS[key].title if key in BENCHMARKS else key


def suite_rows(records: dict[str, dict[str, list[dict]]], metric: str) -> list[dict]:
    """The paper's layout for one accuracy metric: per method, mean ± std over seeds for each benchmark and for
    their average (the average is taken within each seed, then over seeds)."""
    rows = []
    for method in next(iter(records.values())):
        runs = {key: by_method[method] for key, by_method in records.items()}
        per_seed = {key: [r["results"]["online"][metric] for r in rs] for key, rs in runs.items()}
        averages = [statistics.fmean(values) for values in zip(*per_seed.values())]
        row = {"method": _label(method, next(iter(runs.values()))), "seeds": len(averages)}
        row.update({key: _mean_std(values) for key, values in per_seed.items()})
        row["average"] = _mean_std(averages)
        row["n"] = {key: rs[0]["results"]["online"]["n"] for key, rs in runs.items()}
        rows.append(row)
    return rows


def suite_table(rows: list[dict], keys: list[str]) -> str:
    """Markdown for `suite_rows`: one column per benchmark plus the average, n under each column."""
    lines = [
        "| method | seeds | " + " | ".join(_title(k) for k in keys) + " | avg |",
        "|---|---|" + "---|" * (len(keys) + 1),
    ]
    for r in rows:
        cells = [f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in [*keys, "average"]]
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    lines.append("| n | | " + " | ".join(str(rows[0]["n"][k]) for k in keys) + " | |")
    return "\n".join(lines) + "\n"


def diagnostics_table(records: dict[str, dict[str, list[dict]]]) -> str:
    """Per method and benchmark: final clean-branch entropy / share of degenerate answers, averaged over seeds."""
    keys = list(records)
    lines = ["| method | " + " | ".join(_title(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for method in records[keys[0]]:
        cells = []
        for key in keys:
            (row,) = summarize({method: records[key][method]})
            entropy = "n/a" if row["final_entropy"] is None else f"{row['final_entropy']:.3f}"
            cells.append(f"{entropy} / {row['degenerate']:.3f}")
        lines.append(f"| {_label(method, records[keys[0]][method])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_table(keys: list[str]) -> str:
    """The paper's own figures for the benchmarks it reports, in the columns of the measured table."""
    reported = [k for k in keys if k in next(iter(PAPER_RESULTS["rows"].values()))]
    if not reported:
        return ""
    show_average = sorted(reported) == sorted(next(iter(PAPER_RESULTS["rows"].values())))
    lines = [
        "| method | " + " | ".join(_title(k) for k in reported) + (" | avg |" if show_average else " |"),
        "|---|" + "---|" * (len(reported) + show_average),
    ]
    for method, values in PAPER_RESULTS["rows"].items():
        cells = [f"{values[k]:.2f}" for k in reported]
        if show_average:
            cells.append(f"{statistics.fmean(values.values()):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: dict[str, dict[str, list[dict]]], output_dir: Path) -> list[str]:
    """One PNG per diagnostic, one panel per benchmark: the per-step value averaged over seeds, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    keys = list(records)
    # One colour per method across every plot, also where a method has no series (`none` logs no entropy).
    colours = {method: f"C{i}" for i, method in enumerate(records[keys[0]])}
    for key, label in PLOTTED.items():
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 3.5), squeeze=False)
        for ax, dataset in zip(axes[0], keys):
            for method, runs in records[dataset].items():
                by_step: dict[int, list[float]] = {}
                for r in runs:
                    for step, value in logged_series(r, key):
                        by_step.setdefault(step, []).append(value)
                if by_step:
                    steps = sorted(by_step)
                    means = [statistics.fmean(by_step[s]) for s in steps]
                    ax.plot(steps, means, marker="o", ms=3, color=colours[method], label=_label(method, runs))
            if len(keys) > 1:
                ax.set_title(_title(dataset))
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


def run_all(
    model_args: ModelArguments,
    columns: dict,
    methods: list[str],
    seeds: list[int],
    output_args: OutputArguments,
    args: SharedRunConfig,
    output_dir: Path,
    suite: bool,
) -> dict[str, dict[str, list[dict]]]:
    """Every method x seed on every column (`columns`: key -> seed -> DataArguments), each in
    <output_dir>/runs/[<key>/]<method>-seed<k>: its record, read back when a run with the same settings finished
    there, resumed when one was stopped there. Records by column key, then method, in seed order."""
    records: dict[str, dict[str, list[dict]]] = {}
    for key, seed_data in columns.items():
        for method in methods:
            for seed in seeds:
                run_dir = _run_dir(output_dir, key if suite else None, method, seed)
                logger.info("run %s", run_dir)
                run_args = args.for_method(method, seed=seed, output_dir=str(run_dir))
                record = adapt_or_reuse(model_args, seed_data[seed], output_args, run_args)
                records.setdefault(key, {}).setdefault(method, []).append(record)
    return records


def report(records: dict[str, dict[str, list[dict]]], suite: bool, methods: list[str]) -> tuple[dict, str]:
    """The comparison's rows (for comparison.json) and its markdown (comparison.md)."""
    if suite:
        keys = list(records)
        result = {metric: suite_rows(records, metric) for metric in ("accuracy_flexible", "accuracy_strict")}
        by_method = {m: [run for runs in records.values() for run in runs[m]] for m in methods}
        result["cost"], result["samples"] = cost_rows(by_method), sample_rows(by_method)
        paper = paper_table(keys)
        table = (
            "Online accuracy %, flexible (math-verify's own extraction; numeric: last number):\n\n"
            + suite_table(result["accuracy_flexible"], keys)
            + "\nOnline accuracy %, strict (last \\boxed{}; numeric: `#### N`):\n\n"
            + suite_table(result["accuracy_strict"], keys)
            + "\nFinal clean-branch entropy (nats) / share of degenerate answers:\n\n"
            + diagnostics_table(records)
            + "\nCost per problem (ratio to none), over every benchmark and seed:\n\n"
            + cost_table(result["cost"])
            + (f"\nReported by the paper ({PAPER_RESULTS['model']}; not measured here):\n\n{paper}" if paper else "")
        )
    else:
        by_method = next(iter(records.values()))
        result = {"rows": summarize(by_method), "cost": cost_rows(by_method), "samples": sample_rows(by_method)}
        table = markdown_table(result["rows"]) + "\nCost per problem (ratio to none):\n\n" + cost_table(result["cost"])
    if result["samples"]:
        table += "\nSampling methods, online accuracy % (flexible):\n\n" + sample_table(result["samples"])
    return result, table


def _run_dir(output_dir: Path, dataset: str | None, method: str, seed: int) -> Path:
    return output_dir / "runs" / (dataset or "") / f"{method}-seed{seed}"
