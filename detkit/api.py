"""The Python entry point: build a detector from a config or checkpoint and predict on images.

from detkit import Detector
det = Detector.from_checkpoint("output/last.pth", device="cuda")
results = det.predict(["street.jpg"])          # or RGB uint8 HxWx3 numpy arrays
results[0]["boxes"], results[0]["scores"], results[0]["labels"], results[0]["names"]
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .config import Config, load_config
from .modeling import build_model
from .structures.resize import test_scale

logger = logging.getLogger("detkit")
ImageLike = Union[str, os.PathLike, np.ndarray]


def load_checkpoint_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(
            f"{path} is not a detkit checkpoint (a dict with 'model' and 'config'); convert "
            "torchvision weights with tools/convert_weights.py"
        )
    return ckpt


class Detector:
    """A model in eval mode plus its test-time preprocessing and class names."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._predictor: Optional[torch.nn.Module] = None

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
    ) -> "Detector":
        """Build from a config file/object; ``weights`` is a detkit checkpoint or converted state dict."""
        cfg = (
            load_config(config, overrides)
            if not isinstance(config, Config)
            else config.with_overrides(overrides)
        )
        class_names = None
        state = None
        if weights:
            ckpt = (
                torch.load(weights, map_location="cpu", weights_only=False)
                if os.path.isfile(weights)
                else None
            )
            if ckpt is None:
                raise FileNotFoundError(f"weights file not found: {weights}")
            state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
            class_names = ckpt.get("class_names") if isinstance(ckpt, dict) else None
        model = build_model(cfg, class_names=class_names)
        if state is not None:
            _load_model_state(model, state, weights)
        return cls(model, cfg, device)

    @classmethod
    def from_checkpoint(
        cls, path: str, device: str = "cpu", overrides: Sequence[str] = ()
    ) -> "Detector":
        """Rebuild the model from the config stored in the checkpoint (no config file needed)."""
        ckpt = load_checkpoint_file(path)
        cfg = Config.from_dict(ckpt["config"], origin=f"checkpoint {path}").with_overrides(
            overrides
        )
        model = build_model(cfg, class_names=ckpt.get("class_names"))
        _load_model_state(model, ckpt["model"], path)
        return cls(model, cfg, device)

    def sample(self, image: ImageLike, min_size: Optional[int] = None) -> dict:
        """A test sample: the original image as a (3, H, W) uint8 tensor plus the resize scale."""
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
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": h,
            "width": w,
            "scale": test_scale(h, w, min_size, self.cfg.input.max_size_test),
        }

    @property
    def predictor(self) -> torch.nn.Module:
        """The model as the config tests it: test.scales/test.flip augmentation, test.precision autocast."""
        if self._predictor is None:
            from .modeling.test_time import build_predictor

            self._predictor = build_predictor(self.model, self.cfg).eval()
        return self._predictor

    @torch.no_grad()
    def predict(
        self, images: Sequence[ImageLike], batch_size: int = 1
    ) -> List[Dict[str, np.ndarray]]:
        """One dict per image: boxes (N, 4) XYXY original pixels, scores (N,), labels (N,) 0-based, names."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        results = []
        for start in range(0, len(images), batch_size):
            batch = [self.sample(im) for im in images[start : start + batch_size]]
            results += [self._to_numpy(o) for o in self.predictor(batch)]
        return results

    def _to_numpy(self, out: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        labels = out["labels"].cpu().numpy().astype(np.int64)
        return {
            "boxes": out["boxes"].cpu().numpy(),
            "scores": out["scores"].cpu().numpy(),
            "labels": labels,
            "names": [self.class_names[i] for i in labels],
        }


def _load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"{source}: weight shapes do not fit the model built from the config (is "
            f"model.num_classes right?): {wrong[:3]}"
        )
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or result.missing_keys:
        raise ValueError(
            f"{source}: weights do not fit the model built from the config: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    logger.info("loaded weights from %s", source)
