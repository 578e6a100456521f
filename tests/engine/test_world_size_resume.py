"""Issue 24, item 4: ``--resume`` with another number of processes than the one that wrote
``last.pth``. The data stream is sharded, grouped and augmented per process and the random states
are per process, so the run cannot continue exactly: it refuses, naming both world sizes, the
checkpoint and ``solver.allow_world_size_change``; with that option it continues (same images seen,
same learning rate) and trains to the end.

One process is stopped by SIGTERM at iteration 3 (the preemption test's child, no sleeps), then
resumed under torchrun with 2 processes (gloo, CPU)."""

import signal

import pytest

from detkit.checkpoint import load_checkpoint
from tests.engine.helpers import TORCHRUN
from tests.engine.helpers import train_until_signal as _train


@pytest.mark.slow
def test_resume_on_another_world_size_refuses_or_continues(signal_config, tmp_path):
    out = tmp_path / "run"
    args = [str(signal_config), "--output-dir", str(out)]
    code, err = _train(args, signal_at=3, send=signal.SIGTERM)
    assert code == 143, err[-3000:]
    state = load_checkpoint(out / "last.pth")
    assert state["iteration"] == 3 and state["world_size"] == 1

    code, err = _train([*args, "--resume"], launcher=TORCHRUN)
    assert code != 0, err[-3000:]
    assert "last.pth was written by 1 process(es), this run has 2" in err, err[-3000:]
    assert "solver.allow_world_size_change=true" in err
    assert str(out) in err
    assert load_checkpoint(out / "last.pth")["iteration"] == 3  # untouched
    assert not (out / "model_final.pth").exists()

    allowed = [*args, "--resume", "solver.allow_world_size_change=true"]
    code, err = _train(allowed, launcher=TORCHRUN)
    assert code == 0, err[-3000:]
    log = (out / "log.txt").read_text()
    assert "on 2 process(es) instead of 1 (solver.allow_world_size_change)" in log
    assert "images seen kept (3 iterations x 2 = 6" in log
    assert (out / "model_final.pth").exists()
    final = load_checkpoint(out / "last.pth")
    assert final["iteration"] == 6 and final["world_size"] == 2
