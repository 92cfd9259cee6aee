"""Each kernel's computation in plain PyTorch ops: same names, arguments and weight layouts
as the launchers, for any device and dtype.

Called with float64 tensors these are the folded references the kernels are checked
against (tests, `mnv2-fast tune`, the sanitizer run); in the module's dtype they are the
fused modules' "torch" backend.  Outputs are in the input's memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["head_pool", "inverted_residual", "linear", "relu6", "stem_conv"]


def relu6(x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(x, 0.0, 6.0)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [N, CIN, H, W] times weight [CIN, COUT] (the kernels' layout), plus bias."""
    return F.conv2d(x, weight.t()[:, :, None, None], bias)


def inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, *, stride: int, residual: bool) -> torch.Tensor:
    """expand 1x1 + ReLU6 (when w_exp is given), depthwise 3x3 + ReLU6, project 1x1, [+ x]."""
    h = relu6(_conv1x1(x, w_exp, b_exp)) if w_exp is not None else x
    hidden = w_dw.shape[1]
    h = relu6(F.conv2d(h, w_dw.t().reshape(hidden, 1, 3, 3), b_dw, stride=stride, padding=1, groups=hidden))
    y = _conv1x1(h, w_proj, b_proj)
    return x + y if residual else y


def stem_conv(x, weight, bias, *, stride: int = 2) -> torch.Tensor:
    """3x3 conv, padding 1, + ReLU6; weight [CIN*9, COUT], row ci*9 + kh*3 + kw."""
    cout, cin = weight.shape[1], weight.shape[0] // 9
    return relu6(F.conv2d(x, weight.t().reshape(cout, cin, 3, 3), bias, stride=stride, padding=1))


def head_pool(x, weight, bias) -> torch.Tensor:
    """The mean over pixels of relu6(1x1 conv): [N, COUT]."""
    return relu6(_conv1x1(x, weight, bias)).mean(dim=(2, 3))


def linear(a, weight, bias) -> torch.Tensor:
    """a [M, K] @ weight [K, NOUT] + bias."""
    return torch.addmm(bias, a, weight)
