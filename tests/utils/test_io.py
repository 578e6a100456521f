"""The one I/O layer: atomic writes keep the old file on failure, and every loader error names the
file (a missing, a truncated and a non-checkpoint file), through the API and the engine's resume."""

import errno
import json
import os
import re
import stat

import pytest
import torch
from torch import nn

from detkit.api import Detector
from detkit.config import load_config
from detkit.engine.checkpoint import Checkpointer
from detkit.errors import CheckpointError, DetkitError, WriteError
from detkit.utils.io import (
    atomic_open,
    atomic_save,
    atomic_write_text,
    ensure_output_dir,
    load_checkpoint,
    load_model_weights,
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


def _truncated(tmp_path):
    path = tmp_path / "truncated.pth"
    atomic_save({"model": {"w": torch.ones(1000)}, "config": {}}, path)
    with open(path, "r+b") as f:
        f.truncate(300)
    return path


def _not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    return path


def test_loader_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint not found: {missing}")):
        load_checkpoint(missing)
    truncated = _truncated(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"cannot read checkpoint {truncated}")
    ) as e:
        load_checkpoint(truncated)
    # torch's first sentence says what failed; its paragraph about miniz is not repeated
    assert "failed reading zip archive" in str(e.value) and "miniz" not in str(e.value)
    assert str(e.value).endswith("(the file is truncated or damaged, or is not a checkpoint)")
    listed = _not_a_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{listed} holds a list, not a checkpoint dict")
    ):
        load_checkpoint(listed)
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match=re.escape(f"{plain} lacks ['model', 'config']")):
        load_checkpoint(plain, require=("model", "config"), what="a detkit checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {text}")):
        load_checkpoint(text)
    # one base for the tools, and the builtin bases the API raised before
    assert issubclass(CheckpointError, FileNotFoundError)
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, DetkitError)


def test_weights_that_do_not_fit_name_the_file_and_the_keys(tmp_path):
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    atomic_save({"model": src.state_dict()}, tmp_path / "det.pth")
    bigger = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"det.pth does not fit .* 2 are missing"):
        load_model_weights(bigger, tmp_path / "det.pth", strict=True)
    smaller = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"det.pth does not fit .* 2 are not used"):
        load_model_weights(smaller, tmp_path / "det.pth", strict=True)
    torch.save({"model": [1]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="odd.pth holds no state dict of tensors"):
        load_model_weights(smaller, tmp_path / "odd.pth", strict=False)


def test_api_loader_errors_name_the_file(tmp_path):
    cfg = load_config(None, ["model.backbone.depth=18", "model.backbone.weights=''"])
    for path, error, message in (
        (tmp_path / "missing.pth", FileNotFoundError, "checkpoint not found: {}"),
        (_truncated(tmp_path), CheckpointError, "cannot read checkpoint {}"),
        (_not_a_checkpoint(tmp_path), ValueError, "{} holds a list"),
    ):
        with pytest.raises(error, match=re.escape(message.format(path))):
            Detector.from_checkpoint(str(path))
        with pytest.raises(error, match=re.escape(message.format(path))):
            Detector.from_config(cfg, weights=str(path))
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(
        ValueError, match=re.escape(str(plain)) + " lacks .*not a detkit checkpoint"
    ):
        Detector.from_checkpoint(str(plain))


def test_engine_resume_errors_name_the_files(tmp_path, caplog):
    c = Checkpointer(tmp_path)
    c.save({"model": {}, "optimizer": {}, "iteration": 2}, 2)
    truncated = _truncated(tmp_path)
    os.replace(truncated, tmp_path / "last.pth")  # damages last.pth alone
    torch.save([1, 2], tmp_path / "model_0000004.pth")
    state, path = c.load_latest()
    assert state["iteration"] == 2 and path.name == "model_0000002.pth"
    assert str(tmp_path / "last.pth") in caplog.text
    assert f"{tmp_path / 'model_0000004.pth'} holds a list" in caplog.text
    (tmp_path / "model_0000002.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        c.load_latest()
    for name in ("last.pth", "model_0000004.pth", "model_0000002.pth"):
        assert str(tmp_path / name) in str(info.value)
