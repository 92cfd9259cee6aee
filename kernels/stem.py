"""MobileNetV2 stem: 3x3 convolution, stride 2, padding 1, BN folded, ReLU6, in one kernel.

Each program gathers the 3*3*CIN input values of BLOCK_P output pixels (an im2col tile
that lives only in registers) and multiplies it with the folded weight on tensor cores.
The input may be in any memory format (NCHW as users usually pass it, or channels_last);
the output is contiguous NHWC, the layout every later kernel reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _relu6, check_activation, check_weight, launch, launch_args, next_pow2, output, tf32
from .choice import choose_stem_config
from .records import StemConfig, output_size


@triton.jit
def _stem_kernel(
    x_ptr,  # input [N, CIN, H, W], any strides
    w_ptr,  # folded weight [CIN*9, COUT], row k = ci*9 + kh*3 + kw, input dtype
    b_ptr,  # folded bias [COUT]
    y_ptr,  # output, contiguous NHWC [N, HO, WO, COUT]
    N, H, W, HO, WO,  # batch, input and output spatial sizes
    sxn, sxc, sxh, sxw,  # input strides in elements
    CIN: tl.constexpr,  # input channels (3 for images)
    COUT: tl.constexpr,  # output channels
    STRIDE: tl.constexpr,  # convolution stride
    BLOCK_P: tl.constexpr,  # output pixels per program, flat over N*HO*WO
    BLOCK_K: tl.constexpr,  # im2col columns per product step (CIN*9 padded up)
    BLOCK_CO: tl.constexpr,  # output channels per program (grid axis 1)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    ow = p % WO
    oh = (p // WO) % HO
    n = p // (WO * HO)
    p_ok = n < N  # not p < N*HO*WO: that i32 product can wrap
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for k0 in tl.static_range(0, CIN * 9, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ci = k // 9
        ih = oh[:, None] * STRIDE + ((k % 9) // 3 - 1)[None, :]
        iw = ow[:, None] * STRIDE + (k % 3 - 1)[None, :]
        ok = p_ok[:, None] & (k < CIN * 9)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        cols = tl.load(x_ptr + n[:, None] * sxn + ci[None, :] * sxc + ih * sxh + iw * sxw, mask=ok, other=0.0)
        wk = tl.load(w_ptr + k[:, None] * COUT + co[None, :], mask=(k < CIN * 9)[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(cols, wk, acc, input_precision=DOT_PRECISION)
    acc = _relu6(acc + tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :])
    y_off = ((n * HO + oh) * WO + ow) * COUT
    tl.store(y_ptr + y_off[:, None] + co[None, :], acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


def stem_kernel_args(cin: int, cout: int, stride: int, cfg: StemConfig, dtype: torch.dtype, allow_tf32: bool) -> dict:
    # One product step takes the whole 3x3xCIN im2col row when it fits in 64 columns.
    return launch_args(cfg, dtype, allow_tf32, CIN=cin, COUT=cout, STRIDE=stride,
                       BLOCK_K=max(16, min(next_pow2(cin * 9), 64)))


def stem_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: int = 2,
    config: StemConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """relu6(conv3x3(x, weight, stride, padding 1) + bias) with a BN-folded weight.

    x:      [N, CIN, H, W], any memory format; float16, bfloat16 or float32.
    weight: [CIN*9, COUT] in x's dtype, row ci*9 + kh*3 + kw;  bias: [COUT].
    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // stride + 1.
    """
    check_activation("x", x, "NCHW")
    n, cin, h, w = x.shape
    cout = check_weight(weight, bias, cin * 9, x, f"{cin}*9, COUT")
    cfg = config or choose_stem_config(cout, x.device)
    ho, wo = output_size(h, stride), output_size(w, stride)
    out = output(out, (n, cout, ho, wo), x, reads=(weight, bias))
    grid = (triton.cdiv(n * ho * wo, cfg.block_p), triton.cdiv(cout, cfg.block_co))
    launch(
        _stem_kernel, grid, x, weight, bias, out,
        n, h, w, ho, wo,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        **stem_kernel_args(cin, cout, stride, cfg, x.dtype, tf32(allow_tf32)),
    )
    return out
