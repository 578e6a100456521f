"""The training loop: one optimizer step per iteration, on 1..N processes (DDP), resumable exactly.

An iteration runs ``solver.accumulate`` micro-batches of ``ims_per_batch / (world_size * accumulate)``
images per process, checks every loss term for NaN/Inf on every rank *before* the backward pass
(all ranks agree through one all-reduce, so they stop together instead of hanging in DDP's gradient
all-reduce), then clips and steps. Iterations are numbered 1..max_iter in logs and file names; a
checkpoint taken after N iterations is ``model_{N:07d}.pth`` and resumes at iteration N + 1.

Everything around the step is a hook (``engine/hooks.py``): the time budget, the log, periodic
checkpoints, evaluations and ``best.pth``, the final files. The trainer holds the state they share
and checkpoint (model, optimizer, schedule, best, evaluation history, the time budget).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from detkit.checkpoint import init_from_config
from detkit.data import build_dataset, build_test_loader, build_train_loader
from detkit.errors import ConfigError, TrainingError
from detkit.evaluation import build_evaluator
from detkit.inference.parallel import ParallelImages, resolve_parallel_images, with_test_batch
from detkit.inference.predictor import build_predictor
from detkit.modeling.build import build_model, check_backbone_init
from detkit.modeling.precision import autocast, training_precision
from detkit.utils.rng import get_rng_state, preserve_rng, seed_all, set_rng_state

from .budget import MEASURE_ITERS, TimeBudget
from .checkpoint import (
    Checkpointer,
    load_latest_on_all_ranks,
    load_model_weights,
    non_finite_tensors,
)
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    mean_over_ranks,
    reduce_flag,
    run_on_all_ranks,
    wrap_ddp,
)
from .events import EventWriter
from .hooks import Hook, default_hooks
from .inference import bar_interval, run_inference
from .reporting import check_world_size_change, divergence_advice, warn_config_changes
from .solver import build_solver, check_solver, clip_and_step, micro_batch_size

logger = logging.getLogger("detkit")

# when solver.max_time_minutes measures the training speed (see engine/budget.py); read when a
# Trainer is built, so a test can shorten it
BUDGET_MEASURE_ITERS = MEASURE_ITERS

__all__ = ["RecordingEvaluator", "Trainer", "build_dataset_main_first", "run_on_all_ranks"]


def build_dataset_main_first(cfg, split: str, ctx: DistContext):
    """Rank 0 builds first (it may generate or index data), the others after it, from its files. A
    dataset error on rank 0 (e.g. a missing folder) is raised on every rank."""
    dataset = run_on_all_ranks(
        lambda: build_dataset(cfg, split) if ctx.is_main else None, f"building the {split} dataset"
    )
    return dataset if ctx.is_main else build_dataset(cfg, split)


class RecordingEvaluator:
    """Wraps an evaluator and keeps the ids of the images it was given and, with ``keep_results``,
    the raw predictions as COCO-style result dicts (for datasets whose evaluator does not write
    them itself, e.g. VOC: ``category_id`` = detkit label + 1, ``bbox`` XYWH in original-image
    pixels): what tools/test.py writes to ``results.json`` and the error analysis reads."""

    def __init__(self, evaluator, keep_results: bool = True):
        self.evaluator = evaluator
        self.keep_results = keep_results
        self.image_ids: List[int] = []
        self.results: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self.evaluator.reset()
        self.image_ids, self.results = [], []

    def process(self, samples, outputs) -> None:
        self.evaluator.process(samples, outputs)
        for s, o in zip(samples, outputs):
            self.image_ids.append(int(s["image_id"]))
            if not self.keep_results:
                continue
            for box, score, label in zip(
                o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist()
            ):
                self.results.append(
                    {
                        "image_id": int(s["image_id"]),
                        "category_id": int(label) + 1,
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": float(score),
                    }
                )

    def evaluate(self):
        return self.evaluator.evaluate()

    def gather(self) -> Tuple[List[int], List[Dict[str, Any]]]:
        """The image ids and results of every process (a collective: every rank calls it)."""
        ids = [i for part in all_gather_objects(self.image_ids) for i in part]
        if not self.keep_results:
            return ids, []
        return ids, [r for part in all_gather_objects(self.results) for r in part]


class Trainer:
    # times iterations, evaluations and setup for the time budget; tests replace it with a fake
    clock = staticmethod(time.perf_counter)

    def __init__(
        self,
        cfg,
        output_dir: str,
        ctx: DistContext,
        resume: bool = False,
        hooks: Optional[List[Hook]] = None,
    ):
        started = self.clock()  # building the datasets (generation included) counts in the budget
        check_solver(cfg)
        self.cfg, self.out, self.ctx = cfg, Path(output_dir), ctx
        s = cfg.solver
        self.max_iter, self.accumulate = int(s.max_iter), int(s.accumulate)
        self.micro_batch = micro_batch_size(int(s.ims_per_batch), self.accumulate, ctx.world_size)
        self.precision = training_precision(cfg, ctx.device)  # fp32, or solver.amp_dtype on CUDA
        if s.amp and self.precision == "fp32":
            logger.warning(
                "solver.amp is ignored on CPU (mixed precision needs CUDA); training in float32"
            )
        seed_all(s.seed)  # the same initial weights on every rank
        self.train_set = build_dataset_main_first(cfg, "train", ctx)
        self.class_names = list(self.train_set.class_names)
        check_backbone_init(cfg)  # no FrozenBN backbone trained from random weights
        self.model = init_from_config(build_model(cfg, self.class_names), cfg).to(ctx.device)
        if cfg.model.weights:
            load_model_weights(self.model, cfg.model.weights, strict=False)
        self.optimizer, self.scheduler = build_solver(self.model, s)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.checkpointer = Checkpointer(self.out, keep=s.keep_checkpoints)
        self.budget = TimeBudget(
            s.max_time_minutes,
            s.max_iter,
            eval_period=s.eval_period,
            measure_iters=BUDGET_MEASURE_ITERS,
            average=mean_over_ranks,  # every rank takes the same decisions
        )
        self.start_iter, self.best, self.eval_history = 0, None, []
        self.last_saved: Optional[int] = None  # iteration of the newest checkpoint (last.pth)
        self.bar: Optional[tqdm] = None  # the progress bar, while training
        rng = self._resume() if resume else None
        self.ddp = wrap_ddp(self.model, ctx)
        start = self.start_iter * self.accumulate  # micro-batches this rank has already seen
        self.loader = build_train_loader(
            cfg, self.train_set, ctx.rank, ctx.world_size, start_batch=start
        )
        if rng is not None:
            set_rng_state(rng)  # last: nothing after this may draw random numbers before training
        else:
            seed_all(s.seed + ctx.rank)  # ranks draw different RPN/RoI samples
        self._eval_sets: Dict[str, Any] = {}
        self.writer: Optional[EventWriter] = None
        self.step_values: Dict[str, float] = {}  # the newest iteration's lr, seconds and losses
        self.final_metrics: Dict[str, Any] = {}
        # rank 0, after the final evaluation with test.analyze: what the error analysis reads
        self.final_eval: Optional[Dict[str, Any]] = None
        self.hooks: List[Hook] = []
        self.register_hooks(default_hooks(cfg) if hooks is None else hooks)
        self.budget.setup_seconds += self.clock() - started

    def register_hooks(self, hooks: List[Hook]) -> None:
        """Add ``hooks``, to run after those already registered, in their order."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def call_hooks(self, point: str, *args) -> None:
        """``point`` (before_train, after_step, after_eval, after_train) of every hook, in order."""
        for hook in self.hooks:
            getattr(hook, point)(*args)

    def set_max_iter(self, max_iter: int) -> None:
        """Move the end of the run (the time budget does); the lr schedule is rescaled to end there."""
        self.max_iter = max_iter
        if self.scheduler.max_iter != max_iter:
            self.scheduler.rescale(max_iter)
        if self.bar is not None and self.bar.total != max_iter:
            self.bar.total = max_iter
            self.bar.refresh()

    # ------------------------------------------------------------------ checkpoints
    def _state(self, iteration: int) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": iteration,
            "rng": all_gather_objects(get_rng_state()),
            "world_size": self.ctx.world_size,
            "data": {
                "seed": int(self.cfg.solver.seed),
                "batches_per_rank": iteration * self.accumulate,
                "micro_batch": self.micro_batch,
            },
            "best": self.best,
            "eval_history": self.eval_history,
            "time_budget": self.budget.state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": self.class_names,
        }

    def save_checkpoint(self, iteration: int) -> None:
        """The full training state as ``model_<iteration>.pth`` and ``last.pth``."""
        # a collective (the RNG states of all ranks): every rank builds it
        state = self._state(iteration)
        run_on_all_ranks(
            lambda: self.checkpointer.save(state, iteration) if self.ctx.is_main else None,
            "writing the checkpoint",
        )
        self.last_saved = iteration

    def save_weights(self, name: str, iteration: int, metrics: Optional[Dict] = None) -> None:
        """The weights alone (``best.pth``, ``model_final.pth``), with the config and metrics."""
        weights = {
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": self.class_names,
            "iteration": iteration,
            "metrics": metrics,
        }
        run_on_all_ranks(
            lambda: self.checkpointer.save_named(weights, name) if self.ctx.is_main else None,
            f"writing {name}",
        )

    def _resume(self) -> Optional[Dict[str, Any]]:
        found = load_latest_on_all_ranks(self.checkpointer)
        if found is None:
            logger.warning("--resume: no checkpoint in %s; starting from scratch", self.out)
            return None
        state, path = found
        saved_opt = (state.get("config") or {}).get("solver", {}).get("optimizer", "SGD")
        if str(saved_opt) != str(self.cfg.solver.optimizer):
            raise ConfigError(
                f"--resume: {path} was trained with solver.optimizer={saved_opt}, this run asks "
                f"for {self.cfg.solver.optimizer}: its optimizer state cannot continue; resume with "
                f"solver.optimizer={saved_opt}, or start a new run (another --output-dir) with "
                "model.weights pointing at the checkpoint"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # before the scheduler: a budget that shortened the run rescales it
        self.set_max_iter(self.budget.load_state_dict(state.get("time_budget")))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_iter = self.last_saved = int(state["iteration"])
        self.best, self.eval_history = state.get("best"), list(state.get("eval_history", []))
        warn_config_changes(state.get("config", {}), self.cfg.to_dict())
        logger.info(
            "resumed from %s (iteration %d, the newest readable checkpoint with finite weights): "
            "continuing at iteration %d of %d",
            path,
            self.start_iter,
            self.start_iter + 1,
            self.max_iter,
        )
        rngs = state.get("rng") or []
        saved_world = state.get("world_size")
        if saved_world is not None and int(saved_world) != self.ctx.world_size:
            check_world_size_change(
                self.cfg,
                path,
                state,
                int(saved_world),
                self.ctx.world_size,
                self.micro_batch,
                self.accumulate,
                self.start_iter,
            )
            return None
        if saved_world is None or len(rngs) != self.ctx.world_size:
            logger.warning(
                "%s does not record the number of processes that wrote it (an older checkpoint); "
                "now %d: random states reseeded, the data stream re-sharded (the run continues, "
                "but not bit-identically)",
                path,
                self.ctx.world_size,
            )
            return None
        return rngs[self.ctx.rank]

    # ------------------------------------------------------------------ one iteration
    def forward_losses(self, batch: List[dict]) -> Dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (in the training precision)."""
        with autocast(self.ctx.device, self.precision):
            return self.ddp(batch)

    def _check_losses(
        self, iteration: int, values: Optional[Dict[str, float]], error: Optional[BaseException]
    ) -> None:
        """One all-reduce per micro-batch: did any rank fail, or see a non-finite loss? Then every
        rank raises at the same point instead of leaving the others in a collective."""
        bad = {} if values is None else {k: v for k, v in values.items() if not math.isfinite(v)}
        flags = all_reduce_sum(torch.tensor([float(error is not None), float(bool(bad))]))
        if flags[0] > 0:
            if error is not None:
                raise error
            raise RuntimeError(f"iteration {iteration}: another rank failed; see that rank's log")
        if flags[1] > 0:
            found = all_gather_objects(bad)
            terms = ", ".join(
                f"{k}={v}" + (f" (rank {r})" if len(found) > 1 else "")
                for r, b in enumerate(found)
                for k, v in sorted(b.items())
            )
            self._diverged(f"non-finite loss at iteration {iteration}: {terms}")

    def _diverged(self, message: str) -> None:
        self.checkpointer.disable(f"training diverged ({message})")
        advice = divergence_advice(self.cfg, self.out, self.last_saved)
        raise TrainingError(f"{message}. Training stopped; {advice}")

    def _check_weights(self, iteration: int) -> None:
        """A finite loss can still give a non-finite update (a NaN/Inf gradient, an lr too large
        for the gradient): stop before any checkpoint or evaluation sees such weights. DDP keeps
        the weights equal on every rank; the flag is reduced anyway so no rank can stop alone."""
        named = itertools.chain(self.model.named_parameters(), self.model.named_buffers())
        bad = non_finite_tensors(named)
        if reduce_flag(bool(bad)):
            where = f"{len(bad)} tensor(s), e.g. {bad[:3]}" if bad else "on another rank"
            self._diverged(
                f"non-finite weights after the update of iteration {iteration} (its loss was "
                f"finite): {where}"
            )

    def run_step(self, iteration: int, data_iter) -> Dict[str, float]:
        """One optimizer step (``accumulate`` micro-batches); returns this rank's mean loss values."""
        totals: Dict[str, float] = {"data_time": 0.0}
        for micro in range(self.accumulate):
            last = micro == self.accumulate - 1
            # gradients are all-reduced only in the last micro-batch's backward
            with (
                contextlib.nullcontext() if last or not self.ctx.distributed else self.ddp.no_sync()
            ):
                values, error, t0 = None, None, time.perf_counter()
                try:
                    batch = next(data_iter)
                    totals["data_time"] += time.perf_counter() - t0
                    losses = self.forward_losses(batch)
                    names = sorted(losses)
                    stacked = (
                        torch.stack([losses[k].detach().float() for k in names]).cpu().tolist()
                    )
                    values = dict(zip(names, stacked))
                except Exception as e:  # raised by _check_losses, once every rank knows
                    error = e
                self._check_losses(iteration, values, error)
                self.scaler.scale(sum(losses.values()) / self.accumulate).backward()
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v / self.accumulate
        if not clip_and_step(self.optimizer, self.scaler, float(self.cfg.solver.clip_grad_norm)):
            # gradients are all-reduced, so every rank sees the same norm and stops together
            self._diverged(f"non-finite gradient norm at iteration {iteration}")
        self._check_weights(iteration)
        return totals

    # ------------------------------------------------------------------ evaluation
    def eval_split(self) -> Optional[str]:
        """The split evaluations run on: val, else test, else None."""
        for split in ("val", "test"):
            if self.cfg.data[split].datasets:
                return split
        return None

    def evaluate(self, iteration: int, final: bool = False) -> Optional[Dict[str, Any]]:
        """The metrics of the current weights on the evaluation split (None without one); the
        final evaluation also writes its raw results under ``inference/`` and, with
        ``test.analyze``, keeps in ``final_eval`` what the error analysis reads."""
        split = self.eval_split()
        if split is None:
            logger.info("no data.val.datasets (nor data.test) configured: skipping evaluation")
            return None
        if split not in self._eval_sets:
            t0 = self.clock()
            self._eval_sets[split] = build_dataset_main_first(self.cfg, split, self.ctx)
            self.budget.setup_seconds += self.clock() - t0  # setup, not the evaluation's cost
        dataset = self._eval_sets[split]
        out = str(self.out / "inference") if final and self.ctx.is_main else None
        evaluator = build_evaluator(dataset, output_dir=out, engine=self.cfg.test.evaluator_engine)
        # the inference tools/test.py runs (test.scales/flip, test.precision; on the CPU images side
        # by side, one process), so that best.pth is the checkpoint that tests best
        predictor = build_predictor(self.model, self.cfg)
        images = (
            resolve_parallel_images(self.cfg, self.ctx.device) if self.ctx.world_size == 1 else 1
        )
        if images > 1:
            predictor = ParallelImages(predictor, images)
        cfg = with_test_batch(self.cfg, self.ctx.device, images)
        loader = build_test_loader(cfg, dataset, self.ctx.rank, self.ctx.world_size)
        record = final and bool(self.cfg.test.analyze)  # the error analysis needs what was seen
        if record:
            evaluator = RecordingEvaluator(evaluator, keep_results=dataset.evaluator_type != "coco")
        with preserve_rng():  # evaluating must not change the training run that follows
            metrics = run_inference(
                predictor, loader, evaluator, desc=f"eval {split} @ {iteration}"
            )
        if record:
            image_ids, results = evaluator.gather()
            if self.ctx.is_main:
                self.final_eval = {
                    "dataset": dataset,
                    "image_ids": image_ids,
                    "results": results,  # VOC-style datasets; COCO's are in coco_results.json
                    "coco_results": self.out / "inference" / "coco_results.json",
                    "iteration": iteration,
                }
        return metrics

    # ------------------------------------------------------------------ the loop
    def train(self) -> Dict[str, Any]:
        """Train from ``start_iter`` to ``max_iter``, then the hooks' end (final checkpoint,
        evaluation and files); returns the final metrics (``{}`` without a validation set)."""
        self.writer = EventWriter(self.out, enabled=self.ctx.is_main, start_iter=self.start_iter)
        self.bar = tqdm(
            total=self.max_iter,
            initial=self.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not self.ctx.is_main,
            mininterval=bar_interval(),
        )
        logger.info(
            "training iterations %d..%d in %s", self.start_iter + 1, self.max_iter, self.out
        )
        try:
            with self.bar:
                self.call_hooks("before_train")
                data_iter = iter(self.loader)
                try:
                    it = self.start_iter
                    while it < self.max_iter:  # the time budget may lower self.max_iter on the way
                        it += 1
                        t0 = self.clock()
                        lr = self.scheduler.step(it - 1)
                        values = self.run_step(it, data_iter)
                        self.step_values = {"lr": lr, "sec_per_iter": self.clock() - t0, **values}
                        self.bar.update(1)
                        self.call_hooks("after_step", it)
                finally:
                    # stops the loader workers: before the final evaluation, and now when a hook (a
                    # stop signal) or an error ends the run, not at interpreter exit
                    del data_iter
                    self.loader = None
            self.call_hooks("after_train")
        finally:
            self.writer.close()
        return self.final_metrics
