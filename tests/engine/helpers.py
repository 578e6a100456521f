"""Tiny training setups for the engine tests (plain functions and constants; the fixtures are in
conftest.py): ResNet-18 GN + a 32-channel FPN on 64-80 px synthetic
images (2 classes), so a training iteration takes a fraction of a second on a CPU."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from detkit.config import Config, load_config
from tests.helpers import TINY_FPN

REPO = Path(__file__).resolve().parents[2]

# the tiny FPN of tests/conftest.py, two classes, smaller anchors, fewer proposals and RoIs
TINY_MODEL = TINY_FPN + [
    "model.num_classes=2",
    "model.backbone.gn_groups=8",
    "model.rpn.anchor_sizes=[[8],[16],[32],[64],[128]]",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=50",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.detections_per_image=20",
]
TINY_INPUT = [
    "input.min_size_train=[64]",
    "input.max_size_train=96",
    "input.min_size_test=64",
    "input.max_size_test=96",
]
TINY_SOLVER = [
    "solver.ims_per_batch=2",
    "solver.reference_batch_size=2",
    "solver.base_lr=0.01",
    "solver.max_iter=6",
    "solver.steps=[4]",
    "solver.warmup_iters=2",
    "solver.checkpoint_period=2",
    "solver.log_period=1",
    "solver.eval_period=0",
    "solver.seed=7",
    "data.num_workers=0",
]


def synthetic(root: Path, split: str, n: int) -> str:
    return (
        f"data.{'train' if split == 'train' else split}.datasets=[{{name: SyntheticDataset, root: {root}, "
        f"split: {'train' if split == 'train' else 'val'}, num_images: {n}, num_classes: 2, "
        f"image_size: [64, 80], seed: 3}}]"
    )


def tiny_overrides(root: Path, extra: Sequence[str] = ()) -> List[str]:
    return (
        TINY_MODEL
        + TINY_INPUT
        + TINY_SOLVER
        + [synthetic(root, "train", 12), synthetic(root, "val", 6), synthetic(root, "test", 6)]
        + list(extra)
    )


def tiny_config(root: Path, extra: Sequence[str] = ()) -> Config:
    return load_config(None, tiny_overrides(root, extra))


def load_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def child_env(extra: dict = None) -> dict:
    """The environment of a child Python: this checkout first on the path, one OpenMP thread."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        **(extra or {}),
    }


class Child:
    """``with Child(command, env) as child:`` ``python <command>`` in the repository root, in a
    session of its own, its stdout a pipe (``child.proc.stdout``) and its stderr a file: a parent
    that reads stdout first would otherwise leave a child whose log filled a stderr pipe waiting
    forever. On leaving, a child still running is killed; ``child.err`` is its stderr."""

    def __init__(self, command: Sequence[str], env: dict):
        self.command, self.env, self.err = list(command), env, ""

    def __enter__(self) -> "Child":
        self._errors = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, *self.command],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            start_new_session=True,  # its own process group (torchrun gives each worker one)
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._errors.seek(0)
        self.err = self._errors.read()
        self._errors.close()


def run_tool(
    args: Sequence[str], timeout: float = 300, env_extra: dict = None
) -> subprocess.CompletedProcess:
    """Run a tools/ script (or torchrun) in a subprocess from the repository root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=child_env(env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_tool(name: str):
    """tools/<name>.py as a module: its ``main(argv)`` returns the exit status (tools use
    ``detkit.utils.cli.tool_main``), so a test can run a tool in-process, without a new Python."""
    spec = importlib.util.spec_from_file_location(
        f"detkit_tools_{name}", REPO / "tools" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def truncate_file(path: Path, keep: int = 100) -> None:
    """Damage a checkpoint in place (as a torn write or a bad disk would)."""
    with open(path, "r+b") as f:
        f.truncate(keep)


# a training child that waits, at one iteration, for a signal (preemption and world-size tests),
# or whose rank 1 kills itself at one iteration (torchrun restart test). The signal is delivered
# again, to the main thread, once it has come: the test knows the iteration it stops at
_CHILD = """
import os, runpy, signal, sys, time
sys.path.insert(0, {repo!r})
from detkit.engine.trainer import Trainer

at = int(os.environ.get("DETKIT_TEST_SIGNAL_AT", "0"))
twice = os.environ.get("DETKIT_TEST_SIGNAL_TWICE") == "1"
kill_at = int(os.environ.get("DETKIT_TEST_KILL_RANK1_AT", "-1"))
signals = {{signal.SIGTERM, signal.SIGUSR1}}
original = Trainer.run_step


in_final_eval = os.environ.get("DETKIT_TEST_SIGNAL_IN_FINAL_EVAL") == "1"
original_evaluate = Trainer.evaluate


def wait_for_signal(it):
    # a handler of its own while waiting: the kernel may hand a signal sent to the process to any
    # thread (the watchdog's, a loader's) that does not block it, so sigwait in the main thread
    # could miss it, but a Python handler always runs in the main thread, between the sleeps
    got = []
    previous = {{s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in signals}}
    print(f"waiting at iteration {{it}} in process {{os.getpid()}}", flush=True)
    while not got:
        time.sleep(0.01)
    for s, handler in previous.items():
        signal.signal(s, handler)
    signal.raise_signal(got[0])  # to this thread: the handler (or the default action) runs now
    if twice:
        signal.raise_signal(got[0])


def run_step(self, it, data_iter):
    # rank 1 of torchrun's first start dies at once (SIGKILL) before iteration kill_at
    first_start = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
    if it == kill_at and self.ctx.rank == 1 and first_start:
        os.kill(os.getpid(), signal.SIGKILL)
    if it == at and self.ctx.rank == 0 and not in_final_eval:
        wait_for_signal(it)
    return original(self, it, data_iter)


def evaluate(self, iteration, final=False):
    if final and in_final_eval and self.ctx.rank == 0:
        wait_for_signal(iteration)
    return original_evaluate(self, iteration, final=final)


Trainer.run_step = run_step
Trainer.evaluate = evaluate
sys.argv = ["tools/train.py", *sys.argv[1:]]
runpy.run_path(os.path.join({repo!r}, "tools", "train.py"), run_name="__main__")
"""

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def train_until_signal(
    args,
    signal_at=0,
    send=None,
    twice=False,
    timeout=300,
    launcher=(),
    kill_rank1_at=-1,
    in_final_eval=False,
):
    """tools/train.py ``args`` in the child above (run by ``launcher``: python, or torchrun);
    ``send`` is delivered at ``signal_at`` to rank 0's process group (its loader workers too), or
    (``in_final_eval``) at the start of the final evaluation, ``signal_at`` being the last
    iteration; under torchrun, rank 1 of the first start kills itself at ``kill_rank1_at``."""
    env = child_env(
        {
            "DETKIT_TEST_SIGNAL_AT": str(signal_at),
            "DETKIT_TEST_SIGNAL_TWICE": "1" if twice else "0",
            "DETKIT_TEST_KILL_RANK1_AT": str(kill_rank1_at),
            "DETKIT_TEST_SIGNAL_IN_FINAL_EVAL": "1" if in_final_eval else "0",
        }
    )
    code = _CHILD.format(repo=str(REPO))
    if launcher:  # torchrun runs a file
        child = Path(args[0]).parent / "child.py"
        child.write_text(code)
        command = [*launcher, str(child)]
    else:
        command = ["-c", code]
    with Child([*command, *args], env) as child:
        if send is not None:
            line = child.proc.stdout.readline()
            assert line.startswith(f"waiting at iteration {signal_at} in process "), line
            # to the process group, as torchrun and SLURM signal: the data-loader workers too
            os.killpg(int(line.split()[-1]), send)
        child.proc.communicate(timeout=timeout)
    return child.proc.returncode, child.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_agents(commands: Sequence[Sequence[str]], timeout: float = 300) -> List[Tuple[int, str]]:
    """Several ``python <command>`` (torchrun agents) at once, from the repository root; each one's
    (exit status, output). The output goes to files: a full pipe would block an agent."""
    env = child_env()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in commands]
    procs = [
        subprocess.Popen(
            [sys.executable, *command],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command, log in zip(commands, logs)
    ]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, log in zip(procs, logs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.seek(0)
            results.append((proc.returncode, log.read()))
            log.close()
    return results
