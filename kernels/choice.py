"""Which launch configuration a kernel gets when the caller names none.

For a block: the tuned table for this GPU (see `tuned.py`), else a heuristic that picks the
stencil staging and tile from a simple time model.  Under Triton's interpreter (CPU tensors,
TRITON_INTERPRET=1) every kernel gets large tiles instead: the interpreter runs programs one
after another, so fewer, bigger programs keep the test suite fast.  Nothing here autotunes
or touches the GPU.
"""

from __future__ import annotations

import functools
import math

import torch

from ._common import interpreting, next_pow2
from .records import BlockConfig, BlockShape, HeadConfig, LinearConfig, StemConfig
from .tuned import device_slug, lookup_tuned

# Per-program limits the default configs stay inside (checked by the static resource test).
MAX_P_OUT = 128
MAX_P_IN = 256
MAX_ACC = 128 * 128  # fp32 accumulator elements per program
# Programs resident at once on an H100/H200 (132 SMs, two of these programs per SM): one wave.
WAVE = 132 * 2


def choose_block_config(shape: BlockShape, dtype: torch.dtype, batch: int, device: torch.device) -> BlockConfig:
    if interpreting(device):
        return interpreter_config(shape, batch)
    tuned = lookup_tuned(shape, dtype, batch, device_slug(device))
    return tuned or default_config(shape, dtype.itemsize, batch_class(batch))


def _block_k(cin: int) -> int:
    """Largest power of two <= 64 that divides cin (no padded K work); small cin pads to 16."""
    for k in (64, 32, 16):
        if cin % k == 0:
            return k
    return max(16, min(64, next_pow2(cin)))


def interpreter_config(shape: BlockShape, batch: int) -> BlockConfig:
    """Few, large programs: the interpreter's cost is per program and per operation."""
    block_h = min(next_pow2(shape.hidden), 256)
    block_co = max(16, next_pow2(shape.cout))
    block_k = max(16, min(next_pow2(shape.cin), 256))
    if shape.has_expand and shape.cin >= 64:
        # Same staging as on the GPU, whole images per program.
        return BlockConfig(gather=True, tile_h=shape.ho, tile_w=shape.wo, imgs=max(1, min(batch, 4)),
                           block_h=block_h, block_k=block_k, block_co=block_co)
    block_p = max(16, min(next_pow2(batch * shape.ho * shape.wo), 512))
    return BlockConfig(gather=False, block_p=block_p, block_h=block_h, block_k=block_k, block_co=block_co)


def _gather_time(shape: BlockShape, cfg: BlockConfig, p_out: int, p_in: int, batch: int) -> float:
    """Modelled time of one gather config, in multiply-add units: waves of programs times the
    work of one (expand over the input region, 9 gathers, project).  At large batch this
    ranks by total work; at small batch, where one wave holds every program, by the work of
    one program, so it prefers more, smaller programs.  A model, to be checked by timing."""
    per_program = ((p_in * shape.cin + 9 * p_out * 4) + p_out * cfg.block_co) * shape.hidden
    return -(-math.prod(shape.grid(cfg, batch)) // WAVE) * per_program


def gather_candidates(shape: BlockShape, itemsize: int = 2, batch: int = 256) -> list[BlockConfig]:
    """Gather-staging configs within the register limits, fastest first by the time model.

    fp32 (itemsize 4) operands take twice the registers and shared memory of fp16, so
    their tiles are smaller."""
    wide = itemsize > 2
    max_acc = MAX_ACC // 4 if wide else MAX_ACC
    max_p_in = MAX_P_IN // 2 if wide else MAX_P_IN
    block_k = min(_block_k(shape.cin), 32) if wide else _block_k(shape.cin)
    co_options = sorted({max(16, min(next_pow2(shape.cout), c)) for c in (32, 64, 128)})
    ranked = []
    for tile_w in range(1, shape.wo + 1):
        for tile_h in range(1, shape.ho + 1):
            whole = tile_h == shape.ho and tile_w == shape.wo
            for imgs in (1, 2, 4, 8) if whole else (1,):
                if imgs > 1 and imgs > batch:
                    continue  # a tile of more images than the batch has is idle lanes
                in_h, in_w = shape.region(tile_h, tile_w)
                p_out = next_pow2(imgs * tile_h * tile_w)
                p_in = next_pow2(imgs * in_h * in_w)
                if p_out < 32 or p_out > MAX_P_OUT or p_in > max_p_in:
                    continue
                for block_co in co_options:
                    if p_out * block_co > max_acc:
                        continue
                    cfg = BlockConfig(gather=True, tile_h=tile_h, tile_w=tile_w, imgs=imgs,
                                      block_h=32 if p_in > 128 or wide else 64, block_k=block_k,
                                      block_co=block_co, num_warps=8, num_stages=1)
                    ranked.append(((_gather_time(shape, cfg, p_out, p_in, batch), -p_out, block_co), cfg))
    ranked.sort(key=lambda kc: kc[0])
    return [cfg for _, cfg in ranked]


def tap_config(shape: BlockShape, itemsize: int = 2) -> BlockConfig:
    """Tap staging: 64 output pixels per program, all output channels up to 64 when Cin is wide."""
    return BlockConfig(gather=False, block_p=64, block_h=32, block_k=_block_k(shape.cin),
                       block_co=max(16, min(next_pow2(shape.cout), 64 if shape.cin > 32 else 512)),
                       num_warps=8 if itemsize > 2 else 4, num_stages=1)


def batch_class(batch: int) -> int:
    """The heuristic distinguishes batches that fill a wave of programs from those that do not."""
    return 1 if batch <= 8 else 256


@functools.lru_cache(maxsize=None)
def default_config(shape: BlockShape, itemsize: int = 2, batch: int = 256) -> BlockConfig:
    """Heuristic config for a GPU without a tuned entry.

    Tap staging while the nine expand recomputations are cheap (no expand, or Cin <= 32);
    otherwise the fastest gather config by the time model, for small (<= 8) or large batch.
    """
    tap = tap_config(shape, itemsize)
    if not shape.has_expand or shape.cin <= 32:
        return tap
    candidates = gather_candidates(shape, itemsize, batch_class(batch))
    return candidates[0] if candidates else tap  # tiny images: no gather tile fits the limits


def staging_configs(shape: BlockShape, itemsize: int) -> tuple[BlockConfig, BlockConfig | None]:
    """(the default config, the best config of the other staging, or None without an expand
    stage): the pair the staging experiment times against each other."""
    default = default_config(shape, itemsize)
    if default.gather:
        return default, tap_config(shape, itemsize)
    other = gather_candidates(shape, itemsize) if shape.has_expand else []
    return default, (other[0] if other else None)


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
