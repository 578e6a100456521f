"""Atomic writes keep the old file on failure and name the file and the reason when they fail (the
loader's errors: tests/checkpoint/test_reader.py)."""

import errno
import json
import os
import re
import stat

import pytest
import torch

from detkit.checkpoint import load_checkpoint
from detkit.errors import DetkitError, WriteError
from detkit.utils.io import (
    atomic_open,
    atomic_save,
    atomic_write_text,
    ensure_output_dir,
    write_json,
)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"v": 1}, path)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary left behind


def test_interrupted_text_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json({"AP": 0.5}, path)  # creates the folder
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "w") as f:
            f.write('{"AP": 0.')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a config or metrics file next to the checkpoints stays readable."""
    umask = os.umask(0o022)
    try:
        path = atomic_write_text("x: 1\n", tmp_path / "config.yaml")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "x: 1\n"


def test_write_errors_name_the_path_and_the_reason(tmp_path, monkeypatch):
    """One line a user can act on: the file meant (not the temporary name) and the system's
    reason; still an OSError with its errno; nothing left behind."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=re.escape(f"{blocker / 'run'}: Not a directory")):
        ensure_output_dir(blocker / "run")
    with pytest.raises(WriteError) as info:
        write_json({"AP": 1.0}, blocker / "run" / "metrics.json")
    assert str(info.value) == f"cannot write {blocker / 'run' / 'metrics.json'}: Not a directory"
    assert info.value.errno == errno.ENOTDIR and isinstance(info.value, DetkitError)
    assert ensure_output_dir(tmp_path / "new" / "run").is_dir()
    assert not list((tmp_path / "new" / "run").iterdir())  # the write probe is removed

    path = write_json({"AP": 0.5}, tmp_path / "metrics.json")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError) as info:
        write_json({"AP": 0.7}, path)
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "metrics.json", "new"]


def test_json_indent_by_kind(tmp_path):
    assert "\n" in write_json({"a": 1}, tmp_path / "d.json").read_text()
    assert "\n" not in write_json([{"a": 1}, {"a": 2}], tmp_path / "l.json").read_text()
