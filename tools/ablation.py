#!/usr/bin/env python
"""Reproduce the seed paper's ablation (baseline -> +box refinement -> +context -> +multi-scale/flip)
on one dataset with one schedule, and print a markdown table.

    python tools/ablation.py configs/quickstart.yaml --output-dir runs/ablation [key=value ...]
    python tools/ablation.py configs/quickstart.yaml --output-dir runs/ablation --scales 160,192,224 --flip

Two models are trained with identical data, schedule and seed: one without and one with global
context (the only component that changes training). The rows are then test-time variants:
  baseline                 model A
  + box refinement         model A, refine_iterations=1
  + context                model B, refine_iterations=1
  + multi-scale (+ flip)   model B, refine_iterations=1, test.scales (+ test.flip)
Test time per image is the wall time of the whole test pass (data loading included) / images.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.config import load_config
from detkit.data import build_dataset
from detkit.engine import evaluate_main, train_main
from detkit.utils.cli import tool_main, tool_parser

logger = logging.getLogger("detkit")


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--scales",
        help="comma list of test scales for the multi-scale row (default: 0.8x, 1x, 1.2x)",
    )
    p.add_argument(
        "--flip", action="store_true", help="add a horizontal flip to the multi-scale row"
    )
    p.add_argument(
        "--resume", action="store_true", help="reuse trained models found in the output folder"
    )
    return p.parse_intermixed_args(argv)  # overrides may come after the options


def train_once(cfg, out: str, resume: bool) -> str:
    final = os.path.join(out, "model_final.pth")
    if not (resume and os.path.isfile(final)):
        train_main(cfg, out, resume=resume and os.path.isdir(out))
    return final


def evaluate_row(name: str, cfg, weights: str, out: str, overrides) -> dict:
    cfg = cfg.with_overrides(overrides)
    t0 = time.perf_counter()
    metrics = evaluate_main(cfg, weights, output_dir=out)
    seconds = time.perf_counter() - t0
    n = len(build_dataset(cfg, "test"))
    return {
        "row": name,
        "AP50": metrics.get("AP50"),
        "AP": metrics.get("AP"),
        "ms_per_image": 1000 * seconds / n,
        "overrides": list(overrides),
    }


def markdown(rows) -> str:
    lines = ["| row | mAP@.5 | mAP@[.5:.95] | test ms/image |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['row']} | {100 * r['AP50']:.1f} | {100 * r['AP']:.1f} | {r['ms_per_image']:.0f} |"
        )
    return "\n".join(lines)


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    base = load_config(
        args.config,
        args.overrides + ["model.roi_heads.refine_iterations=0", "model.roi_heads.context=false"],
    )
    ctx = base.with_overrides(["model.roi_heads.context=true"])
    a = train_once(base, os.path.join(args.output_dir, "baseline"), args.resume)
    b = train_once(ctx, os.path.join(args.output_dir, "context"), args.resume)
    s = base.input.min_size_test
    scales = args.scales or f"{int(0.8 * s)},{s},{int(1.2 * s)}"
    refine = ["model.roi_heads.refine_iterations=1"]
    tta = refine + [
        f"test.scales=[{scales}]",
        f"test.flip={str(args.flip).lower()}",
        "test.merge=vote",
    ]
    rows = [
        evaluate_row("baseline", base, a, os.path.join(args.output_dir, "t_base"), []),
        evaluate_row(
            "+ box refinement", base, a, os.path.join(args.output_dir, "t_refine"), refine
        ),
        evaluate_row("+ context", ctx, b, os.path.join(args.output_dir, "t_context"), refine),
        evaluate_row(
            "+ multi-scale" + (" + flip" if args.flip else ""),
            ctx,
            b,
            os.path.join(args.output_dir, "t_tta"),
            tta,
        ),
    ]
    table = markdown(rows)
    with open(os.path.join(args.output_dir, "ablation.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.output_dir, "ablation.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
