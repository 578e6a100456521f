"""The parts of the training loop around the optimizer step: each is a :class:`Hook`.

The trainer calls every hook, in the order of its list, at four points:

- ``before_train()`` once, before the first iteration (after ``--resume`` has loaded its state);
- ``after_step(it)`` after each iteration ``it`` (``trainer.step_values`` holds its lr, seconds
  and mean losses);
- ``before_eval(it)`` before each periodic evaluation (and the one ``--resume`` runs first);
- ``after_eval(it, seconds)`` after each periodic evaluation (its cost, setup excluded);
- ``after_train()`` once after the last iteration (not after an error).

Default order (:func:`default_hooks`): the time budget first (it may end the run at this iteration,
and then this iteration's checkpoint and evaluation are the final ones), the log, the checkpoint,
with the training entry point's stop signals the preemption stop (after the checkpoint, before the
evaluation: a stopped run evaluates that iteration first when resumed), with its watchdog the stall
watchdog's beat (paused during evaluations), the evaluation, the final files, and last
(``test.analyze``) the error analysis of the final evaluation. An iteration's checkpoint is written
before its evaluation runs, so a failing evaluation loses no training; the analysis runs after every
final file is written and a failure of it is logged, not raised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from detkit.analysis.from_records import analyze_dataset

from .checkpoint import BEST, FINAL
from .distributed import mean_over_ranks
from .events import SmoothedScalars, plot_curves
from .inference import primary_metric, scalar_metrics
from .preemption import StopSignals, TrainingStopped
from .reporting import final_report, log_step, progress_postfix, step_record
from .watchdog import StallWatchdog

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import Trainer

logger = logging.getLogger("detkit")


class Hook:
    """Does nothing at every point; a part overrides the points it needs. ``self.trainer`` is
    set when the trainer takes the hook."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_step(self, iteration: int) -> None:
        pass

    def before_eval(self, iteration: int) -> None:
        pass

    def after_eval(self, iteration: int, seconds: float) -> None:
        pass

    def after_train(self) -> None:
        pass


class TimeBudgetHook(Hook):
    """``solver.max_time_minutes``: feeds the trainer's :class:`TimeBudget` (which its checkpoints
    hold) the measured seconds and applies its ``max_iter`` to the loop (the lr schedule rescaled
    to end there)."""

    def after_step(self, iteration: int) -> None:
        t = self.trainer
        t.set_max_iter(t.budget.after_step(iteration, t.step_values["sec_per_iter"]))

    def after_eval(self, iteration: int, seconds: float) -> None:
        self.trainer.set_max_iter(self.trainer.budget.after_eval(iteration, seconds))


class MetricsHook(Hook):
    """The progress bar's text after every iteration; every ``period`` iterations (and at the
    last) the means over the ranks to ``metrics.jsonl``/TensorBoard and the log."""

    def __init__(self, period: int):
        self.period = int(period)
        self.smooth = SmoothedScalars(window=max(1, self.period))

    def after_step(self, iteration: int) -> None:
        t = self.trainer
        self.smooth.update(**t.step_values)
        ims, device = t.cfg.solver.ims_per_batch, t.ctx.device
        postfix = progress_postfix(step_record(self.smooth.means(), ims, device))
        t.bar.set_postfix_str(postfix, refresh=False)
        if iteration % self.period == 0 or iteration == t.max_iter:
            means = self.smooth.means()
            keys = sorted(means)
            averaged = dict(zip(keys, mean_over_ranks([means[k] for k in keys])))
            record = step_record(averaged, ims, device)
            t.writer.write(iteration, record, prefix="train/")
            log_step(iteration, t.max_iter, record)


class CheckpointHook(Hook):
    """The full training state every ``period`` iterations (before the run's last, whose state
    is written at the end, before the final evaluation)."""

    def __init__(self, period: int):
        self.period = int(period)

    def after_step(self, iteration: int) -> None:
        if iteration % self.period == 0 and iteration < self.trainer.max_iter:
            self.trainer.save_checkpoint(iteration)

    def after_train(self) -> None:
        self.trainer.save_checkpoint(self.trainer.max_iter)


class StopOnSignalHook(Hook):
    """``solver.stop_signals`` (``engine/preemption.py``): after each iteration the ranks agree
    whether any received a stop signal; then the full training state at this iteration (unless the
    checkpoint hook just wrote it) and :class:`TrainingStopped`, which ends the run. After the last
    iteration (its state written by the checkpoint hook, which runs before) a signal exits at once
    (``StopSignals.exit_at_once``)."""

    def __init__(self, stop: StopSignals):
        self.stop = stop

    def after_step(self, iteration: int) -> None:
        name = self.stop.agreed()
        if name is None:
            return
        t = self.trainer
        if t.last_saved != iteration:
            t.save_checkpoint(iteration)
        raise TrainingStopped(name, iteration)

    def after_train(self) -> None:
        # after the checkpoint hook wrote the last iteration's state: nothing is left to save
        self.stop.exit_at_once(
            f"after the last iteration ({self.trainer.max_iter}, in last.pth); --resume writes "
            "the final evaluation and files if this cut them short"
        )


class StallWatchdogHook(Hook):
    """``solver.stall_timeout_minutes`` (``engine/watchdog.py``): tells the entry point's watchdog
    of each finished iteration; paused during evaluations and from the end of training on."""

    def __init__(self, watchdog: StallWatchdog):
        self.watchdog = watchdog

    def before_train(self) -> None:
        self.watchdog.beat(self.trainer.start_iter)

    def after_step(self, iteration: int) -> None:
        self.watchdog.beat(iteration)

    def before_eval(self, iteration: int) -> None:
        self.watchdog.pause()

    def after_eval(self, iteration: int, seconds: float) -> None:
        self.watchdog.beat(iteration)

    def after_train(self) -> None:
        self.watchdog.pause()


class EvalHook(Hook):
    """Evaluates every ``period`` iterations (0 = only at the end) and at the end; keeps the
    history, writes each result to the event log and ``best.pth`` at a new best. A run resumed
    from a checkpoint whose own evaluation never finished (it failed, or the run was killed)
    runs that evaluation first."""

    def __init__(self, period: int):
        self.period = int(period)

    def _due(self, iteration: int) -> bool:
        period = self.period
        return period > 0 and iteration % period == 0 and iteration < self.trainer.max_iter

    def before_train(self) -> None:
        t = self.trainer
        done = {r["iteration"] for r in t.eval_history}
        if t.start_iter > 0 and self._due(t.start_iter) and t.start_iter not in done:
            logger.info(
                "--resume: evaluating iteration %d first (its checkpoint was written before its "
                "evaluation, which did not finish)",
                t.start_iter,
            )
            self._evaluate(t.start_iter)

    def after_step(self, iteration: int) -> None:
        if self._due(iteration):
            self._evaluate(iteration)

    def _evaluate(self, iteration: int) -> None:
        t = self.trainer
        t.call_hooks("before_eval", iteration)
        t0, setup = t.clock(), t.budget.setup_seconds
        metrics = t.evaluate(iteration)  # the first one builds its dataset: counted as setup
        seconds = t.clock() - t0 - (t.budget.setup_seconds - setup)
        self.track(iteration, metrics)
        t.call_hooks("after_eval", iteration, seconds)

    def after_train(self) -> None:
        t = self.trainer
        metrics = t.evaluate(t.max_iter, final=True)
        self.track(t.max_iter, metrics)
        t.final_metrics = metrics or {}

    def track(self, iteration: int, metrics: Optional[Dict[str, Any]]) -> None:
        """Record an evaluation's numbers; a new best primary metric writes ``best.pth``."""
        if metrics is None:  # no validation set
            return
        t = self.trainer
        split, scalars = t.eval_split(), scalar_metrics(metrics)
        t.eval_history.append({"iteration": iteration, "split": split, **scalars})
        t.writer.write(iteration, {"split": split, **scalars}, prefix=f"{split}/")
        key = primary_metric(metrics)
        if key is None or (t.best is not None and metrics[key] <= t.best["value"]):
            return
        value = float(metrics[key])
        t.best = {"metric": key, "value": value, "iteration": iteration, "split": split}
        logger.info("new best %s %s = %.4f at iteration %d", split, key, metrics[key], iteration)
        t.save_weights(BEST, iteration, scalars)


class FinalFilesHook(Hook):
    """At the end: ``model_final.pth`` (weights and final metrics), ``metrics.json`` (with the
    time budget's account when one was set) and the loss/AP curves."""

    def after_train(self) -> None:
        t, metrics = self.trainer, self.trainer.final_metrics
        t.save_weights(FINAL, t.max_iter, scalar_metrics(metrics))
        if not t.ctx.is_main:
            return
        budget = t.budget.state_dict() if t.budget.enabled else None
        final_report(t.out, metrics, t.eval_history, t.best, t.max_iter, time_budget=budget)
        path = plot_curves(t.out)
        if path:
            logger.info("loss and AP curves: %s", path)


class AnalysisHook(Hook):
    """Last, on rank 0: the error analysis of the final evaluation (``report.html``,
    ``analysis.json``, CSVs, figures, galleries of the evaluation split's images) in
    ``<run>/analysis/``. It runs after ``model_final.pth`` and ``metrics.json`` are written, and a
    failure is logged as one error line and never raised: the trained model is kept."""

    folder = "analysis"

    def after_train(self) -> None:
        t = self.trainer
        final = t.final_eval
        if not t.ctx.is_main or final is None:  # other ranks, or no evaluation split
            return
        out = t.out / self.folder
        try:
            analyze_dataset(  # logs where report.html is
                final["dataset"],
                out,
                final["image_ids"],
                coco_results=final["coco_results"],
                results=final["results"],
                results_name=f"{t.out.name} @ iteration {final['iteration']}",
            )
        except Exception as e:  # the analysis must never cost the run its result
            logger.error(
                "the error analysis of the final evaluation failed (%s: %s); nothing is lost: "
                "model_final.pth and metrics.json are written in %s (test.analyze=false skips "
                "the analysis)",
                type(e).__name__,
                e,
                t.out,
            )
            logger.debug("the error analysis' traceback", exc_info=True)


def default_hooks(
    cfg, stop: Optional[StopSignals] = None, watchdog: Optional[StallWatchdog] = None
) -> List[Hook]:
    """The trainer's parts, in the order they run (see the module's docstring); ``stop``: the
    signals the entry point catches (:class:`StopOnSignalHook`); ``watchdog``: its stall watchdog
    (:class:`StallWatchdogHook`)."""
    s = cfg.solver
    hooks = [
        TimeBudgetHook(),
        MetricsHook(s.log_period),
        CheckpointHook(s.checkpoint_period),
        *([StopOnSignalHook(stop)] if stop is not None else []),
        *([StallWatchdogHook(watchdog)] if watchdog is not None and watchdog.enabled else []),
        EvalHook(s.eval_period),
        FinalFilesHook(),
    ]
    if cfg.test.analyze:
        hooks.append(AnalysisHook())
    return hooks
