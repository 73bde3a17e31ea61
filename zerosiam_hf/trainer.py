"""`ZeroSiamTrainer`: test-time adaptation of a causal LM's next-token distributions with a `transformers.Trainer`."""

import json
import os
import shutil
import signal
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkers import NumericChecker, score_completions
from .config import ZeroSiamConfig
from .diagnostics import answer_diagnostics, top_token_dominance
from .errors import RunStopped
from .generation import generate_batches, greedy_config, pad
from .guards import CollapseGuard, NonFiniteGuard, SignalStop
from .losses import head_loss
from .modeling import build_adapted_model
from .predictor import PREDICTOR_NAME, find_predictor
from .records import append_jsonl, write_json, write_jsonl
from .scoring import accuracy


PREDICTIONS_FILE = "predictions.jsonl"
# What a checkpoint needs beyond the Trainer's own files to resume a run exactly.
RUN_STATE_FILE = "zerosiam_state.json"


class PromptCollator:
    """Left-pads pre-tokenized prompts; the batch carries row indices but never gold answers."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        input_ids, attention_mask = pad([row["prompt_ids"] for row in rows], self.pad_token_id, side="left")
        index = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "index": index}


class _EpisodeEnd(TrainerCallback):
    """After each optimizer step of an episodic run: answer the batch with the adapted weights, then reset."""

    def __init__(self, trainer: "ZeroSiamTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_episode()


class ZeroSiamTrainer(Trainer):
    """Adapts LoRA adapters (and the ZeroSiam predictor) on unlabeled prompts, one update per batch.

    Each step takes a batch of prompts; with `signal="response"` the model first answers them greedily from the
    clean branch, and the answer is teacher-forced for the loss. Under the online protocol those answers are also
    the predictions, scored against `gold` (which never reaches the model) and kept in `online_records`.

    Args:
        model: a causal LM, or a `PeftModel` made by `build_adapted_model` with the same `args`.
        args: the run's `ZeroSiamConfig`.
        train_dataset: rows with `prompt_ids` and `index`, as `data.build_prompts` makes them.
        processing_class: the tokenizer (left padding, with a pad token).
        gold: gold answers by row index (`data.gold_answers`), needed to score the online protocol.
        checker: the benchmark's answer checker (`DataArguments.make_checker()`); GSM8K's numeric one by default.
    """

    _checkpoint_scratch: str | None = None  # where the Trainer writes the checkpoint being saved (_save_checkpoint)

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        args: ZeroSiamConfig,
        train_dataset: Dataset,
        processing_class: PreTrainedTokenizerBase,
        gold: dict | None = None,
        checker=None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        if not isinstance(args, ZeroSiamConfig):
            raise TypeError(f"args must be a ZeroSiamConfig, got {type(args).__name__}.")
        columns = set(train_dataset.column_names)
        if not {"prompt_ids", "index"} <= columns:
            raise ValueError(
                "train_dataset needs `prompt_ids` and `index` columns: pass it through data.build_prompts."
            )
        if columns & {"answer", "gold"}:
            raise ValueError("train_dataset holds gold answers; drop them (data.build_prompts does) and pass `gold`.")
        if args.protocol == "online" and gold is None:
            raise ValueError("the online protocol scores each answer: pass gold=data.gold_answers(problems, checker).")
        if not isinstance(model, PeftModel):
            model = build_adapted_model(model, args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=PromptCollator(processing_class.pad_token_id),
            processing_class=processing_class,
            callbacks=callbacks,
        )
        # compute_loss returns a per-batch mean, so the Trainer must divide by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self.gold = gold
        self.checker = checker or NumericChecker()
        self.online_records: dict[int, dict] = {}
        self._metrics = defaultdict(list)
        self._lm_head = model.get_output_embeddings()
        self._predictor = find_predictor(model) if args.method == "zerosiam" else None
        self._generation_config = greedy_config(model, processing_class, args.max_new_tokens)
        self._head_checked = False
        self._pending_episode = None
        self._nonfinite_guard = NonFiniteGuard(self)
        self._signal_stop = SignalStop(self)
        self.add_callback(self._nonfinite_guard)
        self.add_callback(self._signal_stop)
        self._collapse_guard = CollapseGuard(self) if args.collapse_guard else None
        if args.episodic or args.collapse_guard:
            self._initial_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if args.episodic:
            self.add_callback(_EpisodeEnd(self))
        if self._collapse_guard is not None:
            self.add_callback(self._collapse_guard)

    # ----------------------------------------------------------------------------------------------- run
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, resumable with the online records, stopping at a step's end on SIGINT or SIGTERM.

        `resume_from_checkpoint=True` takes the newest complete checkpoint in `output_dir`. A stop by signal writes
        a checkpoint and raises `RunStopped`; the answers scored so far are in `output_dir/predictions.jsonl`, one
        line each as they come.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"--resume_from_checkpoint true: no complete checkpoint in {self.args.output_dir}.")
        stream = Path(self.args.output_dir) / PREDICTIONS_FILE
        if resume_from_checkpoint:
            self._load_run_state(resume_from_checkpoint)
        if self.args.should_save:  # the stream restarts where the checkpoint left it
            if self.online_records:
                write_jsonl(stream, self.online_records.values())
            else:
                stream.unlink(missing_ok=True)
        with self._signal_stop.installed():
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        step = self._signal_stop.stopped_at
        if step is not None:
            signum = self._signal_stop.signum
            name = signal.Signals(signum).name if signum else "a signal to another process"
            raise RunStopped(
                f"stopped by {name} at step {step} of {self.state.max_steps}; checkpoint in "
                f"{Path(self.args.output_dir) / f'{PREFIX_CHECKPOINT_DIR}-{step}'}",
                exit_code=128 + signum if signum else 1,
                resumable=True,
            )
        return output

    def _get_output_dir(self, trial):
        return self._checkpoint_scratch or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, plus the online records so far and the guard's counters, written under a
        temporary name and renamed when complete: a full disk or a kill leaves no half-written checkpoint-<step>.

        The Trainer's own steps write into `<output_dir>/.tmp-checkpoint-<step>/` (through `_get_output_dir`), where
        its rotation finds nothing older to delete; the older ones go only once the new one is in place.
        """
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        scratch = run_dir / f".tmp-{name}"
        self._checkpoint_scratch = str(scratch)
        try:
            if self.args.should_save:
                run_state = {
                    "online_records": list(self.online_records.values()),
                    "skipped_updates": self._nonfinite_guard.skipped,
                    "skipped_in_a_row": self._nonfinite_guard.in_a_row,
                    "resets": None if self._collapse_guard is None else self._collapse_guard.resets,
                }
                write_json(scratch / name / RUN_STATE_FILE, run_state)
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            self._checkpoint_scratch = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states) into the scratch
        if self.args.should_save:
            shutil.rmtree(run_dir / name, ignore_errors=True)  # the same step saved again (a resumed run's last)
            os.rename(scratch / name, run_dir / name)
            scratch.rmdir()
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint, True)

    def _load_run_state(self, checkpoint: str) -> None:
        file = Path(checkpoint) / RUN_STATE_FILE
        if not (file.is_file() and (Path(checkpoint) / TRAINER_STATE_NAME).is_file()):
            raise ValueError(
                f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint of this trainer (no "
                f"{RUN_STATE_FILE} or {TRAINER_STATE_NAME} there)."
            )
        run_state = json.loads(file.read_text())
        self.online_records = {record["index"]: record for record in run_state["online_records"]}
        self._nonfinite_guard.skipped = run_state["skipped_updates"]
        self._nonfinite_guard.in_a_row = run_state["skipped_in_a_row"]
        if self._collapse_guard is not None:
            self._collapse_guard.resets = run_state["resets"] or 0

    # ----------------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        """AdamW over LoRA at `learning_rate` and over the predictor at `learning_rate * predictor_lr_scale`."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = model if model is not None else self.model
        trainable = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in trainable if PREDICTOR_NAME not in n], "weight_decay": self.args.weight_decay}
        ]
        predictor_params = [p for n, p in trainable if PREDICTOR_NAME in n]
        if predictor_params:
            lr = self.args.learning_rate * self.args.predictor_lr_scale
            groups.append({"params": predictor_params, "lr": lr, "weight_decay": 0.0})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ----------------------------------------------------------------------------------------------- one step
    def training_step(self, model, inputs, num_items_in_batch=None):
        """One answered batch; `method="none"` answers and scores it and skips the update."""
        if not self.args.trains:
            self._prepare_inputs(inputs)
            return torch.zeros((), device=self.args.device)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite_guard.check_loss(loss)
        return loss

    def _prepare_inputs(self, inputs: dict) -> dict:
        """Answer the prompts (when the signal or the protocol needs it) and build the loss inputs."""
        inputs = super()._prepare_inputs(inputs)
        prompt_ids, prompt_mask, index = inputs["input_ids"], inputs["attention_mask"], inputs["index"]
        online, episodic = self.args.protocol == "online", self.args.episodic
        completions = None
        if self.args.signal == "response" or (online and not episodic):
            completions = self._generate(prompt_ids, prompt_mask)
        if online and not episodic:
            self._record(index, completions)
        elif online:
            self._pending_episode = (prompt_ids, prompt_mask, index)
        if self.args.signal == "prompt":
            return {"input_ids": prompt_ids, "attention_mask": prompt_mask, "loss_mask": prompt_mask.bool()}
        completion_ids, completion_mask = pad(
            completions, self.processing_class.pad_token_id, side="right", device=prompt_ids.device
        )
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        # The logits at position t predict token t + 1: the loss covers the positions that predict answer tokens.
        is_answer = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1).bool()
        loss_mask = torch.zeros_like(is_answer)
        loss_mask[:, :-1] = is_answer[:, 1:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One backbone forward; the loss head reads its final hidden states (see `losses.head_loss`)."""
        attention_mask = inputs["attention_mask"]
        # Positions count real tokens only, as generate() counts them under left padding.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            logits_to_keep=1,  # the loss head computes its own logits, chunk by chunk
            use_cache=False,
        )
        hidden = outputs.hidden_states[-1]
        if not self._head_checked:
            self._check_hidden_is_head_input(hidden, outputs.logits)
        result = head_loss(
            self.args.method,
            hidden,
            self._lm_head.weight,
            inputs["loss_mask"],
            predictor_weight=None if self._predictor is None else self._predictor.weight,
            alpha=self.args.alpha,
            stop_gradient=self.args.ablation != "no_stop_gradient",
            chunk_size=self.args.loss_chunk_size,
            lm_head_bias=self._lm_head.bias,
        )
        self._log_loss_metrics(result)
        return (result.loss, outputs) if return_outputs else result.loss

    # ----------------------------------------------------------------------------------------------- helpers
    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
        """Greedy answers from the clean branch, in chunks of `generation_batch_size` prompts."""
        size = self.args.generation_batch_size or len(prompt_ids)
        batches = (
            (prompt_ids[start : start + size], prompt_mask[start : start + size])
            for start in range(0, len(prompt_ids), size)
        )
        return generate_batches(
            self.accelerator.unwrap_model(self.model),
            batches,
            self._generation_config,
            merge_lora=self.args.merge_adapter_for_generation,
        )

    def _check_hidden_is_head_input(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """The loss needs the LM head's input; fail loudly for an architecture whose last hidden state is not it."""
        with torch.no_grad():
            expected = self._lm_head(hidden[:, -1:]).float()
            if not torch.allclose(expected, logits.float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError(
                    f"{type(self.accelerator.unwrap_model(self.model).base_model.model).__name__}: the last hidden "
                    "state is not the LM head's input, so the ZeroSiam loss cannot be computed for this architecture."
                )
        self._head_checked = True

    def _log_loss_metrics(self, result) -> None:
        with torch.no_grad():
            metrics = {
                "loss/entropy": result.entropy,
                "loss/align": result.align,
                "collapse/entropy": result.clean_entropy,
                "collapse/logit_norm": result.clean_logit_norm,
                "collapse/dominance": top_token_dominance(result.clean_top1),
            }
            if self._predictor is not None:
                metrics["collapse/predictor_drift"] = self._predictor.drift()
            values = torch.stack([value.float().reshape(()) for value in metrics.values()])
            # Plain gather: every process contributes one row of per-batch means, with nothing to de-duplicate.
            values = self.accelerator.gather(values[None]).mean(dim=0)
        for key, value in zip(metrics, values.tolist()):
            self._metrics[key].append(value)

    def _record(self, index: torch.Tensor, completions: list[list[int]]) -> None:
        """Score a batch's answers as the online predictions, gathered from every process."""
        scored = score_completions(self.checker, self.processing_class, index.tolist(), completions, self.gold)
        local = [({**r, "updates_before": self.state.global_step}, ids) for r, ids in zip(scored, completions)]
        gathered = gather_object(local)
        fresh = [(r, ids) for r, ids in gathered if r["index"] not in self.online_records]
        for record, _ in fresh:
            self.online_records[record["index"]] = record
        if self.args.should_save and fresh:
            append_jsonl(Path(self.args.output_dir) / PREDICTIONS_FILE, [record for record, _ in fresh])
        self._metrics_update(answer_diagnostics([r["completion"] for r, _ in fresh], [ids for _, ids in fresh]))
        self._metrics_update({"answers/check_timeouts": accuracy([r for r, _ in fresh])["check_timeouts"]})
        running = accuracy(list(self.online_records.values()))
        self._metrics_update(
            {
                "online/accuracy_strict": running["accuracy_strict"],
                "online/accuracy_flexible": running["accuracy_flexible"],
            }
        )

    def _metrics_update(self, values: dict) -> None:
        for key, value in values.items():
            self._metrics[key].append(value)

    def _end_episode(self) -> None:
        """Episodic protocol: answer the last batch with the updated weights, then restore the initial state."""
        if self._pending_episode is not None:
            prompt_ids, prompt_mask, index = self._pending_episode
            self._record(index, self._generate(prompt_ids, prompt_mask))
            self._pending_episode = None
        self._reset_to_initial()

    def _reset_to_initial(self) -> None:
        """Put LoRA and the predictor back to their initial values and forget the optimizer's state."""
        with torch.no_grad():
            for name, param in self.accelerator.unwrap_model(self.model).named_parameters():
                if name in self._initial_state:
                    param.copy_(self._initial_state[name])
        getattr(self.optimizer, "optimizer", self.optimizer).state.clear()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the step's averaged diagnostics to the Trainer's logs (so `report_to` sees them)."""
        logs = {**logs, **{key: sum(values) / len(values) for key, values in self._metrics.items() if values}}
        self._metrics.clear()
        if self.args.trains:
            logs["guard/skipped_updates"] = self._nonfinite_guard.skipped
        if self._collapse_guard is not None:
            logs["guard/resets"] = self._collapse_guard.resets
        super().log(logs, start_time)

    def online_results(self) -> tuple[dict, list[dict]]:
        """Accuracy of the answers given along the way, and the scored records in dataset order."""
        records = [self.online_records[i] for i in sorted(self.online_records)]
        return accuracy(records), records


def latest_checkpoint(folder: str) -> str | None:
    """The newest checkpoint in `folder` that was written to its end (a kill can cut the last one short)."""
    complete = [
        path
        for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.rsplit("-", 1)[1].isdigit()
        and (path / TRAINER_STATE_NAME).is_file()
        and (path / RUN_STATE_FILE).is_file()
    ]
    return str(max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]))) if complete else None
