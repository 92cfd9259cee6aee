"""Which launch configuration a kernel gets when the caller names none.

For a block: the tuned table for this GPU (see `tuned.py`), else a heuristic (the shipped
tables hold the performance model's choices for MobileNetV2).  Under Triton's interpreter (CPU tensors,
TRITON_INTERPRET=1) every kernel gets large tiles instead: the interpreter runs programs one
after another, so fewer, bigger programs keep the test suite fast.  Nothing here autotunes
or touches the GPU.
"""

from __future__ import annotations

import functools

import torch

from ._common import interpreting, next_pow2, split_pow2
from .records import BlockConfig, BlockShape, HeadConfig, LinearConfig, StemConfig
from .tuned import device_slug, lookup_tuned



# The table a GPU without its own falls back to: every config in it compiles for sm_90
# without spilling (static check), which the heuristic cannot promise for every shape.
REFERENCE_TABLE = "h200"


def choose_block_config(shape: BlockShape, dtype: torch.dtype, batch: int, device: torch.device) -> BlockConfig:
    """The launch config of a block: this GPU's tuned table (the user's, then the shipped
    one), else the reference table, else the heuristic."""
    if interpreting(device):
        return interpreter_config(shape, batch)
    return tabled_block_config(shape, dtype, batch, device_slug(device))


def tabled_block_config(shape: BlockShape, dtype: torch.dtype, batch: int, slug: str) -> BlockConfig:
    """What a GPU of kind `slug` (h100, h200, ...) launches: its tuned table (the user's, then the
    shipped one), else the reference table, else the heuristic."""
    return (lookup_tuned(shape, dtype, batch, slug) or lookup_tuned(shape, dtype, batch, REFERENCE_TABLE)
            or default_config(shape, dtype.itemsize, batch_class(batch)))


# Programs resident at once on an H100/H200 (132 SMs, two programs of the stem/head/classifier
# kind per SM): one wave.
WAVE = 132 * 2


def _block_k(cin: int) -> int:
    """Largest power of two <= 64 that divides cin (no padded K work); small cin pads to 16."""
    for k in (64, 32, 16):
        if cin % k == 0:
            return k
    return max(16, min(64, next_pow2(cin)))


def _even(n: int) -> int:
    return n + n % 2


def interpreter_config(shape: BlockShape, batch: int) -> BlockConfig:
    """Whole images and wide hidden chunks: the interpreter's cost is per program and per
    operation, not per element."""
    return BlockConfig(tile_h=_even(shape.ho), tile_w=shape.wo, imgs=1, block_hid=min(next_pow2(shape.hidden), 128))


def batch_class(batch: int) -> int:
    """The heuristic distinguishes batches that fill the GPU with tiles from those that do not."""
    return 1 if batch <= 8 else 256


# Tiles the heuristic considers, largest first: whole rows of small maps, several small
# images at once, 2D tiles of wide maps (tile_h even: the kernel works on pixel pairs).
_TILES = ((2, 8, 7), (1, 14, 14), (1, 16, 16), (1, 8, 16), (1, 4, 28), (1, 8, 14), (1, 8, 8), (1, 8, 7), (1, 4, 14),
          (1, 6, 8), (1, 4, 8), (1, 4, 7), (1, 2, 16), (1, 2, 8), (1, 2, 4), (1, 2, 2), (1, 2, 1))


def _fits(shape: BlockShape, imgs: int, tile_h: int, tile_w: int, block_hid: int, warps: int, itemsize: int) -> bool:
    """Whether a tile stays within the register budget the compiled variants showed no spills
    under (fp32 words per thread): the staged chunk's fp32 accumulator, the depthwise sums of
    the pixel pairs and the project accumulators.  fp32 activations take twice the room.  For
    the family's wider stencils and stages (5x5, a start depthwise, no middle depthwise) the
    live tiles together must also stay within a per-warp-count budget (`_live_words`)."""
    threads = 32 * warps
    reg_h, reg_w = shape.region(tile_h, tile_w)
    p_in = max(16, next_pow2(imgs * reg_h * reg_w))
    pairs = max(16, next_pow2(imgs * tile_h // 2 * tile_w))
    cout = sum(split_pow2(shape.cout))
    scale = 2 if itemsize > 2 else 1
    if not (p_in * block_hid * scale <= 32 * threads and 2 * pairs * block_hid * scale <= 16 * threads
            and 2 * pairs * cout <= 64 * threads):
        return False
    mobilenet_v2_like = shape.ksize == 3 and not shape.start_k  # its rules as they were, for every 3x3 block
    return mobilenet_v2_like or _live_words(shape, p_in, pairs, block_hid, itemsize) <= _LIVE_BUDGET[warps] * threads


# fp32 words per thread the live tiles may take: 16 warps run under a 128-register cap; fewer warps
# have up to 255 registers (measured on the compiled sm_90 variants of the family's blocks).
_LIVE_BUDGET = {1: 150, 2: 150, 4: 150, 8: 150, 16: 84}


def _live_words(shape: BlockShape, p_in: int, pairs: int, block_hid: int, itemsize: int) -> float:
    """fp32 words the tiles live in the chunk loop take, summed over the program: the resident
    input region, the expand's accumulator, the depthwise sums and a row of KSIZE windows, the
    project accumulators (without a middle depthwise: the pixels' inputs and expands, top and
    bottom); during a start depthwise, its fp32 accumulator of one channel part."""
    half = itemsize / 4
    k = sum(split_pow2(shape.cin))
    proj = 2 * pairs * sum(split_pow2(shape.cout))
    if not shape.staged:
        return 2 * pairs * k * half + 2 * pairs * block_hid * 2 + proj
    x = p_in * k * half if shape.has_expand else 0
    row = shape.ksize * pairs * block_hid * half
    start = p_in * max(split_pow2(shape.cin)) if shape.start_k else 0
    return max(x + p_in * block_hid + 2 * pairs * block_hid + row + proj, x + start)


@functools.lru_cache(maxsize=None)
def default_config(shape: BlockShape, itemsize: int = 2, batch: int = 256) -> BlockConfig:
    """A config for a shape without a tuned entry (the shipped tables cover MobileNetV2's
    blocks, chosen by the calibrated performance model, `mnv2-fast tune --model`).

    The largest tile (most useful pixels per program, fewest warps) within the register
    budget of `_fits`, 32 hidden channels per chunk, else 16; small batches, which do not
    fill the GPU with tiles, take tiles of at most a quarter of an image.  16 warps run one
    program per multiprocessor at 128 registers per thread."""
    useful = lambda t: t[0] * min(t[1], shape.ho) * min(t[2], shape.wo)  # noqa: E731
    tiles = [t for t in _TILES if t[1] <= _even(shape.ho) and t[2] <= shape.wo and t[0] <= max(1, batch)]
    tiles = tiles or [(1, 2, 1)]
    if batch_class(batch) == 1:
        small = [t for t in tiles if useful(t) * 4 <= shape.ho * shape.wo]
        tiles = small or tiles[-1:]
    for tile in sorted(tiles, key=lambda t: -useful(t)):
        for block_hid in (32, 16):
            for warps in (4, 8, 16):
                if _fits(shape, *tile, block_hid, warps, itemsize):
                    imgs, tile_h, tile_w = tile
                    # A start depthwise is computed once per tile: its input stays resident.
                    return BlockConfig(tile_h=tile_h, tile_w=tile_w, imgs=imgs, block_hid=block_hid,
                                       x_resident=shape.cin <= 96 or shape.start_k > 0, num_warps=warps,
                                       maxnreg=128 if warps == 16 else None, programs_per_sm=max(1, 8 // warps))
    return BlockConfig(tile_h=2, tile_w=1, block_hid=16, x_resident=False, num_warps=4, programs_per_sm=2)


def choose_stem_config(cout: int, device: torch.device) -> StemConfig:
    """8 x 16 output pixels and all output channels (up to 64) per program, one warpgroup.

    By the performance model (224 px): 16 x 16 tiles are 2% faster at batch >= 64 in fp16 but
    up to 60% slower at batch <= 32 (fewer, longer programs: wave tails) and 1% slower in fp32;
    8 x 16 is within 3% of the best tile tried at every batch and dtype, so it is the only one."""
    if interpreting(device):
        return StemConfig(tile_h=16, tile_w=32, block_co=max(16, next_pow2(cout)))
    return StemConfig(tile_h=8, tile_w=16, block_co=max(16, min(next_pow2(cout), 64)), num_warps=4)


def choose_head_config(cin: int, cout: int, hw: int, batch: int, device: torch.device,
                       itemsize: int = 2) -> HeadConfig:
    """Large batches: 128 channels x up to 16 images per program (8 warps, two programs per
    SM), the images per program balancing the waves against the pixel chunks each program
    walks.  Small batches (fewer than two waves of one-image programs): one image and 64
    channels per program, 32 when even that leaves SMs idle.  Checked against the
    performance model at 224 px from batch 1 to 512 (bench/NOTES.md)."""
    if interpreting(device):
        imgs = max(1, min(batch, 16))
        return HeadConfig(imgs=imgs, block_p=max(16, min(next_pow2(imgs * hw), 512)),
                          block_k=max(16, min(next_pow2(cin), 512)), block_n=max(16, min(next_pow2(cout), 2048)))
    block_k = min(_block_k(cin), 32 if itemsize > 2 else 64)
    if batch * -(-cout // 128) < 2 * WAVE:
        block_n = 32 if batch * -(-cout // 32) <= WAVE // 2 else 64
        return HeadConfig(imgs=1, block_p=max(16, min(next_pow2(hw), 128)), block_k=block_k, block_n=block_n,
                          num_warps=4, num_stages=2)

    block_p = 64 if itemsize > 2 else 128  # fp32's IEEE (FMA) products of 128-pixel chunks spill

    def cost(imgs: int) -> tuple[int, int]:
        # (waves x pixel chunks per program, programs): fewer programs re-read the weight less.
        programs = -(-batch // imgs) * -(-cout // 128)
        return -(-programs // WAVE) * -(-(imgs * hw) // block_p), programs

    return HeadConfig(imgs=min(range(1, 17), key=cost), block_p=block_p, block_k=block_k, block_n=128, num_warps=8,
                      num_stages=2)


def choose_project_config(m: int, k: int, nout: int, device: torch.device, itemsize: int = 2) -> LinearConfig:
    """A block's project where it runs apart (`BlockConfig.project_apart`), a GEMM of all the
    batch's pixels, in K steps of 64, 2 stages.  The widest tile whose count comes to 3/8 of
    a wave: 128 x 64 (where 64 divides N), 128 x 32 (N = 160: five tiles, not three with
    half the last one empty), 64 x 32 at 4 warps; below that (small batches) 64 x 16, so that
    more SMs work.  The performance model's picks over M = 49-12544, K = 384-960, N = 64-320
    on H200 and H100 (bench/NOTES.md, attempt 10)."""
    if interpreting(device):
        return choose_linear_config(m, k, nout, device, itemsize)
    fill = WAVE * 3 // 8
    for block_m, block_n, num_warps in ((128, 64, 8), (128, 32, 8), (64, 32, 4)):
        if (block_n < 64 or nout % 64 == 0) and -(-m // block_m) * -(-nout // block_n) >= fill:
            return LinearConfig(block_m=block_m, block_n=block_n, block_k=64, num_warps=num_warps, num_stages=2)
    return LinearConfig(block_m=64, block_n=16, block_k=64, num_warps=4, num_stages=2)


def choose_linear_config(m: int, k: int, nout: int, device: torch.device, itemsize: int = 2) -> LinearConfig:
    """K in steps of 256 (128 for fp32: three stages fit shared memory), 8 warps on 64 rows.
    Batch <= 16: 16 x 16 tiles, so the weight is streamed by 63 programs at once (1000
    classes).  Otherwise 64 x 32 tiles, or 64 x 16 while 64 x 32 would leave a quarter of
    the SMs idle.  Picked with the performance model at batch 1, 16, 64 and 256 (bench/NOTES.md)."""
    if interpreting(device):
        return LinearConfig(block_m=max(16, min(next_pow2(m), 256)), block_n=max(16, min(next_pow2(nout), 1024)),
                            block_k=max(16, min(next_pow2(k), 512)))
    block_k = max(16, min(next_pow2(k), 128 if itemsize > 2 else 256))
    if m <= 16:
        return LinearConfig(block_m=16, block_n=16, block_k=block_k, num_warps=2, num_stages=4)
    block_n = 32 if -(-m // 64) * -(-nout // 32) >= WAVE * 3 // 8 else 16
    return LinearConfig(block_m=64, block_n=block_n, block_k=block_k, num_warps=8, num_stages=3)
