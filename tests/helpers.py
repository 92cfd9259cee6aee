"""Shared test helpers.  The tolerance table, BN randomisation and float64 references live in
mnv2_fast.tools.testing (the CLI's `check` uses them too); here: blocks, layouts, poisoned outputs."""

from __future__ import annotations

import torch
from torch import nn

from mnv2_fast.kernels import interpreting
from mnv2_fast.tools.testing import (  # noqa: F401
    MODEL_TOLERANCE_FACTOR,
    TOLERANCES,
    error_ratio,
    randomize_bn,
    reference64,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETER = interpreting()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", factor: float = 1.0) -> None:
    """|out - ref| <= TOLERANCES[dtype] * factor * max(1, max|ref|) everywhere, no NaN/Inf."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    ratio = error_ratio(out, ref, dtype, factor)
    assert ratio <= 1.0, f"{what}: error is {ratio:.3g} x the {dtype} tolerance"


def make_block(cin: int, cout: int, stride: int, t: int, torchvision_block: bool = False) -> nn.Module:
    """A random inverted-residual block in eval mode, with randomised BN statistics."""
    if torchvision_block:
        from torchvision.models.mobilenetv2 import InvertedResidual as TVBlock

        block = TVBlock(cin, cout, stride, t)
    else:
        from mnv2_fast.model import InvertedResidual

        block = InvertedResidual(cin, cout, stride, t)
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
    return randomize_bn(block).eval()


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def poisoned_like(n: int, c: int, h: int, w: int, dtype: torch.dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write shows up."""
    out = torch.empty((n, c, h, w), dtype=dtype, device=device, memory_format=torch.channels_last)
    return out.fill_(float("nan"))
