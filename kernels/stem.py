"""MobileNetV2 stem: 3x3 convolution, stride 2, padding 1, BN folded, ReLU6, in one kernel.

Each program owns a TILE_H x TILE_W tile of output pixels of one image and builds its im2col
tile (3*3*CIN columns per pixel, padded to BLOCK_K) in registers, then multiplies it with the
folded weight on tensor cores.  What keeps the index math out of the way:

* the grid is 2D tiles of one image, so a pixel's row and column come from the tile origin
  plus constant shifts, not from dividing a flat pixel index;
* offsets within an image are int32, with one int64 image base per program;
* the input strides are constexprs (one variant per input layout and size), and every thread
  holds whole im2col rows of its pixels (the columns are joined in registers, `_stem_cols`), so
  each column is one load at a compile-time offset from the pixel's address: the offset
  becomes the load's immediate.

The input may be in any memory format (NCHW as users usually pass it, or channels_last);
the output is contiguous NHWC, the layout every later kernel reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (INT32_MAX, _activation, _tf_same_pad, check_act, check_activation, check_weight, launch,
                      launch_args, output, tf32)
from .choice import choose_stem_config
from .records import StemConfig, output_size

_MAX_GRID_Z = 65535


@triton.jit
def _stem_tap(
    x_img,  # pointer to this program's image (element (0, 0, 0))
    pix,  # [P] int32 offset of each pixel's tap (0, 0) from x_img: (ih0, iw0)
    ih0, iw0,  # [P] input row and column of tap (0, 0): the output pixel times STRIDE, minus 1
    H, W,  # input size
    pix_ok,  # [P] the output pixel exists (ragged tiles)
    T: tl.constexpr,  # im2col column: input channel T // 9, tap row (T % 9) // 3, tap column T % 3
    CIN: tl.constexpr,
    SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,  # input strides (elements)
):
    # One im2col column: zero padding outside the image, zero past the last real column.
    if T < CIN * 9:
        KH: tl.constexpr = (T % 9) // 3
        KW: tl.constexpr = T % 3
        ok = pix_ok & (ih0 + KH >= 0) & (ih0 + KH < H) & (iw0 + KW >= 0) & (iw0 + KW < W)
        col = tl.load(x_img + pix + ((T // 9) * SXC + KH * SXH + KW * SXW), mask=ok, other=0.0)
    else:
        col = tl.zeros(pix.shape, x_img.dtype.element_ty)
    return col


@triton.jit
def _stem_cols(
    x_img, pix, ih0, iw0, H, W, pix_ok,  # as for _stem_tap
    K0: tl.constexpr,  # first column
    STEP: tl.constexpr,  # distance between the columns
    WIDTH: tl.constexpr,  # number of columns (a power of two)
    CIN: tl.constexpr,
    SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,
):
    # Columns K0, K0 + STEP, ... as [P, 2, ..., 2]: joining the even and the odd columns
    # (the last dimension is the column's lowest bit) keeps a pixel's columns in one thread,
    # so no column needs its own address arithmetic.
    if WIDTH == 1:
        cols = _stem_tap(x_img, pix, ih0, iw0, H, W, pix_ok, K0, CIN, SXC, SXH, SXW)
    else:
        cols = tl.join(_stem_cols(x_img, pix, ih0, iw0, H, W, pix_ok, K0, 2 * STEP, WIDTH // 2, CIN, SXC, SXH, SXW),
                       _stem_cols(x_img, pix, ih0, iw0, H, W, pix_ok, K0 + STEP, 2 * STEP, WIDTH // 2, CIN, SXC, SXH,
                                  SXW))
    return cols


@triton.jit
def _stem_kernel(
    x_ptr,  # input [N, CIN, H, W], strides (sxn, SXC, SXH, SXW)
    w_ptr,  # folded weight [CIN*9, COUT], row k = ci*9 + kh*3 + kw, input dtype
    b_ptr,  # folded bias [COUT]
    y_ptr,  # output, contiguous NHWC [N, HO, WO, COUT]
    H, W, HO, WO,  # input and output spatial sizes
    sxn,  # input batch stride in elements (the image base is int64)
    CIN: tl.constexpr,  # input channels (3 for images)
    COUT: tl.constexpr,  # output channels
    STRIDE: tl.constexpr,  # convolution stride
    ACT: tl.constexpr,  # activation: "relu6" (MobileNetV2), "relu" (MNASNet, MobileNetV4) or "none"
    TF_SAME: tl.constexpr,  # TensorFlow "same" padding (top/left pad from the input size), else 1
    SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr,  # input strides within an image (elements)
    TILE_H: tl.constexpr,  # output tile rows ...
    TILE_W: tl.constexpr,  # ... and columns per program (TILE_H * TILE_W a power of two)
    BLOCK_K: tl.constexpr,  # im2col columns per product step (CIN*9 padded up)
    BLOCK_CO: tl.constexpr,  # output channels per program
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
):
    # Grid: (tile columns x output-channel blocks, tile rows, images); no division by a runtime value.
    CO_BLOCKS: tl.constexpr = (COUT + BLOCK_CO - 1) // BLOCK_CO
    n = tl.program_id(2)
    oh = tl.program_id(1) * TILE_H + tl.arange(0, TILE_H * TILE_W) // TILE_W
    ow = tl.program_id(0) // CO_BLOCKS * TILE_W + tl.arange(0, TILE_H * TILE_W) % TILE_W
    pix_ok = (oh < HO) & (ow < WO)
    if TF_SAME:  # the total padding split with the odd pixel at the bottom/right
        ih0 = oh * STRIDE - _tf_same_pad(HO, STRIDE, 3, H)
        iw0 = ow * STRIDE - _tf_same_pad(WO, STRIDE, 3, W)
    else:
        ih0 = oh * STRIDE - 1
        iw0 = ow * STRIDE - 1
    pix = ih0 * SXH + iw0 * SXW  # within the image: int32 (the launcher checks the span)
    x_img = x_ptr + n.to(tl.int64) * sxn
    co = tl.program_id(0) % CO_BLOCKS * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT

    acc = tl.zeros([TILE_H * TILE_W, BLOCK_CO], dtype=tl.float32)
    for k0 in tl.static_range(0, CIN * 9, BLOCK_K):
        cols = tl.reshape(_stem_cols(x_img, pix, ih0, iw0, H, W, pix_ok, k0, 1, BLOCK_K, CIN, SXC, SXH, SXW),
                          (TILE_H * TILE_W, BLOCK_K))
        k = k0 + tl.arange(0, BLOCK_K)
        wk = tl.load(w_ptr + k[:, None] * COUT + co[None, :], mask=(k < CIN * 9)[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(cols, wk, acc, input_precision=DOT_PRECISION)
    acc = _activation(acc + tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :], ACT)
    y_img = y_ptr + n.to(tl.int64) * HO * WO * COUT
    y_off = (oh * WO + ow) * COUT
    tl.store(y_img + y_off[:, None] + co[None, :], acc.to(y_ptr.dtype.element_ty), mask=pix_ok[:, None] & co_ok[None, :])


def stem_block_k(cin: int) -> int:
    """im2col columns per product step: the whole 3x3xCIN row padded to 16 or 32; wider rows
    (CIN > 3) take several steps of 32."""
    return 16 if cin * 9 <= 16 else 32


def stem_kernel_args(cin: int, cout: int, stride: int, cfg: StemConfig, dtype: torch.dtype, allow_tf32: bool,
                     x_strides: tuple[int, int, int], act: str = "relu6", tf_same: bool = False) -> dict:
    """x_strides: the input's channel, row and column strides (elements), which the kernel is
    specialised on."""
    sxc, sxh, sxw = x_strides
    return launch_args(cfg, dtype, allow_tf32, CIN=cin, COUT=cout, STRIDE=stride, ACT=act, TF_SAME=tf_same, SXC=sxc,
                       SXH=sxh, SXW=sxw, BLOCK_K=stem_block_k(cin))


def stem_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: int = 2,
    act: str = "relu6",
    tf_same: bool = False,
    config: StemConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(conv3x3(x, weight, stride, padding 1) + bias) with a BN-folded weight.

    x:      [N, CIN, H, W], any memory format; float16, bfloat16 or float32.
    weight: [CIN*9, COUT] in x's dtype, row ci*9 + kh*3 + kw;  bias: [COUT].
    act:    "relu6" (MobileNetV2), "relu" (MNASNet, MobileNetV4) or "none".
    tf_same: TensorFlow's "same" padding (timm's tf_ models: at stride 2 the top/left pad is
            0 for an even size) instead of 1 on every side.
    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // stride + 1.
    The kernel is compiled once per input stride pattern (NCHW, channels_last, ...) and size.
    """
    check_activation("x", x, "NCHW")
    n, cin, h, w = x.shape
    cout = check_weight(weight, bias, cin * 9, x, f"{cin}*9, COUT")
    ho, wo = output_size(h, stride), output_size(w, stride)
    strides = x.stride(1), x.stride(2), x.stride(3)
    if (cin - 1) * strides[0] + (h - 1) * strides[1] + (w - 1) * strides[2] > INT32_MAX or ho * wo * cout > INT32_MAX:
        raise ValueError(f"one image of x {tuple(x.shape)} with strides {x.stride()}, or of the output, spans more "
                         "than 2^31 elements; the stem indexes within an image in 32 bits")
    cfg = config or choose_stem_config(cout, x.device)
    out = output(out, (n, cout, ho, wo), x, reads=(weight, bias))
    args = stem_kernel_args(cin, cout, stride, cfg, x.dtype, tf32(allow_tf32), strides, check_act(act), tf_same)
    tiles = triton.cdiv(wo, cfg.tile_w) * triton.cdiv(cout, cfg.block_co), triton.cdiv(ho, cfg.tile_h)
    for i in range(0, n, _MAX_GRID_Z):  # grid axis 2 holds the images: at most 65535 per launch
        batch = min(n - i, _MAX_GRID_Z)
        launch(_stem_kernel, (*tiles, batch), x[i:i + batch], weight, bias, out[i:i + batch], h, w, ho, wo,
               x.stride(0), **args)
    return out
