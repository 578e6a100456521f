"""Issue 24, items 2 and 3: torchrun restarts and several nodes (CPU, gloo, subprocesses).

- ``--max-restarts 2``: rank 1 kills itself (SIGKILL) at iteration 3 of the first start; torchrun
  restarts both workers with the same command line (``--resume``), they continue from the newest
  checkpoint (iteration 2) and end with the uninterrupted run's weights, to the last bit. Before
  ``detkit.engine.distributed._attempt_store`` about half of such restarts failed ("Gloo
  connectFullMesh ... Connection refused") or hung: torchrun hands every start the same store,
  holding the killed workers' keys.
- Two torchrun agents on this machine (c10d rendezvous on localhost, one process each) train and
  evaluate like one agent with two processes: same weights, same metrics. Each agent is given its
  own output folder, so the folders show who writes: the rank-0 node everything, the other node
  only its own log. ``--resume`` on such folders (not one shared file system) fails on both ranks,
  naming what each rank found."""

import json

import pytest

from tests.engine.helpers import (
    REPO,
    TORCHRUN,
    free_port,
    load_weights,
    run_agents,
    tiny_config,
)
from tests.engine.helpers import train_until_signal as _train

pytestmark = pytest.mark.slow


def _final(out):
    return load_weights(out / "model_final.pth"), json.loads((out / "metrics.json").read_text())


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    diff = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
    assert diff == 0.0, diff


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    """One torchrun agent, two processes, no failure: the weights and metrics to match."""
    folder = tmp_path_factory.mktemp("elastic_reference")
    config = folder / "tiny.yaml"
    tiny_config(data_root, ["test.analyze=false", "data.num_workers=2"]).dump(config)
    out = folder / "run"
    code, err = _train([str(config), "--output-dir", str(out), "--resume"], launcher=TORCHRUN)
    assert code == 0, err[-3000:]
    return config, _final(out)


def test_torchrun_restart_resumes_from_newest_checkpoint_exactly(uninterrupted, tmp_path):
    config, (want_weights, want_metrics) = uninterrupted
    out = tmp_path / "run"
    restarts = [*TORCHRUN, "--max-restarts", "2"]
    args = [str(config), "--output-dir", str(out), "--resume"]
    code, err = _train(args, launcher=restarts, kill_rank1_at=3)
    assert code == 0, err[-3000:]
    assert "exitcode: -9" in err and "local_rank: 1" in err, err[-3000:]  # the kill happened
    assert "connectFullMesh" not in err
    log = (out / "log.txt").read_text()
    assert "--resume: no checkpoint in" in log  # the first start, same command line
    assert "resumed from " in log and "(iteration 2, the newest readable checkpoint" in log
    got_weights, got_metrics = _final(out)
    _assert_same_weights(got_weights, want_weights)
    assert got_metrics == want_metrics


def test_two_nodes_train_like_one_node(uninterrupted, tmp_path):
    config, (want_weights, want_metrics) = uninterrupted
    port = free_port()
    outs = [tmp_path / "node_a", tmp_path / "node_b"]

    def agents(extra=()):
        rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        rendezvous += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", tmp_path.name]
        train = [str(REPO / "tools" / "train.py"), str(config)]
        return [
            ["-m", "torch.distributed.run", *rendezvous, *train, "--output-dir", str(out), *extra]
            for out in outs
        ]

    results = run_agents(agents(), timeout=180)
    for code, output in results:
        assert code == 0, output[-3000:]
    # the node that got rank 0 wrote the run, the other one its log only
    writers = [out for out in outs if (out / "model_final.pth").exists()]
    assert len(writers) == 1
    (other,) = [out for out in outs if out not in writers]
    assert sorted(p.name for p in other.iterdir()) == ["log_rank1.txt"]
    log = (writers[0] / "log.txt").read_text()
    assert "batch: 2 images per step = 2 processes" in log
    got_weights, got_metrics = _final(writers[0])
    _assert_same_weights(got_weights, want_weights)
    assert got_metrics == want_metrics

    # the two folders are not one shared file system: on --resume (training on to iteration 8)
    # one rank finds the checkpoint of iteration 6, the other none
    results = run_agents(agents(["--resume", "solver.max_iter=8"]), timeout=180)
    assert all(code != 0 for code, _ in results)
    output = "".join(text for _, text in results)
    assert "--resume: the processes found different checkpoints" in output, output[-3000:]
    assert "rank 1 on " in output and ": no checkpoint" in output
    assert "(iteration 6)" in output and "a shared file system" in output
    assert load_weights(writers[0] / "model_final.pth").keys() == want_weights.keys()
