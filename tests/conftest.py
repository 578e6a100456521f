"""Fixtures every test folder shares: the reference test data, the tiny model configs, the logger
reset, the GPU skip (plain functions and constants are in tests/helpers.py)."""

import logging
from pathlib import Path

import pytest
import torch

from tests.helpers import reference_data, tiny_config


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The reference test data folder (skips the test when absent)."""
    return reference_data()


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides, base=TINY_FPN)``: a tiny model config (see ``tiny_config``)."""
    return tiny_config


class LogCapture(logging.Handler):
    """The records of the ``detkit`` logger during one test: ``records``, ``messages``, ``text``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list:
        return [r.getMessage() for r in self.records]

    @property
    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@pytest.fixture
def detkit_log():
    """What the ``detkit`` logger records (INFO and above) during the test, whatever a tool's
    setup_logging does to propagation: the handler sits on the ``detkit`` logger itself, not on the
    root logger that pytest's ``caplog`` listens to."""
    logger = logging.getLogger("detkit")
    capture = LogCapture()
    logger.addHandler(capture)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def restore_detkit_logger():
    """Every test starts with the ``detkit`` logger as logging creates it (no handlers, level NOTSET,
    propagating to the root, enabled) and leaves it so: code that configured it and did not put it
    back (``train_main``, ``evaluate_main`` or a tool's main in a module-scoped fixture) cannot hide
    a later test's records from ``caplog``."""
    logger = logging.getLogger("detkit")
    _reset(logger)
    yield
    _reset(logger)


def _reset(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if not isinstance(handler, LogCapture):
            handler.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    logger.disabled = False


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker 'gpu'); none available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
