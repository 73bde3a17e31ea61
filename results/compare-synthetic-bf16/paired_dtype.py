"""bf16 beside float32 on the same problems and seeds: per method, the paired difference in strict and flexible
accuracy (bf16 - float32, points) with the comparison's bootstrap interval and exact sign test. The float32 runs are
results/compare-synthetic (the same command without --dtype, made where auto loaded float32).
    python results/compare-synthetic-bf16/paired_dtype.py"""

from pathlib import Path

from zerosiam_hf.records import PREDICTIONS_FILE, problem_scores, read_jsonl
from zerosiam_hf.significance import bootstrap_interval, sign_test


ROOT = Path(__file__).resolve().parents[1]


def scores(folder: str, method: str, key: str) -> list[list[float]]:
    """Each seed's scores of `method` in the comparison `folder` (under results/), in problem order."""
    runs = [ROOT / folder / "runs" / f"{method}-seed{seed}" for seed in range(3)]
    return [problem_scores(read_jsonl(run / PREDICTIONS_FILE), key) for run in runs]


print("| method | accuracy | float32 % | bfloat16 % | bf16 - fp32 (points) | 95% CI | wins / losses | p (sign) |")
print("|---|---|---|---|---|---|---|---|")
for method in ("none", "tent", "zerosiam"):
    for key in ("correct_strict", "correct_flexible"):
        fp32, bf16 = scores("compare-synthetic", method, key), scores("compare-synthetic-bf16", method, key)
        diff = [[100 * (b - a) for a, b in zip(x, y)] for x, y in zip(fp32, bf16)]
        mean = lambda runs: sum(map(sum, runs)) / sum(map(len, runs))  # noqa: E731
        low, high = bootstrap_interval(diff, same_problems=False)
        wins, losses, p = sign_test(diff, same_problems=False)
        name = key.removeprefix("correct_")
        print(
            f"| {method} | {name} | {100 * mean(fp32):.2f} | {100 * mean(bf16):.2f} | {mean(diff):+.2f} | "
            f"{low:+.2f} to {high:+.2f} | {wins} / {losses} | {p:.3g} |"
        )
