"""`mnv2-fast tune`: time candidate launch configs for each block shape on this GPU and write
the winners to a tuned table, keyed by block shape, dtype and batch range: the path given,
or <slug>.json in the user's table folder (see mnv2_fast/kernels/tuned.py), which the
launchers read before the tables the package ships.

Nothing tunes implicitly: the launchers only read the tables.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from ..model import block_specs
from .inventory import Launch, random_inputs, run_once


def candidates(shape, itemsize: int, batch: int):
    """A small sweep around the heuristic: both stagings, a few tiles, warps and chunk sizes."""
    from ..kernels.choice import default_config, gather_candidates

    base = default_config(shape, itemsize, batch)
    out = [base]
    tap = replace(base, gather=False, block_p=64, tile_h=1, tile_w=1, imgs=1)
    for block_p in (32, 64, 128):
        for block_h in (32, 64):
            for warps in (4, 8):
                out.append(replace(tap, block_p=block_p, block_h=block_h, num_warps=warps))
    if shape.has_expand:
        for g in gather_candidates(shape, itemsize, batch)[:3]:
            for block_h in (32, 64):
                for warps in (4, 8):
                    out.append(replace(g, block_h=block_h, num_warps=warps))
    return list(dict.fromkeys(out))


def batch_ranges(batches: list[int]) -> list[tuple[int, int, int]]:
    """(batch, lo, hi): each tuned batch covers up to the geometric mean with its neighbours."""
    b = sorted(set(batches))
    bounds = [1] + [math.isqrt(b[i] * b[i + 1]) + 1 for i in range(len(b) - 1)] + [1 << 30]
    return [(b[i], bounds[i], bounds[i + 1] - 1) for i in range(len(b))]


def tune(widths, resolution: int, batches: list[int], dtypes, reps: int, out: Path | None, progress=print) -> Path:
    from ..kernels import inverted_residual, tuned
    from .timing import input_pool, run_facts, time_cuda

    device = torch.device("cuda")
    shapes = {}
    for width in widths:
        for spec in block_specs(width, resolution=resolution):
            shapes.setdefault(spec, f"w{width} block {spec.index}")
    entries = []
    jobs = [(s, d, b) for s in shapes for d in dtypes for b in batch_ranges(batches)]
    for j, (shape, dtype, (batch, lo, hi)) in enumerate(jobs):
        g = torch.Generator(device="cpu").manual_seed(j)
        (_, *weights), kwargs = random_inputs(Launch("block", "tune", dtype, shape, None), 1, g)
        weights = [None if t is None else t.to(device, dtype) for t in weights]
        nbytes = batch * shape.cin * shape.h * shape.w * dtype.itemsize
        pool = input_pool(lambda: torch.randn(batch, shape.cin, shape.h, shape.w, generator=g).to(device, dtype)
                          .contiguous(memory_format=torch.channels_last), nbytes)
        timed = []
        cands = candidates(shape, dtype.itemsize, batch)
        for cfg in cands:
            def run(x, cfg=cfg):
                return inverted_residual(x, *weights, **kwargs, config=cfg)

            try:
                ms = time_cuda(run, pool, warmup=3, reps=reps).median_ms
            except Exception as err:  # out of resources for this GPU: not a candidate
                progress(f"    skip {cfg}: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
                continue
            timed.append((ms, cfg))
        # The fastest config whose output agrees with the unfused computation.
        best = next(((ms, cfg) for ms, cfg in sorted(timed, key=lambda t: t[0])
                     if run_once(Launch("block", "tune", dtype, shape, cfg), device) <= 1.0), None)
        if best is None:
            raise RuntimeError(f"no candidate config runs correctly for {shape}")
        progress(f"[{j + 1}/{len(jobs)}] {shapes[shape]} {str(dtype)[6:]} batch {batch}: "
                 f"best {best[0]:.4f} ms of {len(cands)} candidates")
        entries.append(tuned.entry(shape, dtype, (lo, hi), best[1], best[0]))
    meta = dict(run_facts(), resolution=resolution, widths=list(widths), reps=reps)
    return tuned.write_tuned(out or tuned.user_table_path(tuned.device_slug(device)), entries, meta)
