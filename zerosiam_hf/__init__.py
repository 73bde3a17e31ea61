"""ZeroSiam test-time adaptation for Hugging Face causal LMs."""

from .config import ZeroSiamConfig
from .modeling import ModelArguments, build_adapted_model, load_adapted_model, load_model_and_tokenizer
from .predictor import PREDICTOR_NAME, Predictor, attach_predictor
from .trainer import ZeroSiamTrainer


__all__ = [
    "ModelArguments",
    "PREDICTOR_NAME",
    "Predictor",
    "ZeroSiamConfig",
    "ZeroSiamTrainer",
    "attach_predictor",
    "build_adapted_model",
    "load_adapted_model",
    "load_model_and_tokenizer",
]
