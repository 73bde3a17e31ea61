"""Paired differences on the same problems and seeds (points, with the comparisons' bootstrap interval and exact
sign test): the collapse guard at batch size 1 (guard - plain, per method), and batch size 1 against the batches of 4
of results/compare-synthetic-bf16 (the same settings otherwise; made with two threads, these with one).
    python results/scenario-batch1-synthetic/paired.py"""

from pathlib import Path

from zerosiam_hf.records import PREDICTIONS_FILE, problem_scores, read_jsonl
from zerosiam_hf.significance import bootstrap_interval, sign_test


ROOT = Path(__file__).resolve().parents[1]
KEYS = ("correct_strict", "correct_flexible")


def scores(folder: str, method: str, key: str) -> list[list[float]]:
    """Each seed's scores of `method` in the comparison `folder` (under results/), in problem order."""
    runs = [ROOT / folder / "runs" / f"{method}-seed{seed}" for seed in range(3)]
    return [problem_scores(read_jsonl(run / PREDICTIONS_FILE), key) for run in runs]


def mean(runs: list[list[float]]) -> float:
    return sum(map(sum, runs)) / sum(map(len, runs))


def table(title: str, before: str, after: str, labels: tuple[str, str], methods: tuple[str, ...]) -> None:
    """The paired table of `after` - `before` (comparison folders under results/), their columns named `labels`."""
    print(f"{title}\n")
    print(f"| method | accuracy | {labels[0]} % | {labels[1]} % | difference | 95% CI | wins / losses | p (sign) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in methods:
        for key in KEYS:
            a, b = scores(before, method, key), scores(after, method, key)
            diff = [[100 * (y - x) for x, y in zip(u, v)] for u, v in zip(a, b)]
            low, high = bootstrap_interval(diff, same_problems=False)
            wins, losses, p = sign_test(diff, same_problems=False)
            print(
                f"| {method} | {key.removeprefix('correct_')} | {100 * mean(a):.2f} | {100 * mean(b):.2f} | "
                f"{mean(diff):+.2f} | {low:+.2f} to {high:+.2f} | {wins} / {losses} | {p:.3g} |"
            )
    print()


METHODS = ("none", "tent", "zerosiam")
table(
    "The collapse guard at batch size 1 (guard - plain)",
    "scenario-batch1-synthetic/plain",
    "scenario-batch1-synthetic/guard",
    ("plain", "guard"),
    METHODS,
)
table(
    "Batch size 1 against 4 (1 - 4)",
    "compare-synthetic-bf16",
    "scenario-batch1-synthetic/plain",
    ("batch 4", "batch 1"),
    METHODS,
)
