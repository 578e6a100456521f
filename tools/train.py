#!/usr/bin/env python
"""Train a detector: ``python tools/train.py CONFIG [key=value ...] [--output-dir D] [--resume]``.

One process (CPU, or the first GPU)::

    python tools/train.py configs/quickstart.yaml
    python tools/train.py configs/frcnn_r50_fpn_coco.yaml solver.ims_per_batch=8 --output-dir runs/r50

Several GPUs on one machine (``solver.ims_per_batch`` is the total over all of them)::

    torchrun --nproc-per-node 8 tools/train.py configs/frcnn_r101_coco.yaml --output-dir runs/r101

Several machines (run on every node; node 0's address as the rendezvous endpoint, the output folder
on a file system all nodes share so --resume finds the checkpoints)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $NODE0_ADDR:29500 --rdzv-id detkit-r101 \\
        tools/train.py configs/frcnn_r101_coco.yaml --output-dir /shared/runs/r101

``--resume`` continues from ``last.pth`` in the output folder (its own copy of the newest periodic
checkpoint; when it is damaged, the newest readable periodic one) and ends with the same weights as an
uninterrupted run. An iteration's checkpoint is written before its evaluation runs: after an
evaluation that failed (or a run killed during it), ``--resume`` runs that evaluation first. After a
TrainingError no checkpoint holds non-finite weights: resume with a lower learning rate, e.g.
``--resume solver.base_lr=0.005``. On a finished run ``--resume`` says so and exits 0 (raise
solver.max_iter to train longer); in a folder without checkpoints it warns and starts from scratch.

Preemption (``solver.stop_signals``, default SIGTERM and SIGUSR1; SLURM ``--signal=USR1@120``,
Kubernetes' SIGTERM): every process finishes its current iteration, ``last.pth`` is written at it,
the log says ``stopped by signal SIGTERM at iteration N; resume with: <this command> --resume`` and
the tool exits with status 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1, as a shell
reports a process a signal ended), so a scheduler can requeue the same command with ``--resume``. A
second signal exits at once with that status; the checkpoints on disk stay whole (atomic writes).
So does a signal after the last iteration (during the final evaluation): ``--resume`` then runs it.

A process that finishes no iteration for ``solver.stall_timeout_minutes`` (default 10, 0 = off;
evaluations excluded) logs an error naming its rank, host and last finished iteration and exits 75,
long before the 30-minute collective timeout, so torchrun (``--max-restarts``) or the scheduler can
restart the job with ``--resume``.

Exit status: 0 done (or already finished), 1 a user error (config, data, ...), 75 a stalled process,
128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.process import quiet_idle_threads

quiet_idle_threads()  # first, before torch loads OpenMP (see detkit/utils/process.py)

from detkit.utils.cli import tool_main, tool_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("config", help="a YAML config, e.g. configs/quickstart.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides key=value, e.g. solver.base_lr=0.01"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where checkpoints and logs go (default: output_dir of the config)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from last.pth in the output folder"
    )
    return parser.parse_intermixed_args(argv)  # overrides may come after the options


@tool_main
def main(argv=None) -> Optional[int]:
    args = parse_args(argv)
    from detkit.config import load_config
    from detkit.engine import train_main
    from detkit.engine.launch import enable_tf32
    from detkit.engine.preemption import TrainingStopped

    cfg = load_config(args.config, args.overrides)
    enable_tf32()  # TF32 matmuls on GPUs that have them: a process-wide choice the tool makes
    try:
        train_main(cfg, output_dir=args.output_dir, resume=args.resume)
    except TrainingStopped as e:
        logging.getLogger("detkit").warning("%s; resume with: %s", e, resume_command(argv))
        return e.exit_status
    return None


def resume_command(argv=None) -> str:
    """This tool's command line with ``--resume`` (under torchrun: its arguments after the script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    script = sys.argv[0] if argv is None else "tools/train.py"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same torchrun command, with: " + shlex.join([script, *args])
    return shlex.join(["python", script, *args])


if __name__ == "__main__":
    sys.exit(main())
