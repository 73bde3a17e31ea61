"""The runs the commands make, as library functions: one adaptation (load the data and the model, adapt, save the
adapter and the run's record into an output folder that appears whole; resume a run that was stopped, or reuse one
already finished), and one evaluation of a base model and an adapter. The commands (`zerosiam_hf.commands`) parse
their flags and call these functions."""

import logging
import math
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from .checkers import score_completions
from .config import ZeroSiamConfig
from .data import DataArguments, build_prompts, file_sha256, load_scored_problems, prompts_cut
from .errors import RunStopped
from .generation import GenerationArguments, answer_and_score, generate_completions, greedy_config, sampling_config
from .invocation import changed_flags, redacted, resume_command, same_command, sibling_command
from .launch import check_one_run, has_accelerator, refuse_zero3
from .modeling import (
    ADAPTER_WEIGHTS,
    ModelArguments,
    check_adapter,
    load_adapted_model,
    load_dtype,
    load_model_and_tokenizer,
    lora_modules,
    nonfinite_tensors,
    resolve_loadable_model,
)
from .noise import NOISED_QUESTIONS_FILE
from .records import (
    REDACTED,
    RUN_FILE,
    config_dict,
    logged_series,
    matching_record,
    read_jsonl,
    run_identity,
    versions,
    write_json,
    write_jsonl,
)
from .scoring import majority_correct, sampled_accuracy
from .staging import OutputArguments, checkpoint_to_resume, latest_checkpoint, staged_output, staging_path
from .trainer import PREDICTIONS_FILE, PREFIX_CHECKPOINT_DIR, ZeroSiamTrainer, check_checkpoint_identity


logger = logging.getLogger("zerosiam_hf")


def run_settings(
    model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments, args: ZeroSiamConfig
) -> dict:
    """The settings a run records in `run.json` and is matched by (to reuse it, or to resume it)."""
    return config_dict(model_args, data_args, output_args, args)


def _keep_stream_order(data_args: DataArguments, args: ZeroSiamConfig) -> None:
    """A stream put in order (`--stream_order` other than iid, applied by `load_scored_problems`) reaches the trainer
    in that order: its sampler, which shuffles by default, is made sequential before the run's settings are taken."""
    if data_args.stream_order == "iid":
        return
    if args.train_sampling_strategy not in ("random", "sequential"):
        raise ValueError(
            f"--stream_order {data_args.stream_order} sets the order of the stream itself; drop "
            f"--train_sampling_strategy {args.train_sampling_strategy}."
        )
    args.train_sampling_strategy = "sequential"


def adapt(
    model_args: ModelArguments,
    data_args: DataArguments,
    output_args: OutputArguments,
    args: ZeroSiamConfig,
    command: list[str] | None = None,
    resume_hint: str | None = None,
) -> dict:
    """Run one adaptation into `args.output_dir` and return its run record.

    `args.resume_from_checkpoint` ("true" for the newest complete checkpoint, or a checkpoint folder) goes on with a
    run that was stopped. `command` is the command line recorded in `run.json` (secrets <redacted>), default
    `sys.argv`; a run that stops says to resume with `resume_hint`, default `command` with
    `--resume_from_checkpoint true`. The run writes through `args`: its `output_dir` names the staging folder while
    the run lasts.
    """
    command = redacted(command or sys.argv)
    resume_hint = resume_hint or resume_command(command)
    # an unknown model, or one offline and not cached, is one line before anything is read or written
    resolve_loadable_model(model_args.model)
    state = PartialState()
    check_one_run(command, args.use_cpu, state)  # before anything is loaded or written
    refuse_zero3()
    if not has_accelerator():  # as TrainingArguments does for --use_cpu: nothing to pin for, and torch warns
        args.dataloader_pin_memory = False
    set_seed(args.seed)
    _keep_stream_order(data_args, args)
    config = run_settings(model_args, data_args, output_args, args)
    final_dir = args.output_dir
    resume = bool(args.resume_from_checkpoint)
    inputs = {"--model": model_args.model, "--dataset": data_args.dataset}
    with staged_output(final_dir, config, output_args.overwrite, resume=resume, state=state, inputs=inputs) as staging:
        record = _adapt_into(staging, model_args, data_args, args, config, state, command, resume_hint)
    return record


def adapt_or_reuse(
    model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments, args: ZeroSiamConfig
) -> dict:
    """The record of the run `args` asks for: read from `args.output_dir` when a run with the same settings finished
    there on the data it reads now (`overwrite` too replaces only a run that differs), resumed from its newest
    checkpoint when one was stopped there, else run anew. A run that stops says to run the calling command again
    (`sys.argv`), which resumes it."""
    if latest_checkpoint(staging_path(args.output_dir)):
        args.resume_from_checkpoint = "true"
    _keep_stream_order(data_args, args)
    record = matching_record(args.output_dir, run_settings(model_args, data_args, output_args, args))
    if record is not None and record["data"].get("sha256") not in (None, file_sha256(data_args)):
        logger.info("the data file changed since the finished run in %s: running it again", args.output_dir)
        record = None
    # --dtype auto loads what the machine computes fastest: a run it made elsewhere may have computed in another dtype
    dtype = str(load_dtype(model_args.dtype, args.use_cpu)).removeprefix("torch.")
    if record is not None and record["model"].get("dtype", dtype) != dtype:
        logger.info(
            "the finished run in %s computed in %s, this one in %s: running it again",
            args.output_dir,
            record["model"]["dtype"],
            dtype,
        )
        record = None
    if record is not None:
        logger.info("reusing the finished run in %s", args.output_dir)
        return record
    return adapt(model_args, data_args, output_args, args, resume_hint=same_command(sys.argv))


def _adapt_into(staging: Path, model_args, data_args, args, config, state, command, resume_hint) -> dict:
    """One adaptation written into `staging`: data, model, trainer, the run, then its record (`_finish_run`)."""
    checkpoint = checkpoint_to_resume(args.resume_from_checkpoint, staging)
    checker = data_args.make_checker()
    try:
        # -------------------------------------------------------------------------------------------- data
        problems, data_identity, gold = load_scored_problems(data_args, checker)
        logger.info("%d problems from %s", len(problems), data_identity.get("path") or data_identity.get("id"))
        identity = run_identity(config, data_identity)
        if checkpoint is not None:  # another run's checkpoint, or data edited since it, before the model loads
            check_checkpoint_identity(checkpoint, identity)

        # -------------------------------------------------------------------------------------------- model
        with state.main_process_first():  # the embedded model is converted once, by the first process
            model, tokenizer, model_spec = load_model_and_tokenizer(
                model_args, lengths=(args.max_prompt_length, args.max_new_tokens), use_cpu=args.use_cpu
            )
            prompts = build_prompts(problems, tokenizer, data_args.instruction, args.max_prompt_length)
        data_identity["prompts_cut"] = prompts_cut(prompts)

        # -------------------------------------------------------------------------------------------- trainer
        args.output_dir = str(staging)
        trainer = ZeroSiamTrainer(
            model=model,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            gold=gold if args.protocol == "online" else None,
            checker=checker,
            run_identity=identity,
        )

        # -------------------------------------------------------------------------------------------- adapt
        start = time.perf_counter()
        try:
            train_output = trainer.train(resume_from_checkpoint=checkpoint)
        except RunStopped as stop:
            if not stop.resumable:
                raise
            secret = f" (with your token in place of {REDACTED})" if REDACTED in resume_hint else ""
            raise RunStopped(f"{stop}; resume with: {resume_hint}{secret}", stop.exit_code) from None
        adapt_seconds = time.perf_counter() - start
    finally:
        checker.close()

    # ------------------------------------------------------------------------------------------------ save
    trainer.save_model(args.output_dir)
    online, records = trainer.online_results() if args.protocol == "online" else (None, [])
    record = {
        "config": config,
        "command": command,
        "model": model_spec,
        # the modules that got LoRA, as resolved for this architecture (--lora_target_modules or the default)
        "lora_modules": lora_modules(trainer.accelerator.unwrap_model(trainer.model)),
        "data": data_identity,
        "versions": versions(),
        "num_processes": state.num_processes,
        "results": {
            "online": online,
            "steps": train_output.global_step,
            "train_metrics": train_output.metrics,
            "cost": {**trainer.total_cost(), "problems": len(problems)},
        },
        "timings": {"adapt_seconds": adapt_seconds},
        "log_history": trainer.state.log_history,
    }
    if data_args.noise is not None and state.is_main_process:  # the questions as the model saw them
        write_jsonl(staging / NOISED_QUESTIONS_FILE, problems.select_columns(["index", "question"]).to_list())
    _finish_run(staging, state, record, records)
    return record


def _finish_run(staging: Path, state, record: dict, records: list[dict]) -> None:
    """Write the run's record and its answers in dataset order, drop its checkpoints, and refuse an adapter with NaN
    or Inf, which is then never published."""
    if state.is_main_process:
        if records:
            write_jsonl(staging / PREDICTIONS_FILE, records)  # the streamed answers, now in dataset order
        write_json(staging / RUN_FILE, record)
        # The run is whole: nothing left to resume, nor a checkpoint a kill cut short (.tmp-checkpoint-<step>).
        for finished in [
            *staging.glob(f"{PREFIX_CHECKPOINT_DIR}-*"),
            *staging.glob(f".tmp-{PREFIX_CHECKPOINT_DIR}-*"),
        ]:
            shutil.rmtree(finished)
    state.wait_for_everyone()
    bad, total = nonfinite_tensors(staging / ADAPTER_WEIGHTS)
    if bad:  # every process reads the same file, so all of them stop here
        raise RunStopped(
            f"the adapter holds NaN or Inf in {len(bad)} of {total} tensors (first: {bad[0]}); it was not published, "
            f"and the run's records stay in {staging}."
        )


def evaluate_command(record: dict, model_args: ModelArguments, data_args: DataArguments, args: ZeroSiamConfig) -> str:
    """The command that evaluates a finished run's adapter on the same problems with the same model settings,
    started the way the run was (script, module or console command)."""
    generation = GenerationArguments(
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length,
        generation_backend=args.generation_backend,
    )
    flags = [
        "--model",
        model_args.model,
        *changed_flags(model_args, ModelArguments(model=model_args.model)),
        *(["--dataset", data_args.dataset] if data_args.dataset != DataArguments.dataset else []),
        *changed_flags(data_args, DataArguments(dataset=data_args.dataset)),
        *[flag for flag in changed_flags(generation) if flag != "--batch_size"],
        "--adapter",
        str(record["config"]["ZeroSiamConfig"]["output_dir"]),
    ]
    return shlex.join([*sibling_command(record["command"][0], "evaluate"), *flags])


def summary(record: dict) -> list[str]:
    """A few lines on a finished run: accuracy (and how many answers ran out of tokens), the clean branch's entropy at
    its first and last step, the share of degenerate answers, the updates skipped (and collapse-guard resets), and
    where the adapter is."""
    settings = record["config"]["ZeroSiamConfig"]
    seconds, online = record["timings"]["adapt_seconds"], record["results"]["online"]
    how = f"({settings['method']}, {seconds:.0f} s)"
    if online:
        lines = [
            f"online accuracy over {online['n']} answers: strict {online['accuracy_strict']:.2f}%, "
            f"flexible {online['accuracy_flexible']:.2f}% {how}"
        ]
        cut = _answers_cut(Path(settings["output_dir"]) / PREDICTIONS_FILE, settings["max_new_tokens"])
        if cut:
            lines.append(f"{cut} of {online['n']} answers were cut at --max_new_tokens {settings['max_new_tokens']}")
    else:
        lines = [f"{record['results']['steps']} adaptation steps {how}"]
    entropy = logged_series(record, "collapse/entropy")
    if entropy:
        (first_step, first), (last_step, last) = entropy[0], entropy[-1]
        lines.append(f"clean-branch entropy: {first:.3f} nats at step {first_step}, {last:.3f} at step {last_step}")
    counts = []
    degenerate = logged_series(record, "answers/degenerate")
    if degenerate:
        counts.append(f"degenerate answers {statistics.fmean(v for _, v in degenerate):.1%} (mean over batches)")
    for key, name in (("guard/skipped_updates", "updates skipped (NaN or Inf)"), ("guard/resets", "collapse resets")):
        logged = logged_series(record, key)
        if logged:
            counts.append(f"{name} {logged[-1][1]:.0f}")
    if counts:
        lines.append("; ".join(counts))
    lines.append(f"adapter and run record in {settings['output_dir']}")
    return lines


def _answers_cut(predictions: Path, max_new_tokens: int) -> int:
    """How many online answers used their whole token budget (cut before they ended, unless the last token was EOS)."""
    if not predictions.is_file():
        return 0
    return sum(row.get("tokens", 0) >= max_new_tokens for row in read_jsonl(predictions))


@dataclass
class EvalArguments:
    """What to evaluate and where the results go."""

    adapter: str | None = field(default=None, metadata={"help": "Output folder of adapt.py to evaluate."})
    skip_base: bool = field(default=False, metadata={"help": "With --adapter, do not evaluate the base model too."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where eval.json goes; default <adapter>-eval, or outputs/eval-<model>."}
    )
    num_samples: int = field(
        default=1,
        metadata={
            "help": "Answers sampled per problem besides the greedy one (needs --temperature > 0): reports mean@k "
            "(what TTRL, RENT and one-shot EM call pass@1), pass@k and maj@k. Their protocol: --num_samples 16 "
            "--temperature 0.6 --top_p 0.95. Each generate() call decodes batch_size x num_samples answers."
        },
    )
    temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature; 0 answers greedily only (the default)."}
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "Sample from the most likely tokens whose probabilities add up to top_p; 1 keeps them all."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the sampled answers: each variant's sampling starts from it."}
    )

    def __post_init__(self):
        if self.adapter is None and self.skip_base:
            raise ValueError("--skip_base needs --adapter: without one there is nothing else to evaluate.")
        if self.num_samples < 1:
            raise ValueError(
                f"--num_samples must be a positive integer (answers sampled per problem), got {self.num_samples}."
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature must be 0 (greedy) or a positive number, got {self.temperature}.")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(
                f"--num_samples {self.num_samples} samples its answers: give --temperature > 0 (the field's protocol "
                "is --temperature 0.6 --top_p 0.95)."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1] (1 keeps every token), got {self.top_p}.")
        if self.top_p < 1 and self.temperature == 0:
            raise ValueError(
                f"--top_p {self.top_p} applies to sampled answers only: give --temperature > 0, or leave --top_p at 1."
            )
        if not 0 <= self.seed < 2**32:  # numpy's generator, which set_seed seeds, takes these only
            raise ValueError(f"--seed must be an integer in [0, 2**32 - 1], got {self.seed}.")

    @property
    def sampled(self) -> bool:
        """Whether answers are sampled besides the greedy one."""
        return self.temperature > 0

    def protocol(self) -> dict:
        """How the answers were decoded, as eval.json records it: greedy only, or greedy and k sampled answers."""
        if not self.sampled:
            return {"decoding": "greedy", "num_samples": 1, "temperature": None, "top_p": None, "seed": None}
        return {
            "decoding": "sampled",
            "num_samples": self.num_samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


def protocol_summary(protocol: dict) -> str:
    """The protocol in a few words for a summary line: `greedy`, or `16 samples, temperature 0.6, top-p 0.95,
    seed 0`."""
    if protocol["decoding"] == "greedy":
        return "greedy"
    return (
        f"{protocol['num_samples']} samples, temperature {protocol['temperature']:g}, top-p {protocol['top_p']:g}, "
        f"seed {protocol['seed']}"
    )


def evaluation_dir(model_args: ModelArguments, args: EvalArguments) -> str:
    """Where an evaluation goes: `--output_dir`, else <adapter>-eval, else outputs/eval-<model>."""
    if args.output_dir is not None:  # an empty one is refused, not taken for the default
        return args.output_dir
    return f"{args.adapter.rstrip('/')}-eval" if args.adapter else f"outputs/eval-{Path(model_args.model).name}"


def evaluate(
    model_args: ModelArguments,
    data_args: DataArguments,
    generation: GenerationArguments,
    output_args: OutputArguments,
    args: EvalArguments,
) -> dict:
    """Answer the problems with the base model and/or the adapter `args.adapter` on it, score them, and write
    `eval.json` and `predictions-<variant>.jsonl` into an output folder that appears whole; return the record."""
    # an unknown model, or one offline and not cached, is one line before anything is read or written
    resolve_loadable_model(model_args.model)
    if args.adapter is not None:
        check_adapter(args.adapter)
    if args.sampled and generation.generation_backend == "continuous":
        raise ValueError(
            "--generation_backend continuous answers greedily only; use --generation_backend static to sample "
            f"(--temperature {args.temperature:g})."
        )
    config = config_dict(model_args, data_args, generation, output_args, args)
    inputs = {"--model": model_args.model, "--dataset": data_args.dataset, "--adapter": args.adapter}
    with staged_output(
        evaluation_dir(model_args, args), config, output_args.overwrite, record_file="eval.json", inputs=inputs
    ) as staging:
        record = _evaluate_into(staging, model_args, data_args, generation, args, config)
    return record


def _evaluate_into(staging, model_args, data_args, generation, args, config) -> dict:
    checker = data_args.make_checker()
    try:
        return _evaluate_with(staging, model_args, data_args, generation, args, config, checker)
    finally:
        checker.close()


def _evaluate_with(staging, model_args, data_args, generation, args, config, checker) -> dict:
    # ------------------------------------------------------------------------------------------------ data
    problems, data_identity, gold = load_scored_problems(data_args, checker)

    # ------------------------------------------------------------------------------------------------ model
    model, tokenizer, model_spec = load_model_and_tokenizer(
        model_args, lengths=(generation.max_prompt_length, generation.max_new_tokens)
    )
    if torch.cuda.is_available() and not model_args.load_in_4bit:
        model.to("cuda")
    if args.adapter is not None:  # an adapter that does not fit the model is reported now, not after the base pass
        load_adapted_model(model, args.adapter).unload()
    prompts = build_prompts(problems, tokenizer, data_args.instruction, generation.max_prompt_length)
    data_identity["prompts_cut"] = prompts_cut(prompts)
    answering = {
        "max_new_tokens": generation.max_new_tokens,
        "batch_size": generation.batch_size,
        "show_progress": True,
        "backend": generation.generation_backend,
    }

    # ------------------------------------------------------------------------------------------------ evaluate
    results = {}
    variants = (["base"] if args.adapter is None or not args.skip_base else []) + (["adapted"] if args.adapter else [])
    for variant in variants:
        if variant == "adapted":  # the base pass is done: wrapping the same weights in the adapter costs no reload
            model = load_adapted_model(model, args.adapter)
        results[variant], records = answer_and_score(model, tokenizer, prompts, gold, checker, **answering)
        if args.sampled:
            results[variant]["sampled"], records = _sample_and_score(
                model, tokenizer, prompts, gold, checker, generation, args, records
            )
        write_jsonl(staging / f"predictions-{variant}.jsonl", records)

    # ------------------------------------------------------------------------------------------------ save
    record = {
        "config": config,
        "command": redacted(sys.argv),
        "model": model_spec,
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        "data": data_identity,
        "versions": versions(),
        "protocol": args.protocol(),
        "results": results,
    }
    write_json(staging / "eval.json", record)
    return record


def _sample_and_score(model, tokenizer, prompts, gold, checker, generation, args, records) -> tuple[dict, list[dict]]:
    """`args.num_samples` sampled answers per prompt (seeded from `args.seed`, one prefill each), scored: the sampled
    metrics (`scoring.sampled_accuracy`, flexible, plus mean@k strict) and the greedy `records` with each problem's
    samples, majority answer and whether it is right added."""
    k, size = args.num_samples, generation.batch_size
    config = sampling_config(greedy_config(model, tokenizer, generation.max_new_tokens), args.temperature, args.top_p)
    set_seed(args.seed)  # each variant draws from the same seed: its answers do not depend on the variants before it
    start = time.perf_counter()
    completions = generate_completions(
        model,
        tokenizer,
        prompts["prompt_ids"],
        max_new_tokens=generation.max_new_tokens,
        batch_size=size,
        show_progress=True,
        config=config,
        samples=k,
    )
    seconds = time.perf_counter() - start
    scored = score_completions(checker, tokenizer, [i for i in prompts["index"] for _ in range(k)], completions, gold)
    groups = [scored[first : first + k] for first in range(0, len(scored), k)]
    votes = [majority_correct(group, checker.same_answer) for group in groups]
    summary = sampled_accuracy([[r["correct_flexible"] for r in group] for group in groups], [v[1] for v in votes])
    summary["mean_at_k_strict"] = 100.0 * sum(r["correct_strict"] for r in scored) / len(scored)
    summary["check_timeouts"] = sum(bool(r.get("check_timed_out")) for r in scored)
    summary["generate_seconds"] = seconds
    records = [
        {
            **record,
            "samples": [{key: value for key, value in r.items() if key != "index"} for r in group],
            "majority_answer": majority,
            "majority_correct": right,
        }
        for record, group, (majority, right) in zip(records, groups, votes)
    ]
    return summary, records
