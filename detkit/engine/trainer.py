"""The training loop: one optimizer step per iteration, on 1..N processes (DDP), resumable exactly.

An iteration runs ``solver.accumulate`` micro-batches of ``ims_per_batch / (world_size * accumulate)``
images per process, checks every loss term for NaN/Inf on every rank *before* the backward pass
(all ranks agree through one all-reduce, so they stop together instead of hanging in DDP's gradient
all-reduce), then clips and steps. Iterations are numbered 1..max_iter in logs and file names; a
checkpoint taken after N iterations is ``model_{N:07d}.pth`` and resumes at iteration N + 1.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from detkit.checkpoint import init_from_config
from detkit.data import build_dataset, build_test_loader, build_train_loader
from detkit.errors import ConfigError, TrainingError
from detkit.evaluation import build_evaluator
from detkit.inference.parallel import ParallelImages, batch_side_by_side, resolve_parallel_images
from detkit.inference.predictor import build_predictor
from detkit.modeling.build import build_model, check_backbone_init
from detkit.modeling.precision import autocast, training_precision
from detkit.utils.rng import get_rng_state, preserve_rng, seed_all, set_rng_state

from .checkpoint import BEST, FINAL, LAST, Checkpointer, load_model_weights, non_finite_tensors
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    get_world_size,
    raise_if_any_rank_failed,
    reduce_flag,
    wrap_ddp,
)
from .events import EventWriter, SmoothedScalars, plot_curves
from .inference import bar_interval, primary_metric, run_inference, scalar_metrics
from .reporting import final_report, log_step, progress_postfix, step_record
from .solver import WarmupSchedule, build_optimizer, check_solver, scaled_base_lr

logger = logging.getLogger("detkit")

# solver.max_time_minutes becomes an iteration count after the first 20 timed iterations, and is
# measured again 100 iterations later at the steady speed (the first ones include the process warming
# up, often 20-30% slower): the second estimate may raise max_iter again, up to solver.max_iter
BUDGET_MEASURE_ITERS = (20, 120)


def build_dataset_main_first(cfg, split: str, ctx: DistContext):
    """Rank 0 builds first (it may generate or index data), the others after it, from its files. A
    dataset error on rank 0 (e.g. a missing folder) is raised on every rank."""
    dataset = run_on_all_ranks(
        lambda: build_dataset(cfg, split) if ctx.is_main else None, f"building the {split} dataset"
    )
    return dataset if ctx.is_main else build_dataset(cfg, split)


def run_on_all_ranks(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on every rank; if it fails on any rank, raise on every rank (no rank is left
    waiting in a collective for one that died)."""
    error: Optional[BaseException] = None
    try:
        result = fn()
    except Exception as e:  # re-raised below, after the other ranks have heard of it
        error, result = e, None
    raise_if_any_rank_failed(error, what)  # the other ranks raise TrainingError quoting it
    return result


class Trainer:
    _clock = staticmethod(
        time.perf_counter
    )  # times iterations (and the time budget); tests fake it

    def __init__(self, cfg, output_dir: str, ctx: DistContext, resume: bool = False):
        started = self._clock()  # building the datasets (generation included) counts in the budget
        check_solver(cfg)
        self.cfg, self.out, self.ctx = cfg, Path(output_dir), ctx
        s = cfg.solver
        self.max_iter, self.accumulate = int(s.max_iter), int(s.accumulate)
        self.micro_batch = self._micro_batch_size(
            int(s.ims_per_batch), int(s.accumulate), ctx.world_size
        )
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
        lr = scaled_base_lr(s.base_lr, s.ims_per_batch, s.reference_batch_size)
        self.optimizer = build_optimizer(
            self.model,
            base_lr=lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            weight_decay_norm=s.weight_decay_norm,
            optimizer=s.optimizer,
        )
        self.scheduler = WarmupSchedule(
            self.optimizer,
            base_lr=lr,
            max_iter=self.max_iter,
            schedule=s.lr_schedule,
            steps=s.steps,
            gamma=s.gamma,
            warmup_iters=s.warmup_iters,
            warmup_factor=s.warmup_factor,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.checkpointer = Checkpointer(self.out, keep=s.keep_checkpoints)
        self.start_iter, self.best, self.eval_history = 0, None, []
        # solver.max_time_minutes: seconds spent so far on training steps, periodic evaluations and
        # setup, and how many times the speed has been measured (self.max_iter set from it)
        self.budget_s = float(s.max_time_minutes) * 60.0
        self.train_seconds, self.budget_stage = 0.0, 0
        self.eval_seconds, self.evals = 0.0, 0  # periodic evaluations: they count too
        self.setup_seconds = 0.0  # building the datasets and the model (this process and earlier)
        self.sec_per_iter: Optional[float] = None  # the newest measured training speed
        self._first_it: Optional[int] = None  # the first iteration this process timed
        self._since: Optional[tuple] = None  # (iteration, train_seconds) the next speed starts from
        self.last_saved: Optional[int] = None  # iteration of the newest checkpoint (last.pth)
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
        self.setup_seconds += self._clock() - started

    @staticmethod
    def _micro_batch_size(total: int, accumulate: int, world_size: int) -> int:
        if accumulate < 1 or total % (world_size * accumulate):
            raise ConfigError(
                f"solver.ims_per_batch={total} must be divisible by the number of processes "
                f"({world_size}) x solver.accumulate ({accumulate})"
            )
        per = total // (world_size * accumulate)
        logger.info(
            "batch: %d images per step = %d processes x %d accumulation steps x %d images",
            total,
            world_size,
            accumulate,
            per,
        )
        return per

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
            "time_budget": self._budget_state(),
            "config": self.cfg.to_dict(),
            "class_names": self.class_names,
        }

    def save_checkpoint(self, iteration: int) -> None:
        state = self._state(
            iteration
        )  # a collective (RNG states of all ranks): every rank builds it
        run_on_all_ranks(
            lambda: self.checkpointer.save(state, iteration) if self.ctx.is_main else None,
            "writing the checkpoint",
        )
        self.last_saved = iteration

    def _weights_only(self, iteration: int, metrics: Optional[Dict] = None) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": self.class_names,
            "iteration": iteration,
            "metrics": metrics,
        }

    def _resume(self) -> Optional[Dict[str, Any]]:
        found = self.checkpointer.load_latest()
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
        self._resume_budget(state.get("time_budget"))  # before the scheduler: it may shorten it
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_iter = self.last_saved = int(state["iteration"])
        self.best, self.eval_history = state.get("best"), list(state.get("eval_history", []))
        _warn_config_changes(state.get("config", {}), self.cfg.to_dict())
        logger.info(
            "resumed from %s (iteration %d, the newest readable checkpoint with finite weights): "
            "continuing at iteration %d of %d",
            path,
            self.start_iter,
            self.start_iter + 1,
            self.max_iter,
        )
        rngs = state.get("rng") or []
        if state.get("world_size") != self.ctx.world_size or len(rngs) != self.ctx.world_size:
            logger.warning(
                "checkpoint written by %s processes, now %d: random states reseeded, the data stream "
                "re-sharded (the run continues, but not bit-identically)",
                state.get("world_size"),
                self.ctx.world_size,
            )
            return None
        return rngs[self.ctx.rank]

    # ------------------------------------------------------------------ time budget
    def _budget_state(self) -> Dict[str, Any]:
        s = self.cfg.solver
        return {
            "max_time_minutes": float(s.max_time_minutes),
            "solver_max_iter": int(s.max_iter),
            "max_iter": self.max_iter,  # the effective one
            "applied": self.budget_stage > 0,
            "stage": self.budget_stage,  # measurements made (of len(BUDGET_MEASURE_ITERS))
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,  # of the periodic evaluations
            "setup_seconds": self.setup_seconds,  # building datasets and model
            "evals": self.evals,
            "sec_per_iter": self.sec_per_iter,
        }

    def _resume_budget(self, saved: Optional[Dict[str, Any]]) -> None:
        """Continue the checkpoint's time budget: its effective max_iter when solver.max_iter and
        solver.max_time_minutes are unchanged (a resumed run ends where the uninterrupted one would),
        else the new values, measured again, with the time already spent counted."""
        if not saved or self.budget_s <= 0:
            return
        self.train_seconds = float(saved.get("train_seconds", 0.0))
        self.eval_seconds = float(saved.get("eval_seconds", 0.0))
        self.setup_seconds += float(saved.get("setup_seconds", 0.0))
        self.evals = int(saved.get("evals", 0))
        s = self.cfg.solver
        same = saved.get("max_time_minutes") == float(s.max_time_minutes) and saved.get(
            "solver_max_iter"
        ) == int(s.max_iter)
        if same and saved.get("applied"):
            # a checkpoint between the two measurements keeps the first and measures the second again
            self.budget_stage = int(saved.get("stage", len(BUDGET_MEASURE_ITERS)))
            self.sec_per_iter = saved.get("sec_per_iter")
            self._set_max_iter(int(saved["max_iter"]))
        elif saved.get("applied"):
            logger.warning(
                "--resume: solver.max_iter / solver.max_time_minutes changed since the checkpoint "
                "(which stopped at max_iter=%d): the time budget is measured again",
                int(saved["max_iter"]),
            )

    def _set_max_iter(self, max_iter: int) -> None:
        self.max_iter = max_iter
        if self.scheduler.max_iter != max_iter:
            self.scheduler.rescale(max_iter)

    def _seconds(self) -> tuple:
        """(training, periodic-evaluation, setup) seconds, averaged over the ranks: every rank takes
        the same decisions."""
        spent = torch.tensor(
            [self.train_seconds, self.eval_seconds, self.setup_seconds], dtype=torch.float64
        )
        if get_world_size() > 1:
            spent = all_reduce_sum(spent) / get_world_size()
        return tuple(float(v) for v in spent)

    def _fits(self, it: int, spent: float, per_iter: float, eval_s: float) -> int:
        """The largest max_iter in [it, solver.max_iter] whose remaining iterations, periodic
        evaluations and final evaluation fit in what is left of the budget after ``spent``."""
        limit, period = int(self.cfg.solver.max_iter), int(self.cfg.solver.eval_period)

        def cost(n: int) -> float:
            evals = (n - 1) // period - it // period if period > 0 and n > it else 0
            return spent + (n - it) * per_iter + eval_s * (max(evals, 0) + 1)

        lo, hi = it, max(limit, it)
        while lo < hi:  # cost grows with n: the last n that fits
            mid = (lo + hi + 1) // 2
            if cost(mid) <= self.budget_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _apply_budget(self, new: int, why: str, bar=None) -> None:
        logger.info(
            "solver.max_time_minutes=%g: max_iter %d -> %d (%s; lr schedule rescaled to end there)",
            self.cfg.solver.max_time_minutes,
            self.max_iter,
            new,
            why,
        )
        self.budget_stage = max(self.budget_stage, 1)
        self._set_max_iter(new)
        if bar is not None:
            bar.total = new
            bar.refresh()

    def _check_budget(self, it: int, bar=None) -> None:
        """After iteration ``it``: turn solver.max_time_minutes into an iteration count once the first
        BUDGET_MEASURE_ITERS[0] iterations are timed, and again at BUDGET_MEASURE_ITERS[1] from the
        iterations since (the steady speed; it may raise max_iter up to solver.max_iter). Building the
        datasets counts, and the periodic and final evaluations once the first has been timed
        (``_budget_after_eval``). The lr schedule is rescaled each time, so it still ends properly.
        If the budget runs out (or the machine slows down later), stop after this iteration."""
        if self.budget_s <= 0 or it >= self.max_iter:
            return
        train_s, eval_s, setup_s = self._seconds()
        if self._since is None:
            # the first iteration (lazy initialisation; after --resume, the first one again) is not a
            # fair sample of the speed
            self._first_it, self._since = it, (it, train_s)
        stage = self.budget_stage
        if train_s + eval_s + setup_s >= self.budget_s:
            minutes = (train_s + eval_s + setup_s) / 60
            self._apply_budget(it, f"the budget is spent after {minutes:.2f} min", bar)
        elif (
            stage < len(BUDGET_MEASURE_ITERS)
            and it - self._first_it >= BUDGET_MEASURE_ITERS[stage] - 1
        ):
            # the speed since the previous measurement (the second one: the steady speed)
            since_it, since_s = self._since
            per_iter = (train_s - since_s) / max(it - since_it, 1)
            self.budget_stage, self._since = stage + 1, (it, train_s)
            self.sec_per_iter = per_iter
            per_eval = eval_s / self.evals if self.evals else 0.0
            fits = self._fits(it, train_s + eval_s + setup_s, per_iter, per_eval)
            span = f"{per_iter:.3f} s per iteration over iterations {since_it + 1}..{it}"
            if fits != self.max_iter:
                self._apply_budget(fits, span, bar)
            else:
                logger.info(
                    "solver.max_time_minutes=%g: max_iter %d %s (%s)",
                    self.cfg.solver.max_time_minutes,
                    self.max_iter,
                    "kept" if fits < int(self.cfg.solver.max_iter) else "fits",
                    span,
                )

    def _budget_after_eval(self, it: int, seconds: float, bar=None) -> None:
        """A periodic evaluation took ``seconds``: count it, and fit max_iter again with the
        evaluations still to come (and the final one) at that cost."""
        if self.budget_s <= 0:
            return
        self.eval_seconds += seconds
        self.evals += 1
        if self.sec_per_iter is None or it >= self.max_iter:
            return
        train_s, eval_s, setup_s = self._seconds()
        per_eval = eval_s / self.evals
        fits = self._fits(it, train_s + eval_s + setup_s, self.sec_per_iter, per_eval)
        if fits != self.max_iter:
            self._apply_budget(fits, f"{per_eval:.1f} s per evaluation", bar)

    # ------------------------------------------------------------------ one iteration
    def _forward(self, batch: List[dict]) -> Dict[str, torch.Tensor]:
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
        raise TrainingError(f"{message}. Training stopped; {self._divergence_advice()}")

    def _divergence_advice(self) -> str:
        """What to run next, with the checkpoint it would continue from: the advice must work as
        written (no checkpoint with non-finite weights exists, so last.pth is a good one)."""
        s = self.cfg.solver
        fixes = (
            f"a lower solver.base_lr (now {s.base_lr:g}), a longer solver.warmup_iters "
            f"(now {s.warmup_iters}) or solver.clip_grad_norm > 0 (now {s.clip_grad_norm:g})"
        )
        if self.last_saved is None:
            return f"no checkpoint was written yet: start again with {fixes}"
        config = self.cfg.source_file or "CONFIG"
        return (
            f"no checkpoint was written after divergence. {self.out / LAST} (iteration "
            f"{self.last_saved}) has finite weights; continue from it with {fixes}, e.g. "
            f"python tools/train.py {config} [this run's overrides] --output-dir {self.out} "
            f"--resume solver.base_lr={s.base_lr / 2:g}"
        )

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
                    losses = self._forward(batch)
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
        self._optimizer_step(iteration)
        self._check_weights(iteration)
        return totals

    def _optimizer_step(self, iteration: int) -> None:
        clip = float(self.cfg.solver.clip_grad_norm)
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [
                p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            # gradients are all-reduced, so every rank sees the same norm and stops together
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                self._diverged(f"non-finite gradient norm at iteration {iteration}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ evaluation
    def _eval_split(self) -> Optional[str]:
        for split in ("val", "test"):
            if self.cfg.data[split].datasets:
                return split
        return None

    def evaluate(self, iteration: int, final: bool = False) -> Optional[Dict[str, Any]]:
        split = self._eval_split()
        if split is None:
            logger.info("no data.val.datasets (nor data.test) configured: skipping evaluation")
            return None
        if split not in self._eval_sets:
            t0 = self._clock()
            self._eval_sets[split] = build_dataset_main_first(self.cfg, split, self.ctx)
            self.setup_seconds += self._clock() - t0  # setup, not the evaluation's cost
        dataset = self._eval_sets[split]
        out = str(self.out / "inference") if final and self.ctx.is_main else None
        evaluator = build_evaluator(dataset, output_dir=out, engine=self.cfg.test.evaluator_engine)
        # the inference tools/test.py runs (test.scales/flip, test.precision; on the CPU images side
        # by side, one process), so that best.pth is the checkpoint that tests best
        predictor = build_predictor(self.model, self.cfg)
        images = resolve_parallel_images(self.cfg, self.ctx.device)
        if images > 1 and self.ctx.world_size == 1:
            predictor = ParallelImages(predictor, images)
        cfg = batch_side_by_side(self.cfg, predictor)
        loader = build_test_loader(cfg, dataset, self.ctx.rank, self.ctx.world_size)
        with preserve_rng():  # evaluating must not change the training run that follows
            metrics = run_inference(
                predictor, loader, evaluator, desc=f"eval {split} @ {iteration}"
            )
        self._track(iteration, split, metrics)
        return metrics

    def _track(self, iteration: int, split: str, metrics: Dict[str, Any]) -> None:
        key = primary_metric(metrics)
        record = {"iteration": iteration, "split": split, **scalar_metrics(metrics)}
        self.eval_history.append(record)
        if self.writer is not None:
            self.writer.write(
                iteration, {"split": split, **scalar_metrics(metrics)}, prefix=f"{split}/"
            )
        if key is None or (self.best is not None and metrics[key] <= self.best["value"]):
            return
        self.best = {
            "metric": key,
            "value": float(metrics[key]),
            "iteration": iteration,
            "split": split,
        }
        logger.info("new best %s %s = %.4f at iteration %d", split, key, metrics[key], iteration)
        weights = self._weights_only(iteration, scalar_metrics(metrics))
        run_on_all_ranks(
            lambda: self.checkpointer.save_named(weights, BEST) if self.ctx.is_main else None,
            "writing best.pth",
        )

    # ------------------------------------------------------------------ the loop
    def train(self) -> Dict[str, Any]:
        """Train from ``start_iter`` to ``max_iter``, evaluate, write the final files; returns the final
        metrics (``{}`` without a validation set)."""
        s = self.cfg.solver
        self.writer = EventWriter(self.out, enabled=self.ctx.is_main, start_iter=self.start_iter)
        smooth = SmoothedScalars(window=max(1, s.log_period))
        bar = tqdm(
            total=self.max_iter,
            initial=self.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not self.ctx.is_main,
            mininterval=bar_interval(),
        )
        data_iter = iter(self.loader)
        logger.info(
            "training iterations %d..%d in %s", self.start_iter + 1, self.max_iter, self.out
        )
        try:
            with bar:
                it = self.start_iter
                while it < self.max_iter:  # the time budget may lower self.max_iter on the way
                    it += 1
                    t0 = self._clock()
                    lr = self.scheduler.step(it - 1)
                    values = self.run_step(it, data_iter)
                    seconds = self._clock() - t0
                    self.train_seconds += seconds
                    smooth.update(lr=lr, sec_per_iter=seconds, **values)
                    bar.update(1)
                    self._check_budget(it, bar)
                    self._after_step(it, smooth, bar)
            del data_iter
            self.loader = None  # stops the loader workers before the final evaluation
            metrics = self.evaluate(self.max_iter, final=True) or {}
            self._finish(metrics)
        finally:
            self.writer.close()
        return metrics

    def _after_step(self, it: int, smooth: SmoothedScalars, bar) -> None:
        s = self.cfg.solver
        bar.set_postfix_str(
            progress_postfix(step_record(smooth.means(), s.ims_per_batch, self.ctx.device)),
            refresh=False,
        )
        if it % s.log_period == 0 or it == self.max_iter:
            record = step_record(
                _average_over_ranks(smooth.means()), s.ims_per_batch, self.ctx.device
            )
            self.writer.write(it, record, prefix="train/")
            log_step(it, self.max_iter, record)
        if s.eval_period > 0 and it % s.eval_period == 0 and it < self.max_iter:
            t0, setup = self._clock(), self.setup_seconds
            self.evaluate(it)  # the first one builds its dataset: counted as setup
            self._budget_after_eval(it, self._clock() - t0 - (self.setup_seconds - setup), bar)
        if it % s.checkpoint_period == 0 and it < self.max_iter:
            self.save_checkpoint(it)

    def _finish(self, metrics: Dict[str, Any]) -> None:
        self.save_checkpoint(self.max_iter)
        weights = self._weights_only(self.max_iter, scalar_metrics(metrics))
        run_on_all_ranks(
            lambda: self.checkpointer.save_named(weights, FINAL) if self.ctx.is_main else None,
            "writing model_final.pth",
        )
        if self.ctx.is_main:
            budget = self._budget_state() if self.budget_s > 0 else None
            final_report(
                self.out, metrics, self.eval_history, self.best, self.max_iter, time_budget=budget
            )
            path = plot_curves(self.out)
            if path:
                logger.info("loss and AP curves: %s", path)


def _average_over_ranks(values: Dict[str, float]) -> Dict[str, float]:
    if get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    all_reduce_sum(t)
    return {k: float(v) / get_world_size() for k, v in zip(keys, t.tolist())}


def _warn_config_changes(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> None:
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b and key != "output_dir":
            logger.warning("config %s%s differs from the checkpoint's: %r -> %r", prefix, key, a, b)
