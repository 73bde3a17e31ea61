"""4-bit (QLoRA) bases with bitsandbytes: the quantization config, one numeric path, the preparation for training."""

from typing import TYPE_CHECKING

from .engines import import_bitsandbytes, installed


if TYPE_CHECKING:  # the package's import stays light: torch loads with the modules that use it
    import torch
    from torch import nn


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes (the `quant` extra) is installed, whether or not a command hid it (`engines`)."""
    return installed("bitsandbytes")


def quantization_config(compute_dtype: "torch.dtype"):
    """NF4 4-bit weights that compute in `compute_dtype` (QLoRA's setting); bitsandbytes is imported here, before
    transformers loads the model with it."""
    from transformers import BitsAndBytesConfig

    import_bitsandbytes()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def saved_by_bitsandbytes(config) -> bool:
    """Whether a model's config says its checkpoint holds bitsandbytes-quantized weights (4- or 8-bit)."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    return quantization is not None and quantization.get("quant_method") == "bitsandbytes"


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
    bnb = import_bitsandbytes()
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
