"""One-kernel MobileNetV2 inverted-residual block (expand 1x1, depthwise 3x3, project 1x1).

    y = [x +] project( relu6( depthwise3x3_s( relu6( expand(x) ) ) ) )      (BN folded in each)

The expanded tensor (t times wider than x) never reaches GPU memory.  A program owns an
output tile (imgs x TILE_H x TILE_W pixels) and loops over the hidden channels in chunks of
BLOCK_HID.  For each chunk it

1. *stages*: computes relu6(expand(x)) once over the tile's input region (the tile at the
   stride plus a one-pixel halo, out-of-image pixels forced to 0: the depthwise's zero
   padding) on the tensor cores, and stores it, in the activation dtype, into a small
   per-program scratch that stays in L1/L2;
2. *depthwise*: reads the nine shifted windows of that chunk back with constant offsets
   from one pointer tile -- no index math, masks or layout conversions per tap -- for
   vertical pairs of output pixels, whose windows overlap (3 + STRIDE rows of windows
   serve both); each row's three taps are summed in the activation dtype (packed fp16x2 /
   bf16x2 arithmetic), the rows in fp32;
3. *projects*: relu6 + the depthwise bias, then straight into the project product, which
   accumulates in fp32 registers for the whole tile like the second matrix of a fused MLP.

With JOIN_PAIRS the two pixels of each pair go through the project as one product of 2*P2
rows (small tiles: one padded wgmma tile instead of two).

With STAGE_IMAGE (stride 1, one tile per image: the 7x7 blocks), step 1 expands only the
tile's own pixels: the region's one-pixel ring is all padding, and is zeroed once per program
instead of recomputed per chunk (a 7x7 image: 64 staged rows instead of 128).

The grid is persistent: as many programs as fit on the GPU at once, each walking over
tiles, so the scratch is bounded by the GPU's size, not the batch's.  Two scratch buffers
alternate between chunks, so one barrier per chunk orders writes and reads.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (INT32_MAX, check_activation, check_param, launch, launch_args, next_pow2, output, split_pow2,
                      tf32)
from .choice import choose_block_config
from .records import BlockConfig, BlockShape


@triton.jit
def _relu6_bounded(v, hi):
    # relu6 whose upper bound is 0 for pixels outside the image: the depthwise's zero
    # padding at the cost of the clamp itself.  NaN survives, as in torch.nn.ReLU6.
    v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(v, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _load_region(x_img, r_off, r_ok, K0: tl.constexpr, BK: tl.constexpr, CIN: tl.constexpr):
    """Channels K0..K0+BK of the tile's input region, 0 outside the image."""
    kk = K0 + tl.arange(0, BK)
    return tl.load(x_img + r_off[:, None] + kk[None, :], mask=r_ok[:, None] & (kk < CIN)[None, :], other=0.0)


@triton.jit
def _image_rows(REG_H: tl.constexpr, REG_W: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                IMGS: tl.constexpr, P_STAGE: tl.constexpr):
    """The staged rows of a tile of whole images (stride 1): the tile's own pixels, image-major,
    as (scratch row, image, region row, region column, valid).  The region's one-pixel ring
    around them is padding only; `_zero_scratch` zeroes it once per program, so each chunk
    expands and stores TILE_H x TILE_W pixels per image instead of REG_H x REG_W (a 7x7 image:
    64 rows instead of 128)."""
    p = tl.arange(0, P_STAGE)
    p_img = p // (TILE_H * TILE_W)
    p_y = (p // TILE_W) % TILE_H + 1
    p_x = p % TILE_W + 1
    p_in = p < IMGS * TILE_H * TILE_W
    return p_img * (REG_H * REG_W) + p_y * REG_W + p_x, p_img, p_y, p_x, p_in


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
def _expand_part(x, e, w_exp_ptr, hh, h_ok, K0: tl.constexpr, BK: tl.constexpr, CIN: tl.constexpr,
                 HIDDEN: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """e + x @ w_exp[K0:K0+BK, chunk]: one power-of-two part of the expand product."""
    kk = K0 + tl.arange(0, BK)
    w = tl.load(w_exp_ptr + kk[:, None] * HIDDEN + hh[None, :], mask=(kk < CIN)[:, None] & h_ok[None, :], other=0.0)
    return tl.dot(x, w, e, input_precision=DOT_PRECISION)


@triton.jit
def _depthwise_pairs(pair_ptrs, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN: tl.constexpr, REG_W: tl.constexpr,
                     STRIDE: tl.constexpr, BLOCK_HID: tl.constexpr, P2: tl.constexpr):
    """relu6(depthwise 3x3 + bias) of one staged chunk for vertical pairs of output pixels.

    The bottom pixel's taps start STRIDE staged rows below the top pixel's, so each of the
    3 + STRIDE rows of windows is loaded once for both.  A row's three taps are summed in
    the activation dtype, the rows in fp32."""
    top = tl.zeros([P2, BLOCK_HID], dtype=tl.float32)
    bot = tl.zeros([P2, BLOCK_HID], dtype=tl.float32)
    for j in range(3 + STRIDE):  # unrolled by the compiler: constant offsets throughout
        r0 = tl.load(pair_ptrs + (j * REG_W + 0) * BLOCK_HID)
        r1 = tl.load(pair_ptrs + (j * REG_W + 1) * BLOCK_HID)
        r2 = tl.load(pair_ptrs + (j * REG_W + 2) * BLOCK_HID)
        kt = tl.minimum(j, 2)  # the kernel row this staged row is for the top pixel ...
        kb = tl.maximum(j - STRIDE, 0)  # ... and for the bottom pixel
        t0 = tl.load(w_dw_ptr + (kt * 3 + 0) * HIDDEN + hh, mask=h_ok, other=0.0)
        t1 = tl.load(w_dw_ptr + (kt * 3 + 1) * HIDDEN + hh, mask=h_ok, other=0.0)
        t2 = tl.load(w_dw_ptr + (kt * 3 + 2) * HIDDEN + hh, mask=h_ok, other=0.0)
        b0 = tl.load(w_dw_ptr + (kb * 3 + 0) * HIDDEN + hh, mask=h_ok, other=0.0)
        b1 = tl.load(w_dw_ptr + (kb * 3 + 1) * HIDDEN + hh, mask=h_ok, other=0.0)
        b2 = tl.load(w_dw_ptr + (kb * 3 + 2) * HIDDEN + hh, mask=h_ok, other=0.0)
        row_t = (r0 * t0[None, :] + r1 * t1[None, :] + r2 * t2[None, :]).to(tl.float32)
        row_b = (r0 * b0[None, :] + r1 * b1[None, :] + r2 * b2[None, :]).to(tl.float32)
        top += tl.where(j < 3, row_t, 0.0)
        bot += tl.where(j >= STRIDE, row_b, 0.0)
    b = tl.load(b_dw_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)
    top = _relu6_bounded(top + b[None, :], 6.0)
    bot = _relu6_bounded(bot + b[None, :], 6.0)
    if HIDDEN % BLOCK_HID != 0:
        # Padding columns: an Inf input would make them NaN (Inf * 0 in the expand), and the
        # project would spread it to every output channel.
        top = tl.where(h_ok[None, :], top, 0.0)
        bot = tl.where(h_ok[None, :], bot, 0.0)
    return top, bot


@triton.jit
def _join_pairs(top, bot, P2: tl.constexpr, BLOCK_HID: tl.constexpr):
    """[2*P2, BLOCK_HID]: the pairs' top and bottom pixels interleaved (rows 2q and 2q + 1), so
    that one project product serves both: a product of fewer than 64 rows (a wgmma tile) pads
    to 64, and two of them pay the padding twice."""
    return tl.reshape(tl.permute(tl.join(top, bot), (0, 2, 1)), (2 * P2, BLOCK_HID))


@triton.jit
def _split_pairs(acc, P2: tl.constexpr, CO: tl.constexpr):
    """The inverse of `_join_pairs` for the accumulators: (top, bottom), [P2, CO] each."""
    return tl.split(tl.permute(tl.reshape(acc, (P2, 2, CO)), (0, 2, 1)))


@triton.jit
def _project_part(d, acc, w_proj_ptr, hh, h_ok, CO0: tl.constexpr, BCO: tl.constexpr, COUT: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """acc + d @ w_proj[chunk, CO0:CO0+BCO]: one power-of-two part of the project product."""
    co = CO0 + tl.arange(0, BCO)
    w = tl.load(w_proj_ptr + hh[:, None] * COUT + co[None, :], mask=h_ok[:, None] & (co < COUT)[None, :], other=0.0)
    return tl.dot(d, w, acc, input_precision=DOT_PRECISION)


@triton.jit
def _store_part(acc, x_img, y_img, b_proj_ptr, in_off, out_off, ok, CO0: tl.constexpr, BCO: tl.constexpr,
                COUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Project bias, residual, store: output channels CO0..CO0+BCO of one pixel set."""
    co = CO0 + tl.arange(0, BCO)
    ok = ok[:, None] & (co < COUT)[None, :]
    acc += tl.load(b_proj_ptr + co, mask=co < COUT, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:  # stride 1 and CIN == COUT: the input pixel is the output pixel
        acc += tl.load(x_img + in_off[:, None] + co[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(y_img + out_off[:, None] + co[None, :], acc.to(y_img.dtype.element_ty), mask=ok)


@triton.jit
def _inverted_residual_kernel(
    x_ptr,  # input, contiguous NHWC: element (n, h, w, c) at ((n*H + h)*W + w)*CIN + c
    w_exp_ptr,  # expand weight [CIN, HIDDEN], BN folded, x's dtype (unused without HAS_EXPAND)
    b_exp_ptr,  # expand bias [HIDDEN]
    w_dw_ptr,  # depthwise weight [9, HIDDEN], tap kh*3+kw major, x's dtype
    b_dw_ptr,  # depthwise bias [HIDDEN]
    w_proj_ptr,  # project weight [HIDDEN, COUT], x's dtype
    b_proj_ptr,  # project bias [COUT]
    y_ptr,  # output, contiguous NHWC [N, HO, WO, COUT]
    scratch_ptr,  # per program: two [P_IN, BLOCK_HID] buffers of one staged hidden chunk, x's dtype
    N, H, W, HO, WO,  # batch, input and output sizes
    CIN: tl.constexpr,  # input channels
    HIDDEN: tl.constexpr,  # expanded channels (= CIN without HAS_EXPAND)
    COUT: tl.constexpr,  # output channels
    STRIDE: tl.constexpr,  # depthwise stride, 1 or 2
    HAS_EXPAND: tl.constexpr,  # t > 1: an expand 1x1 conv precedes the depthwise
    HAS_RESIDUAL: tl.constexpr,  # add x to the output (stride 1, CIN == COUT)
    TILE_H: tl.constexpr,  # output tile: rows (even: the kernel works on vertical pairs) ...
    TILE_W: tl.constexpr,  # ... columns ...
    IMGS: tl.constexpr,  # ... and images
    REG_H: tl.constexpr,  # the tile's input region, halo included: (TILE_H-1)*STRIDE+3 rows ...
    REG_W: tl.constexpr,  # ... and (TILE_W-1)*STRIDE+3 columns
    P_IN: tl.constexpr,  # next_pow2(IMGS*REG_H*REG_W): staged rows per chunk
    P2: tl.constexpr,  # next_pow2(IMGS*TILE_H/2*TILE_W): vertical pixel pairs per tile
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
):
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    tiles_w = tl.cdiv(WO, TILE_W)
    tiles_hw = tl.cdiv(HO, TILE_H) * tiles_w
    n_tiles = tl.cdiv(N, IMGS) * tiles_hw
    # Tile-invariant index math, once per program: offsets relative to a tile's origin.
    if STAGE_IMAGE:
        r, r_img, r_y, r_x, r_in = _image_rows(REG_H, REG_W, TILE_H, TILE_W, IMGS, P_STAGE)
    else:
        r = tl.arange(0, P_IN)  # staged rows: region pixels, image-major
        r_img = r // (REG_H * REG_W)
        r_y = (r // REG_W) % REG_H
        r_x = r % REG_W
        r_in = r < IMGS * REG_H * REG_W
    r_rel = ((r_img * H + r_y) * W + r_x) * CIN
    q = tl.arange(0, P2)  # pixel pairs: rows q_y (top) and q_y + 1 (bottom) of column q_x
    q_img = q // (TILE_H // 2 * TILE_W)
    q_y = (q // TILE_W) % (TILE_H // 2) * 2
    q_x = q % TILE_W
    q_in = q < IMGS * (TILE_H // 2) * TILE_W
    q_x_rel = ((q_img * H + q_y) * W + q_x) * CIN
    q_y_rel = ((q_img * HO + q_y) * WO + q_x) * COUT
    hh0 = tl.arange(0, BLOCK_HID)
    scratch = scratch_ptr + pid.to(tl.int64) * (2 * P_IN * BLOCK_HID)
    stage_ptrs = scratch + r[:, None] * BLOCK_HID + hh0[None, :]
    # The top pixel's tap (0, 0) window; tap (kh, kw) is kh*REG_W + kw staged rows further.  The
    # padding pairs (q_in false) read pair 0's windows: theirs would lie past the staged region,
    # in another program's scratch or past its end.
    q_win = tl.where(q_in, q_img * (REG_H * REG_W) + q_y * (STRIDE * REG_W) + q_x * STRIDE, 0)
    pair_ptrs = scratch + q_win[:, None] * BLOCK_HID + hh0[None, :]
    if STAGE_IMAGE:
        _zero_scratch(scratch, P_IN, BLOCK_HID)

    step = 0  # chunks staged so far: the buffer parity, carried across tiles
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        t_h = (tile % tiles_hw) // tiles_w
        t_w = tile % tiles_w
        n0 = tile // tiles_hw * IMGS
        x_img = x_ptr + n0.to(tl.int64) * (H * W * CIN)  # 64-bit image base, 32-bit offsets within
        y_img = y_ptr + n0.to(tl.int64) * (HO * WO * COUT)
        ih0 = t_h * (TILE_H * STRIDE) - 1
        iw0 = t_w * (TILE_W * STRIDE) - 1
        rh = ih0 + r_y
        rw = iw0 + r_x
        r_ok = r_in & (n0 + r_img < N) & (rh >= 0) & (rh < H) & (rw >= 0) & (rw < W)
        r_off = r_rel + (ih0 * W + iw0) * CIN
        r_hi = tl.where(r_ok, 6.0, 0.0)
        if HAS_EXPAND and X_RESIDENT:
            x_a = _load_region(x_img, r_off, r_ok, 0, K_A, CIN)
            if K_B > 0:
                x_b = _load_region(x_img, r_off, r_ok, K_A, K_B, CIN)
        if JOIN_PAIRS:  # one product per part for both pixels of each pair: rows 2q (top), 2q + 1
            acc_a = tl.zeros([2 * P2, CO_A], dtype=tl.float32)
            if CO_B > 0:
                acc_b = tl.zeros([2 * P2, CO_B], dtype=tl.float32)
        else:
            acc_ta = tl.zeros([P2, CO_A], dtype=tl.float32)  # top pixels, first output part
            acc_ba = tl.zeros([P2, CO_A], dtype=tl.float32)  # bottom pixels
            if CO_B > 0:
                acc_tb = tl.zeros([P2, CO_B], dtype=tl.float32)
                acc_bb = tl.zeros([P2, CO_B], dtype=tl.float32)
        for h0 in range(0, HIDDEN, BLOCK_HID):
            hh = h0 + hh0
            h_ok = hh < HIDDEN
            # 1. Stage this chunk of the depthwise input over the region.
            if HAS_EXPAND:
                if not X_RESIDENT:
                    x_a = _load_region(x_img, r_off, r_ok, 0, K_A, CIN)
                    if K_B > 0:
                        x_b = _load_region(x_img, r_off, r_ok, K_A, K_B, CIN)
                e = _expand_part(x_a, tl.zeros([P_STAGE, BLOCK_HID], dtype=tl.float32), w_exp_ptr, hh, h_ok, 0, K_A,
                                 CIN, HIDDEN, DOT_PRECISION)
                if K_B > 0:
                    e = _expand_part(x_b, e, w_exp_ptr, hh, h_ok, K_A, K_B, CIN, HIDDEN, DOT_PRECISION)
                b = tl.load(b_exp_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)
                e = _relu6_bounded(e + b[None, :], r_hi[:, None])
            else:
                e = tl.load(x_img + r_off[:, None] + hh[None, :], mask=r_ok[:, None] & h_ok[None, :], other=0.0)
            # Double buffer: a warp overwrites a buffer only after the next chunk's barrier,
            # which every warp reaches after reading it, so one barrier per chunk suffices.
            buf = (step % 2) * (P_IN * BLOCK_HID)
            step += 1
            if STAGE_IMAGE:  # the padding rows of the pixel enumeration are stored nowhere
                tl.store(stage_ptrs + buf, e.to(dtype), mask=r_in[:, None])
            else:
                tl.store(stage_ptrs + buf, e.to(dtype))
            tl.debug_barrier()
            # 2. Depthwise for the tile's pixel pairs.
            d_top, d_bot = _depthwise_pairs(pair_ptrs + buf, w_dw_ptr, b_dw_ptr, hh, h_ok, HIDDEN, REG_W, STRIDE,
                                            BLOCK_HID, P2)
            d_top = d_top.to(dtype)
            d_bot = d_bot.to(dtype)
            # 3. Project into the accumulators.
            if JOIN_PAIRS:
                d = _join_pairs(d_top, d_bot, P2, BLOCK_HID)
                acc_a = _project_part(d, acc_a, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
                if CO_B > 0:
                    acc_b = _project_part(d, acc_b, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
            else:
                acc_ta = _project_part(d_top, acc_ta, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
                acc_ba = _project_part(d_bot, acc_ba, w_proj_ptr, hh, h_ok, 0, CO_A, COUT, DOT_PRECISION)
                if CO_B > 0:
                    acc_tb = _project_part(d_top, acc_tb, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
                    acc_bb = _project_part(d_bot, acc_bb, w_proj_ptr, hh, h_ok, CO_A, CO_B, COUT, DOT_PRECISION)
        if JOIN_PAIRS:
            acc_ta, acc_ba = _split_pairs(acc_a, P2, CO_A)
            if CO_B > 0:
                acc_tb, acc_bb = _split_pairs(acc_b, P2, CO_B)
        oh = t_h * TILE_H + q_y
        ow = t_w * TILE_W + q_x
        ok_top = q_in & (n0 + q_img < N) & (oh < HO) & (ow < WO)
        ok_bot = ok_top & (oh + 1 < HO)
        in_top = q_x_rel + (t_h * TILE_H * W + t_w * TILE_W) * CIN
        out_top = q_y_rel + (t_h * TILE_H * WO + t_w * TILE_W) * COUT
        _store_part(acc_ta, x_img, y_img, b_proj_ptr, in_top, out_top, ok_top, 0, CO_A, COUT, HAS_RESIDUAL)
        _store_part(acc_ba, x_img, y_img, b_proj_ptr, in_top + W * CIN, out_top + WO * COUT, ok_bot, 0, CO_A, COUT,
                    HAS_RESIDUAL)
        if CO_B > 0:
            _store_part(acc_tb, x_img, y_img, b_proj_ptr, in_top, out_top, ok_top, CO_A, CO_B, COUT, HAS_RESIDUAL)
            _store_part(acc_bb, x_img, y_img, b_proj_ptr, in_top + W * CIN, out_top + WO * COUT, ok_bot, CO_A, CO_B,
                        COUT, HAS_RESIDUAL)


@functools.lru_cache(maxsize=1024)
def kernel_args(shape: BlockShape, cfg: BlockConfig, dtype: torch.dtype, allow_tf32: bool) -> dict:
    """The constexpr arguments and launch options of one launch: what selects a compiled
    variant (cached: this runs on every call, and at batch 1 host time is what the network
    waits for)."""
    reg_h, reg_w = shape.region(cfg.tile_h, cfg.tile_w)
    k_a, k_b = split_pow2(shape.cin)
    co_a, co_b = split_pow2(shape.cout)
    return launch_args(
        cfg, dtype, allow_tf32,
        CIN=shape.cin,
        HIDDEN=shape.hidden,
        COUT=shape.cout,
        STRIDE=shape.stride,
        HAS_EXPAND=shape.has_expand,
        HAS_RESIDUAL=shape.residual,
        REG_H=reg_h,
        REG_W=reg_w,
        # tl.dot needs at least 16 rows; extra rows are masked.
        P_IN=max(16, next_pow2(cfg.imgs * reg_h * reg_w)),
        P_STAGE=max(16, next_pow2(cfg.imgs * (cfg.tile_h * cfg.tile_w if cfg.stage_image else reg_h * reg_w))),
        P2=max(16, next_pow2(cfg.imgs * cfg.tile_h // 2 * cfg.tile_w)),
        K_A=k_a,
        K_B=k_b,
        CO_A=co_a,
        CO_B=co_b,
    )


def scratch_elements(shape: BlockShape, cfg: BlockConfig, programs: int) -> int:
    """Scratch of one launch: per program, two staged chunks of [P_IN, BLOCK_HID]."""
    reg_h, reg_w = shape.region(cfg.tile_h, cfg.tile_w)
    return programs * 2 * max(16, next_pow2(cfg.imgs * reg_h * reg_w)) * cfg.block_hid


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
    w_dw:    [9, HIDDEN] (x's dtype), depthwise taps kh*3+kw;  b_dw [HIDDEN].
    w_proj:  [HIDDEN, COUT] (x's dtype);  b_proj [COUT].
    stride:  1 or 2.  residual: add x (needs stride 1 and CIN == COUT).
    config:  launch configuration; default: the tuned table for this GPU, else a heuristic.
    allow_tf32: fp32 products on TF32 tensor cores; default follows
             torch.backends.cudnn.allow_tf32, like the convolutions this replaces.
    out:     optional preallocated [N, COUT, HO, WO] channels_last output.

    Returns [N, COUT, HO, WO] in channels_last memory, HO = (H - 1) // stride + 1.
    The same computation in PyTorch ops: `reference.inverted_residual`, same arguments.

    Memory: nothing of size N*H*W*HIDDEN is ever allocated or written.  The scratch is two
    staged chunks per program of the persistent grid (`scratch_elements`: at most a few MiB
    on an H100/H200 whatever the batch), rewritten for every chunk, so it stays in L1/L2.
    Offsets are 64-bit per image and 32-bit within one, so batches beyond 2^31 elements are
    safe; a tile's images (config.imgs) must stay below 2^31 elements, or this raises.
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
    span = cfg.imgs * max(h * w * cin, shape.ho * shape.wo * cout)
    if span > INT32_MAX:
        raise ValueError(f"{cfg.imgs} image(s) of x {tuple(x.shape)}, or of the output, span {span} elements, more "
                         "than 2^31: the block kernel indexes within a tile's images in 32 bits (take imgs=1, or "
                         "smaller images)")
    out = output(out, (n, cout, shape.ho, shape.wo), x, reads=(w_exp, b_exp, w_dw, b_dw, w_proj, b_proj))
    programs = programs_for(shape, cfg, n, x.device)
    scratch = torch.empty(scratch_elements(shape, cfg, programs), dtype=x.dtype, device=x.device)
    dummy = w_dw  # never read when HAS_EXPAND is off
    launch(
        _inverted_residual_kernel, (programs,), x,
        w_exp if has_expand else dummy,
        b_exp if has_expand else dummy,
        w_dw,
        b_dw,
        w_proj,
        b_proj,
        out,
        scratch,
        n, h, w, shape.ho, shape.wo,
        **kernel_args(shape, cfg, x.dtype, tf32(allow_tf32)),
    )
    return out
