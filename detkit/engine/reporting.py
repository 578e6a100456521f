"""What the trainer tells the user: the per-step record, the progress-bar text, the log line, and the
final metrics table + ``metrics.json`` (which ``--resume`` reads to tell a finished run)."""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from detkit.errors import TrainingError
from detkit.evaluation.common import format_table
from detkit.utils.io import write_json

from .checkpoint import FINAL, LAST

logger = logging.getLogger("detkit")

FINAL_METRICS_FILE = "metrics.json"


def step_record(
    means: Dict[str, float], ims_per_batch: int, device: torch.device
) -> Dict[str, float]:
    """The JSON-lines record of a logging step from smoothed means: lr, losses, timing, throughput."""
    losses = {k: v for k, v in means.items() if k.startswith("loss")}
    sec = means.get("sec_per_iter", float("nan"))
    record = {
        "lr": means.get("lr", float("nan")),
        "total_loss": sum(losses.values()),
        **losses,
        "sec_per_iter": sec,
        "data_time": means.get("data_time", float("nan")),
        "img_per_sec": ims_per_batch / sec if sec > 0 else float("nan"),
    }
    if device.type == "cuda":
        record["max_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def progress_postfix(record: Dict[str, float]) -> str:
    parts = [f"loss={record['total_loss']:.3f}"]
    parts += [f"{k[5:]}={v:.3f}" for k, v in record.items() if k.startswith("loss_")]
    parts += [f"lr={record['lr']:.2e}", f"{record['img_per_sec']:.1f} img/s"]
    if "max_mem_mb" in record:
        parts.append(f"mem={record['max_mem_mb'] / 1024:.1f}G")
    return " ".join(parts)


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


def log_step(iteration: int, max_iter: int, record: Dict[str, float]) -> None:
    eta = _eta(record["sec_per_iter"] * (max_iter - iteration))
    mem = f"  max mem {record['max_mem_mb']:.0f} MB" if "max_mem_mb" in record else ""
    losses = "  ".join(f"{k}: {v:.4f}" for k, v in record.items() if k.startswith("loss"))
    logger.info(
        "iter %d/%d  eta %s  total_loss: %.4f  %s  lr: %.3g  %.3f s/it (data %.3f)  %.1f img/s%s",
        iteration,
        max_iter,
        eta,
        record["total_loss"],
        losses,
        record["lr"],
        record["sec_per_iter"],
        record["data_time"],
        record["img_per_sec"],
        mem,
    )


_TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "mAP")


def history_table(history: List[Dict[str, Any]]) -> str:
    """One row per evaluation: iteration, split and the headline numbers."""
    keys = [k for k in _TABLE_KEYS if any(k in r for r in history)]
    rows = [
        [r["iteration"], r.get("split", "")] + [r.get(k, float("nan")) for k in keys]
        for r in history
    ]
    return format_table(["iteration", "split"] + keys, rows)


def final_report(
    output_dir: os.PathLike,
    metrics: Dict[str, Any],
    history: List[Dict[str, Any]],
    best: Optional[Dict[str, Any]],
    max_iter: int,
    time_budget: Optional[Dict[str, Any]] = None,
) -> Path:
    """Log the evaluation history as a table and write ``metrics.json`` (final numbers, per-class AP,
    the best checkpoint's numbers and the history) atomically."""
    if history:
        logger.info("evaluation results during training:\n%s", history_table(history))
    if best:
        logger.info(
            "best %s %s = %.4f at iteration %d (best.pth)",
            best["split"],
            best["metric"],
            best["value"],
            best["iteration"],
        )
    path = write_json(
        {
            "iteration": max_iter,
            "final": metrics,
            "best": best,
            "history": history,
            **({"time_budget": time_budget} if time_budget else {}),
        },
        Path(output_dir) / FINAL_METRICS_FILE,
        indent=2,
    )
    logger.info("final metrics written to %s", path)
    return path


def finished_run(
    output_dir: str, max_iter: int, max_time_minutes: float = 0.0
) -> Optional[Dict[str, Any]]:
    """For ``--resume``: the final metrics of the run in ``output_dir`` when it already reached
    ``max_iter`` (``model_final.pth`` and ``metrics.json`` are its last files), logged as such; else
    None. Checked before anything is built, so a finished run is neither retrained nor re-evaluated;
    a larger ``solver.max_iter`` continues it. A run that ``solver.max_time_minutes`` stopped early
    is finished while solver.max_iter and solver.max_time_minutes are those it ran with."""
    out = Path(output_dir)
    try:
        report = json.loads((out / FINAL_METRICS_FILE).read_text(encoding="utf-8"))
        done = int(report["iteration"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or a torn file: not finished
        return None
    budget = report.get("time_budget") if isinstance(report, dict) else None
    stopped_by_budget = (
        isinstance(budget, dict)
        and budget.get("solver_max_iter") == max_iter
        and budget.get("max_time_minutes") == float(max_time_minutes)
        and done >= int(budget.get("max_iter", max_iter))
    )
    if (done < max_iter and not stopped_by_budget) or not (out / FINAL).is_file():
        return None
    logger.info(
        "--resume: the run in %s is finished (iteration %d of solver.max_iter=%d%s; %s and %s "
        "written); nothing to do. To train longer, raise %s",
        out,
        done,
        max_iter,
        f", stopped by solver.max_time_minutes={max_time_minutes:g}" if done < max_iter else "",
        FINAL,
        FINAL_METRICS_FILE,
        "solver.max_time_minutes" if done < max_iter else "solver.max_iter",
    )
    return report.get("final") or {}


def divergence_advice(cfg, output_dir: os.PathLike, last_saved: Optional[int]) -> str:
    """What to run next after a diverged run, with the checkpoint it would continue from: the
    advice must work as written (no checkpoint with non-finite weights exists, so last.pth, from
    iteration ``last_saved``, is a good one)."""
    s = cfg.solver
    fixes = (
        f"a lower solver.base_lr (now {s.base_lr:g}), a longer solver.warmup_iters "
        f"(now {s.warmup_iters}) or solver.clip_grad_norm > 0 (now {s.clip_grad_norm:g})"
    )
    if last_saved is None:
        return f"no checkpoint was written yet: start again with {fixes}"
    out = Path(output_dir)
    return (
        f"no checkpoint was written after divergence. {out / LAST} (iteration "
        f"{last_saved}) has finite weights; continue from it with {fixes}, e.g. "
        f"python tools/train.py {cfg.source_file or 'CONFIG'} [this run's overrides] "
        f"--output-dir {out} --resume solver.base_lr={s.base_lr / 2:g}"
    )


def warn_config_changes(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> None:
    """--resume: one warning per config value that differs from the checkpoint's."""
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b and key != "output_dir":
            logger.warning("config %s%s differs from the checkpoint's: %r -> %r", prefix, key, a, b)


def check_world_size_change(
    cfg,
    path: os.PathLike,
    state: Dict[str, Any],
    saved: int,
    now: int,
    micro_batch: int,
    accumulate: int,
    iteration: int,
) -> None:
    """For ``--resume``: ``path`` (training state ``state``, at ``iteration``) was written by
    ``saved`` processes, this run has ``now``. The images seen (iteration x solver.ims_per_batch, a
    total over all processes) and the learning rate (from the total batch and
    solver.reference_batch_size) carry over, but the data stream is sharded, grouped and augmented
    per rank and the random states are per rank: the run cannot continue bit-identically, so this
    raises a :class:`TrainingError` unless solver.allow_world_size_change is true, and otherwise
    logs what changes (``micro_batch``, ``accumulate``: this run's)."""
    if not bool(cfg.solver.allow_world_size_change):
        raise TrainingError(
            f"--resume: {path} was written by {saved} process(es), this run has {now}: the "
            "data stream (sharded per process) and the random states cannot continue exactly. "
            f"Resume with {saved} process(es), or set solver.allow_world_size_change=true to "
            "continue with the same images seen and learning rate but not bit-identically"
        )
    total = int(cfg.solver.ims_per_batch)
    saved_micro = (state.get("data") or {}).get("micro_batch")
    logger.warning(
        "resuming %s on %d process(es) instead of %d (solver.allow_world_size_change): images "
        "per process and micro-batch %s -> %d; images seen kept (%d iterations x %d = %d, the "
        "stream continues at batch %d of each process in the new sharding); learning rate "
        "unchanged (solver.ims_per_batch=%d is the total, scaled by reference_batch_size=%d); "
        "random states reseeded: the run continues, but not bit-identically",
        path,
        now,
        saved,
        saved_micro,
        micro_batch,
        iteration,
        total,
        iteration * total,
        iteration * accumulate,
        total,
        int(cfg.solver.reference_batch_size),
    )
