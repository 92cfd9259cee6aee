"""The fused inverted-residual kernel against the unfused float64 PyTorch block.

On a CPU-only machine these run through Triton's interpreter at small spatial sizes.  Every
launch reads its input and weights from, and writes its output into, views of larger buffers
whose rest holds NaN (helpers.call_guarded): a stray load shows in the output, a stray store
in the guard.
Every block shape of MobileNetV2 at widths 1.0, 0.5 and 1.4 is covered, plus tilings that
split images unevenly, stack several images per tile, split input and output channels into
two power-of-two parts, leave a last hidden chunk partial, and make each program of the
persistent grid walk over several tiles.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import DEVICE, INTERPRETER, assert_close, call_guarded, make_block, nhwc, poisoned_like, reference64
from interpreter_checks import SCRATCH_ARG, block_scratch, checked_launches
from mnv2_fast import fuse_block
from mnv2_fast.kernels import BlockConfig, BlockShape, block, default_config, inverted_residual, output_size
from mnv2_fast.kernels._common import next_pow2, split_pow2
from mnv2_fast.kernels.choice import interpreter_config
from mnv2_fast.model import block_specs

# Small spatial sizes, odd ones included, cycled over the cases.
SIZES = [(7, 7), (9, 5), (5, 9), (8, 8), (15, 3), (3, 17), (6, 7), (1, 1), (2, 3), (11, 4), (4, 11), (17, 2)]


def _unique_specs(width):
    seen, out = set(), []
    for b in block_specs(width):
        key = (b.cin, b.hidden, b.cout, b.stride, b.t)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def _code_path(b) -> tuple:
    """What picks the kernel's branches and masks for a block under the interpreter's config
    (whole images, hidden chunks of min(next_pow2(hidden), 128)): stride, stages, residual,
    whether the input and output channels split into two power-of-two parts and whether the
    parts are padded, whether the last hidden chunk is partial."""
    k_a, k_b = split_pow2(b.cin)
    co_a, co_b = split_pow2(b.cout)
    chunk = min(next_pow2(b.hidden), 128)
    return (b.stride, b.t > 1, b.stride == 1 and b.cin == b.cout, k_b > 0, k_a + k_b > b.cin, co_b > 0,
            co_a + co_b > b.cout, b.hidden % chunk != 0)


def _cases():
    """Every block of width 1.0, four runs each; of widths 0.5 and 1.4, under the interpreter,
    the blocks whose code path (`_code_path`) no earlier block took, two runs and one (on a
    GPU, where each shape gets its own launch config, all of them)."""
    sizes = itertools.cycle(SIZES)
    cases, paths = [], set()
    for width in (1.0, 0.5, 1.4):
        for b in _unique_specs(width):
            if width != 1.0 and INTERPRETER and _code_path(b) in paths:
                continue
            paths.add(_code_path(b))
            runs = [(1, torch.float32), (3, torch.float16)]
            if width == 1.0:
                runs += [(3, torch.float32), (1, torch.float16)]
            elif width == 1.4:
                runs = runs[1:]  # the same code paths as 1.0, wider: one run each
            for batch, dtype in runs:
                h, w = next(sizes)
                cases.append(pytest.param(b, batch, h, w, dtype,
                                          id=f"w{width}-b{b.index}-{b.cin}x{b.t}-{b.cout}-s{b.stride}"
                                             f"-n{batch}-{h}x{w}-{str(dtype)[6:]}"))
    return cases


def _config(shape: BlockShape, batch: int, dtype: torch.dtype = torch.float32) -> BlockConfig:
    """Large tiles for the interpreter, the GPU's own choice on a GPU."""
    if DEVICE.type == "cuda":
        return default_config(shape, dtype.itemsize, batch)
    return interpreter_config(shape, batch)


def _fused(spec, dtype):
    block = make_block(spec.cin, spec.cout, spec.stride, spec.t)
    return block, fuse_block(block, backend="triton").to(DEVICE, dtype)


def _run(fused, x, cfg):
    """The kernel on guarded copies of x and the weights, into a guarded output: as many
    guard images as a tile has images (a missing image mask stores up to imgs - 1 past)."""
    n, _, h, w = x.shape
    s = fused.spec
    return call_guarded(inverted_residual, x, fused.w_exp, fused.b_exp, fused.w_dw, fused.b_dw, fused.w_proj,
                        fused.b_proj, out_shape=(n, s.cout, output_size(h, s.stride), output_size(w, s.stride)),
                        images=cfg.imgs, stride=s.stride, residual=s.residual, config=cfg)


@pytest.mark.parametrize("spec,batch,h,w,dtype", _cases())
def test_block_matches_unfused(spec, batch, h, w, dtype):
    block, fused = _fused(spec, dtype)
    x = nhwc(torch.randn(batch, spec.cin, h, w)).to(DEVICE, dtype)
    y = _run(fused, x, _config(spec.at(h, w), batch, dtype))
    assert_close(y, reference64(block, x), dtype, f"block {spec.index}")


# Tilings the whole-image configs above never produce: several tiles per image, tiles
# overhanging the image (odd rows included), batches not divisible by imgs, hidden channels
# not a multiple of the chunk, the input reloaded per chunk; the interpreter's persistent
# grid (3 programs) makes each program walk over several tiles, alternating the scratch
# buffers across tile boundaries.
TILINGS = [
    dict(tile_h=2, tile_w=4, imgs=2, block_hid=32),
    dict(tile_h=4, tile_w=5, imgs=3, block_hid=64, x_resident=False),
    dict(tile_h=4, tile_w=2, imgs=1, block_hid=16, num_warps=2),
    dict(tile_h=6, tile_w=3, imgs=1, block_hid=16, x_resident=False),
    dict(tile_h=10, tile_w=7, imgs=2, block_hid=32),
    dict(tile_h=4, tile_w=3, imgs=2, block_hid=16, join_pairs=True),
    # 2x2 pixel groups: the right column past the image's 7 columns (tile widths 4 and 6)
    dict(tile_h=2, tile_w=4, imgs=2, block_hid=32, join_pairs=True, quads=True),
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, x_resident=False),
    # The project apart: the kernel writes the hidden tensor (pairs, then 2x2 groups whose right
    # column overhangs), a GEMM projects it and adds the residual (stride 1).
    dict(tile_h=4, tile_w=3, imgs=2, block_hid=32, project_apart=True),
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, project_apart=True),
    # ... with each tile's 8 hidden chunks (the last partial) split over 3 work items (3, 3, 2
    # chunks), and over 5 (2 chunks each: the fifth has none).
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, project_apart=True, hidden_split=3),
    dict(tile_h=4, tile_w=3, imgs=2, block_hid=16, project_apart=True, hidden_split=5),
    # fp16's depthwise epilogue in fp32, as register-capped configs take it
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, packed_dw=False),
    # The fused project's epilogue with the pixel sets' positions recomputed after the chunk
    # loop: 2x2 groups over two images (the second short of the batch), and pairs.
    dict(tile_h=4, tile_w=6, imgs=2, block_hid=16, join_pairs=True, quads=True, recompute_sets=True),
    dict(tile_h=4, tile_w=3, imgs=2, block_hid=32, recompute_sets=True),
    # ... and the staged rows' positions per tile with the project apart (the hidden tensor stored)
    dict(tile_h=4, tile_w=6, imgs=2, block_hid=16, join_pairs=True, quads=True, project_apart=True,
         recompute_sets=True),
    # 4x2 groups (two 2x2 stacked): the 9 rows overhang by 3 (tile_h 4) and by 1 (tile_h 8, with
    # a partial last group row), the right column past the 7th; two images, the second short.
    dict(tile_h=4, tile_w=4, imgs=2, block_hid=32, join_pairs=True, quads=True, tall=True),
    dict(tile_h=8, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, tall=True, x_resident=False),
    dict(tile_h=4, tile_w=6, imgs=2, block_hid=16, join_pairs=True, quads=True, tall=True, recompute_sets=True),
    # ... storing the hidden tensor for the GEMM (rows 2-3 past the image's 9th), with split tiles
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, tall=True, project_apart=True),
    dict(tile_h=8, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True, tall=True, project_apart=True,
         hidden_split=3),
    # 7 x 2 groups (strips): the second tile row overhangs the 9 rows by 5, one group row per tile;
    # 3 x 2 (the joined rows padded to 4) in two group rows per tile, the input reloaded per chunk;
    # 8 x 2 with the positions recomputed; 5 x 2 and 7 x 2 storing the hidden tensor for the GEMM.
    dict(tile_h=7, tile_w=4, imgs=2, block_hid=32, join_pairs=True, quads=True, strip=7),
    dict(tile_h=6, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, strip=3, x_resident=False),
    dict(tile_h=8, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True, strip=8, recompute_sets=True),
    dict(tile_h=5, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, strip=5, project_apart=True),
    dict(tile_h=7, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True, strip=7, project_apart=True,
         hidden_split=3),
    # fp16: the expand accumulating in fp16, in two products (40 = 32 + 8 input channels); fp32 ignores it
    dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, acc16=True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("tiling", TILINGS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_block_tilings(tiling, stride, dtype):
    # 40 and 48 channels: the expand and the project run as two power-of-two products
    # (32 + 16 each, the first padded); hidden 120 is not a multiple of 16, 32 or 64.  fp16
    # stages its chunks from the expand's accumulators in `_stage_order` (a partial last chunk
    # included), fp32 with tl.store.
    cin, t, cout = (40, 3, 40) if stride == 1 else (40, 3, 48)
    block = make_block(cin, cout, stride, t)
    fused = fuse_block(block, backend="triton").to(DEVICE, dtype)
    # 5 images: ragged groups of 2 and 3; 2 are enough for several tiles per program else.
    x = nhwc(torch.randn(5 if tiling.get("imgs", 1) > 1 else 2, cin, 9, 7)).to(DEVICE, dtype)
    y = _run(fused, x, BlockConfig(**tiling))
    assert_close(y, reference64(block, x), dtype, str(tiling))


# Whole-image tiles with stage_image (stride 1): only the image's pixels are expanded and
# staged; the halo ring of the scratch is zeroed once per program and must stay zero across
# chunks and tiles.  Tiles overhanging the image by a row and a column (those staged pixels
# are padding too), ragged image groups, a partial last hidden chunk (120 = 3 x 32 + 24), the
# input reloaded per chunk, no expand stage (t = 1), and several tiles per program.
STAGE_IMAGE_CASES = [
    # (cin, t, cout, n, h, w, dtype, config)
    (40, 3, 40, 5, 7, 7, torch.float32, dict(tile_h=8, tile_w=7, imgs=2, block_hid=32)),
    (40, 3, 48, 4, 5, 6, torch.float16, dict(tile_h=6, tile_w=7, imgs=1, block_hid=16, x_resident=False)),
    (32, 1, 24, 5, 4, 3, torch.float32, dict(tile_h=4, tile_w=4, imgs=1, block_hid=32)),
    (24, 6, 24, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=7, imgs=2, block_hid=64, num_warps=8)),
    (40, 3, 48, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=7, imgs=1, block_hid=32, join_pairs=True)),
    (24, 6, 24, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=8, imgs=1, block_hid=32, join_pairs=True, quads=True)),
    (24, 6, 24, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             tall=True)),
    (24, 6, 40, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             tall=True, project_apart=True)),
    # a whole 7 x 7 image in one 7 x 2 group row (the right column's last group past the image)
    (24, 6, 24, 3, 7, 7, torch.float16, dict(tile_h=7, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             strip=7)),
    # block 17's kind of config: two images per tile, the project apart
    (24, 6, 40, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             project_apart=True)),
    # blocks 15-17's at large batches: 4x2 groups over two images, the project apart, each
    # tile's hidden chunks split over 2 work items (144 = 3 + 1.5 chunks of 32: the second
    # share ends with a partial chunk); the GEMM adds the residual (Cin = Cout) or not.
    (24, 6, 24, 3, 7, 7, torch.float16, dict(tile_h=8, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             tall=True, project_apart=True, hidden_split=2)),
    (24, 6, 40, 5, 7, 7, torch.float32, dict(tile_h=8, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             tall=True, project_apart=True, hidden_split=2)),
    # blocks 11-13's: 7 x 2 strips with the staged rows' and pixels' positions recomputed per
    # tile (two images a tile, the second short of the batch; several tiles per program)
    (40, 3, 48, 3, 7, 7, torch.float16, dict(tile_h=7, tile_w=8, imgs=2, block_hid=32, join_pairs=True, quads=True,
                                             strip=7, recompute_sets=True)),
]


@pytest.mark.parametrize("cin,t,cout,n,h,w,dtype,tiling", STAGE_IMAGE_CASES,
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_block_stage_image_tiles(cin, t, cout, n, h, w, dtype, tiling):
    block = make_block(cin, cout, 1, t)
    with torch.no_grad():  # relu6(bias) > 0 everywhere: a halo row staged as anything but 0 shows
        block.conv[0][1].bias.uniform_(1.0, 3.0)
    fused = fuse_block(block, backend="triton").to(DEVICE, dtype)
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    y = _run(fused, x, BlockConfig(**tiling, stage_image=True))
    assert_close(y, reference64(block, x), dtype, str(tiling))


def test_block_stage_image_keeps_nan_and_inf_inside_the_image():
    """NaN and Inf on the image's border: the staged ring must stay zero for the next tiles of
    the same program (three programs walk over four images), so only the pixels whose 3x3
    windows hold them may differ from finite."""
    block = make_block(24, 24, 1, 6)
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = torch.randn(4, 24, 7, 7)
    x[0, 3, 0, 6] = float("nan")
    x[1, 1, 6, 0] = float("inf")
    x[2, 2, 3, 0] = float("-inf")
    x = nhwc(x).to(DEVICE)
    y = _run(fused, x, BlockConfig(tile_h=8, tile_w=7, block_hid=32, stage_image=True)).double().cpu()
    ref = reference64(block, x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.isfinite(ref[3]).all()
    finite = torch.isfinite(ref)
    assert_close(torch.where(finite, y, 0), torch.where(finite, ref, 0), torch.float32, "finite part")


# stage_hid: the expand and the staging take several depthwise parts' channels at once.  Hidden 144
# = 4 chunks of 32 + a last one of 16 (blocks 3-4 ship so), 96 = one of 64 + one of 32, 144 in
# chunks of 64 + 16; fp16 (vector stores from the accumulators) and fp32 (tl.store); strips, 2x2 and
# 4x2 groups, pairs, the project apart, the input reloaded per chunk, whole images, and no expand
# (t = 1: all 32 channels staged at once).
STAGE_HID_CASES = [
    # (cin, t, cout, stride, n, h, w, config)
    (24, 6, 24, 1, 2, 9, 7, dict(tile_h=7, tile_w=4, imgs=1, block_hid=16, stage_hid=32, join_pairs=True, quads=True,
                                 strip=7)),
    (24, 6, 32, 2, 2, 9, 7, dict(tile_h=4, tile_w=4, imgs=2, block_hid=16, stage_hid=32, join_pairs=True,
                                 quads=True, recompute_sets=True)),
    (16, 6, 24, 2, 2, 9, 7, dict(tile_h=4, tile_w=4, imgs=1, block_hid=32, stage_hid=64, join_pairs=True, quads=True,
                                 tall=True)),
    (24, 6, 24, 1, 3, 9, 7, dict(tile_h=4, tile_w=3, imgs=2, block_hid=16, stage_hid=64)),
    (24, 6, 40, 1, 2, 7, 7, dict(tile_h=4, tile_w=6, imgs=1, block_hid=16, stage_hid=32, join_pairs=True, quads=True,
                                 project_apart=True)),
    (16, 6, 24, 1, 2, 9, 7, dict(tile_h=4, tile_w=4, imgs=1, block_hid=16, stage_hid=32, x_resident=False)),
    (24, 6, 24, 1, 3, 7, 7, dict(tile_h=7, tile_w=8, imgs=2, block_hid=16, stage_hid=32, join_pairs=True, quads=True,
                                 strip=7, stage_image=True)),
    (32, 1, 16, 1, 2, 9, 7, dict(tile_h=8, tile_w=4, imgs=1, block_hid=16, stage_hid=32, join_pairs=True, quads=True,
                                 strip=8)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cin,t,cout,stride,n,h,w,tiling", STAGE_HID_CASES,
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_block_stage_hid(cin, t, cout, stride, n, h, w, tiling, dtype):
    block = make_block(cin, cout, stride, t)
    fused = fuse_block(block, backend="triton").to(DEVICE, dtype)
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    y = _run(fused, x, BlockConfig(**tiling))
    assert_close(y, reference64(block, x), dtype, str(tiling))


def test_stage_hid_needs_whole_parts():
    a = _args(hidden=72)
    # stage_hid = block_hid would be a second spelling of 0 (none): another compiled variant of the same code
    for cfg in (dict(block_hid=16, stage_hid=24), dict(block_hid=16, stage_hid=128), dict(block_hid=16, stage_hid=64),
                dict(block_hid=32, stage_hid=64, project_apart=True, hidden_split=2), dict(block_hid=16, stage_hid=16)):
        with pytest.raises(ValueError, match="stage_hid=.* must be a power-of-two multiple of block_hid"):
            inverted_residual(_x(), **a, stride=1, residual=False, config=BlockConfig(tile_h=2, tile_w=2, **cfg))


def test_quads_need_joined_products_and_an_even_tile_width():
    a = _args()
    for tile in (dict(tile_h=4, tile_w=4, quads=True), dict(tile_h=4, tile_w=3, join_pairs=True, quads=True)):
        with pytest.raises(ValueError, match="quads needs join_pairs and an even tile_w"):
            inverted_residual(_x(), **a, stride=2, residual=False, config=BlockConfig(**tile))


def test_tall_groups_need_quads_and_four_row_bands():
    a = _args()
    for tile in (dict(tile_h=4, tile_w=4, join_pairs=True, tall=True),
                 dict(tile_h=6, tile_w=4, join_pairs=True, quads=True, tall=True)):
        with pytest.raises(ValueError, match="tall .4x2 pixel groups. needs quads and tile_h a multiple of 4"):
            inverted_residual(_x(), **a, stride=2, residual=False, config=BlockConfig(**tile))


def test_project_apart_needs_a_middle_depthwise():
    a = dict(_args(), w_dw=None, b_dw=None)
    with pytest.raises(ValueError, match="project_apart needs a middle depthwise"):
        inverted_residual(_x(), **a, stride=1, residual=False, config=BlockConfig(tile_h=2, tile_w=2,
                                                                                  project_apart=True))


def test_hidden_split_needs_the_project_apart():
    with pytest.raises(ValueError, match="hidden_split=2 must be >= 1, and above 1 only with project_apart"):
        inverted_residual(_x(), **_args(), stride=1, residual=False, config=BlockConfig(tile_h=2, tile_w=2,
                                                                                        hidden_split=2))


def test_recompute_sets_needs_a_middle_depthwise():
    with pytest.raises(ValueError, match="recompute_sets .* needs a middle depthwise"):
        inverted_residual(_x(), **dict(_args(), w_dw=None, b_dw=None), stride=1, residual=False,
                          config=BlockConfig(tile_h=2, tile_w=2, recompute_sets=True))


def test_stage_image_needs_stride_1_and_a_tile_covering_the_image():
    a = _args()
    for stride, tile in ((2, dict(tile_h=4, tile_w=4)), (1, dict(tile_h=4, tile_w=4))):
        with pytest.raises(ValueError, match="stage_image needs stride 1 and a tile covering the image"):
            inverted_residual(_x(), **a, stride=stride, residual=False, config=BlockConfig(**tile, stage_image=True))


# The GPU's configs (224-px shapes) for every block shape at large batch, and for a few at
# small batch; on the GPU, mnv2_fast.tools.sanitize runs every shipped config.  The widest
# blocks (hidden 960) are the next test's.
@pytest.mark.parametrize("index,batch_class", [(b.index, 256) for b in _unique_specs(1.0) if b.hidden < 960]
                         + [(8, 1), (14, 1)])
def test_default_gpu_configs_compute_the_block(index, batch_class):
    """The heuristic's GPU launch configs (for 224-px shapes, small and large batch) are right too."""
    spec = block_specs(1.0, resolution=224)[index - 1]
    cfg = default_config(spec, 2, batch_class)
    block, fused = _fused(spec, torch.float16)
    n, h, w = (2, 9, 7) if batch_class > 1 else (1, min(spec.h, 9), min(spec.w, 7))
    x = nhwc(torch.randn(n, spec.cin, h, w)).to(DEVICE, torch.float16)
    y = _run(fused, x, cfg)
    assert_close(y, reference64(block, x), torch.float16, f"block {index} with {cfg}")


def _shipped_widest():
    """Every shipped fp16 launch (the heuristic's and the tuned tables') of MobileNetV2 1.0's
    widest blocks, hidden 960: the longest fp32 sums across hidden chunks (30 to 60)."""
    from mnv2_fast.tools.inventory import shipped_launches

    launches = {}
    for launch in shipped_launches(widths=(1.0,)):
        if launch.kind == "block" and launch.dtype == torch.float16 and launch.shape.hidden == 960:
            launches.setdefault((launch.shape, launch.config), launch)
    return [pytest.param(launch, id=launch.label.replace(" ", "_")) for launch in launches.values()]


@pytest.mark.parametrize("launch", _shipped_widest())
def test_shipped_gpu_configs_of_the_widest_blocks_in_fp16(launch):
    """One whole tile per image (the 7 x 7 map cropped to the tile: the interpreter's time goes
    by tiles), with a short last image group where a tile holds several."""
    spec, cfg = launch.shape, launch.config
    block, fused = _fused(spec, torch.float16)
    h, w = min(spec.h, cfg.tile_h), min(spec.w, cfg.tile_w)
    x = nhwc(torch.randn(cfg.imgs + 1, spec.cin, h, w)).to(DEVICE, torch.float16)
    y = _run(fused, x, cfg)
    assert_close(y, reference64(block, x), torch.float16, f"{launch.label}: {cfg}")


def test_large_spatial_size_odd():
    """An odd 113-pixel image (as in 225-px inputs), with batch 1."""
    block = make_block(16, 24, 2, 6)
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = nhwc(torch.randn(1, 16, 113, 113)).to(DEVICE)
    if DEVICE.type == "cuda":
        cfg = _config(BlockShape(16, 96, 24, 2, 113, 113, True, False), 1)
    else:  # interpreter: few, large programs; the tile splits the image in rows
        cfg = BlockConfig(tile_h=8, tile_w=57, block_hid=128)
    y = _run(fused, x, cfg)
    assert_close(y, reference64(block, x), torch.float32, "113 px")


@pytest.mark.parametrize("cin,t,cout,stride", [(24, 6, 24, 1), (16, 6, 24, 2), (32, 1, 16, 1)])
def test_nan_and_inf_propagate_as_in_reference(cin, t, cout, stride):
    block = make_block(cin, cout, stride, t)
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = torch.randn(2, cin, 7, 8)
    x[0, 3, 2, 5] = float("nan")
    x[1, 1, 4, 0] = float("inf")
    x[1, 2, 6, 7] = float("-inf")
    x = nhwc(x).to(DEVICE)
    shape = BlockShape(cin, cin * t, cout, stride, 7, 8, t != 1, stride == 1 and cin == cout)
    y = _run(fused, x, _config(shape, 2)).double().cpu()
    ref = reference64(block, x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isposinf(y), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(y), torch.isneginf(ref))
    assert torch.isnan(ref).any()
    finite = torch.isfinite(ref)
    assert_close(torch.where(finite, y, 0), torch.where(finite, ref, 0), torch.float32, "finite part")


def test_halo_pixels_contribute_zero_not_relu6_bias():
    """Depthwise zero-padding applies to the expanded activation: with a large expand bias,
    relu6(bias) at halo pixels would show up along the border if padding were applied to x."""
    block = make_block(16, 16, 1, 6)
    with torch.no_grad():
        block.conv[0][1].bias.fill_(3.0)  # expand BN beta: relu6(bias) = 3 at every padded pixel
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = nhwc(torch.randn(1, 16, 5, 6)).to(DEVICE)
    for cfg in (_config(BlockShape(16, 96, 16, 1, 5, 6, True, True), 1), BlockConfig(tile_h=2, tile_w=3)):
        y = _run(fused, x, cfg)
        assert_close(y, reference64(block, x), torch.float32, str(cfg))


# ---- launcher errors: a clear exception naming the problem, never a wrong result

def _args(dtype=torch.float32, cin=16, hidden=96, cout=24):
    dev = DEVICE
    return dict(
        w_exp=torch.randn(cin, hidden, device=dev, dtype=dtype), b_exp=torch.randn(hidden, device=dev),
        w_dw=torch.randn(9, hidden, device=dev), b_dw=torch.randn(hidden, device=dev),
        w_proj=torch.randn(hidden, cout, device=dev, dtype=dtype), b_proj=torch.randn(cout, device=dev),
    )


def _x(n=1, c=16, h=5, w=5, dtype=torch.float32):
    return nhwc(torch.randn(n, c, h, w, device=DEVICE, dtype=dtype))


@pytest.mark.parametrize("make_x,exc,msg", [
    (lambda: torch.randn(16, 5, 5, device=DEVICE), ValueError, "rank 4"),
    (lambda: torch.randn(1, 16, 5, 5, device=DEVICE), ValueError, "channels_last"),
    (lambda: _x().to(torch.float64), TypeError, "dtype"),
    (lambda: _x(c=8), ValueError, "w_exp has shape"),
    (lambda: _x(h=0), ValueError, "empty"),
    (lambda: [1.0], TypeError, "torch.Tensor"),
])
def test_launcher_rejects_bad_inputs(make_x, exc, msg):
    with pytest.raises(exc, match=msg):
        inverted_residual(make_x(), **_args(), stride=2, residual=False)


def test_launcher_rejects_bad_weights_and_flags():
    x = _x()
    a = _args()
    with pytest.raises(TypeError, match="w_exp has dtype"):
        inverted_residual(x, **{**a, "w_exp": a["w_exp"].half()}, stride=2, residual=False)
    with pytest.raises(ValueError, match="w_proj has shape"):
        inverted_residual(x, **{**a, "w_proj": a["w_proj"][:50]}, stride=2, residual=False)
    with pytest.raises(ValueError, match="w_dw must have shape"):
        inverted_residual(x, **{**a, "w_dw": a["w_dw"][:4]}, stride=2, residual=False)
    with pytest.raises(ValueError, match="both be given"):
        inverted_residual(x, **{**a, "b_exp": None}, stride=2, residual=False)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        inverted_residual(x, **a, stride=3, residual=False)
    with pytest.raises(ValueError, match="residual needs stride 1"):
        inverted_residual(x, **a, stride=2, residual=True)
    with pytest.raises(ValueError, match="must be contiguous"):
        inverted_residual(x, **{**a, "w_proj": a["w_proj"].t().contiguous().t()}, stride=2, residual=False)
    with pytest.raises(ValueError, match="without an expand stage"):
        inverted_residual(x, **{**a, "w_exp": None, "b_exp": None}, stride=2, residual=False)
    with pytest.raises(ValueError, match="out has shape"):
        inverted_residual(x, **a, stride=2, residual=False, out=poisoned_like(1, 24, 5, 5, torch.float32))
    with pytest.raises(ValueError, match="power of two"):
        inverted_residual(x, **a, stride=2, residual=False, config=BlockConfig(block_hid=24))
    with pytest.raises(ValueError, match="tile_h must be even"):
        inverted_residual(x, **a, stride=2, residual=False, config=BlockConfig(tile_h=3))
    with pytest.raises(ValueError, match="maxnreg"):
        inverted_residual(x, **a, stride=2, residual=False, config=BlockConfig(maxnreg=300))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="checks the CPU-without-interpreter error")
def test_cpu_tensor_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensor"):
        inverted_residual(_x(), **_args(), stride=2, residual=False)


# ---- every access in bounds, the scratch in barrier order (the interpreter's memcheck)

ACCESS_CASES = [
    # (cin, t, cout, stride, n, h, w, config): one pixel pair padded to 16 (the whole-image tile
    # of a 1 x 1 image); tiles over two images and a ragged batch; an odd number of hidden chunks
    # (3) over several tiles per program, so that the scratch buffers must alternate across
    # tiles; no expand stage; two output-channel parts.
    (16, 6, 16, 1, 1, 1, 1, None),
    (16, 3, 24, 2, 3, 6, 7, BlockConfig(tile_h=2, tile_w=4, imgs=2, block_hid=16)),
    (16, 3, 16, 1, 2, 6, 6, BlockConfig(tile_h=2, tile_w=3, block_hid=16, x_resident=False)),
    (32, 1, 40, 1, 2, 5, 4, BlockConfig(tile_h=4, tile_w=2, block_hid=16)),
    # stage_image: the halo ring, zeroed once per program, then only read; the padding rows of
    # the pixel enumeration never stored; three programs over four images.
    (16, 3, 24, 1, 4, 5, 5, BlockConfig(tile_h=6, tile_w=5, block_hid=16, stage_image=True)),
    (16, 3, 24, 2, 3, 6, 7, BlockConfig(tile_h=2, tile_w=4, imgs=2, block_hid=16, join_pairs=True)),
    # 2x2 pixel groups: padding groups, the right column past odd widths, stride 1 and 2.
    (16, 3, 24, 2, 3, 6, 7, BlockConfig(tile_h=2, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True)),
    (16, 3, 16, 1, 2, 5, 7, BlockConfig(tile_h=4, tile_w=6, block_hid=32, join_pairs=True, quads=True)),
    # The project apart: the hidden tensor's stores, the right column past the image included.
    (16, 3, 24, 2, 3, 6, 7, BlockConfig(tile_h=2, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True,
                                        project_apart=True)),
    (16, 3, 16, 1, 2, 5, 7, BlockConfig(tile_h=4, tile_w=3, block_hid=32, project_apart=True)),
    (16, 3, 16, 1, 2, 5, 7, BlockConfig(tile_h=4, tile_w=6, block_hid=16, join_pairs=True, quads=True,
                                        project_apart=True, hidden_split=2)),
    # stage_hid: chunks staged 32 wide (the scratch is sized for them), then the last 16 (hidden 48).
    (16, 3, 24, 2, 3, 6, 7, BlockConfig(tile_h=2, tile_w=4, imgs=2, block_hid=16, stage_hid=32, join_pairs=True,
                                        quads=True)),
]


@pytest.mark.skipif(not INTERPRETER, reason="checks the interpreter's loads and stores")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # fp16: the chunks' vector stores
@pytest.mark.parametrize("cin,t,cout,stride,n,h,w,cfg", ACCESS_CASES)
def test_every_access_is_in_bounds_and_the_scratch_in_barrier_order(cin, t, cout, stride, n, h, w, cfg, dtype):
    """No load or store outside the launch's tensors (padding rows and pixel pairs included,
    whose values never reach the output), each program in its own scratch, and every scratch
    buffer read only after a barrier that follows its write, overwritten only after a barrier
    that follows its read (tests/interpreter_checks.py)."""
    block_, fused = _fused(BlockShape(cin, cin * t, cout, stride, h, w, t > 1, stride == 1 and cin == cout), dtype)
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    cfg = cfg or _config(fused.spec.at(h, w), n)
    with checked_launches(block, scratch_arg=SCRATCH_ARG, per_program=block_scratch) as check:
        y = _run(fused, x, cfg)
    assert check.launches == 1 and check.barriers > 0 and check.accesses > 0
    assert not check.problems, check.report()
    assert_close(y, reference64(block_, x), dtype, str(cfg))


# The shipped configs whose paths no GPU has run yet (the first GPU run's model faulted, and its
# sanitizer reached none of these: bench/NOTES.md), each at its own shape: 16 warps with the
# vector stores and two 16-byte stores per row (block 14), stage_image with two images a tile
# (15), the project apart and its GEMM (17), the head at 10 images a program, the stem fused with
# block 1 (a 224 x 224 NCHW image); and every shipped config with recompute_sets set (blocks 11-13
# at batch >= 17: 16 warps, positions recomputed per tile).
UNRUN_ON_GPU = ["w1.0 block 14 float16", "w1.0 block 15 float16", "w1.0 block 17 float16",
                "w1.0 head, batch 256 float16", "w1.0 stem + block 1 float16"]


def _unrun_on_gpu():
    from mnv2_fast.tools.inventory import shipped_launches

    launches = {f"{x.label} {str(x.dtype)[6:]}": x for x in shipped_launches(widths=(1.0,))}
    recomputing = [label for label, x in launches.items()
                   if x.kind == "block" and x.dtype == torch.float16 and x.config.recompute_sets]
    return [pytest.param(launches[label], id=label.replace(" ", "_")) for label in recomputing + UNRUN_ON_GPU]


@pytest.mark.parametrize("launch", _unrun_on_gpu())
def test_shipped_configs_at_their_own_shapes(launch):
    """The shipped launch at the network's own map size over two images, its result right; in
    the interpreter also what compute-sanitizer's memcheck would check: every access inside its
    tensors and its program's scratch, in barrier order (three programs walking the tiles)."""
    from mnv2_fast.kernels import head
    from mnv2_fast.tools.inventory import run_once

    if not INTERPRETER:  # on a GPU: the launch itself (memcheck is bench/gpu_run.sh's)
        assert run_once(launch, DEVICE, batch=2) <= 1.0
        return
    with checked_launches(block, scratch_arg=SCRATCH_ARG, per_program=block_scratch) as blocks, \
            checked_launches(head) as gemms:
        ratio = run_once(launch, torch.device("cpu"), batch=2)
    assert blocks.launches + gemms.launches == (2 if getattr(launch.config, "project_apart", False) else 1)
    assert not blocks.problems and not gemms.problems, blocks.report() + gemms.report()
    assert ratio <= 1.0, ratio


def test_sanitizer_one_sm_makes_each_program_walk_many_tiles(monkeypatch):
    """gpu_run.sh's memcheck runs `sanitize --one-sm`: at its batch of 2 on a whole GPU every
    program would have at most one tile, and the persistent walk (what batch 256 runs) would go
    unchecked."""
    from mnv2_fast.tools.inventory import shipped_launches
    from mnv2_fast.tools.sanitize import one_multiprocessor

    monkeypatch.setattr(block, "_sm_count", block._sm_count)  # put back after the test
    launch = next(x for x in shipped_launches() if x.label == "w1.0 block 2" and x.dtype == torch.float16)
    one_multiprocessor()
    programs = block.programs_for(launch.shape, launch.config, 2, torch.device("cuda", 0))
    assert programs == launch.config.programs_per_sm
    assert launch.shape.tiles(launch.config, 2) >= 10 * programs
