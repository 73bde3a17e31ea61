"""Adapt a causal LM at test time with ZeroSiam or another method of the zoo (--method) on unlabeled test prompts.

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

    # sharded (docs/SHARDING.md): FSDP2 keeps half the base weights per process; DeepSpeed ZeRO-2 on the CPU
    torchrun --nproc_per_node 2 scripts/adapt.py --fsdp_size 2 --use_cpu true --model llama --max_samples 64
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 \
        scripts/adapt.py --ddp_backend gloo --model llama --max_samples 64

The output folder holds the LoRA adapter (with the predictor), `run.json` (config, data identity, versions,
timings, online accuracy and the logged diagnostics) and `predictions.jsonl` (each online answer, scored).
"""

import logging
import sys

from accelerate import PartialState

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments
from zerosiam_hf.modeling import ModelArguments
from zerosiam_hf.pipeline import adapt, evaluate_command, summary
from zerosiam_hf.staging import OutputArguments


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Parse the command line (and `--config`), run one adaptation, and print its summary and the next command."""
    model_args, data_args, output_args, args = parse_args(
        (ModelArguments, DataArguments, OutputArguments, ZeroSiamConfig), argv
    )
    main_process = PartialState().is_main_process
    level = logging.INFO if main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    record = adapt(model_args, data_args, output_args, args, command=command)
    if main_process:
        print("\n".join(summary(record)))
        print(f"evaluate the adapter with: {evaluate_command(record, model_args, data_args, args)}")
    return record


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
