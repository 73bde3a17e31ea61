"""Guards that keep a long test-time adaptation run sound: non-finite updates are skipped, and a run that cannot go
on stops with one line."""

import logging
import signal
import threading
from contextlib import contextmanager

import torch
from accelerate.utils import reduce
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .errors import RunStopped


logger = logging.getLogger(__name__)


class NonFiniteGuard(TrainerCallback, ExportableState):
    """Skips an update whose loss or gradient holds NaN or Inf, and stops the run after `max_in_a_row` in a row.

    Dropping every gradient (set to None) before the optimizer step makes the step a no-op: torch's optimizers
    leave a parameter without a gradient, and its state, untouched. The decision is reduced over processes, so
    that every process skips the same updates and the replicas stay equal. Its counters travel with a checkpoint
    as the Trainer's callback state (`ExportableState`).
    """

    def __init__(self, max_in_a_row: int):  # --max_skipped_updates, whose default is the config's
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0
        self._nonfinite_loss = None

    def state(self) -> dict:
        return {
            "args": {"max_in_a_row": self.max_in_a_row},
            "attributes": {"skipped": self.skipped, "in_a_row": self.in_a_row},
        }

    def check_loss(self, loss: torch.Tensor) -> None:
        """Note a micro-batch whose loss is not finite (its gradient may still be); no host sync here."""
        bad = ~torch.isfinite(loss.detach()).all()
        self._nonfinite_loss = bad if self._nonfinite_loss is None else self._nonfinite_loss | bad

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = torch.zeros((), device=args.device)
        checks = [torch.isfinite(p.grad).all().to(bad.device) for p in model.parameters() if p.grad is not None]
        if checks:
            bad = bad + (~torch.stack(checks).all()).float()
        if self._nonfinite_loss is not None:
            bad = bad + self._nonfinite_loss.float().to(bad.device)
        self._nonfinite_loss = None
        # One reduction and one host sync per step, however many tensors there are.
        if reduce(bad, reduction="sum").item() == 0:
            self.in_a_row = 0
            return
        model.zero_grad(set_to_none=True)
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise RunStopped(
                f"stopped at step {state.global_step + 1}: the last {self.in_a_row} updates had a NaN or Inf loss or "
                "gradient and were skipped (--max_skipped_updates); the run diverged, try a lower --learning_rate."
            )


class SignalStop(TrainerCallback):
    """SIGINT or SIGTERM ends the run at the end of the current step, with a checkpoint to resume from.

    A second signal acts as it would without this callback (KeyboardInterrupt, or termination), for a user who will
    not wait for the step to end. Processes stop together: the request is reduced over processes every step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.stopped_at = None
        self._previous = {}

    @contextmanager
    def installed(self):
        """Catch the signals for the duration of the block (only the main thread may install handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.signum, self.stopped_at = None, None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()
        logger.warning("%s: finishing this step, then writing a checkpoint.", signal.Signals(signum).name)

    def on_step_end(self, args, state, control, **kwargs):
        requested = reduce(torch.tensor(float(self.signum is not None), device=args.device), reduction="sum")
        if requested.item() > 0 and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step


def shows_collapse(entropy: float | None, degenerate: float | None, min_entropy: float, max_degenerate: float) -> bool:
    """Whether a step shows collapse: its clean branch's mean entropy is below `min_entropy`, or the share of its
    recent answers that are degenerate (no number, or a token loop; `recent_degenerate_share`) is above
    `max_degenerate`. None: not measured."""
    low_entropy = entropy is not None and entropy < min_entropy
    return low_entropy or (degenerate is not None and degenerate > max_degenerate)


def recent_degenerate_share(steps: list[tuple[float, int]], min_answers: int) -> float | None:
    """The share of degenerate answers over the fewest last steps that hold at least `min_answers` answers (`steps`:
    (the step's degenerate share, its number of answers), oldest first); None while they hold fewer. At a batch of
    `min_answers` or more that is the last step alone; at batch size 1 one degenerate answer is not a share of 1."""
    degenerate, answers = 0.0, 0
    for share, count in reversed(steps):
        degenerate, answers = degenerate + share * count, answers + count
        if answers >= min_answers:
            return degenerate / answers
    return None


class CollapseGuard(TrainerCallback, ExportableState):
    """Model recovery (SAR's, for LLMs): decides, from a step's statistics that the trainer hands it, whether to reset
    LoRA, predictor and optimizer, and counts the resets.

    Whether a step shows collapse is `shows_collapse`'s rule, with the thresholds of the config; the degenerate share
    is read over the answers since the run's start or its last reset (`recent_degenerate_share`), which the answers of
    a reset model do not count against. It handles no Trainer event: it is a callback so that its count and its recent
    steps travel with a checkpoint as the Trainer's callback state.
    """

    def __init__(self, min_entropy: float, max_degenerate: float, min_answers: int):  # the config's --collapse_*
        self.min_entropy = min_entropy
        self.max_degenerate = max_degenerate
        self.min_answers = min_answers
        self.resets = 0
        self.recent: list[tuple[float, int]] = []  # (degenerate share, answers) of each step since the last reset

    def state(self) -> dict:
        return {
            "args": {
                "min_entropy": self.min_entropy,
                "max_degenerate": self.max_degenerate,
                "min_answers": self.min_answers,
            },
            "attributes": {"resets": self.resets, "recent": self.recent},
        }

    def collapsed(self, step: int, entropy: float | None, degenerate: float | None, answers: int) -> bool:
        """Whether the step, whose batch gave `answers` answers with a share `degenerate` of degenerate ones, shows
        collapse (then counted as a reset); None: the statistic was not measured."""
        if degenerate is not None and answers:
            # Only as many steps as the window can need: a run of thousands of steps keeps a short list.
            self.recent = [*self.recent, (degenerate, answers)][-self.min_answers :]
        share = recent_degenerate_share(self.recent, self.min_answers)
        if not shows_collapse(entropy, share, self.min_entropy, self.max_degenerate):
            return False
        self.resets += 1
        self.recent = []
        logger.warning(
            "step %d: collapse guard reset LoRA, predictor and optimizer (clean entropy %s, degenerate share %s).",
            step,
            "n/a" if entropy is None else f"{entropy:.3f}",
            "n/a" if share is None else f"{share:.2f}",
        )
        return True
