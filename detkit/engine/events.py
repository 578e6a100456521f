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
from typing import Any, Dict, List, Optional, Tuple

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


AP_CURVE_KEYS = ("AP", "AP50", "mAP")  # COCO's AP and AP50, VOC's mAP


def eval_series(
    records: List[Dict[str, Any]], metric_keys: Optional[List[str]] = None
) -> Dict[str, List[Tuple[int, float]]]:
    """Validation curves from ``metrics.jsonl`` records: ``{key: [(iteration, value), ...]}`` for
    ``metric_keys`` (default AP, AP50 and VOC's mAP, those present), one point per evaluation in
    iteration order; an iteration evaluated twice (a resumed run) keeps its last value."""
    evals = [r for r in records if "split" in r]
    keys = metric_keys or [k for k in AP_CURVE_KEYS if any(k in r for r in evals)]
    series = {}
    for key in keys:
        points = {
            int(r["iteration"]): float(r[key])
            for r in evals
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
        }
        if points:
            series[key] = sorted(points.items())
    return series


def plot_curves(output_dir: os.PathLike, metric_keys: Optional[List[str]] = None) -> Optional[Path]:
    """Losses (left) and validation AP / AP50 at every evaluation (right, on their own axes scaled to
    the values) against iteration from ``metrics.jsonl`` -> curves.png."""
    records = read_jsonl(Path(output_dir) / METRICS_FILE)
    train = [r for r in records if "total_loss" in r]
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
    series = eval_series(records, metric_keys)
    top = 0.0
    for (key, pts), style in zip(series.items(), ("o-", "s--", "^-.", "d:")):
        x, y = zip(*pts)
        ax_ap.plot(x, y, style, label=f"{key} (last {y[-1]:.3f})", lw=2 if key == "AP" else 1.5)
        top = max(top, *y)
    ax_ap.set(
        xlabel="iteration",
        ylabel="AP",
        title="validation, at each evaluation",
        ylim=(0, min(1.0, max(0.05, top * 1.15))),
        xlim=(0, max(its[-1], max((p[-1][0] for p in series.values()), default=0)) * 1.02),
    )
    ax_ap.grid(alpha=0.3)
    if series:
        ax_ap.legend(fontsize=8, loc="lower right")
    else:
        ax_ap.text(
            0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_ap.transAxes
        )
    fig.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
