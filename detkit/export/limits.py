"""What an exported graph computes, stated once.

The graph (``traceable.ExportableDetector``) runs one pass at input.min_size_test /
input.max_size_test in float32: it computes the resized size as floor(side * scale) and resizes the
normalised tensor bilinearly, and has no multi-scale or flip testing and no iterative refinement
(its box voting is data-dependent). A config that asks for any of these cannot be exported, and the
onnxruntime backend cannot run it: both refuse it with these lines, naming each key and the value
that would do (nothing is dropped silently).
"""

from __future__ import annotations

import functools
from typing import List, Sequence

from detkit.errors import BackendError

# (key, the value the graph has): the resize conventions the exported graph contains
GRAPH_RESIZE = {
    "input.resize_rounding": "floor",
    "model.resize_interpolation": "tensor_bilinear",
}


def _value(cfg, dotted: str):
    return functools.reduce(getattr, dotted.split("."), cfg)


def graph_problems(cfg) -> List[str]:
    """One line per option of ``cfg`` that the exported graph does not contain, each as
    ``key=value (what it is: set key=...)``; empty when the graph computes what ``cfg`` asks.
    test.precision=auto runs the float32 graph; only an explicit bf16/fp16 is a problem."""
    t, problems = cfg.test, []
    if t.scales:
        problems.append(
            f"test.scales={list(t.scales)} (multi-scale testing; the graph runs one pass at "
            f"input.min_size_test={cfg.input.min_size_test}: set test.scales=[])"
        )
    if t.flip:
        problems.append("test.flip=true (flip testing; the graph has no flip: set test.flip=false)")
    if str(t.precision) in ("bf16", "fp16"):
        problems.append(
            f"test.precision={t.precision} (the graph computes in float32: set test.precision=fp32)"
        )
    refine = cfg.model.roi_heads.refine_iterations
    if refine > 0:
        problems.append(
            f"model.roi_heads.refine_iterations={refine} (iterative refinement with box voting is "
            "not in the graph: set model.roi_heads.refine_iterations=0)"
        )
    for key, supported in GRAPH_RESIZE.items():
        value = _value(cfg, key)
        if value != supported:
            problems.append(f"{key}={value} (the graph resizes with {key}={supported}: set it)")
    return problems


def refuse_unless_graph_runs(cfg, what: str, instead: str, also: Sequence[str] = ()) -> None:
    """Raise :class:`BackendError` listing ``also`` (the caller's own problems, e.g. a device) and
    :func:`graph_problems` when there are any: ``what`` cannot run this as configured (``instead``:
    what runs all of it)."""
    problems = list(also) + graph_problems(cfg)
    if problems:
        raise BackendError(
            f"{what} cannot run this as configured: {'; '.join(problems)}; or {instead}"
        )
