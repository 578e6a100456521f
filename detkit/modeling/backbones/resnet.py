"""ResNet-18/34/50/101/152 and ResNeXt with torchvision's parameter names (conv1, bn1, layer1..layer4).

torchvision ImageNet checkpoints load as they are. Bottleneck blocks put the stride on the 3x3
convolution by default (torchvision's "v1.5"); ``stride_in_1x1`` puts it on the first 1x1 instead,
as MSRA's original Caffe ResNets (the ImageNet initialisation of detectron2's R50/R101 models) were
trained. ``num_groups`` / ``width_per_group`` give ResNeXt (X101-32x8d: 32 groups of 8 channels in
res2, doubled per stage); ``res5_dilation=2`` keeps res5 at stride 16 with dilated 3x3 convolutions
in every res5 block (detectron2's DC5 design). Outputs a dict of the requested stages: res2
(stride 4) .. res5 (stride 32, or 16 when dilated). The trunk stops at the last requested stage: for
the C4 design (out_features [res4]) ``layer4`` is not built here, it runs per region in the RoI head
(see ``Res5Head``).
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
RES5_DILATIONS = (1, 2)


def add_shortcut(y: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``y + identity``; at inference in place (one activation-sized tensor fewer to allocate and
    fill per block), with the same rounding."""
    return y + identity if y.requires_grad or torch.jit.is_tracing() else y.add_(identity)


class BasicBlock(nn.Module):
    def __init__(
        self, *, in_channels: int, out_channels: int, stride: int, norm: str, gn_groups: int = 32
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, out_channels, gn_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_channels, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm, gn_groups)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(add_shortcut(y, identity))


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (grouped, dilated) -> 1x1 (expand), plus the shortcut.

    The stride sits on the 3x3 (torchvision) or, with ``stride_in_1x1``, on the first 1x1 (MSRA's
    Caffe ResNets; their weights are only right with it). The shortcut's 1x1 takes the stride
    either way."""

    def __init__(
        self,
        *,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int,
        norm: str,
        gn_groups: int = 32,
        stride_in_1x1: bool = False,
        num_groups: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = bottleneck_channels
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride_1x1, bias=False)
        self.bn1 = make_norm(norm, width, gn_groups)
        self.conv2 = nn.Conv2d(
            width,
            width,
            3,
            stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
        )
        self.bn2 = make_norm(norm, width, gn_groups)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm, gn_groups)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(add_shortcut(y, identity))


def _shortcut(in_channels, out_channels, stride, norm, gn_groups):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        make_norm(norm, out_channels, gn_groups),
    )


def check_block_options(
    depth: int, *, stride_in_1x1: bool, num_groups: int, width_per_group: int
) -> None:
    """The bottleneck options exist for depth >= 50 only (BasicBlock has no 1x1 and no groups)."""
    if depth not in BLOCKS_PER_DEPTH:
        raise ValueError(f"ResNet depth {depth} not supported; valid: {sorted(BLOCKS_PER_DEPTH)}")
    if num_groups < 1 or width_per_group < 1:
        raise ValueError(
            f"ResNet num_groups and width_per_group must be >= 1, got {num_groups} and "
            f"{width_per_group}"
        )
    if depth < 50 and (stride_in_1x1 or num_groups != 1 or width_per_group != 64):
        raise ValueError(
            f"ResNet-{depth} has basic blocks: stride_in_1x1, num_groups and width_per_group apply "
            f"to depth 50, 101 or 152 only (use stride_in_1x1=false, num_groups=1, "
            f"width_per_group=64)"
        )


def make_stage(
    index: int,
    *,
    depth: int,
    in_channels: int,
    stride: int,
    norm: str,
    gn_groups: int = 32,
    stride_in_1x1: bool = False,
    num_groups: int = 1,
    width_per_group: int = 64,
    dilation: int = 1,
) -> nn.Sequential:
    """Stage res{index + 2} (index 0..3): its first block takes ``stride``, the others stride 1.
    Bottleneck widths are num_groups * width_per_group * 2**index (64, 128, 256, 512 for ResNet),
    outputs 256 * 2**index; basic blocks output 64 * 2**index."""
    blocks = []
    for i in range(BLOCKS_PER_DEPTH[depth][index]):
        s = stride if i == 0 else 1
        if depth < 50:
            out = 64 * 2**index
            block = BasicBlock(
                in_channels=in_channels, out_channels=out, stride=s, norm=norm, gn_groups=gn_groups
            )
        else:
            out = 256 * 2**index
            block = Bottleneck(
                in_channels=in_channels,
                bottleneck_channels=num_groups * width_per_group * 2**index,
                out_channels=out,
                stride=s,
                norm=norm,
                gn_groups=gn_groups,
                stride_in_1x1=stride_in_1x1,
                num_groups=num_groups,
                dilation=dilation,
            )
        blocks.append(block)
        in_channels = out
    return nn.Sequential(*blocks)


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
        stride_in_1x1: bool = False,
        num_groups: int = 1,
        width_per_group: int = 64,
        res5_dilation: int = 1,
    ):
        super().__init__()
        check_block_options(
            depth,
            stride_in_1x1=stride_in_1x1,
            num_groups=num_groups,
            width_per_group=width_per_group,
        )
        bad = [f for f in out_features if f not in STAGE_NAMES]
        if bad or not out_features:
            raise ValueError(
                f"ResNet out_features must name stages among {list(STAGE_NAMES)}; got "
                f"{list(out_features)}"
            )
        n_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1
        if res5_dilation not in RES5_DILATIONS:
            raise ValueError(
                f"ResNet res5_dilation must be one of {list(RES5_DILATIONS)}, got {res5_dilation}"
            )
        if res5_dilation != 1 and (n_stages < 4 or depth < 50):
            raise ValueError(
                f"ResNet res5_dilation={res5_dilation} needs a bottleneck res5 in the trunk "
                f"(depth >= 50 and 'res5' in out_features; got depth {depth}, out_features "
                f"{list(out_features)})"
            )
        self.depth, self.norm = depth, norm
        self.out_features = list(out_features)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, 64, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        self.out_channels: Dict[str, int] = {}
        self.strides: Dict[str, int] = {}
        for i in range(n_stages):
            dilation = res5_dilation if i == 3 else 1
            # a dilated stage keeps its input's resolution: stride 1 instead of 2
            stride = 1 if i == 0 or dilation > 1 else 2
            stage = make_stage(
                i,
                depth=depth,
                in_channels=in_ch,
                stride=stride,
                norm=norm,
                gn_groups=gn_groups,
                stride_in_1x1=stride_in_1x1,
                num_groups=num_groups,
                width_per_group=width_per_group,
                dilation=dilation,
            )
            self.add_module(f"layer{i + 1}", stage)
            in_ch = (64 if depth < 50 else 256) * 2**i
            self.out_channels[STAGE_NAMES[i]] = in_ch
            self.strides[STAGE_NAMES[i]] = STAGE_STRIDES[STAGE_NAMES[i]] // dilation
        self.strides = {f: self.strides[f] for f in self.out_features}
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
