"""Real image-text pairs from disk: a folder, or a JSONL / CSV list of (image path, caption).

Accepted inputs (`data.path`):
- a folder: every image file (.png .jpg .jpeg .bmp .gif .webp) with a caption in a
  .txt file of the same stem beside it (`cat.png` + `cat.txt`); an image
  without a caption file is an error naming it;
- a `.jsonl` file: one object per line with `"image"` and `"caption"`;
- a `.csv` file: a header with `image` and `caption` columns.
Relative image paths are relative to the list file's folder.

Images are decoded with Pillow, converted to RGB, resized to I x I (bicubic;
no crop, so the aspect ratio is not kept) and stored as uint8; the task
normalises them to [-1, 1] like the embedded shapes. All images are decoded
once when the data set is built, so a missing or corrupt image is counted,
reported (a warning with the count and the first few paths; the run logs
`eval/data_skipped_images`) and skipped before training starts, never halfway
through an epoch. An empty caption, a malformed line, or no usable image at
all is a one-line DataError naming the file and line.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os

import numpy as np

from nn.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
log = logging.getLogger("data.image_text")


@dataclasses.dataclass
class ImageTextSet:
    images: np.ndarray        # uint8 [N, I, I, 3]
    captions: list[str]
    skipped: list[tuple[str, str]]  # (path, reason) of every image that could not be used


def _caption(text, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty caption {text!r}; every image needs a non-empty caption")
    return " ".join(text.split())


def list_pairs(path: str) -> list[tuple[str, str]]:
    """(image path, caption) pairs named by a folder, .jsonl or .csv file; captions checked."""
    if not os.path.exists(path):
        raise DataError(f"data.path={path!r} does not exist")
    pairs = []
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS:
                continue
            txt = os.path.join(path, stem + ".txt")
            if not os.path.exists(txt):
                raise DataError(f"data.path={path!r}: image {name!r} has no caption file {stem + '.txt'!r}")
            with open(txt, encoding="utf-8", errors="replace") as f:
                pairs.append((os.path.join(path, name), _caption(f.read(), txt)))
        if not pairs:
            raise DataError(f"data.path={path!r} holds no image files ({', '.join(IMAGE_EXTS)})")
        return pairs
    base = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    image, text = rec["image"], rec["caption"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{path} line {n}: expected a JSON object with 'image' and 'caption'") from None
                pairs.append((os.path.join(base, image), _caption(text, f"{path} line {n}")))
        elif ext == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the CSV header must name 'image' and 'caption' columns, got {reader.fieldnames}")
            for n, row in enumerate(reader, 2):
                pairs.append((os.path.join(base, row["image"] or ""), _caption(row["caption"], f"{path} line {n}")))
        else:
            raise DataError(f"data.path={path!r} must be a folder, a .jsonl or a .csv file")
    if not pairs:
        raise DataError(f"data.path={path!r} lists no image-caption pairs")
    return pairs


def decode_image(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]; raises OSError/ValueError for a missing or undecodable file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: a truncated file fails here, not later
        rgb = im.convert("RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, np.uint8)


def load_image_text(path: str, image_size: int) -> ImageTextSet:
    pairs = list_pairs(path)
    images, captions, skipped = [], [], []
    for img_path, caption in pairs:
        try:
            images.append(decode_image(img_path, image_size))
            captions.append(caption)
        except FileNotFoundError:
            skipped.append((img_path, "missing"))
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt files
            skipped.append((img_path, f"corrupt: {type(e).__name__}"))
    if skipped:
        shown = "; ".join(f"{p} ({r})" for p, r in skipped[:3])
        log.warning("data.path=%s: skipped %d of %d images that could not be read: %s%s", path, len(skipped),
                    len(pairs), shown, " ..." if len(skipped) > 3 else "")
    if not images:
        raise DataError(f"data.path={path!r}: none of its {len(pairs)} images could be read "
                        f"(first: {skipped[0][0]}, {skipped[0][1]})")
    return ImageTextSet(np.stack(images), captions, skipped)


def split(ds: ImageTextSet, val_fraction: float, seed: int) -> tuple[ImageTextSet, ImageTextSet]:
    """A fixed shuffled split; both parts keep at least one pair."""
    n = len(ds.captions)
    if n < 2:
        raise DataError(f"the data set has {n} usable pair(s); need at least 2 (one for training, one for validation)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    pick = lambda idx: ImageTextSet(ds.images[idx], [ds.captions[i] for i in idx], [])  # noqa: E731
    return pick(order[n_val:]), pick(order[:n_val])
