"""A comparison of adaptation methods over seeds (and benchmarks): the runs, one `pipeline.adapt_or_reuse` each, then
markdown tables (one row per method; the paper's layout for several benchmarks) and PNG plots of the diagnostics.

A comparison's folder appears whole or not at all: runs, problem files, tables and plots are written in
<output_dir>.partial, which `staging.staged_output` moves into place at the end. The finished runs of the comparison
it replaces are carried over as hard links, so a rerun reuses them while the old folder stays as it was until then."""

import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from .collapse import (
    GUARDED,
    WINDOW,
    accuracy_collapse_step,
    diagnostic_collapse_step,
    guard_thresholds,
    running_accuracy,
)
from .config import SharedRunConfig, ZeroSiamConfig
from .data import DataArguments
from .errors import RunStopped, UsageError
from .invocation import redacted
from .methods import METHODS
from .modeling import ModelArguments
from .pipeline import adapt_or_reuse, run_settings
from .records import (
    PREDICTIONS_FILE,
    RUN_FILE,
    logged_series,
    problem_scores,
    read_jsonl,
    settings_identity,
    versions,
    write_json,
    write_jsonl,
)
from .scenarios import Scenario, plot_scenario
from .significance import bootstrap_interval, paired_difference
from .staging import (
    MARKER_FILE,
    OutputArguments,
    close_staging,
    copy_folder,
    open_staging,
    opened_without_settings,
    staged_output,
    staging_path,
)
from .tasks import BENCHMARKS, PAPER_RESULTS


logger = logging.getLogger("zerosiam_hf")
COMPARISON_FILE = "comparison.json"
RUNS_DIR = "runs"
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
    label = method if ablation in (None, "none") else f"{method} ({ablation})"
    # an oracle's row says so in every table: its reward read the gold answers
    return f"{label} (oracle)" if METHODS[method].reads_gold else label


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


def answer_scores(streams: dict[str, dict[str, list[list[dict]]]]) -> dict[str, dict[str, list[list[float]]]]:
    """Each run's flexible score of every answer (1 right, 0 wrong, in problem order), from its answers as
    `answer_streams` read them, by column key and method."""
    return {
        key: {m: [problem_scores(run) for run in runs] for m, runs in column.items()}
        for key, column in streams.items()
    }


def answer_streams(folders: list[tuple[str, str, str]]) -> dict[str, dict[str, list[list[dict]]]]:
    """Each run's answers as its predictions.jsonl holds them, in the order of the stream, by column key and method,
    for (key, method, folder) in plan order, the order of `run_all`'s records."""
    streams: dict[str, dict[str, list[list[dict]]]] = {}
    for key, method, folder in folders:
        streams.setdefault(key, {}).setdefault(method, []).append(read_jsonl(Path(folder) / PREDICTIONS_FILE))
    return streams


def _problems(run: dict) -> dict:
    """What identifies the problems a run answered (its data's identity, wherever the file was)."""
    return {key: value for key, value in run["data"].items() if key not in ("path", "prompts_cut")}


def _same_problems(runs: list[dict]) -> bool:
    """Whether every run answered the same problems (a benchmark's subset), not a set of its own (a synthetic
    preset draws one per seed)."""
    return all(_problems(run) == _problems(runs[0]) for run in runs)


def _pairs_with_none(method: str, runs: list[dict], none_runs: list[dict]) -> bool:
    """Whether seed k of `method` answered the same problems as seed k of none, for every seed (none not with
    itself)."""
    if method == "none" or len(none_runs) != len(runs):
        return False
    return all(_problems(a) == _problems(b) for a, b in zip(runs, none_runs))


def paired_rows(records: dict[str, dict[str, list[dict]]], scores: dict[str, dict[str, list[list[float]]]]) -> list:
    """Per column and method, its flexible accuracy's 95% interval and, beside `none` on the same problems and seeds,
    the difference in points with its paired bootstrap interval and the exact sign test; `resolved` when the
    interval excludes 0. A method whose seeds or problems do not pair with none's gets no difference."""
    rows = []
    for key, by_method in records.items():
        baseline, none_runs = scores[key].get("none"), by_method.get("none", [])
        for method, runs in by_method.items():
            same = _same_problems(runs)
            accuracy = scores[key][method]
            low, high = bootstrap_interval(accuracy, same)
            row = {"dataset": key, "method": _label(method, runs), "flexible_ci": [100 * low, 100 * high]}
            # seed k of the method beside seed k of none, on the same problems
            if _pairs_with_none(method, runs, none_runs):
                row["vs_none"] = paired_difference(baseline, accuracy, same)
            rows.append(row)
    return rows


def paired_table(rows: list[dict], suite: bool, column: str = "benchmark") -> str:
    """The paired rows as markdown: a method's accuracy interval and its difference to none, one line per method
    (and benchmark, in a suite; `column` names what the suite's columns are: a scenario's are cells)."""
    columns = [column] * suite + ["method", "flexible 95% CI", "vs none (points)", "95% CI", "wins / losses"]
    columns += ["p (sign)", "resolved"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        cells = [r["dataset"]] * suite + [r["method"], "{:.2f} to {:.2f}".format(*r["flexible_ci"])]
        paired = r.get("vs_none")
        if paired is None:
            cells += [""] * 5
        else:
            cells += [
                f"{paired['difference']:+.2f}",
                f"{paired['ci'][0]:+.2f} to {paired['ci'][1]:+.2f}",
                f"{paired['wins']} / {paired['losses']}",
                f"{paired['p']:.3g}",
                "yes" if paired["resolved"] else "no",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collapse_rows(
    records: dict[str, dict[str, list[dict]]], streams: dict[str, dict[str, list[list[dict]]]], window: int
) -> list[dict]:
    """Per column and method, each run's collapse steps: `accuracy_step` (`collapse.accuracy_collapse_step` of its
    answers beside none's of the same seed, in updates) and `diagnostic_step` (`collapse.diagnostic_collapse_step`, a
    logged step); how many runs collapsed by each, and the median step of those that did. none itself, and a method
    whose seeds do not pair with none's on the same problems, have no accuracy step: `accuracy_collapsed` is None."""
    rows = []
    for key, by_method in records.items():
        none_runs, none_streams = by_method.get("none", []), streams[key].get("none", [])
        for method, runs in by_method.items():
            pairs = _pairs_with_none(method, runs, none_runs)
            per_run = []
            for k, (run, answers) in enumerate(zip(runs, streams[key][method])):
                step = None
                if pairs:  # none's score of each problem on the same seed
                    baseline = {answer["index"]: answer["correct_flexible"] for answer in none_streams[k]}
                    step = accuracy_collapse_step(answers, baseline, window)
                seed = run["config"]["ZeroSiamConfig"]["seed"]
                per_run.append({"seed": seed, "accuracy_step": step, "diagnostic_step": diagnostic_collapse_step(run)})
            row = {"dataset": key, "method": _label(method, runs), "window": window, "runs": per_run}
            for criterion, measured in (("accuracy", pairs), ("diagnostic", True)):
                steps = [r[f"{criterion}_step"] for r in per_run if r[f"{criterion}_step"] is not None]
                row[f"{criterion}_collapsed"] = len(steps) if measured else None
                row[f"{criterion}_median_step"] = statistics.median(steps) if steps else None
            rows.append(row)
    return rows


def _steps(runs: list[dict], criterion: str) -> str:
    return ", ".join("never" if run[criterion] is None else str(run[criterion]) for run in runs)


def collapse_table(rows: list[dict], suite: bool, column: str = "benchmark") -> str:
    """Markdown for `collapse_rows`: per method (and benchmark or cell, `column`, in a suite), how many of its runs
    collapsed by each criterion and each seed's step."""
    columns = [column] * suite + ["method", "collapsed (accuracy)", "update, per seed"]
    columns += ["collapsed (diagnostics)", "step, per seed"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        seeds = len(r["runs"])
        cells = [r["dataset"]] * suite + [r["method"]]
        if r["accuracy_collapsed"] is None:
            cells += ["n/a", ""]
        else:
            cells += [f"{r['accuracy_collapsed']}/{seeds}", _steps(r["runs"], "accuracy_step")]
        cells += [f"{r['diagnostic_collapsed']}/{seeds}", _steps(r["runs"], "diagnostic_step")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COSTS = (
    ("generated_tokens", "generated tokens"),
    ("prefill_tokens", "prefill tokens"),
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
        spent = {key: cost.get(key) for key, _ in COSTS if key != "seconds"}
        spent["seconds"] = run["timings"]["adapt_seconds"]
        # a counter added after the run was recorded reads None (n/a)
        return {key: None if value is None else value / cost["problems"] for key, value in spent.items()}

    rows = {}
    for method, runs in records.items():
        spent = [per_problem(run) for run in runs]
        means = None if None in spent else {key: _mean_or_none([s[key] for s in spent]) for key, _ in COSTS}
        rows[method] = {"method": _label(method, runs), "per_problem": means}
    baseline = rows.get("none", {}).get("per_problem")
    for row in rows.values():
        mine = row["per_problem"]
        row["relative"] = (
            None
            if mine is None or baseline is None
            else {
                key: mine[key] / baseline[key] if mine[key] is not None and baseline[key] else None for key, _ in COSTS
            }
        )
    return list(rows.values())


def _mean_or_none(values: list) -> float | None:
    return None if None in values else statistics.fmean(values)


def cost_table(rows: list[dict]) -> str:
    """Markdown for `cost_rows`: each cost per problem, with its ratio to `none` in brackets."""
    lines = [
        "| method | " + " | ".join(f"{name} / problem" for _, name in COSTS) + " |",
        "|---|" + "---|" * len(COSTS),
    ]
    for r in rows:
        cells = []
        for key, _ in COSTS:
            if r["per_problem"] is None or r["per_problem"][key] is None:
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


def _mean_line(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """The mean over runs of (x, y) series at each x that any of them has."""
    by_x: dict[int, list[float]] = {}
    for points in series:
        for x, y in points:
            by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    return xs, [statistics.fmean(by_x[x]) for x in xs]


def plot_collapse(
    records: dict[str, dict[str, list[dict]]],
    streams: dict[str, dict[str, list[list[dict]]]],
    rows: list[dict],
    output_dir: Path,
    window: int,
) -> list[str]:
    """Beside `plot`'s, one PNG per quantity and one panel per column, a line per method (the mean over its seeds): the
    running accuracy of the last `window` answers against the updates before them, marked at each run's accuracy
    collapse step; the clean-branch entropy and the degenerate share against the step, with the collapse guard's
    threshold, marked at each run's diagnostic collapse step (`collapse_rows`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(records)
    colours = {method: f"C{i}" for i, method in enumerate(records[keys[0]])}  # `plot`'s colours
    steps = {(row["dataset"], row["method"]): row["runs"] for row in rows}
    # file, the logged quantity (None: the running accuracy), the step marked, x and y labels
    accuracy = f"flexible accuracy, last {window} answers (%)"
    figures = [("running_accuracy.png", None, "accuracy_step", "updates before the answers", accuracy)]
    figures += [
        (f"guard_{logged.split('/')[1]}.png", logged, "diagnostic_step", "step (online batch)", PLOTTED[logged])
        for logged in GUARDED
    ]
    written = []
    for name, logged, marked, xlabel, ylabel in figures:
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for method, runs in records[key].items():
                label = _label(method, runs)
                if logged is None:
                    series = [running_accuracy(answers, window) for answers in streams[key][method]]
                else:
                    series = [logged_series(run, logged) for run in runs]
                xs, ys = _mean_line(series)
                if xs:
                    ax.plot(xs, ys, marker="o", ms=3, color=colours[method], label=label)
                for run in steps[key, label]:
                    if run[marked] is not None:
                        ax.axvline(run[marked], color=colours[method], linestyle=":", linewidth=1)
            if logged is not None:
                thresholds = {guard_thresholds(run)[logged] for runs in records[key].values() for run in runs}
                for value in sorted(thresholds):
                    ax.axhline(value, color="black", linestyle="--", linewidth=1, label=f"guard threshold {value:g}")
            if len(keys) > 1:
                ax.set_title(_title(key))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written


class PlannedRun(NamedTuple):
    """One run of a comparison: its table column, method, seed, data and settings."""

    key: str
    method: str
    seed: int
    data: DataArguments
    args: ZeroSiamConfig


def plan_runs(
    columns: dict,
    methods: list[str],
    seeds: list[int],
    args: SharedRunConfig,
    output_dir: str,
    suite: bool,
    settings: dict[str, dict] | None = None,
) -> list[PlannedRun]:
    """Every method x seed on every column (`columns`: key -> seed -> DataArguments), each made in
    <output_dir>.partial/runs/[<key>/]<method>-seed<k>, with the run settings its column changes (`settings`: key ->
    {option: value}, a scenario's cells). Every run's settings are made (and so checked) here, before anything is
    written."""
    runs = staging_path(output_dir) / RUNS_DIR
    settings = settings or {}
    return [
        PlannedRun(
            key,
            method,
            seed,
            seed_data[seed],
            args.for_method(
                method,
                seed=seed,
                output_dir=str(runs / (key if suite else "") / f"{method}-seed{seed}"),
                **settings.get(key, {}),
            ),
        )
        for key, seed_data in columns.items()
        for method in methods
        for seed in seeds
    ]


def run_all(
    model_args: ModelArguments, plan: list[PlannedRun], output_args: OutputArguments
) -> dict[str, dict[str, list[dict]]]:
    """Every planned run's record: read back when a run with the same settings finished in its folder, resumed when
    one was stopped there, else run anew. A run planned twice with the same settings and data (`settings_identity`:
    none in every cell of a learning-rate sweep) is made once: its other folders get a copy of the finished run,
    which they then reuse.
    Records by column key, then method, in seed order."""
    records: dict[str, dict[str, list[dict]]] = {}
    made: dict[str, Path] = {}  # a run's settings -> the folder that holds it finished
    for run in plan:
        logger.info("run %s", run.args.output_dir)
        settings = _settings_key(model_args, output_args, run)
        folder = Path(run.args.output_dir)
        if settings in made and not folder.exists():
            _copy_into_place(made[settings], folder, _link)  # its files are never written again, as _carry links
        record = adapt_or_reuse(model_args, run.data, output_args, run.args)
        made.setdefault(settings, folder)
        records.setdefault(run.key, {}).setdefault(run.method, []).append(record)
    return records


def _settings_key(model_args: ModelArguments, output_args: OutputArguments, run: PlannedRun) -> str:
    """What a planned run computes (`records.settings_identity`) as a key, equal for two runs that compute the same."""
    return json.dumps(settings_identity(run_settings(model_args, run.data, output_args, run.args)), sort_keys=True)


def distinct_runs(model_args: ModelArguments, output_args: OutputArguments, plan: list[PlannedRun]) -> int:
    """How many of the planned runs `run_all` makes (or reuses), the others being copies of one of them."""
    return len({_settings_key(model_args, output_args, run) for run in plan})


def run_comparison(
    model_args: ModelArguments,
    plan: list[PlannedRun],
    problem_sets: dict[Path, list[dict]],
    output_args: OutputArguments,
    config: dict,
    output_dir: str,
    suite: bool,
    methods: list[str],
    scenario: Scenario | None = None,
    collapse_window: int = WINDOW,
) -> tuple[dict, str]:
    """Make every planned run (writing `problem_sets` first: path -> problems), the tables and the plots in
    <output_dir>.partial, and publish it to `output_dir`. Returns the comparison's rows and its markdown; a
    `scenario`'s comparison adds its plot of accuracy against the scenario's axis and its cells.

    A folder holding another comparison is refused unless `overwrite`, one holding files no run wrote always; an
    interrupted comparison goes on from its finished runs (`overwrite` starts it over, but for the runs of --runs_only
    processes, which are kept), and a finished run of the same settings and data is reused in either case: adding a
    method to a published comparison runs that method.
    """
    overwrite = output_args.overwrite
    # each run's folder, taken before the run: a run works in its own staging folder under that name
    folders = [(run.key, run.method, run.args.output_dir) for run in plan]
    # Runs that --runs_only processes made for this comparison are taken over even with --overwrite (which replaces a
    # published comparison of other settings): starting over would throw their finished runs away.
    resume = not overwrite or opened_without_settings(output_dir)
    with staged_output(output_dir, config, overwrite, resume=resume, record_file=COMPARISON_FILE) as staging:
        records = _run_into(staging, model_args, plan, problem_sets, output_args, output_dir)
        with _keeping_runs(output_dir, staging):
            plots = plot(records, staging)
            streams = answer_streams(folders)
            column = "benchmark" if scenario is None else "cell"
            result, table = report(records, suite, methods, answer_scores(streams), streams, collapse_window, column)
            plots += plot_collapse(records, streams, result["collapse"], staging, collapse_window)
            if scenario is not None:
                result["scenario"] = scenario.describe()
                plots.append(plot_scenario(scenario, result, staging))
            (staging / "comparison.md").write_text(table)
            write_json(
                staging / COMPARISON_FILE,
                {"config": config, "command": redacted(sys.argv), "versions": versions(), **result, "plots": plots},
            )
    return result, table


def make_runs(
    model_args: ModelArguments,
    plan: list[PlannedRun],
    problem_sets: dict[Path, list[dict]],
    output_args: OutputArguments,
    output_dir: str,
) -> dict[str, dict[str, list[dict]]]:
    """The runs of a comparison, and no comparison: several processes (one per GPU or method) make them together in
    <output_dir>.partial, where `compare` with every method then finds them."""
    return _run_into(_shared_staging(output_dir), model_args, plan, problem_sets, output_args, output_dir)


def _run_into(staging: Path, model_args, plan, problem_sets, output_args, output_dir: str) -> dict:
    published = Path(output_dir)
    with _keeping_runs(output_dir, staging):
        if (published / MARKER_FILE).is_file() and (published / RUNS_DIR).is_dir():
            _carry(published / RUNS_DIR, staging / RUNS_DIR)
        for path, problems in problem_sets.items():
            write_jsonl(path, problems)
    return run_all(model_args, plan, output_args)


def _shared_staging(output_dir: str) -> Path:
    """The staging folder that runs-only processes write into together, without its lock (each run has its own): the
    first one makes it, marked as the project's, with no settings that the comparison taking it over must match."""
    staging = staging_path(output_dir)
    if (staging / MARKER_FILE).is_file():
        return staging
    try:
        open_staging(output_dir, None, resume=True)
    except ValueError:
        if not (staging / MARKER_FILE).is_file():  # a folder of the user's, not another process holding the lock
            raise
        return staging
    except OSError as error:  # nothing was written
        raise UsageError(
            f"--output_dir {output_dir}: cannot write {staging} ({error.strerror or error}); free space or choose an "
            "--output_dir you can write to."
        ) from None
    try:
        (staging / RUNS_DIR).mkdir(exist_ok=True)  # close_staging drops a folder that holds nothing
    finally:
        close_staging(staging)
    return staging


@contextlib.contextmanager
def _keeping_runs(output_dir: str, staging: Path):
    """A file-system error while writing the comparison's own files as one line that keeps its runs: staged_output
    drops a staging folder that holds no checkpoint, and would take every finished run of the comparison with it."""
    try:
        yield
    except OSError as error:
        raise RunStopped(
            f"--output_dir {output_dir}: the comparison stopped, cannot write {error.filename or staging} "
            f"({error.strerror or error}); the runs it finished are kept in {staging}: free space or fix that "
            "folder's permissions, then run the same command again, which reuses them."
        ) from None


def _carry(published: Path, staged: Path) -> None:
    """Put into `staged` what the published `published` holds and it lacks: a folder a run made (it holds the marker)
    whole, other folders (runs/<key>/ of several benchmarks) entry by entry. Nothing is lost when the new comparison
    replaces the old one, and the old one stays whole until then."""
    staged.mkdir(parents=True, exist_ok=True)
    for entry in published.iterdir():
        target = staged / entry.name
        if entry.is_dir() and not (entry / MARKER_FILE).is_file():
            _carry(entry, target)
        elif not target.exists():
            # A finished run's files are never written again, so links to them cost nothing; anything else (a stopped
            # run's folder, whose resume appends to its files) is copied.
            _copy_into_place(entry, target, _link if (entry / RUN_FILE).is_file() else shutil.copy2)


def _copy_into_place(source: Path, target: Path, copy) -> None:
    """Copy `source` with `copy` under a temporary name, then rename it to `target`: another process reading or
    carrying the same folder sees all of it or nothing."""
    temporary = target.with_name(f"{target.name}.carry-{os.getpid()}")
    try:
        if source.is_dir():
            copy_folder(source, temporary, copy)
        else:
            copy(source, temporary)
        os.rename(temporary, target)
    except OSError:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        temporary.unlink(missing_ok=True)
        if not target.exists():  # else another runs-only process carried it first
            raise


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def report(
    records: dict[str, dict[str, list[dict]]],
    suite: bool,
    methods: list[str],
    scores: dict[str, dict[str, list[list[float]]]],
    streams: dict[str, dict[str, list[list[dict]]]],
    window: int,
    column: str = "benchmark",
) -> tuple[dict, str]:
    """The comparison's rows (for comparison.json) and its markdown (comparison.md); `scores` are the answers'
    (`answer_scores`), for the intervals and the paired tests, and `streams` the same in stream order
    (`answer_streams`), for the collapse steps over a running window of `window` answers. `column` names a
    suite's columns in the tables: "benchmark", or "cell" for a scenario's."""
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
            + f"\nCost per problem (ratio to none), over every {column} and seed:\n\n"
            + cost_table(result["cost"])
            + (f"\nReported by the paper ({PAPER_RESULTS['model']}; not measured here):\n\n{paper}" if paper else "")
        )
    else:
        by_method = next(iter(records.values()))
        result = {"rows": summarize(by_method), "cost": cost_rows(by_method), "samples": sample_rows(by_method)}
        table = markdown_table(result["rows"]) + "\nCost per problem (ratio to none):\n\n" + cost_table(result["cost"])
    if result["samples"]:
        table += "\nSampling methods, online accuracy % (flexible):\n\n" + sample_table(result["samples"])
    result["paired"] = paired_rows(records, scores)
    oracles = [method for method in methods if METHODS[method].reads_gold]
    if oracles:
        result["oracles"] = oracles
        table = (
            f"Rows marked (oracle) hold {', '.join(oracles)}, whose reward read the gold answers: a ceiling for the "
            "label-free methods, not a test-time method.\n\n" + table
        )
    table += (
        "\nFlexible accuracy with 95% intervals (bootstrap over seeds and problems, 2000 replicates) and each method "
        "beside none on the same problems and seeds (paired bootstrap; exact sign test over problems, ties left out; "
        "resolved: the interval excludes 0):\n\n" + paired_table(result["paired"], suite, column)
    )
    result["collapse"] = collapse_rows(records, streams, window)
    table += (
        f"\nCollapse, each seed's step (never: it did not collapse). Accuracy: the first update after which the "
        f"flexible accuracy of the last {window} answers stays below none's on the same problems and seed, to the end "
        "of the run (n/a: no none run on the same problems and seeds). Diagnostics: the first step whose clean-branch "
        "entropy is below the run's --collapse_min_entropy or whose share of degenerate answers (over the last "
        "--collapse_min_answers answers at least) is above its --collapse_max_degenerate (the collapse guard's "
        "rule):\n\n" + collapse_table(result["collapse"], suite, column)
    )
    return result, table
