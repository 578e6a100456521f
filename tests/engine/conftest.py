"""The engine tests' fixtures (their helpers are in tests/engine/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.helpers import tiny_config


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """Generated once per session: 12 training and 6 validation images."""
    root = tmp_path_factory.mktemp("engine_data") / "synthetic"
    tiny_config(root)  # validates
    from detkit.data import build_dataset

    cfg = tiny_config(root)
    build_dataset(cfg, "train"), build_dataset(cfg, "val")
    return root


@pytest.fixture
def signal_config(data_root, tmp_path) -> Path:
    """The tiny config with two loader workers (a signal to the process group reaches them) and no
    analysis, for the preemption and world-size tests."""
    path = tmp_path / "tiny.yaml"
    tiny_config(data_root, ["test.analyze=false", "data.num_workers=2"]).dump(path)
    return path
