"""Stopping on a scheduler's preemption signal without losing an iteration (``solver.stop_signals``).

A scheduler announces preemption with a signal (SLURM ``--signal=USR1@120`` or SIGTERM before
SIGKILL; Kubernetes SIGTERM and a grace period). :class:`StopSignals` is installed by the training
entry point (``engine.launch.train_main``) for the run's duration and restores the previous handlers
afterwards; importing this module changes nothing. The first listed signal only sets a flag: the
current iteration finishes, the ranks agree on stopping after it (``StopSignals.agreed``: one
all-reduce per iteration, none for one process), rank 0 writes ``last.pth`` at that iteration (the
periodic checkpoint's content, so ``--resume`` continues exactly) and :class:`TrainingStopped` ends
the run. tools/train.py logs the resume command and exits with :func:`exit_status`: 128 + the
signal's number (143 for SIGTERM, 138 for SIGUSR1), what a shell reports for a process that signal
ended, so a scheduler's requeue logic treats both alike.

Data-loader workers forked while the signals are caught keep them blocked (``os.register_at_fork``,
registered by the first ``StopSignals`` entered and a no-op in a child forked while none is): torchrun
and SLURM signal the whole process group, and torch's workers die on SIGTERM, which would end the
run with a loader error instead of the stop. Such a worker still ends on a signal its parent sends
(``terminate`` at exit). Workers started by ``spawn`` (not Linux's default)
are not covered.

A second signal while stopping exits at once with the same status: checkpoints are written to a
temporary file and renamed (``utils.io.atomic_save``), so exiting at any point leaves the previous
or the new ``last.pth`` whole (the temporary is removed at the next start). So does a signal after
the last iteration (:meth:`StopSignals.exit_at_once`): ``last.pth`` holds it, and ``--resume`` runs
the final evaluation and writes the final files that the exit cut short.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Dict, List, Optional, Sequence

import torch

from .distributed import all_reduce_sum

logger = logging.getLogger("detkit")

# the signals solver.stop_signals may name
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")

_ACTIVE: List["StopSignals"] = []  # the entered instances of this process
_AT_FORK = {"registered": False}


def _block_in_forked_child() -> None:
    """In a child forked while stop signals are caught (a data-loader worker): keep them blocked,
    so a signal to the whole process group reaches only the process that stops cleanly; a thread
    takes them (``sigwaitinfo``) and ends the child on one its parent sent (as torch's worker
    handler does for SIGTERM: the parent's ``terminate``), ignoring the others."""
    sigs = {signal.Signals[n] for s in _ACTIVE for n in s.names}
    if not sigs:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    parent = os.getppid()

    def take() -> None:
        while True:
            info = signal.sigwaitinfo(sigs)
            if info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=take, name="detkit-stop-signals", daemon=True).start()


def exit_status(signal_name: str) -> int:
    """The exit status of a run stopped by ``signal_name``: 128 + its number, as a shell reports."""
    return 128 + int(signal.Signals[signal_name])


class TrainingStopped(Exception):
    """The run stopped on a signal after writing ``last.pth`` at ``iteration``."""

    def __init__(self, signal_name: str, iteration: int):
        super().__init__(f"stopped by signal {signal_name} at iteration {iteration}")
        self.signal_name, self.iteration = signal_name, iteration

    @property
    def exit_status(self) -> int:
        return exit_status(self.signal_name)


def _flush_logs() -> None:
    for handler in logging.getLogger("detkit").handlers:
        try:
            handler.flush()
        except Exception:  # exiting anyway
            pass


class StopSignals:
    """``with StopSignals(["SIGTERM", "SIGUSR1"]) as stop:`` catches those signals while the block
    runs (only in the main thread of the process that entered it: forked data-loader workers
    ignore them) and restores the previous handlers after it. ``stop.received`` is the first
    signal's name; a second one exits the process at once with :func:`exit_status`."""

    def __init__(self, names: Sequence[str]):
        unknown = [n for n in names if n not in STOP_SIGNALS]
        if unknown:
            raise ValueError(f"unknown stop signal(s) {unknown}; allowed: {list(STOP_SIGNALS)}")
        self.names: List[str] = list(dict.fromkeys(names))
        self.received: Optional[str] = None
        self._at_once: Optional[str] = None  # see exit_at_once
        self._previous: Dict[signal.Signals, object] = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not the main thread: solver.stop_signals not installed")
            return self
        self._pid = os.getpid()
        for name in self.names:
            sig = signal.Signals[name]
            self._previous[sig] = signal.signal(sig, self._handle)
        if not _AT_FORK["registered"]:  # cannot be undone: a no-op while no instance is entered
            os.register_at_fork(after_in_child=_block_in_forked_child)
            _AT_FORK["registered"] = True
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked child (data-loader worker) inherited the handler
            return
        name = signal.Signals(signum).name
        if self._at_once is not None:
            self._exit_now(name)
        if self.received is None:
            self.received = name
            logger.warning(
                "received %s: finishing the current iteration, then writing last.pth and "
                "stopping (a second signal exits at once)",
                name,
            )
            return
        logger.error(
            "received %s while stopping: exiting at once with status %d; the checkpoints on disk "
            "are whole (atomic writes) and --resume continues from the newest",
            name,
            exit_status(name),
        )
        _flush_logs()
        os._exit(exit_status(name))

    def exit_at_once(self, when: str) -> None:
        """From now on a stop signal exits at once with :func:`exit_status`, logging "stopped by
        signal <name> <when>" (what tools/slurm_train.sbatch looks for to requeue): for the end of
        a run, whose last state is already in ``last.pth``, so that a stop during the final
        evaluation ends the process before the scheduler kills it, and ``--resume`` runs that
        evaluation. A signal received since the last agreement exits now."""
        self._at_once = when
        if self.received is not None and os.getpid() == self._pid:
            self._exit_now(self.received)

    def _exit_now(self, name: str) -> None:
        logger.warning(
            "stopped by signal %s %s; exiting at once with status %d",
            name,
            self._at_once,
            exit_status(name),
        )
        _flush_logs()
        os._exit(exit_status(name))

    def agreed(self) -> Optional[str]:
        """The signal any rank received (every rank calls it after the same iteration: under
        torch.distributed one all-reduce of one flag per listed signal), or None."""
        if not self.names:
            return None
        flags = torch.zeros(len(self.names), dtype=torch.float64)
        if self.received is not None:
            flags[self.names.index(self.received)] = 1.0
        summed = all_reduce_sum(flags).tolist()
        return next((n for n, v in zip(self.names, summed) if v > 0), None)


__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "exit_status"]
