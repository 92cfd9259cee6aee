"""Tuned launch tables: which config `mnv2-fast tune` measured fastest per block shape, dtype
and batch range on one GPU model.

Two places hold tables, one file per GPU (<slug>.json, e.g. h100.json):

* the package's own `tuned/` folder: the tables that ship (package data, read-only once
  installed);
* the user's folder: $MNV2_FAST_TUNED_DIR, else $XDG_CACHE_HOME/mnv2-fast/tuned, else
  ~/.cache/mnv2-fast/tuned.  `mnv2-fast tune` writes there unless given a path.

A lookup reads the user's table first, then the shipped one.  Nothing is measured here.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch

from .records import BlockConfig, BlockShape

SHIPPED_DIR = Path(__file__).with_name("tuned")


def user_dir() -> Path:
    """Where this user's tables live (see the module docstring)."""
    if os.environ.get("MNV2_FAST_TUNED_DIR"):
        return Path(os.environ["MNV2_FAST_TUNED_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnv2-fast" / "tuned"


def user_table_path(slug: str) -> Path:
    """Where `mnv2-fast tune` writes the table for GPU `slug` by default."""
    return user_dir() / f"{slug}.json"


def shipped_tables() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.json"))


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H200' -> 'h200'; others: a filename-safe name."""
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name.upper())
    if m:
        return m.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "default"


def device_slug(device: torch.device) -> str:
    """Which table applies: MNV2_FAST_TUNED=<slug> overrides (for experiments)."""
    override = os.environ.get("MNV2_FAST_TUNED")
    if override:
        return override
    if device.type != "cuda":
        return "default"
    return _cuda_slug(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_slug(index: int) -> str:
    return gpu_slug(torch.cuda.get_device_name(index))  # a driver query: once per device


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=None)
def read_table(path: Path) -> dict:
    """One table file as {(BlockShape, dtype name): [(batch lo, batch hi, BlockConfig)]}
    (empty when the file does not exist)."""
    if not path.is_file():
        return {}
    index: dict = {}
    for entry in json.loads(path.read_text()).get("blocks", ()):
        key = (BlockShape(**entry["shape"]), entry["dtype"])
        lo, hi = entry["batch"]
        index.setdefault(key, []).append((lo, hi, BlockConfig.from_dict(entry["config"])))
    return index


def load_tuned(slug: str) -> tuple[dict, dict]:
    """The tables for GPU `slug`, the user's first."""
    env = os.environ  # the variables user_dir() reads: a cache key cheap enough for every launch
    return _tables(slug, env.get("MNV2_FAST_TUNED_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=None)
def _tables(slug: str, *env: str | None) -> tuple[dict, dict]:
    return read_table(user_table_path(slug)), read_table(SHIPPED_DIR / f"{slug}.json")


def lookup(table: dict, shape: BlockShape, dtype: torch.dtype, batch: int) -> BlockConfig | None:
    for lo, hi, cfg in table.get((shape, dtype_name(dtype)), ()):
        if lo <= batch <= hi:
            return cfg
    return None


def lookup_tuned(shape: BlockShape, dtype: torch.dtype, batch: int, slug: str) -> BlockConfig | None:
    """The tuned config for this launch, from the user's table, else the shipped one."""
    for table in load_tuned(slug):
        cfg = lookup(table, shape, dtype, batch)
        if cfg is not None:
            return cfg
    return None


def entry(shape: BlockShape, dtype: torch.dtype, batch_range: tuple[int, int], cfg: BlockConfig, ms: float) -> dict:
    """One row of a table: the block shape, dtype and batch range it applies to, the winner, its time."""
    return dict(shape=shape.to_dict(), dtype=dtype_name(dtype), batch=list(batch_range), config=cfg.to_dict(),
                ms=round(ms, 5))


def write_tuned(path: Path, entries: list[dict], meta: dict) -> Path:
    """Write a table (used by `mnv2-fast tune`); later lookups see it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "blocks": entries}, indent=1) + "\n")
    read_table.cache_clear()
    _tables.cache_clear()
    return path
