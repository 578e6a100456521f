"""Drawing: per-class colours, boxes on the right pixels, styles by image size, GT vs predictions; browse tool."""

import cv2
import numpy as np
import pytest
import torch

from detkit.visualization import (
    DrawStyle,
    class_color,
    draw_boxes,
    draw_detections,
    draw_ground_truth,
    draw_style,
)
from tests.helpers import load_tool

THIN = DrawStyle(thickness=1, font_scale=0.35, font_thickness=1)


def test_class_colors_are_deterministic_and_distinct():
    colors = [class_color(i) for i in range(20)]
    assert colors == [class_color(i) for i in range(20)]
    assert len(set(colors)) == 20
    assert all(0 <= c <= 255 and isinstance(c, int) for rgb in colors for c in rgb)
    for a, b in zip(colors, colors[1:]):  # neighbouring labels are clearly different
        assert sum(abs(x - y) for x, y in zip(a, b)) > 60


def test_box_outline_on_the_right_pixels():
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_boxes(image, [[10, 40, 50, 80]], [2], [0.9], ["a", "b", "c"], style=THIN)
    color = np.array(class_color(2), np.uint8)
    assert (out[60, 10] == color).all() and (out[60, 49] == color).all()  # left / right columns
    assert (out[79, 30] == color).all() and (out[40, 30] == color).all()  # bottom / top rows
    assert (
        (out[60, 30] == 0).all() and (out[60, 51] == 0).all() and (out[81, 30] == 0).all()
    )  # inside / outside
    assert (out[30:40, 10:40] != 0).any()  # the label sits above the box
    assert (image == 0).all()  # the input is not modified


def test_same_class_same_color_in_different_images():
    small = draw_boxes(np.zeros((60, 60, 3), np.uint8), [[5, 20, 40, 50]], [4], [0.5], style=THIN)
    large = draw_boxes(
        np.zeros((500, 700, 3), np.uint8), [[100, 200, 300, 400]], [4], [0.7], style=THIN
    )
    assert (small[35, 5] == large[300, 100]).all() and (small[35, 5] == class_color(4)).all()


def test_ground_truth_is_dashed_and_predictions_solid():
    image = np.zeros((120, 160, 3), np.uint8)
    gt = draw_ground_truth(
        image, torch.tensor([[20.0, 40.0, 140.0, 110.0]]), torch.tensor([0]), style=THIN
    )
    pred = draw_boxes(image, [[20, 40, 140, 110]], [0], [0.8], style=THIN)
    bottom_gt, bottom_pred = gt[109, 20:140].any(axis=1), pred[109, 20:140].any(axis=1)
    assert bottom_pred.all()
    assert 0.3 < bottom_gt.mean() < 0.8  # dashes: drawn and gaps


def test_style_grows_with_the_image():
    small, large = draw_style(240, 294), draw_style(3000, 4000)
    assert small.thickness == 1 and small.font_scale < 0.5
    assert large.thickness >= 5 and large.font_scale > 2 * small.font_scale
    label_h = cv2.getTextSize(
        "person 0.99", cv2.FONT_HERSHEY_SIMPLEX, large.font_scale, large.font_thickness
    )[0][1]
    assert label_h > 3000 / 100  # readable: more than 1% of the image height


def test_draw_detections_accepts_tensors_and_empty():
    image = np.zeros((50, 50, 3), np.uint8)
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    assert (draw_detections(image, empty) == 0).all()
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_boxes(image, [[0, 0, 1, 1], [0, 0, 2, 2]], [0])


def test_browse_dataset_renders_transformed_ground_truth(tmp_path):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(
        "model: {num_classes: 3}\n"
        "input: {min_size_train: [48], max_size_train: 96, hflip_prob: 0.5}\n"
        f"data:\n  root: {tmp_path / 'data'}\n"
        "  train:\n    datasets: [{name: SyntheticDataset, root: synth, split: train, num_images: 3, num_classes: 3,"
        " image_size: [64, 80], seed: 0}]\n"
    )
    tool = load_tool("browse_dataset")
    out = tmp_path / "browse"
    assert tool.main([str(cfg), "--output", str(out), "--num", "2"]) == 0
    files = sorted(out.glob("*.jpg"))
    assert len(files) == 2
    for f in files:
        img = cv2.imread(str(f))
        assert min(img.shape[:2]) == 48  # the training resize was applied
    assert (
        tool.main([str(cfg), "--output", str(tmp_path / "raw"), "--num", "1", "--no-transforms"])
        == 0
    )
    assert (
        64 <= min(cv2.imread(str(next((tmp_path / "raw").glob("*.jpg")))).shape[:2]) <= 80
    )  # as generated
