"""Each kernel's computation in plain PyTorch ops: same names, arguments and weight layouts
as the launchers, for any device and dtype.

Called with float64 tensors these are the folded references the kernels are checked
against (tests, `mnv2-fast tune`, the sanitizer run); in the module's dtype they are the
fused modules' "torch" backend.  Outputs are in the input's memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["activation", "head_pool", "inverted_residual", "linear", "relu6", "stem_block", "stem_conv"]


def relu6(x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(x, 0.0, 6.0)


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """"relu6", "relu" or "none", the kernels' activations."""
    if act == "relu6":
        return relu6(x)
    if act == "relu":
        return F.relu(x)
    if act == "none":
        return x
    raise ValueError(f"unknown activation {act!r}")


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [N, CIN, H, W] times weight [CIN, COUT] (the kernels' layout), plus bias."""
    return F.conv2d(x, weight.t()[:, :, None, None], bias)


def _conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, stride: int, tf_same: bool, groups: int = 1):
    """A k x k conv with padding k // 2, or TensorFlow's "same" padding: ceil(size / stride)
    outputs, the total padding split with the odd pixel at the bottom/right."""
    k = w.shape[-1]
    if not tf_same:
        return F.conv2d(x, w, bias, stride=stride, padding=k // 2, groups=groups)
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad's order: last dimension first
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, bias, stride=stride, groups=groups)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, tf_same: bool = False):
    """x [N, C, H, W] through a k x k depthwise with weight [k*k, C] (taps kh*k+kw)."""
    c, k = weight.shape[1], int(round(weight.shape[0] ** 0.5))
    return _conv(x, weight.t().reshape(c, 1, k, k), bias, stride, tf_same, groups=c)


def inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, *, stride: int, residual: bool,
                      act_exp: str = "relu6", act_dw: str = "relu6", act_proj: str = "none", w_start=None,
                      b_start=None, tf_same: bool = False) -> torch.Tensor:
    """[start depthwise k x k (linear)], expand 1x1 + act_exp (when w_exp is given), depthwise
    k x k + act_dw (when w_dw is given; the stride is its own, else the start depthwise's),
    project 1x1 + act_proj, [+ x]."""
    h = x
    if w_start is not None:
        h = _depthwise(h, w_start, b_start, 1 if w_dw is not None else stride)
    if w_exp is not None:
        h = activation(_conv1x1(h, w_exp, b_exp), act_exp)
    if w_dw is not None:
        h = activation(_depthwise(h, w_dw, b_dw, stride, tf_same), act_dw)
    y = activation(_conv1x1(h, w_proj, b_proj), act_proj)
    return x + y if residual else y


def stem_conv(x, weight, bias, *, stride: int = 2, act: str = "relu6", tf_same: bool = False) -> torch.Tensor:
    """3x3 conv, padding 1 (or TensorFlow's "same"), + act; weight [CIN*9, COUT], row ci*9 + kh*3 + kw."""
    cout, cin = weight.shape[1], weight.shape[0] // 9
    return activation(_conv(x, weight.t().reshape(cout, cin, 3, 3), bias, stride, tf_same), act)


def stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, *, act_stem: str = "relu6", act_dw: str = "relu6",
               act_proj: str = "none") -> torch.Tensor:
    """The stem (3x3, stride 2, padding 1) + act_stem, then a depthwise-separable block (built
    from the private steps, so that it is an engine of its own, as the kernel is)."""
    c, cin = w_stem.shape[1], w_stem.shape[0] // 9
    h = activation(_conv(x, w_stem.t().reshape(c, cin, 3, 3), b_stem, 2, False), act_stem)
    h = activation(_depthwise(h, w_dw, b_dw, 1), act_dw)
    return activation(_conv1x1(h, w_proj, b_proj), act_proj)


def head_pool(x, weight, bias, *, act: str = "relu6") -> torch.Tensor:
    """The mean over pixels of act(1x1 conv): [N, COUT]."""
    return activation(_conv1x1(x, weight, bias), act).mean(dim=(2, 3))


def linear(a, weight, bias, *, act: str = "none", residual=None) -> torch.Tensor:
    """act(a [M, K] @ weight [K, NOUT] + bias) [+ residual [M, NOUT]]."""
    y = activation(torch.addmm(bias, a, weight), act)
    return y if residual is None else y + residual
