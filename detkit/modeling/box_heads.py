"""Per-region box heads: pooled RoI features (R, C, S, S) -> one feature vector per region (R, D)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..registry import ROI_BOX_HEADS
from .backbones.norm import NORMS, make_norm
from .backbones.resnet import check_block_options, init_he, make_stage


@ROI_BOX_HEADS.register()
class TwoMLPHead(nn.Module):
    """The FPN head: flatten, fc6 + ReLU, fc7 + ReLU (torchvision's TwoMLPHead)."""

    backbone_args = ()  # keys of model.backbone the builder passes on (none: see Res5Head)

    def __init__(self, *, in_channels: int, pooler_size: int, fc_dim: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pooler_size * pooler_size, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.out_channels = fc_dim
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc6(x.flatten(1)))
        return torch.relu(self.fc7(x))


@ROI_BOX_HEADS.register()
class ConvFCHead(nn.Module):
    """3x3 convs (+ norm) + ReLU on the pooled grid, then flatten and fc + ReLU layers.

    The defaults are torchvision's fasterrcnn_resnet50_fpn_v2 head (four 256-channel convs with
    BatchNorm, one fc of 1024): the convs see the RoI's spatial layout before it is flattened,
    and a single fc then suffices. A conv followed by a norm has no bias (the norm's shift is
    one). Modules: ``convs.i``, ``norms.i``, ``fcs.j``.
    """

    backbone_args = ()

    def __init__(
        self,
        *,
        in_channels: int,
        pooler_size: int,
        conv_dims: Sequence[int] = (256, 256, 256, 256),
        fc_dims: Sequence[int] = (1024,),
        norm: str = "BN",
    ):
        super().__init__()
        if norm and norm not in NORMS:
            raise ValueError(
                f"unknown ConvFCHead norm '{norm}'; valid: '' (none), {', '.join(NORMS)}"
            )
        if not conv_dims and not fc_dims:
            raise ValueError("ConvFCHead needs at least one of conv_dims, fc_dims")
        self.convs, self.norms, self.fcs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = in_channels
        for dim in conv_dims:
            self.convs.append(nn.Conv2d(channels, dim, 3, padding=1, bias=not norm))
            if norm:
                self.norms.append(make_norm(norm, dim))
            channels = dim
        width = channels * pooler_size * pooler_size
        for dim in fc_dims:
            self.fcs.append(nn.Linear(width, dim))
            width = dim
        self.out_channels = width
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = torch.relu(x)
        x = x.flatten(1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return x


@ROI_BOX_HEADS.register()
class Res5Head(nn.Module):
    """The C4 head (the paper's design): the whole res5 stage runs on each 14x14 pooled region
    (stride 2 brings it to 7x7), then global average pooling. No hidden fc layers, no dropout.
    Never dilated (detectron2's C4 head is not either): a dilated res5 is the DC5 backbone."""

    # This head is the backbone's res5 stage, so it is built like the backbone: the builder passes
    # these model.backbone keys on (and ImageNet weights load layer4 here, see checkpoint/torchvision_names.py).
    backbone_args = (
        "depth",
        "norm",
        "gn_groups",
        "stride_in_1x1",
        "num_groups",
        "width_per_group",
    )

    def __init__(
        self,
        *,
        in_channels: int,
        depth: int = 101,
        norm: str = "FrozenBN",
        gn_groups: int = 32,
        stride_in_1x1: bool = False,
        num_groups: int = 1,
        width_per_group: int = 64,
        pooler_size: int = 14,
    ):
        super().__init__()
        del pooler_size  # any size works: global average pooling follows (every box head takes it)
        options = dict(
            stride_in_1x1=stride_in_1x1, num_groups=num_groups, width_per_group=width_per_group
        )
        check_block_options(depth, **options)
        self.res5 = make_stage(
            3,
            depth=depth,
            in_channels=in_channels,
            stride=2,
            norm=norm,
            gn_groups=gn_groups,
            **options,
        )
        self.out_channels = (64 if depth < 50 else 256) * 8
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))
