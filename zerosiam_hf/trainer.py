"""`ZeroSiamTrainer`: test-time adaptation of a causal LM's next-token distributions with a `transformers.Trainer`."""

import json
import logging
import os
import re
import shutil
import signal
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkers import NumericChecker, score_completions
from .config import ZeroSiamConfig
from .diagnostics import answer_diagnostics, top_token_dominance
from .errors import RunStopped
from .generation import generate_batches, greedy_config, pad, sampling_config
from .guards import CollapseGuard, NonFiniteGuard, SignalStop
from .launch import refuse_zero3
from .losses import head_transform
from .methods import write_method_settings
from .methods.base import SecondView, final_hidden_states, label_free
from .modeling import build_adapted_model, check_head_input, method_optimizer
from .predictor import find_predictor
from .records import PREDICTIONS_FILE, append_jsonl, changed_settings, write_json, write_jsonl
from .scoring import accuracy, majority_correct
from .staging import RUN_STATE_FILE, checkpoint_to_resume


# In a checkpoint, beside the Trainer's files: the method's own state (`Method.initial_state`), when it has one.
METHOD_STATE_FILE = "method_state.safetensors"
logger = logging.getLogger(__name__)


class PromptCollator:
    """Left-pads pre-tokenized prompts; the batch carries row indices but never gold answers."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        input_ids, attention_mask = pad([row["prompt_ids"] for row in rows], self.pad_token_id, side="left")
        index = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "index": index}


class _StepHooks(TrainerCallback):
    """The trainer's own step events: marks where a step's statistics start, and ends each step (`_end_step`)."""

    def __init__(self, trainer: "ZeroSiamTrainer"):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._step_start = {key: len(values) for key, values in self.trainer._metrics.items()}
        self.trainer._step_answers = []

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_step()


def _check_inputs(args, train_dataset: Dataset, gold: dict | None) -> None:
    """Refuse a config that is not a `ZeroSiamConfig`, prompts not made by `data.build_prompts` or holding gold
    answers, and an online run without the gold answers it scores with."""
    if not isinstance(args, ZeroSiamConfig):
        raise TypeError(f"args must be a ZeroSiamConfig, got {type(args).__name__}.")
    columns = set(train_dataset.column_names)
    if not {"prompt_ids", "index"} <= columns:
        raise ValueError("train_dataset needs `prompt_ids` and `index` columns: pass it through data.build_prompts.")
    if columns & {"answer", "gold"}:
        raise ValueError("train_dataset holds gold answers; drop them (data.build_prompts does) and pass `gold`.")
    if args.protocol == "online" and gold is None:
        raise ValueError("the online protocol scores each answer: pass gold=data.gold_answers(problems, checker).")


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
        run_identity: what the run computes from (`records.run_identity`), written into each checkpoint; a checkpoint
            of another run (other settings or data) is then refused when resumed.
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
        run_identity: dict | None = None,
    ):
        _check_inputs(args, train_dataset, gold)
        refuse_zero3()
        if not isinstance(model, PeftModel):
            model = build_adapted_model(model, args)
        # transformers refuses checkpoints of a model sharded at load (`DistributedConfig`), whose sharded optimizer
        # state it cannot save; here the optimizer holds LoRA and the predictor only, whole tensors on every process
        # (the base weights are frozen), so the Trainer's own optimizer file is complete and resuming works.
        save_only_model = args.save_only_model
        args.save_only_model = save_only_model or getattr(model, "is_distributed_loading_by_transformers", False)
        try:
            super().__init__(
                model=model,
                args=args,
                train_dataset=train_dataset,
                data_collator=PromptCollator(processing_class.pad_token_id),
                processing_class=processing_class,
                callbacks=callbacks,
            )
        finally:
            args.save_only_model = save_only_model
        # compute_loss returns a per-batch mean, so the Trainer must divide by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self.gold = gold
        self.run_identity = run_identity
        self.checker = checker or NumericChecker()
        self.online_records: dict[int, dict] = {}
        self._metrics = defaultdict(list)
        self.method = args.method_spec
        if self.method.reads_gold:
            logger.warning("--method %s is an oracle: its reward reads the gold answers.", self.method.name)
        self.lm_head = model.get_output_embeddings()
        # the methods read the model's logits as its head makes them (soft-cap, scale); an architecture whose head
        # they cannot reproduce is refused here, before anything is generated
        self.head_transform = head_transform(model.get_base_model().config)
        if args.updates_weights or self.method.forwards_prompt:
            check_head_input(model, self.head_transform)
        self.predictor = find_predictor(model)
        self._generation_config = greedy_config(model, processing_class, args.max_new_tokens)
        if args.sampling_temperature is not None:  # the methods that sample their answers
            self._generation_config = sampling_config(self._generation_config, args.sampling_temperature)
        # What the run spent, for the cost columns of a comparison: tokens generated (every sample), prompt tokens
        # through the generator's prefill, tokens through a forward and backward pass of the backbone, and tokens
        # through an extra forward without backward.
        self.cost = {"generated_tokens": 0, "prefill_tokens": 0, "trained_tokens": 0, "forward_tokens": 0}
        self._uncounted = set()  # counters a resumed checkpoint did not keep: unknown for the whole run
        self._pending_episode = None
        self._row_positions = None  # row index -> position in train_dataset (`prompt_rows`)
        self._step_start = {}
        self._step_answers = []  # answers of each of the step's answer_diagnostics calls, in order
        self._signal_stop = SignalStop()
        self._add_guards(model)

    def _add_guards(self, model: PeftModel) -> None:
        """The guards and step hooks, and the initial state that the episodic and the collapse resets restore.

        The guards keep their counters as callback state, which a resumed Trainer restores into new instances: they
        are looked up where used (`_guard`), never held.
        """
        args = self.args
        self.add_callback(NonFiniteGuard(args.max_skipped_updates))
        self.add_callback(self._signal_stop)
        self.add_callback(_StepHooks(self))
        if args.collapse_guard:
            self.add_callback(
                CollapseGuard(args.collapse_min_entropy, args.collapse_max_degenerate, args.collapse_min_answers)
            )
        if args.episodic or args.collapse_guard:
            self._initial_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.method_state = self.method.initial_state(self)

    @property
    def is_sharded(self) -> bool:
        """Whether each process holds only a part of the base weights: sharded at load (transformers' FSDP2,
        `--fsdp_size`) or by accelerate's FSDP; DeepSpeed ZeRO-2 shards the optimizer state only."""
        return bool(getattr(self.model, "is_distributed_loading_by_transformers", False) or self.is_fsdp_enabled)

    # ----------------------------------------------------------------------------------------------- run
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, resumable with the online records, stopping at a step's end on SIGINT or SIGTERM.

        `resume_from_checkpoint=True` takes the newest complete checkpoint in `output_dir`. A stop by signal writes
        a checkpoint and raises `RunStopped`; the answers scored so far are in `output_dir/predictions.jsonl`, one
        line each as they come.
        """
        resume_from_checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir)
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
        """The Trainer's checkpoint, plus the online records and the cost so far, written under a
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
                # the guards' counters travel as the Trainer's callback state (trainer_state.json)
                run_state = {
                    "online_records": list(self.online_records.values()),
                    "cost": self._counted(),
                    "identity": self.run_identity,
                }
                write_json(scratch / name / RUN_STATE_FILE, run_state)
                if self.method_state:
                    state = {key: value.detach().cpu().contiguous() for key, value in self.method_state.items()}
                    save_file(state, scratch / name / METHOD_STATE_FILE)
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
        if self.run_identity is not None:
            check_checkpoint_identity(checkpoint, self.run_identity)
        run_state = read_run_state(checkpoint)
        self.online_records = {record["index"]: record for record in run_state["online_records"]}
        saved = run_state.get("cost") or {}
        # a checkpoint written before a counter existed misses the steps before it: the record leaves it out (n/a)
        self._uncounted = set(self.cost) - set(saved)
        self.cost = {**self.cost, **saved}
        if self.method_state:
            file = Path(checkpoint) / METHOD_STATE_FILE
            if not file.is_file():
                raise ValueError(
                    f"--resume_from_checkpoint {checkpoint}: no {METHOD_STATE_FILE} there, the state --method "
                    f"{self.method.name} keeps beside its weights; resume from a checkpoint of this method, or start "
                    "over."
                )
            saved_state = load_file(file)
            self.method_state = {key: saved_state[key].to(value) for key, value in self.method_state.items()}

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The Trainer's save (the adapter, for the methods that train one), plus the method and its settings."""
        try:
            super()._save(output_dir, state_dict)
        except SafetensorError as error:
            # safetensors words an OS error (a full disk) as its own type, "... (os error 28)": give it back as the
            # OSError it was, which the output folder's handling reports in one line
            code = re.search(r"\(os error (\d+)\)", str(error))
            if code is None:
                raise
            number = int(code[1])
            raise OSError(number, os.strerror(number), output_dir or self.args.output_dir) from error
        if self.args.should_save:
            write_method_settings(output_dir or self.args.output_dir, self.args)

    # ----------------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        """The Trainer's optimizer over the method's parameter groups (`Method.parameter_groups`)."""
        if self.optimizer is not None:
            return self.optimizer
        self.optimizer = method_optimizer(self.args, model if model is not None else self.model)
        return self.optimizer

    # ----------------------------------------------------------------------------------------------- one step
    def training_step(self, model, inputs, num_items_in_batch=None):
        """One answered batch; a method that updates no weight (`none`, `slot`, `em_inf`) answers and scores it and
        skips the update."""
        if not self.args.updates_weights:
            self._prepare_inputs(inputs)
            return torch.zeros((), device=self.args.device)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._guard(NonFiniteGuard).check_loss(loss)
        return loss

    def _prepare_inputs(self, inputs: dict) -> dict:
        """Answer the prompts (when the signal or the protocol needs it) and build the loss inputs."""
        inputs = super()._prepare_inputs(inputs)
        prompt_ids, prompt_mask, index = inputs["input_ids"], inputs["attention_mask"], inputs["index"]
        online, episodic = self.args.protocol == "online", self.args.episodic
        completions, scored, view = None, None, None
        if self.args.signal == "response" or (online and not episodic):
            completions = self._generate(prompt_ids, prompt_mask)
        if online and not episodic and self.args.updates_weights:
            view = self.method.second_view(self, index)
        if view is not None:
            view, view_answers = self._answer_second_view(view, index)
        if online and not episodic:
            scored = self._record(index, completions, view.notes if view else None)
        elif online:
            self._pending_episode = (prompt_ids, prompt_mask, index)
        if not self.args.updates_weights:
            return inputs
        if self.args.signal == "prompt":
            return {"input_ids": prompt_ids, "attention_mask": prompt_mask, "loss_mask": prompt_mask.bool()}
        k = self.args.num_generations if self.method.samples else 1
        if k > 1:
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
        if view is not None:
            prompt_ids, prompt_mask, completions, scored = self._with_second_view(
                view, view_answers, prompt_ids, prompt_mask, completions, scored
            )
        completion_ids, completion_mask = pad(
            completions, self.processing_class.pad_token_id, side="right", device=prompt_ids.device
        )
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        # The logits at position t predict token t + 1: the loss covers the positions that predict answer tokens.
        is_answer = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1).bool()
        loss_mask = torch.zeros_like(is_answer)
        loss_mask[:, :-1] = is_answer[:, 1:]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
        if scored is not None and not self.method.reads_gold:
            scored = label_free(scored)
        rewards = self.method.from_answers(self, scored) if scored is not None else None
        if rewards is not None:
            batch["rewards"] = rewards.to(input_ids.device)
        return batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The method's loss of the batch (see `methods`); the model outputs are not kept, so they come back None."""
        self.cost["trained_tokens"] += int(inputs["attention_mask"].sum())
        loss = self.method.loss(self, model, inputs)
        return (loss, None) if return_outputs else loss

    # ----------------------------------------------------------------------------------------------- for the methods
    def prompt_rows(self, index: list[int]) -> Dataset:
        """The rows of `train_dataset` whose `index` column holds `index`, in that order (a stream order moves rows, so
        a row's index is not its position)."""
        if self._row_positions is None:  # the dataset is fixed for the trainer's life: map it once
            self._row_positions = {row: i for i, row in enumerate(self.train_dataset["index"])}
        return self.train_dataset.select([self._row_positions[row] for row in index])

    def head_input(self, model, inputs: dict) -> torch.Tensor:
        """The LM head's input, [B, T, d] final hidden states, of one backbone forward over `inputs`."""
        return final_hidden_states(model, inputs["input_ids"], inputs["attention_mask"])[1]

    def log_head_metrics(self, result) -> None:
        """The loss head's diagnostics (`losses.HeadLoss`), averaged over processes."""
        metrics = {
            "loss/entropy": result.entropy,
            "loss/align": result.align,
            "collapse/entropy": result.clean_entropy,
            "collapse/logit_norm": result.clean_logit_norm,
            "collapse/dominance": top_token_dominance(result.clean_top1),
        }
        if self.predictor is not None:
            metrics["collapse/predictor_drift"] = self.predictor.drift()
        self.log_metrics_step(metrics)

    def log_metrics_step(self, metrics: dict[str, torch.Tensor]) -> None:
        """Per-batch scalar diagnostics, averaged over processes, logged at the step's end."""
        with torch.no_grad():
            values = torch.stack([torch.as_tensor(value).float().reshape(()).cpu() for value in metrics.values()])
            # Plain gather: every process contributes one row of per-batch means, with nothing to de-duplicate.
            values = self.accelerator.gather(values[None].to(self.args.device)).mean(dim=0)
        for key, value in zip(metrics, values.tolist()):
            self._metrics[key].append(value)

    # ----------------------------------------------------------------------------------------------- helpers
    def _generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config=None, samples: int | None = None
    ) -> list[list[int]]:
        """The method's answers (greedy from the clean branch, or `num_generations` samples per prompt, one prompt's
        samples together), in chunks of `generation_batch_size` prompts; or, for a method's own request (a
        paraphrase), `samples` answers per prompt under the generation `config`. Every token is counted in `cost`."""
        model = self.accelerator.unwrap_model(self.model)
        size = self.args.generation_batch_size or len(prompt_ids)
        k = samples or (self.args.num_generations if self.method.samples else 1)
        completions = []
        for start in range(0, len(prompt_ids), size):
            ids, mask = prompt_ids[start : start + size], prompt_mask[start : start + size]
            context, processors = self.method.decoding(self, model, ids, mask)
            if self.method.forwards_prompt:
                self.cost["forward_tokens"] += int(mask.sum())
            # the prompts but their last tokens once, the last tokens once per sample (generation.prompt_cache)
            self.cost["prefill_tokens"] += int(mask.sum()) + (k - 1) * len(ids)
            with context:
                completions += generate_batches(
                    model,
                    [(ids, mask)],
                    config or self._generation_config,
                    # a sharded base weight is a slice of the matrix: LoRA cannot be folded into it
                    merge_lora=self.args.merge_adapter_for_generation and not self.is_sharded,
                    backend=self.args.generation_backend,
                    logits_processor=processors,
                    samples=k,
                )
        self.cost["generated_tokens"] += sum(len(ids) for ids in completions)
        return completions

    def _record(
        self, index: torch.Tensor, completions: list[list[int]], notes: list[dict] | None = None
    ) -> list[dict]:
        """Score a batch's answers as the online predictions, gathered from every process, and return this
        process's scored answers (every sample, prompt-major).

        A sampling method's prediction is its first sample; the record adds `avg_at_k` (the share of the k samples
        that are right, flexible) and `maj_at_k` (whether the majority answer is right), the vote going through the
        benchmark's checker as TTRL's does, and what `notes` holds for its prompt (a second view's paraphrase).
        """
        k = self.args.num_generations if self.method.samples else 1
        indices = index.repeat_interleave(k).tolist()
        scored = score_completions(self.checker, self.processing_class, indices, completions, self.gold)
        step = self.state.global_step
        local = []
        for start in range(0, len(scored), k):
            group = scored[start : start + k]
            record = {**group[0], "updates_before": step, **(notes[start // k] if notes else {})}
            if k > 1:
                majority, majority_right = majority_correct(group, self.checker.same_answer)
                for sample in group:  # one vote per prompt: TTRL's reward reads it from here
                    sample["majority_answer"] = majority
                record.update(
                    samples=k,
                    sample_answers=[r["pred_flexible"] for r in group],
                    avg_at_k=sum(r["correct_flexible"] for r in group) / k,
                    maj_at_k=majority_right,
                    majority_answer=majority,
                )
            local.append((record, completions[start]))
        gathered = gather_object(local)
        fresh = [(r, ids) for r, ids in gathered if r["index"] not in self.online_records]
        for record, _ in fresh:
            self.online_records[record["index"]] = record
        if self.args.should_save and fresh:
            append_jsonl(Path(self.args.output_dir) / PREDICTIONS_FILE, [record for record, _ in fresh])
        self._metrics_update(answer_diagnostics([r["completion"] for r, _ in fresh], [ids for _, ids in fresh]))
        if fresh:  # answer_diagnostics logs nothing for no answers
            self._step_answers.append(len(fresh))
        self._metrics_update({"answers/check_timeouts": accuracy([r for r, _ in fresh])["check_timeouts"]})
        running = accuracy(list(self.online_records.values()))
        self._metrics_update(
            {
                "online/accuracy_strict": running["accuracy_strict"],
                "online/accuracy_flexible": running["accuracy_flexible"],
            }
        )
        return scored

    def _answer_second_view(self, view: SecondView, index: torch.Tensor) -> tuple[SecondView, tuple[list, list]]:
        """`num_generations` sampled answers to each prompt of a second view (`Method.second_view`), scored as the
        prompt's own are: the view (its notes add the extracted answers, `view_answers`) and `(answers, scores)`."""
        k = self.args.num_generations
        completions = self._generate(view.prompt_ids, view.attention_mask)
        indices = index.repeat_interleave(k).tolist()
        scored = score_completions(self.checker, self.processing_class, indices, completions, self.gold)
        answers = [[r["pred_flexible"] for r in scored[start : start + k]] for start in range(0, len(scored), k)]
        view = view._replace(notes=[{**note, "view_answers": a} for note, a in zip(view.notes, answers)])
        return view, (completions, scored)

    def _with_second_view(self, view, view_answers, prompt_ids, prompt_mask, completions, scored):
        """The batch's rows, each prompt's k answers followed by its k answers in the second view: the prompts [2kB, T]
        (left-padded anew), the answers and their scores in that order."""
        k = self.args.num_generations
        view_completions, view_scored = view_answers
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        view_rows = [ids[mask.bool()].tolist() for ids, mask in zip(view.prompt_ids, view.attention_mask)]
        view_rows = [row for row in view_rows for _ in range(k)]

        def interleave(own: list, other: list) -> list:
            return [
                item for start in range(0, len(own), k) for item in own[start : start + k] + other[start : start + k]
            ]

        prompt_ids, prompt_mask = pad(
            interleave(rows, view_rows), self.processing_class.pad_token_id, side="left", device=prompt_ids.device
        )
        return prompt_ids, prompt_mask, interleave(completions, view_completions), interleave(scored, view_scored)

    def _metrics_update(self, values: dict) -> None:
        for key, value in values.items():
            self._metrics[key].append(value)

    def _guard(self, kind: type):
        """The registered callback of type `kind`, or None."""
        return next((callback for callback in self.callback_handler.callbacks if isinstance(callback, kind)), None)

    def _end_step(self) -> None:
        """After each optimizer step, in this order: the method updates its own state (`Method.end_step`); an
        episodic run answers the batch with the updated weights and restores the initial state; the collapse guard
        reads the step's statistics and restores it on collapse."""
        self.method.end_step(self)
        if self.args.episodic:
            if self._pending_episode is not None:
                prompt_ids, prompt_mask, index = self._pending_episode
                self._record(index, self._generate(prompt_ids, prompt_mask))
                self._pending_episode = None
            self._reset_to_initial()
        guard = self._guard(CollapseGuard)
        if guard is not None:
            entropy, shares = (
                self._metrics[key][self._step_start.get(key, 0) :]
                for key in ("collapse/entropy", "answers/degenerate")
            )
            answers = sum(self._step_answers)
            degenerate = sum(s * n for s, n in zip(shares, self._step_answers)) / answers if answers else None
            if guard.collapsed(
                self.state.global_step, sum(entropy) / len(entropy) if entropy else None, degenerate, answers
            ):
                self._reset_to_initial()

    def _reset_to_initial(self) -> None:
        """Put LoRA and the predictor back to their initial values, make the method's own state afresh from them
        and forget the optimizer's state."""
        with torch.no_grad():
            for name, param in self.accelerator.unwrap_model(self.model).named_parameters():
                if name in self._initial_state:
                    param.copy_(self._initial_state[name])
        self.method_state = self.method.initial_state(self)
        getattr(self.optimizer, "optimizer", self.optimizer).state.clear()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the step's averaged diagnostics to the Trainer's logs (so `report_to` sees them)."""
        logs = {**logs, **{key: sum(values) / len(values) for key, values in self._metrics.items() if values}}
        self._metrics.clear()
        if self.args.updates_weights:
            logs["guard/skipped_updates"] = self._guard(NonFiniteGuard).skipped
        if self.args.collapse_guard:
            logs["guard/resets"] = self._guard(CollapseGuard).resets
        super().log(logs, start_time)

    def _counted(self) -> dict[str, int]:
        return {name: count for name, count in self.cost.items() if name not in self._uncounted}

    def total_cost(self) -> dict[str, int]:
        """The tokens spent (`cost`, but for counters a resumed checkpoint did not keep), summed over processes;
        every process must call it."""
        counted = self._counted()
        counts = torch.tensor(list(counted.values()), dtype=torch.long, device=self.args.device)
        counts = self.accelerator.reduce(counts, reduction="sum") if self.accelerator.num_processes > 1 else counts
        return dict(zip(counted, counts.tolist()))

    def online_results(self) -> tuple[dict, list[dict]]:
        """Accuracy of the answers given along the way, and the scored records in dataset order."""
        records = [self.online_records[i] for i in sorted(self.online_records)]
        return accuracy(records), records


def read_run_state(checkpoint: str) -> dict:
    """What a checkpoint holds beyond the Trainer's own files (`RUN_STATE_FILE`); a folder that is not a complete
    checkpoint of this trainer is refused."""
    file = Path(checkpoint) / RUN_STATE_FILE
    if not (file.is_file() and (Path(checkpoint) / TRAINER_STATE_NAME).is_file()):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint of this trainer (no "
            f"{RUN_STATE_FILE} or {TRAINER_STATE_NAME} there)."
        )
    return json.loads(file.read_text())


def check_checkpoint_identity(checkpoint: str, identity: dict) -> None:
    """Refuse to resume from a checkpoint made from other settings or other data than `identity`
    (`records.run_identity`): its answers and weights would pass for this run's."""
    recorded = read_run_state(checkpoint).get("identity")
    start_over = "or start over without --resume_from_checkpoint (with --overwrite true to drop an interrupted run)"
    if recorded is None:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it records no settings or data to check this run against (an "
            f"older zerosiam-hf, or a trainer given no run_identity, wrote it); {start_over}."
        )
    changed = changed_settings(recorded["settings"], identity["settings"])
    if changed:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: that run was made with other settings ({', '.join(changed)}); "
            f"resume with the flags it was started with, {start_over}."
        )
    then, now = recorded["data"], identity["data"]
    differ = sorted(key for key in then.keys() | now.keys() if then.get(key) != now.get(key))
    if differ:
        shown = "; ".join(f"{key} {then.get(key)} then, {now.get(key)} now" for key in differ[:3])
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: the data differs from what that run read ({shown}); restore "
            f"that data, {start_over}."
        )
