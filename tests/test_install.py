"""The README's install: ``from detkit import Detector`` works from any folder, also from the one that
holds the clone (a ``detkit/`` folder without ``__init__.py`` on ``sys.path``)."""

import subprocess
import sys

import pytest

# True when setuptools' default editable finder (a meta path finder) serves detkit
_FINDERS = (
    "import sys; print(any(getattr(f, '__module__', '').startswith('__editable___detkit')"
    " for f in sys.meta_path))"
)


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_import_from_the_folder_that_holds_the_clone(tmp_path):
    # the clone's own folder: a directory named detkit, no __init__.py, first on sys.path
    (tmp_path / "detkit").mkdir()
    run = _python("from detkit import Detector; import detkit; print(detkit.__file__)", tmp_path)
    if run.returncode != 0 and _python(_FINDERS, tmp_path / "detkit").stdout.strip() == "True":
        # setuptools' default editable finder runs after the path finder, so the folder wins as a
        # namespace package: the install, not the code, is what this test checks
        pytest.skip(
            "detkit is installed with setuptools' default editable mode, which a folder named "
            "detkit in the working directory shadows; install it as the README says "
            "(pip install -e . --config-settings editable_mode=compat, see docs/install.md)"
        )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("__init__.py")
