"""Preemption (``solver.stop_signals``, engine/preemption.py): tools/train.py in a subprocess gets a
signal at a known iteration, writes ``last.pth`` at it, says how to resume and exits 128 + the
signal's number; ``--resume`` then ends with the uninterrupted run's weights, bit for bit.

The child catches the signal at the start of iteration ``DETKIT_TEST_SIGNAL_AT`` and waits for it
there, then delivers it again to its main thread (``tests/engine/helpers.py``): the test sends it
after reading the child's "waiting" line, so the stop iteration is exactly that one."""

import signal
import subprocess
import sys

import pytest

from detkit.checkpoint import load_checkpoint
from detkit.engine.preemption import STOP_SIGNALS, StopSignals, exit_status
from tests.engine.helpers import REPO, TORCHRUN, load_weights
from tests.engine.helpers import train_until_signal as _train


@pytest.mark.slow
def test_sigterm_stops_at_the_iteration_and_resume_is_exact(signal_config, tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    code, err = _train([str(signal_config), "--output-dir", str(full)])
    assert code == 0, err[-3000:]
    expected = load_weights(full / "model_final.pth")

    args = [str(signal_config), "--output-dir", str(stopped)]
    code, err = _train(args, signal_at=3, send=signal.SIGTERM)
    assert code == 143 == exit_status("SIGTERM"), err[-3000:]
    assert load_checkpoint(stopped / "last.pth")["iteration"] == 3  # not the periodic 2
    assert not (stopped / "model_final.pth").exists()
    log = (stopped / "log.txt").read_text()
    command = (
        f"python {REPO / 'tools' / 'train.py'} {signal_config} --output-dir {stopped} --resume"
    )
    assert f"stopped by signal SIGTERM at iteration 3; resume with: {command}" in log
    assert "received SIGTERM: finishing the current iteration" in log

    code, err = _train([*args, "--resume"])
    assert code == 0, err[-3000:]
    assert "resumed from" in (stopped / "log.txt").read_text()
    got = load_weights(stopped / "model_final.pth")
    assert got.keys() == expected.keys()
    assert max((got[k].double() - expected[k].double()).abs().max().item() for k in got) == 0


@pytest.mark.slow
def test_two_processes_stop_at_the_same_iteration_and_resume_exactly(signal_config, tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    code, err = _train([str(signal_config), "--output-dir", str(full)], launcher=TORCHRUN)
    assert code == 0, err[-3000:]
    expected = load_weights(full / "model_final.pth")

    args = [str(signal_config), "--output-dir", str(stopped)]
    code, err = _train(args, signal_at=3, send=signal.SIGTERM, launcher=TORCHRUN)
    assert code != 0, err[-3000:]  # torchrun: its workers exited 143
    state = load_checkpoint(stopped / "last.pth")
    assert state["iteration"] == 3 and state["world_size"] == 2
    # rank 0 received it; rank 1 heard of it through the all-reduce and stopped after the same one
    for log in ("log.txt", "log_rank1.txt"):
        text = (stopped / log).read_text()
        assert "stopped by signal SIGTERM at iteration 3; resume with: the same torchrun" in text

    code, err = _train([*args, "--resume"], launcher=TORCHRUN)
    assert code == 0, err[-3000:]
    got = load_weights(stopped / "model_final.pth")
    assert max((got[k].double() - expected[k].double()).abs().max().item() for k in got) == 0


@pytest.mark.slow
def test_signal_not_listed_keeps_its_default_action(signal_config, tmp_path):
    out = tmp_path / "run"
    args = [str(signal_config), "--output-dir", str(out), "solver.stop_signals=[SIGTERM]"]
    code, err = _train(args, signal_at=3, send=signal.SIGUSR1)
    assert code == -signal.SIGUSR1, err[-3000:]  # killed by it, as without detkit's handler
    assert load_checkpoint(out / "last.pth")["iteration"] == 2  # the periodic checkpoint only


@pytest.mark.slow
def test_a_second_signal_exits_at_once_with_the_checkpoints_whole(signal_config, tmp_path):
    out = tmp_path / "run"
    args = [str(signal_config), "--output-dir", str(out), "solver.stop_signals=[SIGUSR1]"]
    code, err = _train(args, signal_at=3, send=signal.SIGUSR1, twice=True)
    assert code == 138 == exit_status("SIGUSR1"), err[-3000:]
    assert load_checkpoint(out / "last.pth")["iteration"] == 2  # iteration 3 never finished
    assert "received SIGUSR1 while stopping: exiting at once with status 138" in err


def test_handlers_are_installed_for_the_block_only():
    before = signal.getsignal(signal.SIGUSR2)
    stop = StopSignals(["SIGUSR2"])
    assert stop.agreed() is None
    with stop:
        assert signal.getsignal(signal.SIGUSR2) == stop._handle
        signal.raise_signal(signal.SIGUSR2)
        assert stop.received == "SIGUSR2" and stop.agreed() == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before
    assert StopSignals([]).agreed() is None


_LOADER = """
import os, subprocess, sys, time
sys.path.insert(0, {repo!r})
from torch.utils.data import DataLoader, Dataset
from detkit.engine.preemption import StopSignals


class Items(Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        time.sleep(0.01)  # a loader that is never done before the signal arrives
        return i


os.setpgrp()  # the signal below reaches this process group only
with StopSignals(["SIGTERM"]) as stop:
    # kept until the interpreter exits: multiprocessing terminates its workers then
    batches = iter(DataLoader(Items(), num_workers=2, batch_size=1))
    for k, batch in enumerate(batches):
        if k == 3:  # another process signals the whole group, as torchrun and SLURM do
            subprocess.run(["kill", "-TERM", "--", f"-{{os.getpgrp()}}"])
        if stop.received and k >= 20:
            print("stopped cleanly after", k, flush=True)
            break
"""


def test_data_loader_workers_survive_a_signal_to_the_process_group():
    """... and still end when their parent terminates them at exit (no hang)."""
    code = _LOADER.format(repo=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0 and "stopped cleanly after 20" in proc.stdout, proc.stderr[-3000:]


def test_the_config_allows_the_signals_the_engine_handles():
    from detkit.config.constraints import choices

    assert choices("solver.stop_signals") == STOP_SIGNALS
    with pytest.raises(ValueError, match="SIGKILL"):
        StopSignals(["SIGKILL"])


@pytest.mark.slow
def test_a_signal_during_the_final_evaluation_exits_and_resume_finishes(signal_config, tmp_path):
    """After the last iteration (its state already in last.pth) a stop signal exits at once, so a
    scheduler's time limit does not kill the job mid-evaluation; --resume evaluates and writes the
    final files."""
    out = tmp_path / "run"
    args = [str(signal_config), "--output-dir", str(out)]
    code, err = _train(args, signal_at=6, send=signal.SIGUSR1, in_final_eval=True)
    assert code == 138 == exit_status("SIGUSR1"), err[-3000:]
    assert load_checkpoint(out / "last.pth")["iteration"] == 6
    assert not (out / "model_final.pth").exists() and not (out / "metrics.json").exists()
    log = (out / "log.txt").read_text()
    # "stopped by signal" is what tools/slurm_train.sbatch looks for to requeue
    assert "stopped by signal SIGUSR1 after the last iteration (6, in last.pth)" in log, log[-2000:]

    code, err = _train([*args, "--resume"])
    assert code == 0, err[-3000:]
    assert "resumed from" in (out / "log.txt").read_text()
    assert (out / "model_final.pth").exists()
    assert '"iteration": 6' in (out / "metrics.json").read_text()
