"""configs/mmdetection/: one config per Faster R-CNN of mmdetection's COCO zoo (metafile.yml of the
installed mmdet 3.3.0), each loading and building, its header naming the metafile's weights file and
box AP, and its settings checked against mmdet's own config of the same name (backbone, input
normalisation, multi-scale sizes, schedule, ImageNet file). Skipped, visibly, without mmdet."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import yaml

from detkit.checkpoint.mmdet_imagenet import OPEN_MMLAB_IMAGENET
from detkit.config import load_config
from detkit.modeling import build_model
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "mmdetection"
# 117266 COCO train2017 images with boxes (mmdet's filter_empty_gt) / 16 per batch, rounded up
ITERS_PER_EPOCH = 7330
# mmdet 3.3.0's config of this model normalises pytorch style, but its checkpoint was trained by
# mmdet 2.x with caffe style (the MSRA backbone's): detkit's config uses caffe style
CAFFE_DESPITE_MMDET_3 = {"faster-rcnn_r101-caffe_fpn_ms-3x_coco"}


@lru_cache(maxsize=None)
def _mmdet_folder() -> Path:
    mmdet = pytest.importorskip("mmdet", reason="mmdet 3.3.0 not installed (.ci/run installs it)")
    return Path(os.path.dirname(mmdet.__file__)) / ".mim" / "configs" / "faster_rcnn"


def _metafile():
    with open(_mmdet_folder() / "metafile.yml") as f:
        models = yaml.safe_load(f)["Models"]
    out = {}
    for m in models:
        (result,) = [r for r in m["Results"] if r["Task"] == "Object Detection"]
        out[Path(m["Config"]).stem] = (m["Weights"], result["Metrics"]["box AP"])
    return out


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def _zoo_configs():
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_every_metafile_model_has_a_config():
    zoo = _metafile()
    assert len(zoo) == 28
    missing = sorted(set(zoo) - set(_zoo_configs()))
    assert not missing, f"metafile models without a configs/mmdetection/ config: {missing}"
    extra = sorted(set(_zoo_configs()) - set(zoo))
    assert not extra, f"configs/mmdetection/ configs of no metafile model: {extra}"


@pytest.mark.parametrize("name", _zoo_configs())
def test_config_loads_and_builds(name):
    """No mmdet needed."""
    cfg = load_config(CONFIGS / f"{name}.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.roi_heads.predictor.cls_score.out_features == 81  # 80 classes + background


@pytest.mark.parametrize("name", _zoo_configs())
def test_config_names_its_checkpoint(name):
    path = CONFIGS / f"{name}.yaml"
    url, ap = _metafile()[name]
    header = _header(path)
    file = url.rsplit("/", 1)[1]
    assert f"# Weights: {file}" in header and url in header
    assert f"box AP {ap}" in header
    convert = (
        f"python tools/convert_weights.py --from mmdetection --config "
        f"configs/mmdetection/{name}.yaml {file} out.pth"
    )
    assert convert in header


def _resize_sizes(mm_cfg):
    """The shorter sides mmdet's training pipeline resizes to."""
    dataset = mm_cfg.train_dataloader.dataset
    dataset = dataset.get("dataset", dataset)  # RepeatDataset (3x)
    (resize,) = [s for s in dataset.pipeline if "Resize" in s["type"]]
    if resize["type"] == "RandomChoiceResize":
        return sorted(min(s) for s in resize["scales"])
    if resize["type"] == "RandomResize":
        lo, hi = sorted(min(s) for s in resize["scale"])
        return list(range(lo, hi + 1))
    return [min(resize["scale"])]


@pytest.mark.parametrize("name", _zoo_configs())
def test_config_matches_mmdets_own(name):
    """Backbone, normalisation, multi-scale sizes, schedule and ImageNet file as mmdet's config of
    the same name says (the one documented exception: CAFFE_DESPITE_MMDET_3)."""
    from mmengine.config import Config

    mm = Config.fromfile(str(_mmdet_folder() / f"{name}.py"))
    cfg = load_config(CONFIGS / f"{name}.yaml")
    header = _header(CONFIGS / f"{name}.yaml")
    backbone = mm.model.backbone
    assert cfg.model.backbone.depth == backbone.depth
    assert cfg.model.backbone.num_groups == backbone.get("groups", 1)
    assert cfg.model.backbone.width_per_group == backbone.get("base_width", 64)
    caffe = backbone.get("style", "pytorch") == "caffe"
    assert cfg.model.backbone.stride_in_1x1 == caffe
    pre = mm.model.data_preprocessor
    fmt, mean, std = ("RGB" if pre.bgr_to_rgb else "BGR"), pre.mean, pre.std
    if name in CAFFE_DESPITE_MMDET_3:
        assert (fmt, list(std)) == ("RGB", [58.395, 57.12, 57.375])  # mmdet 3.3.0's (the trap)
        fmt, mean, std = "BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]  # its checkpoint's
        assert "caffe style" in header and "mmdet 2.x" in header
    assert cfg.model.input_format == fmt
    assert cfg.model.pixel_mean == pytest.approx(mean) and cfg.model.pixel_std == pytest.approx(std)
    assert sorted(cfg.input.min_size_train) == _resize_sizes(mm)
    # schedule: mmdet's epochs (x the 3x configs' dataset repeats) at batch 16
    times = mm.train_dataloader.dataset.get("times", 1)
    (steps,) = [s for s in mm.param_scheduler if s["type"] == "MultiStepLR"]
    max_iter = mm.train_cfg.max_epochs * times * ITERS_PER_EPOCH
    milestones = [m * times * ITERS_PER_EPOCH for m in steps["milestones"]]
    if mm.train_cfg.max_epochs * times == 12:  # 1x: the bases keep 90k (60k, 80k) iterations
        assert cfg.solver.max_iter == pytest.approx(max_iter, rel=0.03)
        assert cfg.solver.steps == pytest.approx(milestones, rel=0.03)
    else:
        assert (cfg.solver.max_iter, cfg.solver.steps) == (max_iter, milestones)
    assert cfg.solver.warmup_iters == 500 and cfg.solver.ims_per_batch == 16
    optimizer = mm.optim_wrapper.optimizer
    assert cfg.solver.optimizer == optimizer.type and cfg.solver.base_lr == optimizer.lr
    assert cfg.solver.weight_decay == optimizer.weight_decay
    assert cfg.solver.amp == (mm.optim_wrapper.type == "AmpOptimWrapper")
    # the ImageNet file to train from (the parity configs name it where they do)
    if "Training from ImageNet" in header:
        imagenet = OPEN_MMLAB_IMAGENET[backbone.init_cfg.checkpoint]
        assert backbone.init_cfg.checkpoint in header
        assert f"model.backbone.weights={imagenet.file}" in header and imagenet.url in header


def test_iou_loss_configs_say_detkit_trains_them_with_its_own_box_loss():
    for loss in ("iou", "giou", "bounded-iou"):
        header = re.sub(
            r"\s*#\s*", " ", _header(CONFIGS / f"faster-rcnn_r50_fpn_{loss}_1x_coco.yaml")
        )
        assert "detkit has no IoU loss" in header and "smooth-L1 box loss" in header
