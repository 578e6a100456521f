"""Transforms: the inference resize (mapper scale + model preprocess) against torchvision, the training
mapper against hand-computed boxes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detkit.data.transforms import InferenceMapper, TrainMapper, resize_scale
from detkit.modeling import build_model
from tests.helpers import tiny_config

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _model(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    fmt = ",".join
    cfg = tiny_config(
        f"model.pixel_mean=[{fmt(map(str, mean))}]", f"model.pixel_std=[{fmt(map(str, std))}]"
    )
    return build_model(cfg).eval()


def _resize(image, min_size, max_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """What inference does to an image: the mapper's scale, then the model's preprocess (normalise,
    resize); the padding cropped off. With mean 0 and std 1 the result stays in 0..255."""
    h, w = image.shape[:2]
    sample = InferenceMapper(min_size, max_size)({"image_id": 0, "height": h, "width": w}, image)
    images = _model(tuple(mean), tuple(std)).preprocess([sample])
    rh, rw = images.image_sizes[0]
    return images.tensor[0, :, :rh, :rw], sample["scale"]


@pytest.mark.parametrize(
    "hw, min_size, max_size",
    [
        ((48, 64), 32, 1333),  # downscale
        ((30, 41), 80, 1333),  # upscale, odd sizes
        ((40, 200), 64, 128),  # the long side caps the scale
        ((333, 500), 800, 1333),  # a VOC-like image at the COCO setting
        ((101, 77), 100, 100),
    ],
)
def test_inference_resize_matches_torchvision(hw, min_size, max_size):
    image = _image(*hw)
    ours, scale = _resize(image, min_size, max_size)
    tv = GeneralizedRCNNTransform(
        min_size, max_size, image_mean=[0.0] * 3, image_std=[1.0] * 3
    ).eval()
    theirs, _ = tv.resize(torch.from_numpy(image).permute(2, 0, 1).float())
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert scale == min(min_size / min(hw), max_size / max(hw))
    assert ours.shape[1:] == (int(hw[0] * scale), int(hw[1] * scale))


def test_inference_preprocess_equals_torchvision_normalise_then_resize():
    image = _image(57, 83, seed=1)
    ours, _ = _resize(image, 96, 1333, MEAN, STD)  # the model normalises, then resizes
    tv = GeneralizedRCNNTransform(96, 1333, image_mean=MEAN, image_std=STD).eval()
    # torchvision's own pipeline (normalise, resize; batching pads at the end: crop it back)
    batch, _ = tv([torch.from_numpy(image).permute(2, 0, 1).float()])
    h, w = batch.image_sizes[0]
    assert torch.allclose(ours, batch.tensors[0, :, :h, :w], atol=1e-3)


def test_test_mapper_sample():
    sample = InferenceMapper(32, 64)({"image_id": 3, "height": 48, "width": 64}, _image(48, 64))
    # the original image travels with its scale; the model resizes (to 32x42 here)
    assert sample["image"].shape == (3, 48, 64) and sample["image"].dtype == torch.uint8
    assert sample["scale"] == pytest.approx(32 / 48) and (sample["height"], sample["width"]) == (
        48,
        64,
    )
    assert tuple(_resize(_image(48, 64), 32, 64)[0].shape[1:]) == (32, 42)
    assert "gt_boxes" not in sample


RECORD = {
    "image_id": 7,
    "height": 100,
    "width": 200,
    "boxes": np.array([[10, 20, 50, 60], [0, 0, 200, 100], [150, 80, 200, 100]], np.float32),
    "labels": np.array([3, 1, 2], np.int64),
    "difficult": np.array([False, True, False]),
}


def test_train_mapper_resize_and_flip_hand_computed():
    mapper = TrainMapper([50], 1000, hflip_prob=1.0, seed=0)
    sample = mapper(RECORD, _image(100, 200))
    # scale 0.5 -> 50x100 image; flip: x -> 100 - x; the difficult box is dropped
    assert sample["image"].shape == (3, 50, 100) and sample["image"].dtype == torch.uint8
    np.testing.assert_allclose(
        sample["gt_boxes"].numpy(), [[75, 10, 95, 30], [0, 40, 25, 50]], atol=1e-4
    )
    assert sample["gt_labels"].tolist() == [3, 2] and sample["gt_labels"].dtype == torch.int64
    assert (sample["height"], sample["width"], sample["image_id"]) == (100, 200, 7)


def test_train_mapper_max_size_cap_and_keep_difficult():
    mapper = TrainMapper([100], 150, hflip_prob=0.0, keep_difficult=True, seed=0)
    sample = mapper(RECORD, _image(100, 200))
    # scale = min(100 / 100, 150 / 200) = 0.75 -> 75x150
    assert sample["image"].shape == (3, 75, 150)
    np.testing.assert_allclose(
        sample["gt_boxes"].numpy(),
        [[7.5, 15, 37.5, 45], [0, 0, 150, 75], [112.5, 60, 150, 75]],
        atol=1e-4,
    )
    assert sample["gt_labels"].tolist() == [3, 1, 2]


def test_train_mapper_image_matches_flipped_pixels():
    image = _image(20, 40, seed=3)
    sample = TrainMapper([20], 1000, hflip_prob=1.0, seed=0)(
        RECORD | {"height": 20, "width": 40, "boxes": RECORD["boxes"] / 5}, image
    )
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), image[:, ::-1])


def test_train_mapper_empty_boxes_and_jitter():
    empty = RECORD | {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "difficult": np.zeros(0, bool),
    }
    sample = TrainMapper([64], 1000, color_jitter=1.0, seed=0)(empty, _image(100, 200))
    assert sample["gt_boxes"].shape == (0, 4) and sample["gt_labels"].shape == (0,)
    plain = TrainMapper([50], 1000, hflip_prob=0.0, seed=0)(RECORD, _image(100, 200))
    jittered = [
        TrainMapper([50], 1000, hflip_prob=0.0, color_jitter=1.0, seed=s)(RECORD, _image(100, 200))
        for s in range(4)
    ]
    assert any(not torch.equal(j["image"], plain["image"]) for j in jittered)
    for j in jittered:  # photometric jitter never moves boxes
        assert torch.equal(j["gt_boxes"], plain["gt_boxes"])


def test_train_mapper_random_sizes_are_seeded_and_follow_the_size_rule():
    def sizes(seed):
        mapper = TrainMapper([40, 60, 80], 1000, seed=seed)
        return [tuple(mapper(RECORD, _image(100, 200))["image"].shape[1:]) for _ in range(12)]

    assert sizes(0) == sizes(0)
    assert set(sizes(0)) <= {(40, 80), (60, 120), (80, 160)} and len(set(sizes(0))) > 1
    mapper = TrainMapper([64], 100, seed=0)
    h, w = mapper(RECORD | {"height": 37, "width": 91}, _image(37, 91))["image"].shape[1:]
    scale = resize_scale(37, 91, 64, 100)
    assert (h, w) == (int(37 * scale), int(91 * scale))
    assert (h, w) == tuple(_resize(_image(37, 91), 64, 100)[0].shape[1:])
