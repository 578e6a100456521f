"""The Python API: Detector.from_config / from_checkpoint / predict, and weight conversion from the CLI."""

import sys

import numpy as np
import pytest
import torch
import torchvision

from detkit import Detector
from detkit.config import load_config
from detkit.errors import ConfigError
from detkit.modeling import build_model
from detkit.utils.io import atomic_save
from tests.helpers import CLASS_NAMES, ROOT, TINY_FPN, save_tiny_checkpoint, smooth_image

sys.path.insert(0, str(ROOT / "tools"))


def tiny_checkpoint(path, names=("cat", "dog", "bird")):
    cfg = load_config(
        None,
        TINY_FPN
        + [
            "model.roi_heads.score_thresh_test=0.0",
            "input.min_size_test=64",
            "input.max_size_test=128",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, class_names=list(names))
    atomic_save(
        {"model": model.state_dict(), "config": cfg.to_dict(), "class_names": list(names)},
        str(path),
    )
    return model, cfg


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    model, cfg = tiny_checkpoint(tmp_path / "m.pth")
    det = Detector.from_checkpoint(str(tmp_path / "m.pth"))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    out = det.predict([img])[0]
    ref = model.eval()([det.sample(img)])[0]
    assert det.class_names == ["cat", "dog", "bird"]
    assert len(out["boxes"]) > 0 and np.allclose(out["boxes"], ref["boxes"].numpy())
    assert out["names"] == [det.class_names[i] for i in out["labels"]]
    assert out["boxes"][:, [0, 2]].max() <= 120 and out["boxes"][:, [1, 3]].max() <= 90
    det2 = Detector.from_config(cfg, weights=str(tmp_path / "m.pth"))
    assert np.allclose(det2.predict([img])[0]["scores"], out["scores"])


def test_predict_accepts_paths_and_rejects_bad_arrays(tmp_path):
    import cv2

    tiny_checkpoint(tmp_path / "m.pth")
    det = Detector.from_checkpoint(str(tmp_path / "m.pth"))
    img = np.zeros((40, 50, 3), np.uint8)
    img[10:30, 10:40] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, :, ::-1])
    from_path, from_array = det.predict([str(tmp_path / "a.png"), img])
    assert np.allclose(from_path["scores"], from_array["scores"])
    with pytest.raises(ValueError, match="RGB uint8 HxWx3"):
        det.predict([np.zeros((40, 50), np.float32)])


def test_wrong_class_count_is_a_clear_error(tmp_path):
    tiny_checkpoint(tmp_path / "m.pth")
    with pytest.raises(ConfigError, match=r"model\.num_classes' \(command line\): 5, but .* 3 "):
        Detector.from_config(
            load_config(None, TINY_FPN + ["model.num_classes=5"]), weights=str(tmp_path / "m.pth")
        )


def test_convert_imagenet_resnet_cli(tmp_path):
    import convert_weights

    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    convert_weights.main(
        [
            "--from",
            "torchvision-imagenet",
            "--config",
            str(ROOT / "configs/frcnn_r50_fpn_coco.yaml"),
            str(tmp_path / "r18.pth"),
            str(tmp_path / "out.pth"),
            "model.backbone.depth=18",
            "model.num_classes=3",
        ]
    )
    det = Detector.from_checkpoint(str(tmp_path / "out.pth"))
    assert torch.equal(det.model.backbone.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    from detkit.errors import ConfigError

    tiny_checkpoint(tmp_path / "m.pth")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(
        ConfigError,
        match=r"^device='cuda' asks for CUDA, but this machine has no usable CUDA device",
    ):
        Detector.from_checkpoint(str(tmp_path / "m.pth"), device="cuda")
    assert Detector.from_checkpoint(str(tmp_path / "m.pth"), device="auto").device.type == "cpu"


def test_predict_with_per_class_score_thresholds(tmp_path):
    """score_thresh as a dict or a thresholds file keeps, per image, exactly the detections of the
    unthresholded call whose score reaches their class's threshold, in the same order."""
    from detkit.analysis.thresholds import write_thresholds

    every_box = [
        "model.roi_heads.score_thresh_test=0.0",
        "model.roi_heads.detections_per_image=1000",
        "input.min_size_test=64",
        "input.max_size_test=128",
    ]
    det = Detector.from_checkpoint(str(save_tiny_checkpoint(tmp_path / "m.pth", every_box)))
    assert det.class_names == CLASS_NAMES == ["cat", "dog", "car"]
    images = [smooth_image(90, 120, seed) for seed in range(2)]
    full = det.predict(images)
    scores = np.concatenate([r["scores"] for r in full])
    labels = np.concatenate([r["labels"] for r in full])
    assert set(labels.tolist()) == {0, 1, 2}  # the checks below mean something
    car = float(np.median(scores[labels == 2]))
    thresholds = {"cat": 0.0, "dog": 1.0, "car": car}
    path = write_thresholds(tmp_path / "thr.json", {"cat": 0.0, "dog": 1.0, "car": None}, {})
    for source, table in ((thresholds, [0.0, 1.0, car]), (path, [0.0, 1.0, 0.0])):
        for ref, out in zip(full, det.predict(images, score_thresh=source)):
            keep = ref["scores"] >= np.array(table)[ref["labels"]]
            assert 0 < keep.sum() < len(keep)
            assert np.array_equal(out["boxes"], ref["boxes"][keep])
            assert np.array_equal(out["scores"], ref["scores"][keep])
            assert np.array_equal(out["labels"], ref["labels"][keep])
            assert out["names"] == [det.class_names[i] for i in out["labels"]]
            assert 1 not in out["labels"] and (out["scores"][out["labels"] == 2] >= table[2]).all()
    (single,) = det.predict(images[:1], score_thresh=0.3)
    assert np.array_equal(single["scores"], full[0]["scores"][full[0]["scores"] >= 0.3])
    with pytest.raises(ConfigError, match=r"'cars' \(did you mean 'car'\?\)"):
        det.predict(images, score_thresh={"cars": 0.5})
