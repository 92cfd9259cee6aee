"""Launch configurations: tuned tables per GPU (data), a cost-model default, interpreter tiles.

Nothing here autotunes or touches the GPU at import.  `choose_block_config` looks, in order,
at the tuned table for this GPU (kernels/tuned/<gpu>.json, written by `mnv2-fast tune`),
then at a heuristic that picks the stencil staging and tile from a simple cost model.
Under TRITON_INTERPRET=1 it returns large tiles instead: the interpreter runs programs one
after another, so fewer, bigger programs keep the test suite fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import triton

from ._common import interpreting, next_pow2

TUNED_DIR = Path(__file__).with_name("tuned")
# Per-program limits the default configs stay inside (checked by the static resource test).
MAX_P_OUT = 128
MAX_P_IN = 256
MAX_ACC = 128 * 128  # fp32 accumulator elements per program


@dataclass(frozen=True)
class BlockShape:
    """What a block kernel is specialised on, besides dtype: channels, stride, input size."""

    cin: int
    hidden: int
    cout: int
    stride: int
    h: int
    w: int
    has_expand: bool
    residual: bool

    @property
    def ho(self) -> int:
        return (self.h - 1) // self.stride + 1

    @property
    def wo(self) -> int:
        return (self.w - 1) // self.stride + 1


@dataclass(frozen=True)
class BlockConfig:
    """How one block is launched.  gather=False: flat tiles of block_p output pixels, the expand
    recomputed per tap.  gather=True: tile_h x tile_w output pixels of imgs images, the expand
    computed once over the tile's input region and the taps gathered from it."""

    gather: bool = False
    block_p: int = 64
    tile_h: int = 1
    tile_w: int = 1
    imgs: int = 1
    block_h: int = 32
    block_k: int = 32
    block_co: int = 32
    num_warps: int = 4
    num_stages: int = 1

    def validate(self, shape: BlockShape) -> None:
        def pow2(name: str, v: int, lo: int = 16) -> None:
            if v < lo or v & (v - 1):
                raise ValueError(f"config {name}={v} must be a power of two >= {lo}")

        pow2("block_h", self.block_h)
        pow2("block_k", self.block_k)
        pow2("block_co", self.block_co)
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"config num_warps={self.num_warps}, num_stages={self.num_stages} is invalid")
        if self.gather:
            if not shape.has_expand:
                raise ValueError("gather staging needs an expand stage; use gather=False for t = 1 blocks")
            if min(self.tile_h, self.tile_w, self.imgs) < 1:
                raise ValueError("config tile_h, tile_w and imgs must be >= 1")
        else:
            pow2("block_p", self.block_p)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BlockConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H200' -> 'h200'; others: a filename-safe name."""
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name.upper())
    if m:
        return m.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "default"


def device_slug(device: torch.device) -> str:
    """Which tuned table applies: MNV2_FAST_TUNED=<slug> overrides (for experiments)."""
    override = os.environ.get("MNV2_FAST_TUNED")
    if override:
        return override
    if device.type != "cuda":
        return "default"
    return _cuda_slug(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_slug(index: int) -> str:
    return gpu_slug(torch.cuda.get_device_name(index))  # a driver query: once per device


@functools.lru_cache(maxsize=None)
def load_tuned(slug: str) -> dict:
    """kernels/tuned/<slug>.json as {(BlockShape, dtype name): [(batch lo, batch hi, BlockConfig)]}
    (empty when there is no table for this GPU)."""
    path = tuned_table_path(slug)
    if not path.is_file():
        return {}
    index: dict = {}
    for entry in json.loads(path.read_text()).get("blocks", ()):
        key = (BlockShape(**entry["shape"]), entry["dtype"])
        lo, hi = entry["batch"]
        index.setdefault(key, []).append((lo, hi, BlockConfig.from_dict(entry["config"])))
    return index


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def lookup_tuned(shape: BlockShape, dtype: torch.dtype, batch: int, slug: str) -> BlockConfig | None:
    for lo, hi, cfg in load_tuned(slug).get((shape, _dtype_name(dtype)), ()):
        if lo <= batch <= hi:
            return cfg
    return None


def choose_block_config(shape: BlockShape, dtype: torch.dtype, batch: int, device: torch.device) -> BlockConfig:
    if interpreting() and device.type == "cpu":
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


# Programs resident at once on an H100/H200 (132 SMs, two of these programs per SM): one wave.
WAVE = 132 * 2


def _gather_time(shape: BlockShape, tile_h: int, tile_w: int, imgs: int, block_co: int, batch: int) -> float:
    """Modelled time of one gather config, in multiply-add units: waves of programs times the
    work of one (expand over the input region, 9 gathers, project).  At large batch this
    ranks by total work; at small batch, where one wave holds every program, by the work of
    one program, so it prefers more, smaller programs.  A model, to be checked by timing."""
    in_h = min((tile_h - 1) * shape.stride + 3, shape.h)
    in_w = min((tile_w - 1) * shape.stride + 3, shape.w)
    p_out = next_pow2(imgs * tile_h * tile_w)
    p_in = next_pow2(imgs * in_h * in_w)
    per_program = ((p_in * shape.cin + 9 * p_out * 4) + p_out * block_co) * shape.hidden
    programs = (triton.cdiv(batch, imgs) * triton.cdiv(shape.ho, tile_h) * triton.cdiv(shape.wo, tile_w)
                * triton.cdiv(shape.cout, block_co))
    return triton.cdiv(programs, WAVE) * per_program


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
                p_out = next_pow2(imgs * tile_h * tile_w)
                in_h = min((tile_h - 1) * shape.stride + 3, shape.h)
                in_w = min((tile_w - 1) * shape.stride + 3, shape.w)
                p_in = next_pow2(imgs * in_h * in_w)
                if p_out < 32 or p_out > MAX_P_OUT or p_in > max_p_in:
                    continue
                for block_co in co_options:
                    if p_out * block_co > max_acc:
                        continue
                    cost = _gather_time(shape, tile_h, tile_w, imgs, block_co, batch)
                    block_h = 32 if p_in > 128 or wide else 64
                    cfg = BlockConfig(gather=True, tile_h=tile_h, tile_w=tile_w, imgs=imgs, block_h=block_h,
                                      block_k=block_k, block_co=block_co, num_warps=8, num_stages=1)
                    ranked.append(((cost, -p_out, block_co), cfg))
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


def tuned_table_path(slug: str) -> Path:
    return TUNED_DIR / f"{slug}.json"


def write_tuned(slug: str, entries: list[dict], meta: dict) -> Path:
    """Write a tuned table (used by `mnv2-fast tune`).

    entries: {"shape": asdict(BlockShape), "dtype": "float16", "batch": [lo, hi],
              "config": asdict(BlockConfig), "ms": measured time}"""
    TUNED_DIR.mkdir(exist_ok=True)
    path = tuned_table_path(slug)
    path.write_text(json.dumps({"meta": meta, "blocks": entries}, indent=1) + "\n")
    load_tuned.cache_clear()
    return path



@dataclass(frozen=True)
class StemConfig:
    block_p: int = 64
    block_co: int = 32
    num_warps: int = 4
    num_stages: int = 1


@dataclass(frozen=True)
class HeadConfig:
    block_p: int = 64
    block_k: int = 64
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 1


@dataclass(frozen=True)
class LinearConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2


def _interpreting_on(device: torch.device) -> bool:
    return interpreting() and device.type == "cpu"


def choose_stem_config(cout: int, device: torch.device) -> StemConfig:
    block_co = max(16, min(next_pow2(cout), 64))
    if _interpreting_on(device):
        return StemConfig(block_p=512, block_co=max(16, next_pow2(cout)))
    return StemConfig(block_p=64, block_co=block_co, num_warps=4)


def choose_head_config(cin: int, cout: int, hw: int, device: torch.device, itemsize: int = 2) -> HeadConfig:
    if _interpreting_on(device):
        return HeadConfig(block_p=max(16, min(next_pow2(hw), 256)), block_k=max(16, min(next_pow2(cin), 512)),
                          block_n=max(16, min(next_pow2(cout), 2048)))
    return HeadConfig(block_p=64 if hw > 32 else 32, block_k=min(_block_k(cin), 32 if itemsize > 2 else 64),
                      block_n=64 if itemsize > 2 else 128, num_warps=8)


def choose_linear_config(m: int, k: int, nout: int, device: torch.device) -> LinearConfig:
    if _interpreting_on(device):
        return LinearConfig(block_m=max(16, min(next_pow2(m), 256)), block_n=max(16, min(next_pow2(nout), 1024)),
                            block_k=max(16, min(next_pow2(k), 512)))
    if m <= 16:
        # Batch-1 latency: many narrow programs so the weight is read by many SMs at once.
        return LinearConfig(block_m=16, block_n=32, block_k=128, num_warps=4, num_stages=3)
    return LinearConfig(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3)
