"""Co-rewarding II (tmlr-group/Co-rewarding): GRPO whose reward is agreement with the majority answer of a slowly
moving teacher, an exponential moving average (EMA) of the adapted weights, asked the same question.

Matched to Co-rewarding-II at 6c60ea4: the teacher samples as many answers as the student, at the same temperature
(`generate_ref_sequences`, verl/workers/fsdp_workers.py L793-845, called from verl/trainer/ppo/
ray_trainer_coreward.py L264-290); their majority answer labels the question and each student answer earns 1.0 when
it equals the label, 0.0 otherwise or when no teacher answer has one (`CoRewardingII.__call__`,
verl/workers/reward_manager/co_rewarding_II.py L77-143). Before each step's teacher answers, when the step number is
a multiple of `update_interval`, the teacher moves towards the policy, teacher <- (1 - a) teacher + a policy
(`_update_ref_model_sliding_average`, verl/workers/sharding_manager/fsdp_vllm.py L180-230), the rate a going from
`alpha_start` to `alpha_end` along a cosine over the run (`update_alpha`, L165-178). Co-rewarding votes on the last
`\\boxed{}` by exact string; here the teacher's and the student's answers are `pred_flexible` and vote through the
benchmark's checker, as TTRL's here (`ttrl.vote_rewards`), so 1/2 and 0.5 agree.

The adapted weights are LoRA, so the teacher is an EMA of the LoRA parameters, kept in float32 as the trainer's
`method_state`: it starts at the initial LoRA (the base model, as Co-rewarding's reference starts at the initial
policy), is saved in each checkpoint, and starts afresh with LoRA on a collapse reset, since it averages the weights
that the reset throws away (`--episodic` is refused: its batches are answered after their update, with nothing to
reward). The teacher answers through the trainer's own generation, its LoRA values swapped in and the student's put
back afterwards.

`--co_reward_variant I` is Co-rewarding I (Co-rewarding-I/verl/workers/reward_manager/co_reward.py L50-92): each
question is also asked in a rephrasing (here the model's own paraphrase, `paraphrase.paraphrase_view`; Co-rewarding's
were written beforehand by a larger model), both wordings are answered k times and trained on, and each wording's
answers are rewarded by agreement with the other wording's majority answer. It has no teacher.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..scoring import majority_vote
from .base import option
from .grpo import SamplingMethod, SamplingOptions
from .paraphrase import ParaphraseOptions, paraphrase_view
from .ttrl import vote_rewards


# Checkers score an answer against a gold; the teacher's answers have none to be scored against, so they are read
# against this stand-in and only what the checker extracted is kept.
_NO_GOLD = "0"


@dataclass
class CoRewardOptions(ParaphraseOptions, SamplingOptions):
    beta: float = SamplingOptions.redefault("beta", 0.001)
    co_reward_variant: Literal["II", "I"] = option(
        "II",
        "II: an EMA teacher's vote on the same question labels the answers; I: the answers to the question and to "
        "the model's own paraphrase of it are each labelled by the other wording's vote",
    )
    teacher_rate_start: float = option(
        0.01, "the teacher's EMA rate at the run's start, teacher <- (1 - rate) teacher + rate LoRA"
    )
    teacher_rate_end: float = option(1e-5, "the teacher's EMA rate at the run's end, reached along a cosine")
    teacher_update_interval: int = option(1, "the teacher moves every this many steps", positive=True)

    def __post_init__(self):
        super().__post_init__()
        for name in ("teacher_rate_start", "teacher_rate_end"):
            if getattr(self, name) > 1:
                raise ValueError(f"--{name} is the new weights' share and must be <= 1, got {getattr(self, name)}.")


def teacher_rate(step: int, total_steps: int, start: float, end: float) -> float:
    """The EMA rate of the update after `step` optimizer steps of `total_steps`: cosine from `start` (step 0) to
    `end` (step `total_steps`), end + (start - end) (1 + cos(pi min(step, T) / T)) / 2."""
    t = min(step, total_steps) / max(total_steps, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def ema_update(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], rate: float) -> None:
    """teacher <- (1 - rate) teacher + rate student, in place, for each of the teacher's (float32) tensors."""
    with torch.no_grad():
        for name, value in teacher.items():
            value.mul_(1.0 - rate).add_(student[name].detach().to(value.dtype), alpha=rate)


@contextmanager
def teacher_weights(model: nn.Module, teacher: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model` with the teacher's values in its parameters of those names, and its own put back bit for bit on the
    way out, an error included."""
    parameters = dict(model.named_parameters())
    own = {name: parameters[name].detach().clone() for name in teacher}
    try:
        with torch.no_grad():
            for name, value in teacher.items():
                parameters[name].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for name, value in own.items():
                parameters[name].copy_(value)


def extracted_answers(checker, texts: list[str]) -> list[str | None]:
    """Each text's answer as the benchmark's checker extracts it (`pred_flexible`), read without any gold."""
    return [score["pred_flexible"] for score in checker.score(texts, [_NO_GOLD] * len(texts))]


def _prompts(trainer, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of rows `indices` of the trainer's data, left-padded as its batches are."""
    batch = trainer.data_collator(list(trainer.prompt_rows(indices)))
    return batch["input_ids"].to(trainer.args.device), batch["attention_mask"].to(trainer.args.device)


def cross_view_rewards(trainer, records: list[dict]) -> torch.Tensor:
    """Co-rewarding I's rewards: for each prompt, its k answers to the question then its k to the paraphrase (as the
    trainer hands a second view's), each answer 1.0 when it agrees with the other wording's majority answer."""
    k, same = trainer.args.num_generations, trainer.checker.same_answer
    rewards, agree = [], []
    for start in range(0, len(records), 2 * k):
        original = [record["pred_flexible"] for record in records[start : start + k]]
        paraphrased = [record["pred_flexible"] for record in records[start + k : start + 2 * k]]
        label, other = majority_vote(paraphrased, same), majority_vote(original, same)
        rewards += vote_rewards(original, label, same) + vote_rewards(paraphrased, other, same)
        agree.append(label is not None and other is not None and (label == other or same(label, other)))
    trainer.log_metrics_step({"reward/views_agree": torch.tensor(agree, dtype=torch.float32).mean()})
    return torch.tensor(rewards)


class CoReward(SamplingMethod):
    name = "co_reward"
    help = (
        "GRPO on k sampled answers, reward 1 for agreeing with the majority answer of an EMA teacher's k answers (II) "
        "or of the k answers to the other wording, the question or the model's paraphrase of it (I)"
    )
    more_answers = "II: the teacher's k answers; I: its paraphrase (greedy) and k answers to it"
    online_only = True  # the reward reads the answers as the online protocol extracts them
    options_class = CoRewardOptions

    def initial_state(self, trainer):
        if trainer.args.co_reward_variant == "I":
            return {}  # no teacher
        # the teacher: a float32 copy of the trained weights as they are now
        model = trainer.accelerator.unwrap_model(trainer.model)
        return {n: p.detach().to(torch.float32, copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def end_step(self, trainer):
        args, step = trainer.args, trainer.state.global_step
        # Co-rewarding moves the teacher at the start of step s (counted from 1) when s is a multiple of the
        # interval, before it answers: here at the end of the step before it, s = step + 1, with the weights it read
        if not trainer.method_state or (step + 1) % args.teacher_update_interval:
            return
        rate = teacher_rate(step, trainer.state.max_steps, args.teacher_rate_start, args.teacher_rate_end)
        student = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
        ema_update(trainer.method_state, student, rate)

    def second_view(self, trainer, index):
        if trainer.args.co_reward_variant == "I":
            return paraphrase_view(trainer, index, trainer.args.paraphrase_max_new_tokens)
        return None

    def from_answers(self, trainer, records):
        if trainer.args.co_reward_variant == "I":
            return cross_view_rewards(trainer, records)
        k, same = trainer.args.num_generations, trainer.checker.same_answer
        prompt_ids, prompt_mask = _prompts(trainer, [record["index"] for record in records[::k]])
        with teacher_weights(trainer.accelerator.unwrap_model(trainer.model), trainer.method_state):
            completions = trainer._generate(prompt_ids, prompt_mask)  # counted in trainer.cost as the student's
        texts = trainer.processing_class.batch_decode(completions, skip_special_tokens=True)
        teacher_answers = extracted_answers(trainer.checker, texts)
        rewards, labelled, agrees = [], [], []
        for start in range(0, len(records), k):
            label = majority_vote(teacher_answers[start : start + k], same)
            group = records[start : start + k]
            rewards += vote_rewards([record["pred_flexible"] for record in group], label, same)
            own = group[0].get("majority_answer")
            labelled.append(label is not None)
            agrees.append(label is not None and own is not None and (label == own or same(label, own)))
        trainer.log_metrics_step(
            {
                "reward/teacher_label_share": torch.tensor(labelled, dtype=torch.float32).mean(),
                "reward/teacher_agrees_with_own_vote": torch.tensor(agrees, dtype=torch.float32).mean(),
            }
        )
        return torch.tensor(rewards)

    def reward(self, stats, from_answers):
        return from_answers
