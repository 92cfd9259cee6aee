"""fuse_block: torchvision and reference blocks, backends, dtype/device following, errors."""

import pytest
import torch
from torch import nn

from helpers import DEVICE, assert_close, make_block, nhwc, reference64
from mnv2_fast import UnsupportedBlockError, fuse_block
from mnv2_fast.fused import FusedInvertedResidual


@pytest.mark.parametrize("torchvision_block", [True, False])
@pytest.mark.parametrize("cin,cout,stride,t", [(32, 16, 1, 1), (16, 24, 2, 6), (24, 24, 1, 6), (64, 96, 1, 6)])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fuse_block_computes_the_block(cin, cout, stride, t, torchvision_block, backend):
    block = make_block(cin, cout, stride, t, torchvision_block=torchvision_block)
    fused = fuse_block(block, backend=backend).to(DEVICE)
    assert isinstance(fused, FusedInvertedResidual)
    x = torch.randn(2, cin, 9, 6, device=DEVICE)  # NCHW memory: the module converts
    y = fused(x)
    assert_close(y, reference64(block, x), torch.float32, backend)
    assert fused.spec.residual == (stride == 1 and cin == cout)
    assert (fused.spec.cin, fused.spec.cout, fused.spec.stride, fused.spec.t) == (cin, cout, stride, t)
    runs = "one Triton kernel" if backend == "triton" else "folded PyTorch ops"
    assert f"{runs}: {cin} -> {cin * t} (t={t}) -> {cout}" in repr(fused)  # extra_repr: what runs, what it computes


def test_auto_backend_picks_torch_for_cpu_tensors():
    block = make_block(16, 16, 1, 6)
    fused = fuse_block(block)  # auto
    x = torch.randn(1, 16, 5, 5)
    assert_close(fused(x), reference64(block, x), torch.float32, "auto on CPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_follows_to_dtype(dtype):
    block = make_block(24, 32, 2, 6)
    fused = fuse_block(block, backend="triton").to(DEVICE, dtype)
    assert fused.w_exp.dtype == dtype and fused.w_exp.device.type == DEVICE.type
    x = nhwc(torch.randn(3, 24, 7, 7)).to(DEVICE, dtype)
    y = fused(x)
    assert y.dtype == dtype
    assert_close(y, reference64(block, x), dtype, "after .to")


def test_block_is_not_modified():
    block = make_block(24, 24, 1, 6)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    fuse_block(block)
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_errors():
    block = make_block(16, 24, 2, 6)
    with pytest.raises(ValueError, match="training mode"):
        fuse_block(block.train())
    block.eval()
    with pytest.raises(ValueError, match="backend must be one of"):
        fuse_block(block, backend="cuda")
    fused = fuse_block(block, backend="triton").to(DEVICE)
    with pytest.raises(ValueError, match="16 input channels"):
        fused(torch.randn(1, 8, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="rank-4"):
        fused(torch.randn(16, 5, 5, device=DEVICE))
    with pytest.raises(TypeError, match="input is torch.float16"):
        fused(torch.randn(1, 16, 5, 5, device=DEVICE).half())
    with pytest.raises(UnsupportedBlockError, match="not an InvertedResidual"):
        fuse_block(nn.Conv2d(3, 3, 1))


def _mutated(fn):
    block = make_block(16, 24, 2, 6)
    fn(block)
    return block


@pytest.mark.parametrize("mutate,msg", [
    (lambda b: b.conv[1].__setitem__(2, nn.SiLU()), "activation SiLU is not supported"),
    (lambda b: setattr(b.conv[1][0], "dilation", (2, 2)), "dilation"),
    (lambda b: b.conv[1].__setitem__(0, nn.Conv2d(96, 96, 7, 2, 3, groups=96, bias=False)), "kernel"),
    (lambda b: b.conv.__delitem__(slice(2, 4)), "has 2 layers"),
    (lambda b: b.conv.__delitem__(3), "project: expected Conv2d, BatchNorm2d"),
    (lambda b: setattr(b.conv[1][0], "padding_mode", "reflect"), "padding"),
])
def test_unsupported_blocks_are_named(mutate, msg):
    with pytest.raises(UnsupportedBlockError, match=msg):
        fuse_block(_mutated(mutate).eval())


def test_hardtanh_0_6_counts_as_relu6():
    block = make_block(16, 24, 2, 6)
    block.conv[0][2] = nn.Hardtanh(0.0, 6.0)
    x = torch.randn(1, 16, 6, 6, device=DEVICE)
    assert_close(fuse_block(block, backend="triton").to(DEVICE)(x), reference64(block, x), torch.float32, "hardtanh")
