"""Feature Pyramid Network neck: res2..res5 -> p2..p5 (+ p6 by max-pooling p5).

Structure equals torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``: 1x1 lateral
convolutions, nearest-neighbour top-down upsampling to the lateral's exact size, 3x3 output
convolutions, and P6 = max_pool2d(P5, kernel 1, stride 2). With ``norm`` (torchvision's v2 detector:
BN) every lateral and output conv is followed by that norm and loses its bias, which the norm's
shift would duplicate; the norms live in ``lateral_norms`` / ``output_norms`` so the convs keep the
names of the plain FPN.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .norm import NORMS, make_norm


class FPN(nn.Module):
    def __init__(
        self,
        *,
        in_channels: Dict[str, int],
        in_strides: Dict[str, int],
        out_channels: int = 256,
        top_block: str = "maxpool",
        norm: str = "",
    ):
        super().__init__()
        if top_block not in ("maxpool", "none"):
            raise ValueError(f"unknown FPN top_block '{top_block}'; valid: maxpool, none")
        if norm and norm not in NORMS:
            raise ValueError(f"unknown FPN norm '{norm}'; valid: '' (none), {', '.join(NORMS)}")
        self.in_features: List[str] = list(in_channels)
        bias = not norm
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(in_channels[f], out_channels, 1, bias=bias) for f in self.in_features
        )
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias) for _ in self.in_features
        )
        self.norm = norm
        if norm:
            n = len(self.in_features)
            self.lateral_norms = nn.ModuleList(make_norm(norm, out_channels) for _ in range(n))
            self.output_norms = nn.ModuleList(make_norm(norm, out_channels) for _ in range(n))
        levels = [
            int(in_strides[f]).bit_length() - 1 for f in self.in_features
        ]  # stride 4 -> level 2
        self.out_features = [f"p{lvl}" for lvl in levels]
        self.top_block = top_block == "maxpool"
        if self.top_block:
            self.out_features.append(f"p{levels[-1] + 1}")
        self.out_channels = {f: out_channels for f in self.out_features}
        self.strides = {f: 2 ** int(f[1:]) for f in self.out_features}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init with a=1 (linear layers: no ReLU follows)
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _lateral(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        x = self.lateral_convs[idx](x)
        return self.lateral_norms[idx](x) if self.norm else x

    def _output(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        x = self.output_convs[idx](x)
        return self.output_norms[idx](x) if self.norm else x

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        xs = [features[f] for f in self.in_features]
        inner = self._lateral(len(xs) - 1, xs[-1])
        results = [self._output(len(xs) - 1, inner)]
        for idx in range(len(xs) - 2, -1, -1):
            lateral = self._lateral(idx, xs[idx])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self._output(idx, inner))
        if self.top_block:
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_features, results))
