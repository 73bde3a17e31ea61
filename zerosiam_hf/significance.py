"""How sure a comparison can be of its numbers: a percentile bootstrap interval for a mean over seeds and problems,
and an exact sign test for paired answers. Pure functions of per-answer scores laid out [seeds][problems].

Seeds are resampled, then problems. When every seed answered the same problems (a benchmark subset), one draw of
problem indices serves every seed, so a problem's answers stay together; when each seed drew its own problems (a
synthetic preset), each seed's problems are drawn on their own.
"""

import math
import random


REPLICATES = 2000
LEVEL = 0.95


def bootstrap_interval(
    scores: list[list[float]], same_problems: bool, replicates: int = REPLICATES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """The `level` percentile interval of the mean of `scores` ([seeds][problems], every seed as long) over
    bootstrap replicates that resample seeds and then problems (seeded: the same scores give the same interval)."""
    rng = random.Random(seed)
    num_seeds, num_problems = len(scores), len(scores[0])
    means = []
    for _ in range(replicates):
        seeds = [rng.randrange(num_seeds) for _ in range(num_seeds)]
        shared = [rng.randrange(num_problems) for _ in range(num_problems)] if same_problems else None
        total = 0.0
        for s in seeds:
            problems = shared or [rng.randrange(num_problems) for _ in range(num_problems)]
            total += sum(scores[s][i] for i in problems)
        means.append(total / (num_seeds * num_problems))
    means.sort()
    tail = (1 - level) / 2
    return means[math.floor(tail * (replicates - 1))], means[math.ceil((1 - tail) * (replicates - 1))]


def sign_test(differences: list[list[float]], same_problems: bool) -> tuple[int, int, float]:
    """(wins, losses, two-sided exact p) of paired differences ([seeds][problems]): a problem's difference is its mean
    over seeds when every seed answered the same problems, else every (seed, problem) is a pair of its own; ties
    count for neither side. With one seed and 0/1 answers this is McNemar's exact test."""
    if same_problems:
        units = [sum(column) / len(column) for column in zip(*differences)]
    else:
        units = [value for row in differences for value in row]
    wins, losses = sum(u > 0 for u in units), sum(u < 0 for u in units)
    pairs = wins + losses
    tail = sum(math.comb(pairs, k) for k in range(min(wins, losses) + 1)) / 2**pairs
    return wins, losses, min(1.0, 2 * tail)


def paired_difference(before: list[list[float]], after: list[list[float]], same_problems: bool) -> dict:
    """`after - before` of paired scores ([seeds][problems], 1 right and 0 wrong, the same problems in the same order
    on both sides), in points: its mean, its bootstrap interval, wins and losses over problems, the sign test's p and
    whether the interval excludes 0 (`resolved`)."""
    differences = [[y - x for x, y in zip(a, b)] for a, b in zip(before, after)]
    mean = sum(map(sum, differences)) / sum(map(len, differences))
    low, high = bootstrap_interval(differences, same_problems)
    wins, losses, p = sign_test(differences, same_problems)
    return {
        "difference": 100 * mean,
        "ci": [100 * low, 100 * high],
        "wins": wins,
        "losses": losses,
        "p": p,
        "resolved": low > 0 or high < 0,
    }
