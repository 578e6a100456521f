"""Where training numbers go: a JSON-lines log, TensorBoard, the progress bar, and the final plot.

``metrics.jsonl`` holds one JSON object per line: ``{"iteration": N, "lr": ..., "total_loss": ...,
"loss_*": ..., "sec_per_iter": ..., "img_per_sec": ...}`` for training, and
``{"iteration": N, "split": "val", "AP": ..., "AP50": ...}`` after each evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Dict, List, Optional

from detkit.utils.io import atomic_write_text, write_error

logger = logging.getLogger("detkit")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


def read_jsonl(path: os.PathLike) -> List[Dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a killed run) is skipped."""
    out = []
    if not Path(path).exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class EventWriter:
    """Appends scalars to ``metrics.jsonl`` and TensorBoard (when importable) on the main process.

    ``start_iter``: a resumed run first drops the records a killed run wrote after its last
    checkpoint, so the log (and the plot) reads like one uninterrupted run.
    """

    def __init__(self, output_dir: os.PathLike, *, enabled: bool = True, start_iter: int = 0):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        if start_iter > 0 and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("iteration", 0) <= start_iter]
            atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)
        elif self.path.exists():
            self.path.unlink()
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise write_error(self.path, e) from None
        self._tb = _tensorboard(Path(output_dir) / "tensorboard", start_iter)

    def write(self, iteration: int, scalars: Dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"iteration": int(iteration), **scalars}
        try:
            self._file.write(json.dumps(record, default=float) + "\n")
            self._file.flush()
        except OSError as e:  # e.g. the disk is full: one line naming the file, not a traceback
            self._drop_file()
            raise write_error(self.path, e) from None
        if self._tb is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}{key}", value, iteration)
            self._tb.flush()

    def _drop_file(self) -> None:
        """Close the log after a failed write without flushing the torn record again (a second
        error from ``close`` in the trainer's ``finally`` would hide the first)."""
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                logger.warning("%s", write_error(self.path, e))
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard(log_dir: Path, start_iter: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info(
            "tensorboard is not installed: no TensorBoard events (pip install tensorboard); "
            "%s has the same numbers",
            METRICS_FILE,
        )
        return None
    return SummaryWriter(str(log_dir), purge_step=start_iter if start_iter > 0 else None)


class SmoothedScalars:
    """Running means over the last ``window`` values of each scalar (what the bar and the log show)."""

    def __init__(self, window: int = 20):
        self._values = defaultdict(lambda: deque(maxlen=window))

    def update(self, **scalars: float) -> None:
        for k, v in scalars.items():
            self._values[k].append(float(v))

    def mean(self, key: str) -> float:
        v = self._values.get(key)
        return sum(v) / len(v) if v else float("nan")

    def means(self) -> Dict[str, float]:
        return {k: self.mean(k) for k in self._values}


def plot_curves(output_dir: os.PathLike, metric_keys: Optional[List[str]] = None) -> Optional[Path]:
    """Losses (left) and validation AP (right) against iteration from ``metrics.jsonl`` -> curves.png."""
    records = read_jsonl(Path(output_dir) / METRICS_FILE)
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if "split" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(12, 4.5))
    its = [r["iteration"] for r in train]
    for key in ["total_loss"] + sorted(k for k in train[-1] if k.startswith("loss")):
        ax_loss.plot(
            its,
            [r.get(key, float("nan")) for r in train],
            label=key,
            lw=2 if key == "total_loss" else 1,
        )
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training losses", yscale="log")
    ax_loss.legend(fontsize=8)
    keys = metric_keys or [k for k in ("AP", "AP50", "AP75", "mAP") if evals and k in evals[-1]]
    for key in keys:
        pts = [(r["iteration"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
        if pts:
            ax_ap.plot(*zip(*pts), marker="o", label=key)
    ax_ap.set(xlabel="iteration", ylabel="AP", title="validation", ylim=(0, 1))
    if keys and evals:
        ax_ap.legend(fontsize=8)
    fig.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
