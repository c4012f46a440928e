"""The synthetic shapes dataset: determinism, annotation consistency, generation on first use."""

from __future__ import annotations

import json
import threading

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from idip.data import datasets, shapes
from idip.data.shapes import CLASS_NAMES, generate_split, shapes_paths

from .conftest import NUM_TRAIN


def _load(root: str, split: str):
    json_file, folder = shapes_paths(root, split)
    with open(json_file) as f:
        text = f.read()
    data = json.loads(text)
    pixels = [np.asarray(Image.open(f"{folder}/{im['file_name']}")) for im in data["images"]]
    return text, data, pixels


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_split(str(tmp_path / name), "val", 5, seed=seed, workers=1)
    text_a, _, pixels_a = _load(str(tmp_path / "a"), "val")
    text_b, _, pixels_b = _load(str(tmp_path / "b"), "val")
    text_c, _, pixels_c = _load(str(tmp_path / "c"), "val")
    assert text_a == text_b
    assert all(np.array_equal(p, q) for p, q in zip(pixels_a, pixels_b))
    assert text_a != text_c
    assert not any(p.shape == q.shape and np.array_equal(p, q) for p, q in zip(pixels_a, pixels_c))


def test_rendering_does_not_depend_on_the_process_split():
    # Image i is a function of (seed, split, i): rendering it alone gives the same result.
    image_alone, instances_alone = shapes.render_image(11, "train", 7)
    for index in range(5):
        shapes.render_image(11, "train", index)
    image_again, instances_again = shapes.render_image(11, "train", 7)
    assert np.array_equal(image_alone, image_again)
    assert len(instances_alone) == len(instances_again)


def test_annotations_are_consistent_with_their_masks(shapes_root):
    _, data, pixels = _load(shapes_root, "train")
    assert len(data["images"]) == NUM_TRAIN
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(
        CLASS_NAMES
    )
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    seen_classes = set()
    for image, array in zip(data["images"], pixels):
        assert 224 <= image["height"] <= 288 and 224 <= image["width"] <= 288
        assert array.shape == (image["height"], image["width"], 3)
        anns = by_image.get(image["id"], [])
        assert 1 <= len(anns) <= 8
        union = np.zeros((image["height"], image["width"]), dtype=np.int32)
        for ann in anns:
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            assert mask.shape == (image["height"], image["width"])
            assert ann["area"] == mask.sum() >= 20
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            union += mask
            seen_classes.add(ann["category_id"])
        assert union.max() <= 1, "visible masks of one image must not overlap"
    assert seen_classes == {1, 2, 3, 4}


def test_instances_of_one_image_have_distinct_colours(shapes_root):
    # Colours are per instance: two instances of one image rarely share a mean colour.
    image, instances = shapes.render_image(11, "train", 0)
    means = [image[mask].mean(axis=0) for _, mask in instances]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).max() > 3


def test_get_dataset_generates_shapes_once_under_a_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("IDIP_DATASETS", str(tmp_path))
    monkeypatch.setitem(shapes.DEFAULT_NUM_IMAGES, "val", 4)
    calls = []
    real_generate = shapes.generate_split

    def counting_generate(*args, **kwargs):
        calls.append(args)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(shapes, "generate_split", counting_generate)
    threads = [
        threading.Thread(target=shapes.ensure_shapes, args=(str(tmp_path), "val")) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    info = datasets.get_dataset("shapes_val")
    assert info.thing_classes == list(CLASS_NAMES)
    assert info.contiguous_to_category_id == [1, 2, 3, 4]
    assert info.json_file == str(tmp_path / "shapes" / "annotations" / "instances_val.json")
    assert len(calls) == 1
