"""draw_instances: mask blend values, box outlines, labels, threshold, ordering."""

import numpy as np
import pytest
import torch

from idip.utils.visualize import color_of, draw_instances


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
    color = np.array(color_of(1), dtype=np.float64)
    inside = out[40, 40].astype(np.float64)  # inside the mask, away from the outline
    np.testing.assert_allclose(inside, np.round(100 * 0.5 + color * 0.5), atol=1)
    assert (out[5, 75] == 100).all()  # far from everything: untouched
    assert (out[49, 40] == color).all()  # bottom outline of the box in the class colour
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
    assert tuple(out[40, 40]) == color_of(2)
