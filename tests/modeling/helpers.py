"""Tiny models and training samples for the model tests (plain functions; shared by
test_detector.py, test_precision.py and test_refine.py), and the seeded "trained-like" weights of
the detectron2 and mmdetection parity tests."""

import torch

from detkit.modeling import build_model
from tests.helpers import TINY_FPN, tiny_config


def tiny(overrides=(), base=TINY_FPN):
    """The tiny model (``base``: TINY_FPN or TINY_C4) with ``overrides``, seeded."""
    torch.manual_seed(0)
    return build_model(tiny_config(*overrides, base=base))


def sample(boxes=((20.0, 24.0, 60.0, 70.0),), labels=(1,), size=(96, 128), seed=0):
    """A training sample: a random uint8 image of ``size`` with ground-truth boxes and labels."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)
    return {
        "image": img,
        "height": size[0],
        "width": size[1],
        "image_id": seed,
        "gt_boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "gt_labels": torch.tensor(labels, dtype=torch.int64),
    }


@torch.no_grad()
def calibrating_norms(norms, damped_suffix: str, g: torch.Generator) -> list:
    """Seeded scale and shift for each BatchNorm-like module of ``norms`` ((name, module) pairs, in
    forward order; a small scale where the name ends with ``damped_suffix``: the last norm of a
    residual branch, which damps the sum), and forward pre-hooks that set each one's running mean
    and variance to those of its input. Random statistics would let activations grow ~2x per
    residual block; calibrated on one photo (hooks fire in forward order, so each layer sees the
    calibrated ones before it) they stay O(1). Returns the hook handles: run the model once on a
    calibration image, then remove them."""
    for name, m in norms:
        lo, hi = (0.2, 0.5) if name.endswith(damped_suffix) else (0.5, 1.5)
        m.weight.copy_(torch.rand(m.num_features, generator=g) * (hi - lo) + lo)
        m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp(min=1e-2) - module.eps)

    return [m.register_forward_pre_hook(calibrate) for _, m in norms]


@torch.no_grad()
def fill_scaled(layer, x: torch.Tensor, std: float, g: torch.Generator, bias_std: float = 0.0):
    """Seeded weights for ``layer`` (a linear layer or 1x1 convolution) whose outputs have std
    ~``std`` on inputs like ``x`` (fan-in ``x.shape[1]``); the bias N(0, ``bias_std``), or zero."""
    unit = 1.0 / (x.pow(2).mean().sqrt().item() * x.shape[1] ** 0.5)
    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std * unit)
    if bias_std:
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * bias_std)
    else:
        layer.bias.zero_()


def assert_parity(refs, outs, what: str, photos, source: str, match, min_spread: float) -> None:
    """detkit's detections ``outs`` match the reference's ``refs`` (one dict per photo, named by
    ``photos``) under ``match`` (the test's match fraction): at least 99% per photo and overall.
    The reference must detect more than 10 objects per photo with scores spread by more than
    ``min_spread``: a degenerate random model would make the comparison meaningless."""
    total = matched = 0.0
    for i, (ref, out) in enumerate(zip(refs, outs)):
        out = {k: torch.as_tensor(v) for k, v in out.items() if k != "names"}
        frac = match(ref, out)
        matched += frac * len(ref["boxes"])
        total += len(ref["boxes"])
        assert frac >= 0.99, f"{what}, photo {photos[i]}: {frac:.3f} of {source}'s matched"
        assert len(ref["boxes"]) > 10, f"{what}: the reference model should detect things"
        spread = (ref["scores"].max() - ref["scores"].min()).item()
        assert spread > min_spread, f"{what}, photo {photos[i]}: scores too alike ({spread:.3f})"
    assert matched / total >= 0.99
