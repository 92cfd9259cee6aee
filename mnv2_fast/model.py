"""Unfused reference MobileNetV2 (Sandler et al. 2018, Table 2), in plain PyTorch.

This is the numerical reference every fused kernel is tested against, and the model
``mnv2_fast.optimize`` accepts besides torchvision's own.  Module names follow
torchvision's ``mobilenet_v2`` exactly, so its state_dicts load unchanged:

    features.0            stem: 3x3 conv, stride 2, BN, ReLU6
    features.1 ... 17     inverted-residual blocks, one per row repetition of TABLE_2
    features.18           1x1 conv to 1280 (x width for width > 1), BN, ReLU6
    classifier.1          the paper's final "1x1 conv" to k classes (see MobileNetV2)
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

__all__ = [
    "TABLE_2",
    "ConvBNReLU6",
    "InvertedResidual",
    "MobileNetV2",
    "block_specs",
    "make_divisible",
    "mobilenet_v2",
]

# Table 2 of the paper: expansion factor t, output channels c, repetitions n, first stride s.
TABLE_2 = (
    # t,   c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
STEM_STRIDE = 2
LAST_CHANNELS = 1280


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (never more than 10% down).

    The same rule as the reference implementation, so width multipliers give the same
    channel counts (and the same state_dict shapes) as torchvision.
    """
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return rounded


def stem_channels(width_mult: float = 1.0, round_nearest: int = 8) -> int:
    return make_divisible(STEM_CHANNELS * width_mult, round_nearest)


def head_channels(width_mult: float = 1.0, round_nearest: int = 8) -> int:
    """The head conv's width: 1280, widened (never narrowed) with the width multiplier."""
    return make_divisible(LAST_CHANNELS * max(1.0, width_mult), round_nearest)


def table_rows(width_mult: float = 1.0, round_nearest: int = 8) -> Iterator[tuple[int, int, int, int]]:
    """(t, cin, cout, stride) of the 17 blocks at ``width_mult``, one per repetition of a TABLE_2 row."""
    cin = stem_channels(width_mult, round_nearest)
    for t, c, n, s in TABLE_2:
        cout = make_divisible(c * width_mult, round_nearest)
        for i in range(n):
            yield t, cin, cout, s if i == 0 else 1
            cin = cout


def block_specs(width_mult: float = 1.0, round_nearest: int = 8, *, resolution: int = 224) -> list:
    """The 17 blocks of MobileNetV2 at ``width_mult``, read off TABLE_2, each as the record the
    kernels key on (`mnv2_fast.kernels.BlockShape`) at its input size for a square input of
    ``resolution`` pixels.  Imports the kernels (and with them Triton)."""
    from .kernels import BlockShape, output_size

    size = output_size(resolution, STEM_STRIDE)
    specs = []
    for index, (t, cin, cout, stride) in enumerate(table_rows(width_mult, round_nearest), 1):
        spec = BlockShape(cin, cin * t, cout, stride, size, size, t != 1, stride == 1 and cin == cout, index)
        specs.append(spec)
        size = spec.ho
    return specs


def stem_block_spec(width_mult: float = 1.0, round_nearest: int = 8, *, resolution: int = 224):
    """The stem and block 1 (t = 1) as the one launch optimize() runs for them
    (kernels.block.stem_block): block 1's record with the stem as its expand, over the
    image's 3 channels and ``resolution`` pixels."""
    first = block_specs(width_mult, round_nearest, resolution=resolution)[0]
    return first.with_stem(3, "relu6", resolution, resolution)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU6; children named 0, 1, 2 as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = cout


class InvertedResidual(nn.Module):
    """expand 1x1 (t > 1) -> depthwise 3x3 stride s -> project 1x1 (linear), plus x when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * t))
        self.stride = stride
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel_size=1))  # expand
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # project
            nn.BatchNorm2d(cout),  # linear bottleneck: no activation
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """MobileNetV2 as in Table 2 of the paper.

    The paper ends with "avgpool 7x7" and a "conv2d 1x1" to k outputs.  On the pooled
    1x1x1280 map a 1x1 convolution is exactly a dense layer 1280 -> k, so the classifier
    is ``nn.Linear`` (after dropout, the identity at inference), as in torchvision.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, round_nearest: int = 8):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.width_mult = width_mult
        self.last_channel = head_channels(width_mult, round_nearest)

        features: list[nn.Module] = [ConvBNReLU6(3, stem_channels(width_mult, round_nearest), stride=STEM_STRIDE)]
        features += [InvertedResidual(cin, cout, s, t) for t, cin, cout, s in table_rows(width_mult, round_nearest)]
        features.append(ConvBNReLU6(features[-1].out_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, round_nearest: int = 8) -> MobileNetV2:
    """The unfused reference MobileNetV2 (random init); load torchvision weights with load_state_dict."""
    return MobileNetV2(width_mult, num_classes, dropout, round_nearest)
