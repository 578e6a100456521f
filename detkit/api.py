"""The Python entry point: build a detector from a config or checkpoint and predict on images.

from detkit import Detector
det = Detector.from_checkpoint("output/last.pth", device="cuda")
results = det.predict(["street.jpg"])          # or RGB uint8 HxWx3 numpy arrays
results[0]["boxes"], results[0]["scores"], results[0]["labels"], results[0]["names"]
det.predict(images, score_thresh="output/analysis/thresholds.json")   # per-class operating points

det = Detector.from_checkpoint("output/last.pth", backend="onnxruntime")   # CPU inference

Two backends give the same outputs (``detkit.inference.backends``): ``eager`` (the default: the PyTorch
model, CPU or GPU, every test-time option) and ``onnxruntime`` (the model exported once to ONNX,
cached next to the checkpoint, run by onnxruntime on the CPU in float32 at the config's single test
size; needs ``pip install 'detkit[export]'``). What the onnxruntime graph cannot do (test.scales,
test.flip, test.precision=bf16/fp16, refinement, detectron2's resize conventions, a GPU) is refused
with a ``BackendError`` when the Detector is built.

Predicting never changes ``det.model``: the eager backend folds BN and changes the memory layout
in a copy (``optimize_for_inference``), so ``det.model.state_dict()`` stays the one loaded.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .analysis.thresholds import ThresholdSource, load_thresholds
from .checkpoint import init_from_config, load_checkpoint, load_model_weights
from .config import Config, load_config
from .inference.backends import check_backend, make_predictor
from .modeling import build_model
from .structures.resize import resize_scale, resize_size
from .utils.device import resolve_device

ImageLike = Union[str, os.PathLike, np.ndarray]


# what load_checkpoint names when a file cannot rebuild a Detector on its own
_DETKIT_CHECKPOINT = (
    "a detkit checkpoint (a dict with 'model' and 'config'); convert torchvision or detectron2 "
    "weights with tools/convert_weights.py, or give them to Detector.from_config(CONFIG, weights=)"
)


class Detector:
    """A model in eval mode plus its test-time preprocessing and class names.

    ``device``: "cpu" (the default), "cuda", "cuda:1"... or "auto" (CUDA when available); asking
    for CUDA on a machine without it is a ``ConfigError`` naming the option.
    ``backend``: "eager" or "onnxruntime" (see the module docstring); checked here, so an option the
    backend cannot run fails before anything is exported. ``weights``: the file the model's tensors
    came from (the onnxruntime backend caches its graph next to it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Config,
        device: str = "cpu",
        backend: str = "eager",
        weights: Optional[str] = None,
    ):
        self.cfg = cfg
        self.device = resolve_device(device, option="device")
        check_backend(cfg, backend, self.device)
        self.backend, self.weights = backend, weights
        self.model = model.to(self.device).eval()
        self._predictor: Optional[torch.nn.Module] = None
        self._build_lock = threading.Lock()

    @property
    def class_names(self) -> List[str]:
        return self.model.class_names

    @classmethod
    def from_config(
        cls,
        config: Union[str, Config, dict],
        weights: Optional[str] = None,
        device: str = "cpu",
        overrides: Sequence[str] = (),
        backend: str = "eager",
    ) -> "Detector":
        """Build from a config file/object; ``weights`` is a detkit checkpoint, a converted state
        dict or a detectron2 zoo file (converted in memory, with COCO's or VOC's class names)."""
        cfg = (
            load_config(config, overrides)
            if not isinstance(config, Config)
            else config.with_overrides(overrides)
        )
        ckpt = load_checkpoint(weights) if weights else {}
        model = build_model(cfg, class_names=ckpt.get("class_names"))
        if weights:  # every tensor: the backbone's initialisation would be overwritten
            load_model_weights(model, weights, strict=True, checkpoint=ckpt)
        else:
            init_from_config(model, cfg)
        return cls(model, cfg, device, backend=backend, weights=weights and str(weights))

    @classmethod
    def from_checkpoint(
        cls, path: str, device: str = "cpu", overrides: Sequence[str] = (), backend: str = "eager"
    ) -> "Detector":
        """Rebuild the model from the config stored in the checkpoint (no config file needed)."""
        ckpt = load_checkpoint(path, require=("model", "config"), what=_DETKIT_CHECKPOINT)
        cfg = Config.from_dict(ckpt["config"], origin=f"checkpoint {path}").with_overrides(
            overrides
        )
        model = build_model(cfg, class_names=ckpt.get("class_names"))
        load_model_weights(model, path, strict=True, checkpoint=ckpt)
        return cls(model, cfg, device, backend=backend, weights=str(path))

    def sample(self, image: ImageLike, min_size: Optional[int] = None) -> dict:
        """A test sample: the original image as a (3, H, W) uint8 tensor plus the size to resize it
        to (``input.resize_rounding``) and the resize scale."""
        if isinstance(image, (str, os.PathLike)):
            from .data.image_io import read_image

            image = read_image(str(image), exif=self.cfg.input.exif)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected an RGB uint8 HxWx3 image, got dtype {image.dtype} and shape {image.shape}"
            )
        h, w = image.shape[:2]
        min_size = min_size or self.cfg.input.min_size_test
        max_size = self.cfg.input.max_size_test
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": h,
            "width": w,
            "size": resize_size(h, w, min_size, max_size, self.cfg.input.resize_rounding),
            "scale": resize_scale(h, w, min_size, max_size),
        }

    @property
    def predictor(self) -> torch.nn.Module:
        """The model as the config tests it, built once by ``make_predictor`` for this backend:
        eager = ``build_predictor`` (as the trainer's evaluation: test.scales/test.flip
        augmentation, test.precision autocast) on an inference-only copy of ``self.model`` made by
        ``optimize_for_inference`` (frozen BN folded into the convolutions and channels_last on
        the CPU: same results up to float rounding; ``self.model`` is left as loaded);
        onnxruntime = the cached ONNX graph (exported on first use)."""
        with self._build_lock:  # two threads' first predict build it once
            if self._predictor is None:
                self._predictor = make_predictor(
                    self.model, self.cfg, self.backend, weights=self.weights
                ).eval()
        return self._predictor

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike],
        batch_size: int = 1,
        score_thresh: ThresholdSource = None,
    ) -> List[Dict[str, np.ndarray]]:
        """One dict per image: boxes (N, 4) XYXY original pixels, scores (N,), labels (N,) 0-based, names.

        ``score_thresh`` keeps, in each image, the detections with ``score >= threshold[label]``
        (on top of the config's ``model.roi_heads.score_thresh_test``): None (the default) keeps
        all; a number applies to every class; a dict ``{class name: score}`` or the path of a
        thresholds file written by the error analysis (``detkit.analysis.thresholds``: the
        per-class best-F1 operating points) gives each class its own, and classes it leaves out
        use the file's ``default`` if it has one, else keep everything. A wrong class name, a
        score outside [0, 1] or an unreadable file is a ``ConfigError`` before any image is run."""
        thresholds = load_thresholds(score_thresh, self.class_names, base=0.0)
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        results = []
        for start in range(0, len(images), batch_size):
            batch = [self.sample(im) for im in images[start : start + batch_size]]
            results += [self._to_numpy(o, thresholds) for o in self.predictor(batch)]
        return results

    def _to_numpy(
        self, out: Dict[str, torch.Tensor], thresholds: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        boxes, scores = out["boxes"].cpu().numpy(), out["scores"].cpu().numpy()
        labels = out["labels"].cpu().numpy().astype(np.int64)
        if thresholds is not None:
            keep = scores >= thresholds[labels]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "names": [self.class_names[i] for i in labels],
        }
