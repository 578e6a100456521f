"""ResNet-18/34/50/101/152 with torchvision's parameter names (conv1, bn1, layer1..layer4).

torchvision ImageNet checkpoints load as they are. Bottleneck blocks put the stride on the 3x3
convolution (torchvision's "v1.5"). Outputs a dict of the requested stages: res2 (stride 4) ..
res5 (stride 32). The trunk stops at the last requested stage: for the C4 design (out_features
[res4]) ``layer4`` is not built here, it runs per region in the RoI head (see ``Res5Head``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from .norm import freeze_module, make_norm

BLOCKS_PER_DEPTH = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int, norm: str, gn_groups: int = 32
    ):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, channels, gn_groups)
        self.conv2 = nn.Conv2d(channels, out, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, norm, gn_groups)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, in_channels: int, channels: int, stride: int, norm: str, gn_groups: int = 32
    ):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = make_norm(norm, channels, gn_groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = make_norm(norm, channels, gn_groups)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = make_norm(norm, out, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, norm, gn_groups)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _shortcut(in_channels, out_channels, stride, norm, gn_groups):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        make_norm(norm, out_channels, gn_groups),
    )


def make_stage(
    block,
    in_channels: int,
    channels: int,
    num_blocks: int,
    stride: int,
    norm: str,
    gn_groups: int = 32,
):
    layers = [block(in_channels, channels, stride, norm, gn_groups)]
    for _ in range(num_blocks - 1):
        layers.append(block(channels * block.expansion, channels, 1, norm, gn_groups))
    return nn.Sequential(*layers)


def init_he(module: nn.Module) -> None:
    """He (MSRA) initialisation: Var[w] = 2 / fan for ReLU networks; norm layers to identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """ResNet trunk returning the stages named in ``out_features``; stages after the last of them
    are not built (no unused parameters, e.g. res5 in the C4 design).

    freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and res2, ... 5 everything.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: str = "FrozenBN",
        freeze_at: int = 2,
        out_features: Sequence[str] = STAGE_NAMES,
        gn_groups: int = 32,
    ):
        super().__init__()
        if depth not in BLOCKS_PER_DEPTH:
            raise ValueError(
                f"ResNet depth {depth} not supported; valid: {sorted(BLOCKS_PER_DEPTH)}"
            )
        bad = [f for f in out_features if f not in STAGE_NAMES]
        if bad or not out_features:
            raise ValueError(
                f"ResNet out_features must name stages among {list(STAGE_NAMES)}; got "
                f"{list(out_features)}"
            )
        self.depth, self.norm = depth, norm
        self.block = BasicBlock if depth < 50 else Bottleneck
        self.out_features = list(out_features)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, 64, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        in_ch = 64
        n_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1
        self.out_channels: Dict[str, int] = {}
        for i in range(n_stages):
            stage = make_stage(
                self.block,
                in_ch,
                widths[i],
                BLOCKS_PER_DEPTH[depth][i],
                1 if i == 0 else 2,
                norm,
                gn_groups,
            )
            self.add_module(f"layer{i + 1}", stage)
            in_ch = widths[i] * self.block.expansion
            self.out_channels[STAGE_NAMES[i]] = in_ch
        self.strides = {f: STAGE_STRIDES[f] for f in self.out_features}
        init_he(self)
        self.freeze(freeze_at)

    def stages(self) -> List[nn.Module]:
        return [getattr(self, f"layer{i}") for i in range(1, 5) if hasattr(self, f"layer{i}")]

    def freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            freeze_module(self.conv1)
            self.bn1 = _frozen(self.bn1)
        for i, stage in enumerate(self.stages(), start=2):
            if freeze_at >= i:
                freeze_module(stage)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = {}
        last = self.out_features[-1]
        for name, stage in zip(STAGE_NAMES, self.stages()):
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
            if name == last:
                break
        return outputs


def _frozen(norm: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.add_module("n", norm)
    freeze_module(holder)
    return holder.n
