"""A rank that stops making progress is named (``solver.stall_timeout_minutes``, 0 = off).

Without it, a rank stuck in its data loader or on a dead file system leaves the others waiting in a
collective until the process-group timeout (30 minutes by default), then a wall of tracebacks that
does not say which rank stalled. :class:`StallWatchdog` is a thread per rank, started by the training
entry point (``engine.launch.train_main``) and stopped when it returns: the trainer's
``StallWatchdogHook`` reports each finished iteration (:meth:`StallWatchdog.beat`) and pauses it
during evaluations (an evaluation may take longer than a step by far; the final one runs after it
stopped). When no iteration finishes for the timeout, the rank logs one ERROR line (and writes it to
stderr, which torchrun shows for every rank) naming its rank, host, the last iteration it finished,
the seconds without progress and where its main thread is, then exits with :data:`EXIT_STALLED`
through ``os._exit`` (the main thread may be stuck in a collective), so torchrun or the scheduler
can restart the job.

Every other rank is also without progress then, waiting for the stalled one in a collective: a rank
whose main thread is inside ``torch.distributed`` (or detkit's collective helpers) waits a second
timeout before it reports, so the rank that stalled is the one that reports first (and its exit ends
the others' gloo collectives; torchrun ends the rest). A rank waiting inside DDP's backward (the
gradient all-reduce) is not recognised as waiting and may report at the same time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Optional

logger = logging.getLogger("detkit")

# the exit status of a stalled rank: EX_TEMPFAIL (sysexits.h), a failure worth retrying
EXIT_STALLED = 75


# a main thread inside one of these is waiting for the other ranks (detkit's helpers: on CUDA the
# wait is where the result is read back, after torch.distributed returned)
_COLLECTIVE_FILES = tuple(
    os.path.join(*parts) + os.sep
    for parts in (("torch", "distributed"), ("torch", "nn", "parallel"))
) + (
    os.path.join("detkit", "engine", "distributed.py"),
    os.path.join("detkit", "utils", "distributed.py"),
)


def _main_thread_location() -> tuple:
    """(the main thread's innermost frame as ``file:line in function``, whether it is inside
    torch.distributed: waiting for another rank)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "unknown", False
    stack = traceback.extract_stack(frame)
    in_collective = any(part in f.filename for f in stack for part in _COLLECTIVE_FILES)
    top = stack[-1]
    return f"{top.filename}:{top.lineno} in {top.name}", in_collective


class StallWatchdog:
    """``with StallWatchdog(minutes, rank) as watchdog:`` runs the watching thread while the block
    runs (nothing with ``minutes`` 0). It is armed by the first :meth:`beat` and disarmed by
    :meth:`pause`; ``exit`` is called with :data:`EXIT_STALLED` on a stall (``os._exit``)."""

    def __init__(
        self,
        minutes: float,
        rank: int = 0,
        host: Optional[str] = None,
        exit: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.timeout = float(minutes) * 60.0
        self.rank, self.host = rank, host or socket.gethostname()
        self._exit, self._clock = exit, clock
        self._last_iter: Optional[int] = None
        self._last_time = 0.0
        self._armed = False
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def beat(self, iteration: int) -> None:
        """``iteration`` finished (or training starts after it): progress, and armed."""
        self._last_iter, self._last_time, self._armed = iteration, self._clock(), True

    def pause(self) -> None:
        """No progress is expected until the next :meth:`beat` (an evaluation, the end)."""
        self._armed = False

    def __enter__(self) -> "StallWatchdog":
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="detkit-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        poll = min(max(self.timeout / 20.0, 0.05), 5.0)
        while not self._done.wait(poll):
            if not self._armed:
                continue
            idle = self._clock() - self._last_time
            if idle < self.timeout:
                continue
            where, waiting = _main_thread_location()
            if waiting and idle < 2 * self.timeout:
                continue  # waiting for another rank: let the one that stalled report first
            self._stall(idle, where, waiting)
            return

    def _stall(self, idle: float, where: str, waiting: bool) -> None:
        message = (
            f"stall: rank {self.rank} on host {self.host} made no progress for {idle:.1f} s "
            f"(solver.stall_timeout_minutes={self.timeout / 60:g}); the last iteration it "
            f"finished is {self._last_iter}; its main thread is at {where}"
            + (" (waiting in a collective for another rank)" if waiting else "")
            + f"; exiting with status {EXIT_STALLED}"
        )
        logger.error(message)
        if not any(getattr(h, "stream", None) is sys.stderr for h in logger.handlers):
            sys.stderr.write(message + "\n")  # ranks other than 0 do not log to the console
        for handler in logger.handlers:
            try:
                handler.flush()
            except Exception:  # exiting anyway
                pass
        sys.stderr.flush()
        self._exit(EXIT_STALLED)


__all__ = ["EXIT_STALLED", "StallWatchdog"]
