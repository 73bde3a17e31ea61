"""Answer extraction and scoring as pure functions of strings: GSM8K numbers as lm-evaluation-harness scores them,
the last `\\boxed{}` of a math answer, accuracy over scored records, and the sampled metrics (mean@k, pass@k,
maj@k) over k answers a problem."""

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction


# A number as GSM8K writes it: optional sign, thousands commas, optional decimals, or a bare decimal fraction (.5),
# which lm-evaluation-harness's GSM8K patterns read too and which means one thing only. Fractions (1/2), exponents
# (1e5) and underscores (1_000) are not read: a slash in an answer is as often a ratio, a date or "per", an `e` after
# digits as often a word, and no answer writes underscores; a gold written so is refused (`parse_gold`).
_NUMBER = r"-?[$]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
# What a gold in one of those other forms looks like, to say so rather than "no number".
_OTHER_NUMBER = re.compile(r"[-+$]*[\d.,_]*\d[\d.,_]*(?:[eE][-+]?\d+|/[-+]?[\d.,_]*\d[\d.,_]*)?")
_STRICT_PATTERNS = (
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"[Tt]he (?:final )?answer is:?\s*({_NUMBER})"),
)
_ANY_NUMBER = re.compile(_NUMBER)


def _normalize(number: str) -> Fraction | None:
    """Turn '1,234.50' or '$12' into an exact Fraction; None when it is no number."""
    cleaned = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def parse_gold(answer: str) -> Fraction:
    """Return the gold number that follows '#### ' in a GSM8K `answer` field; raise ValueError if there is none, or
    if it is written in a form that no answer can match (1/2, 1e5, 1_000)."""
    head, sep, tail = answer.rpartition("####")
    tail = tail.strip()
    # The same pattern reads answers, so a gold that matches it whole is matched by an answer that repeats it; Fraction
    # alone would take 1/2 or 1e400, which no answer can match (and 1e999999999, which takes minutes to build).
    if sep and _ANY_NUMBER.fullmatch(tail.rstrip(".")):
        return _normalize(tail)
    if sep and _OTHER_NUMBER.fullmatch(tail):
        raise ValueError(
            f"gold answer {tail!r} is a number in a form no answer can match: the numeric checker reads decimals such "
            "as 1,234.5, -3, .5 or $12; write it so, or use --checker math for fractions, exponents and other forms"
        )
    snippet = answer.strip().replace("\n", " ")[-60:]
    raise ValueError(f"gold answer has no '#### <number>' line (ends with {snippet!r})")


def extract_strict(text: str) -> Fraction | None:
    """Number given in the strict form: the last '#### N' or, failing that, the last 'The answer is N'."""
    for pattern in _STRICT_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return _normalize(matches[-1])
    return None


def extract_flexible(text: str) -> Fraction | None:
    """The last number anywhere in the text."""
    matches = _ANY_NUMBER.findall(text)
    return _normalize(matches[-1]) if matches else None


def score_answer(text: str, gold: Fraction) -> dict:
    """Score one model output against the gold number, both strict and flexible (exact numeric match)."""
    strict, flexible = extract_strict(text), extract_flexible(text)
    return {
        "pred_strict": None if strict is None else str(strict),
        "pred_flexible": None if flexible is None else str(flexible),
        "correct_strict": strict is not None and strict == gold,
        "correct_flexible": flexible is not None and flexible == gold,
    }


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included; None if there is none.

    A last box that never closes (an answer cut off by the token limit) gives None, not the box before it.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    depth, start = 1, matches[-1].end()
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end].strip()
    return None


def accuracy(records: list[dict]) -> dict:
    """Strict and flexible accuracy (%) over scored records, their count, and how many checks timed out; records of
    a sampling method (k answers a prompt) add avg@k and maj@k (%, flexible)."""
    n = len(records)
    timeouts = sum(bool(r.get("check_timed_out")) for r in records)
    if n == 0:
        return {"n": 0, "accuracy_strict": None, "accuracy_flexible": None, "check_timeouts": 0}
    summary = {
        "n": n,
        "accuracy_strict": 100.0 * sum(r["correct_strict"] for r in records) / n,
        "accuracy_flexible": 100.0 * sum(r["correct_flexible"] for r in records) / n,
        "check_timeouts": timeouts,
    }
    if all("avg_at_k" in r for r in records):
        summary["avg_at_k"] = 100.0 * sum(r["avg_at_k"] for r in records) / n
        summary["maj_at_k"] = 100.0 * sum(r["maj_at_k"] for r in records) / n
    return summary


def semantic_clusters(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[int]:
    """Each answer's cluster, numbered in order of first appearance: an answer joins the first cluster whose first
    answer `same(first, answer)` calls equal to it; a missing answer (None) is a cluster of its own.

    Each answer is compared with the clusters' first answers only, so `same` is called at most k^2 / 2 times for k
    answers."""
    firsts: list[str | None] = []
    clusters = []
    for answer in answers:
        for i, first in enumerate(firsts):
            if answer is not None and first is not None and (answer == first or same(first, answer)):
                clusters.append(i)
                break
        else:
            clusters.append(len(firsts))
            firsts.append(answer)
    return clusters


def majority_vote(answers: list[str | None], same: Callable[[str, str], bool]) -> str | None:
    """The most frequent answer among one prompt's samples, answers that `same(a, b)` calls equal voting together
    (`semantic_clusters`); ties go to the answer seen first, and a missing answer (None) never wins."""
    clusters = semantic_clusters(answers, same)
    votes = Counter(cluster for answer, cluster in zip(answers, clusters) if answer is not None)
    if not votes:
        return None
    return answers[clusters.index(max(votes, key=votes.get))]  # clusters count in order seen: max keeps the first


def majority_correct(samples: list[dict], same) -> tuple[str | None, bool]:
    """One problem's majority answer among its scored samples (`pred_flexible`, voting through `same` as
    `majority_vote` does) and whether it is right: the score of the first sample that gave it."""
    majority = majority_vote([r["pred_flexible"] for r in samples], same)
    winner = next((r for r in samples if r["pred_flexible"] == majority), None)
    return majority, bool(winner and winner["correct_flexible"])


def pass_at(n: int, c: int, k: int) -> float:
    """The chance that at least one of `k` answers drawn without replacement from `n` samples, `c` of them right, is
    right: 1 - C(n - c, k) / C(n, k), the unbiased pass@k estimator of Chen et al. 2021. With k = n it says whether
    any sample is right, with k = 1 it is the share right (c / n)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n; got n={n}, c={c}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact ints, one rounding


def sampled_accuracy(correct: list[list[bool]], majority: list[bool]) -> dict:
    """The sampled metrics (%) over problems, from each problem's k per-sample scores (`correct`, [problems][k]) and
    whether its majority answer is right (`majority`): `mean_at_k` (mean share of right samples: what TTRL, RENT
    and one-shot EM call pass@1), `pass_at_k` (at least one right), `maj_at_k` (the majority answer right), and
    `pass_at` (pass@j for j = 1, 2, 4, ... below k and k itself, by the unbiased estimator)."""
    k = len(correct[0]) if correct else 0
    if k == 0 or any(len(row) != k for row in correct) or len(majority) != len(correct):
        raise ValueError("sampled_accuracy needs the same number (k >= 1) of samples for every problem, and one vote")
    n = len(correct)
    js = sorted({*(2**i for i in range(k.bit_length()) if 2**i < k), k})
    pass_j = {str(j): 100.0 * sum(pass_at(k, sum(row), j) for row in correct) / n for j in js}
    return {
        "k": k,
        "mean_at_k": 100.0 * sum(sum(row) / k for row in correct) / n,
        "pass_at_k": pass_j[str(k)],
        "maj_at_k": 100.0 * sum(majority) / n,
        "pass_at": pass_j,
    }
