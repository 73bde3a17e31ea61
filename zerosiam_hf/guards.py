"""Guards that keep a long test-time adaptation run sound: non-finite updates are skipped, and a run that cannot go
on stops with one line."""

import logging
import signal
import threading
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from .errors import RunStopped


logger = logging.getLogger(__name__)


class NonFiniteGuard(TrainerCallback):
    """Skips an update whose loss or gradient holds NaN or Inf, and stops the run after too many in a row.

    Dropping every gradient (set to None) before the optimizer step makes the step a no-op: torch's optimizers
    leave a parameter without a gradient, and its state, untouched. The decision is reduced over processes, so
    that every process skips the same updates and the replicas stay equal.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.nonfinite_loss = None
        self.skipped = 0
        self.in_a_row = 0

    def check_loss(self, loss: torch.Tensor) -> None:
        """Note a micro-batch whose loss is not finite (its gradient may still be); no host sync here."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.nonfinite_loss = bad if self.nonfinite_loss is None else self.nonfinite_loss | bad

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        bad = torch.zeros((), device=args.device)
        checks = [torch.isfinite(p.grad).all().to(bad.device) for p in model.parameters() if p.grad is not None]
        if checks:
            bad = bad + (~torch.stack(checks).all()).float()
        if self.nonfinite_loss is not None:
            bad = bad + self.nonfinite_loss.float().to(bad.device)
        self.nonfinite_loss = None
        # One reduction and one host sync per step, however many tensors there are.
        if trainer.accelerator.reduce(bad, reduction="sum").item() == 0:
            self.in_a_row = 0
            return
        model.zero_grad(set_to_none=True)
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= args.max_skipped_updates:
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

    def __init__(self, trainer):
        self.trainer = trainer
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
        requested = torch.tensor(float(self.signum is not None), device=args.device)
        if self.trainer.accelerator.num_processes > 1:
            requested = self.trainer.accelerator.reduce(requested, reduction="sum")
        if requested.item() > 0 and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step


class CollapseGuard(TrainerCallback):
    """Model recovery (SAR's, for LLMs): after a step whose batch shows collapse, reset LoRA, predictor and optimizer.

    A batch shows collapse when the clean branch's mean entropy on it falls below `collapse_min_entropy`, or when the
    share of its answers that are degenerate (no number, or a token loop) passes `collapse_max_degenerate`.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.resets = 0
        self._seen = {}

    def _batch_mean(self, key: str) -> float | None:
        values = self.trainer._metrics[key][self._seen.get(key, 0) :]
        return sum(values) / len(values) if values else None

    def on_step_begin(self, args, state, control, **kwargs):
        self._seen = {key: len(values) for key, values in self.trainer._metrics.items()}

    def on_step_end(self, args, state, control, **kwargs):
        entropy, degenerate = self._batch_mean("collapse/entropy"), self._batch_mean("answers/degenerate")
        low_entropy = entropy is not None and entropy < args.collapse_min_entropy
        degenerate_answers = degenerate is not None and degenerate > args.collapse_max_degenerate
        if low_entropy or degenerate_answers:
            self.trainer._reset_to_initial()
            self.resets += 1
            logger.warning(
                "step %d: collapse guard reset LoRA, predictor and optimizer (clean entropy %s, degenerate share %s).",
                state.global_step,
                "n/a" if entropy is None else f"{entropy:.3f}",
                "n/a" if degenerate is None else f"{degenerate:.2f}",
            )
