"""optimize_for_inference: folded norms and channels_last give the plain model's detections up to
float rounding (tiny FPN/C4/v2-style models with random BN statistics, R50-FPN on photos), in a
copy that leaves the model it was given as it was."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detkit.config import load_config
from detkit.errors import ConfigError
from detkit.inference.predictor import build_predictor, optimize_for_inference
from detkit.modeling import build_model
from detkit.modeling.backbones.norm import FrozenBatchNorm2d, fixed_affine, fuse_frozen_bn
from tests.helpers import ROOT, TINY_C4, TINY_FPN, tiny_config
from tests.modeling import torchvision_reference as parity

# BN in the FPN and a conv head with BN after each conv: where the norms sit in ModuleLists
TINY_V2 = [
    "model.neck.norm=BN",
    "model.roi_heads.box_head.name=ConvFCHead",
    "model.roi_heads.box_head.conv_dims=[32,32]",
    "model.roi_heads.box_head.fc_dims=[64]",
    "model.roi_heads.box_head.norm=BN",
]
SHIPPED_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base_" not in p.parts)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics and affine parameters far from identity, as pretrained norms have: folding them
    is then not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def tiny_model(base, *overrides):
    cfg = tiny_config(
        "model.backbone.norm=FrozenBN",
        "model.roi_heads.score_thresh_test=0.0",
        *overrides,
        base=base,
    )
    torch.manual_seed(0)
    return randomise_norms(build_model(cfg)).eval(), cfg


def photo_sample(h=128, w=160):
    """A smooth image with a few rectangles: structure for the RPN to rank, not noise."""
    g = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)]).float()
    for _ in range(4):
        x0, y0 = (
            int(torch.randint(0, w - 40, (1,), generator=g)),
            int(torch.randint(0, h - 40, (1,), generator=g)),
        )
        img[:, y0 : y0 + 30, x0 : x0 + 36] = torch.rand(3, 1, 1, generator=g) * 255
    return {"image": img.round().to(torch.uint8), "height": h, "width": w}


def unmatched(ref, out, size):
    """Reference detections without a detection of the same label, box within 1e-3 of the image
    size and score within 1e-4 -- leaving out the ones within 1e-4 of the lowest kept score: at the
    detections_per_image cut, rounding may swap the last detection with the first one dropped."""
    box_close = (ref["boxes"][:, None] - out["boxes"][None]).abs().amax(-1) <= 1e-3 * size
    score_close = (ref["scores"][:, None] - out["scores"][None]).abs() <= 1e-4
    same_label = ref["labels"][:, None] == out["labels"][None]
    matched = (box_close & score_close & same_label).any(1)
    return int((~matched & (ref["scores"] > ref["scores"].min() + 1e-4)).sum())


def assert_same_detections(ref, out, size):
    assert len(ref["boxes"]) > 20, "the model should give detections to compare"
    assert len(out["boxes"]) == len(ref["boxes"])
    assert unmatched(ref, out, size) == 0 and unmatched(out, ref, size) == 0


@pytest.mark.parametrize(
    "name,base,extra",
    [
        ("fpn", TINY_FPN, []),
        ("c4", TINY_C4, ["model.rpn.post_nms_topk_test=100"]),
        ("v2", TINY_FPN, TINY_V2),
    ],
)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_optimized_model_gives_the_plain_models_detections(name, base, extra, memory_format):
    model, cfg = tiny_model(base, *extra, f"test.memory_format={memory_format}")
    sample = photo_sample()
    with torch.no_grad():
        ref = model([sample])[0]
        ref_features = model.extract_features(model.preprocess([sample]))
    fast = optimize_for_inference(model, cfg)
    assert fast is not model  # a copy: the model given stays as it was
    assert any(fixed_affine(m) for m in model.modules())
    assert not any(fixed_affine(m) for m in fast.modules())  # every norm folded
    conv = fast.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == (
        memory_format == "channels_last"
    )
    with torch.no_grad():
        out = build_predictor(fast, cfg)([sample])[0]
        features = fast.extract_features(fast.preprocess([sample]))
    for k, f in ref_features.items():
        assert (features[k] - f).abs().max() <= 1e-5 * f.abs().max(), k
    assert_same_detections(ref, out, max(sample["height"], sample["width"]))


def test_groupnorm_model_has_nothing_to_fold_and_keeps_its_detections():
    """The quick-start design (GroupNorm): folding is a no-op, channels_last only changes the layout."""
    cfg = tiny_config("model.roi_heads.score_thresh_test=0.0", "test.memory_format=channels_last")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    before = copy.deepcopy(model.state_dict())
    sample = photo_sample()
    with torch.no_grad():
        ref = model([sample])[0]
        fast = optimize_for_inference(model, cfg)
        out = fast([sample])[0]
    assert fast.state_dict().keys() == before.keys()
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in before.items())
    assert_same_detections(ref, out, 160)


def test_folding_a_conv_with_bias_and_groups_into_eval_bn():
    """w' = w * scale, b' = b * scale + shift, per output channel (grouped conv: ResNeXt); BN in
    training mode normalises by the batch and is left alone."""
    torch.manual_seed(0)
    block = randomise_norms(
        nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, bias=True), nn.BatchNorm2d(6))
    )
    x = torch.randn(2, 4, 9, 9)
    assert fuse_frozen_bn(block) == 0  # training mode
    block.eval()
    with torch.no_grad():
        ref = block(x)
        assert fuse_frozen_bn(block) == 1 and isinstance(block[1], nn.Identity)
        assert torch.allclose(block(x), ref, rtol=1e-5, atol=1e-5)


def test_fuse_bn_false_and_contiguous_leave_the_model_as_it_was():
    model, cfg = tiny_model(TINY_C4, "test.fuse_bn=false", "test.memory_format=contiguous")
    before = copy.deepcopy(model.state_dict())
    after = optimize_for_inference(model, cfg).state_dict()
    assert after.keys() == before.keys() and all(
        torch.equal(after[k], v) for k, v in before.items()
    )
    assert all(v.is_contiguous() for v in after.values())


def test_auto_is_channels_last_on_the_cpu():
    model, cfg = tiny_model(TINY_FPN)
    assert cfg.test.memory_format == "auto"
    model = optimize_for_inference(model, cfg)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.backbone.conv1.weight.is_contiguous()


def test_bf16_runs_on_the_folded_channels_last_model():
    """test.precision=bf16 still goes through autocast on the optimized model: bf16 convolutions in
    channels_last, float32 boxes, the fp32 model's top detections (bf16 rounds more than float)."""
    model, cfg = tiny_model(TINY_FPN, "test.precision=bf16")
    sample = photo_sample()
    with torch.no_grad():
        ref = model([sample])[0]
    model = optimize_for_inference(model, cfg)
    seen = {}

    def record(module, inputs, output):  # returns None: the output is not replaced
        seen["res2"] = (output.dtype, output.is_contiguous(memory_format=torch.channels_last))

    model.backbone.layer1.register_forward_hook(record)
    with torch.no_grad():
        out = build_predictor(model, cfg)([sample])[0]
    assert seen["res2"] == (torch.bfloat16, True)
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    top = ref["scores"].argsort(descending=True)[:5]
    iou = box_iou(ref["boxes"][top], out["boxes"])
    assert (iou.max(1).values > 0.9).all(), iou.max(1).values


def test_bad_memory_format_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"test.memory_format.*auto \| contiguous \| channels_last, got 'nhwc'"
    ):
        tiny_model(TINY_FPN, "test.memory_format=nhwc")  # refused at load


def test_a_model_in_training_mode_is_put_in_eval_mode_and_its_bn_folded():
    """BN folds with its running statistics (what eval mode uses), never with batch statistics;
    the model given keeps its mode."""
    model, cfg = tiny_model(TINY_FPN, *TINY_V2)
    trained = model.train()
    model = optimize_for_inference(trained, cfg)
    assert (
        trained.training
        and not model.training
        and not any(fixed_affine(m) for m in model.modules())
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs"))
)
def test_every_fixed_norm_of_every_shipped_config_is_folded(path):
    """R50/R101 FPN and C4 (res5 box head), DC5, X101, torchvision v2 (BN in the FPN and the box
    head): no frozen or eval-mode BN survives; GroupNorm (the quick start) is left alone."""
    with torch.device("meta"):  # the structure only: no weights are allocated
        model = build_model(load_config(path)).eval()
    group_norms = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    fixed = sum(fixed_affine(m) is not None for m in model.modules())
    assert fuse_frozen_bn(model) == fixed
    assert not any(fixed_affine(m) is not None for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == group_norms


def optimized_detector(tv, folder):
    """torchvision's weights converted (tools/convert_weights.py), in a Detector whose predictor
    runs the copy optimize_for_inference makes (test.* defaults: BN folded, channels_last on the
    CPU), and that copy."""
    from detkit import Detector

    det = Detector.from_checkpoint(str(parity.convert(tv, folder)))
    fast = optimize_for_inference(det.model, det.cfg)
    assert fuse_frozen_bn(copy.deepcopy(fast)) == 0  # all 53 frozen BN already folded
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    return det, fast


@pytest.mark.slow
def test_optimized_r50_fpn_matches_torchvision_on_photos(tmp_path):
    """The parity photos through the optimized model, against plain torchvision, with the parity
    test's calibrated model (each frozen BN's statistics from its input, as a trained network's):
    >= 99% of torchvision's detections matched."""
    photos = [parity.as_torchvision_input(parity.read_rgb(p)) for p in parity.photo_paths()]
    tv = parity.make_torchvision_model(calibrate_on=photos)
    fraction = parity.torchvision_match(tv, optimized_detector(tv, tmp_path)[0])
    assert fraction >= 0.99, f"only {fraction:.3f} of torchvision's detections matched"


@pytest.mark.slow
def test_optimized_r50_fpn_differs_from_torchvision_by_rounding_only(tmp_path):
    """The parity test's uncalibrated model: its random BN statistics grow activations to ~1e3 and
    about half of its detections are thinner than 8 px (some 0.1 px), where IoU >= 0.99 asks for
    PyTorch's exact float rounding -- torchvision itself with channels_last or its BN folded keeps
    ~82% of them. Here: the FPN features equal plain torchvision's up to float rounding, and every
    detection at least 8 px on each side is matched, by IoU >= 0.99 or, for a long thin box where
    a sub-pixel rounding shift costs more IoU than that (an 1800 x 10 px box moved 0.08 px:
    IoU 0.985, same label and score), by corners within 0.1 px."""
    tv = parity.make_torchvision_model()
    det, fast = optimized_detector(tv, tmp_path)
    for path in parity.photo_paths():
        img = parity.read_rgb(path)
        x = parity.as_torchvision_input(img)
        with torch.no_grad():
            ref = tv([x])[0]
            tv_features = tv.backbone(tv.transform([x])[0].tensors)
            features = fast.extract_features(fast.preprocess([det.sample(img)]))
        for level, key in zip(("0", "1", "2", "3", "pool"), ("p2", "p3", "p4", "p5", "p6")):
            f, ref_f = features[key], tv_features[level]
            assert f.shape == ref_f.shape
            assert (f - ref_f).abs().max() <= 3e-5 * ref_f.abs().max(), (path.name, key)
        sides = ref["boxes"][:, 2:] - ref["boxes"][:, :2]
        thick = {k: v[sides.min(1).values >= 8] for k, v in ref.items()}
        assert len(thick["boxes"]) > 10, "the reference model should produce detections to compare"
        fraction = parity.match_fraction(thick, det.predict([img])[0], corner_tol=0.1)
        assert fraction >= 0.99, f"{path.name}: only {fraction:.3f} matched"
