"""Reading checkpoints and weight files: the one place a file is opened and tensors are copied in.

:func:`load_checkpoint` opens every checkpoint or weights file and :func:`load_model_weights`
copies tensors into a model. Every error names the file (torch's own "PytorchStreamReader failed
..." does not). detectron2's files (zoo ``.pkl``, training ``.pth``), Caffe2 ImageNet ``.pkl``
backbones and mmdetection's Faster R-CNN ``.pth`` (``state_dict`` + ``meta``) come back converted
to detkit's names (``detectron2_names``, ``mmdet_names``), so they work wherever a checkpoint is
accepted. ``.pkl`` files are read by an unpickler that builds only dicts, lists,
strings, numbers and numpy arrays: a weights file from the internet cannot run code. A file that
does not fit the model says which of the shipped configs it fits (``config_match``).

:func:`init_from_config` loads ``model.backbone.weights`` (an ImageNet ResNet) into a model built
for training; ``build_model`` builds modules only and reads no file.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from detkit.errors import CheckpointError

from .config_match import configs_fitting, describe_foreign
from .detectron2_names import to_detkit_checkpoint
from .mmdet_imagenet import imagenet_to_torchvision
from .mmdet_names import to_detkit_checkpoint as mmdet_to_detkit_checkpoint
from .torchvision_names import imagenet_to_detkit

logger = logging.getLogger("detkit")

PathLike = Union[str, os.PathLike]


def _first_sentence(error: BaseException) -> str:
    """torch's reader errors go on for three sentences of advice about miniz; the first one says
    what failed, and the rest would turn the tools' one-line error into a paragraph."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path: PathLike, require: Sequence[str] = (), what: str = "") -> Dict[str, Any]:
    """The dict a checkpoint or weights file holds, on CPU.

    ``require``: keys that must be present, e.g. ``("model", "config")`` for a file the model is
    rebuilt from; ``what`` names that kind of file in the error.
    """
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint not found: {path} (detkit never downloads weights; give the path of a "
            "local file)"
        )
    try:
        if Path(path).suffix == ".pkl":
            obj = load_array_pickle(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except _RefusedGlobal as e:
        raise CheckpointError(f"refused to read {path}: {e}") from None
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "this file is damaged"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_sentence(e)} (the file "
            "is truncated or damaged, or is not a checkpoint)"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "config" not in obj:  # a detkit checkpoint is never converted
        obj = mmdet_to_detkit_checkpoint(obj, path) or to_detkit_checkpoint(obj, path) or obj
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path} lacks {missing}: not {what or 'a checkpoint with ' + str(list(require))}"
        )
    return obj


# what a weights pickle may build: numpy arrays (and their dtypes and scalars), plus the plain
# containers pickle makes without a global. Bytes pickled by Python 3 with protocol 2 come through
# _codecs.encode; Python 2 pickles (MSRA's R-50.pkl) need encoding="latin1" for the array data.
_ARRAY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_PICKLE_GLOBALS:
            raise _RefusedGlobal(
                f"it refers to {module}.{name}; a weights .pkl may hold only dicts, lists, "
                "strings, numbers and numpy arrays (refused: unpickling it could run code)"
            )
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            import numpy

            if hasattr(numpy, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def load_array_pickle(path: PathLike) -> Any:
    """Read a ``.pkl`` weights file (detectron2's model zoo, Caffe2 ImageNet blobs) with an
    unpickler that refuses every global except numpy's array reconstruction."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def state_dict_of(obj: Dict[str, Any], path: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict in a loaded file: a detkit checkpoint's ``model``, a ``state_dict`` entry,
    or the dict itself (a plain ``torch.save(model.state_dict())``)."""
    state = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no state dict of tensors (expected a detkit checkpoint with "
            "'model', or a plain state dict)"
        )
    return state


def load_state_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (e.g. torchvision's, for conversion)."""
    return state_dict_of(load_checkpoint(path), path)


def load_model_weights(
    model: nn.Module,
    path: PathLike,
    *,
    strict: bool,
    checkpoint: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Load detector weights from a detkit checkpoint (``{"model": ...}``) or a plain state dict
    into ``model``; returns the file's other entries (class names, config, ...).

    ``strict`` (testing, the API): the file must hold exactly the model's tensors with their
    shapes, else an error naming the file and the keys. Not strict (``model.weights`` for
    fine-tuning): tensors whose shape differs, e.g. the predictor of another number of classes,
    are skipped with a warning. ``checkpoint``: the file's content when the caller loaded it
    already (to read the class names before building the model), so it is not read twice.
    """
    obj = load_checkpoint(path) if checkpoint is None else checkpoint
    state = dict(state_dict_of(obj, path))
    own = model.state_dict()
    # BatchNorm's batch counters hold no weights: a file from a model with trainable BN fits a
    # model that freezes those layers (FrozenBN has no counter), and the other way round
    counter = "num_batches_tracked"
    state = {k: v for k, v in state.items() if k in own or not k.endswith(counter)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing or unexpected):
        raise CheckpointError(
            _mismatch_message(path, obj, state, own, mismatched, missing, unexpected)
        )
    for k in mismatched:
        state.pop(k)
    _warn_unused(path, mismatched, missing, unexpected)
    model.load_state_dict(state, strict=False)
    logger.info("loaded model weights from %s", path)
    return {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}


def _names(keys: Sequence[str], limit: int = 6) -> str:
    """``a, b, c (+N more)``: enough names to recognise the part, not a wall of text."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _parts(keys: Sequence[str]) -> str:
    """Tensor names grouped by the part they belong to (``backbone.layer4.* (27)``), so that one
    missing stage or neck reads as one item; a few names are listed in full."""
    if len(keys) <= 3:
        return ", ".join(keys)
    counts: Dict[str, int] = {}
    for k in keys:
        part = ".".join(k.split(".")[:2])
        counts[part] = counts.get(part, 0) + 1
    groups = [f"{p}.* ({n})" for p, n in counts.items()]
    return _names(groups)


def _mismatch_message(path, obj, state, own, mismatched, missing, unexpected) -> str:
    """What does not fit, by name and shape, and which config the file fits instead."""
    parts = [f"{path} does not fit the model built from the config:"]
    if mismatched:
        shapes = [
            f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in mismatched
        ]
        parts.append(f"{len(mismatched)} tensors differ in shape: {_names(shapes, 4)};")
    if missing:
        parts.append(
            f"{len(missing)} are missing (model tensors not in the file): {_parts(missing)};"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} are not used by the model: {_parts(unexpected)};")
    foreign = describe_foreign(state)
    if foreign:
        return " ".join(parts + [foreign])
    if "config" in obj:
        parts.append("the file stores the config it was made with: Detector.from_checkpoint")
        parts.append("rebuilds that model;")
    fitting = configs_fitting(
        {k: tuple(v.shape) for k, v in state.items()}, source=str(obj.get("source", ""))
    )
    if fitting:
        parts.append(f"the file fits {' or '.join(fitting)}")
    else:
        parts.append(
            "check model.num_classes, the backbone (depth, groups), the neck and the heads"
        )
    return " ".join(parts)


def _warn_unused(path: PathLike, mismatched, missing, unexpected) -> None:
    if mismatched:
        logger.warning(
            "%s: %d tensors skipped for another shape (kept at their initialisation): %s",
            path,
            len(mismatched),
            mismatched[:6],
        )
    if missing:
        logger.warning(
            "%s: %d model tensors not in the file, e.g. %s", path, len(missing), missing[:3]
        )
    if unexpected:
        logger.warning(
            "%s: %d tensors in the file are not used by the model, e.g. %s",
            path,
            len(unexpected),
            unexpected[:3],
        )


# ---------------------------------------------------------------------------------------------
# ImageNet backbones (model.backbone.weights)


def load_backbone_weights(model: nn.Module, path: PathLike) -> None:
    """Load a torchvision ImageNet ResNet checkpoint (e.g. resnet101-*.pth) into the backbone; also
    mmdet's (``mmdet_imagenet``: open-mmlab:// ResNeXts, MSRA's ResNets as .pth)."""
    c4 = model.neck is None
    # mmdet's ImageNet files (module./backbone. prefixes) read as torchvision's
    state = imagenet_to_detkit(imagenet_to_torchvision(load_state_file(path)), c4)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(
            f"{path}: shapes differ for {bad[:3]} (is model.backbone.depth right?)"
        )
    result = model.load_state_dict(state, strict=False)
    expected_missing = [
        k for k in result.missing_keys if k.startswith("backbone.") or ".res5." in k
    ]
    if result.unexpected_keys:
        logger.warning(
            "%s: %d keys not used, e.g. %s",
            path,
            len(result.unexpected_keys),
            result.unexpected_keys[:3],
        )
    if expected_missing:
        logger.warning(
            "%s: %d backbone keys missing, e.g. %s",
            path,
            len(expected_missing),
            expected_missing[:3],
        )
    logger.info("loaded ImageNet backbone weights from %s (%d tensors)", path, len(state))


def init_from_config(model: nn.Module, cfg) -> nn.Module:
    """Load ``model.backbone.weights`` into ``model`` when the config names a file (the ImageNet
    initialisation of a model about to be trained); returns ``model``. A model that is loaded
    from a detector checkpoint next needs no such call: that checkpoint holds every tensor."""
    if cfg.model.backbone.weights:
        load_backbone_weights(model, cfg.model.backbone.weights)
    return model
