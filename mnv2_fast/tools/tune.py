"""`mnv2-fast tune`: choose launch configs for each block shape and write the winners to a
tuned table, keyed by block shape, dtype and batch range: the path given, or <slug>.json in
the user's table folder (see mnv2_fast/kernels/tuned.py), which the launchers read before
the tables the package ships.

Two ways to choose, recorded in the table's "source":
* "measured" (on a GPU): time every candidate, keep the fastest that computes correctly;
* "model" (`--model`, no GPU): compile every candidate for sm_90, predict its time with the
  calibrated performance model (tools/perf_model.py), keep the fastest that does not spill.
  The shipped tables are made this way until a GPU run replaces them.

Nothing tunes implicitly: the launchers only read the tables.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from ..kernels.records import BlockConfig
from ..model import block_specs
from .inventory import Launch, map_tensors, random_inputs, run_once


def _tiles(shape) -> list[tuple[int, int, int]]:
    """(imgs, tile_h, tile_w) worth trying: 2D tiles of roughly 50-200 pixels, whole rows of
    small maps, several small images at once (tile_h even: the kernel works on pixel pairs)."""
    wo = shape.wo
    if shape.stride == 2:  # the region is about four times the tile: keep it near a power of two
        if wo >= 20:
            return [(1, 4, 8), (1, 6, 8), (1, 2, 16), (1, 8, 8), (1, 8, 14)]
        return [(1, 8, 7), (1, 4, 7), (1, 6, 7), (1, 8, 14), (2, 8, 7)]
    # 14x14 and 6x14 tiles: their regions (16x16, 8x16 at a 3x3 depthwise) fill a power-of-two
    # row count, where 8x8 or 16x16 pad 100 rows to 128 and 324 to 512.
    # 28 x 14: a 30 x 16 region (480 of 512 rows) in 4-row bands (tall groups).
    if wo >= 32:
        return [(1, 8, 16), (1, 16, 16), (1, 8, 8), (1, 14, 14), (1, 6, 14), (1, 28, 14)]
    if wo >= 20:
        return [(1, 8, 14), (1, 4, 28), (1, 8, 8), (1, 14, 14), (1, 6, 14), (1, 28, 14)]
    if wo >= 10:  # 16 x 14: a whole 14 x 14 image in 4-row bands (tall groups)
        return [(1, 14, 14), (1, 8, 14), (1, 4, 14), (1, 16, 14)]
    # 8 columns over 7: one wasted, but 2x2 pixel groups (quads) need an even width.
    return [(1, 8, 7), (2, 8, 7), (1, 4, 7), (1, 8, 8), (2, 8, 8)]


def candidates(shape, itemsize: int, batch: int):
    """The heuristic's config and a sweep around it: tiles, hidden chunk, warps, register cap
    (which sets the occupancy), and for tiles that cover the whole image (stride 1) the same with stage_image; for tiles of
    28-32 pixel pairs (half a wgmma tile), the same with join_pairs; for even tile widths, 2x2
    pixel groups (quads); for 16-bit expands, each with and without stage_vectors; for maps
    under 10 pixels wide or batches up to 8, each also with project_apart, and at batches up
    to 16 with one hidden chunk per work item (hidden_split); 16 warps also with recompute_sets;
    2x2 groups in tiles of 4-row bands also as 4x2 groups (tall), in tiles of 7- or 8-row bands
    also as 7x2 or 8x2 groups (strip); chunks of 16-32 channels also staged two at a time
    (stage_hid)."""
    from ..kernels.choice import default_config

    out = [default_config(shape, itemsize, batch)]
    vector_stores = itemsize == 2 and shape.staged and shape.has_expand
    for imgs, tile_h, tile_w in _tiles(shape):
        whole = shape.stride == 1 and tile_h >= shape.ho and tile_w >= shape.wo and shape.staged and not shape.start_k
        for stage_image in (False, True) if whole else (False,):
            for block_hid, warps, maxnreg in _LAUNCHES:
                # The input reloaded per chunk (x_resident off) never won a block in attempt 1's
                # sweep, and 8 warps uncapped now give the registers it would free.
                for resident in (True,):
                    # Products of fewer than 64 rows: both pixels of each pair in one; 2x2 pixel
                    # groups (even tile widths), always joined.
                    groups = [(False, False), (True, False)] if (shape.staged and
                                                                 28 <= imgs * tile_h // 2 * tile_w <= 32) else [
                        (False, False)]
                    groups += [(True, True)] if shape.staged and tile_w % 2 == 0 else []
                    for join, quads in groups:
                        # 16-bit expands: the vector stores of staged chunks, or tl.store (fewer registers).
                        for vectors in (True, False) if vector_stores else (True,):
                            out.append(BlockConfig(tile_h=tile_h, tile_w=tile_w, imgs=imgs, block_hid=block_hid,
                                                   x_resident=resident, num_warps=warps, maxnreg=maxnreg,
                                                   programs_per_sm=16 // warps, stage_image=stage_image,
                                                   join_pairs=join, stage_vectors=vectors, quads=quads))
    # Small maps, or small batches: each also with the project apart (a GEMM over all pixels);
    # at small batches also with each chunk of a tile its own work item (hidden_split).
    apart = [replace(cfg, project_apart=True) for cfg in out[1:]] if shape.staged and (shape.wo < 10 or batch <= 8) \
        else []
    if batch <= 16:
        apart += [replace(cfg, hidden_split=-(-shape.hidden // cfg.block_hid)) for cfg in apart]
    # 16 warps (128 registers at most): also with positions recomputed where used, not held (blocks
    # 11-13 fit so without spilling).
    remat = [replace(cfg, recompute_sets=True) for cfg in out[1:] + apart if cfg.num_warps == 16] if shape.staged \
        else []
    # 2x2 groups in tiles of whole 4-row bands: also as 4x2 groups (tall).
    tall = [replace(cfg, tall=True) for cfg in out[1:] + apart + remat if cfg.quads and cfg.tile_h % 4 == 0]
    # ... and in tiles of 7-row bands (MobileNet's maps are multiples of 7) or 8-row ones as
    # strips: 7x2 groups fill the power-of-two group count that 4x2 groups pad by a quarter.
    strip = [replace(cfg, strip=rows) for cfg in out[1:] + apart + remat for rows in (7, 8)
             if cfg.quads and cfg.tile_h % rows == 0]
    # Chunks of 16-32 channels: also staged two at a time (stage_hid; the expand reads its input
    # once for both), where the hidden size splits so.
    wide = []
    for cfg in (replace(c, stage_hid=2 * c.block_hid) for c in out[1:] + remat + tall + strip if c.block_hid <= 32):
        try:
            cfg.validate(shape)
        except ValueError:  # the hidden size does not split so, or not on the staged path
            continue
        wide.append(cfg)
    return list(dict.fromkeys(out + apart + remat + tall + strip + wide))


# (hidden chunk, warps, register cap): 8 warps uncapped (up to 255 registers, one program
# per SM) wins where wide chunks need the registers; chunks of 64 only where they can fit, at 16
# warps also uncapped (128 registers all the same, allocated otherwise).
_LAUNCHES = tuple((h, w, r) for h in (16, 32) for w, r in ((4, None), (8, None), (8, 128), (8, 168), (16, 128))) + (
    (64, 8, None), (64, 16, 128), (64, 16, None))


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
        (_, *weights), kwargs = map_tensors(*random_inputs(Launch("block", "tune", dtype, shape, None), 1, g),
                                            lambda t: t.to(device, dtype))
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
    meta = dict(run_facts(), source="measured", resolution=resolution, widths=list(widths), reps=reps)
    return tuned.write_tuned(out or tuned.user_table_path(tuned.device_slug(device)), entries, meta)


def model_choice(shape, dtype, batches: list[int], gpu: str, progress=print) -> dict[int, tuple[float, BlockConfig]]:
    """{batch: (predicted ms, config)}: each candidate compiled for sm_90 (cached on disk) and
    timed by the performance model at each batch; variants that spill are never chosen.
    The config's programs_per_sm is set to the occupancy its compiled variant reaches."""
    from dataclasses import replace as _replace

    from . import perf_model as PM

    best: dict[int, tuple[float, BlockConfig]] = {}
    for cfg in candidates(shape, dtype.itemsize, max(batches)):
        launch = Launch("block", "tune", dtype, shape, cfg)
        try:
            fn, args = _variant(launch)
            text, usage = PM.compiled_sass(fn, args, dtype)
        except Exception as err:  # e.g. ptxas refuses a variant: not a candidate
            progress(f"    skip {cfg}: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
            continue
        if usage.get("local", 0) or " STL" in text or " LDL" in text:
            continue  # spills: never shipped
        occ = PM.occupancy(usage["registers"], usage["shared"], cfg.num_warps, gpu)
        cfg = _replace(cfg, programs_per_sm=occ.programs_per_sm)
        for batch in batches:
            try:
                ms = PM.analyse_launch(Launch("block", "tune", dtype, shape, cfg), batch, gpu)["predicted_ms"]
            except ValueError as err:  # its SASS does not match the kernel's declared loops
                progress(f"    skip {cfg}: {str(err).splitlines()[0][:160]}")
                break
            if batch not in best or ms < best[batch][0]:
                best[batch] = (ms, cfg)
    return best


def fallback_candidates(shape, itemsize: int, batch: int):
    """Configs from the heuristic's towards ever fewer registers: smaller chunks and tiles,
    the input region reloaded per chunk; the first that compiles without spilling ships for
    shapes the model did not rank."""
    from ..kernels.choice import _TILES, default_config

    base = default_config(shape, itemsize, batch)
    out = [base]
    tiles = [t for t in _TILES if t[1] <= base.tile_h and t[2] <= base.tile_w and t[0] <= base.imgs]
    for tile in sorted(tiles, key=lambda t: -t[0] * t[1] * t[2]):
        for resident in (True, False):
            for block_hid in (32, 16):
                for warps in (8, 4):
                    out.append(BlockConfig(tile_h=tile[1], tile_w=tile[2], imgs=tile[0], block_hid=block_hid,
                                           x_resident=resident and shape.has_expand, num_warps=warps,
                                           programs_per_sm=8 // warps))
    return list(dict.fromkeys(out))


def first_fit(shape, dtype, batch: int, gpu: str, prefer=(), progress=print) -> tuple[float, BlockConfig]:
    """(predicted ms, config): the first of `prefer`, then of `fallback_candidates`, whose
    compiled variant does not spill."""
    from dataclasses import replace as _replace

    from . import perf_model as PM

    def spills(cfg) -> bool:
        # fp32 ships both product precisions (IEEE and TF32) on one table entry: both must fit.
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            try:
                text, usage = PM.compiled_sass(*_variant(Launch("block", "tune", dtype, shape, cfg, tf32)), dtype)
            except Exception as err:  # e.g. ptxas refuses a variant
                progress(f"    skip {cfg}: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
                return True
            if usage.get("local", 0) or " STL" in text or " LDL" in text:
                return True
        return False

    for cfg in list(prefer) + fallback_candidates(shape, dtype.itemsize, batch):
        if spills(cfg):
            continue
        launch = Launch("block", "tune", dtype, shape, cfg)
        text, usage = PM.compiled_sass(*_variant(launch), dtype)
        occ = PM.occupancy(usage["registers"], usage["shared"], cfg.num_warps, gpu)
        cfg = _replace(cfg, programs_per_sm=occ.programs_per_sm)
        return PM.analyse_launch(Launch("block", "tune", dtype, shape, cfg), batch, gpu)["predicted_ms"], cfg
    raise RuntimeError(f"no config compiles without spilling for {shape} in {dtype}")


def _variant(launch):
    from .inventory import variant

    return variant(launch)


def model_tune(widths, resolution: int, batches: list[int], dtypes, gpu: str, out: Path, progress=print, *,
               networks=(), first_fit_only: bool = False, merge: bool = False) -> Path:
    """The shipped tables: every block shape of the given MobileNetV2 widths (at `resolution`)
    and of the given networks (tools/zoo.py names, each at its own training resolution),
    chosen by the model -- the fastest candidate, or with first_fit_only the first that
    compiles without spilling (`first_fit`).  merge: keep the entries `out` holds for shapes
    and dtypes not chosen now."""
    import json

    import triton

    from ..kernels import tuned
    from . import zoo
    from .interpreter import use_compiler
    from .perf_model import CALIBRATED

    use_compiler()
    shapes = {}
    for width in widths:
        for spec in block_specs(width, resolution=resolution):
            shapes.setdefault(spec, f"w{width} block {spec.index}")
    for name in networks:
        for spec, label in zoo.block_shapes(name, zoo.resolution(name)):
            shapes.setdefault(spec, label)
    entries = []
    for j, (shape, label) in enumerate(shapes.items()):
        for dtype in dtypes:
            if first_fit_only:
                chosen = {b: first_fit(shape, dtype, b, gpu, progress=progress) for b in batches}
            else:
                chosen = model_choice(shape, dtype, batches, gpu, progress)
            for batch, lo, hi in batch_ranges(batches):
                ms, cfg = chosen[batch]
                entries.append(tuned.entry(shape, dtype, (lo, hi), cfg, ms))
                progress(f"[{j + 1}/{len(shapes)}] {label} {str(dtype)[6:]} batch {batch}: {ms:.4f} ms predicted")
    meta = dict(source="model", gpu=gpu, triton=triton.__version__, resolution=resolution, widths=list(widths),
                networks=list(networks), model=CALIBRATED.as_dict(),
                note="predicted by the calibrated performance model (tools/perf_model.py), not measured")
    if merge and out.is_file():
        from ..kernels.records import BlockShape

        old = json.loads(out.read_text())
        new = {(BlockShape(**e["shape"]), e["dtype"]) for e in entries}
        kept = [e for e in old.get("blocks", ()) if (BlockShape(**e["shape"]), e["dtype"]) not in new]
        entries = kept + entries
        meta = dict(old.get("meta", {}), networks=sorted(set(old.get("meta", {}).get("networks", [])) | set(networks)))
    return tuned.write_tuned(out, entries, meta)
