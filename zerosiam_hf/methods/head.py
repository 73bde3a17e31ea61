"""Entropy methods of the loss head (`losses.head_loss`): ZeroSiam, Tent, COME and one-shot EM (EM-FT)."""

from typing import ClassVar

import torch

from ..losses import head_loss
from .base import Method


class HeadMethod(Method):
    """A loss of the next-token distributions at the signal's positions, read from one backbone forward."""

    head: ClassVar[str]

    def head_kwargs(self, args, transform: dict) -> dict:
        """Keyword arguments of `head_loss` beyond the tensors, given the model's own logit transform."""
        return transform

    def loss(self, trainer, model, inputs: dict) -> torch.Tensor:
        hidden = trainer.final_hidden_states(model, inputs)
        predictor = trainer.predictor
        result = head_loss(
            self.head,
            hidden,
            trainer.lm_head.weight,
            inputs["loss_mask"],
            predictor_weight=None if predictor is None else predictor.weight,
            chunk_size=trainer.args.loss_chunk_size,
            lm_head_bias=trainer.lm_head.bias,
            **self.head_kwargs(trainer.args, trainer.head_transform),
        )
        trainer.log_head_metrics(result)
        return result.loss


class ZeroSiam(HeadMethod):
    name = "zerosiam"
    help = "entropy of a predictor branch aligned to the stop-gradient clean branch by a symmetric KL"
    trains = "lora+predictor"
    head = "zerosiam"
    options = {"alpha": 1.0, "predictor_lr_scale": 1.0, "ablation": "none"}

    def head_kwargs(self, args, transform: dict) -> dict:
        return {**transform, "alpha": args.alpha, "stop_gradient": args.ablation != "no_stop_gradient"}


class Tent(HeadMethod):
    name = "tent"
    help = "entropy of the next-token distributions"
    head = "tent"


class Come(HeadMethod):
    name = "come"
    help = "COME, entropy of the subjective-logic opinion with the logit norm held"
    head = "come"


class EMFT(HeadMethod):
    """One-shot EM / EM-FT: Tent on the model's own answer with the logits divided by a temperature."""

    name = "em_ft"
    help = "one-shot EM (EM-FT): entropy of softmax(logits / T) over the answer's tokens"
    head = "tent"
    signals = ("response",)
    options = {"entropy_temperature": 0.5}

    def head_kwargs(self, args, transform: dict) -> dict:
        # softcap(s z) / T = (c / T) tanh((s / T) z / (c / T)): the temperature divides both the scale and the cap
        t, cap = args.entropy_temperature, transform["softcap"]
        return {"logit_scale": transform["logit_scale"] / t, "softcap": None if cap is None else cap / t}
