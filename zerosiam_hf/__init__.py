"""ZeroSiam test-time adaptation for Hugging Face causal LMs."""

import importlib

from .engines import quiet_bitsandbytes_import


# peft imports bitsandbytes with itself, and that import asks the hub for a kernel and prints a line (engines.py)
quiet_bitsandbytes_import()

# Names resolve on first use, so that light modules (the answer checker's child process, `--help`) do not pay for
# importing torch and transformers.
_EXPORTS = {
    "ModelArguments": "modeling",
    "build_adapted_model": "modeling",
    "load_adapted_model": "modeling",
    "load_model_and_tokenizer": "modeling",
    "PREDICTOR_NAME": "predictor",
    "Predictor": "predictor",
    "attach_predictor": "predictor",
    "ZeroSiamConfig": "config",
    "ZeroSiamTrainer": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zerosiam_hf' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
