"""Models built from the shared pre-norm Transformer block."""
import attention  # noqa: F401  (registers the attention variants)
import moe.layer  # noqa: F401  (registers the "moe" FFN)
from models.config import ConfigError, default_model_config, validate_model_config
from models.encoder import EncoderClassifier
from models.flops import forward_flops_per_token, param_count, train_flops_per_token
from models.lm import DecoderLM

__all__ = [
    "ConfigError", "default_model_config", "validate_model_config", "EncoderClassifier",
    "forward_flops_per_token", "param_count", "train_flops_per_token", "DecoderLM",
]
