"""EM-INF (shivamag125/EM_PT): entropy minimisation of each next-token distribution during decoding.

Matched to `ent_sample` in eval/utils/em_inf_utils.py: at every decoding step the raw next-token logits (cast to fp32)
become a leaf, Adam(lr) takes up to `n_grad_steps` steps on entropy + kl_weight * KL(p_orig || p), where the entropy
is -sum p log(p + 1e-12) and p_orig is the distribution before optimisation; before each step the entropy is checked
and the loop stops once it is below `threshold`. The optimised logits then go through generate's own processors
and warpers (the published runs sample at temperature 0.1: set that on generate, not here). Defaults are those of
evaluation_scripts/em_inf_eval.sh (the script the README runs); the code's fallbacks differ (5 steps, KL 0.001).
EM_PT runs one prompt per generate call, where its batch-summed entropy and batch-mean KL are a single row's; here
each row is optimised and stopped on its own, exactly as a batch of one.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from .base import Method, Options, option
from .grpo import SamplingOptions


class EntropyMinimizationLogitsProcessor(LogitsProcessor):
    """Replace each row of next-token logits by its EM-INF optimised version."""

    def __init__(
        self, n_grad_steps: int = 3, learning_rate: float = 0.1, kl_weight: float = 0.05, threshold: float = 0.3
    ) -> None:
        """Store EM-INF's settings; the defaults are evaluation_scripts/em_inf_eval.sh's."""
        if n_grad_steps < 0:
            raise ValueError(f"n_grad_steps must be >= 0; got {n_grad_steps}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0; got {learning_rate}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
        self.n_grad_steps = n_grad_steps
        self.learning_rate = learning_rate
        self.kl_weight = kl_weight
        self.threshold = threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Optimise each row of `scores` [B, V] independently; works under no_grad and inference_mode."""
        dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        with torch.inference_mode(False), torch.enable_grad():
            rows = [self._optimise_row(scores[i].detach().to(dtype).clone()) for i in range(scores.shape[0])]
        return torch.stack(rows).to(scores.dtype)

    def _optimise_row(self, logits: torch.Tensor) -> torch.Tensor:
        """EM-INF's inner loop on one row of logits [V]."""
        logits.requires_grad_(True)
        original_log_probs = torch.log_softmax(logits.detach(), dim=-1)
        original_probs = original_log_probs.exp()
        optimizer = torch.optim.Adam([logits], lr=self.learning_rate)
        for _ in range(self.n_grad_steps):
            optimizer.zero_grad()
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            entropy = -(probs * torch.log(probs + 1e-12)).sum()
            if entropy < self.threshold:
                break
            # KL(p_orig || p), as EM_PT's F.kl_div(p.log(), p_orig, "batchmean") for one row; where() keeps a -inf
            # logit (from an earlier processor) from turning 0 * inf into NaN
            terms = original_probs * (original_log_probs - log_probs)
            kl = torch.where(original_probs > 0, terms, torch.zeros_like(terms)).sum()
            (entropy + self.kl_weight * kl).backward()
            optimizer.step()
        return logits.detach()


# EM_PT samples at temperature 0.1: under greedy decoding the optimised logits keep their argmax (every logit above
# exp(-H) rises by the same Adam step), so the answers would be plain greedy ones.
@dataclass
class EMInfOptions(Options):
    em_inf_steps: int = option(3, "optimizer steps on the logits at each decoding step", positive=True)
    em_inf_lr: float = option(0.1, "learning rate on the logits")
    em_inf_kl_weight: float = option(0.05, "weight of the KL to the original logits")
    em_inf_threshold: float = option(0.3, "a decoding step whose entropy (nats) is below this is left as is")
    sampling_temperature: float = SamplingOptions.redefault("sampling_temperature", 0.1)


class EMInf(Method):
    name = "em_inf"
    help = "EM-INF: each decoding step's logits optimised for low entropy near the original; no weight changes"
    trains = "nothing"
    signals = ()
    online_only = True
    needs_static_generation = "optimises the logits at each decoding step in its own logits processor"
    options_class = EMInfOptions

    def decoding(self, trainer, model, prompt_ids, prompt_mask):
        args = trainer.args
        processor = EntropyMinimizationLogitsProcessor(
            args.em_inf_steps, args.em_inf_lr, args.em_inf_kl_weight, args.em_inf_threshold
        )
        return nullcontext(), [processor]
