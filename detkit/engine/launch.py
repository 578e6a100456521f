"""Entry points behind tools/train.py (``train_main``) and tools/test.py (``evaluate_main``): logging,
process group, then the work.

Both run as one process (CPU or one GPU) or as one of several started by ``torchrun``.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from detkit.analysis.from_records import analyze_dataset
from detkit.data import build_test_loader
from detkit.errors import CheckpointError, ConfigError, DataError, WriteError
from detkit.evaluation import build_evaluator
from detkit.evaluation.common import write_json
from detkit.inference.backends import check_backend, make_predictor
from detkit.inference.parallel import with_test_batch
from detkit.modeling.build import build_model
from detkit.utils.io import ensure_output_dir
from detkit.utils.logger import setup_logging
from detkit.version import __version__

from .checkpoint import LAST, Checkpointer, load_model_weights
from .distributed import DistContext, broadcast_object, cleanup_distributed, init_distributed
from .hooks import default_hooks
from .inference import run_inference
from .preemption import StopSignals
from .reporting import finished_run
from .trainer import RecordingEvaluator, Trainer, build_dataset_main_first, run_on_all_ranks
from .watchdog import StallWatchdog

logger = logging.getLogger("detkit")


def enable_tf32() -> bool:
    """Let float32 matmuls and convolutions use TF32 on CUDA GPUs that have it (Ampere and newer):
    ``torch.set_float32_matmul_precision("high")``, a process-wide setting. tools/train.py and
    tools/test.py call it; the package never does on its own. Returns whether it was set (only
    when CUDA is available)."""
    if not torch.cuda.is_available():
        return False
    torch.set_float32_matmul_precision("high")
    logger.info("TF32 matmuls on: torch.set_float32_matmul_precision('high') (enable_tf32)")
    return True


def _log_environment(ctx: DistContext, cfg) -> None:
    gpu = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "none"
    logger.info(
        "detkit %s, torch %s, python %s; device %s (GPU: %s), %d process(es), %d CPU threads "
        "(OMP_WAIT_POLICY=%s), float32 matmul precision %s",
        __version__,
        torch.__version__,
        platform.python_version(),
        ctx.device,
        gpu,
        ctx.world_size,
        torch.get_num_threads(),
        os.environ.get("OMP_WAIT_POLICY", "unset"),
        torch.get_float32_matmul_precision(),  # "high" after enable_tf32
    )
    if cfg.source_file:
        logger.info("config: %s", cfg.source_file)


def _check_fresh_output(out: Path, resume: bool) -> None:
    existing = Checkpointer(out).resume_candidates()
    if existing and not resume:
        raise WriteError(
            f"{out} already holds checkpoints ({existing[0].name}); pass --resume to continue "
            "that run, or choose another --output-dir"
        )


def train_main(cfg, output_dir: Optional[str] = None, resume: bool = False) -> Dict[str, Any]:
    """Train with ``cfg`` into ``output_dir`` (default ``cfg.output_dir``); returns the final metrics.

    While it runs, the signals of ``solver.stop_signals`` stop the run after the current iteration
    with ``last.pth`` written at it (``engine/preemption.py``): ``TrainingStopped`` is raised; the
    previous signal handlers are restored when it returns or raises. With
    ``solver.stall_timeout_minutes`` a watchdog thread (``engine/watchdog.py``) ends the process
    when no iteration finishes for that long."""
    out = Path(output_dir or cfg.output_dir).absolute()
    cfg = cfg.with_overrides({"output_dir": str(out)})
    ensure_output_dir(out)  # a folder that cannot be written: one line now, not at a checkpoint
    setup_logging(str(out), rank=int(os.environ.get("RANK", "0")))
    ctx = init_distributed()
    try:
        _log_environment(ctx, cfg)
        run_on_all_ranks(lambda: _check_fresh_output(out, resume), "checking the output folder")
        if resume:
            limits = int(cfg.solver.max_iter), float(cfg.solver.max_time_minutes)
            # rank 0's folder decides, so that every rank returns here or none does
            done = broadcast_object(finished_run(out, *limits) if ctx.is_main else None)
            if done is not None:
                return done
        if ctx.is_main:
            Checkpointer(out).remove_stale_temporaries()
            cfg.dump(out / "config.yaml")
            logger.info("resolved config written to %s", out / "config.yaml")
        minutes = float(cfg.solver.stall_timeout_minutes)
        stop, watchdog = StopSignals(cfg.solver.stop_signals), StallWatchdog(minutes, ctx.rank)
        with stop, watchdog:
            hooks = default_hooks(cfg, stop=stop, watchdog=watchdog)
            trainer = Trainer(cfg, str(out), ctx, resume=resume, hooks=hooks)
            return trainer.train()
    finally:
        cleanup_distributed()


def default_test_dir(weights: str, backend: str = "eager") -> Path:
    """Where ``evaluate_main`` writes without ``output_dir``: next to the weights it evaluated,
    ``<weights folder>/test_<weights file stem>`` (``_<backend>`` added for a backend other than
    eager), so that each weights file (and backend) has its own folder."""
    path = Path(weights).absolute()
    suffix = "" if backend == "eager" else f"_{backend}"
    return path.parent / f"test_{path.stem}{suffix}"


def _check_analysis_options(score_thresh: Optional[float], iou_thresh: float) -> None:
    if score_thresh is not None and not 0.0 <= float(score_thresh) <= 1.0:
        raise ConfigError(f"--analyze-score-thresh must be in [0, 1], got {score_thresh}")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ConfigError(f"--analyze-iou must be in (0, 1], got {iou_thresh}")


def evaluate_main(
    cfg,
    weights: str,
    output_dir: Optional[str] = None,
    backend: str = "eager",
    *,
    analyze: bool = False,
    analyze_score_thresh: Optional[float] = None,
    analyze_iou: float = 0.5,
) -> Dict[str, Any]:
    """Predict the test split with ``weights`` through ``backend`` (``detkit.inference.backends``:
    eager or onnxruntime), evaluate, write results, metrics and the log into ``output_dir``
    (default: :func:`default_test_dir`, next to the weights); returns the metrics.

    ``analyze``: then (rank 0) the error analysis of these results into ``<output_dir>/analysis/``
    (``detkit.analysis``; galleries of the dataset's image files), with the confusion matrix at
    ``analyze_score_thresh`` (None: the best-F1 score) and ``analyze_iou``."""
    if not os.path.isfile(weights):
        raise CheckpointError(f"checkpoint not found: {weights}")
    if analyze:
        _check_analysis_options(analyze_score_thresh, analyze_iou)
    out = Path(output_dir).absolute() if output_dir else default_test_dir(weights, backend)
    try:
        ensure_output_dir(out)
    except WriteError as e:
        if output_dir:
            raise
        raise WriteError(f"{e} (the folder next to the weights; pass --output-dir)") from None
    setup_logging(str(out), rank=int(os.environ.get("RANK", "0")))
    ctx = init_distributed()
    try:
        _log_environment(ctx, cfg)
        logger.info("evaluating %s; results go to %s", weights, out)
        # before the dataset is built: a backend that cannot run this config fails in one line now
        run_on_all_ranks(
            lambda: check_backend(cfg, backend, ctx.device), "checking the inference backend"
        )
        dataset = build_dataset_main_first(cfg, "test", ctx)
        model = build_model(cfg, list(dataset.class_names)).to(ctx.device)
        extra = load_model_weights(model, weights, strict=True)
        saved_names = extra.get("class_names")
        if saved_names and list(saved_names) != list(dataset.class_names):
            logger.warning(
                "the checkpoint was trained on classes %s but the test set has %s",
                saved_names[:5],
                list(dataset.class_names)[:5],
            )
        evaluator = build_evaluator(
            dataset, output_dir=str(out) if ctx.is_main else None, engine=cfg.test.evaluator_engine
        )
        coco = dataset.evaluator_type == "coco"  # the COCO evaluator writes coco_results.json
        recorder = RecordingEvaluator(evaluator, keep_results=not coco)
        # the inference the trainer's evaluation runs (eager: multi-scale / flip testing when
        # test.scales / test.flip ask, autocast per test.precision), or the exported graph
        predictor = make_predictor(model, cfg, backend, weights=weights)
        _log_predictor(predictor, cfg, backend)
        batched = with_test_batch(cfg, ctx.device)
        if cfg.test.ims_per_batch == "auto" and batched.test.ims_per_batch > 1:
            logger.info(
                "test.ims_per_batch=%d: that many images side by side (test.parallel_images)",
                batched.test.ims_per_batch,
            )
        loader = build_test_loader(batched, dataset, ctx.rank, ctx.world_size)
        metrics = run_inference(predictor, loader, recorder, desc="test")
        image_ids, results = recorder.gather()  # every rank: a collective
        if ctx.is_main:
            if not coco:
                logger.info("raw results written to %s", write_json(results, out / "results.json"))
            logger.info("test results (metrics.json, raw detections, log.txt) are in %s", out)
            if analyze:
                _analyze(
                    dataset,
                    out,
                    image_ids,
                    results,
                    coco,
                    weights,
                    analyze_score_thresh,
                    analyze_iou,
                )
        return metrics
    finally:
        cleanup_distributed()


def _analyze(dataset, out: Path, image_ids, results, coco: bool, weights, score_thresh, iou):
    """The error analysis of the results in ``out`` into ``out/analysis`` (rank 0)."""
    try:
        analyze_dataset(  # logs where report.html is
            dataset,
            out / "analysis",
            image_ids,
            coco_results=out / "coco_results.json" if coco else None,
            results=results,
            score_thresh=score_thresh,
            iou_thresh=iou,
            results_name=str(weights),
        )
    except ValueError as e:  # the readers' checks of the ground truth and results
        raise DataError(
            f"the error analysis (--analyze) failed: {e}; the evaluation's results are written "
            f"in {out}"
        ) from None


def _log_predictor(predictor, cfg, backend: str) -> None:
    """One line on what runs the test: the backend (the graph file for onnxruntime), and for the
    eager backend its test-time augmentation and precision."""
    if backend != "eager":
        logger.info("backend: %s (graph %s)", backend, predictor.path)
        return
    if cfg.test.scales or cfg.test.flip:
        logger.info(
            "test-time augmentation: scales %s, flip %s, merge %s",
            list(cfg.test.scales) or [cfg.input.min_size_test],
            cfg.test.flip,
            cfg.test.merge,
        )
    # AutocastPredictor's precision
    logger.info("backend: eager; test precision: %s", getattr(predictor, "precision", "fp32"))


__all__ = ["LAST", "WriteError", "default_test_dir", "enable_tf32", "evaluate_main", "train_main"]
