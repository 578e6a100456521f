"""Fixtures every test folder shares: the reference test data, the tiny model configs, the logger
reset, the GPU skip (plain functions and constants are in tests/helpers.py)."""

from pathlib import Path

import pytest
import torch

# Re-exported for test modules not yet moved to ``tests.helpers`` (the shared constants and
# functions live there now; conftest.py keeps the fixtures).
from tests.helpers import (  # noqa: F401
    ROOT,
    TESTDATA,
    TINY_C4,
    TINY_FPN,
    error_lines,
    reference_data,
    tiny_config,
)


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The reference test data folder (skips the test when absent)."""
    return reference_data()


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides, base=TINY_FPN)``: a tiny model config (see ``tiny_config``)."""
    return tiny_config


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
