"""Normalisation layers selectable by name: FrozenBN, BN, SyncBN, GN."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters ("BN in test mode", as the paper).

    Fine-tuning detectors uses 1-2 images per GPU; batch statistics that small are noise, so the
    ImageNet statistics are kept. Parameter names match nn.BatchNorm2d so torchvision checkpoints load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_and_shift(self):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        out = x * scale.to(x.dtype).reshape(1, -1, 1, 1)
        if out.requires_grad or torch.jit.is_tracing():
            return out + shift.to(x.dtype).reshape(1, -1, 1, 1)
        # inference: add in place, one activation-sized tensor fewer to allocate and fill; the
        # same two roundings as torchvision's x * scale + shift (a fused batch_norm or FMA would
        # round once and, measured, move a random-weight detector off torchvision's detections)
        return out.add_(shift.to(x.dtype).reshape(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


NORMS = ("FrozenBN", "BN", "SyncBN", "GN")


def make_norm(name: str, channels: int, gn_groups: int = 32) -> nn.Module:
    """``BN`` is a plain nn.BatchNorm2d (eps 1e-5): batch statistics while training, its running
    statistics in eval mode, which is how torchvision evaluates its pretrained v2 detector;
    ``freeze_module`` turns it into FrozenBN for frozen stages (same function in eval mode)."""
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        return nn.GroupNorm(min(gn_groups, channels), channels)
    raise ValueError(f"unknown norm '{name}'; valid: {', '.join(NORMS)}")


def freeze_module(module: nn.Module) -> None:
    """Stop gradients and turn trainable BN into frozen BN (its statistics are then fixed too)."""
    for p in module.parameters():
        p.requires_grad_(False)
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_module(child)


def fixed_affine(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(scale, shift)`` of a norm that is a fixed per-channel affine map (frozen BN; BN and SyncBN
    in eval mode, which use their running statistics), computed as its own forward does; None for
    any other module (GroupNorm depends on the input, BN in training mode on the batch)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if (
        isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm))
        and not norm.training
        and norm.running_var is not None
    ):
        scale = (norm.running_var + norm.eps).rsqrt()
        if norm.weight is not None:
            scale = norm.weight * scale
        shift = -norm.running_mean * scale
        return scale, shift if norm.bias is None else norm.bias + shift
    return None


def _conv_norm_candidates(module: nn.Module) -> Iterator[Tuple[dict, str, dict, str]]:
    """``(conv holder, conv key, norm holder, norm key)`` for every place where a norm may directly
    follow a convolution: two consecutive children of a module (``conv1``/``bn1``, the Sequential
    of a shortcut), or entry i of a ModuleList ``<x>norms`` and entry i of its sibling ``<x>convs``
    (the FPN's ``lateral_norms``/``output_norms``, ConvFCHead's ``norms``)."""
    for parent in list(module.modules()):
        children = parent._modules
        names = list(children)
        for a, b in zip(names, names[1:]):
            yield children, a, children, b
        for name, convs in children.items():
            norms = (
                children.get(name[: -len("convs")] + "norms") if name.endswith("convs") else None
            )
            if isinstance(convs, nn.ModuleList) and isinstance(norms, nn.ModuleList):
                for i in range(min(len(convs), len(norms))):
                    yield convs._modules, str(i), norms._modules, str(i)


@torch.no_grad()
def fuse_frozen_bn(module: nn.Module) -> int:
    """Fold every norm that is a fixed affine map (``fixed_affine``: frozen BN, BN/SyncBN in eval
    mode) into the Conv2d it directly follows (w' = w * scale, b' = b * scale + shift) and replace the
    norm with Identity. The result is the same function up to float rounding, with one
    elementwise pass less per norm -- which bf16/channels_last cannot remove on their own. Inference
    only: the norms are gone (training again would train the convolutions unnormalised). Which
    norm follows which convolution is read from the module structure (see
    ``_conv_norm_candidates``). Returns the number of folded norms."""
    count = 0
    for conv_holder, conv_key, norm_holder, norm_key in _conv_norm_candidates(module):
        conv, norm = conv_holder[conv_key], norm_holder[norm_key]
        if (
            not isinstance(conv, nn.Conv2d)
            or getattr(norm, "num_features", None) != conv.out_channels
        ):
            continue
        affine = fixed_affine(norm)
        if affine is None:
            continue
        scale, shift = affine
        if conv.bias is not None:
            shift = conv.bias * scale + shift
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift.detach().clone(), requires_grad=conv.weight.requires_grad)
        norm_holder[norm_key] = nn.Identity()
        count += 1
    return count
