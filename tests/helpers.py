"""Shared test helpers: the one tolerance table, BN randomisation, references, poisoning."""

from __future__ import annotations

import os

import torch
from torch import nn
import torch.nn.functional as F

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Per-dtype tolerances, relative to the largest reference magnitude (max |ref|), for outputs
# compared with a float64 unfused reference.  fp16/bf16 round inputs, weights and the stored
# activations (as the unfused network does), so their error is a few units of their epsilon.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2.5e-2,
}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """|out - ref| <= tol * max(1, max|ref|) everywhere, for the dtype's tolerance."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert torch.isfinite(out).all(), f"{what}: non-finite values in the output"
    scale = max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    tol = TOLERANCES[dtype] * scale
    assert err <= tol, f"{what}: max error {err:.3e} > {tol:.3e} ({dtype}, scale {scale:.3g})"


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
                m.weight.copy_(sign * torch.empty(c).uniform_(0.3, 1.2, generator=generator))
                m.bias.copy_(torch.randn(c, generator=generator) * 0.5)
    return module


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


def reference64(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unfused module in float64 on the CPU (a copy; the original is untouched)."""
    import copy

    ref = copy.deepcopy(module).to("cpu", torch.float64)
    with torch.no_grad():
        return ref(x.detach().to("cpu", torch.float64))


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def poisoned_like(n: int, c: int, h: int, w: int, dtype: torch.dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write shows up."""
    out = torch.empty((n, c, h, w), dtype=dtype, device=device, memory_format=torch.channels_last)
    return out.fill_(float("nan"))


def block_reference_from_folded(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, stride, residual):
    """Unfused float64 computation from kernel-layout folded weights."""
    x = x.double().cpu()
    h = x
    if w_exp is not None:
        h = F.conv2d(h, w_exp.double().cpu().t()[:, :, None, None], b_exp.double().cpu()).clamp(0, 6)
    c = w_dw.shape[1]
    h = F.conv2d(h, w_dw.double().cpu().t().reshape(c, 1, 3, 3), b_dw.double().cpu(), stride=stride, padding=1,
                 groups=c).clamp(0, 6)
    y = F.conv2d(h, w_proj.double().cpu().t()[:, :, None, None], b_proj.double().cpu())
    return x + y if residual else y
