"""Per-region box heads: pooled RoI features (R, C, S, S) -> one feature vector per region (R, D)."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import ROI_BOX_HEADS
from .backbones.resnet import BLOCKS_PER_DEPTH, BasicBlock, Bottleneck, init_he, make_stage


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
class Res5Head(nn.Module):
    """The C4 head (the paper's design): the whole res5 stage runs on each 14x14 pooled region
    (stride 2 brings it to 7x7), then global average pooling. No hidden fc layers, no dropout."""

    # This head is the backbone's res5 stage, so it is built like the backbone: the builder passes
    # these model.backbone keys on (and ImageNet weights load layer4 here, see modeling/weights.py).
    backbone_args = ("depth", "norm", "gn_groups")

    def __init__(
        self,
        *,
        in_channels: int,
        depth: int = 101,
        norm: str = "FrozenBN",
        gn_groups: int = 32,
        pooler_size: int = 14,
    ):
        super().__init__()
        del pooler_size  # any size works: global average pooling follows (every box head takes it)
        block = BasicBlock if depth < 50 else Bottleneck
        self.res5 = make_stage(
            block, in_channels, 512, BLOCKS_PER_DEPTH[depth][3], 2, norm, gn_groups
        )
        self.out_channels = 512 * block.expansion
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))
