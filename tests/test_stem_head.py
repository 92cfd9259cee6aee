"""Stem, head (1x1 conv + pool) and classifier kernels against their float64 PyTorch twins
(kernels/reference.py, which test_optimize checks against the unfused model)."""

import pytest
import torch

from helpers import DEVICE, assert_close, nhwc
from mnv2_fast.kernels import HeadConfig, LinearConfig, StemConfig, head_pool, linear, output_size, reference, stem_conv


def _f64(*tensors):
    return [t.double().cpu() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,h,w", [(1, 17, 15), (3, 8, 8), (2, 1, 1), (1, 33, 7)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_stem(n, h, w, dtype, layout):
    x = torch.randn(n, 3, h, w)
    x = (nhwc(x) if layout == "nhwc" else x).to(DEVICE, dtype)
    weight, bias = torch.randn(32, 3, 3, 3), torch.randn(32)
    k = weight.reshape(32, 27).t().contiguous().to(DEVICE, dtype)
    out = torch.full((n, 32, output_size(h, 2), output_size(w, 2)), float("nan"), dtype=dtype, device=DEVICE)
    out = nhwc(out)
    y = stem_conv(x, k, bias.to(DEVICE), out=out)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, reference.stem_conv(*_f64(x, k, bias)), dtype, "stem")


def test_stem_small_tiles_and_other_widths():
    x = torch.randn(2, 3, 13, 11, device=DEVICE)
    weight, bias = torch.randn(27, 24, device=DEVICE), torch.randn(24, device=DEVICE)
    y = stem_conv(x, weight, bias, config=StemConfig(block_p=16, block_co=16))
    assert_close(y, reference.stem_conv(*_f64(x, weight, bias)), torch.float32, "stem tiles")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,cin,h,w,cout,cfg", [
    (2, 320, 7, 7, 1280, None),
    (3, 160, 3, 2, 1280, None),
    (1, 48, 5, 9, 40, HeadConfig(block_p=16, block_k=16, block_n=16)),  # several pixel steps, ragged
])
def test_head_pool(n, cin, h, w, cout, cfg, dtype):
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    weight, bias = (torch.randn(cin, cout) / cin ** 0.5).to(DEVICE, dtype), torch.randn(cout, device=DEVICE)
    out = torch.full((n, cout), float("nan"), dtype=dtype, device=DEVICE)
    y = head_pool(x, weight, bias, config=cfg, out=out)
    assert_close(y, reference.head_pool(*_f64(x, weight, bias)), dtype, "head")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k,nout,cfg", [
    (1, 1280, 1000, None), (5, 1280, 10, None), (33, 64, 3, LinearConfig(block_m=16, block_n=16, block_k=16)),
])
def test_linear(m, k, nout, cfg, dtype):
    a = torch.randn(m, k).to(DEVICE, dtype)
    weight, bias = (torch.randn(k, nout) / k ** 0.5).to(DEVICE, dtype), torch.randn(nout, device=DEVICE)
    y = linear(a, weight, bias, config=cfg)
    assert_close(y, reference.linear(*_f64(a, weight, bias)), dtype, "linear")


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
