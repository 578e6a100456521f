"""detkit's configs/mmdetection/ models must give mmdetection's own detections on real photos.

For five designs of mmdetection 3.x's Faster R-CNN zoo (pytorch-style R-50 FPN, caffe-style R-50
FPN, C4 and DC5, ResNeXt-101 32x4d FPN) mmdetection builds the model from its own config, with
seeded random weights made to behave like a trained network's (``mmdet_reference.randomize``); the
weights are saved as mmdetection saves them (``state_dict`` + ``meta``) and that ``.pth`` is given
directly to ``Detector.from_config`` (converted as it is read, ``checkpoint/mmdet_names.py``).
mmdetection's ``inference_detector`` gets each photo as a BGR array, detkit the same decoded
pixels in RGB, one image at a time. Criterion: >= 99% of mmdetection's detections have a detkit
detection with the same label, IoU >= 0.99 (or, for the zero-area boxes mmdetection keeps, where
IoU is undefined, every corner within 0.01 px) and |score difference| <= 1e-3.

What mmdetection does differently from torchvision and detectron2, each read in mmdet 3.3.0 /
mmcv 2.1.0 and a config key of detkit (configs/mmdetection/_base_/mmdetection.yaml):

- resize: cv2.resize INTER_LINEAR of the uint8 image (``model.resize_interpolation:
  cv2_bilinear``) to int(side * scale + 0.5) with one scale min(1333 / long, 800 / short)
  (``input.resize_rounding: scaled_round``; detectron2 rescales both sides again when capped);
  zero padding to 32 for every design, C4 and DC5 included (detectron2 does not pad those);
- normalisation (x - mean) / std in 0..255 units; pytorch style RGB with ImageNet std, caffe style
  BGR with std 1; pytorch style strides on the 3x3, caffe style on the first 1x1;
- anchors: ratio-major, unrounded, offset 0, sizes 8 x stride (FPN) or 2..32 x 16 (C4/DC5);
- RPN: sigmoid scores rank the per-level top-k (1000 FPN, 6000 C4/DC5), boxes without area are
  dropped (min_bbox_size 0: w > 0 and h > 0), NMS 0.7 per level, 1000 kept;
- box coder: centre (x1 + x2) * 0.5, deltas multiplied by the stds (0.1, 0.1, 0.2, 0.2) rather than
  divided by the weights, dw/dh clamped to +-log(1000/16) on both sides
  (``model.box_coder``); boxes clipped to the resized image before padding;
- mmcv's batched NMS separates classes (levels) by coordinate offsets below 10000 boxes and runs
  one NMS per class above (torchvision switches at 1000 boxes on the CPU):
  ``nms_offset_below: 10000``; the offsets round coordinates, which changes decisions at the
  threshold;
- RoI level floor(log2(sqrt(area) / 56 + 1e-6)) (canonical 56 at P2, eps inside the log),
  RoIAlign aligned with adaptive sampling; C4: 14x14 on res4, res5 as roi_head.shared_head and
  average pooling;
- detections: softmax over 81 logits with the background LAST and 4 deltas per foreground class
  (detkit's own layout: the converter renames, it reorders nothing), score > 0.05, no minimum box
  size (zero-area boxes are kept), class-wise NMS 0.5 on the boxes rescaled to the original image
  (detkit runs it before rescaling: IoU is the same up to rounding), top 100, no clipping to the
  original image.

Needs mmdet 3.x, mmengine and mmcv with its ops (``pip install`` as
../shared/reference/mmdetection/README.md says); skips visibly without them. A small test size
(shorter side 320) on both sides and, for C4 (res5 runs once per proposal), 300 proposals on both
sides keep it short.
"""

import gc

import cv2
import numpy as np
import pytest
import torch

from detkit.errors import CheckpointError
from detkit.evaluation import parity
from tests.helpers import ROOT, reference_data
from tests.modeling import mmdet_reference
from tests.modeling.helpers import assert_parity as shared_assert_parity

MIN_SIZE = 320
# design -> (mmdet config, detkit config, proposals kept after the RPN's NMS on both sides or None,
# class-logit std of the random predictor)
DESIGNS = {
    "R50-FPN": ("faster-rcnn_r50_fpn_1x_coco", None, 1.5),
    "R50-caffe-FPN": ("faster-rcnn_r50-caffe_fpn_1x_coco", None, 1.5),
    "R50-caffe-C4": ("faster-rcnn_r50-caffe_c4-1x_coco", 300, 1.5),
    "R50-caffe-DC5": ("faster-rcnn_r50-caffe-dc5_1x_coco", None, 1.0),
    "X101-32x4d-FPN": ("faster-rcnn_x101-32x4d_fpn_1x_coco", None, 1.5),
}
PHOTOS = [
    "faster_coco_eval/tests/dataset/img_1.jpg",  # 256x256: upscaled to 320
    "exif-orientation-examples/Landscape_1.jpg",  # 1800x1200: 480x320
]


def match_fraction(ref: dict, out: dict) -> float:
    # corner_tol: mmdetection keeps zero-area boxes (no minimum size), whose IoU is 0/0
    return parity.match_fraction(ref, out, corner_tol=0.01)


def calibration_photo(photos) -> np.ndarray:
    """Both photos side by side at the test size: norms calibrated on one photo only let the
    other's activations grow (X101 saturated every score on the upscaled img_1)."""
    return np.concatenate(
        [cv2.resize(photos[0], (320, 320)), cv2.resize(photos[1], (480, 320))], axis=1
    )


@pytest.fixture(scope="module")
def photos():
    return [cv2.imread(str(reference_data(p))) for p in PHOTOS]  # BGR, as mmdetection reads


@pytest.fixture(scope="module", params=list(DESIGNS))
def reference(request, photos, tmp_path_factory):
    """mmdetection's detections on each photo, and its weights as an mmdetection .pth."""
    mmdet_reference.import_mmdet()
    name, proposals, logit_std = DESIGNS[request.param]
    model = mmdet_reference.build(name, min_size=MIN_SIZE, rpn_proposals=proposals)
    mmdet_reference.randomize(model, calibration_photo(photos), logit_std)
    single = [mmdet_reference.detect(model, im) for im in photos]
    pth = mmdet_reference.save_pth(model, tmp_path_factory.mktemp("mmdet") / f"{name}.pth")
    del model
    gc.collect()
    overrides = [f"input.min_size_test={MIN_SIZE}"]
    if proposals:
        overrides.append(f"model.rpn.post_nms_topk_test={proposals}")
    yield {
        "name": name,
        "single": single,
        "pth": pth,
        "config": ROOT / "configs" / "mmdetection" / f"{name}.yaml",
        "overrides": overrides,
    }
    pth.unlink()


def assert_parity(refs, outs, what):
    shared_assert_parity(refs, outs, what, PHOTOS, "mmdetection", match_fraction, min_spread=0.05)


@pytest.mark.slow
def test_detections_equal_mmdetection(reference, photos):
    """The mmdetection .pth given as weights: mmdetection's detections, one image at a time."""
    from detkit import Detector

    det = Detector.from_config(
        str(reference["config"]), weights=str(reference["pth"]), overrides=reference["overrides"]
    )
    assert len(det.class_names) == 80 and det.class_names[:2] == ["person", "bicycle"]
    rgb = [np.ascontiguousarray(im[:, :, ::-1]) for im in photos]
    assert_parity(reference["single"], [det.predict([im])[0] for im in rgb], reference["name"])


@pytest.mark.slow
def test_a_file_given_to_another_design_names_the_config_it_fits(tmp_path):
    """mmdetection's C4 file given to the FPN config: the error names configs/mmdetection/'s C4
    configs (the file's source, mmdetection, puts that folder first)."""
    from detkit import Detector

    model = mmdet_reference.build(DESIGNS["R50-caffe-C4"][0], min_size=MIN_SIZE)
    path = mmdet_reference.save_pth(model, tmp_path / "c4.pth")
    del model
    with pytest.raises(CheckpointError) as err:
        Detector.from_config(
            str(ROOT / "configs/mmdetection/faster-rcnn_r50_fpn_1x_coco.yaml"), weights=str(path)
        )
    assert "the file fits configs/mmdetection/" in str(err.value)
    assert "configs/mmdetection/faster-rcnn_r50-caffe_c4-1x_coco.yaml" in str(err.value)


# ---------------------------------------------------------------------------------------------
# files: fp16 tensors, class names in 2.x meta, other mmdetection models (no mmdet needed)


def _fake_state(*extra: str) -> dict:
    state = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
    }
    state.update({k: torch.zeros(2) for k in extra})
    return state


@pytest.mark.parametrize(
    "keys, what",
    [
        (
            ["roi_head.bbox_head.fc_cls.weight", "roi_head.mask_head.conv_logits.weight"],
            "Mask R-CNN",
        ),
        (["roi_head.bbox_head.0.fc_cls.weight", "roi_head.bbox_head.1.fc_cls.weight"], "Cascade"),
        (["bbox_head.retina_cls.weight", "bbox_head.retina_reg.weight"], "RetinaNet"),
    ],
)
def test_other_mmdetection_models_are_named(tmp_path, keys, what):
    from detkit.checkpoint import load_checkpoint

    state = _fake_state(*keys)
    if what == "RetinaNet":
        state.pop("rpn_head.rpn_conv.weight")
    path = tmp_path / "other.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert what in message and str(path) in message
    assert "Faster R-CNN" in message and "configs/mmdetection/" in message


def test_half_tensors_and_2x_class_names(tmp_path):
    """The fp16 zoo file holds half tensors (read as float32); 2.x files keep the class names
    under meta.CLASSES."""
    from detkit.checkpoint import load_checkpoint

    state = {
        "backbone.conv1.weight": torch.randn(64, 3, 7, 7).half(),
        "neck.lateral_convs.0.conv.weight": torch.randn(256, 256, 1, 1).half(),
        "neck.fpn_convs.3.conv.bias": torch.randn(256).half(),
        "rpn_head.rpn_cls.weight": torch.randn(3, 256, 1, 1).half(),
        "roi_head.bbox_head.shared_fcs.1.weight": torch.randn(1024, 1024).half(),
        "roi_head.bbox_head.fc_cls.bias": torch.randn(3).half(),
        "roi_head.bbox_head.fc_reg.bias": torch.randn(8).half(),
        "backbone.bn1.num_batches_tracked": torch.tensor(5),
    }
    path = tmp_path / "fp16.pth"
    torch.save({"state_dict": state, "meta": {"CLASSES": ("cat", "dog")}}, path)
    ckpt = load_checkpoint(path)
    model = ckpt["model"]
    assert ckpt["class_names"] == ["cat", "dog"]
    assert ckpt["source"].startswith("mmdetection:")
    assert sorted(model) == sorted(
        [
            "backbone.conv1.weight",
            "neck.lateral_convs.0.weight",
            "neck.output_convs.3.bias",
            "rpn.head.objectness.weight",
            "roi_heads.box_head.fc7.weight",
            "roi_heads.predictor.cls_score.bias",
            "roi_heads.predictor.bbox_pred.bias",
        ]
    )
    assert all(v.dtype == torch.float32 for v in model.values())
    assert torch.equal(model["backbone.conv1.weight"], state["backbone.conv1.weight"].float())


# ---------------------------------------------------------------------------------------------
# the options the mmdetection configs set, each against what mmdetection/mmcv compute


def test_scaled_round_is_mmcv_rescale_size():
    """mmcv scales both sides by one factor and rounds half up; detectron2's ``round`` scales the
    capped sides a second time, which is a pixel off for some wide images (585x3354)."""
    from detkit.structures.resize import resize_size

    assert resize_size(585, 3354, 800, 1333, "scaled_round") == (233, 1333)
    assert resize_size(585, 3354, 800, 1333, "round") == (232, 1333)
    mmcv = pytest.importorskip("mmcv")
    for h, w in [(585, 3354), (256, 256), (1200, 1800), (480, 640), (333, 1001)]:
        new_w, new_h = mmcv.rescale_size((w, h), (1333, 800))
        assert resize_size(h, w, 800, 1333, "scaled_round") == (new_h, new_w)


def test_cv2_bilinear_is_opencv_on_the_uint8_image():
    from detkit.modeling.detector import cv2_resize

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = cv2_resize(torch.from_numpy(image.transpose(2, 0, 1).copy()), (20, 29))
    expected = cv2.resize(image, (29, 20), interpolation=cv2.INTER_LINEAR)
    assert out.dtype == torch.uint8 and torch.equal(
        out, torch.from_numpy(expected).permute(2, 0, 1)
    )


def test_box_coder_as_mmdetection_decodes():
    """delta * std, centre (x1 + x2) * 0.5, dw/dh clamped both ways: mmdet's delta2bbox to the bit
    (without mmdet: a box shrunk by exp(-10) stops at 1/62.5 of its reference)."""
    from detkit.structures import BoxCoder

    coder = BoxCoder(
        (10.0, 10.0, 5.0, 5.0),
        delta_scaling="multiply_reciprocal",
        center="midpoint",
        size_clamp="both",
    )
    g = torch.Generator().manual_seed(0)
    rois = torch.rand(50, 2, generator=g) * 300
    rois = torch.cat([rois, rois + torch.rand(50, 2, generator=g) * 200 + 1], dim=1)
    deltas = torch.randn(50, 8, generator=g) * 3
    deltas[0, 2:4] = -50.0
    boxes = coder.decode(deltas, rois)
    width = boxes[0, 2] - boxes[0, 0]
    assert torch.isclose(width, (rois[0, 2] - rois[0, 0]) / 62.5, rtol=1e-5)
    default = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, rois)  # no lower clamp
    assert default[0, 2] - default[0, 0] < width / 100
    try:
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
    except Exception:  # mmdet or mmcv's ops missing
        return
    ref = delta2bbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2), clip_border=False)
    assert torch.equal(boxes, ref)


def test_nms_offsets_below_a_box_count_as_mmcv():
    """offset_below=10000: one NMS over class-offset boxes up to 9999 boxes (mmcv's batched_nms),
    per-class NMS from 10000 on; the kept set is mmcv's."""
    from detkit.layers import batched_nms

    g = torch.Generator().manual_seed(0)
    for n in (50, 2000):
        xy = torch.rand(n, 2, generator=g) * 500
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100 + 1], dim=1)
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, 5, (n,), generator=g)
        keep = batched_nms(boxes, scores, labels, 0.5, 5, offset_below=10000)
        try:
            from mmcv.ops import batched_nms as mmcv_batched_nms
        except Exception:  # mmcv without its ops
            assert len(keep) > 0
            continue
        _, ref = mmcv_batched_nms(boxes, scores, labels, {"type": "nms", "iou_threshold": 0.5})
        assert torch.equal(keep, ref)
