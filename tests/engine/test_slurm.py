"""Issue 24, item 5: tools/slurm_train.sbatch on a real (one-node) SLURM cluster.

A short training job is submitted with the repository's sbatch file; once it has logged its
second iteration the test sends what ``#SBATCH --signal=USR1@120`` sends before a time limit
(``scancel --signal=USR1``: every process of the job's steps). The training process writes
``last.pth`` at the stopping iteration and exits 138, the script requeues the job, and the requeued
job resumes from that iteration and trains to the end (``COMPLETED``, ``Restarts=1``).

Needs a running cluster: ``.ci/run`` starts one with ``.ci/slurm-up`` (slurm-wlm and munge from
Debian, ``AuthInfo=cred_expire=10`` so that a requeued job waits 10 s instead of 120 s). Without one
the test skips, saying how to start it."""

import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.engine.helpers import REPO, child_env, free_port, tiny_config

pytestmark = pytest.mark.slow


def _slurm(*args: str, check: bool = True) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _cluster_ready() -> str:
    """Why no cluster can run the test ("" when one can)."""
    if shutil.which("sbatch") is None:
        return "no SLURM client (sbatch)"
    try:
        states = _slurm("sinfo", "-h", "-o", "%T", check=False).split()
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    if "idle" not in states and "mixed" not in states:
        return f"no idle SLURM node (sinfo: {states or 'no answer'})"
    return ""


def _wait_for(predicate, what: str, timeout: float):
    """Poll ``predicate`` (a SLURM query or a file) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job(job_id: str) -> dict:
    line = _slurm("scontrol", "show", "job", "-o", job_id, check=False).strip()
    return dict(re.findall(r"(\w+)=(\S*)", line))


def test_sbatch_stop_requeue_and_resume(data_root, tmp_path):
    why = _cluster_ready()
    if why:
        pytest.skip(f'{why}: start a one-node cluster with `eval "$(bash .ci/slurm-up)"`')
    config = tmp_path / "tiny.yaml"
    extra = ["test.analyze=false", "data.num_workers=2", "solver.max_iter=30"]
    extra += ["solver.steps=[20]", "solver.checkpoint_period=10"]
    tiny_config(data_root, extra).dump(config)
    out = tmp_path / "run"
    env = child_env(
        {
            "CONFIG": str(config),
            "OUTPUT_DIR": str(out),
            "NPROC_PER_NODE": "1",
            "RDZV_PORT": str(free_port()),
            "PYTHON": sys.executable,
        }
    )
    submit = ["sbatch", "--parsable", "--nodes", "1", "--cpus-per-task", "1"]
    submit += ["--job-name", "detkit-test", "--output", str(tmp_path / "slurm-%j.out")]
    done = subprocess.run(
        [*submit, str(REPO / "tools" / "slurm_train.sbatch")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    try:
        log = out / "log.txt"
        _wait_for(
            lambda: log.is_file() and "iter 2/30" in log.read_text(), "iteration 2 in log.txt", 180
        )
        _slurm("scancel", "--signal=USR1", job_id)  # what --signal=USR1@120 sends
        final = _wait_for(
            lambda: (
                (job := _job(job_id)).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED")
                and job
            ),
            "the job to end",
            300,
        )
    finally:
        if _job(job_id).get("JobState") in ("RUNNING", "PENDING", "REQUEUED"):
            _slurm("scancel", job_id, check=False)
    output = "".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))
    assert final["JobState"] == "COMPLETED", output[-3000:]
    assert final["Restarts"] == "1", final
    assert "requeueing job" in output and "(restart 1)" in output, output[-3000:]

    text = log.read_text()
    stopped = re.search(r"stopped by signal SIGUSR1 at iteration (\d+)", text)
    assert stopped, text[-3000:]
    at = int(stopped.group(1))
    assert 2 <= at < 30
    assert f"(iteration {at}, the newest readable checkpoint with finite weights)" in text
    assert (out / "model_final.pth").is_file()
    assert '"iteration": 30' in (out / "metrics.json").read_text()
