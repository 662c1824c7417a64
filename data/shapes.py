"""Procedurally rendered captioned shapes: the embedded CLIP data set (no files needed).

Each image is I x I RGB (32 or 64) on a dark noisy background, with one object
("a small red circle at the top left") or two objects and a spatial relation
("a small red circle left of a large blue square"). An object is a shape x
colour x size at a (jittered) position; captions come from several templates,
some of which leave attributes out (the colour too, as real captions often
do), so the text tower also meets short phrases like the zero-shot prompts
("a red circle", "a circle").

Composition split: a fixed quarter of the (shape, colour) combinations never
appears in training, in either scene type (`HELD_OUT`; every shape and every
colour still appears in training with other partners). Validation holds
single-object images of held-out and of seen combinations, and two-object
scenes containing at least one held-out combination; zero-shot accuracy on the
held-out images therefore measures composition of attributes learned apart,
not memory of pairs. Everything is a pure function of (seed, split, index):
example i of a split is the same on every machine and every call.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from nn.errors import DataError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (0.90, 0.15, 0.15), "green": (0.15, 0.80, 0.20), "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.90, 0.15), "purple": (0.60, 0.20, 0.80), "orange": (0.98, 0.55, 0.10),
    "white": (0.95, 0.95, 0.95), "cyan": (0.15, 0.85, 0.90),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": 0.14, "large": 0.22}  # radius as a fraction of the image side
POSITIONS = {  # name -> centre (x, y), fractions of the side, y down
    "top left": (0.27, 0.27), "top": (0.5, 0.27), "top right": (0.73, 0.27),
    "left": (0.27, 0.5), "center": (0.5, 0.5), "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73), "bottom": (0.5, 0.73), "bottom right": (0.73, 0.73),
}
RELATIONS = ("left of", "right of", "above", "below")

# Held out: shape i with colours j where (j - i) % 4 == 0, i.e. 2 of 8 colours per shape (12 of 48).
HELD_OUT = frozenset((s, c) for i, s in enumerate(SHAPES) for j, c in enumerate(COLOUR_NAMES) if (j - i) % 4 == 0)
SEEN = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) not in HELD_OUT)
UNSEEN = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) in HELD_OUT)

SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} at the {pos}",
    "a {colour} {shape}, {size}, at the {pos}",
    "there is a {size} {colour} {shape} at the {pos}",
    "a {size} {colour} {shape}",
    "a {colour} {shape}",
    "a {colour} {shape} at the {pos}",
    "a {size} {shape} at the {pos}",
    "a {shape}",
)
PAIR_TEMPLATE = "a {size} {colour} {shape} {rel} a {size2} {colour2} {shape2}"

# Zero-shot heads: class names and prompt templates (averaged, CLIP sec. 3.1.4).
SHAPE_PROMPTS = ("a {}", "a picture of a {}", "there is a {}", "an image with a {}")
OBJECT_PROMPTS = ("a {}", "a picture of a {}", "there is a {}", "an image with a {}")
OBJECT_CLASSES = tuple(f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES)  # class id = shape * 8 + colour

SPLITS = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: int
    colour: int
    size: str
    x: float
    y: float


def _mask(shape: str, u: np.ndarray, v: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean coverage of one shape on the (supersampled) pixel-centre grid u, v in [0, 1]."""
    dx, dy = u - cx, v - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    if shape == "triangle":  # apex up, base at +0.8 r
        return (dy <= 0.8 * r) & (np.abs(dx) <= 0.62 * (dy + r))
    if shape == "cross":
        return ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(shape)


def render(objs: list[Obj], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]: 2x supersampled coverage, colour jitter, noisy background."""
    ss = 2 * size
    grid = (np.arange(ss) + 0.5) / ss
    u, v = np.meshgrid(grid, grid)  # u: x (columns), v: y (rows)
    img = np.empty((ss, ss, 3), np.float32)
    img[:] = rng.uniform(0.05, 0.25)
    for o in objs:
        m = _mask(SHAPES[o.shape], u, v, o.x, o.y, SIZES[o.size])
        rgb = np.clip(np.asarray(COLOURS[COLOUR_NAMES[o.colour]]) + rng.normal(0, 0.04, 3), 0, 1)
        img[m] = rgb
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def with_articles(text: str) -> str:
    """'a orange cross' -> 'an orange cross'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def prompts(head: str) -> list[str]:
    """Class-major zero-shot prompts of a head ('shape' or 'object'), see clip/zeroshot.py."""
    names, templates = (SHAPES, SHAPE_PROMPTS) if head == "shape" else (OBJECT_CLASSES, OBJECT_PROMPTS)
    return [with_articles(t.format(n)) for n in names for t in templates]


def _pick_combo(rng: np.random.Generator, pool: tuple) -> tuple[int, int]:
    s, c = pool[rng.integers(len(pool))]
    return SHAPES.index(s), COLOUR_NAMES.index(c)


def _single(rng, pool) -> tuple[list[Obj], str, str]:
    s, c = _pick_combo(rng, pool)
    size = ("small", "large")[rng.integers(2)]
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    x, y = POSITIONS[pos]
    j = 0.035
    obj = Obj(s, c, size, x + rng.uniform(-j, j), y + rng.uniform(-j, j))
    words = dict(size=size, colour=COLOUR_NAMES[c], shape=SHAPES[s], pos=pos)
    template = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))]
    return [obj], with_articles(template.format(**words)), with_articles(SINGLE_TEMPLATES[0].format(**words))


def _pair(rng, pool_a, pool_b) -> tuple[list[Obj], str, str]:
    (s1, c1), (s2, c2) = _pick_combo(rng, pool_a), _pick_combo(rng, pool_b)
    if rng.integers(2):  # the held-out object may be either one
        (s1, c1), (s2, c2) = (s2, c2), (s1, c1)
    z1, z2 = ("small", "large")[rng.integers(2)], ("small", "large")[rng.integers(2)]
    rel = RELATIONS[rng.integers(len(RELATIONS))]
    near, far = rng.uniform(0.24, 0.3), rng.uniform(0.7, 0.76)
    a, b = rng.uniform(0.3, 0.7, 2)  # the free coordinate of each object
    first, second = {"left of": ((near, a), (far, b)), "right of": ((far, a), (near, b)),
                     "above": ((a, near), (b, far)), "below": ((a, far), (b, near))}[rel]
    objs = [Obj(s1, c1, z1, *first), Obj(s2, c2, z2, *second)]
    caption = PAIR_TEMPLATE.format(size=z1, colour=COLOUR_NAMES[c1], shape=SHAPES[s1], rel=rel,
                                   size2=z2, colour2=COLOUR_NAMES[c2], shape2=SHAPES[s2])
    caption = with_articles(caption)
    return objs, caption, caption


@dataclasses.dataclass
class Examples:
    images: np.ndarray            # uint8 [N, I, I, 3]
    captions: list[str]           # the caption trained on (a random template)
    canonical: list[str]          # the full caption (first template): used for retrieval
    shape: np.ndarray             # int32 [N]: the object's shape (single-object scenes), else -1
    colour: np.ndarray            # int32 [N]
    held_out: np.ndarray          # bool [N]: the (single) object's combination is held out
    single: np.ndarray            # bool [N]


def _example(seed: int, split: str, index: int, image_size: int, pair_fraction: float, kind: str | None):
    """One example as a pure function of (seed, split, index). `kind` forces single-seen,
    single-unseen or pair-unseen (validation); None draws a training example from seen combos."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    if kind is None:
        objs, cap, canon = (_pair(rng, SEEN, SEEN) if rng.uniform() < pair_fraction else _single(rng, SEEN))
    elif kind == "single_seen":
        objs, cap, canon = _single(rng, SEEN)
    elif kind == "single_unseen":
        objs, cap, canon = _single(rng, UNSEEN)
    else:
        objs, cap, canon = _pair(rng, UNSEEN, SEEN + UNSEEN)
    img = render(objs, image_size, rng)
    single = len(objs) == 1
    o = objs[0]
    held = single and (SHAPES[o.shape], COLOUR_NAMES[o.colour]) in HELD_OUT
    return img, cap, canon, (o.shape if single else -1), (o.colour if single else -1), held, single


def _stack(items) -> Examples:
    imgs, caps, canon, shp, col, held, single = zip(*items)
    return Examples(np.stack(imgs), list(caps), list(canon), np.asarray(shp, np.int32), np.asarray(col, np.int32),
                    np.asarray(held, bool), np.asarray(single, bool))


def check_params(*, image_size: int, pair_fraction: float, num_val: int) -> None:
    if image_size not in (32, 64):
        raise DataError(f"vision.image_size={image_size} must be 32 or 64 for the embedded shapes data (data.path='')")
    if not 0.0 <= pair_fraction <= 1.0:
        raise DataError(f"data.pair_fraction={pair_fraction} must be in [0, 1]")
    if num_val < 3:
        raise DataError(f"data.num_val={num_val} must be at least 3 (seen, held-out and two-object scenes)")


def train_examples(seed: int, indices, image_size: int, pair_fraction: float) -> Examples:
    """Training examples by global index: an unbounded stream, never repeating, seen combinations only."""
    return _stack([_example(seed, "train", int(i), image_size, pair_fraction, None) for i in indices])


def val_examples(seed: int, num_val: int, image_size: int) -> Examples:
    """The fixed validation set: 3/8 single seen, 3/8 single held-out, 1/4 two-object with a held-out object."""
    n_single = (3 * num_val) // 8
    kinds = ["single_seen"] * n_single + ["single_unseen"] * n_single + ["pair_unseen"] * (num_val - 2 * n_single)
    return _stack([_example(seed, "val", i, image_size, 0.0, k) for i, k in enumerate(kinds)])
