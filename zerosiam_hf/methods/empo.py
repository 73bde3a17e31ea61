"""EMPO (QingyangZhang/EMPO): GRPO whose reward is the share of the k answers that fall in the sample's semantic
cluster, given only when the answers are not all different.

Matched to `get_empo_math_reward` in trl/src/open_r1/rewards.py and `get_semantic_ids_by_rule` and
`cluster_assignment_entropy` in trl/src/open_r1/semantic_uncertainty.py: the k extracted answers of a prompt are
clustered by an equivalence rule (math-verify's `verify` there), each cluster c has the share p_c = |c| / k, the
semantic entropy is H = -sum_c p_c log p_c, and a sample is rewarded with the share of its own cluster, 0 if it has no
answer; when H is not below log k every sample gets 0. Here the rule is the benchmark's checker (`same_answer`, the
one TTRL's vote uses), a missing answer (None) is a cluster of its own (math-verify never calls two empty answers
equal), and the threshold is read in its exact form: H < log k holds iff some cluster has two answers.
"""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..scoring import semantic_clusters
from .grpo import SamplingMethod, SamplingOptions


@dataclass
class EMPOOptions(SamplingOptions):
    sampling_temperature: float = SamplingOptions.redefault("sampling_temperature", 0.9)


def empo_rewards(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> tuple[list[float], float]:
    """EMPO's reward of each of one prompt's k answers, and the answers' semantic entropy (nats)."""
    clusters = semantic_clusters(answers, same)
    k = len(answers)
    sizes = Counter(clusters)
    entropy = -sum(size / k * math.log(size / k) for size in sizes.values())
    if len(sizes) == k:  # every answer alone: H = log k, EMPO's threshold withholds the reward
        return [0.0] * k, entropy
    return [0.0 if answer is None else sizes[c] / k for answer, c in zip(answers, clusters)], entropy


class EMPO(SamplingMethod):
    name = "empo"
    help = "GRPO on k sampled answers, reward the share of the k in the answer's semantic cluster (0 if all differ)"
    online_only = True  # the clusters are of the answers as the online protocol extracts them
    options_class = EMPOOptions

    def from_answers(self, trainer, records):
        k = trainer.args.num_generations
        rewards, entropies, withheld = [], [], []
        for start in range(0, len(records), k):
            answers = [record["pred_flexible"] for record in records[start : start + k]]
            group, entropy = empo_rewards(answers, trainer.checker.same_answer)
            rewards += group
            entropies.append(entropy)
            withheld.append(not any(group))  # all answers differ (a shared cluster always holds answers)
        trainer.log_metrics_step(
            {
                "reward/semantic_entropy": torch.tensor(entropies).mean(),
                "reward/withheld_share": torch.tensor(withheld).float().mean(),
            }
        )
        return torch.tensor(rewards)

    def reward(self, stats, from_answers):
        return from_answers
