"""Self-Harmony (physicsru/self_harmony, arXiv 2511.01191): GRPO on the answers to each question and to the model's own
paraphrase of it, rewarded by agreement with the answer whose frequencies in the two views have the largest harmonic
mean.

Matched to `harmonic_mean_score` and `SelfHarmonyManager._compute_majority_voting_rewards` in
verl/workers/reward_manager/self_harmony.py (the `harmonic-mean` strategy that math500.sh runs, hard rewards): an
answer seen n0 times among the original question's k samples and n1 times among the paraphrase's k scores
n0 * n1 / (n0 + n1), the harmonic mean of its two frequencies up to a constant, so only an answer found in both views
can be the label; every sample of both views gets 1.0 if its answer agrees with the label, else 0.0 (no label, no
reward), and GRPO normalises each view's k rewards apart (`compute_advantage_contrastive`), both views trained.
Answers are grouped by the benchmark's checker (as TTRL's vote here), and ties go to the larger count in both views,
then to the answer seen first (the public code's order among those is a Python set's).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..scoring import semantic_clusters
from .grpo import SamplingMethod, SamplingOptions
from .paraphrase import ParaphraseOptions, paraphrase_view
from .ttrl import vote_rewards


@dataclass
class SelfHarmonyOptions(ParaphraseOptions, SamplingOptions):
    beta: float = SamplingOptions.redefault("beta", 0.005)


def harmonic_label(
    original: Sequence[str | None], paraphrased: Sequence[str | None], same: Callable[[str, str], bool]
) -> str | None:
    """The answer that maximises n0 * n1 / (n0 + n1), n0 and n1 its counts among the original question's answers and
    the paraphrase's (answers that `same` calls equal count together; None is no answer). Ties go to the larger
    n0 + n1, then to the answer seen first (original answers first); None when no answer is in both views."""
    answers = [*original, *paraphrased]
    clusters = semantic_clusters(answers, same)
    counts: dict[int, list[int]] = {}  # cluster -> [n0, n1], clusters in the order first seen
    for position, (answer, cluster) in enumerate(zip(answers, clusters)):
        if answer is not None:
            counts.setdefault(cluster, [0, 0])[position >= len(original)] += 1
    first = {cluster: answers[clusters.index(cluster)] for cluster in counts}
    scored = [(n0 * n1 / (n0 + n1), n0 + n1, first[c]) for c, (n0, n1) in counts.items() if n0 and n1]
    return max(scored, key=lambda score: score[:2])[2] if scored else None  # max keeps the first of equal scores


class SelfHarmony(SamplingMethod):
    name = "self_harmony"
    help = (
        "GRPO on k answers to the question and k to the model's own paraphrase of it, reward 1 for agreeing with the "
        "answer whose frequencies in the two views have the largest harmonic mean"
    )
    more_answers = "its paraphrase (greedy) and k answers to it"
    online_only = True  # the label reads the answers as the online protocol extracts them
    options_class = SelfHarmonyOptions

    def second_view(self, trainer, index):
        return paraphrase_view(trainer, index, trainer.args.paraphrase_max_new_tokens)

    def from_answers(self, trainer, records):
        k, same = trainer.args.num_generations, trainer.checker.same_answer
        rewards, no_label, other_label = [], [], []
        for start in range(0, len(records), 2 * k):  # each prompt: its k answers, then its paraphrase's k
            original = [record["pred_flexible"] for record in records[start : start + k]]
            paraphrased = [record["pred_flexible"] for record in records[start + k : start + 2 * k]]
            label = harmonic_label(original, paraphrased, same)
            rewards += vote_rewards(original, label, same) + vote_rewards(paraphrased, label, same)
            majority = records[start]["majority_answer"]  # the original answers' vote, as the trainer recorded it
            no_label.append(label is None)
            other_label.append(label is not None and (majority is None or not same(label, majority)))
        trainer.log_metrics_step(
            {
                "self_harmony/no_label": torch.tensor(no_label).float().mean(),
                "self_harmony/label_not_majority": torch.tensor(other_label).float().mean(),
            }
        )
        return torch.tensor(rewards)

    def reward(self, stats, from_answers):
        return from_answers
