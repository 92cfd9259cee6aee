"""Numerics helpers shared by the test suite, `mnv2-fast check`, the sanitizer run and the
benchmarks: the one table of per-dtype tolerances, BN randomisation, the unfused float64
reference of a module.  (The folded float64 reference of each kernel is kernels/reference.py.)"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["TOLERANCES", "MODEL_TOLERANCE_FACTOR", "error_ratio", "randomize_bn", "reference64"]

# Per-dtype tolerances for one fused layer, relative to max(1, max|reference|), against a
# float64 unfused reference.  fp16/bf16 round inputs, weights and the stored activations
# (as the unfused network does), so their error is a few units of their epsilon.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2.5e-2,
}
# A whole network stacks 21 fused layers; rounding errors add up.
MODEL_TOLERANCE_FACTOR = 3.0


def error_ratio(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, factor: float = 1.0) -> float:
    """max|out - ref| over the allowed error for dtype (<= 1 passes; NaN/Inf in out fails)."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if out.shape != ref.shape:
        raise ValueError(f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    scale = max(1.0, ref.abs().max().item())
    return (out - ref).abs().max().item() / (TOLERANCES[dtype] * factor * scale)


def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm trained-looking statistics: small variances (large folded scales),
    non-zero means, gammas of both signs, non-zero betas."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                m.running_var.copy_(torch.exp(torch.empty(c).uniform_(-4.0, 0.7, generator=generator)))
                sign = torch.where(torch.rand(c, generator=generator) < 0.2, -1.0, 1.0)
                if m.weight is not None:
                    m.weight.copy_(sign * torch.empty(c).uniform_(0.3, 1.2, generator=generator))
                    m.bias.copy_(torch.randn(c, generator=generator) * 0.5)
    return module


@torch.no_grad()
def reference64(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unfused module in float64 on the CPU (a copy; the original is untouched)."""
    ref = copy.deepcopy(module).to("cpu", torch.float64)
    return ref(x.detach().to("cpu", torch.float64))
