"""An mmdetection config trains: configs/mmdetection/ with its mmdetection options (OpenCV resize,
mmdetection's rounding, box coder, NMS offsets, RoI level rule, caffe-style BGR input) shrunk to the
engine tests' tiny model and synthetic data, a few CPU iterations from a random backbone, ending in
model_final.pth that loads into the config's model. No mmdet needed."""

from __future__ import annotations

from detkit.checkpoint import load_model_weights
from detkit.config import load_config
from detkit.engine.launch import train_main
from detkit.modeling import build_model
from tests.engine.helpers import REPO, load_weights, tiny_overrides

CONFIG = REPO / "configs" / "mmdetection" / "faster-rcnn_r50-caffe_fpn_ms-2x_coco.yaml"


def test_mmdetection_config_trains_a_few_iterations(data_root, tmp_path):
    shrink = tiny_overrides(
        data_root,
        [
            "model.backbone.depth=50",  # the tiny model's ResNet-18 has no stride_in_1x1
            "input.min_size_train=[56, 64]",  # multi-scale, as the config's 640..800
            "solver.max_iter=4",
            "solver.steps=[3]",
            "solver.checkpoint_period=100",
            "test.analyze=false",
        ],
    )
    cfg = load_config(CONFIG, shrink)
    # the mmdetection options survive the shrinking
    assert cfg.model.input_format == "BGR" and cfg.model.backbone.stride_in_1x1
    assert cfg.model.resize_interpolation == "cv2_bilinear"
    assert cfg.input.resize_rounding == "scaled_round"
    assert cfg.model.roi_heads.pooler.canonical_scale == 56
    assert cfg.model.backbone.weights == ""  # random init (GN, trainable)
    out = tmp_path / "run"
    metrics = train_main(cfg, str(out))
    assert metrics is not None
    final = out / "model_final.pth"
    assert final.is_file()
    model = build_model(load_config(CONFIG, shrink))
    load_model_weights(model, final, strict=True)
    state = load_weights(final)
    assert all(v.isfinite().all() for v in state.values() if v.is_floating_point())
