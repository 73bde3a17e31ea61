"""TTRL: GRPO with a majority-vote pseudo-label: a sampled answer that agrees with the majority of the k scores 1."""

import torch

from ..scoring import majority_vote
from .grpo import SamplingMethod


class TTRL(SamplingMethod):
    name = "ttrl"
    help = "GRPO on k sampled answers, reward 1 for agreeing with their majority answer"
    online_only = True  # the vote reads the answers as the online protocol scores them

    def rewards(self, trainer, records, num_generations):
        # Only the extracted answers vote, through the benchmark's checker (1/2 and 0.5 agree under math-verify);
        # the records' gold-based fields are never read.
        same = trainer.checker.same_answer
        rewards = []
        for start in range(0, len(records), num_generations):
            answers = [record["pred_flexible"] for record in records[start : start + num_generations]]
            majority = majority_vote(answers, same)
            rewards += [
                float(a is not None and majority is not None and (a == majority or same(majority, a))) for a in answers
            ]
        return torch.tensor(rewards)

    def reward(self, stats, precomputed):
        return precomputed
