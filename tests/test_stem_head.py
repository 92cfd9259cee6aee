"""Stem, head (1x1 conv + pool) and classifier kernels against their float64 PyTorch twins
(kernels/reference.py, which test_optimize checks against the unfused model).  Every launch
reads from and writes into views of NaN-filled buffers (helpers.call_guarded); the stem's
NCHW inputs also have NaN channels, rows and columns around each image."""

import pytest
import torch

from helpers import DEVICE, INTERPRETER, assert_close, call_guarded, check_guard, guarded_empty, nhwc
from interpreter_checks import checked_launches
from mnv2_fast.kernels import HeadConfig, LinearConfig, StemConfig, head, head_pool, linear, output_size, reference, stem
from mnv2_fast.kernels import stem_conv


def _f64(*tensors):
    return [t.double().cpu() for t in tensors]


def _stem(x, weight, bias, pad=1, stride=2, **kwargs):
    """The stem on guarded copies (x padded by `pad` NaN channels, rows and columns, which
    keeps its layout's order), into a guarded output."""
    n, _, h, w = x.shape
    out_shape = (n, weight.shape[1], output_size(h, stride), output_size(w, stride))
    return call_guarded(stem_conv, x, weight, bias, out_shape=out_shape, pad=pad, stride=stride, **kwargs)


def _head(x, weight, bias, config=None, **kwargs):
    """Guarded as many rows deep as a program has images (a missing image mask stores up to
    imgs - 1 rows past the output)."""
    return call_guarded(head_pool, x, weight, bias, out_shape=(x.shape[0], weight.shape[1]), out_layout="rows",
                        images=config.imgs if config else 16, config=config, **kwargs)


def _linear(a, weight, bias, **kwargs):
    return call_guarded(linear, a, weight, bias, out_shape=(a.shape[0], weight.shape[1]), out_layout="rows", **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,h,w", [(1, 17, 15), (3, 8, 8), (2, 1, 1), (1, 33, 7)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_stem(n, h, w, dtype, layout):
    x = torch.randn(n, 3, h, w)
    x = (nhwc(x) if layout == "nhwc" else x).to(DEVICE, dtype)
    weight, bias = torch.randn(32, 3, 3, 3), torch.randn(32)
    k = weight.reshape(32, 27).t().contiguous().to(DEVICE, dtype)
    y = _stem(x, k, bias.to(DEVICE), pad=1 if layout == "nchw" else 0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, reference.stem_conv(*_f64(x, k, bias)), dtype, "stem")


@pytest.mark.parametrize("tile_h,tile_w,block_co", [(4, 4, 16), (2, 8, 32), (8, 2, 16), (1, 16, 64)])
def test_stem_small_tiles_and_other_widths(tile_h, tile_w, block_co):
    # 13 x 11 -> 7 x 6 outputs: tiles with interior pixels, tiles on every border, ragged tiles;
    # 24 output channels in one or two channel programs.
    x = torch.randn(2, 3, 13, 11, device=DEVICE)
    weight, bias = torch.randn(27, 24, device=DEVICE), torch.randn(24, device=DEVICE)
    y = _stem(x, weight, bias, config=StemConfig(tile_h=tile_h, tile_w=tile_w, block_co=block_co))
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias)), torch.float32, "stem tiles")


@pytest.mark.parametrize("cin,stride", [(1, 2), (4, 2), (3, 1)])
def test_stem_other_input_channels_and_stride_1(cin, stride):
    # CIN = 1 (one step of 16 columns), CIN = 4 (36 columns: two steps of 32), stride 1.
    x = torch.randn(2, cin, 9, 10, device=DEVICE)
    weight, bias = torch.randn(cin * 9, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    y = _stem(x, weight, bias, stride=stride, config=StemConfig(tile_h=4, tile_w=8, block_co=16))
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias), stride=stride), torch.float32, "stem cin/stride")


@pytest.mark.parametrize("view", ["cropped", "channel_slice", "batch_slice"])
def test_stem_any_strides(view):
    # The kernel is specialised on the strides it is given: views that are neither NCHW- nor
    # NHWC-contiguous read the right elements, and none of the NaN between them.
    base = torch.full((4, 5, 12, 14), float("nan"), device=DEVICE)
    x = {"cropped": base[:, :3, 1:10, 2:13], "channel_slice": nhwc(base)[:, 1:4],
         "batch_slice": base[::2, 2:]}[view]
    x.copy_(torch.randn(x.shape))
    weight, bias = torch.randn(27, 32, device=DEVICE), torch.randn(32, device=DEVICE)
    out = guarded_empty((x.shape[0], 32, output_size(x.shape[2], 2), output_size(x.shape[3], 2)), torch.float32)
    y = stem_conv(x, weight, bias, config=StemConfig(tile_h=4, tile_w=4, block_co=32), out=out)
    check_guard(out, "stem output")
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias)), torch.float32, f"stem {view}")


def test_stem_batch_1_at_full_size():
    # A whole 224 x 224 image: interior tiles far from every border, with the default config.
    x = torch.randn(1, 3, 224, 224).to(DEVICE, torch.float16)
    weight = (torch.randn(27, 32, device=DEVICE) * 0.3).half()
    bias = torch.randn(32, device=DEVICE)
    y = _stem(x, weight, bias)
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias)), torch.float16, "stem 224")


def test_stem_batches_beyond_one_grid(monkeypatch):
    # Grid axis 2 holds the images, at most 65535 per launch: larger batches take several.
    from mnv2_fast.kernels import stem

    monkeypatch.setattr(stem, "_MAX_GRID_Z", 2)
    x = torch.randn(5, 3, 6, 7, device=DEVICE)
    weight, bias = torch.randn(27, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    y = _stem(x, weight, bias, config=StemConfig(tile_h=4, tile_w=4, block_co=16))
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias)), torch.float32, "stem batches")


def test_stem_config_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="tile_h \\* tile_w=24"):
        StemConfig(tile_h=3, tile_w=8)
    with pytest.raises(ValueError, match="block_co=8"):
        StemConfig(block_co=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,cin,h,w,cout,cfg", [
    (2, 320, 7, 7, 1280, None),
    (3, 160, 3, 2, 1280, None),
    (1, 48, 5, 9, 40, HeadConfig(block_p=16, block_k=16, block_n=16)),  # several pixel chunks, ragged
    (7, 48, 5, 3, 40, HeadConfig(imgs=3, block_p=16, block_k=32, block_n=32)),  # images across chunks, last group short
    (17, 24, 2, 3, 16, HeadConfig(imgs=16, block_p=64, block_k=16, block_n=16)),  # 16 images, 6 pixels each
    (4, 40, 7, 7, 72, HeadConfig(imgs=2, block_p=32, block_k=16, block_n=64)),  # CIN ragged in K, COUT in N
])
def test_head_pool(n, cin, h, w, cout, cfg, dtype):
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    weight, bias = (torch.randn(cin, cout) / cin ** 0.5).to(DEVICE, dtype), torch.randn(cout, device=DEVICE)
    y = _head(x, weight, bias, config=cfg)
    assert_close(y, reference.head_pool(*_f64(x, weight, bias)), dtype, "head")


@pytest.mark.parametrize("batch", [1, 12])
def test_head_pool_gpu_configs(batch):
    # The configs a GPU picks at batch 1 and at large batches (10 images per program, here with
    # a short last group), run through the interpreter.
    from mnv2_fast.kernels.choice import choose_head_config

    cfg = choose_head_config(320, 1280, 49, 256 if batch > 1 else 1, torch.device("cuda"))
    x = nhwc(torch.randn(batch, 320, 7, 7)).to(DEVICE, torch.float16)
    weight, bias = (torch.randn(320, 1280) / 320 ** 0.5).to(DEVICE, torch.float16), torch.randn(1280, device=DEVICE)
    y = _head(x, weight, bias, config=cfg)
    assert_close(y, reference.head_pool(*_f64(x, weight, bias)), torch.float16, f"head {cfg}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k,nout,cfg", [
    (1, 1280, 1000, None), (5, 1280, 10, None), (33, 64, 3, LinearConfig(block_m=16, block_n=16, block_k=16)),
])
def test_linear(m, k, nout, cfg, dtype):
    a = torch.randn(m, k).to(DEVICE, dtype)
    weight, bias = (torch.randn(k, nout) / k ** 0.5).to(DEVICE, dtype), torch.randn(nout, device=DEVICE)
    y = _linear(a, weight, bias, config=cfg)
    assert_close(y, reference.linear(*_f64(a, weight, bias)), dtype, "linear")


@pytest.mark.parametrize("batch,m", [(1, 1), (70, 70), (256, 70)])
def test_linear_gpu_configs(batch, m):
    # The configs a GPU picks at a batch (16 x 16 tiles at batch <= 16; 64 x 16 and 64 x 32
    # above), run through the interpreter on m rows; K = 1280 in steps of 256.
    from mnv2_fast.kernels.choice import choose_linear_config

    cfg = choose_linear_config(batch, 1280, 1000, torch.device("cuda"))
    a = torch.randn(m, 1280).to(DEVICE, torch.float16)
    weight, bias = (torch.randn(1280, 1000) / 1280 ** 0.5).to(DEVICE, torch.float16), torch.randn(1000, device=DEVICE)
    y = _linear(a, weight, bias, config=cfg)
    assert_close(y, reference.linear(*_f64(a, weight, bias)), torch.float16, f"linear {cfg}")


def test_errors():
    with pytest.raises(ValueError, match="rank 4"):
        stem_conv(torch.randn(3, 8, 8, device=DEVICE), torch.randn(27, 32, device=DEVICE), torch.randn(32, device=DEVICE))
    with pytest.raises(ValueError, match=r"\[3\*9, COUT\]"):
        stem_conv(torch.randn(1, 3, 8, 8, device=DEVICE), torch.randn(9, 32, device=DEVICE), torch.randn(32, device=DEVICE))
    with pytest.raises(TypeError, match="dtype"):
        stem_conv(torch.randn(1, 3, 8, 8, device=DEVICE).half(), torch.randn(27, 32, device=DEVICE),
                  torch.randn(32, device=DEVICE))
    with pytest.raises(ValueError, match="channels_last"):
        head_pool(torch.randn(1, 8, 3, 3, device=DEVICE), torch.randn(8, 16, device=DEVICE), torch.randn(16, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight must have shape \[CIN, COUT\] with 8 rows"):
        head_pool(nhwc(torch.randn(1, 8, 3, 3, device=DEVICE)), torch.randn(9, 16, device=DEVICE),
                  torch.randn(16, device=DEVICE))
    with pytest.raises(ValueError, match="rank 2"):
        linear(torch.randn(2, 3, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE), torch.randn(4, device=DEVICE))
    with pytest.raises(ValueError, match="bias has shape"):
        linear(torch.randn(2, 3, device=DEVICE), torch.randn(3, 4, device=DEVICE), torch.randn(5, device=DEVICE))


@pytest.mark.skipif(not INTERPRETER, reason="checks the interpreter's loads and stores")
@pytest.mark.parametrize("kind,cfg", [
    ("stem", StemConfig(tile_h=4, tile_w=4, block_co=16)), ("stem", StemConfig(tile_h=8, tile_w=16, block_co=32)),
    ("head", HeadConfig(imgs=3, block_p=16, block_k=32, block_n=32)), ("head", HeadConfig(block_p=64, block_k=64)),
    ("linear", LinearConfig(block_m=16, block_n=16, block_k=16)), ("linear", LinearConfig(block_k=128)),
])
def test_every_access_is_in_bounds(kind, cfg):
    """No load or store outside the launch's tensors, ragged tiles, channels and image groups
    included (tests/interpreter_checks.py)."""
    if kind == "stem":
        x, w, b = torch.randn(2, 3, 13, 11), torch.randn(27, 24), torch.randn(24)
        call, ref = (lambda: _stem(x, w, b, config=cfg)), reference.stem_conv
    elif kind == "head":
        x, w, b = nhwc(torch.randn(7, 48, 5, 3)), torch.randn(48, 40) / 7, torch.randn(40)
        call, ref = (lambda: _head(x, w, b, config=cfg)), reference.head_pool
    else:
        x, w, b = torch.randn(33, 72), torch.randn(72, 10) / 8, torch.randn(10)
        call, ref = (lambda: _linear(x, w, b, config=cfg)), reference.linear
    with checked_launches(stem if kind == "stem" else head) as check:
        y = call()
    assert check.launches == 1 and check.accesses > 0
    assert not check.problems, check.report()
    assert_close(y, ref(*_f64(x, w, b)), torch.float32, kind)
