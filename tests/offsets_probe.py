"""Each kernel's offset arithmetic past 2^31 elements, on the CPU (run by test_int64.py, in a
child process of its own: a wrapped offset may crash the process that follows it).

    python tests/offsets_probe.py block stem stem_block head linear

For each kernel: a launch over tensors of more than 2^31 elements, of which only the last
images are backed by memory (anonymous mappings reserve nothing: untouched pages cost
nothing and read as zeros).  Under Triton's interpreter only the programs of those images
run, each seeing the launch's whole grid; their outputs are compared with the float64
reference of the same images, and the images around them, filled with NaN, must be NaN still
(in the input: a read there shows in the output; in the output: a stray store).  An offset
kept in 32 bits wraps, reads elsewhere and stores elsewhere: the output is wrong, or the
process crashes.  Prints one JSON line per kernel: {"kernel", "ok", "detail"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import release_sparse, sparse_empty  # noqa: E402

from mnv2_fast.kernels import (  # noqa: E402
    BlockConfig,
    HeadConfig,
    LinearConfig,
    StemConfig,
    block,
    head,
    reference,
    stem,
)
from mnv2_fast.tools.testing import error_ratio  # noqa: E402

INT32 = 2**31
FP16 = torch.float16
CPU = torch.device("cpu")  # the interpreter's tensors, on a GPU machine too


def sparse_nhwc(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return sparse_empty((n, c, h, w), device=CPU, channels_last=True)


@contextlib.contextmanager
def only_programs(module, pick):
    """Launches through `module.launch` run only the programs pick(grid) lists, as (x, y, z),
    each seeing the launch's whole grid in tl.program_id and tl.num_programs.  (Triton's
    interpreter runs a grid (k,) of programs with the real grid's size set and each index
    mapped to a picked program.)"""
    from triton.runtime.interpreter import interpreter_builder as builder

    real_launch = module.launch

    def launch(kernel, grid, x, *args, **kwargs):
        grid = (*grid, *(1,) * (3 - len(grid)))
        picked = pick(grid)
        set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
        builder.set_grid_dim = lambda *_: set_dim(*grid)
        builder.set_grid_idx = lambda i, j, k: set_idx(*picked[i])
        try:
            real_launch(kernel, (len(picked),), x, *args, **kwargs)
        finally:
            del builder.set_grid_dim, builder.set_grid_idx
        ran.append(len(picked))

    ran: list[int] = []
    module.launch = launch
    try:
        yield ran
    finally:
        module.launch = real_launch


def _compare(y, ref, what: str) -> None:
    ratio = error_ratio(y, ref, FP16)
    if not ratio <= 1.0:
        raise AssertionError(f"{what}: error {ratio:.3g} x the float16 tolerance (an offset wrapped?)")


def _all_nan(t, what: str) -> None:
    if not torch.isnan(t).all():
        raise AssertionError(f"{what}: {int((~torch.isnan(t)).sum())} element(s) overwritten (a stray store)")


def _check_window(y, lo: int, hi: int, ref, what: str) -> None:
    """y[lo:hi] (images or rows past 2^31 elements) against ref; y[lo - 1] and y[hi] (y holds
    one more at the end) still NaN."""
    _compare(y[lo:hi], ref, f"{what}, past 2^31")
    _all_nan(y[lo - 1], f"{what}, the output before")
    _all_nan(y[hi], f"{what}, the output past the end")


def probe_block() -> str:
    """8 x 8 images of 320 channels (20480 elements): images from 104858 on start past 2^31, in
    the input and in the output.  Expand to 64, project to 320 (two output parts), residual;
    tiles of 2 images x 4 x 8 pixels."""
    cin, hidden, cout, h, w = 320, 64, 320, 8, 8
    per_image = h * w * cin
    first = -(-INT32 // per_image)  # the first image that starts past 2^31
    n = first + 2
    assert n * per_image > INT32 and first * per_image >= INT32
    assert first % 2 == 0  # the window is one group of two images
    x = sparse_nhwc(n, cin, h, w)
    y_all = sparse_nhwc(n + 1, cout, h, w)  # one image after the output: a guard
    y = y_all[:n]
    g = torch.Generator().manual_seed(0)
    win = slice(first, n)
    x[first - 1].fill_(float("nan"))  # the image before the window: read, it shows
    x[win] = torch.randn(2, cin, h, w, generator=g).to(FP16)
    y_all[first - 1:].fill_(float("nan"))
    weights = [torch.randn(cin, hidden, generator=g) / cin ** 0.5, torch.randn(hidden, generator=g),
               torch.randn(9, hidden, generator=g) / 3, torch.randn(hidden, generator=g),
               torch.randn(hidden, cout, generator=g) / hidden ** 0.5, torch.randn(cout, generator=g)]
    weights = [t.to(FP16) for t in weights]
    cfg = BlockConfig(tile_h=4, tile_w=8, imgs=2, block_hid=16)
    shape = block.BlockShape(cin, hidden, cout, 1, h, w, True, True)
    tiles_hw = shape.tiles(cfg, 1)
    window_tiles = range(first // cfg.imgs * tiles_hw, shape.tiles(cfg, n))
    real_programs_for = block.programs_for
    block.programs_for = lambda s, c, batch, device: s.tiles(c, batch)  # one tile per program
    try:
        with only_programs(block, lambda grid: [(t, 0, 0) for t in window_tiles]) as ran:
            block.inverted_residual(x, *weights, stride=1, residual=True, config=cfg, out=y)
    finally:
        block.programs_for = real_programs_for
    assert ran == [len(window_tiles)]
    ref = reference.inverted_residual(x[win].double(), *[t.double() for t in weights], stride=1, residual=True)
    _check_window(y_all, first, n, ref, "block")
    return f"{n} images of {per_image} elements: programs of images {first}..{n - 1} (offsets up to {n * per_image})"


def _last_image(n: int, cin: int, h: int, w: int, cout: int, ho: int, seed: int):
    """(x, y, generator): n + 1 sparse NCHW images whose image n - 1 is random and the images
    around it NaN, and an NHWC output of n + 1 images of ho x ho, NaN from image n - 2 on."""
    x = sparse_empty((n + 1, cin, h, w), device=CPU)
    y = sparse_nhwc(n + 1, cout, ho, ho)
    g = torch.Generator().manual_seed(seed)
    x[n - 1] = torch.randn(cin, h, w, generator=g).to(FP16)
    x[n - 2].fill_(float("nan"))
    x[n].fill_(float("nan"))
    y[n - 2:].fill_(float("nan"))
    return x, y, g


def probe_stem() -> str:
    """224 x 224 x 3 NCHW images (150528 elements): image 14267 starts past 2^31 in the input,
    and the output (112 x 112 x 16 per image) passes 2^31 from image 10700."""
    cin, cout, h, w = 3, 16, 224, 224
    per_image, ho = cin * h * w, 112
    n = -(-INT32 // per_image) + 1
    last = n - 1
    assert last * per_image >= INT32
    x, y, g = _last_image(n, cin, h, w, cout, ho, seed=1)
    weight, bias = (torch.randn(cin * 9, cout, generator=g) / 4).to(FP16), torch.randn(cout, generator=g).to(FP16)
    cfg = StemConfig(tile_h=16, tile_w=32, block_co=16)

    def pick(grid):
        return [(i, j, last) for i in range(grid[0]) for j in range(grid[1])]

    with only_programs(stem, pick) as ran:
        stem.stem_conv(x[:n], weight, bias, config=cfg, out=y[:n])
    assert ran == [28]  # 4 x 7 tiles of the last image
    ref = reference.stem_conv(x[last:n].double(), weight.double(), bias.double())
    _check_window(y, last, n, ref, "stem")
    return f"{n} images of {per_image} elements: the programs of image {last} (offsets up to {n * per_image})"


def probe_stem_block() -> str:
    """The stem with block 1 (kernels.block.stem_block) on 64 x 64 x 3 NCHW images (12288
    elements): image 174763 starts past 2^31 in the input; the output (32 x 32 x 16 per image)
    passes 2^31 from image 131072.  One tile of 8 x 8 outputs per program."""
    cin, hidden, cout, h, w = 3, 16, 16, 64, 64
    per_image, ho = cin * h * w, 32
    first = -(-INT32 // per_image)
    n = first + 1
    assert first * per_image >= INT32
    x, y, g = _last_image(n, cin, h, w, cout, ho, seed=4)
    weights = [torch.randn(cin * 9, hidden, generator=g) / 4, torch.randn(hidden, generator=g),
               torch.randn(9, hidden, generator=g) / 3, torch.randn(hidden, generator=g),
               torch.randn(hidden, cout, generator=g) / hidden ** 0.5, torch.randn(cout, generator=g)]
    weights = [t.to(FP16) for t in weights]
    cfg = BlockConfig(tile_h=8, tile_w=8, block_hid=16, join_pairs=True, quads=True)
    shape = block.BlockShape(hidden, hidden, cout, 1, 0, 0, False, False).with_stem(cin, "relu6", h, w)
    tiles_hw = shape.tiles(cfg, 1)
    window_tiles = range(first * tiles_hw, n * tiles_hw)
    real_programs_for = block.programs_for
    block.programs_for = lambda s, c, batch, device: s.tiles(c, batch)  # one tile per program
    try:
        with only_programs(block, lambda grid: [(t, 0, 0) for t in window_tiles]) as ran:
            block.stem_block(x[:n], *weights, config=cfg, out=y[:n])
    finally:
        block.programs_for = real_programs_for
    assert ran == [tiles_hw]
    ref = reference.stem_block(x[first:n].double(), *[t.double() for t in weights])
    _check_window(y, first, n, ref, "stem_block")
    return f"{n} images of {per_image} elements: the programs of image {first} (offsets up to {n * per_image})"


def probe_head() -> str:
    """7 x 7 x 320 images (15680 elements) in groups of 16: the last group (10 images) starts
    past 2^31."""
    cin, cout, h, w, imgs = 320, 64, 7, 7, 16
    per_image = h * w * cin
    first = -(-INT32 // per_image // imgs) * imgs  # the first group past 2^31
    n = first + 10
    assert first * per_image >= INT32
    x = sparse_nhwc(n + 1, cin, h, w)
    y = sparse_empty((n + 1, cout), device=CPU)
    g = torch.Generator().manual_seed(2)
    x[first - 1].fill_(float("nan"))
    x[first:n] = torch.randn(n - first, cin, h, w, generator=g).to(FP16)
    x[n].fill_(float("nan"))
    y[first - 1:].fill_(float("nan"))
    weight, bias = (torch.randn(cin, cout, generator=g) / cin ** 0.5).to(FP16), torch.randn(cout, generator=g).to(FP16)
    cfg = HeadConfig(imgs=imgs, block_p=128, block_k=64, block_n=64)
    with only_programs(head, lambda grid: [(grid[0] - 1, j, 0) for j in range(grid[1])]) as ran:
        head.head_pool(x[:n], weight, bias, config=cfg, out=y[:n])
    assert ran == [1]
    ref = reference.head_pool(x[first:n].double(), weight.double(), bias.double())
    _check_window(y, first, n, ref, "head")
    return f"{n} images of {per_image} elements: the program of images {first}..{n - 1} (offsets up to {n * per_image})"


def probe_linear() -> str:
    """Rows of 1280 features: the last 16 rows start past 2^31."""
    k, nout, block_m = 1280, 16, 16
    m = -(-INT32 // k // block_m) * block_m + block_m
    first = m - block_m
    assert first * k >= INT32
    a = sparse_empty((m + 1, k), device=CPU)
    y = sparse_empty((m + 1, nout), device=CPU)
    g = torch.Generator().manual_seed(3)
    a[first - 1].fill_(float("nan"))
    a[first:m] = torch.randn(block_m, k, generator=g).to(FP16)
    a[m].fill_(float("nan"))
    y[first - 1:].fill_(float("nan"))
    weight, bias = (torch.randn(k, nout, generator=g) / k ** 0.5).to(FP16), torch.randn(nout, generator=g).to(FP16)
    cfg = LinearConfig(block_m=block_m, block_n=16, block_k=256)
    with only_programs(head, lambda grid: [(grid[0] - 1, 0, 0)]) as ran:
        head.linear(a[:m], weight, bias, config=cfg, out=y[:m])
    assert ran == [1]
    ref = reference.linear(a[first:m].double(), weight.double(), bias.double())
    _check_window(y, first, m, ref, "linear")
    return f"{m} rows of {k}: the program of rows {first}..{m - 1} (offsets up to {m * k})"


PROBES = {"block": probe_block, "stem": probe_stem, "stem_block": probe_stem_block, "head": probe_head,
          "linear": probe_linear}


def main(names: list[str]) -> int:
    for name in names:
        print(json.dumps({"kernel": name, "started": True}), flush=True)
        try:
            result = {"kernel": name, "ok": True, "detail": PROBES[name]()}
        except Exception as err:  # report, and go on with the next kernel
            result = {"kernel": name, "ok": False, "detail": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()[-3000:]}
        release_sparse()
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(PROBES)))
