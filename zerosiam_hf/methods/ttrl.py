"""TTRL (PRIME-RL/TTRL): the majority-voted answer of k samples is the pseudo-label; a sample's reward is agreement.

Matched to `test_time_train_metrics` in verl/verl/utils/reward_score/ttrl/ttt_metrics.py and the reward it calls
(`qwen_reward_fn` in ttrl/qwen/qwen_eval.py): the label is `Counter(extracted answers).most_common(1)`, so ties go to
the answer seen first, and each sample gets 1.0 if `grade_answer(its answer, label)` holds, else 0.0. TTRL counts
votes by exact (normalised) string and only the reward uses math equivalence; here `same` does both, so 1/2 and 0.5
are one vote (with `same` as string equality the count is TTRL's). TTRL's extractor returns "" for a response
without an answer, and "" can win its vote; here a missing answer is None, never wins and is never rewarded.
"""

from collections.abc import Callable, Sequence


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> str | None:
    """The answer most of the k samples agree on under `same` (ties: the first seen); None if no sample has one."""
    groups: list[list[str]] = []  # each group: its first answer, then the answers `same` matched to it
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(answer, group[0]):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    # max() keeps the first of equal counts, as Counter.most_common(1) keeps the first inserted
    return max(groups, key=len)[0]


def vote_rewards(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[float]:
    """TTRL's reward per sample: 1.0 if its answer agrees with the majority answer under `same`, else 0.0."""
    label = majority_vote(answers, same)
    if label is None:
        return [0.0] * len(answers)
    return [1.0 if answer is not None and same(answer, label) else 0.0 for answer in answers]
