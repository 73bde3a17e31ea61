"""Whether the processes a launcher started form one distributed run: a launch that starts several processes which
each set up a run of their own (accelerate drops FSDP on a CPU without a word; DeepSpeed on a CPU with no backend
named counts every process as rank 0 of 1) is refused before the model loads or the output folder is touched, with
the command that works."""

import os
import shlex

import torch
from accelerate import PartialState
from transformers.integrations import is_deepspeed_zero3_enabled

from .errors import NotOneRun
from .invocation import launcher, torchrun_command, with_flags


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def check_one_run(command: list[str], use_cpu: bool, state: PartialState | None = None) -> None:
    """Refuse a launch whose processes are not one run, and accelerate's FSDP with --use_cpu, with one line each.

    `command` is the `sys.argv` of the run (to name the launch and the command that works), `use_cpu` its
    `--use_cpu`, `state` accelerate's state (default: this process's). Called before anything is loaded or written.
    """
    world = int(os.environ.get("WORLD_SIZE") or 1)
    launched = shlex.join(launcher(command[0]))
    accelerate_fsdp = _flag("ACCELERATE_USE_FSDP")
    if accelerate_fsdp and use_cpu:
        raise ValueError(
            f"{launched} asks for FSDP with --use_cpu true, which runs plain DDP (a full copy of the model per "
            "process: accelerate shards nothing on a CPU); shard with transformers' FSDP2 instead: "
            f"{torchrun_command(command, max(world, 2), '--fsdp_size', str(max(world, 2)))}"
        )
    if world <= 1:
        return
    state = state or PartialState()
    if state.num_processes == world:
        return
    seen = f"accelerate counts {state.num_processes} process(es) and this one rank {state.process_index}"
    if accelerate_fsdp and not has_accelerator():
        why = f"accelerate runs FSDP only on GPUs and set up no distributed run on this CPU ({seen})"
        fix = torchrun_command(command, world, "--fsdp_size", str(world), "--use_cpu", "true")
    elif _flag("ACCELERATE_USE_DEEPSPEED") and state.backend is None:
        why = f"DeepSpeed without a GPU needs the gloo backend named ({seen})"
        fix = with_flags(command, "--ddp_backend", "gloo", env="DS_ACCELERATOR=cpu")
    elif not has_accelerator() and not use_cpu:
        why = f"the launch is for GPUs and this machine has none ({seen})"
        fix = with_flags(command, "--use_cpu", "true")
    else:
        why = seen
        fix = "a launch from docs/SHARDING.md with a config from configs/accelerate/"
    raise NotOneRun(
        f"{launched} started {world} processes that do not form one run: {why}, so each would adapt alone into the "
        f"same folder; nothing was loaded or written. Run: {fix}"
    )


def refuse_zero3() -> None:
    """Refuse DeepSpeed ZeRO-3 before the model loads: it partitions the LM head and the predictor, whose weights the
    loss reads outside their modules' forward (where ZeRO-3 holds an empty partition), and its loading (zero.Init)
    needs every process at once, where the first process converts and loads the model before the others."""
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "DeepSpeed ZeRO-3 is not supported: the loss reads the LM head's and the predictor's weights outside "
            "their forward, where ZeRO-3 leaves each process an empty partition; shard the base weights with "
            "FSDP2 (--fsdp_size N, configs/accelerate/fsdp2.yaml) or use ZeRO-2 "
            "(configs/accelerate/deepspeed_zero2.yaml); see docs/SHARDING.md."
        )
