"""Adapt a causal LM at test time with ZeroSiam (or Tent, COME, none) on unlabeled test prompts (GSM8K, Math-500, ...).

Usage:

    # the embedded default (SmolLM2-135M-Instruct), online protocol, a 64-problem subset on the CPU
    accelerate launch scripts/adapt.py --model llama --max_samples 64 --output_dir outputs/zerosiam

    # the paper's benchmarks: Math-500 (also aime24, college_math, minerva_math), answers checked by math-verify
    accelerate launch scripts/adapt.py --model llama --dataset math500 --max_samples 64 --output_dir outputs/math500

    # a YAML config with command-line overrides
    accelerate launch scripts/adapt.py --config configs/adapt.yaml --method tent --learning_rate 1e-4

    # offline: adapt for 20 steps, save the adapter, then evaluate it as a separate run
    accelerate launch scripts/adapt.py --model llama --protocol offline --max_steps 20 --output_dir outputs/offline
    python scripts/evaluate.py --model llama --adapter outputs/offline

    # go on with a run that was stopped (Ctrl-C, SIGTERM) or killed: the same flags, plus
    accelerate launch scripts/adapt.py --model llama --max_samples 64 --output_dir outputs/zerosiam \
        --resume_from_checkpoint true

    # two CPU processes (`--cpu --num_processes 2` would start one: accelerate runs several CPU processes only
    # through mpirun; the torchrun-style launcher with --use_cpu starts two that talk over gloo)
    accelerate launch --multi_gpu --num_processes 2 scripts/adapt.py --use_cpu true --model llama --max_samples 64

The output folder holds the LoRA adapter (with the predictor), `run.json` (config, data identity, versions,
timings, online accuracy and the logged diagnostics) and `predictions.jsonl` (each online answer, scored).
"""

import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Nothing from transformers before zerosiam_hf (set_seed from accelerate, the checkpoint prefix through
# zerosiam_hf.trainer): transformers' trainer utilities import peft and bitsandbytes, and bitsandbytes' import-time
# notice must meet the filter that importing zerosiam_hf installs (zerosiam_hf/quantization.py).
from accelerate import PartialState
from accelerate.utils import set_seed

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments, build_prompts, gold_answers, load_problems, prompts_cut
from zerosiam_hf.guards import RunStopped
from zerosiam_hf.modeling import (
    ADAPTER_WEIGHTS,
    ModelArguments,
    load_model_and_tokenizer,
    lora_modules,
    nonfinite_tensors,
)
from zerosiam_hf.records import (
    RUN_FILE,
    check_output_dir,
    close_staging,
    config_dict,
    open_staging,
    publish,
    staging_path,
    versions,
    write_json,
    write_jsonl,
)
from zerosiam_hf.trainer import PREDICTIONS_FILE, PREFIX_CHECKPOINT_DIR, ZeroSiamTrainer, latest_checkpoint


logger = logging.getLogger("zerosiam_hf")


@dataclass
class AdaptArguments:
    """Options of this script beyond the model, the data and the adaptation config."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an output_dir that holds a different run, and drop what an interrupted run left in "
            "<output_dir>.partial; only folders written by zerosiam-hf are ever replaced or dropped."
        },
    )


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    script_args: AdaptArguments,
    args: ZeroSiamConfig,
    command: list[str] | None = None,
) -> dict:
    """Run one adaptation into `args.output_dir` and return its run record."""
    state = PartialState()
    set_seed(args.seed)
    config = config_dict(model_args, data_args, script_args, args)
    final_dir = args.output_dir
    check_output_dir(final_dir, config, script_args.overwrite)
    staging = staging_path(final_dir)
    if state.is_main_process:
        open_staging(final_dir, config, script_args.overwrite, resume=bool(args.resume_from_checkpoint))
    state.wait_for_everyone()
    try:
        return _run_into(staging, model_args, data_args, args, config, state, command)
    finally:
        if state.is_main_process:
            close_staging(staging)


def _run_into(staging, model_args, data_args, args, config, state, command) -> dict:
    final_dir = args.output_dir
    checkpoint = _checkpoint_to_resume(args.resume_from_checkpoint, staging)
    # ------------------------------------------------------------------------------------------------ data
    problems, data_identity = load_problems(data_args)
    logger.info("%d problems from %s", len(problems), data_identity.get("path") or data_identity.get("id"))

    # ------------------------------------------------------------------------------------------------ model
    with state.main_process_first():  # the embedded model is converted once, by the first process
        model, tokenizer, model_spec = load_model_and_tokenizer(model_args)
        prompts = build_prompts(problems, tokenizer, data_args.instruction, args.max_prompt_length)
    data_identity["prompts_cut"] = prompts_cut(prompts)
    checker = data_args.make_checker()
    gold = gold_answers(problems, checker) if args.protocol == "online" else None

    # ------------------------------------------------------------------------------------------------ trainer
    args.output_dir = str(staging)
    trainer = ZeroSiamTrainer(
        model=model, args=args, train_dataset=prompts, processing_class=tokenizer, gold=gold, checker=checker
    )

    # ------------------------------------------------------------------------------------------------ adapt
    start = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    except RunStopped as stop:
        if not stop.resumable:
            raise
        raise RunStopped(f"{stop}; resume with: {_resume_command(command or sys.argv)}", stop.exit_code) from None
    finally:
        checker.close()
    adapt_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------------------------------------ save
    trainer.save_model(args.output_dir)
    online, records = trainer.online_results() if args.protocol == "online" else (None, [])
    record = {
        "config": config,
        "command": command or sys.argv,
        "model": model_spec,
        # the modules that got LoRA, as resolved for this architecture (--lora_target_modules or the default)
        "lora_modules": lora_modules(trainer.accelerator.unwrap_model(trainer.model)),
        "data": data_identity,
        "versions": versions(),
        "num_processes": state.num_processes,
        "results": {"online": online, "steps": train_output.global_step, "train_metrics": train_output.metrics},
        "timings": {"adapt_seconds": adapt_seconds},
        "log_history": trainer.state.log_history,
    }
    if state.is_main_process:
        if records:
            write_jsonl(staging / PREDICTIONS_FILE, records)  # the streamed answers, now in dataset order
        write_json(staging / RUN_FILE, record)
        for finished in staging.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):  # the run is whole: nothing left to resume
            shutil.rmtree(finished)
    state.wait_for_everyone()
    bad, total = nonfinite_tensors(staging / ADAPTER_WEIGHTS)
    if bad:  # every process reads the same file, so all of them stop here
        raise RunStopped(
            f"the adapter holds NaN or Inf in {len(bad)} of {total} tensors (first: {bad[0]}); it was not published, "
            f"and the run's records stay in {staging}."
        )
    if state.is_main_process:
        publish(staging, final_dir)
        if online:
            print(
                f"online accuracy over {online['n']} answers: strict {online['accuracy_strict']:.2f}%, "
                f"flexible {online['accuracy_flexible']:.2f}% ({args.method}, {adapt_seconds:.0f} s)"
            )
        print(
            f"adapter and run record in {final_dir}; evaluate with: python scripts/evaluate.py "
            f"--model {model_args.model} --adapter {final_dir}"
        )
    state.wait_for_everyone()
    return record


def _checkpoint_to_resume(value: str | None, staging: Path) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: `true` for the newest complete one in the staging folder."""
    if not value:
        return None
    if value.lower() == "true":
        checkpoint = latest_checkpoint(staging)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint true: {staging} holds no complete checkpoint to resume from.")
        return checkpoint
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such folder; give a checkpoint-<step> folder or true.")
    return value


def _resume_command(command: list[str]) -> str:
    """The command line that was run, with `--resume_from_checkpoint true` in place of any such flag it had."""
    argv, skip = [], False
    for item in command[1:]:
        if skip or item.startswith("--resume_from_checkpoint="):
            skip = False
            continue
        if item == "--resume_from_checkpoint":
            skip = True
            continue
        argv.append(item)
    return shlex.join(["python", command[0], *argv, "--resume_from_checkpoint", "true"])


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Parse the command line (and `--config`), then run one adaptation."""
    model_args, data_args, script_args, args = parse_args(
        (ModelArguments, DataArguments, AdaptArguments, ZeroSiamConfig), argv
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if PartialState().is_main_process else logging.WARNING,
    )
    return run(
        model_args, data_args, script_args, args, command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    )


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
