"""``solver.max_time_minutes`` as an iteration count: seconds and iterations in, a new ``max_iter`` out.

The budget covers the whole run: building the datasets (setup), the training steps, the periodic
evaluations and the final one. The training speed is measured twice: after ``measure_iters[0]``
timed iterations, and again ``measure_iters[1]`` iterations after the first timed one, at the
steady speed (the first iterations include the process warming up, so the second estimate may
raise ``max_iter`` again, never above ``solver.max_iter``). Each periodic evaluation's measured cost
fits ``max_iter`` again with the evaluations still to come and the final one at that cost.

Pure arithmetic on numbers the caller passes in; the trainer's hook (``engine/hooks.py``) times
the run, rescales the lr schedule and stops the loop. ``average`` lets every rank take the same
decision from the seconds averaged over the ranks (the identity for one process).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

logger = logging.getLogger("detkit")

# the first estimate after 20 timed iterations, the steady one 100 iterations later
MEASURE_ITERS = (20, 120)


def _identity(values: Sequence[float]) -> Sequence[float]:
    return values


class TimeBudget:
    """``max_time_minutes`` (0 = no budget) and ``max_iter`` (``solver.max_iter``, the upper
    bound); ``eval_period`` (0 = none) says when the periodic evaluations come. ``self.max_iter``
    is the effective iteration count; every method returns it after its decision."""

    def __init__(
        self,
        max_time_minutes: float,
        max_iter: int,
        *,
        eval_period: int = 0,
        measure_iters: Sequence[int] = MEASURE_ITERS,
        average: Callable[[Sequence[float]], Sequence[float]] = _identity,
    ):
        self.minutes = float(max_time_minutes)
        self.seconds = self.minutes * 60.0
        self.limit = self.max_iter = int(max_iter)
        self.eval_period = int(eval_period)
        self.measure_iters = tuple(measure_iters)
        self.average = average
        self.train_seconds = 0.0  # training steps
        self.eval_seconds, self.evals = 0.0, 0  # periodic evaluations
        self.setup_seconds = 0.0  # building datasets and model (this process and earlier ones)
        self.stage = 0  # speed measurements made (of len(measure_iters))
        self.sec_per_iter: Optional[float] = None  # the newest measured training speed
        self._first_it: Optional[int] = None  # the first iteration this process timed
        self._since: Optional[Tuple[int, float]] = None  # where the next speed measurement starts

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def spent(self) -> Tuple[float, float, float]:
        """(training, periodic-evaluation, setup) seconds, through ``average``."""
        values = self.average([self.train_seconds, self.eval_seconds, self.setup_seconds])
        return tuple(float(v) for v in values)

    def fits(self, it: int, spent: float, per_iter: float, per_eval: float) -> int:
        """The largest max_iter in [it, limit] whose remaining iterations (``per_iter`` seconds
        each), periodic evaluations still to come and final evaluation (``per_eval`` seconds each)
        fit in what is left of the budget after ``spent`` seconds and ``it`` iterations."""
        period = self.eval_period

        def cost(n: int) -> float:
            evals = (n - 1) // period - it // period if period > 0 and n > it else 0
            return spent + (n - it) * per_iter + per_eval * (max(evals, 0) + 1)

        lo, hi = it, max(self.limit, it)
        while lo < hi:  # cost grows with n: the last n that fits
            mid = (lo + hi + 1) // 2
            if cost(mid) <= self.seconds:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def after_step(self, it: int, seconds: float) -> int:
        """Iteration ``it`` took ``seconds``. Stop after it when the budget is spent; measure the
        speed when due and fit max_iter to it."""
        self.train_seconds += seconds
        if not self.enabled or it >= self.max_iter:
            return self.max_iter
        train_s, eval_s, setup_s = self.spent()
        total = train_s + eval_s + setup_s
        if self._since is None:
            # the first iteration (lazy initialisation; after --resume, the first one again) is not
            # a fair sample of the speed
            self._first_it, self._since = it, (it, train_s)
        if total >= self.seconds:
            return self._apply(it, f"the budget is spent after {total / 60:.2f} min")
        if self.stage >= len(self.measure_iters):
            return self.max_iter
        if it - self._first_it < self.measure_iters[self.stage] - 1:
            return self.max_iter
        since_it, since_s = self._since
        per_iter = (train_s - since_s) / max(it - since_it, 1)
        self.stage, self._since, self.sec_per_iter = self.stage + 1, (it, train_s), per_iter
        per_eval = eval_s / self.evals if self.evals else 0.0
        fits = self.fits(it, total, per_iter, per_eval)
        span = f"{per_iter:.3f} s per iteration over iterations {since_it + 1}..{it}"
        if fits != self.max_iter:
            return self._apply(fits, span)
        logger.info(
            "solver.max_time_minutes=%g: max_iter %d %s (%s)",
            self.minutes,
            self.max_iter,
            "kept" if fits < self.limit else "fits",
            span,
        )
        return self.max_iter

    def after_eval(self, it: int, seconds: float) -> int:
        """The periodic evaluation after iteration ``it`` took ``seconds``: count it, and fit
        max_iter again with the evaluations still to come (and the final one) at that cost."""
        if not self.enabled:
            return self.max_iter
        self.eval_seconds += seconds
        self.evals += 1
        if self.sec_per_iter is None or it >= self.max_iter:
            return self.max_iter
        train_s, eval_s, setup_s = self.spent()
        per_eval = eval_s / self.evals
        fits = self.fits(it, train_s + eval_s + setup_s, self.sec_per_iter, per_eval)
        if fits != self.max_iter:
            return self._apply(fits, f"{per_eval:.1f} s per evaluation")
        return self.max_iter

    def _apply(self, new: int, why: str) -> int:
        logger.info(
            "solver.max_time_minutes=%g: max_iter %d -> %d (%s; lr schedule rescaled to end there)",
            self.minutes,
            self.max_iter,
            new,
            why,
        )
        self.stage = max(self.stage, 1)
        self.max_iter = new
        return new

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {
            "max_time_minutes": self.minutes,
            "solver_max_iter": self.limit,
            "max_iter": self.max_iter,  # the effective one
            "applied": self.stage > 0,
            "stage": self.stage,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "setup_seconds": self.setup_seconds,
            "evals": self.evals,
            "sec_per_iter": self.sec_per_iter,
        }

    def load_state_dict(self, saved: Optional[Dict[str, Any]]) -> int:
        """Continue a checkpoint's budget: its effective max_iter when max_time_minutes and
        solver.max_iter are unchanged (a resumed run ends where the uninterrupted one would), else
        the new values, measured again, with the time already spent counted. The setup seconds
        add to those of this process."""
        if not saved or not self.enabled:
            return self.max_iter
        self.train_seconds = float(saved.get("train_seconds", 0.0))
        self.eval_seconds = float(saved.get("eval_seconds", 0.0))
        self.setup_seconds += float(saved.get("setup_seconds", 0.0))
        self.evals = int(saved.get("evals", 0))
        same = (
            saved.get("max_time_minutes") == self.minutes
            and saved.get("solver_max_iter") == self.limit
        )
        if same and saved.get("applied"):
            # a checkpoint between the two measurements keeps the first and measures the second again
            self.stage = int(saved.get("stage", len(self.measure_iters)))
            self.sec_per_iter = saved.get("sec_per_iter")
            self.max_iter = int(saved["max_iter"])
        elif saved.get("applied"):
            logger.warning(
                "--resume: solver.max_iter / solver.max_time_minutes changed since the checkpoint "
                "(which stopped at max_iter=%d): the time budget is measured again",
                int(saved["max_iter"]),
            )
        return self.max_iter
