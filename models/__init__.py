"""Models built from the shared pre-norm Transformer block.

Layer variants come from registries: attention types from `attention`
(imported here, which registers the built-in ones) and FFN types from
`models.ffn` ("mlp" here; plug-ins from higher floors, such as the MoE
layer in `moe/`, register themselves when their package is imported, and
`tasks/` imports every built-in plug-in).
"""
from models.config import default_model_config, validate_model_config
from models.encoder import EncoderClassifier
from models.flops import forward_flops_per_token, param_count, train_flops_per_token
from models.lm import DecoderLM

__all__ = [
    "default_model_config", "validate_model_config", "EncoderClassifier",
    "forward_flops_per_token", "param_count", "train_flops_per_token", "DecoderLM",
]
