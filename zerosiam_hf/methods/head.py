"""Entropy methods of the loss head (`losses.head_loss`): ZeroSiam, Tent, COME and one-shot EM (EM-FT)."""

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..losses import head_loss
from ..predictor import PREDICTOR_NAME, attach_predictor, find_predictor
from .base import Method, Options, option


ABLATIONS = ("none", "no_stop_gradient", "frozen_identity_predictor", "frozen_random_predictor")


# 1x, not the larger scales of the authors' vision code: Adam moves every entry of the d x d predictor by about its
# learning rate per step, and at 10x the first step alone pulls the branches tens of nats apart
# (docs/results/defaults.md).
@dataclass
class ZeroSiamOptions(Options):
    alpha: float = option(1.0, "weight of the symmetric KL between the online and the target branch")
    predictor_lr_scale: float = option(1.0, "the predictor learns at learning_rate * predictor_lr_scale")
    ablation: Literal[ABLATIONS] = option(
        "none",
        "gradient through the target branch, or a predictor that is frozen at the identity or at a random matrix",
    )


@dataclass
class EMFTOptions(Options):
    entropy_temperature: float = option(
        0.5, "the entropy is that of softmax(logits / entropy_temperature)", positive=True
    )


class HeadMethod(Method):
    """A loss of the next-token distributions at the signal's positions, read from one backbone forward."""

    head: ClassVar[str]

    def head_kwargs(self, args, transform: dict) -> dict:
        """Keyword arguments of `head_loss` beyond the tensors, given the model's own logit transform."""
        return transform

    def loss(self, trainer, model, inputs: dict) -> torch.Tensor:
        hidden = trainer.head_input(model, inputs)
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
    options_class = ZeroSiamOptions

    def head_kwargs(self, args, transform: dict) -> dict:
        return {**transform, "alpha": args.alpha, "stop_gradient": args.ablation != "no_stop_gradient"}

    def prepare_model(self, args, model) -> list[str]:
        attach_predictor(model)
        return [PREDICTOR_NAME]

    def adapted_model(self, args, model) -> None:
        if args.ablation not in ("frozen_identity_predictor", "frozen_random_predictor"):
            return
        predictor = find_predictor(model)
        if args.ablation == "frozen_random_predictor":
            with torch.no_grad():
                generator = torch.Generator().manual_seed(args.seed)
                d = predictor.weight.shape[0]
                random = torch.randn(d, d, generator=generator) / d**0.5
                predictor.weight.copy_(random.to(predictor.weight))
        predictor.weight.requires_grad_(False)

    def parameter_groups(self, args, parameters) -> list[dict]:
        """LoRA at the learning rate; the predictor at `learning_rate * predictor_lr_scale`, without weight decay."""
        groups = [{"params": [p for n, p in parameters if PREDICTOR_NAME not in n], "weight_decay": args.weight_decay}]
        predictor = [p for n, p in parameters if PREDICTOR_NAME in n]
        if predictor:  # a frozen predictor (an ablation) has no trainable parameter
            groups.append(
                {"params": predictor, "lr": args.learning_rate * args.predictor_lr_scale, "weight_decay": 0.0}
            )
        return groups


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
    options_class = EMFTOptions

    def head_kwargs(self, args, transform: dict) -> dict:
        # softcap(s z) / T = (c / T) tanh((s / T) z / (c / T)): the temperature divides both the scale and the cap
        t, cap = args.entropy_temperature, transform["softcap"]
        return {"logit_scale": transform["logit_scale"] / t, "softcap": None if cap is None else cap / t}
