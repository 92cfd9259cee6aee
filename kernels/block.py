"""One-kernel MobileNetV2 inverted-residual block (expand 1x1, depthwise 3x3, project 1x1).

    y = [x +] project( relu6( depthwise3x3_s( relu6( expand(x) ) ) ) )      (BN folded in each)

The expanded tensor (t times wider than x) never reaches GPU memory.  A program owns an
output tile (imgs x TILE_H x TILE_W pixels) and loops over the hidden channels in chunks of
BLOCK_HID.  For each chunk it

1. *stages*: computes relu6(expand(x)) once over the tile's input region (the tile at the
   stride plus a one-pixel halo, out-of-image pixels forced to 0: the depthwise's zero
   padding) on the tensor cores, and stores it, in the activation dtype, into a small
   per-program scratch that stays in L1/L2 -- 16-bit chunks straight from the product's
   registers, as vectors (`_store_staged`), without a layout conversion through shared memory;
2. *depthwise*: reads the nine shifted windows of that chunk back with constant offsets
   from one pointer tile -- no index math, masks or layout conversions per tap -- for
   vertical pairs of output pixels, whose windows overlap (3 + STRIDE rows of windows
   serve both); each row's three taps are summed in the activation dtype (packed fp16x2 /
   bf16x2 arithmetic), the rows in fp32;
3. *projects*: relu6 + the depthwise bias, then straight into the project product, which
   accumulates in fp32 registers for the whole tile like the second matrix of a fused MLP.

With JOIN_PAIRS the two pixels of each pair go through the project as one product of 2*P2
rows (small tiles: one padded wgmma tile instead of two).  With QUADS the pixels go in 2x2
groups (two pairs side by side share their windows' columns), with TALL in 4x2 groups
(two 2x2 groups stacked share their windows' rows: at a 3x3 stride-1 depthwise, 3 window
loads per pixel instead of 4), and with STRIP in STRIP x 2 groups: 7 rows divide the 56-,
28- and 14-pixel maps, so tiles of 7-row groups (28 x 14, a whole 14 x 14 image) fill their
power-of-two group count (28 or 14 groups of 32 or 16) where 4x2 groups leave a quarter of
it padding (49 of 64, 28 of 32 with two padded rows).

With STAGE_IMAGE (stride 1, one tile per image: the 7x7 blocks), step 1 expands only the
tile's own pixels: the region's ring of padding is zero, and is zeroed once per program
instead of recomputed per chunk (a 7x7 image, 3x3 depthwise: 64 staged rows instead of 128).

The grid is persistent: as many programs as fit on the GPU at once, each walking over
tiles, so the scratch is bounded by the GPU's size, not the batch's.  Two scratch buffers
alternate between chunks, so one barrier per chunk orders writes and reads.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._common import (INT32_MAX, _activation, _tf_same_pad, check_activation, check_param, interpreting, launch,
                      launch_args, next_pow2, output, split_pow2, tf32)
from .choice import choose_block_config, choose_project_config
from .head import launch_linear
from .records import BlockConfig, BlockShape
from .stem import _stem_cols


@triton.jit
def _act_bounded(v, hi, ACT: tl.constexpr):
    """The expand's activation with a per-pixel upper bound hi: ACT's own (6 for relu6, +inf
    for relu) inside the image, 0 outside -- the depthwise's zero padding at the cost of the
    clamp itself (see `_upper_bound`).  Without an activation, pixels outside are selected away."""
    if ACT == "none":
        v = tl.where(hi > 0.0, v, 0.0)
    else:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
        v = tl.minimum(v, hi, propagate_nan=tl.PropagateNan.ALL)
    return v


# The expand's bias and clamp on fp16 pairs (GPU only): add.f16x2, then max and min with NaN
# propagated, as tl.maximum / tl.minimum(propagate_nan=ALL) do.
_EPILOGUE_F16X2 = tl.constexpr("{ .reg .b32 t, z; mov.b32 z, 0; add.rn.f16x2 t, $1, $2; max.NaN.f16x2 t, t, z; "
                               "min.NaN.f16x2 $0, t, $3; }")


# The depthwise's bias and clamp on fp16 pairs, the bound an immediate: relu6 and relu.
_DW_RELU6_F16X2 = tl.constexpr("{ .reg .b32 t, z, h; mov.b32 z, 0; mov.b32 h, 0x46004600; add.rn.f16x2 t, $1, $2; "
                               "max.NaN.f16x2 t, t, z; min.NaN.f16x2 $0, t, h; }")
_DW_RELU_F16X2 = tl.constexpr("{ .reg .b32 t, z; mov.b32 z, 0; add.rn.f16x2 t, $1, $2; max.NaN.f16x2 $0, t, z; }")


@triton.jit
def _expand_epilogue(e, b, hi, ACT: tl.constexpr, dtype: tl.constexpr, ASM: tl.constexpr):
    """act(e + b) bounded by hi (`_act_bounded`), in the staged dtype.  fp16: e is rounded to
    fp16 first and the bias and clamp run on fp16 pairs -- half the instructions of fp32, and
    the staged value is fp16 anyway (one more rounding, of the sum); compiled, as packed PTX
    (Triton would not pack them), interpreted, as fp16 Triton ops of the same rounding."""
    if dtype == tl.float16 and ACT != "none":
        e16 = e.to(tl.float16)
        b16 = tl.broadcast_to(b.to(tl.float16), e16.shape)
        hi16 = tl.broadcast_to(hi.to(tl.float16), e16.shape)
        if ASM:
            out = tl.inline_asm_elementwise(_EPILOGUE_F16X2, "=r,r,r,r", [e16, b16, hi16], dtype=tl.float16,
                                            is_pure=True, pack=2)
        else:
            out = _act_bounded(e16 + b16, hi16, ACT)
    else:
        out = _act_bounded(e + b.to(tl.float32), hi, ACT).to(dtype)
    return out


@triton.jit
def _upper_bound(ok, ACT: tl.constexpr):
    """Per pixel: the activation's upper bound inside the image (ok), 0 outside."""
    if ACT == "relu6":
        hi = tl.where(ok, 6.0, 0.0)
    else:
        hi = tl.where(ok, float("inf"), 0.0)
    return hi


@triton.jit
def _load_region(x_img, r_off, r_ok, K0: tl.constexpr, BK: tl.constexpr, CIN: tl.constexpr):
    """Channels K0..K0+BK of the tile's input region, 0 outside the image."""
    kk = K0 + tl.arange(0, BK)
    return tl.load(x_img + r_off[:, None] + kk[None, :], mask=r_ok[:, None] & (kk < CIN)[None, :], other=0.0)


@triton.jit
def _stem_region(x_img, r_img, rh, rw, r_ok, K: tl.constexpr, C: tl.constexpr, XH: tl.constexpr, XW: tl.constexpr,
                 SXN: tl.constexpr, SXC: tl.constexpr, SXH: tl.constexpr, SXW: tl.constexpr):
    """The stem's im2col rows of the tile's input region (K columns, 3 x 3 x C of them real):
    region pixel (rh, rw) of the stem's output reads the image's taps around (2 rh, 2 rw)."""
    ih0 = rh * 2 - 1
    iw0 = rw * 2 - 1
    pix = r_img * SXN + ih0 * SXH + iw0 * SXW
    return tl.reshape(_stem_cols(x_img, pix, ih0, iw0, XH, XW, r_ok, 0, 1, K, C, SXC, SXH, SXW), (rh.shape[0], K))


@triton.jit
def _image_rows(p, REG_H: tl.constexpr, REG_W: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                IMGS: tl.constexpr, PAD: tl.constexpr):
    """The staged rows p (0 .. P_STAGE-1) of a tile of whole images (stride 1): the tile's own
    pixels, image-major, as (scratch row, image, region row, region column, valid).  The region's
    ring of PAD pixels around them is padding only; `_zero_scratch` zeroes it once per program, so
    each chunk expands and stores TILE_H x TILE_W pixels per image instead of REG_H x REG_W (a 7x7
    image with a 3x3 depthwise: 64 rows instead of 128)."""
    p_img = p // (TILE_H * TILE_W)
    p_y = (p // TILE_W) % TILE_H + PAD
    p_x = p % TILE_W + PAD
    p_in = p < IMGS * TILE_H * TILE_W
    return p_img * (REG_H * REG_W) + p_y * REG_W + p_x, p_img, p_y, p_x, p_in


@triton.jit
def _region_rows(r, H, W, CIN: tl.constexpr, REG_H: tl.constexpr, REG_W: tl.constexpr, TILE_H: tl.constexpr,
                 TILE_W: tl.constexpr, IMGS: tl.constexpr, KSIZE: tl.constexpr, STAGE_IMAGE: tl.constexpr):
    """The staged rows r of a tile's input region as (scratch row, image, region row, region
    column, valid, input offset from the tile's origin): the region's pixels image-major, or with
    STAGE_IMAGE the images' own pixels (`_image_rows`)."""
    if STAGE_IMAGE:
        r, r_img, r_y, r_x, r_in = _image_rows(r, REG_H, REG_W, TILE_H, TILE_W, IMGS, KSIZE // 2)
    else:
        r_img = r // (REG_H * REG_W)
        r_y = (r // REG_W) % REG_H
        r_x = r % REG_W
        r_in = r < IMGS * REG_H * REG_W
    return r, r_img, r_y, r_x, r_in, ((r_img * H + r_y) * W + r_x) * CIN


@triton.jit
def _zero_scratch(scratch, P_IN: tl.constexpr, BLOCK_HID: tl.constexpr):
    """Zero both staging buffers of this program: the rows no chunk writes (the halo ring of
    whole-image tiles) then read as the depthwise's zero padding.  The barrier orders these
    stores before the first chunk's, which may hit the same addresses from another warp."""
    rows = tl.arange(0, 2 * P_IN)
    hh = tl.arange(0, BLOCK_HID)
    tl.store(scratch + rows[:, None] * BLOCK_HID + hh[None, :], tl.zeros([2 * P_IN, BLOCK_HID],
                                                                          scratch.dtype.element_ty))
    tl.debug_barrier()


@triton.jit
def _start_depthwise(x_img, p_off, p_h, p_w, p_ok, H, W, start_rows, w_start_ptr, b_start_ptr, K0: tl.constexpr,
                     BK: tl.constexpr, CIN: tl.constexpr, START_K: tl.constexpr, P: tl.constexpr):
    """Channels K0..K0+BK of the start depthwise (UIB: START_K x START_K on x, BN folded, no
    activation) at P pixels: p_off their offsets in the image, (p_h, p_w) their rows and
    columns, p_ok which exist.  Zero padding: taps outside the image load 0.  In fp32."""
    kk = K0 + tl.arange(0, BK)
    k_ok = kk < CIN
    acc = tl.zeros([P, BK], dtype=tl.float32)
    # The rows as a loop whose bound (START_K, passed at run time) the compiler cannot see: never
    # unrolled, so each row's taps are live one row at a time and the performance model counts
    # the loop's trips.
    for dy in range(0, start_rows):
        ih = p_h + (dy - START_K // 2)
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for dx in tl.static_range(START_K):
            iw = p_w + (dx - START_K // 2)
            ok = row_ok & (iw >= 0) & (iw < W)
            tap = ((dy - START_K // 2) * W + (dx - START_K // 2)) * CIN
            v = tl.load(x_img + (p_off + tap)[:, None] + kk[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_start_ptr + (dy * START_K + dx) * CIN + kk, mask=k_ok, other=0.0)
            acc += v.to(tl.float32) * w.to(tl.float32)[None, :]
    b = tl.load(b_start_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
    return acc + b[None, :]


# The staged chunk's store straight from the expand product's registers (GPU only).  Each
# thread of a tensor-core accumulator holds, per row, the column pairs 8j + 2c + {0, 1}
# (c = lane % 4, j = 0..J-1 with J = BLOCK_HID / 8).  With the expand's columns permuted by
# `_stage_order`, those J pairs are hidden channels c*2J .. c*2J + 2J - 1: one contiguous
# 4*J-byte vector store per row, and tl.store's round trip through shared memory (the
# product's layout converted to a coalesced one: a store, a barrier, a load) is gone.
# tl.store would convert; an inline-asm store has no layout of its own and takes the product's.
def _vector_store_asm(n: int, masked: bool) -> tl.constexpr:
    """PTX: pack n pairs of 16-bit values ($3..$(2n+2)) into words and store them as one vector at
    $1 + 2*$2 (a 64-bit base, a 32-bit offset in elements: no 64-bit pointer per element is kept
    live), under the predicate $(2n+3) != 0 when masked; $0 is a dummy result."""
    regs = [f"w{i}" for i in range(n)]
    body = " ".join(f"mov.b32 {w}, {{${3 + 2 * i}, ${4 + 2 * i}}};" for i, w in enumerate(regs))
    guard = f"setp.ne.b32 p, ${3 + 2 * n}, 0; @p " if masked else ""
    return tl.constexpr(f"{{ .reg .pred p; .reg .b64 a; .reg .b32 {', '.join(regs)}; mad.wide.u32 a, $2, 2, $1; "
                        f"{body} {guard}st.global.v{n}.b32 [a], {{{', '.join(regs)}}}; mov.u32 $0, 0; }}")


_ST_V2, _ST_V2_MASKED, _ST_V4, _ST_V4_MASKED = (_vector_store_asm(n, m) for n in (2, 4) for m in (False, True))


@triton.jit
def _stage_order(t, BLOCK_HID: tl.constexpr):
    """The columns of t [R, BLOCK_HID] (a chunk's expand weights or bias, in channel order)
    reordered so that the expand's column n = 8j + 2c + b computes channel c*2J + 2j + b: each
    accumulator thread's pairs then hold contiguous channels.  Loaded in channel order (vector
    loads) and reordered in registers, on the way to the product's shared-memory operand."""
    J: tl.constexpr = BLOCK_HID // 8
    return tl.reshape(tl.permute(tl.reshape(t, (t.shape[0], 4, J, 2)), (0, 2, 1, 3)), (t.shape[0], BLOCK_HID))


@triton.jit
def _store_words(base, offs, ok, v0, v1, v2, v3, ASM: tl.constexpr, N: tl.constexpr, MASKED: tl.constexpr):
    """N (2 or 4) consecutive column pairs (v_j = (lo, hi) of pair j, int16) at base + offs (16-bit
    elements) as one vector store, where ok (when MASKED)."""
    if ASM:
        a = tl.broadcast_to(base.to(tl.int64, bitcast=True), offs.shape)
        if N == 2:
            if MASKED:
                tl.inline_asm_elementwise(_ST_V2_MASKED, "=r,l,r,h,h,h,h,r", [a, offs, v0[0], v0[1], v1[0], v1[1], ok],
                                          dtype=tl.int32, is_pure=False, pack=1)
            else:
                tl.inline_asm_elementwise(_ST_V2, "=r,l,r,h,h,h,h", [a, offs, v0[0], v0[1], v1[0], v1[1]],
                                          dtype=tl.int32, is_pure=False, pack=1)
        else:
            words = [a, offs, v0[0], v0[1], v1[0], v1[1], v2[0], v2[1], v3[0], v3[1]]
            if MASKED:
                tl.inline_asm_elementwise(_ST_V4_MASKED, "=r,l,r,h,h,h,h,h,h,h,h,r", words + [ok], dtype=tl.int32,
                                          is_pure=False, pack=1)
            else:
                tl.inline_asm_elementwise(_ST_V4, "=r,l,r,h,h,h,h,h,h,h,h", words, dtype=tl.int32, is_pure=False,
                                          pack=1)
    else:  # the interpreter's twin: the same values at the same addresses
        p16 = base.to(tl.pointer_type(tl.int16)) + offs
        m = (ok != 0) | (not MASKED)  # as the asm: every row unless MASKED
        tl.store(p16, v0[0], mask=m)
        tl.store(p16 + 1, v0[1], mask=m)
        tl.store(p16 + 2, v1[0], mask=m)
        tl.store(p16 + 3, v1[1], mask=m)
        if N == 4:
            tl.store(p16 + 4, v2[0], mask=m)
            tl.store(p16 + 5, v2[1], mask=m)
            tl.store(p16 + 6, v3[0], mask=m)
            tl.store(p16 + 7, v3[1], mask=m)


@triton.jit
def _pairs(t):
    """[P, 4, 2K] as (even, odd) along the last dimension: [P, 4, K] each, [P, 4] for K = 1."""
    if t.shape[2] == 2:
        even, odd = tl.split(t)
    else:
        even, odd = tl.split(tl.reshape(t, (t.shape[0], t.shape[1], t.shape[2] // 2, 2)))
    return even, odd


@triton.jit
def _store_staged(base, rows, row_ok, e, P: tl.constexpr, BLOCK_HID: tl.constexpr, ASM: tl.constexpr,
                  MASKED: tl.constexpr, ROW: tl.constexpr):
    """Store e [P, BLOCK_HID] (16-bit, columns in `_stage_order`) in channel order at rows [P] of
    the buffer at base, ROW elements apart (those where row_ok, when MASKED), each row's 2J
    channels of one accumulator thread as one vector."""
    J: tl.constexpr = BLOCK_HID // 8
    t = tl.permute(tl.reshape(e.to(tl.int16, bitcast=True), (P, J, 4, 2)), (0, 2, 1, 3))  # [row, c, j, b]
    lo, hi = tl.split(t)  # [row, c, j]
    offs = rows[:, None] * ROW + (tl.arange(0, 4) * (2 * J))[None, :]
    ok = tl.broadcast_to(row_ok.to(tl.int32)[:, None], (P, 4))
    if J == 2:
        l0, l1 = _pairs(lo)
        h0, h1 = _pairs(hi)
        _store_words(base, offs, ok, (l0, h0), (l1, h1), (l0, h0), (l1, h1), ASM, 2, MASKED)
    elif J == 4:
        _store_four(base, offs, ok, lo, hi, ASM, MASKED)
    else:  # J == 8: pairs 0-3, then 4-7, 16 bytes further
        lo_a, lo_b = tl.split(tl.permute(tl.reshape(lo, (P, 4, 2, 4)), (0, 1, 3, 2)))
        hi_a, hi_b = tl.split(tl.permute(tl.reshape(hi, (P, 4, 2, 4)), (0, 1, 3, 2)))
        _store_four(base, offs, ok, lo_a, hi_a, ASM, MASKED)
        _store_four(base, offs + 8, ok, lo_b, hi_b, ASM, MASKED)


@triton.jit
def _store_four(base, offs, ok, lo, hi, ASM: tl.constexpr, MASKED: tl.constexpr):
    """Four column pairs (lo, hi: [P, 4, 4], pair j last) as one v4 store per (row, c)."""
    le, lo_ = _pairs(lo)  # even / odd j: 0, 2 | 1, 3
    he, ho = _pairs(hi)
    l0, l2 = _pairs(le)
    l1, l3 = _pairs(lo_)
    h0, h2 = _pairs(he)
    h1, h3 = _pairs(ho)
    _store_words(base, offs, ok, (l0, h0), (l1, h1), (l2, h2), (l3, h3), ASM, 4, MASKED)


@triton.jit
def _expand_part(x, e, w_exp_ptr, hh, h_ok, K0: tl.constexpr, BK: tl.constexpr, CIN: tl.constexpr,
                 HIDDEN: tl.constexpr, DOT_PRECISION: tl.constexpr, STAGE_VECTORS: tl.constexpr = False):
    """e + x @ w_exp[K0:K0+BK, chunk]: one power-of-two part of the expand product (its columns in
    `_stage_order` with STAGE_VECTORS), accumulated in e's dtype (fp16: see ACC16)."""
    kk = K0 + tl.arange(0, BK)
    w = tl.load(w_exp_ptr + kk[:, None] * HIDDEN + hh[None, :], mask=(kk < CIN)[:, None] & h_ok[None, :], other=0.0)
    if STAGE_VECTORS:
        w = _stage_order(w, hh.shape[0])
    if e.dtype == tl.float16:
        out = tl.dot(x, w, e, out_dtype=tl.float16)
    else:
        out = tl.dot(x, w, e, input_precision=DOT_PRECISION)
    return out


@triton.jit
def _depthwise(pair_ptrs, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN: tl.constexpr, REG_W: tl.constexpr,
               STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr, BLOCK_HID: tl.constexpr, P2: tl.constexpr,
               GW: tl.constexpr, dtype: tl.constexpr, ASM: tl.constexpr, ROW: tl.constexpr):
    """act(depthwise KSIZE x KSIZE + bias) of one staged chunk for groups of output pixels:
    vertical pairs (GW = 1), or 2x2 groups (GW = 2, quads: two pairs side by side).

    The bottom pixels' taps start STRIDE staged rows below the top ones', so each of the
    KSIZE + STRIDE rows of windows is loaded once for both; with GW = 2 the right pixels' taps
    start STRIDE staged columns right of the left ones', so each of a row's KSIZE + STRIDE
    windows serves both columns (3x3 at stride 1: 16 window loads per 4 pixels instead of 24)
    and each weight vector four pixels.  A row's taps are summed in the activation dtype, the
    rows in fp32.  Returns (top-left, top-right, bottom-left, bottom-right); the right ones
    are the left ones when GW = 1.  Staged rows are ROW elements apart (the staged width)."""
    acc_tl = tl.zeros([P2, BLOCK_HID], dtype=tl.float32)
    acc_bl = tl.zeros([P2, BLOCK_HID], dtype=tl.float32)
    acc_tr = acc_tl
    acc_br = acc_bl
    for j in range(KSIZE + STRIDE):  # unrolled by the compiler: constant offsets throughout
        kt = tl.minimum(j, KSIZE - 1)  # the kernel row this staged row is for the top pixels ...
        kb = tl.maximum(j - STRIDE, 0)  # ... and for the bottom ones
        # The right pixels' tap m - STRIDE is the left pixels' tap of STRIDE columns before:
        # its weights are carried over (t1, t2: one and two columns back), not reloaded.
        t1 = tl.zeros([BLOCK_HID], dtype=w_dw_ptr.dtype.element_ty)
        b1 = t1
        t2 = t1
        b2 = t1
        for m in tl.static_range(KSIZE + (STRIDE if GW == 2 else 0)):
            r = tl.load(pair_ptrs + (j * REG_W + m) * ROW)
            if m < KSIZE:  # the left pixels' tap m
                t = tl.load(w_dw_ptr + (kt * KSIZE + m) * HIDDEN + hh, mask=h_ok, other=0.0)
                b = tl.load(w_dw_ptr + (kb * KSIZE + m) * HIDDEN + hh, mask=h_ok, other=0.0)
                if m == 0:
                    row_tl = r * t[None, :]
                    row_bl = r * b[None, :]
                else:
                    row_tl += r * t[None, :]
                    row_bl += r * b[None, :]
            else:
                t = t1
                b = b1
            if GW == 2 and m >= STRIDE:  # the right pixels' tap m - STRIDE
                tr_w = t2 if STRIDE == 2 else t1
                br_w = b2 if STRIDE == 2 else b1
                if m == STRIDE:
                    row_tr = r * tr_w[None, :]
                    row_br = r * br_w[None, :]
                else:
                    row_tr += r * tr_w[None, :]
                    row_br += r * br_w[None, :]
            t2 = t1
            b2 = b1
            t1 = t
            b1 = b
        acc_tl += tl.where(j < KSIZE, row_tl.to(tl.float32), 0.0)
        acc_bl += tl.where(j >= STRIDE, row_bl.to(tl.float32), 0.0)
        if GW == 2:
            acc_tr += tl.where(j < KSIZE, row_tr.to(tl.float32), 0.0)
            acc_br += tl.where(j >= STRIDE, row_br.to(tl.float32), 0.0)
    bias = tl.load(b_dw_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    acc_tl = _dw_epilogue(acc_tl, bias, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM)
    acc_bl = _dw_epilogue(acc_bl, bias, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM)
    if GW == 2:
        acc_tr = _dw_epilogue(acc_tr, bias, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM)
        acc_br = _dw_epilogue(acc_br, bias, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM)
    else:
        acc_tr = acc_tl
        acc_br = acc_bl
    return acc_tl, acc_tr, acc_bl, acc_br


@triton.jit
def _group_taps(s_l, s_r, r, w_dw_ptr, hh, h_ok, HIDDEN: tl.constexpr, J: tl.constexpr, V: tl.constexpr,
                M: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr, GH: tl.constexpr):
    """Window r (staged row J of the groups' windows, column M) into pixel row V's left and right
    sums (s_l, s_r), where that staged row is one of row V's kernel rows (KV = J - V*STRIDE): the
    left pixels' tap M, the right ones' tap M - STRIDE.  Rows past GH take nothing.  Repeated
    weight loads are merged by the compiler (same addresses)."""
    KV: tl.constexpr = J - V * STRIDE
    if V < GH and KV >= 0:
        if KV < KSIZE:
            if M < KSIZE:
                s_l += r * tl.load(w_dw_ptr + (KV * KSIZE + M) * HIDDEN + hh, mask=h_ok, other=0.0)[None, :]
            if M >= STRIDE:
                s_r += r * tl.load(w_dw_ptr + (KV * KSIZE + M - STRIDE) * HIDDEN + hh, mask=h_ok, other=0.0)[None, :]
    return s_l, s_r


@triton.jit
def _group_rows(a_l, a_r, s_l, s_r, J: tl.constexpr, V: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr,
                GH: tl.constexpr):
    """Pixel row V's sums of staged row J into its fp32 accumulators, when that row is one of its
    kernel rows."""
    KV: tl.constexpr = J - V * STRIDE
    if V < GH and KV >= 0:
        if KV < KSIZE:
            a_l += s_l.to(tl.float32)
            a_r += s_r.to(tl.float32)
    return a_l, a_r


@triton.jit
def _group_out(a, bias, h_ok, ACT: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_HID: tl.constexpr, dtype: tl.constexpr,
               ASM: tl.constexpr, V: tl.constexpr, GH: tl.constexpr):
    """`_dw_epilogue` of one pixel of the groups; zeros for rows past GH."""
    if V < GH:
        out = _dw_epilogue(a, bias, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM)
    else:
        out = tl.zeros(a.shape, dtype)
    return out


@triton.jit
def _depthwise_groups(pair_ptrs, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN: tl.constexpr, REG_W: tl.constexpr,
                      STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr, BLOCK_HID: tl.constexpr,
                      P2: tl.constexpr, dtype: tl.constexpr, ASM: tl.constexpr, GH: tl.constexpr, ROW: tl.constexpr):
    """`_depthwise` for GH x 2 groups (3 <= GH <= 8; TALL: GH = 4, STRIP: GH rows): pixel row v's
    taps start v*STRIDE staged rows below row 0's, so the KSIZE + (GH-1)*STRIDE rows of windows
    serve all GH rows (3x3 at stride 1: (GH+2)*4 window loads per 2*GH pixels: 3 per pixel at
    GH = 4, 2.6 at 7, against 4 in 2x2 groups).  Each window is loaded once and goes into the row
    sums of every pixel row it is a tap of; a row's taps are summed in the activation dtype, the
    rows in fp32, as in `_depthwise`.  Returns the 16 outputs of rows 0-7, left then right
    pixel of each row; rows past GH are zeros."""
    a0l = tl.zeros([P2, BLOCK_HID], dtype=tl.float32)
    a0r = a0l
    a1l = a0l
    a1r = a0l
    a2l = a0l
    a2r = a0l
    a3l = a0l
    a3r = a0l
    a4l = a0l
    a4r = a0l
    a5l = a0l
    a5r = a0l
    a6l = a0l
    a6r = a0l
    a7l = a0l
    a7r = a0l
    for j in tl.static_range(KSIZE + (GH - 1) * STRIDE):
        z = tl.zeros([P2, BLOCK_HID], dtype=pair_ptrs.dtype.element_ty)
        s0l = z
        s0r = z
        s1l = z
        s1r = z
        s2l = z
        s2r = z
        s3l = z
        s3r = z
        s4l = z
        s4r = z
        s5l = z
        s5r = z
        s6l = z
        s6r = z
        s7l = z
        s7r = z
        for m in tl.static_range(KSIZE + STRIDE):
            r = tl.load(pair_ptrs + (j * REG_W + m) * ROW)
            s0l, s0r = _group_taps(s0l, s0r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 0, m, STRIDE, KSIZE, GH)
            s1l, s1r = _group_taps(s1l, s1r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 1, m, STRIDE, KSIZE, GH)
            s2l, s2r = _group_taps(s2l, s2r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 2, m, STRIDE, KSIZE, GH)
            s3l, s3r = _group_taps(s3l, s3r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 3, m, STRIDE, KSIZE, GH)
            s4l, s4r = _group_taps(s4l, s4r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 4, m, STRIDE, KSIZE, GH)
            s5l, s5r = _group_taps(s5l, s5r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 5, m, STRIDE, KSIZE, GH)
            s6l, s6r = _group_taps(s6l, s6r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 6, m, STRIDE, KSIZE, GH)
            s7l, s7r = _group_taps(s7l, s7r, r, w_dw_ptr, hh, h_ok, HIDDEN, j, 7, m, STRIDE, KSIZE, GH)
        a0l, a0r = _group_rows(a0l, a0r, s0l, s0r, j, 0, STRIDE, KSIZE, GH)
        a1l, a1r = _group_rows(a1l, a1r, s1l, s1r, j, 1, STRIDE, KSIZE, GH)
        a2l, a2r = _group_rows(a2l, a2r, s2l, s2r, j, 2, STRIDE, KSIZE, GH)
        a3l, a3r = _group_rows(a3l, a3r, s3l, s3r, j, 3, STRIDE, KSIZE, GH)
        a4l, a4r = _group_rows(a4l, a4r, s4l, s4r, j, 4, STRIDE, KSIZE, GH)
        a5l, a5r = _group_rows(a5l, a5r, s5l, s5r, j, 5, STRIDE, KSIZE, GH)
        a6l, a6r = _group_rows(a6l, a6r, s6l, s6r, j, 6, STRIDE, KSIZE, GH)
        a7l, a7r = _group_rows(a7l, a7r, s7l, s7r, j, 7, STRIDE, KSIZE, GH)
    b = tl.load(b_dw_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    return (_group_out(a0l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 0, GH),
            _group_out(a0r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 0, GH),
            _group_out(a1l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 1, GH),
            _group_out(a1r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 1, GH),
            _group_out(a2l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 2, GH),
            _group_out(a2r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 2, GH),
            _group_out(a3l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 3, GH),
            _group_out(a3r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 3, GH),
            _group_out(a4l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 4, GH),
            _group_out(a4r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 4, GH),
            _group_out(a5l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 5, GH),
            _group_out(a5r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 5, GH),
            _group_out(a6l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 6, GH),
            _group_out(a6r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 6, GH),
            _group_out(a7l, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 7, GH),
            _group_out(a7r, b, h_ok, ACT, HIDDEN, BLOCK_HID, dtype, ASM, 7, GH))


@triton.jit
def _join_groups(o0l, o0r, o1l, o1r, o2l, o2r, o3l, o3r, o4l, o4r, o5l, o5r, o6l, o6r, o7l, o7r, P2: tl.constexpr,
                 BLOCK_HID: tl.constexpr, GH: tl.constexpr, dtype: tl.constexpr):
    """The GH x 2 groups' outputs as one project operand of GR*P2 rows (GR = 8 for GH <= 4, else
    16), in the order `_store_joined` decodes."""
    r0 = _join_pairs(o0l.to(dtype), o0r.to(dtype), P2, BLOCK_HID)  # rows 2q + u (column u)
    r1 = _join_pairs(o1l.to(dtype), o1r.to(dtype), P2, BLOCK_HID)
    r2 = _join_pairs(o2l.to(dtype), o2r.to(dtype), P2, BLOCK_HID)
    r3 = _join_pairs(o3l.to(dtype), o3r.to(dtype), P2, BLOCK_HID)
    d = _join_pairs(_join_pairs(r0, r1, 2 * P2, BLOCK_HID), _join_pairs(r2, r3, 2 * P2, BLOCK_HID), 4 * P2, BLOCK_HID)
    if GH > 4:
        r4 = _join_pairs(o4l.to(dtype), o4r.to(dtype), P2, BLOCK_HID)
        r5 = _join_pairs(o5l.to(dtype), o5r.to(dtype), P2, BLOCK_HID)
        r6 = _join_pairs(o6l.to(dtype), o6r.to(dtype), P2, BLOCK_HID)
        r7 = _join_pairs(o7l.to(dtype), o7r.to(dtype), P2, BLOCK_HID)
        d = _join_pairs(d, _join_pairs(_join_pairs(r4, r5, 2 * P2, BLOCK_HID), _join_pairs(r6, r7, 2 * P2, BLOCK_HID),
                                       4 * P2, BLOCK_HID), 8 * P2, BLOCK_HID)
    return d


@triton.jit
def _dw_epilogue(acc, bias, h_ok, ACT: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_HID: tl.constexpr,
                 dtype: tl.constexpr, ASM: tl.constexpr):
    """The depthwise's bias and activation, in the dtype the project reads: fp16 like the expand's
    epilogue (`_expand_epilogue`: packed pairs of the fp16-rounded sum; the bound a constant),
    else in fp32."""
    if dtype == tl.float16 and ACT != "none":
        e16 = acc.to(tl.float16)
        b16 = tl.broadcast_to(bias.to(tl.float16), e16.shape)
        if ASM:  # the bound as an immediate (0x4600 = 6.0): no register holds it
            out = tl.inline_asm_elementwise(_DW_RELU6_F16X2 if ACT == "relu6" else _DW_RELU_F16X2, "=r,r,r",
                                            [e16, b16], dtype=tl.float16, is_pure=True, pack=2)
        else:
            out = _activation(e16 + b16, ACT)
        if HIDDEN % BLOCK_HID != 0:  # padding columns: see _bias_act
            out = tl.where(h_ok[None, :], out, 0.0).to(dtype)
    else:
        out = _bias_act(acc, bias, h_ok, ACT, HIDDEN, BLOCK_HID)
    return out


@triton.jit
def _bias_act(acc, bias, h_ok, ACT: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_HID: tl.constexpr):
    """A hidden chunk's bias and activation (the depthwise's, or the expand's without one)."""
    acc = _activation(acc + bias, ACT)
    if HIDDEN % BLOCK_HID != 0:
        # Padding columns: an Inf input would make them NaN (Inf * 0 in the expand), and the
        # project would spread it to every output channel.
        acc = tl.where(h_ok[None, :], acc, 0.0)
    return acc


@triton.jit
def _join_pairs(top, bot, P2: tl.constexpr, BLOCK_HID: tl.constexpr):
    """[2*P2, BLOCK_HID]: the pairs' top and bottom pixels interleaved (rows 2q and 2q + 1), so
    that one project product serves both: a product of fewer than 64 rows (a wgmma tile) pads
    to 64, and two of them pay the padding twice."""
    return tl.reshape(tl.permute(tl.join(top, bot), (0, 2, 1)), (2 * P2, BLOCK_HID))


@triton.jit
def _project_part(d, acc, w_proj_ptr, hh, h_ok, CO0: tl.constexpr, BCO: tl.constexpr, COUT: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """acc + d @ w_proj[chunk, CO0:CO0+BCO]: one power-of-two part of the project product."""
    co = CO0 + tl.arange(0, BCO)
    w = tl.load(w_proj_ptr + hh[:, None] * COUT + co[None, :], mask=h_ok[:, None] & (co < COUT)[None, :], other=0.0)
    return tl.dot(d, w, acc, input_precision=DOT_PRECISION)


@triton.jit
def _project_pairs(top, bot, acc_ta, acc_ba, acc_tb, acc_bb, w_proj_ptr, hh, h_ok, CO_A: tl.constexpr,
                   CO_B: tl.constexpr, COUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The project of one hidden chunk for the top and bottom pixels of the pairs, into both
    power-of-two parts of the output channels (CO_B = 0: one part)."""
    acc_ta = _project_part(top, acc_ta, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
    acc_ba = _project_part(bot, acc_ba, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
    if CO_B > 0:
        acc_tb = _project_part(top, acc_tb, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
        acc_bb = _project_part(bot, acc_bb, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
    return acc_ta, acc_ba, acc_tb, acc_bb


@triton.jit
def _pixel_sets(q, H, W, HO, WO, TILE_H: tl.constexpr, QW: tl.constexpr, GW: tl.constexpr, IMGS: tl.constexpr,
                CIN: tl.constexpr, COUT: tl.constexpr, GH: tl.constexpr = 2):
    """Where a tile's pixel sets q (GH x GW groups: pairs, 2x2 or 4x2) lie: image, row of the top
    pixel, column, which are real, and their input and output offsets from the tile's origin."""
    q_img = q // (TILE_H // GH * QW)
    q_y = (q // QW) % (TILE_H // GH) * GH
    q_x = q % QW * GW
    q_in = q < IMGS * (TILE_H // GH) * QW
    q_x_rel = ((q_img * H + q_y) * W + q_x) * CIN
    q_y_rel = ((q_img * HO + q_y) * WO + q_x) * COUT
    return q_img, q_y, q_x, q_in, q_x_rel, q_y_rel


@triton.jit
def _opaque(x, ASM: tl.constexpr):
    """x through a PTX move the compiler cannot see through (compiled; else x itself): what is
    computed from it is recomputed where this is called, not kept in registers since an earlier
    identical computation.  Not pure, so it stays where it is called (no hoisting)."""
    if ASM:
        x = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)
    return x


@triton.jit
def _pair_masks(q_in, q_img, q_y, q_x, n0, t_h, t_w, N, HO, WO, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """The output row and column of each pixel pair's top pixel in a tile, and which top and
    bottom pixels exist (a real pair, an image of the batch, inside the output)."""
    oh = t_h * TILE_H + q_y
    ow = t_w * TILE_W + q_x
    ok_top = q_in & (n0 + q_img < N) & (oh < HO) & (ow < WO)
    ok_bot = ok_top & (oh + 1 < HO)
    return oh, ow, ok_top, ok_bot


@triton.jit
def _store_hidden(y_img, out_top, ow, ok_top, ok_bot, d_tl, d_tr, d_bl, d_br, hh, h_ok, WO, HIDDEN: tl.constexpr,
                  GW: tl.constexpr):
    """Store one hidden chunk of the depthwise's output, [P2, BLOCK_HID] per pixel set, to the
    hidden tensor [N, HO, WO, HIDDEN] (rows: the pairs' or groups' top-left pixels at out_top)."""
    dtype = y_img.dtype.element_ty
    tl_ptrs = y_img + out_top[:, None] + hh[None, :]
    bl_ptrs = tl_ptrs + WO * HIDDEN
    tl.store(tl_ptrs, d_tl.to(dtype), mask=ok_top[:, None] & h_ok[None, :])
    tl.store(bl_ptrs, d_bl.to(dtype), mask=ok_bot[:, None] & h_ok[None, :])
    if GW == 2:
        right = ow + 1 < WO
        tl.store(tl_ptrs + HIDDEN, d_tr.to(dtype), mask=(ok_top & right)[:, None] & h_ok[None, :])
        tl.store(bl_ptrs + HIDDEN, d_br.to(dtype), mask=(ok_bot & right)[:, None] & h_ok[None, :])


@triton.jit
def _store_part(acc, x_img, y_img, b_proj_ptr, in_off, out_off, ok, CO0: tl.constexpr, BCO: tl.constexpr,
                COUT: tl.constexpr, ACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Project bias, activation, residual, store: output channels CO0..CO0+BCO of one pixel set."""
    co = CO0 + tl.arange(0, BCO)
    ok = ok[:, None] & (co < COUT)[None, :]
    acc += tl.load(b_proj_ptr + co, mask=co < COUT, other=0.0).to(tl.float32)[None, :]
    acc = _activation(acc, ACT)  # depthwise-separable blocks may have one after the project
    if HAS_RESIDUAL:  # stride 1 and CIN == COUT: the input pixel is the output pixel
        acc += tl.load(x_img + in_off[:, None] + co[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(y_img + out_off[:, None] + co[None, :], acc.to(y_img.dtype.element_ty), mask=ok)


@triton.jit
def _store_joined(acc, x_img, y_img, b_proj_ptr, t_h, t_w, n0, N, H, W, HO, WO, P2: tl.constexpr, GR: tl.constexpr,
                  GH: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, QW: tl.constexpr, GW: tl.constexpr,
                  IMGS: tl.constexpr, CO0: tl.constexpr, BCO: tl.constexpr, CIN: tl.constexpr, COUT: tl.constexpr,
                  ACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, OPAQUE: tl.constexpr):
    """`_store_part` of the joined accumulators (pairs, 2x2, 4x2 or strip groups) as `_join_pairs`
    and `_join_groups` ordered their rows, stored in place: each row's pixel decoded from its
    index, so no split, layout conversion or per-pixel offset is held through the chunk loop.
    Row GR*q + ... of column u and group row v: 8u + 4h + 2g + f (GR = 16, v = 4f + 2g + h),
    4u + 2h + g (GR = 8, v = 2g + h), 2u + v (GR = 4, 2x2 groups), v (GR = 2, pairs); rows past
    GH are padding.  OPAQUE: the index through `_opaque`, so its decoding is redone here instead of
    hoisted before the tile loop and held (RECOMPUTE_SETS)."""
    i = _opaque(tl.arange(0, GR * P2), OPAQUE)
    if GR == 16:
        u = (i >> 3) & 1
        v = (i & 1) * 4 + ((i >> 1) & 1) * 2 + ((i >> 2) & 1)
    elif GR == 8:
        u = (i >> 2) & 1
        v = (i & 1) * 2 + ((i >> 1) & 1)
    elif GR == 4:
        u = (i >> 1) & 1
        v = i & 1
    else:
        u = i * 0
        v = i & 1
    q = i // GR  # decoded here, not by `_pixel_sets`: its offsets from the group's corner cost registers
    q_img = q // (TILE_H // GH * QW)
    oh = t_h * TILE_H + (q // QW) % (TILE_H // GH) * GH + v
    ow = t_w * TILE_W + q % QW * GW + u
    ok = (q < IMGS * (TILE_H // GH) * QW) & (n0 + q_img < N) & (oh < HO) & (ow < WO) & (v < GH)
    _store_part(acc, x_img, y_img, b_proj_ptr, ((q_img * H + oh) * W + ow) * CIN, ((q_img * HO + oh) * WO + ow) * COUT,
                ok, CO0, BCO, COUT, ACT, HAS_RESIDUAL)


@triton.jit
def _ffn_pixels(x_img, off, ph, pw, ok, H, W, start_rows, w_start_ptr, b_start_ptr, K0: tl.constexpr,
                BK: tl.constexpr, CIN: tl.constexpr, START_K: tl.constexpr, P2: tl.constexpr):
    """The expand's input at one pixel set without a middle depthwise: x itself, or the start
    depthwise of x there, in x's dtype."""
    if START_K > 0:
        v = _start_depthwise(x_img, off, ph, pw, ok, H, W, start_rows, w_start_ptr, b_start_ptr, K0, BK, CIN, START_K,
                             P2)
        v = v.to(x_img.dtype.element_ty)
    else:
        v = _load_region(x_img, off, ok, K0, BK, CIN)
    return v


@triton.jit
def _inverted_residual_kernel(
    x_ptr,  # input, contiguous NHWC: element (n, h, w, c) at ((n*H + h)*W + w)*CIN + c (STEM_C: the image)
    w_start_ptr,  # start depthwise weight [START_K**2, CIN], tap kh*START_K+kw major (unused when START_K = 0)
    b_start_ptr,  # start depthwise bias [CIN]
    w_exp_ptr,  # expand weight [CIN, HIDDEN], BN folded, x's dtype (unused without HAS_EXPAND)
    b_exp_ptr,  # expand bias [HIDDEN]
    w_dw_ptr,  # depthwise weight [KSIZE**2, HIDDEN], tap kh*KSIZE+kw major, x's dtype (unused when KSIZE = 0)
    b_dw_ptr,  # depthwise bias [HIDDEN]
    w_proj_ptr,  # project weight [HIDDEN, COUT], x's dtype
    b_proj_ptr,  # project bias [COUT]
    y_ptr,  # output, contiguous NHWC [N, HO, WO, COUT] (without PROJECT: the hidden tensor, COUT = HIDDEN)
    scratch_ptr,  # per program: two [P_IN, STAGE_HID or BLOCK_HID] buffers of one staged hidden chunk, x's dtype
    N,  # batch
    start_rows,  # START_K at run time: the start depthwise's row loop bound (see _start_depthwise)
    H: tl.constexpr,  # input rows ...
    W: tl.constexpr,  # ... and columns (with STEM_C: the stem's output)
    HO: tl.constexpr,  # output rows ...
    WO: tl.constexpr,  # ... and columns
    CIN: tl.constexpr,  # input channels
    HIDDEN: tl.constexpr,  # expanded channels (= CIN without HAS_EXPAND)
    COUT: tl.constexpr,  # output channels
    STRIDE: tl.constexpr,  # the block's stride, 1 or 2: the middle depthwise's, else the start one's
    KSIZE: tl.constexpr,  # middle depthwise kernel, 3 or 5 (padding KSIZE // 2); 0: none (two products per pixel)
    START_K: tl.constexpr,  # start depthwise kernel (UIB, on x before the expand), 3 or 5; 0: none
    ACT_EXP: tl.constexpr,  # activation after the expand: "relu6", "relu" or "none"
    ACT_DW: tl.constexpr,  # ... after the middle depthwise
    ACT_PROJ: tl.constexpr,  # ... after the project ("none" in inverted residuals)
    TF_SAME: tl.constexpr,  # TensorFlow "same" padding of the middle depthwise (top/left pad from the size)
    HAS_EXPAND: tl.constexpr,  # an expand 1x1 conv precedes the depthwise
    HAS_RESIDUAL: tl.constexpr,  # add x to the output (stride 1, CIN == COUT)
    TILE_H: tl.constexpr,  # output tile: rows (even: vertical pairs; with TALL a multiple of 4) ...
    TILE_W: tl.constexpr,  # ... columns ...
    IMGS: tl.constexpr,  # ... and images
    REG_H: tl.constexpr,  # the tile's input region, halo included: (TILE_H-1)*STRIDE+KSIZE rows ...
    REG_W: tl.constexpr,  # ... and (TILE_W-1)*STRIDE+KSIZE columns
    P_IN: tl.constexpr,  # next_pow2(IMGS*REG_H*REG_W): staged rows per chunk
    P2: tl.constexpr,  # next_pow2(IMGS*TILE_H/GH*TILE_W/GW): pixel groups per tile (pairs, 2x2 or 4x2)
    BLOCK_HID: tl.constexpr,  # hidden channels per chunk
    K_A: tl.constexpr,  # the expand's input channels as one or two powers of two: K_A ...
    K_B: tl.constexpr,  # ... + K_B (0: one part), e.g. 160 = 128 + 32
    CO_A: tl.constexpr,  # the output channels likewise: CO_A ...
    CO_B: tl.constexpr,  # ... + CO_B (0: one part)
    X_RESIDENT: tl.constexpr,  # load the region's input once per tile (else once per chunk)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
    STAGE_IMAGE: tl.constexpr = False,  # tiles of whole images (stride 1): stage only the tile's pixels
    JOIN_PAIRS: tl.constexpr = False,  # project top and bottom pixels in one product of 2*P2 rows
    P_STAGE: tl.constexpr = 0,  # rows the expand computes per chunk: P_IN, or with STAGE_IMAGE
    # next_pow2(IMGS*TILE_H*TILE_W)
    STAGE_VECTORS: tl.constexpr = True,  # 16-bit expand products: stage the chunk from the product's registers
    # (`_store_staged`; chunks of 16-64), else with tl.store (a layout conversion, fewer registers)
    INLINE_PTX: tl.constexpr = False,  # the vector stores and the fp16 epilogue as inline PTX (compiled), else
    # their twins in Triton ops (the interpreter runs no PTX)
    QUADS: tl.constexpr = False,  # 2x2 pixel groups (pairs side by side) share windows and weights; needs JOIN_PAIRS
    PROJECT_APART: tl.constexpr = False,  # store the depthwise's output (the hidden tensor) to y; a GEMM projects
    # it (on small maps the fused project re-reads all its weights for every few pixels)
    HIDDEN_SPLIT: tl.constexpr = 1,  # with PROJECT_APART: work items per tile, each a share of its hidden chunks
    # (at small batches a few tiles would leave most SMs idle)
    PACKED_DW: tl.constexpr = True,  # fp16: the depthwise's bias and clamp on packed pairs (`_dw_epilogue`; off: in
    # fp32, which a few register-capped configs need)
    RECOMPUTE_SETS: tl.constexpr = False,  # positions recomputed where used, not held through the loops: the staged
    # rows' per tile, the fused project epilogue's after the chunk loop (compiled: through `_opaque`, so not hoisted)
    TALL: tl.constexpr = False,  # 4x2 pixel groups (two 2x2 groups stacked) share the windows of 3 + 3*STRIDE rows
    # (`_depthwise_groups`); needs QUADS
    STRIP: tl.constexpr = 0,  # > 0: STRIP x 2 pixel groups (3..8 rows; 7 divides MobileNet's maps) likewise; needs
    # QUADS
    STAGE_HID: tl.constexpr = 0,  # > BLOCK_HID: the expand computes and stages this many hidden channels at once (one
    # product reads the input region once for all), the depthwise and project take BLOCK_HID of them at a time
    ACC16: tl.constexpr = False,  # fp16: the staged expand accumulates in fp16 (wgmma's f16 accumulator: half the
    # registers, no conversion before the epilogue; one rounding per 16 input channels, where fp32 rounds once)
    STEM_C: tl.constexpr = 0,  # > 0: the expand is the network's stem, a 3x3 stride-2 conv (padding 1) of an image of
    # STEM_C channels at x_ptr, on its im2col rows (CIN = 9 * STEM_C columns); H x W is the stem's output
    STEM_XH: tl.constexpr = 0,  # the image's rows ...
    STEM_XW: tl.constexpr = 0,  # ... and columns
    STEM_SXN: tl.constexpr = 0,  # its strides in elements: image, channel, row, column (any memory format)
    STEM_SXC: tl.constexpr = 0,
    STEM_SXH: tl.constexpr = 0,
    STEM_SXW: tl.constexpr = 0,
):
    # A start depthwise is computed once per tile, over the region it feeds.
    tl.static_assert(START_K == 0 or KSIZE == 0 or X_RESIDENT)
    PROJECT: tl.constexpr = not PROJECT_APART
    tl.static_assert(PROJECT or KSIZE > 0)
    tl.static_assert(HIDDEN_SPLIT == 1 or PROJECT_APART)
    tl.static_assert(not TALL or QUADS)
    tl.static_assert(STRIP == 0 or (QUADS and not TALL and STRIP >= 3 and STRIP <= 8))
    # A work item's hidden channels: whole chunks, the last part possibly shorter.
    SPLIT_HID: tl.constexpr = (HIDDEN + BLOCK_HID * HIDDEN_SPLIT - 1) // (BLOCK_HID * HIDDEN_SPLIT) * BLOCK_HID
    SH: tl.constexpr = STAGE_HID if STAGE_HID > 0 else BLOCK_HID  # the staged chunk's width
    tl.static_assert(SH % BLOCK_HID == 0 and (SH == BLOCK_HID or HIDDEN_SPLIT == 1))
    TAIL: tl.constexpr = HIDDEN % SH if SH > BLOCK_HID else 0  # the last chunk's width, or 0
    tl.static_assert(TAIL % BLOCK_HID == 0)  # whole parts (BlockConfig.validate says so first)
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    VECTORS: tl.constexpr = (STAGE_VECTORS and HAS_EXPAND and y_ptr.dtype.element_ty.primitive_bitwidth == 16
                             and SH >= 16 and SH <= 64)
    tiles_w = tl.cdiv(WO, TILE_W)
    tiles_hw = tl.cdiv(HO, TILE_H) * tiles_w
    n_tiles = tl.cdiv(N, IMGS) * tiles_hw
    # Tile-invariant index math, once per program: offsets relative to a tile's origin.
    GW: tl.constexpr = 2 if QUADS else 1  # columns per pixel group
    GH: tl.constexpr = STRIP if STRIP > 0 else (4 if TALL else 2)  # ... and rows
    GR: tl.constexpr = GW * (2 if GH <= 2 else (4 if GH <= 4 else 8))  # rows per group, joined (a power of 2)
    QW: tl.constexpr = TILE_W // GW  # groups per tile row
    q = tl.arange(0, P2)  # pixel groups: rows q_y (top) .. q_y + GH - 1 of columns q_x .. q_x + GW - 1
    q_img, q_y, q_x, q_in, q_x_rel, q_y_rel = _pixel_sets(q, H, W, HO, WO, TILE_H, QW, GW, IMGS, CIN, COUT, GH)
    hh0 = tl.arange(0, BLOCK_HID)
    if KSIZE > 0:
        if not RECOMPUTE_SETS:
            r, r_img, r_y, r_x, r_in, r_rel = _region_rows(tl.arange(0, P_STAGE if STAGE_IMAGE else P_IN), H, W, CIN,
                                                           REG_H, REG_W, TILE_H, TILE_W, IMGS, KSIZE, STAGE_IMAGE)
        scratch = scratch_ptr + pid.to(tl.int64) * (2 * P_IN * SH)
        # The top pixel's tap (0, 0) window; tap (kh, kw) is kh*REG_W + kw staged rows further.  The
        # padding pairs (q_in false) read the last pair's windows: theirs would lie past the staged
        # region, in another program's scratch or past its end.
        q_last = tl.minimum(q, IMGS * (TILE_H // GH) * QW - 1)
        q_win = (q_last // (TILE_H // GH * QW) * (REG_H * REG_W) + (q_last // QW) % (TILE_H // GH) * GH
                 * (STRIDE * REG_W) + q_last % QW * GW * STRIDE)
        pair_ptrs = scratch + q_win[:, None] * SH + hh0[None, :]
        if STAGE_IMAGE:
            _zero_scratch(scratch, P_IN, SH)
        if TF_SAME:  # TensorFlow's "same": the total padding split with the odd pixel at the bottom/right
            pad_t = _tf_same_pad(HO, STRIDE, KSIZE, H)
            pad_l = _tf_same_pad(WO, STRIDE, KSIZE, W)
        else:
            pad_t = KSIZE // 2
            pad_l = KSIZE // 2
    else:
        # No middle depthwise: the pixels' own inputs, at the stride.
        q_s_rel = ((q_img * H + q_y * STRIDE) * W + q_x * STRIDE) * CIN

    step = 0  # chunks staged so far: the buffer parity, carried across tiles
    if HIDDEN_SPLIT > 1:
        n_work = n_tiles * HIDDEN_SPLIT
    else:
        n_work = n_tiles
    for work in range(pid, n_work, tl.num_programs(0)):
        if HIDDEN_SPLIT > 1:
            tile = work // HIDDEN_SPLIT
            h_lo = work % HIDDEN_SPLIT * SPLIT_HID
            h_hi = tl.minimum(h_lo + SPLIT_HID, HIDDEN)
        else:
            tile = work
            h_lo = 0
            h_hi = HIDDEN
        t_h = (tile % tiles_hw) // tiles_w
        t_w = tile % tiles_w
        n0 = tile // tiles_hw * IMGS
        if STEM_C > 0:
            x_img = x_ptr + n0.to(tl.int64) * STEM_SXN
        else:
            x_img = x_ptr + n0.to(tl.int64) * (H * W * CIN)  # 64-bit image base, 32-bit offsets within
        y_img = y_ptr + n0.to(tl.int64) * (HO * WO * COUT)
        # The project's accumulators (none with the project apart).  Joined: one product per part
        # for all pixels of each group, rows 2q (top), 2q + 1 (quads: 4q + ...).
        if PROJECT and JOIN_PAIRS:
            acc_a = tl.zeros([GR * P2, CO_A], dtype=tl.float32)
            if CO_B > 0:
                acc_b = tl.zeros([GR * P2, CO_B], dtype=tl.float32)
        elif PROJECT:
            acc_ta = tl.zeros([P2, CO_A], dtype=tl.float32)  # top pixels, first output part
            acc_ba = tl.zeros([P2, CO_A], dtype=tl.float32)  # bottom pixels
            if CO_B > 0:
                acc_tb = tl.zeros([P2, CO_B], dtype=tl.float32)
                acc_bb = tl.zeros([P2, CO_B], dtype=tl.float32)
            else:  # placeholders: _project_pairs passes them through, nothing reads them
                acc_tb = acc_ta
                acc_bb = acc_ba
        if KSIZE > 0:
            if RECOMPUTE_SETS:  # per tile, not held from the prologue through the tile loop
                r, r_img, r_y, r_x, r_in, r_rel = _region_rows(
                    _opaque(tl.arange(0, P_STAGE if STAGE_IMAGE else P_IN), INLINE_PTX), H, W, CIN, REG_H, REG_W,
                    TILE_H, TILE_W, IMGS, KSIZE, STAGE_IMAGE)
            stage_rows = scratch + r[:, None] * SH
            ih0 = t_h * (TILE_H * STRIDE) - pad_t
            iw0 = t_w * (TILE_W * STRIDE) - pad_l
            rh = ih0 + r_y
            rw = iw0 + r_x
            r_ok = r_in & (n0 + r_img < N) & (rh >= 0) & (rh < H) & (rw >= 0) & (rw < W)
            r_off = r_rel + (ih0 * W + iw0) * CIN
            r_hi = _upper_bound(r_ok, ACT_EXP)
            if HAS_EXPAND and X_RESIDENT:
                if STEM_C > 0:
                    x_a = _stem_region(x_img, r_img, rh, rw, r_ok, K_A, STEM_C, STEM_XH, STEM_XW, STEM_SXN, STEM_SXC,
                                       STEM_SXH, STEM_SXW)
                elif START_K > 0:  # the start depthwise over the region, once per tile
                    x_a = _start_depthwise(x_img, r_off, rh, rw, r_ok, H, W, start_rows, w_start_ptr, b_start_ptr, 0,
                                           K_A, CIN, START_K, P_IN).to(dtype)
                    if K_B > 0:
                        x_b = _start_depthwise(x_img, r_off, rh, rw, r_ok, H, W, start_rows, w_start_ptr, b_start_ptr,
                                               K_A, K_B, CIN, START_K, P_IN).to(dtype)
                else:
                    x_a = _load_region(x_img, r_off, r_ok, 0, K_A, CIN)
                    if K_B > 0:
                        x_b = _load_region(x_img, r_off, r_ok, K_A, K_B, CIN)
            if not PROJECT:
                oh, ow, ok_top, ok_bot = _pair_masks(q_in, q_img, q_y, q_x, n0, t_h, t_w, N, HO, WO, TILE_H, TILE_W)
                out_hid = q_y_rel + (t_h * TILE_H * WO + t_w * TILE_W) * COUT
            # Chunks of SH channels, then (a hidden size no multiple of SH) one of the TAIL left: WIDTH is
            # SH, then TAIL when there is one (a constexpr per pass, so each pass has its own shapes).
            for WIDTH in tl.static_range(SH, TAIL - 1 if TAIL > 0 else SH - 1, TAIL - SH if TAIL > 0 else -1):
                for h0 in range(h_lo if WIDTH == SH else h_hi - TAIL, h_hi - TAIL if WIDTH == SH else h_hi, WIDTH):
                    hs0 = tl.arange(0, WIDTH)
                    hs = h0 + hs0
                    hs_ok = hs < HIDDEN
                    # 1. Stage this chunk of the depthwise input over the region.
                    if HAS_EXPAND:
                        if not X_RESIDENT:
                            x_a = _load_region(x_img, r_off, r_ok, 0, K_A, CIN)
                            if K_B > 0:
                                x_b = _load_region(x_img, r_off, r_ok, K_A, K_B, CIN)
                        if ACC16 and dtype == tl.float16:
                            e = tl.zeros([P_STAGE, WIDTH], dtype=tl.float16)
                        else:
                            e = tl.zeros([P_STAGE, WIDTH], dtype=tl.float32)
                        e = _expand_part(x_a, e, w_exp_ptr, hs, hs_ok, 0, K_A, CIN, HIDDEN, DOT_PRECISION, VECTORS)
                        if K_B > 0:
                            e = _expand_part(x_b, e, w_exp_ptr, hs, hs_ok, K_A, K_B, CIN, HIDDEN, DOT_PRECISION,
                                             VECTORS)
                        b = tl.load(b_exp_ptr + hs, mask=hs_ok, other=0.0)[None, :]
                        if VECTORS:
                            b = _stage_order(b, WIDTH)
                        e = _expand_epilogue(e, b, r_hi[:, None], ACT_EXP, dtype, INLINE_PTX)
                    else:
                        e = tl.load(x_img + r_off[:, None] + hs[None, :], mask=r_ok[:, None] & hs_ok[None, :], other=0.0)
                    # Double buffer: a warp overwrites a buffer only after the next chunk's barrier,
                    # which every warp reaches after reading it, so one barrier per chunk suffices.
                    buf = (step % 2) * (P_IN * SH)
                    step += 1
                    if VECTORS:
                        _store_staged(scratch + buf, r, r_in, e.to(dtype), P_STAGE, WIDTH, INLINE_PTX,
                                      STAGE_IMAGE, SH)
                    elif STAGE_IMAGE:  # the padding rows of the pixel enumeration are stored nowhere
                        tl.store(stage_rows + buf + hs0[None, :], e.to(dtype), mask=r_in[:, None])
                    else:
                        tl.store(stage_rows + buf + hs0[None, :], e.to(dtype))
                    tl.debug_barrier()
                    for part in tl.static_range(WIDTH // BLOCK_HID):  # the staged chunk's parts of BLOCK_HID channels
                        hh = h0 + part * BLOCK_HID + hh0
                        h_ok = hh < HIDDEN
                        windows = pair_ptrs + buf + part * BLOCK_HID
                        # 2. Depthwise for the tile's pixel pairs (or 2x2 groups: then d_top and d_bot hold
                        # both columns, rows 2q + u for the left (u = 0) and the right pixel; or GH x 2 groups).
                        if GH > 2:
                            (o0l, o0r, o1l, o1r, o2l, o2r, o3l, o3r, o4l, o4r, o5l, o5r, o6l, o6r, o7l,
                             o7r) = _depthwise_groups(windows, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN, REG_W, STRIDE,
                                                      KSIZE, ACT_DW, BLOCK_HID, P2,
                                                      dtype if PACKED_DW else tl.float32, INLINE_PTX, GH, SH)
                            if not PROJECT:  # 3. Store the hidden chunk, two rows at a time ...
                                _store_hidden(y_img, out_hid, ow, ok_top, ok_top & (oh + 1 < HO), o0l, o0r, o1l, o1r, hh,
                                              h_ok, WO, HIDDEN, GW)
                                _store_hidden(y_img, out_hid + 2 * WO * HIDDEN, ow, ok_top & (oh + 2 < HO) & (2 < GH),
                                              ok_top & (oh + 3 < HO) & (3 < GH), o2l, o2r, o3l, o3r, hh, h_ok, WO,
                                              HIDDEN, GW)
                                if GH > 4:
                                    _store_hidden(y_img, out_hid + 4 * WO * HIDDEN, ow, ok_top & (oh + 4 < HO),
                                                  ok_top & (oh + 5 < HO) & (5 < GH), o4l, o4r, o5l, o5r, hh, h_ok, WO,
                                                  HIDDEN, GW)
                                    _store_hidden(y_img, out_hid + 6 * WO * HIDDEN, ow,
                                                  ok_top & (oh + 6 < HO) & (6 < GH), ok_top & (oh + 7 < HO) & (7 < GH),
                                                  o6l, o6r, o7l, o7r, hh, h_ok, WO, HIDDEN, GW)
                            else:  # ... or project it into the accumulators.
                                d = _join_groups(o0l, o0r, o1l, o1r, o2l, o2r, o3l, o3r, o4l, o4r, o5l, o5r, o6l,
                                                 o6r, o7l, o7r, P2, BLOCK_HID, GH, dtype)
                                acc_a = _project_part(d, acc_a, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
                                if CO_B > 0:
                                    acc_b = _project_part(d, acc_b, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT,
                                                          DOT_PRECISION)
                        else:
                            d_top, d_tr, d_bot, d_br = _depthwise(windows, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN,
                                                                  REG_W, STRIDE, KSIZE, ACT_DW, BLOCK_HID, P2, GW,
                                                                  dtype if PACKED_DW else tl.float32, INLINE_PTX, SH)
                            if not PROJECT:  # 3. Store the hidden chunk for the GEMM that projects it ...
                                _store_hidden(y_img, out_hid, ow, ok_top, ok_bot, d_top, d_tr, d_bot, d_br, hh, h_ok, WO,
                                              HIDDEN, GW)
                            else:  # ... or project it into the accumulators.
                                if QUADS:
                                    d_top = _join_pairs(d_top, d_tr, P2, BLOCK_HID)
                                    d_bot = _join_pairs(d_bot, d_br, P2, BLOCK_HID)
                                if JOIN_PAIRS:
                                    d = _join_pairs(d_top.to(dtype), d_bot.to(dtype), GW * P2, BLOCK_HID)
                                    acc_a = _project_part(d, acc_a, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
                                    if CO_B > 0:
                                        acc_b = _project_part(d, acc_b, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT,
                                                              DOT_PRECISION)
                                else:
                                    acc_ta, acc_ba, acc_tb, acc_bb = _project_pairs(
                                        d_top.to(dtype), d_bot.to(dtype), acc_ta, acc_ba, acc_tb, acc_bb, w_proj_ptr, hh,
                                        h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
            if PROJECT and not JOIN_PAIRS and RECOMPUTE_SETS:
                # The pixel sets' positions again, after the chunk loop: held through it, they
                # take registers the loop needs.
                q_img, q_y, q_x, q_in, q_x_rel, q_y_rel = _pixel_sets(_opaque(tl.arange(0, P2), INLINE_PTX), H, W, HO,
                                                                      WO, TILE_H, QW, GW, IMGS, CIN, COUT, GH)
            if PROJECT and not JOIN_PAIRS:
                oh, ow, ok_top, ok_bot = _pair_masks(q_in, q_img, q_y, q_x, n0, t_h, t_w, N, HO, WO, TILE_H, TILE_W)
        else:
            # No middle depthwise (UIB's FFN, with or without a start depthwise): the expand and
            # the project on each pixel, a fused two-matrix MLP; nothing is staged.
            oh, ow, ok_top, ok_bot = _pair_masks(q_in, q_img, q_y, q_x, n0, t_h, t_w, N, HO, WO, TILE_H, TILE_W)
            s_top = q_s_rel + (t_h * TILE_H * W + t_w * TILE_W) * (STRIDE * CIN)
            s_bot = s_top + STRIDE * W * CIN
            xt_a = _ffn_pixels(x_img, s_top, oh * STRIDE, ow * STRIDE, ok_top, H, W, start_rows, w_start_ptr,
                               b_start_ptr, 0, K_A, CIN, START_K, P2)
            xb_a = _ffn_pixels(x_img, s_bot, (oh + 1) * STRIDE, ow * STRIDE, ok_bot, H, W, start_rows, w_start_ptr,
                               b_start_ptr, 0, K_A, CIN, START_K, P2)
            if K_B > 0:
                xt_b = _ffn_pixels(x_img, s_top, oh * STRIDE, ow * STRIDE, ok_top, H, W, start_rows, w_start_ptr,
                                   b_start_ptr, K_A, K_B, CIN, START_K, P2)
                xb_b = _ffn_pixels(x_img, s_bot, (oh + 1) * STRIDE, ow * STRIDE, ok_bot, H, W, start_rows, w_start_ptr,
                                   b_start_ptr, K_A, K_B, CIN, START_K, P2)
            for h0 in range(0, HIDDEN, BLOCK_HID):
                hh = h0 + hh0
                h_ok = hh < HIDDEN
                b = tl.load(b_exp_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
                e_t = _expand_part(xt_a, tl.zeros([P2, BLOCK_HID], dtype=tl.float32), w_exp_ptr, hh, h_ok, 0, K_A,
                                   CIN, HIDDEN, DOT_PRECISION)
                e_b = _expand_part(xb_a, tl.zeros([P2, BLOCK_HID], dtype=tl.float32), w_exp_ptr, hh, h_ok, 0, K_A,
                                   CIN, HIDDEN, DOT_PRECISION)
                if K_B > 0:
                    e_t = _expand_part(xt_b, e_t, w_exp_ptr, hh, h_ok, K_A, K_B, CIN, HIDDEN, DOT_PRECISION)
                    e_b = _expand_part(xb_b, e_b, w_exp_ptr, hh, h_ok, K_A, K_B, CIN, HIDDEN, DOT_PRECISION)
                e_t = _bias_act(e_t, b, h_ok, ACT_EXP, HIDDEN, BLOCK_HID)
                e_b = _bias_act(e_b, b, h_ok, ACT_EXP, HIDDEN, BLOCK_HID)
                acc_ta, acc_ba, acc_tb, acc_bb = _project_pairs(e_t.to(dtype), e_b.to(dtype), acc_ta, acc_ba,
                                                                acc_tb, acc_bb, w_proj_ptr, hh, h_ok, CO_A, CO_B,
                                                                COUT, DOT_PRECISION)
        if PROJECT and JOIN_PAIRS:  # pairs, 2x2, 4x2 or strip groups, joined: stored in place
            _store_joined(acc_a, x_img, y_img, b_proj_ptr, t_h, t_w, n0, N, H, W, HO, WO, P2, GR, GH, TILE_H, TILE_W, QW,
                          GW, IMGS, 0, CO_A, CIN, COUT, ACT_PROJ, HAS_RESIDUAL, INLINE_PTX and RECOMPUTE_SETS)
            if CO_B > 0:
                _store_joined(acc_b, x_img, y_img, b_proj_ptr, t_h, t_w, n0, N, H, W, HO, WO, P2, GR, GH, TILE_H, TILE_W,
                              QW, GW, IMGS, CO_A, CO_B, CIN, COUT, ACT_PROJ, HAS_RESIDUAL,
                              INLINE_PTX and RECOMPUTE_SETS)
        elif PROJECT:  # pairs, each pixel its own product
            in_top = q_x_rel + (t_h * TILE_H * W + t_w * TILE_W) * CIN
            out_top = q_y_rel + (t_h * TILE_H * WO + t_w * TILE_W) * COUT
            _store_part(acc_ta, x_img, y_img, b_proj_ptr, in_top, out_top, ok_top, 0, CO_A, COUT, ACT_PROJ, HAS_RESIDUAL)
            _store_part(acc_ba, x_img, y_img, b_proj_ptr, in_top + W * CIN, out_top + WO * COUT, ok_bot, 0, CO_A, COUT,
                        ACT_PROJ, HAS_RESIDUAL)
            if CO_B > 0:
                _store_part(acc_tb, x_img, y_img, b_proj_ptr, in_top, out_top, ok_top, CO_A, CO_B, COUT, ACT_PROJ,
                            HAS_RESIDUAL)
                _store_part(acc_bb, x_img, y_img, b_proj_ptr, in_top + W * CIN, out_top + WO * COUT, ok_bot, CO_A, CO_B,
                            COUT, ACT_PROJ, HAS_RESIDUAL)


@functools.lru_cache(maxsize=1024)
def kernel_args(shape: BlockShape, cfg: BlockConfig, dtype: torch.dtype, allow_tf32: bool,
                x_strides: tuple[int, int, int, int] | None = None) -> dict:
    """The constexpr arguments and launch options of one launch: what selects a compiled
    variant (cached: this runs on every call, and at batch 1 host time is what the network
    waits for).  x_strides: with a stem, the image's (batch, channel, row, column) strides,
    which the kernel is specialised on (default: contiguous NCHW, as users pass images)."""
    reg_h, reg_w = shape.region(cfg.tile_h, cfg.tile_w)
    # The stem's im2col columns go in one power-of-two part (27 -> 32).
    k_a, k_b = (max(16, next_pow2(shape.expand_k)), 0) if shape.stem else split_pow2(shape.cin)
    # Every constexpr is passed, defaults too: compiled ahead of time (kernels/aot.py), an argument
    # left out would be a run-time one.
    sxn = sxc = sxh = sxw = 0
    if shape.stem:
        sxn, sxc, sxh, sxw = x_strides or (shape.cin * shape.stem_h * shape.stem_w, shape.stem_h * shape.stem_w,
                                           shape.stem_w, 1)
    stem = dict(STEM_C=shape.cin if shape.stem else 0, STEM_XH=shape.stem_h, STEM_XW=shape.stem_w, STEM_SXN=sxn,
                STEM_SXC=sxc, STEM_SXH=sxh, STEM_SXW=sxw)
    # project_apart: the kernel's output is the hidden tensor, and no accumulator is allocated.
    cout = shape.hidden if cfg.project_apart else shape.cout
    co_a, co_b = (16, 0) if cfg.project_apart else split_pow2(shape.cout)
    # The kernel's constexprs by name, one per line: a list of the block's fields, not repeated logic.
    return launch_args(
        cfg, dtype, allow_tf32,
        H=shape.h,
        W=shape.w,
        HO=shape.ho,
        WO=shape.wo,
        CIN=shape.expand_k,
        HIDDEN=shape.hidden,
        COUT=cout,
        STRIDE=shape.stride,
        KSIZE=shape.ksize,
        START_K=shape.start_k,
        ACT_EXP=shape.act_exp,
        ACT_DW=shape.act_dw,
        ACT_PROJ=shape.act_proj,
        TF_SAME=shape.tf_same,
        HAS_EXPAND=shape.has_expand,
        HAS_RESIDUAL=shape.residual,
        REG_H=reg_h,
        REG_W=reg_w,
        # tl.dot needs at least 16 rows; extra rows are masked.
        P_IN=_staged_rows(shape, cfg),
        # The expand's rows: the staged region, or with stage_image the images' own pixels.
        P_STAGE=max(16, next_pow2(cfg.imgs * cfg.tile_h * cfg.tile_w)) if cfg.stage_image else _staged_rows(shape, cfg),
        # Pixel pairs, or 2x2 groups with quads.
        P2=max(16, next_pow2(cfg.imgs * cfg.tile_h // cfg.group_rows
                             * (cfg.tile_w // 2 if cfg.quads else cfg.tile_w))),
        # The staged chunk's vector stores and the fp16 epilogue, compiled, are inline PTX, which
        # the interpreter cannot run: it takes their twins in Triton ops.  MNV2_INLINE_PTX=0
        # compiles the twins instead (bench/gpu_diag.py: does a fault follow the PTX?).
        INLINE_PTX=not interpreting() and os.environ.get("MNV2_INLINE_PTX", "1") != "0",
        K_A=k_a,
        K_B=k_b,
        CO_A=co_a,
        CO_B=co_b,
        **stem,
    )


def _staged_rows(shape: BlockShape, cfg: BlockConfig) -> int:
    reg_h, reg_w = shape.region(cfg.tile_h, cfg.tile_w)
    return max(16, next_pow2(cfg.imgs * reg_h * reg_w))


def scratch_elements(shape: BlockShape, cfg: BlockConfig, programs: int) -> int:
    """Scratch of one launch: per program, two staged chunks of [P_IN, stage_hid or block_hid]
    (none without a middle depthwise: nothing is staged)."""
    return programs * 2 * _staged_rows(shape, cfg) * (cfg.stage_hid or cfg.block_hid) if shape.staged else 0


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count  # a driver query: once per device


# The interpreter runs programs one after another: a few programs that each walk over several
# tiles keep it fast and exercise the persistent loop and the buffer alternation.
INTERPRETER_PROGRAMS = 3


def programs_for(shape: BlockShape, cfg: BlockConfig, n: int, device: torch.device) -> int:
    if device.type == "cuda":
        return shape.grid(cfg, n, _sm_count(device.index if device.index is not None else torch.cuda.current_device()))
    return min(shape.tiles(cfg, n), INTERPRETER_PROGRAMS)


_TAPS = {9: 3, 25: 5}


def _pixel_rows(t: torch.Tensor) -> torch.Tensor:
    """A channels_last [N, C, H, W] tensor as the [N*H*W, C] matrix it is in memory (a view)."""
    return t.permute(0, 2, 3, 1).view(-1, t.shape[1])


def _kernel_size(name: str, w: torch.Tensor | None, channels: str) -> int:
    """A depthwise weight [k*k, C] (k 3 or 5) gives k; None gives 0 (no such stage)."""
    if w is None:
        return 0
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[0] not in _TAPS:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{name} must have shape [9 or 25, {channels}] (a 3x3 or 5x5 depthwise), got {got}")
    return _TAPS[w.shape[0]]


def inverted_residual(
    x: torch.Tensor,
    w_exp: torch.Tensor | None,
    b_exp: torch.Tensor | None,
    w_dw: torch.Tensor | None,
    b_dw: torch.Tensor | None,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor,
    *,
    stride: int,
    residual: bool,
    act_exp: str = "relu6",
    act_dw: str = "relu6",
    act_proj: str = "none",
    w_start: torch.Tensor | None = None,
    b_start: torch.Tensor | None = None,
    tf_same: bool = False,
    config: BlockConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run one block of the inverted-residual family with folded weights in a single kernel:

        y = [x +] act_proj(project(act_dw(depthwise(act_exp(expand(start(x)))))))

    x:       [N, CIN, H, W] in channels_last memory; float16, bfloat16 or float32.
    w_exp:   [CIN, HIDDEN] (x's dtype) and b_exp [HIDDEN], or both None (t = 1, or a
             depthwise-separable block: the depthwise runs on x).
    w_dw:    [k*k, HIDDEN], k 3 or 5 (padding k // 2), taps kh*k+kw;  b_dw [HIDDEN].  Both
             None: no middle depthwise (MobileNetV4's FFN and ConvNeXt-like blocks).
    w_proj:  [HIDDEN, COUT] (x's dtype);  b_proj [COUT].
    stride:  1 or 2, the middle depthwise's (else the start depthwise's).
    residual: add x (needs stride 1 and CIN == COUT).
    act_exp, act_dw, act_proj: "relu6", "relu" or "none" after the expand, the depthwise and
             the project (MobileNetV2: relu6, relu6, none).
    w_start: [s*s, CIN] and b_start [CIN]: a depthwise on x before the expand, without an
             activation (MobileNetV4's start depthwise), or None.
    tf_same: TensorFlow's "same" padding of the middle depthwise (timm's tf_ models): at
             stride 2 the total padding k - 2 (k - 1 for an odd size) split with the extra
             pixel at the bottom/right; at stride 1 it is k // 2 each side, as without it.
    config:  launch configuration; default: the tuned table for this GPU, else a heuristic.
    allow_tf32: fp32 products on TF32 tensor cores; default follows
             torch.backends.cudnn.allow_tf32, like the convolutions this replaces.
    out:     optional preallocated [N, COUT, HO, WO] channels_last output.

    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // stride + 1.
    The same computation in PyTorch ops: `reference.inverted_residual`, same arguments.

    Memory: nothing of size N*H*W*HIDDEN is ever allocated or written, unless the config sets
    project_apart (then the hidden tensor, of the output's pixels, is written for a GEMM to
    project: chosen where the fused project re-reading its weights costs more, 7x7 maps).  The
    scratch is two staged chunks per program of the persistent grid (`scratch_elements`: at
    most a few MiB on an H100/H200 whatever the batch), rewritten for every chunk, so it stays
    in L1/L2.
    Offsets are 64-bit per image and 32-bit within one, so batches beyond 2^31 elements are
    safe; a tile's images (config.imgs) must stay below 2^31 elements, or this raises.
    """
    check_activation("x", x)
    n, cin, h, w = x.shape
    has_expand = w_exp is not None
    if has_expand != (b_exp is not None):
        raise ValueError("w_exp and b_exp must both be given (t > 1) or both be None (t = 1)")
    if (w_dw is None) != (b_dw is None):
        raise ValueError("w_dw and b_dw must both be given or both be None (no middle depthwise)")
    if (w_start is None) != (b_start is None):
        raise ValueError("w_start and b_start must both be given or both be None")
    ksize = _kernel_size("w_dw", w_dw, "HIDDEN")
    start_k = _kernel_size("w_start", w_start, "CIN")
    if w_proj.dim() != 2:
        raise ValueError(f"w_proj must have shape [HIDDEN, COUT], got {tuple(w_proj.shape)}")
    # The hidden width: the depthwise's, else the expand's (the FFN), else the input's.
    hidden = w_dw.shape[1] if ksize else w_exp.shape[-1] if has_expand and w_exp.dim() == 2 else cin
    cout = w_proj.shape[1]
    if has_expand:
        check_param("w_exp", w_exp, (cin, hidden), x.device, x.dtype)
        check_param("b_exp", b_exp, (hidden,), x.device)
    elif hidden != cin:
        raise ValueError(f"without an expand stage the depthwise width ({hidden}) must equal the input channels ({cin})")
    if ksize:
        check_param("w_dw", w_dw, (ksize * ksize, hidden), x.device)
        check_param("b_dw", b_dw, (hidden,), x.device)
    if start_k:
        check_param("w_start", w_start, (start_k * start_k, cin), x.device)
        check_param("b_start", b_start, (cin,), x.device)
    check_param("w_proj", w_proj, (hidden, cout), x.device, x.dtype)
    check_param("b_proj", b_proj, (cout,), x.device)

    shape = BlockShape(cin, hidden, cout, stride, h, w, has_expand, residual, ksize=ksize, start_k=start_k,
                       act_exp=act_exp, act_dw=act_dw, act_proj=act_proj, tf_same=tf_same and stride == 2)
    return _run(x, shape, (w_start, b_start, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj), config, allow_tf32, out)


def _run(x, shape: BlockShape, weights: tuple, config: BlockConfig | None, allow_tf32: bool | None,
         out: torch.Tensor | None) -> torch.Tensor:
    """Launch the block kernel on checked tensors (weights: start, expand, depthwise and
    project weight and bias, None where a stage is absent)."""
    w_proj, b_proj = weights[6:]
    shape.check()
    n = x.shape[0]
    h, w = (shape.stem_h, shape.stem_w) if shape.stem else (shape.h, shape.w)
    hidden, cout, residual = shape.hidden, shape.cout, shape.residual
    cfg = config or choose_block_config(shape, x.dtype, n, x.device)
    cfg.validate(shape)
    span = cfg.imgs * max(h * w * shape.cin, shape.ho * shape.wo * (hidden if cfg.project_apart else cout))
    if shape.stem:
        span = max(span, cfg.imgs * x.stride(0), (shape.cin - 1) * x.stride(1) + (h - 1) * x.stride(2)
                   + (w - 1) * x.stride(3) + 1)
    if span > INT32_MAX:
        raise ValueError(f"{cfg.imgs} image(s) of x {tuple(x.shape)}, or of the output, span {span} elements, more "
                         "than 2^31: the block kernel indexes within a tile's images in 32 bits (take imgs=1, or "
                         "smaller images)")
    out = output(out, (n, cout, shape.ho, shape.wo), x, reads=weights)
    programs = programs_for(shape, cfg, n, x.device)
    scratch = torch.empty(scratch_elements(shape, cfg, programs), dtype=x.dtype, device=x.device)
    dummy = w_proj  # never read where a stage is absent
    # project_apart: the kernel writes the hidden tensor (NHWC), a GEMM over all pixels projects it.
    y = torch.empty((n, shape.ho, shape.wo, hidden), dtype=x.dtype, device=x.device) if cfg.project_apart else out
    if cfg.project_apart and interpreting(x.device):  # the tests' poison: a pixel the kernel misses shows as NaN
        y.fill_(float("nan"))
    x_strides = tuple(x.stride()) if shape.stem else None
    launch(
        _inverted_residual_kernel, (programs,), x,
        *(dummy if t is None else t for t in weights[:7]),
        b_proj,
        y,
        scratch if shape.staged else dummy,
        n, shape.start_k,
        **kernel_args(shape, cfg, x.dtype, tf32(allow_tf32), x_strides),
    )
    if cfg.project_apart:
        m = n * shape.ho * shape.wo
        # x, out and the weights are checked above; the hidden tensor is the kernel's own.
        launch_linear(y.view(m, hidden), w_proj, b_proj, _pixel_rows(out), _pixel_rows(x) if residual else None,
                      shape.act_proj, choose_project_config(m, hidden, cout, x.device, x.dtype.itemsize),
                      tf32(allow_tf32))
    return out


def stem_block(
    x: torch.Tensor,
    w_stem: torch.Tensor,
    b_stem: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor,
    *,
    act_stem: str = "relu6",
    act_dw: str = "relu6",
    act_proj: str = "none",
    config: BlockConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network's stem and its first block, when that is depthwise-separable (MobileNetV2's
    t = 1 block), in one kernel:

        y = act_proj(project(act_dw(depthwise3x3(act_stem(conv3x3_stride2(x))))))

    The stem's output (the largest activation of the network) never reaches GPU memory: the
    stem is the block's expand, computed per tile over the depthwise's input region from the
    image's im2col rows.

    x:      the image [N, CIN, H, W], any memory format (NCHW as users pass it, or
            channels_last); float16, bfloat16 or float32.
    w_stem: [CIN*9, C] (x's dtype), row ci*9 + kh*3 + kw, and b_stem [C]: the stem, BN
            folded, padding 1, stride 2 (as `stem.stem_conv`'s weight).
    w_dw:   [9, C] and b_dw [C]: the block's 3x3 stride-1 depthwise.
    w_proj: [C, COUT] (x's dtype) and b_proj [COUT].
    config, allow_tf32, out: as for `inverted_residual`.

    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // 2 + 1.  The same
    computation in PyTorch ops: `reference.stem_block`.
    """
    check_activation("x", x, "NCHW")
    n, cin, h, w = x.shape
    if w_stem.dim() != 2 or w_stem.shape[0] != cin * 9:
        raise ValueError(f"w_stem must have shape [{cin}*9, C] for {cin} input channels, got {tuple(w_stem.shape)}")
    hidden = w_stem.shape[1]
    if _kernel_size("w_dw", w_dw, "C") != 3:
        raise ValueError(f"w_dw must be a 3x3 depthwise [9, {hidden}], got {tuple(w_dw.shape)}")
    if w_proj.dim() != 2:
        raise ValueError(f"w_proj must have shape [C, COUT], got {tuple(w_proj.shape)}")
    cout = w_proj.shape[1]
    check_param("w_stem", w_stem, (cin * 9, hidden), x.device, x.dtype)
    check_param("b_stem", b_stem, (hidden,), x.device)
    check_param("w_dw", w_dw, (9, hidden), x.device)
    check_param("b_dw", b_dw, (hidden,), x.device)
    check_param("w_proj", w_proj, (hidden, cout), x.device, x.dtype)
    check_param("b_proj", b_proj, (cout,), x.device)
    block = BlockShape(hidden, hidden, cout, 1, 0, 0, False, False, act_dw=act_dw, act_proj=act_proj)
    shape = block.with_stem(cin, act_stem, h, w)
    return _run(x, shape, (None, None, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj), config, allow_tf32, out)
