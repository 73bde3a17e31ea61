"""4-bit (QLoRA) bases with bitsandbytes: the quantization config, one numeric path, the preparation for training."""

import importlib.util
import logging
from typing import TYPE_CHECKING


if TYPE_CHECKING:  # the package's import stays light: torch loads with the modules that use it
    import torch
    from torch import nn


# On CPUs with AVX512-BF16, importing bitsandbytes tries to fetch a faster kernel for its packed CPU inference format
# from the hub (kernels-community, through the `kernels` package) and logs a warning when it cannot. That line would
# precede every command's output, 4-bit or not. Installing `kernels` does not help offline (it downloads the kernel at
# import), and the kernel serves only the packed format, which `keep_4bit_layers_unpacked` switches off: drop the line.
_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward"


def _drop_kernel_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_KERNEL_NOTICE)


def drop_kernel_notice() -> None:
    """Keep bitsandbytes' notice about that kernel off the output. Call it before anything imports peft (which
    imports bitsandbytes whenever it is installed): the commands do, first thing (`zerosiam_hf.commands`)."""
    kernel_logger = logging.getLogger(_KERNEL_LOGGER)
    if _drop_kernel_notice not in kernel_logger.filters:
        kernel_logger.addFilter(_drop_kernel_notice)


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes (the `quant` extra) is installed."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(compute_dtype: "torch.dtype"):
    """NF4 4-bit weights that compute in `compute_dtype` (QLoRA's setting)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def is_4bit(model: "nn.Module") -> bool:
    """Whether `model` was loaded with 4-bit bitsandbytes weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False))


def keep_4bit_layers_unpacked(model: "nn.Module") -> None:
    """Keep every 4-bit layer in bitsandbytes' plain format, in which it dequantizes and multiplies in compute dtype.

    On AVX512-BF16 CPUs a 4-bit layer called in eval mode without gradients repacks its weight, in place, into a
    format whose matmul has no autograd kernel: a training step after a generation would then silently drop the
    gradient through the base layers. That format also computes in bf16 (other greedy answers than the plain one on
    the embedded model) and needs out_features divisible by 32. One format for generation and training keeps the
    online answers, the gradients and a reloaded adapter's answers consistent, at about 1.5x the generation time of
    the packed kernel.
    """
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            raise ValueError(
                f"4-bit layer {name} is in bitsandbytes' packed CPU inference format (the model ran in eval mode "
                "before), which has no gradient: load the model again and adapt it before generating with it."
            )
        module.support_avx512bf16_for_cpu = False


def prepare_4bit_for_training(model: "nn.Module", gradient_checkpointing: bool) -> "nn.Module":
    """PEFT's k-bit preparation (base frozen, half-precision weights such as the LM head cast to fp32), plain format.

    Gradient checkpointing follows the run's `--gradient_checkpointing` instead of PEFT's default (on): it trades
    time for activation memory, which a test-time step over short answers rarely needs.
    """
    from peft import prepare_model_for_kbit_training

    keep_4bit_layers_unpacked(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
