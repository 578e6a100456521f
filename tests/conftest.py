"""What every test folder shares: the reference test data, the tiny model configs, the GPU skip."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# reference files from other projects (see PROVENANCE.md there); not shipped with detkit
TESTDATA = Path(os.environ.get("DETKIT_TESTDATA", ROOT.parent / "shared" / "testdata"))


def reference_data(*parts: str) -> Path:
    """A file or folder under the reference test data; the calling test is skipped, visibly, when
    it is absent."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference test data, not shipped (set DETKIT_TESTDATA): {path} not found")
    return path


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The reference test data folder (skips the test when absent)."""
    return reference_data()


# Tiny models: ResNet-18 GN with a 32-channel FPN, or the C4 layout (res4 features, ROIPool, res5
# head), small enough that a forward pass on a 128 px image takes milliseconds on a CPU.
TINY_FPN = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.norm=GN",
    "model.backbone.freeze_at=0",
    "model.neck.out_channels=32",
    "model.roi_heads.box_head.fc_dim=64",
    "model.rpn.anchor_sizes=[[16],[32],[64],[128],[256]]",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=64",
    "input.min_size_test=128",
    "input.max_size_test=256",
]
TINY_C4 = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.norm=GN",
    "model.backbone.freeze_at=0",
    "model.backbone.out_features=[res4]",
    "model.neck.name=none",
    "model.rpn.in_features=[res4]",
    "model.rpn.anchor_sizes=[[16,32,64]]",
    "model.rpn.post_nms_topk_train=256",
    "model.rpn.post_nms_topk_test=300",
    "model.roi_heads.in_features=[res4]",
    "model.roi_heads.pooler.name=ROIPool",
    "model.roi_heads.pooler.output_size=14",
    "model.roi_heads.box_head.name=Res5Head",
    "model.roi_heads.batch_size_per_image=64",
    "input.min_size_test=128",
    "input.max_size_test=256",
]


def tiny_config(*overrides: str, base=TINY_FPN):
    """The tiny FPN (or ``base=TINY_C4``) config with ``overrides`` on top."""
    from detkit.config import load_config

    return load_config(None, list(base) + list(overrides))


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides, base=TINY_FPN)``: a tiny model config (see ``tiny_config``)."""
    return tiny_config


def error_lines(err: str) -> list:
    """The ERROR lines of a tool's stderr, after checking it printed no traceback."""
    assert "Traceback" not in err and "Caught" not in err, err[-3000:]
    return [line for line in err.splitlines() if "ERROR" in line]


@pytest.fixture
def detkit_log(caplog):
    """caplog that also sees the ``detkit`` logger (INFO and above) after a tool's setup_logging
    stopped its propagation."""
    import logging

    logger = logging.getLogger("detkit")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="detkit")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
def restore_detkit_logger():
    """A tool's main, train_main and evaluate_main attach handlers to the ``detkit`` logger (and
    stop its propagation); put it back so later tests' caplog still sees detkit's records."""
    import logging

    logger = logging.getLogger("detkit")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    # a session fixture that ran a tool (set up before this fixture) may have stopped propagation
    logger.propagate = True
    yield
    for h in logger.handlers:
        if h not in saved[0]:
            h.close()
    logger.handlers[:], logger.propagate, logger.level = saved


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker 'gpu'); none available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
