"""Checkpoints a killed process leaves loadable, keep-N rotation, resume fallback, weight loading
(the atomic write itself and the loader's errors: tests/utils/test_io.py)."""

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from detkit.checkpoint import load_checkpoint, load_model_weights
from detkit.engine.checkpoint import Checkpointer
from detkit.errors import CheckpointError, WriteError
from detkit.utils.io import atomic_save
from tests.engine.helpers import REPO


def state(it):
    return {"model": {"w": torch.full((4,), float(it))}, "optimizer": {}, "iteration": it}


def truncate(path, keep=100):
    with open(path, "r+b") as f:  # in place, as a bad disk would (a hard link would share it)
        f.truncate(keep)


_KILLED_WRITER = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from detkit.utils.io import atomic_save

class SlowToPickle:  # blocks the write half-way, so the kill lands inside atomic_save
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))

atomic_save({{"model": {{"w": torch.ones(1000)}}, "iteration": 1}}, {path!r})
print("saved", flush=True)
atomic_save({{"model": {{"w": torch.zeros(1000)}}, "iteration": 2, "slow": SlowToPickle()}}, {path!r})
"""


@pytest.mark.slow
def test_process_killed_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    code = textwrap.dedent(_KILLED_WRITER.format(repo=str(REPO), path=str(path)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(1000))
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pth"]
    assert leftovers, "the killed write should have left its temporary file"
    Checkpointer(tmp_path).remove_stale_temporaries()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_rotation_keeps_the_newest(tmp_path):
    c = Checkpointer(tmp_path, keep=2)
    for it in (2, 4, 6, 8):
        c.save(state(it), it)
    assert [p.name for p in c.periodic_files()] == ["model_0000008.pth", "model_0000006.pth"]
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 8


def test_corrupt_last_falls_back_with_a_warning(tmp_path, caplog):
    c = Checkpointer(tmp_path, keep=3)
    for it in (2, 4):
        c.save(state(it), it)
    truncate(tmp_path / "last.pth")  # its own file: model_0000004.pth is not damaged with it
    with caplog.at_level(logging.WARNING, logger="detkit"):
        loaded, path = c.load_latest()
    assert loaded["iteration"] == 4 and path.name == "model_0000004.pth"
    assert "last.pth" in caplog.text and "falling back" in caplog.text


@pytest.mark.parametrize("keep", [1, 3])
def test_newest_periodic_file_damaged_in_place_resumes_from_last(tmp_path, keep, caplog):
    """last.pth is a copy, not a hard link: damage to model_0000004.pth leaves it whole, also when
    rotation kept no older file to fall back to."""
    c = Checkpointer(tmp_path, keep=keep)
    for it in (2, 4):
        c.save(state(it), it)
    assert (tmp_path / "last.pth").stat().st_ino != (tmp_path / "model_0000004.pth").stat().st_ino
    truncate(tmp_path / "model_0000004.pth")
    loaded, path = c.load_latest()
    assert path.name == "last.pth" and loaded["iteration"] == 4
    assert torch.equal(loaded["model"]["w"], torch.full((4,), 4.0))


def test_garbage_last_falls_back_to_the_periodic_file(tmp_path, caplog):
    c = Checkpointer(tmp_path)
    c.save(state(2), 2)
    c.save(state(4), 4)
    (tmp_path / "last.pth").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="detkit"):
        loaded, path = c.load_latest()
    assert loaded["iteration"] == 4 and path.name == "model_0000004.pth"
    assert "cannot read checkpoint" in caplog.text


def test_non_finite_weights_are_never_written_and_never_resumed(tmp_path, caplog):
    c = Checkpointer(tmp_path)
    c.save(state(2), 2)
    bad = state(4)
    bad["model"]["w"][1] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to write .*model_0000004.pth.*NaN/Inf"):
        c.save(bad, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "model_0000002.pth"]
    with pytest.raises(RuntimeError, match="NaN/Inf"):  # and nothing after it either
        c.save_named(state(6), "best.pth")
    # a file such weights reached before this check existed: skipped, the older one named
    atomic_save({**bad, "model": {"w": torch.tensor([float("inf")] * 4)}}, tmp_path / "last.pth")
    with caplog.at_level(logging.WARNING, logger="detkit"):
        loaded, path = Checkpointer(tmp_path).load_latest()
    assert path.name == "model_0000002.pth" and loaded["iteration"] == 2
    assert f"{tmp_path / 'last.pth'} holds NaN/Inf in 1 tensor(s)" in caplog.text
    assert "resuming from" in caplog.text and "(iteration 2)" in caplog.text


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    c = Checkpointer(tmp_path)
    c.save(state(2), 2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fsync, full = os.fsync, {"name": "last.pth"}

    def fsync(fd):  # the disk fills while the file named in `full` is written
        if full["name"] in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError) as info:
        c.save(state(4), 4)
    message = str(info.value)
    assert message.startswith(f"cannot write {tmp_path / 'last.pth'}: No space left on device")
    assert "earlier checkpoints are intact (last.pth, model_0000002.pth)" in message
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left
    full["name"] = "model_0000004.pth"  # the copy fails: last.pth already holds the new state
    with pytest.raises(WriteError, match="model_0000004.pth: No space left on device"):
        c.save(state(4), 4)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "model_0000002.pth"]
    loaded, path = c.load_latest()
    assert path.name == "last.pth" and loaded["iteration"] == 4


def test_nothing_readable_is_an_error_and_nothing_at_all_is_none(tmp_path):
    c = Checkpointer(tmp_path)
    assert c.load_latest() is None
    c.save(state(2), 2)
    truncate(tmp_path / "last.pth")
    truncate(tmp_path / "model_0000002.pth")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        c.load_latest()


def test_disabled_checkpointer_refuses_to_write(tmp_path):
    c = Checkpointer(tmp_path)
    c.disable("training diverged")
    with pytest.raises(RuntimeError, match="diverged"):
        c.save(state(2), 2)
    assert not list(tmp_path.iterdir())


def test_load_model_weights_strict_and_lenient(tmp_path, caplog):
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    atomic_save({"model": src.state_dict(), "class_names": ["a", "b"]}, tmp_path / "det.pth")
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    for name in ("det.pth", "plain.pth"):
        dst = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        load_model_weights(dst, str(tmp_path / name), strict=True)
        assert all(
            torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values())
        )
    other = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))  # another number of classes
    with pytest.raises(CheckpointError, match="differ in shape"):
        load_model_weights(other, str(tmp_path / "det.pth"), strict=True)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        extra = load_model_weights(other, str(tmp_path / "det.pth"), strict=False)
    assert torch.equal(other[0].weight, src[0].weight) and "skipped" in caplog.text
    assert extra["class_names"] == ["a", "b"]
