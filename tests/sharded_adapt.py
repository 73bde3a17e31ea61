"""adapt.py as a launcher starts it, plus what the sharding tests read from inside each process.

Run by torchrun or accelerate launch from tests/test_sharding.py and for docs/SHARDING.md's figures (never collected
by pytest). With $SHARD_REPORT set, each process writes <SHARD_REPORT>.rank<N>.json at the end of training: the
bytes and elements of the base weights it holds and their full sizes, its peak resident memory, and its trainable
tensors (LoRA and the predictor) as lists. With $SHARD_STOP_AT=<step>, process 0 sends itself SIGTERM as that step
(counted from 1) begins: the run stops after it, with a checkpoint.
"""

import json
import os
import resource
import signal

from transformers import TrainerCallback

from zerosiam_hf.commands import adapt
from zerosiam_hf.trainer import ZeroSiamTrainer


def held(param) -> tuple[int, int, int]:
    """(elements held by this process, bytes held, elements of the whole tensor) of a parameter, sharded or not."""
    local = param.to_local() if hasattr(param, "to_local") else param  # FSDP2: a DTensor
    local = getattr(param, "ds_tensor", local)  # DeepSpeed ZeRO-3: the partition this process owns
    full = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
    return local.numel(), local.numel() * local.element_size(), full


class Report(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        stop_at = os.environ.get("SHARD_STOP_AT")
        if stop_at and state.global_step + 1 == int(stop_at) and self.trainer.accelerator.process_index == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, args, state, control, **kwargs):
        path = os.environ.get("SHARD_REPORT")
        if not path:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        base = [held(p) for p in model.parameters() if not p.requires_grad]
        trainable = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                tensor = param.detach()
                tensor = getattr(param, "ds_tensor", tensor)  # ZeRO-3: this process's partition
                trainable[name] = tensor.float().flatten().tolist()
        report = {
            "rank": self.trainer.accelerator.process_index,
            "processes": self.trainer.accelerator.num_processes,
            "is_sharded": self.trainer.is_sharded,
            "base_elements_held": sum(n for n, _, _ in base),
            "base_bytes_held": sum(b for _, b, _ in base),
            "base_elements_full": sum(f for _, _, f in base),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux counts KiB
            "trainable": trainable,
        }
        with open(f"{path}.rank{report['rank']}.json", "w") as file:
            json.dump(report, file)


_init = ZeroSiamTrainer.__init__


def _init_with_report(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.add_callback(Report(self))


ZeroSiamTrainer.__init__ = _init_with_report

if __name__ == "__main__":
    adapt.main()
