"""Numerics helpers shared by the test suite, `mnv2-fast check`, the sanitizer run and the
benchmarks: the one table of per-dtype tolerances, BN randomisation, the unfused float64
reference of a module.  (The folded float64 reference of each kernel is kernels/reference.py.)"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Tolerance", "TOLERANCES", "MODEL_TOLERANCE_FACTOR", "error_ratio", "randomize_bn", "reference64",
           "typical_magnitude"]

# Per-dtype tolerances for one fused layer against a float64 unfused reference, element by
# element:
#
#     |out - ref| <= min(atol * typical + rtol * |ref|,  cap * max(1, max|ref|))
#
# typical: the reference's root mean square (its typical magnitude, robust to the zeros ReLU6
# leaves).  An output's rounding error follows the magnitudes that were summed into it, not its
# own, so near-zero elements get the atol part.  cap is the bound the suite applied to every
# element before (relative to the largest |ref|): no element is allowed more than it was.
# fp16/bf16 round inputs, weights and the stored activations (as the unfused network does),
# so their error is a few units of their epsilon.
@dataclass(frozen=True)
class Tolerance:
    atol: float  # times the reference's typical magnitude
    rtol: float  # times the element's own |ref|
    cap: float  # times max(1, max|ref|): the most any element may be off

    def allowed(self, ref: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        """The error each element of `ref` (float64) is allowed."""
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        return factor * torch.minimum(self.atol * typical_magnitude(ref) + self.rtol * ref.abs(),
                                      torch.tensor(self.cap * scale, dtype=ref.dtype, device=ref.device))


def _tolerance(cap: float) -> Tolerance:
    return Tolerance(atol=2 * cap, rtol=cap / 2, cap=cap)


TOLERANCES = {
    torch.float64: _tolerance(1e-10),
    torch.float32: _tolerance(1e-5),
    torch.float16: _tolerance(3e-3),
    torch.bfloat16: _tolerance(2.5e-2),
}
# A whole network stacks 21 fused layers; rounding errors add up.
MODEL_TOLERANCE_FACTOR = 3.0


def typical_magnitude(ref: torch.Tensor) -> float:
    """The root mean square of the reference: what atol is relative to."""
    return ref.detach().double().square().mean().sqrt().item() if ref.numel() else 0.0


def error_ratio(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, factor: float = 1.0,
                device: torch.device | str = "cpu") -> float:
    """The largest |out - ref| over its allowed error (TOLERANCES[dtype], times factor) among
    the elements: <= 1 passes; NaN or Inf in out fails (inf).  In float64 on `device` (a GPU
    judges a batch of 256 in a fraction of the CPU's time)."""
    out = out.detach().double().to(device)
    ref = ref.detach().double().to(device)
    if out.shape != ref.shape:
        raise ValueError(f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    if ref.numel() == 0:
        return 0.0
    allowed = TOLERANCES[dtype].allowed(ref, factor)
    err = (out - ref).abs()
    exact = allowed == 0  # an all-zero reference: only zeros pass
    if (err[exact] > 0).any():
        return float("inf")
    return (err[~exact] / allowed[~exact]).max().item() if (~exact).any() else 0.0


def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm trained-looking statistics: small variances (large folded scales),
    non-zero means, gammas of both signs, non-zero betas, and an eps of 1e-5 (PyTorch's
    default) or 1e-3 (Keras', and so of many ported weights), alternating from a random
    start, so that a module with two or more BatchNorms has both."""
    eps = (1e-5, 1e-3)
    start = int(torch.randint(2, (1,), generator=generator))
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for i, m in enumerate(bns):
        c = m.num_features
        m.eps = eps[(start + i) % 2]
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
