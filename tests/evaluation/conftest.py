"""Shared fixtures for the evaluation tests: the reference data in ../shared/testdata."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(
            f"reference test data not found at {TESTDATA} (see shared/testdata/PROVENANCE.md)"
        )
    return TESTDATA
