"""What a model's layer variants declare besides their forward pass.

An attention or FFN class (registered in `attention.registry` or
`models.ffn`) may declare, as static methods:

- `validate_config(cfg)`: raise ValueError naming its first bad field;
- `validate_mesh(cfg, mesh_shape)`: raise ValueError when the mesh cannot
  hold it (e.g. experts that do not divide over the `expert` axis);
- `seq_len_note(cfg, seq_len)`: a one-line warning (or None) about a setting
  that is valid but probably not what the user meant at that length (a
  Longformer window covering the whole sequence);
- `init_stats(cfg)` and `update_stats(stats, metrics, cfg)`: arrays carried
  in the train state from step to step, for metrics that need history (the
  MoE layer's expert-load window behind its dead-expert count). Updated
  inside the jitted step from that step's metrics; returns (new stats,
  extra metrics).

The task and the train loop go through these functions and never name a
variant.
"""
from __future__ import annotations

from typing import Mapping

from attention.registry import get_attention
from models.ffn import get_ffn
from models.lm import ffn_for_layer


def layer_classes(cfg) -> dict[tuple[str, str], type]:
    """{(kind, name): class} of every layer variant the model config uses."""
    out = {("attention", cfg.attention): get_attention(cfg.attention)}
    for name in sorted({ffn_for_layer(cfg, i) for i in range(int(cfg.n_layers))}):
        out[("ffn", name)] = get_ffn(name)
    return out


def validate_mesh(cfg, mesh_shape: Mapping[str, int]) -> None:
    """Each variant's own mesh check (ValueError with a one-line message)."""
    for cls in layer_classes(cfg).values():
        check = getattr(cls, "validate_mesh", None)
        if check is not None:
            check(cfg, dict(mesh_shape))


def seq_len_notes(cfg, seq_len: int) -> list[str]:
    """Each variant's warnings about this sequence length (logged, not raised)."""
    notes = []
    for cls in layer_classes(cfg).values():
        note = getattr(cls, "seq_len_note", None)
        text = note(cfg, int(seq_len)) if note is not None else None
        if text:
            notes.append(text)
    return notes


def init_stats(cfg) -> dict:
    """{kind: {name: stats}} for the variants that carry statistics; empty when none does."""
    out: dict = {}
    for (kind, name), cls in layer_classes(cfg).items():
        init = getattr(cls, "init_stats", None)
        stats = init(cfg) if init is not None else None
        if stats:
            out.setdefault(kind, {})[name] = stats
    return out


def update_stats(stats: dict, metrics: Mapping, cfg) -> tuple[dict, dict]:
    """(new stats, extra metrics) from one step's metrics; called inside the jitted step."""
    classes = layer_classes(cfg)
    new: dict = {}
    extra: dict = {}
    for kind, by_name in stats.items():
        for name, s in by_name.items():
            s, e = classes[(kind, name)].update_stats(s, metrics, cfg)
            new.setdefault(kind, {})[name] = s
            extra.update(e)
    return new, extra
