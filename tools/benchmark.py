#!/usr/bin/env python
"""Time detkit side by side with torchvision, detectron2 or mmdetection on the same device,
weights and inputs.

    python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --compare torchvision \
        --batch-sizes 1,8 --precision fp32,bf16 [--train] [--images DIR] [--size 800x1333]
    python tools/benchmark.py configs/frcnn_r101_coco.yaml --batch-sizes 1 --precision bf16
    python tools/benchmark.py configs/quickstart.yaml --loader           # data-loader img/s
    python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --sweep    # time vs size, batch, proposals
    python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --device cpu --size 800x1216 \
        --backend eager,onnxruntime --compare torchvision     # detkit's CPU backends vs torchvision
    python tools/benchmark.py configs/mmdetection/faster-rcnn_r50_fpn_1x_coco.yaml \
        --compare mmdetection --device cpu --size 800x1216   # mmdet 3.3.0's model of that name

On CPU the defaults shrink (320x480 inputs, few iterations) so CI can smoke-test the tool.
Prints a table: ms per image, img/s, peak GPU memory and each detkit row's img/s over the compared
framework's. Inputs are network-sized: no implementation resizes them (for the onnxruntime backend
the model is exported with input.min_size_test / max_size_test equal to the input's sides).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import List

from detkit.errors import BackendError

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.process import prepare_inference_process

prepare_inference_process()  # first, before torch loads OpenMP (see detkit/utils/process.py)

import torch

from detkit.benchmark import (
    OtherProcesses,
    Row,
    attach_ratios,
    format_table,
    measure,
    measure_side_by_side,
    random_images,
    random_targets,
)
from detkit.checkpoint import init_from_config
from detkit.checkpoint.torchvision_names import torchvision_detector_to_detkit
from detkit.config import load_config
from detkit.inference.backends import BACKENDS, check_backend, make_predictor
from detkit.modeling import build_model
from detkit.modeling.precision import autocast
from detkit.utils.cli import tool_main, tool_parser
from detkit.utils.device import resolve_device
from detkit.utils.threads import cpu_description

logger = logging.getLogger("detkit")


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument(
        "--compare",
        choices=["torchvision", "detectron2", "mmdetection"],
        help="also time torchvision's equivalent model, detectron2's for a configs/detectron2/ "
        "config (needs a detectron2 source checkout: --reference) or mmdetection's for a "
        "configs/mmdetection/ config (needs mmdet 3.3.0 and mmcv with its ops: see .ci/run); "
        "same weights, same inputs",
    )
    p.add_argument(
        "--mmdet-checkpoint",
        help="--compare mmdetection: an mmdet checkpoint (.pth) both models load (default: "
        "mmdet's model with its random initialisation, copied into detkit's)",
    )
    p.add_argument(
        "--reference",
        default=os.environ.get(
            "DETKIT_REFERENCE", str(Path(__file__).resolve().parents[2] / "shared" / "reference")
        ),
        help="folder holding a detectron2 checkout as detectron2/ (its package and model-zoo "
        "configs; not shipped with detkit) for --compare detectron2 (default $DETKIT_REFERENCE)",
    )
    p.add_argument(
        "--backend",
        default="eager",
        help="comma list of detkit inference backends to time side by side: eager (PyTorch; the "
        "default), onnxruntime (the exported graph; pip install 'detkit[export]')",
    )
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16")
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument(
        "--images", help="folder of real images (resized to --size) instead of random pixels"
    )
    p.add_argument(
        "--size", help="HxW of the network input (default 800x1333 on GPU, 320x480 on CPU)"
    )
    p.add_argument("--iters", type=int, help="timed iterations (default 50 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, help="warm-up iterations (default 10 GPU, 2 CPU)")
    p.add_argument(
        "--min-seconds",
        type=float,
        help="keep timing a fast model until this many seconds (default 10 CPU, 3 GPU; 0 when "
        "--iters is given): two runs on an idle machine then agree within a few percent",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ..."
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--fuse-bn", action="store_true", help="fold frozen BN into the convolutions (inference)"
    )
    p.add_argument(
        "--loader", action="store_true", help="time the training data loader instead of the model"
    )
    p.add_argument(
        "--sweep", action="store_true", help="time vs image size, batch size and proposals"
    )
    return p.parse_intermixed_args(argv)  # overrides may come after the options


def torchvision_twin(num_classes: int):
    """torchvision's fasterrcnn_resnet50_fpn with frozen BN (as when fine-tuned from ImageNet)."""
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
    return FasterRCNN(backbone, num_classes=num_classes + 1)


def build_pair(cfg, device, compare: bool, size=None):
    torch.manual_seed(0)
    model = init_from_config(build_model(cfg), cfg)  # model.backbone.weights, when set
    tv = None
    if compare:
        if model.neck is None or cfg.model.backbone.depth != 50:  # not torchvision's R50-FPN
            raise SystemExit(
                "--compare torchvision needs an R50-FPN config (torchvision has no equivalent of this one)"
            )
        tv = torchvision_twin(cfg.model.num_classes)
        model.load_state_dict(torchvision_detector_to_detkit(tv.state_dict()))
        if (
            size is not None
        ):  # inputs are already network-sized: keep torchvision from resizing them
            tv.transform.min_size, tv.transform.max_size = (min(size),), max(size)
        tv.to(device)
    return model.to(device), tv


def detectron2_twin(args, model, device):
    """detectron2's own model for a configs/detectron2/ config, built from the zoo config of the
    same name, with detkit's (random) weights copied in: both time the same network on the same
    inputs. Test-time input: network-sized images, as for detkit (no resize inside either)."""
    name = Path(args.config).name
    folder = Path(args.reference) / "detectron2"
    zoo = [folder / "configs" / g / name for g in ("COCO-Detection", "PascalVOC-Detection")]
    zoo = [p for p in zoo if p.is_file()]
    if Path(args.config).parent.name != "detectron2" or not zoo:
        raise SystemExit(
            f"--compare detectron2 needs a configs/detectron2/ config named like a zoo config "
            f"under {folder / 'configs'}; got {args.config}"
        )
    sys.path.insert(0, str(folder))
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model as build_d2

    from detkit.checkpoint.detectron2_names import detectron2_to_detkit

    cfg = get_cfg()
    cfg.merge_from_file(str(zoo[0]))
    cfg.MODEL.DEVICE = str(device)
    d2 = build_d2(cfg)
    # detkit takes detectron2's tensors by the converter's names: the mapping proves the networks equal
    model.load_state_dict(detectron2_to_detkit(d2.state_dict()))
    return d2.eval()


def mmdetection_twin(args, model, device):
    """mmdetection's own model for a configs/mmdetection/ config, built from mmdet's config of the
    same name (random weights, no ImageNet download, or --mmdet-checkpoint), its tensors copied
    into detkit's model through detkit's converter: both time the same network on the same inputs.
    Returns a function of the (BGR uint8, network-sized) images that runs mmdet's ``test_step``:
    its data preprocessor (BGR -> RGB where the config says so, normalise, pad) and the predict
    pass, with boxes rescaled by 1."""
    name = Path(args.config).stem
    if Path(args.config).parent.name != "mmdetection":
        raise SystemExit(
            f"--compare mmdetection needs a configs/mmdetection/ config (named as mmdet's); got "
            f"{args.config}"
        )
    try:
        import mmcv.ops  # noqa: F401  (RoIAlign and NMS: mmdet's model cannot run without them)
        import mmdet
        from mmdet.apis import init_detector
        from mmdet.structures import DetDataSample
        from mmengine.config import Config
    except Exception as e:  # ImportError, or an mmcv built for another torch (undefined symbol)
        raise SystemExit(
            f"--compare mmdetection needs mmdet 3.3.0 and mmcv 2.1.0 with its ops ({e}); .ci/run "
            "installs them from ../shared/reference/mmdetection"
        ) from None

    from detkit.checkpoint.mmdet_names import mmdet_to_detkit

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "faster_rcnn", name)
    if not os.path.isfile(path + ".py"):
        raise SystemExit(f"--compare mmdetection: mmdet has no config {path}.py")
    mm_cfg = Config.fromfile(path + ".py")
    mm_cfg.model.backbone.init_cfg = None  # no ImageNet download
    torch.manual_seed(0)
    mm = init_detector(mm_cfg, checkpoint=args.mmdet_checkpoint, device=str(device)).eval()
    model.load_state_dict(mmdet_to_detkit(mm.state_dict()), strict=True)

    def run(images):
        h, w = images[0].shape[-2:]
        meta = {
            "img_shape": (h, w),
            "ori_shape": (h, w),
            "scale_factor": (1.0, 1.0),
        }
        data = {
            "inputs": images,
            "data_samples": [DetDataSample(metainfo=dict(meta)) for _ in images],
        }
        return mm.test_step(data)

    return run


def load_images(args, batch, h, w, device):
    if not args.images:
        return random_images(batch, h, w, device)
    import glob

    import cv2

    files = sorted(
        glob.glob(os.path.join(args.images, "*.jpg"))
        + glob.glob(os.path.join(args.images, "*.png"))
    )
    if not files:
        raise SystemExit(f"no .jpg/.png images in {args.images}")
    out = []
    for i in range(batch):
        img = cv2.cvtColor(cv2.resize(cv2.imread(files[i % len(files)]), (w, h)), cv2.COLOR_BGR2RGB)
        out.append(torch.from_numpy(img).permute(2, 0, 1).contiguous().to(device))
    return out


def under_autocast(fn, device, precision: str):
    def run():
        with autocast(device, precision):
            return fn()

    return run


def inference_fns(tv, images, h, w, precision: str, predictors: dict, d2=None, mm=None):
    """detkit through the predictors tools/test.py builds (``make_predictor``: one per backend, with
    the config's test.*), torchvision, detectron2 or mmdetection under the same autocast helper."""
    samples = [{"image": im, "height": h, "width": w} for im in images]  # network-sized already
    # the onnxruntime graph resizes every input (here at scale 1: it was exported at these sides)
    # and checks that the sample asks for that size
    sized = [dict(s, size=(h, w), scale=1.0) for s in samples]
    # only the onnxruntime runner (and ParallelImages around it) names a backend
    eager = {name: getattr(p, "backend", "eager") == "eager" for name, p in predictors.items()}
    fns = {
        name: (lambda p=p, x=(samples if eager[name] else sized): p(x))
        for name, p in predictors.items()
    }
    if d2 is not None:  # detectron2 eats BGR float images (detkit flips RGB inside the model)
        bgr = [{"image": im.flip(0).float(), "height": h, "width": w} for im in images]
        fns["detectron2"] = under_autocast(lambda: d2(bgr), images[0].device, precision)
    if mm is not None:
        bgr_uint8 = [im.flip(0) for im in images]  # mmdet reads BGR images (as cv2 decodes)
        fns["mmdetection"] = under_autocast(lambda: mm(bgr_uint8), images[0].device, precision)
    if tv is not None:
        floats = [im.float() / 255 for im in images]
        device = images[0].device
        fns["torchvision"] = under_autocast(lambda: tv(floats), device, precision)
    return fns


def parse_backends(args, cfg, device) -> List[str]:
    """The --backend list, each checked with every --precision before anything is built or timed:
    an unknown backend or a setting one cannot run is a one-line error (``check_backend``)."""
    backends = list(dict.fromkeys(b.strip() for b in args.backend.split(",") if b.strip()))
    if not backends:
        raise BackendError(f"--backend is empty; give a comma list of {', '.join(BACKENDS)}")
    if backends != ["eager"] and (args.train or args.sweep or args.loader):
        raise BackendError(
            f"--backend {args.backend}: only inference has backends; --train, --sweep and "
            "--loader time the eager model (drop --backend or those options)"
        )
    for backend in backends:
        for precision in args.precision.split(","):
            check_backend(cfg.with_overrides([f"test.precision={precision}"]), backend, device)
    return backends


def detkit_predictors(model, cfg, backends, precision: str, cache_dir: str) -> dict:
    """Row name -> predictor of ``model`` (the same weights for every backend); the row is plain
    "detkit" when the eager backend alone is timed."""
    cfg = cfg.with_overrides([f"test.precision={precision}"])
    out = {}
    for backend in backends:
        name = "detkit" if backends == ["eager"] else f"detkit ({backend})"
        out[name] = make_predictor(model, cfg, backend, cache_dir=cache_dir)
    return out


def train_fns(model, tv, images, h, w, num_classes, device, precision: str):
    targets = random_targets(len(images), h, w, num_classes, device)
    samples = [
        {"image": im, "height": h, "width": w, "gt_boxes": b, "gt_labels": l}
        for im, (b, l) in zip(images, targets)
    ]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step_detkit():
        loss = sum(model(samples).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"detkit": under_autocast(step_detkit, device, precision)}
    if tv is not None:
        tv_opt = torch.optim.SGD(
            [p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
        floats = [im.float() / 255 for im in images]
        tv_targets = [{"boxes": b, "labels": l + 1} for b, l in targets]

        def step_tv():
            loss = sum(tv(floats, tv_targets).values())
            tv_opt.zero_grad(set_to_none=True)
            loss.backward()
            tv_opt.step()

        fns["torchvision"] = under_autocast(step_tv, device, precision)
    return fns


def run_models(args, cfg, device, h, w, warmup, iters, backends: List[str]) -> list:
    # the onnxruntime graph resizes to input.min/max_size_test: with the input's own sides it runs at
    # scale 1, as the eager model and torchvision do on these network-sized inputs
    cfg = cfg.with_overrides(
        [f"input.min_size_test={min(h, w)}", f"input.max_size_test={max(h, w)}"]
    )
    model, tv = build_pair(cfg, device, args.compare == "torchvision", (h, w))
    d2 = detectron2_twin(args, model, device) if args.compare == "detectron2" else None
    mm = mmdetection_twin(args, model, device) if args.compare == "mmdetection" else None
    if args.train and (d2 is not None or mm is not None):
        raise SystemExit(f"--compare {args.compare} times inference only (drop --train)")
    if args.fuse_bn and not args.train:
        from detkit.modeling.backbones.norm import fuse_frozen_bn

        logger.info("folded %d frozen BN layers into convolutions", fuse_frozen_bn(model))
    for m in filter(None, (model, tv)):
        m.train(args.train)
        if args.channels_last:
            m.to(memory_format=torch.channels_last)
    rows = []
    precisions = args.precision.split(",")
    with tempfile.TemporaryDirectory(prefix="detkit-benchmark-") as cache_dir:  # exported graphs
        predictors = {
            p: {} if args.train else detkit_predictors(model, cfg, backends, p, cache_dir)
            for p in precisions
        }
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            images = load_images(args, batch, h, w, device)
            for precision in precisions:
                fns = (
                    train_fns(model, tv, images, h, w, cfg.model.num_classes, device, precision)
                    if args.train
                    else inference_fns(tv, images, h, w, precision, predictors[precision], d2, mm)
                )
                with torch.set_grad_enabled(args.train):
                    rows += measure_side_by_side(
                        fns,
                        "train" if args.train else "infer",
                        precision,
                        batch,
                        device,
                        warmup,
                        iters,
                        args.min_seconds,
                    )
    attach_ratios(rows)
    return rows


def run_sweep(args, cfg, device, h, w, warmup, iters) -> list:
    """detkit inference time as image size, batch size and proposals grow (first precision)."""
    precision = args.precision.split(",")[0]
    rows = []
    model, _ = build_pair(cfg, device, False)
    model.eval()

    def detkit_fn(m, c, batch, sh, sw):
        images = random_images(batch, sh, sw, device)
        predictor = make_predictor(m, c.with_overrides([f"test.precision={precision}"]))
        return inference_fns(None, images, sh, sw, precision, {"detkit": predictor})["detkit"]

    for scale in (0.5, 0.75, 1.0):
        sh, sw = int(h * scale), int(w * scale)
        fn = detkit_fn(model, cfg, 1, sh, sw)
        rows.append(
            measure(f"{sh}x{sw}", "size", precision, 1, fn, device, warmup, iters, args.min_seconds)
        )
    for batch in (1, 2, 4, 8):
        fn = detkit_fn(model, cfg, batch, h, w)
        rows.append(
            measure(
                f"batch {batch}",
                "batch",
                precision,
                batch,
                fn,
                device,
                warmup,
                iters,
                args.min_seconds,
            )
        )
    for topk in (100, 300, 1000):
        topk_cfg = cfg.with_overrides([f"model.rpn.post_nms_topk_test={topk}"])
        m, _ = build_pair(topk_cfg, device, False)
        fn = detkit_fn(m.eval(), topk_cfg, 1, h, w)
        rows.append(
            measure(
                f"{topk} props", "props", precision, 1, fn, device, warmup, iters, args.min_seconds
            )
        )
    return rows


def run_loader(cfg, iters: int) -> list:
    from detkit.data import build_dataset, build_train_loader

    dataset = build_dataset(cfg, "train")
    loader = iter(build_train_loader(cfg, dataset, 0, 1))
    next(loader)  # workers started
    import time

    t0 = time.perf_counter()
    n = 0
    for _ in range(iters):
        n += len(next(loader))
    dt = time.perf_counter() - t0
    return [
        Row(
            "loader",
            "data",
            "-",
            cfg.solver.ims_per_batch,
            1000 * dt / n,
            n / dt,
            float("nan"),
            iterations=iters,
        )
    ]


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, option="--device")
    gpu = device.type == "cuda"
    cfg = load_config(args.config, args.overrides)
    h, w = (int(v) for v in (args.size or ("800x1333" if gpu else "320x480")).split("x"))
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.iters else (3.0 if gpu else 10.0)
    iters = args.iters or (50 if gpu else 5)
    backends = parse_backends(args, cfg, device)
    with OtherProcesses() as other:
        if args.loader:
            rows = run_loader(cfg, iters * 5)
        elif args.sweep:
            rows = run_sweep(args, cfg, device, h, w, warmup, iters)
        else:
            rows = run_models(args, cfg, device, h, w, warmup, iters, backends)
    where = torch.cuda.get_device_name(device) if gpu else cpu_description()
    counts = sorted({r.iterations for r in rows if r.iterations})
    n = f"{counts[0]}" if len(counts) < 2 else f"{counts[0]}-{counts[-1]}"
    busy = "" if other.cores is None else f"; other processes kept {other.cores:.1f} cores busy"
    print(
        f"device: {where}, input {h}x{w}; each row: median and 10th percentile of {n or iters} "
        f"timed iterations after {warmup} warm-up, implementations in alternation{busy}"
    )
    print(format_table(rows))  # the table is the tool's output (stdout, so it can be redirected)
    wandered = [r for r in rows if r.drift > 0.1]
    if wandered:
        logger.warning(
            "the machine's speed changed while timing (the medians of the run's quarters differ "
            "by %s%s): another run's medians may differ by as much; p10 repeats better, and the "
            "speedup column compares implementations timed in alternation",
            ", ".join(f"{r.drift:.0%} ({r.impl})" for r in wandered[:3]),
            "" if other.cores is None or other.cores > 0.25 else ", no other process busy",
        )
    if not gpu and other.cores is not None and other.cores > 0.25:
        logger.warning(
            "other processes kept %.1f of %d CPU cores busy while timing: times on a busy CPU "
            "differ between runs (compare the rows of one run: they were timed in alternation)",
            other.cores,
            os.cpu_count(),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
