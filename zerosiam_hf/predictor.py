"""The ZeroSiam predictor and how it attaches to a causal LM."""

import torch
from torch import nn


# A distinctive attribute name, so that peft's `modules_to_save` matches this module and nothing else.
PREDICTOR_NAME = "zerosiam_predictor"


class Predictor(nn.Linear):
    """A bias-free d x d linear map that starts as the identity, so both ZeroSiam branches agree at step 0."""

    def __init__(self, hidden_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__(hidden_size, hidden_size, bias=False, dtype=dtype, device=device)
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Set the weight to the identity, where both branches agree (the episodic reset restores a copy instead)."""
        self.weight.copy_(torch.eye(self.in_features, dtype=self.weight.dtype, device=self.weight.device))

    def drift(self) -> torch.Tensor:
        """Distance from the identity, ||P - I||_F / sqrt(d): 0 at initialisation."""
        eye = torch.eye(self.in_features, dtype=torch.float32, device=self.weight.device)
        return torch.linalg.matrix_norm(self.weight.float() - eye) / self.in_features**0.5


def attach_predictor(model: nn.Module) -> Predictor:
    """Attach an identity predictor to a causal LM under `PREDICTOR_NAME` (idempotent) and return it.

    The predictor sits beside the LM head and never enters the model's forward: generation and predictions use
    the clean branch `lm_head(h)`; only the ZeroSiam loss reads `lm_head(P(h))`.
    """
    existing = getattr(model, PREDICTOR_NAME, None)
    if existing is not None:
        return existing
    head = model.get_output_embeddings()
    # A half-precision predictor would round away its updates near the identity (bf16 spacing at 1.0 is ~4e-3), so
    # it keeps float32 weights, as peft does for LoRA; the loss casts it to the hidden states' dtype.
    dtype = torch.float32 if head.weight.dtype in (torch.float16, torch.bfloat16) else head.weight.dtype
    predictor = Predictor(head.in_features, dtype=dtype, device=head.weight.device)
    setattr(model, PREDICTOR_NAME, predictor)
    return predictor


def find_predictor(model: nn.Module) -> nn.Module | None:
    """The active predictor of a (possibly peft-wrapped) model, or None when it has none.

    Under peft the attribute holds a `ModulesToSaveWrapper`; its trainable copy is the one the loss must use.
    """
    for name, module in model.named_modules():
        if name.endswith(PREDICTOR_NAME) and isinstance(module, nn.Module):
            wrapped = getattr(module, "modules_to_save", None)
            if wrapped is not None:
                return wrapped[module.active_adapters[0]]
            return module
    return None
