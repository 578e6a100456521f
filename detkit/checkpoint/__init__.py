"""Checkpoints and weight files: reading them, converting foreign ones, and which config fits one.

- ``reader``: the one loader (``load_checkpoint``, ``load_model_weights``, ``load_state_file``) and
  the ImageNet initialisation of a model to train (``init_from_config``).
- ``torchvision_names`` / ``detectron2_names``: torchvision's, detectron2's and Caffe2's tensor
  names renamed to detkit's (detectron2 and Caffe2 files are converted as they are read).
- ``convert``: foreign weights written as detkit files (tools/convert_weights.py).
- ``config_match``: the shipped configs a file fits, for the "does not fit" error.

Writing is ``detkit.utils.io``'s (atomic); the training state and its rotation are
``detkit.engine.checkpoint``'s.
"""

from .reader import (
    init_from_config,
    load_backbone_weights,
    load_checkpoint,
    load_model_weights,
    load_state_file,
    state_dict_of,
)

__all__ = [
    "init_from_config",
    "load_backbone_weights",
    "load_checkpoint",
    "load_model_weights",
    "load_state_file",
    "state_dict_of",
]
