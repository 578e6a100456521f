import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("DETKIT_TESTDATA", ROOT.parent / "shared" / "testdata"))


def reference_file(*parts) -> Path:
    """A file under ../shared/testdata, or a visible skip when the reference data is absent."""
    p = TESTDATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(
            f"reference test data not found: {p} (expected ../shared/testdata beside the project)"
        )
    return p


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker 'gpu'); none available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
