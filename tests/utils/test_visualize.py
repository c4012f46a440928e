"""draw_instances: mask blend values, box outlines, labels, threshold, ordering, per-instance
colours; place_labels: labels inside the image and off each other."""

import numpy as np
import pytest
import torch

from idip.utils.visualize import draw_instances, instance_color, place_labels


def _prediction(score=0.9, label=1):
    masks = torch.zeros(1, 60, 80, dtype=torch.bool)
    masks[0, 30:50, 20:60] = True
    return {
        "boxes": torch.tensor([[20.0, 30.0, 59.0, 49.0]]),
        "scores": torch.tensor([score]),
        "labels": torch.tensor([label]),
        "masks": masks,
    }


def test_mask_blend_box_and_label():
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    out = np.asarray(draw_instances(image, _prediction(), ["a", "b"], alpha=0.5))
    assert out.shape == image.shape and out.dtype == np.uint8
    color = np.array(instance_color(0), dtype=np.float64)  # the only (so first) instance
    inside = out[40, 40].astype(np.float64)  # inside the mask, away from the outline
    np.testing.assert_allclose(inside, np.round(100 * 0.5 + color * 0.5), atol=1)
    assert (out[5, 75] == 100).all()  # far from everything: untouched
    assert (out[49, 40] == color).all()  # bottom outline of the box in its colour
    assert (out[40, 20] == color).all()  # left outline
    # the label sits above the box: its strip is painted (colour background + text)
    strip = out[18:30, 20:45]
    assert (strip != 100).any(axis=-1).mean() > 0.5


def test_threshold_hides_low_scores():
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    out = np.asarray(draw_instances(image, _prediction(score=0.3), None, score_threshold=0.5))
    assert (out == 100).all()


def test_zero_detections_and_bad_masks():
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 10, 12, dtype=torch.bool),
    }
    assert (np.asarray(draw_instances(image, empty)) == 0).all()
    with pytest.raises(ValueError, match="masks have size"):
        draw_instances(np.zeros((60, 70, 3), dtype=np.uint8), _prediction())


def test_higher_score_drawn_on_top():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    low, high = _prediction(0.6, label=0), _prediction(0.95, label=2)
    both = {k: torch.cat([low[k], high[k]]) for k in low}
    out = np.asarray(draw_instances(image, both, alpha=1.0))
    assert tuple(out[40, 40]) == instance_color(0)  # rank 0: the higher score


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_instance_colours_are_distinct_and_deterministic():
    colours = [instance_color(k) for k in range(12)]
    assert len(set(colours)) == 12
    assert colours == [instance_color(k) for k in range(12)]
    assert all(0 <= c <= 255 for colour in colours for c in colour)


def test_two_instances_of_one_class_get_different_colours():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    masks = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 35:55, 45:75] = True
    predictions = {
        "boxes": torch.tensor([[5.0, 5.0, 29.0, 19.0], [45.0, 35.0, 74.0, 54.0]]),
        "scores": torch.tensor([0.7, 0.9]),
        "labels": torch.tensor([1, 1]),
        "masks": masks,
    }
    out = np.asarray(draw_instances(image, predictions, ["a", "b"], alpha=1.0))
    # inside each mask, clear of outlines and labels: the instance's own colour, by score rank
    assert tuple(out[45, 60]) == instance_color(0)
    assert tuple(out[15, 15]) == instance_color(1)
    assert instance_color(0) != instance_color(1)


def test_label_at_the_right_and_bottom_edges_stays_inside():
    width, height = 80, 60
    boxes = np.array([[70.0, 52.0, 80.0, 60.0], [-5.0, -3.0, 10.0, 8.0]])
    # the first label is wider than its box and would run off the right edge
    rects = place_labels(boxes, [(50, 12), (30, 12)], (width, height))
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert rects[0][2] == width  # pushed left just enough
    assert not _overlap(*rects)


def test_labels_of_identical_boxes_do_not_overlap():
    box = [20.0, 30.0, 60.0, 50.0]
    rects = place_labels(np.array([box, box, box]), [(30, 12)] * 3, (80, 80))
    assert rects[0] == (20, 18, 50, 30)  # the first, best-scoring one above the box
    for a in range(3):
        for b in range(a + 1, 3):
            assert not _overlap(rects[a], rects[b]), rects


def test_labels_slide_past_others_and_overlap_only_without_room():
    # a box filling the image: above and below clamp onto inside, so the later labels slide down
    rects = place_labels(np.array([[0.0, 0.0, 40.0, 40.0]] * 3), [(20, 10)] * 3, (40, 40))
    assert [r[1] for r in rects] == [0, 30, 10]
    # no room at all (an image one label high): the label overlaps rather than leaving it
    rects = place_labels(np.array([[0.0, 0.0, 40.0, 10.0]] * 2), [(20, 10)] * 2, (40, 10))
    assert rects == [(0, 0, 20, 10), (0, 0, 20, 10)]


def test_drawn_labels_of_duplicates_are_both_legible():
    """Two identical boxes of different classes: one label above the box, the other just inside
    it, each on its instance's colour (text pixels aside)."""
    image = np.zeros((80, 100, 3), dtype=np.uint8)
    box = [30.0, 40.0, 90.0, 70.0]
    predictions = {
        "boxes": torch.tensor([box, box]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 1]),
    }
    out = np.asarray(draw_instances(image, predictions, ["cat", "dog"]))
    above, inside = out[30:40, 30:66], out[41:50, 31:66]  # "cat 0.90" is 37 x 10 with padding
    first, second = instance_color(0), instance_color(1)
    assert (above == first).all(axis=-1).mean() > 0.3 and not (above == second).all(-1).any()
    assert (inside == second).all(axis=-1).mean() > 0.3 and not (inside == first).all(-1).any()
