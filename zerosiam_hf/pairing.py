"""Two conditions side by side: the runs of the same methods and seeds on the same problems, paired problem by
problem (`index` in predictions.jsonl), with the comparisons' statistics (`significance.paired_difference`).
`scripts/paired.py` prints them; a noised run pairs with the clean one (the same problems, worded otherwise)."""

import json
import re
from pathlib import Path

from .records import PREDICTIONS_FILE, RUN_FILE, problem_scores, read_jsonl
from .significance import paired_difference


KEYS = ("correct_strict", "correct_flexible")
_RUN_FOLDER = re.compile(r"(?P<method>.+)-seed(?P<seed>\d+)")
# What a run's data record says besides which problems it answered: where the file was, how many prompts were cut,
# how answers were checked, and the noise on their wording.
_NOT_PROBLEMS = {"path", "prompts_cut", "checker", "noise"}


def runs_in(folder: str) -> dict[str, dict[int, Path]]:
    """The finished runs of `folder` (a comparison's, or its `runs/`, or a cell's), by method and seed."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; give a comparison's --output_dir or a folder of its runs.")
    if (root / "runs").is_dir():
        root = root / "runs"
    runs: dict[str, dict[int, Path]] = {}
    for path in sorted(root.iterdir()):
        match = _RUN_FOLDER.fullmatch(path.name)
        if match and (path / RUN_FILE).is_file() and (path / PREDICTIONS_FILE).is_file():
            runs.setdefault(match["method"], {})[int(match["seed"])] = path
    if not runs:
        cells = sorted(
            p.name for p in root.iterdir() if p.is_dir() and any(_RUN_FOLDER.fullmatch(q.name) for q in p.iterdir())
        )
        hint = f"it holds cells ({', '.join(cells)}): name one, as {root / cells[0]}" if cells else "it holds none"
        raise ValueError(
            f"{folder}: no finished run (<method>-seed<k>/ with {RUN_FILE} and {PREDICTIONS_FILE}); {hint}."
        )
    return runs


def _problems(run_dir: Path) -> dict:
    data = json.loads((run_dir / RUN_FILE).read_text())["data"]
    return {key: value for key, value in data.items() if key not in _NOT_PROBLEMS}


def _same(a: dict, b: dict) -> bool:
    """Whether two runs' problems (`_problems`) are the same, on what both records say: a record made before a field
    existed (the benchmark's name) lacks it."""
    return all(a[key] == b[key] for key in a.keys() & b.keys())


def paired_rows(before: dict[str, dict[int, Path]], after: dict[str, dict[int, Path]], methods: list[str]) -> list:
    """Per method (and accuracy), `after - before` over the seeds both hold, problem by problem."""
    rows = []
    for method in methods:
        seeds = sorted(before[method].keys() & after[method].keys())
        if not seeds:
            raise ValueError(
                f"{method}: the two folders share no seed ({sorted(before[method])} against "
                f"{sorted(after[method])}); pair runs of the same seeds."
            )
        pairs = [(before[method][seed], after[method][seed]) for seed in seeds]
        problems = [(_problems(a), _problems(b)) for a, b in pairs]  # each run.json read once
        for (a, b), (x, y) in zip(pairs, problems):
            if not _same(x, y):
                raise ValueError(f"{a} and {b} answered other problems; pair runs of the same problems and seeds.")
        # one set of problems for every seed (a benchmark's first n) or a set per seed (a synthetic preset)
        same = all(_same(x, problems[0][0]) for x, _ in problems)
        answers = [(read_jsonl(a / PREDICTIONS_FILE), read_jsonl(b / PREDICTIONS_FILE)) for a, b in pairs]
        for a, b in answers:
            if sorted(row["index"] for row in a) != sorted(row["index"] for row in b):
                raise ValueError(
                    f"{method}: runs of one seed answered other problem indices; were both runs finished?"
                )
        for key in KEYS:
            scores = [(problem_scores(a, key), problem_scores(b, key)) for a, b in answers]
            rows.append(
                {
                    "method": method,
                    "accuracy": key.removeprefix("correct_"),
                    "seeds": seeds,
                    "before": 100 * _mean([x for x, _ in scores]),
                    "after": 100 * _mean([y for _, y in scores]),
                    **paired_difference([x for x, _ in scores], [y for _, y in scores], same),
                }
            )
    return rows


def _mean(runs: list[list[float]]) -> float:
    return sum(map(sum, runs)) / sum(map(len, runs))


def paired_table(rows: list[dict], labels: tuple[str, str]) -> str:
    """The paired rows as markdown, the two conditions' columns named `labels`."""
    columns = ["method", "accuracy", f"{labels[0]} %", f"{labels[1]} %", "difference", "95% CI", "wins / losses"]
    columns += ["p (sign)", "resolved"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['accuracy']} | {r['before']:.2f} | {r['after']:.2f} | {r['difference']:+.2f} | "
            f"{r['ci'][0]:+.2f} to {r['ci'][1]:+.2f} | {r['wins']} / {r['losses']} | {r['p']:.3g} | "
            f"{'yes' if r['resolved'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
