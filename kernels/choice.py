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

from ._common import interpreting, next_pow2
from .records import BlockConfig, BlockShape, HeadConfig, LinearConfig, StemConfig
from .tuned import device_slug, lookup_tuned



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


def _even(n: int) -> int:
    return n + n % 2


def interpreter_config(shape: BlockShape, batch: int) -> BlockConfig:
    """Whole images and wide hidden chunks: the interpreter's cost is per program and per
    operation, not per element."""
    return BlockConfig(tile_h=_even(shape.ho), tile_w=shape.wo, imgs=1, block_hid=min(next_pow2(shape.hidden), 128))


def batch_class(batch: int) -> int:
    """The heuristic distinguishes batches that fill the GPU with tiles from those that do not."""
    return 1 if batch <= 8 else 256


@functools.lru_cache(maxsize=None)
def default_config(shape: BlockShape, itemsize: int = 2, batch: int = 256) -> BlockConfig:
    """A config for a shape without a tuned entry (the shipped tables cover MobileNetV2's
    blocks, chosen by the calibrated performance model, `mnv2-fast tune --model`).

    Rules read off the model's choices for those blocks: 2D tiles of about 100-200 output
    pixels (whole rows of small maps, several small images at once), 32 hidden channels per
    chunk (16 for wide blocks or fp32, whose tiles take twice the registers), the input
    region kept on chip for narrow inputs, 8 warps for the larger tiles; small batches get
    half the tile, so that more programs share the work."""
    wide = itemsize > 2
    if shape.wo <= 8:
        tile_h, tile_w, imgs = _even(shape.ho), shape.wo, 2
    elif shape.wo <= 16:
        tile_h, tile_w, imgs = min(_even(shape.ho), 8 if wide else 14), shape.wo, 1
    else:
        tile_h, tile_w, imgs = 8, 8 if wide else 16, 1
    if batch_class(batch) == 1:
        imgs = 1
        tile_h = max(2, _even(tile_h // 2))
    block_hid = 16 if wide or shape.cin >= 128 else 32
    pairs = imgs * tile_h // 2 * tile_w
    warps = 8 if pairs >= 64 else 4
    # More programs than fit is harmless (they wait their turn); fewer would leave SMs idle.
    return BlockConfig(tile_h=tile_h, tile_w=tile_w, imgs=imgs, block_hid=block_hid, x_resident=shape.cin <= 96,
                       num_warps=warps, programs_per_sm=16 // warps)


def choose_stem_config(cout: int, device: torch.device) -> StemConfig:
    if interpreting(device):
        return StemConfig(block_p=512, block_co=max(16, next_pow2(cout)))
    return StemConfig(block_p=64, block_co=max(16, min(next_pow2(cout), 64)), num_warps=4)


def choose_head_config(cin: int, cout: int, hw: int, device: torch.device, itemsize: int = 2) -> HeadConfig:
    if interpreting(device):
        return HeadConfig(block_p=max(16, min(next_pow2(hw), 256)), block_k=max(16, min(next_pow2(cin), 512)),
                          block_n=max(16, min(next_pow2(cout), 2048)))
    return HeadConfig(block_p=64 if hw > 32 else 32, block_k=min(_block_k(cin), 32 if itemsize > 2 else 64),
                      block_n=64 if itemsize > 2 else 128, num_warps=8)


def choose_linear_config(m: int, k: int, nout: int, device: torch.device) -> LinearConfig:
    if interpreting(device):
        return LinearConfig(block_m=max(16, min(next_pow2(m), 256)), block_n=max(16, min(next_pow2(nout), 1024)),
                            block_k=max(16, min(next_pow2(k), 512)))
    if m <= 16:
        # Batch-1 latency: many narrow programs so the weight is read by many SMs at once.
        return LinearConfig(block_m=16, block_n=32, block_k=128, num_warps=4, num_stages=3)
    return LinearConfig(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3)
