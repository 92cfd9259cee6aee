"""One-kernel MobileNetV2 inverted-residual block (expand 1x1, depthwise 3x3, project 1x1).

    y = [x +] project( relu6( depthwise3x3_s( relu6( expand(x) ) ) ) )      (BN folded in each)

The expanded tensor (t times wider than x) never reaches GPU memory: each program
loops over the hidden channels in chunks of BLOCK_H, builds that chunk of the
depthwise output for its pixels, and feeds it straight into the project product,
which accumulates in registers like the second matrix of a fused MLP.

The 3x3 stencil needs expanded values at the nine shifted input pixels of every
output pixel.  Two stagings, chosen per block shape by a constexpr switch:

* GATHER=False ("tap"): recompute the expand product at each tap from the input
  pixels there.  Nine times the expand work, but only loads and tensor-core
  products; cheap while Cin is small (the early, wide-image blocks).
* GATHER=True ("gather"): expand once over the input region of a 2D output tile
  (the tile plus its halo, clipped to the image) and read the nine shifted taps
  out of that register tile with tl.gather, which Triton stages through shared
  memory.  About (tile+halo)/tile the expand work; for the late blocks where Cin is
  96-160 and nine recomputations would be compute-bound.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    _relu6,
    check_activation,
    check_param,
    launch,
    launch_args,
    next_pow2,
    output,
    tf32,
)
from .choice import choose_block_config
from .records import BlockConfig, BlockShape


@triton.jit
def _inverted_residual_kernel(
    x_ptr,  # input activation, contiguous NHWC: element (n, h, w, c) at ((n*H + h)*W + w)*CIN + c
    w_exp_ptr,  # expand weight [CIN, HIDDEN], BN folded, input dtype (unused without HAS_EXPAND)
    b_exp_ptr,  # expand bias [HIDDEN]
    w_dw_ptr,  # depthwise weight [9, HIDDEN], tap kh*3+kw major
    b_dw_ptr,  # depthwise bias [HIDDEN]
    w_proj_ptr,  # project weight [HIDDEN, COUT], input dtype
    b_proj_ptr,  # project bias [COUT]
    y_ptr,  # output activation, contiguous NHWC [N, HO, WO, COUT], input dtype
    N, H, W, HO, WO,  # batch, input and output spatial sizes
    CIN: tl.constexpr,  # input channels
    HIDDEN: tl.constexpr,  # expanded channels (= CIN without HAS_EXPAND)
    COUT: tl.constexpr,  # output channels
    STRIDE: tl.constexpr,  # depthwise stride, 1 or 2
    HAS_EXPAND: tl.constexpr,  # t > 1: an expand 1x1 conv precedes the depthwise
    HAS_RESIDUAL: tl.constexpr,  # add x to the output (stride 1, CIN == COUT)
    GATHER: tl.constexpr,  # staging of the stencil: False = recompute per tap, True = gather
    BLOCK_P: tl.constexpr,  # tap mode: output pixels per program, flat over N*HO*WO
    TILE_H: tl.constexpr,  # gather mode: output tile height ...
    TILE_W: tl.constexpr,  # ... width ...
    IMGS: tl.constexpr,  # ... and images per program
    IN_H: tl.constexpr,  # gather mode: input region rows, min((TILE_H-1)*STRIDE+3, H)
    IN_W: tl.constexpr,  # gather mode: input region columns, likewise
    P_OUT: tl.constexpr,  # gather mode: next_pow2(IMGS*TILE_H*TILE_W), at least 16
    P_IN: tl.constexpr,  # gather mode: next_pow2(IMGS*IN_H*IN_W), at least 16
    BLOCK_H: tl.constexpr,  # hidden channels per chunk
    BLOCK_K: tl.constexpr,  # input channels per step of the expand product
    BLOCK_CO: tl.constexpr,  # output channels per program (grid axis 1)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
):
    pid = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    dtype = y_ptr.dtype.element_ty

    # ---- output pixels of this program: image n, row oh, column ow (int64: no 2^31 overflow)
    if GATHER:
        tiles_w = tl.cdiv(WO, TILE_W)
        tiles_h = tl.cdiv(HO, TILE_H)
        t_w = pid % tiles_w
        t_h = (pid // tiles_w) % tiles_h
        n0 = (pid // (tiles_w * tiles_h)).to(tl.int64) * IMGS
        q = tl.arange(0, P_OUT)
        n = n0 + q // (TILE_H * TILE_W)
        oh = t_h * TILE_H + (q // TILE_W) % TILE_H
        ow = t_w * TILE_W + q % TILE_W
        p_ok = (q < IMGS * TILE_H * TILE_W) & (n < N) & (oh < HO) & (ow < WO)
        # Input region: the tile's receptive field clipped to the image. Every in-image
        # pixel a tap of this tile reads lies inside it.
        ih0 = tl.maximum(tl.minimum(t_h * (TILE_H * STRIDE) - 1, H - IN_H), 0)
        iw0 = tl.maximum(tl.minimum(t_w * (TILE_W * STRIDE) - 1, W - IN_W), 0)
        r = tl.arange(0, P_IN)
        rn = n0 + r // (IN_H * IN_W)
        rh = ih0 + (r // IN_W) % IN_H
        rw = iw0 + r % IN_W
        r_ok = (r < IMGS * IN_H * IN_W) & (rn < N) & (rh < H) & (rw < W)
        # Pixel offsets times a constexpr channel count: the compiler sees the alignment
        # and issues 16-byte vector loads along the channels.
        r_base = ((rn * H + rh) * W + rw) * CIN
        q_img = (q // (TILE_H * TILE_W)) * (IN_H * IN_W)
        acc = tl.zeros([P_OUT, BLOCK_CO], dtype=tl.float32)
    else:
        p = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        ow = p % WO
        oh = (p // WO) % HO
        n = p // (WO * HO)
        p_ok = n < N  # not p < N*HO*WO: that i32 product can wrap
        acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)

    for h0 in range(0, HIDDEN, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        h_ok = hh < HIDDEN
        if HAS_EXPAND:
            b_exp = tl.load(b_exp_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)
        if GATHER:
            # Expand once over the input region; pixels outside the image are never gathered.
            e = tl.zeros([P_IN, BLOCK_H], dtype=tl.float32)
            for k0 in tl.static_range(0, CIN, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                k_ok = kk < CIN
                xr = tl.load(x_ptr + r_base[:, None] + kk[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
                we = tl.load(w_exp_ptr + kk[:, None] * HIDDEN + hh[None, :], mask=k_ok[:, None] & h_ok[None, :], other=0.0)
                e = tl.dot(xr, we, e, input_precision=DOT_PRECISION)
            # Rounded to the activation dtype, as the unfused network stores it; halves the staging too.
            e = _relu6(e + b_exp[None, :]).to(dtype)
            dw = tl.zeros([P_OUT, BLOCK_H], dtype=tl.float32)
        else:
            dw = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)

        for tap in range(9):
            ih = oh * STRIDE + (tap // 3 - 1)
            iw = ow * STRIDE + (tap % 3 - 1)
            # Zero padding applies to the depthwise input (the expanded activation):
            # an out-of-image tap contributes 0, not relu6(bias).
            t_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if GATHER:
                idx = q_img + (ih - ih0).to(tl.int32) * IN_W + (iw - iw0).to(tl.int32)
                idx = tl.where(t_ok, idx, 0)
                v = tl.gather(e, tl.broadcast_to(idx[:, None], (P_OUT, BLOCK_H)), axis=0).to(tl.float32)
            else:
                base = ((n * H + ih) * W + iw) * CIN
                if HAS_EXPAND:
                    v = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)
                    for k0 in tl.static_range(0, CIN, BLOCK_K):
                        kk = k0 + tl.arange(0, BLOCK_K)
                        k_ok = kk < CIN
                        xt = tl.load(x_ptr + base[:, None] + kk[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
                        we = tl.load(w_exp_ptr + kk[:, None] * HIDDEN + hh[None, :], mask=k_ok[:, None] & h_ok[None, :], other=0.0)
                        v = tl.dot(xt, we, v, input_precision=DOT_PRECISION)
                    v = _relu6(v + b_exp[None, :]).to(dtype).to(tl.float32)
                else:
                    v = tl.load(x_ptr + base[:, None] + hh[None, :], mask=t_ok[:, None] & h_ok[None, :], other=0.0)
                    v = v.to(tl.float32)
            w_tap = tl.load(w_dw_ptr + tap * HIDDEN + hh, mask=h_ok, other=0.0).to(tl.float32)
            dw += tl.where(t_ok[:, None], v, 0.0) * w_tap[None, :]

        b_dw = tl.load(b_dw_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)
        d = _relu6(dw + b_dw[None, :])
        if HIDDEN % BLOCK_H != 0:
            # Padding columns see zero weights; an Inf input would make them NaN (Inf * 0),
            # and the project product would spread it to every output channel.
            d = tl.where(h_ok[None, :], d, 0.0)
        d = d.to(dtype)
        wp = tl.load(w_proj_ptr + hh[:, None] * COUT + co[None, :], mask=h_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(d, wp, acc, input_precision=DOT_PRECISION)

    acc += tl.load(b_proj_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = p_ok[:, None] & co_ok[None, :]
    if HAS_RESIDUAL:
        # Residual blocks have stride 1 and CIN == COUT: the input pixel is the output pixel.
        x_res = tl.load(x_ptr + (((n * H + oh) * W + ow) * CIN)[:, None] + co[None, :], mask=out_ok, other=0.0)
        acc += x_res.to(tl.float32)
    y_off = ((n * HO + oh) * WO + ow) * COUT
    tl.store(y_ptr + y_off[:, None] + co[None, :], acc.to(dtype), mask=out_ok)


@functools.lru_cache(maxsize=1024)
def kernel_args(shape: BlockShape, cfg: BlockConfig, dtype: torch.dtype, allow_tf32: bool) -> dict:
    """The constexpr arguments of one launch: what selects a compiled variant (cached: this
    runs on every call, and at batch 1 host time is what the network waits for)."""
    in_h, in_w = shape.region(cfg.tile_h, cfg.tile_w)
    return launch_args(
        cfg, dtype, allow_tf32,
        CIN=shape.cin,
        HIDDEN=shape.hidden,
        COUT=shape.cout,
        STRIDE=shape.stride,
        HAS_EXPAND=shape.has_expand,
        HAS_RESIDUAL=shape.residual,
        IN_H=in_h,
        IN_W=in_w,
        # tl.dot needs at least 16 rows; extra rows are masked.
        P_OUT=max(16, next_pow2(cfg.imgs * cfg.tile_h * cfg.tile_w)),
        P_IN=max(16, next_pow2(cfg.imgs * in_h * in_w)),
    )


def inverted_residual(
    x: torch.Tensor,
    w_exp: torch.Tensor | None,
    b_exp: torch.Tensor | None,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor,
    *,
    stride: int,
    residual: bool,
    config: BlockConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run one inverted-residual block with folded weights in a single kernel.

    x:       [N, CIN, H, W] in channels_last memory; float16, bfloat16 or float32.
    w_exp:   [CIN, HIDDEN] (x's dtype) and b_exp [HIDDEN], or both None for t = 1.
    w_dw:    [9, HIDDEN], depthwise taps kh*3+kw;  b_dw [HIDDEN].
    w_proj:  [HIDDEN, COUT] (x's dtype);  b_proj [COUT].
    stride:  1 or 2.  residual: add x (needs stride 1 and CIN == COUT).
    config:  launch configuration; default: the tuned table for this GPU, else a heuristic.
    allow_tf32: fp32 products on TF32 tensor cores; default follows
             torch.backends.cudnn.allow_tf32, like the convolutions this replaces.
    out:     optional preallocated [N, COUT, HO, WO] channels_last output.

    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // stride + 1.
    The same computation in PyTorch ops: `reference.inverted_residual`, same arguments.

    Memory: nothing of size N*H*W*HIDDEN is ever allocated or written.  Scratch is per
    program and on chip: in gather mode one [P_IN, BLOCK_H] tile of the expanded
    activation in x's dtype (P_IN * BLOCK_H <= 8192 elements in shipped configs: at most
    16 KiB at fp16, staged by tl.gather in shared memory); in tap mode none.
    Offsets are computed in int64, so tensors beyond 2^31 elements are safe.
    """
    check_activation("x", x)
    n, cin, h, w = x.shape
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    has_expand = w_exp is not None
    if has_expand != (b_exp is not None):
        raise ValueError("w_exp and b_exp must both be given (t > 1) or both be None (t = 1)")
    if w_dw.dim() != 2 or w_dw.shape[0] != 9:
        raise ValueError(f"w_dw must have shape [9, HIDDEN], got {tuple(w_dw.shape)}")
    hidden = w_dw.shape[1]
    if w_proj.dim() != 2:
        raise ValueError(f"w_proj must have shape [HIDDEN, COUT], got {tuple(w_proj.shape)}")
    cout = w_proj.shape[1]
    if has_expand:
        check_param("w_exp", w_exp, (cin, hidden), x.device, x.dtype)
        check_param("b_exp", b_exp, (hidden,), x.device)
    elif hidden != cin:
        raise ValueError(f"without an expand stage the depthwise width ({hidden}) must equal the input channels ({cin})")
    check_param("w_dw", w_dw, (9, hidden), x.device)
    check_param("b_dw", b_dw, (hidden,), x.device)
    check_param("w_proj", w_proj, (hidden, cout), x.device, x.dtype)
    check_param("b_proj", b_proj, (cout,), x.device)
    if residual and (stride != 1 or cin != cout):
        raise ValueError(f"a residual needs stride 1 and CIN == COUT; got stride {stride}, {cin} -> {cout}")

    shape = BlockShape(cin, hidden, cout, stride, h, w, has_expand, residual)
    cfg = config or choose_block_config(shape, x.dtype, n, x.device)
    cfg.validate(shape)
    out = output(out, (n, cout, shape.ho, shape.wo), x, reads=(w_exp, b_exp, w_dw, b_dw, w_proj, b_proj))
    dummy = w_dw  # never read when HAS_EXPAND is off
    launch(
        _inverted_residual_kernel, shape.grid(cfg, n), x,
        w_exp if has_expand else dummy,
        b_exp if has_expand else dummy,
        w_dw,
        b_dw,
        w_proj,
        b_proj,
        out,
        n, h, w, shape.ho, shape.wo,
        **kernel_args(shape, cfg, x.dtype, tf32(allow_tf32)),
    )
    return out
