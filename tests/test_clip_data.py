"""Captioned shapes (determinism, held-out combinations, captions) and the image-text file loader
(folder, JSONL, CSV; missing and corrupt images counted and skipped; bad captions rejected)."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from data import image_text, shapes
from nn.errors import DataError


def test_shapes_are_deterministic_and_never_show_held_out_combinations_in_training():
    a = shapes.train_examples(7, range(40, 140), 32, 0.3)
    b = shapes.train_examples(7, range(40, 140), 32, 0.3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    c = shapes.train_examples(8, range(40, 140), 32, 0.3)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (100, 32, 32, 3) and a.images.dtype == np.uint8
    for cap in a.captions:
        for shape, colour in shapes.HELD_OUT:
            assert f"{colour} {shape}" not in cap, cap
    assert 10 < sum(" of " in c or "above" in c or "below" in c for c in a.captions) < 60  # ~30% pairs


def test_held_out_split_keeps_every_shape_and_colour_in_training():
    assert len(shapes.HELD_OUT) == 12 and len(shapes.SEEN) == 36
    assert {s for s, _ in shapes.SEEN} == set(shapes.SHAPES)
    assert {c for _, c in shapes.SEEN} == set(shapes.COLOUR_NAMES)


def test_validation_set_composition_and_labels():
    v = shapes.val_examples(0, 64, 32)
    assert v.single.sum() == 48 and (v.single & v.held_out).sum() == 24
    for i in np.flatnonzero(v.single):
        shape, colour = shapes.SHAPES[v.shape[i]], shapes.COLOUR_NAMES[v.colour[i]]
        assert f"{colour} {shape}" in v.canonical[i]
        assert ((shape, colour) in shapes.HELD_OUT) == v.held_out[i]
    for i in np.flatnonzero(~v.single):  # pair scenes hold a held-out object
        assert any(f"{c} {s}" in v.canonical[i] for s, c in shapes.HELD_OUT)
    assert "an orange" in " ".join(shapes.prompts("object")) and "a orange" not in " ".join(shapes.prompts("object"))


def test_a_shape_is_drawn_where_the_caption_says():
    ex = shapes.train_examples(0, range(200), 64, 0.0)
    for img, cap in zip(ex.images, ex.captions):
        if "at the top left" in cap:
            q = img.astype(float).sum(-1)
            assert q[:32, :32].max() > q[32:, 32:].max()
            return
    pytest.fail("no 'top left' caption among 200 examples")


def write_png(path, colour):
    Image.fromarray(np.full((10, 14, 3), colour, np.uint8)).save(path)


def test_folder_loader_decodes_resizes_and_skips_corrupt_images(tmp_path, caplog):
    write_png(tmp_path / "a.png", (255, 0, 0))
    (tmp_path / "a.txt").write_text("a red thing\n")
    write_png(tmp_path / "b.png", (0, 0, 255))
    (tmp_path / "b.txt").write_text("a blue  thing")
    (tmp_path / "c.png").write_bytes(b"not a png at all")
    (tmp_path / "c.txt").write_text("broken")
    (tmp_path / "notes.md").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        ds = image_text.load_image_text(str(tmp_path), 8)
    assert ds.images.shape == (2, 8, 8, 3) and ds.captions == ["a red thing", "a blue thing"]
    assert ds.images[0, 4, 4, 0] == 255 and ds.images[1, 4, 4, 2] == 255
    assert [r for _, r in ds.skipped] == ["corrupt: UnidentifiedImageError"]
    assert "skipped 1 of 3 images" in caplog.text


def test_jsonl_and_csv_lists_count_missing_images(tmp_path):
    (tmp_path / "img").mkdir()
    write_png(tmp_path / "img" / "x.png", (0, 255, 0))
    lines = [{"image": "img/x.png", "caption": "green"}, {"image": "img/gone.png", "caption": "missing"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = image_text.load_image_text(str(tmp_path / "pairs.jsonl"), 4)
    assert ds.captions == ["green"] and ds.skipped == [(str(tmp_path / "img" / "gone.png"), "missing")]
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/x.png,\"green, bright\"\n")
    ds = image_text.load_image_text(str(tmp_path / "pairs.csv"), 4)
    assert ds.captions == ["green, bright"] and not ds.skipped
    train, val = image_text.split(image_text.ImageTextSet(np.zeros((10, 4, 4, 3), np.uint8),
                                                          [str(i) for i in range(10)], []), 0.2, 0)
    assert len(train.captions) == 8 and len(val.captions) == 2
    assert not set(train.captions) & set(val.captions)


@pytest.mark.parametrize("name,content,match", [
    ("p.jsonl", '{"image": "x.png", "caption": ""}\n', r"p.jsonl line 1: empty caption"),
    ("p.jsonl", '{"image": "x.png"}\n', r"line 1: expected a JSON object with 'image' and 'caption'"),
    ("p.csv", "path,text\nx.png,hi\n", r"must name 'image' and 'caption'"),
    ("p.csv", "image,caption\nx.png,  \n", r"p.csv line 2: empty caption"),
    ("p.txt", "x", r"must be a folder, a .jsonl or a .csv"),
])
def test_bad_lists_are_one_line_data_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match) as e:
        image_text.load_image_text(str(tmp_path / name), 4)
    assert "\n" not in str(e.value)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_text.load_image_text(str(tmp_path / "nope"), 4)
    write_png(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match=r"image 'a.png' has no caption file 'a.txt'"):
        image_text.load_image_text(str(tmp_path), 4)
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DataError, match="empty caption"):
        image_text.load_image_text(str(tmp_path), 4)
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="none of its 1 images could be read"):
        image_text.load_image_text(str(tmp_path), 4)
