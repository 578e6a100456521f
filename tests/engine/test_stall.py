"""A stalled rank is named (``solver.stall_timeout_minutes``, engine/watchdog.py): tools/train.py in
a subprocess whose rank ``DETKIT_TEST_STALL_RANK`` stops making progress at iteration
``DETKIT_TEST_STALL_AT`` (it sleeps there: that is the stall, nothing waits on it) logs an error
naming its rank, host and last finished iteration within the timeout, and exits 75."""

import re
import socket
import threading
import time

import pytest

from detkit.engine.watchdog import EXIT_STALLED, StallWatchdog
from tests.engine.helpers import REPO, Child, child_env, tiny_config

_CHILD = """
import os, runpy, sys, time
sys.path.insert(0, {repo!r})
from detkit.engine.trainer import Trainer

at = int(os.environ["DETKIT_TEST_STALL_AT"])
rank = int(os.environ["DETKIT_TEST_STALL_RANK"])
original = Trainer.run_step


def run_step(self, it, data_iter):
    if it == at and self.ctx.rank == rank:
        print(f"stalling at iteration {{it}}", flush=True)
        time.sleep(600)  # the stall: a data loader or file system that never answers
    return original(self, it, data_iter)


Trainer.run_step = run_step
sys.argv = ["tools/train.py", *sys.argv[1:]]
runpy.run_path(os.path.join({repo!r}, "tools", "train.py"), run_name="__main__")
"""

TIMEOUT_MINUTES = 0.05  # 3 seconds


def _run(tmp_path, data_root, launcher, stall_rank, timeout=240):
    cfg = tmp_path / "tiny.yaml"
    tiny_config(data_root, ["test.analyze=false"]).dump(cfg)
    child = tmp_path / "child.py"
    child.write_text(_CHILD.format(repo=str(REPO)))
    out = tmp_path / "run"
    env = child_env({"DETKIT_TEST_STALL_AT": "3", "DETKIT_TEST_STALL_RANK": str(stall_rank)})
    args = [str(cfg), "--output-dir", str(out), f"solver.stall_timeout_minutes={TIMEOUT_MINUTES}"]
    started = elapsed = None
    with Child([*launcher, str(child), *args], env) as run:
        for line in run.proc.stdout:  # the child's stdout: read until the stall starts
            if "stalling at iteration 3" in line:
                started = time.monotonic()
                break
        if started is not None:
            run.proc.communicate(timeout=timeout)
            elapsed = time.monotonic() - started
    assert started is not None, run.err[-3000:]
    return run.proc.returncode, run.err, elapsed, out


@pytest.mark.slow
def test_a_stalled_process_is_named_and_exits(data_root, tmp_path):
    code, err, elapsed, out = _run(tmp_path, data_root, [], stall_rank=0)
    assert code == EXIT_STALLED, err[-3000:]
    host = socket.gethostname()
    pattern = (
        rf"stall: rank 0 on host {re.escape(host)} made no progress for [\d.]+ s "
        r"\(solver.stall_timeout_minutes=0.05\); the last iteration it finished is 2; "
        r"its main thread is at .* in run_step; exiting with status 75"
    )
    assert re.search(pattern, err), err[-3000:]
    assert re.search(pattern, (out / "log.txt").read_text())
    assert TIMEOUT_MINUTES * 60 <= elapsed < TIMEOUT_MINUTES * 60 + 60


@pytest.mark.slow
def test_two_processes_name_the_rank_that_stalled(data_root, tmp_path):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    code, err, elapsed, out = _run(tmp_path, data_root, torchrun, stall_rank=1)
    assert code != 0
    host = re.escape(socket.gethostname())
    named = rf"stall: rank 1 on host {host} made no progress .* the last iteration it finished is 2"
    assert re.search(named, err), err[-4000:]
    assert re.search(named, (out / "log_rank1.txt").read_text())
    assert "stall: rank 0" not in err  # rank 0 waited in a collective; rank 1 reported first
    assert elapsed < 2 * TIMEOUT_MINUTES * 60 + 60


def test_the_watchdog_fires_only_when_armed_and_idle():
    fired = threading.Event()
    codes = []

    def exit(code):
        codes.append(code)
        fired.set()

    with StallWatchdog(0.001, rank=3, host="node7", exit=exit) as watchdog:  # 0.06 s
        assert not fired.wait(0.3)  # not armed before the first beat
        watchdog.beat(5)
        assert fired.wait(30)
    assert codes == [EXIT_STALLED]
    with StallWatchdog(0, exit=exit) as off:
        assert not off.enabled and off._thread is None
