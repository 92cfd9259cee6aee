"""Stem, head (1x1 conv + pool) and classifier kernels against float64 PyTorch."""

import pytest
import torch
import torch.nn.functional as F

from helpers import DEVICE, assert_close, nhwc
from mnv2_fast.kernels import HeadConfig, LinearConfig, StemConfig, head_pool, linear, stem_conv


def _stem_ref(x, w, b, stride=2):
    return F.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), stride=stride, padding=1).clamp(0, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,h,w", [(1, 17, 15), (3, 8, 8), (2, 1, 1), (1, 33, 7)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_stem(n, h, w, dtype, layout):
    x = torch.randn(n, 3, h, w)
    x = (nhwc(x) if layout == "nhwc" else x).to(DEVICE, dtype)
    weight, bias = torch.randn(32, 3, 3, 3), torch.randn(32)
    k = weight.reshape(32, 27).t().contiguous().to(DEVICE, dtype)
    out = torch.full((n, 32, (h - 1) // 2 + 1, (w - 1) // 2 + 1), float("nan"), dtype=dtype, device=DEVICE)
    out = nhwc(out)
    y = stem_conv(x, k, bias.to(DEVICE), out=out)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, _stem_ref(x, weight.to(dtype), bias), dtype, "stem")


def test_stem_small_tiles_and_other_widths():
    x = torch.randn(2, 3, 13, 11, device=DEVICE)
    weight, bias = torch.randn(24, 3, 3, 3), torch.randn(24)
    y = stem_conv(x, weight.reshape(24, 27).t().contiguous().to(DEVICE), bias.to(DEVICE),
                  config=StemConfig(block_p=16, block_co=16))
    assert_close(y, _stem_ref(x, weight, bias), torch.float32, "stem tiles")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,cin,h,w,cout,cfg", [
    (2, 320, 7, 7, 1280, None),
    (3, 160, 3, 2, 1280, None),
    (1, 48, 5, 9, 40, HeadConfig(block_p=16, block_k=16, block_n=16)),  # several pixel steps, ragged
])
def test_head_pool(n, cin, h, w, cout, cfg, dtype):
    x = nhwc(torch.randn(n, cin, h, w)).to(DEVICE, dtype)
    weight, bias = torch.randn(cout, cin) / cin ** 0.5, torch.randn(cout)
    out = torch.full((n, cout), float("nan"), dtype=dtype, device=DEVICE)
    y = head_pool(x, weight.t().contiguous().to(DEVICE, dtype), bias.to(DEVICE), config=cfg, out=out)
    ref = F.conv2d(x.double().cpu(), weight.to(dtype).double()[:, :, None, None], bias.double()).clamp(0, 6)
    assert_close(y, ref.mean(dim=(2, 3)), dtype, "head")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k,nout,cfg", [
    (1, 1280, 1000, None), (5, 1280, 10, None), (33, 64, 3, LinearConfig(block_m=16, block_n=16, block_k=16)),
])
def test_linear(m, k, nout, cfg, dtype):
    a = torch.randn(m, k).to(DEVICE, dtype)
    weight, bias = torch.randn(nout, k) / k ** 0.5, torch.randn(nout)
    y = linear(a, weight.t().contiguous().to(DEVICE, dtype), bias.to(DEVICE), config=cfg)
    ref = a.double().cpu() @ weight.to(dtype).double().t() + bias.double()
    assert_close(y, ref, dtype, "linear")


def test_errors():
    with pytest.raises(ValueError, match="rank-4"):
        stem_conv(torch.randn(3, 8, 8, device=DEVICE), torch.randn(27, 32, device=DEVICE), torch.randn(32, device=DEVICE))
    with pytest.raises(ValueError, match=r"\[3\*9, COUT\]"):
        stem_conv(torch.randn(1, 3, 8, 8, device=DEVICE), torch.randn(9, 32, device=DEVICE), torch.randn(32, device=DEVICE))
    with pytest.raises(TypeError, match="dtype"):
        stem_conv(torch.randn(1, 3, 8, 8, device=DEVICE).half(), torch.randn(27, 32, device=DEVICE),
                  torch.randn(32, device=DEVICE))
    with pytest.raises(ValueError, match="channels_last"):
        head_pool(torch.randn(1, 8, 3, 3, device=DEVICE), torch.randn(8, 16, device=DEVICE), torch.randn(16, device=DEVICE))
    with pytest.raises(ValueError, match="weight has shape"):
        head_pool(nhwc(torch.randn(1, 8, 3, 3, device=DEVICE)), torch.randn(9, 16, device=DEVICE),
                  torch.randn(16, device=DEVICE))
    with pytest.raises(ValueError, match="rank-2"):
        linear(torch.randn(2, 3, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE), torch.randn(4, device=DEVICE))
    with pytest.raises(ValueError, match="bias has shape"):
        linear(torch.randn(2, 3, device=DEVICE), torch.randn(3, 4, device=DEVICE), torch.randn(5, device=DEVICE))
