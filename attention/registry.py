"""The attention registry: `model.attention` names a class registered here.

A variant registers with `@register_attention("name")` in its own file
(attention/dense.py, performer.py, longformer.py); importing the `attention`
package registers the built-in ones.
"""
from nn.registry import Registry

ATTENTION_REGISTRY = Registry("attention type", "model.attention")
register_attention = ATTENTION_REGISTRY.register
get_attention = ATTENTION_REGISTRY.get
