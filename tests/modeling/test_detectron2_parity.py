"""detkit's configs/detectron2/ models must give detectron2's own detections on real photos.

For each design of detectron2's model zoo (C4, DC5, FPN, ResNeXt FPN) detectron2 builds the model
from its zoo config, with seeded random weights made to behave like a trained network (see
``randomize``); the weights are written in the zoo's .pkl format, converted by
tools/convert_weights.py, and run through ``Detector.predict`` on RGB photos, against
detectron2's ``DefaultPredictor`` on the same photos in BGR. Criterion, per image and over a batch:
>= 99% of detectron2's detections have a detkit detection with the same label, IoU >= 0.99 and
|score difference| <= 1e-3.

Needs ../shared/reference/detectron2 (set DETKIT_REFERENCE for another place) and detectron2's
extra packages (``pip install -e .[detectron2-ref]``); skips visibly without them. Small test size
(320) and, for C4 (res5 runs once per proposal), fewer proposals on both sides keep it short.
"""

import gc
import os
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.evaluation import parity
from tests.helpers import ROOT, TESTDATA, reference_data
from tests.modeling.helpers import assert_parity as shared_assert_parity
from tests.modeling.helpers import calibrating_norms, fill_scaled

sys.path.insert(0, str(ROOT / "tools"))

REFERENCE = Path(os.environ.get("DETKIT_REFERENCE", TESTDATA.parent / "reference"))
MIN_SIZE = 320
# (detectron2 zoo config, detkit config, proposals kept after NMS at test time on both sides,
# class-logit std of the random predictor: at 1.5 DC5 saturates scores near 1 on the upscaled photo)
DESIGNS = {
    "C4": ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "faster_rcnn_R_50_C4_1x.yaml", 200, 1.5),
    "DC5": (
        "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
        "faster_rcnn_R_50_DC5_1x.yaml",
        None,
        1.0,
    ),
    "FPN": (
        "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
        "faster_rcnn_R_50_FPN_1x.yaml",
        None,
        1.5,
    ),
    "X101": (
        "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
        "faster_rcnn_X_101_32x8d_FPN_3x.yaml",
        None,
        1.5,
    ),
}
PHOTOS = [
    "faster_coco_eval/tests/dataset/img_1.jpg",  # 256x256: upscaled
    "exif-orientation-examples/Landscape_1.jpg",  # 1800x1200: 480x320, FPN's P6 grid is odd
]


def import_detectron2():
    folder = REFERENCE / "detectron2"
    if not (folder / "detectron2").is_dir():
        pytest.skip(f"detectron2 reference not found at {folder} (set DETKIT_REFERENCE)")
    for extra in ("fvcore", "omegaconf"):
        pytest.importorskip(extra, reason="detectron2 needs it: pip install -e .[detectron2-ref]")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import detectron2.config
    import detectron2.engine.defaults
    import detectron2.modeling

    return detectron2


def d2_config(d2, zoo_config: str, post_nms_topk):
    cfg = d2.config.get_cfg()
    cfg.merge_from_file(str(REFERENCE / "detectron2" / "configs" / zoo_config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = MIN_SIZE
    if post_nms_topk:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_topk
    return cfg


@torch.no_grad()
def randomize(model, calibration_bgr, frozen_bn, logit_std: float, seed: int = 0) -> None:
    """Seeded weights that behave like a trained detector's, so detections are many and distinct.

    Random statistics would let activations grow ~2x per residual block (R101: overflow). Instead
    each frozen BN takes the mean and variance of the input it sees on a calibration photo (hooks
    fire in forward order, so each layer is calibrated after the ones before it): activations
    stay O(1). The last norm of each residual branch gets a small scale to damp the sum. The box
    predictor is scaled from the features it receives so class logits have std ~``logit_std``: scores
    spread over 0.05-0.6 instead of near-ties that any float difference would reorder.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, frozen_bn)]
    seen = {}
    predictor = model.roi_heads.box_predictor
    hooks = calibrating_norms(norms, "conv3.norm", g)
    hooks.append(
        predictor.register_forward_pre_hook(lambda _, i: seen.setdefault("x", i[0].flatten(1)))
    )
    image = torch.as_tensor(calibration_bgr.astype("float32").transpose(2, 0, 1))
    model.eval()
    model([{"image": image}])
    for h in hooks:
        h.remove()
    fill_scaled(predictor.cls_score, seen["x"], logit_std, g, bias_std=0.5)
    fill_scaled(predictor.bbox_pred, seen["x"], 1.0, g)


def save_zoo_pkl(model, path: Path) -> None:
    # "__author__" is what makes detectron2's checkpointer read the file as a zoo file (without it
    # the dict is taken for Caffe2 blobs)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "detkit parity test"}, f)


def d2_detections(instances) -> dict:
    return {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "labels": instances.pred_classes,
    }


def match_fraction(ref: dict, out: dict) -> float:
    """Fraction of detectron2's detections that a detkit detection matches under the parity
    criterion (``detkit.evaluation.parity``; same labels, no shift: both put background last)."""
    return parity.match_fraction(ref, out)


@pytest.fixture(scope="module")
def photos():
    return [cv2.imread(str(reference_data(p))) for p in PHOTOS]  # BGR, as detectron2 reads


@pytest.fixture(scope="module", params=list(DESIGNS))
def reference(request, photos, tmp_path_factory):
    """detectron2's detections (one image at a time and as one batch) and the converted file."""
    import convert_weights

    d2 = import_detectron2()
    from detectron2.layers import FrozenBatchNorm2d

    zoo_config, config, post_nms_topk, logit_std = DESIGNS[request.param]
    cfg = d2_config(d2, zoo_config, post_nms_topk)
    torch.manual_seed(0)
    model = d2.modeling.build_model(cfg)
    randomize(model, cv2.resize(photos[1], (480, 320)), FrozenBatchNorm2d, logit_std)
    folder = tmp_path_factory.mktemp(f"d2_{request.param}")
    pkl = folder / "model_final.pkl"
    save_zoo_pkl(model, pkl)
    del model
    cfg.MODEL.WEIGHTS = str(pkl)
    predictor = d2.engine.defaults.DefaultPredictor(cfg)
    with torch.no_grad():
        single = [d2_detections(predictor(im)["instances"]) for im in photos]
        inputs = [
            {
                "image": torch.as_tensor(
                    predictor.aug.get_transform(im).apply_image(im).astype("float32")
                ).permute(2, 0, 1),
                "height": im.shape[0],
                "width": im.shape[1],
            }
            for im in photos
        ]
        batch = [d2_detections(o["instances"]) for o in predictor.model(inputs)]
    del predictor
    gc.collect()
    overrides = [f"input.min_size_test={MIN_SIZE}"]
    if post_nms_topk:
        overrides.append(f"model.rpn.post_nms_topk_test={post_nms_topk}")
    converted = folder / "detkit.pth"
    config_path = ROOT / "configs" / "detectron2" / config
    argv = ["--from", "detectron2", "--config", str(config_path), str(pkl), str(converted)]
    assert convert_weights.main(argv + overrides) == 0
    yield {
        "single": single,
        "batch": batch,
        "pkl": pkl,
        "converted": converted,
        "config": config_path,
        "overrides": overrides,
    }
    pkl.unlink()  # DC5's file is 0.6 GB
    converted.unlink()


def assert_parity(refs, outs, what):
    shared_assert_parity(refs, outs, what, PHOTOS, "detectron2", match_fraction, min_spread=0.1)


@pytest.mark.slow
def test_detections_equal_detectron2(reference, photos):
    from detkit import Detector

    det = Detector.from_checkpoint(str(reference["converted"]))
    assert len(det.class_names) == 80 and det.class_names[0] == "person"
    rgb = [np.ascontiguousarray(im[:, :, ::-1]) for im in photos]
    assert_parity(reference["single"], [det.predict([im])[0] for im in rgb], "one image")
    # several images per call on the CPU run side by side (test.parallel_images), each alone:
    # detectron2's one-image detections, whatever the batch
    assert_parity(reference["single"], det.predict(rgb, batch_size=len(rgb)), "side by side")
    # one padded batch through the network: detectron2's batch
    batched = Detector(det.model, det.cfg.with_overrides(["test.parallel_images=1"]))
    assert_parity(reference["batch"], batched.predict(rgb, batch_size=len(rgb)), "batch")


@pytest.mark.slow
def test_zoo_pkl_loads_directly(reference, photos):
    """The .pkl itself works where a checkpoint is accepted, converted in memory, with COCO's names."""
    from detkit import Detector

    if reference["config"].name != DESIGNS["FPN"][1]:
        pytest.skip("one design suffices: the conversion in memory is the converter's")
    det = Detector.from_config(
        str(reference["config"]), weights=str(reference["pkl"]), overrides=reference["overrides"]
    )
    assert det.class_names[:2] == ["person", "bicycle"]
    rgb = np.ascontiguousarray(photos[0][:, :, ::-1])
    assert_parity(reference["single"][:1], det.predict([rgb]), "zoo .pkl given as weights")
