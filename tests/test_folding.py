"""BN folding: exact in float64, cast once, refuses training-mode BatchNorm."""

import pytest
import torch
from torch import nn

from helpers import randomize_bn
from mnv2_fast import fold_bn


@pytest.mark.parametrize("eps", [1e-5, 1e-3])  # PyTorch's default; Keras' (ported weights)
@pytest.mark.parametrize("cin,cout,k,groups,stride", [
    (16, 96, 1, 1, 1),  # expand
    (96, 96, 3, 96, 2),  # depthwise
    (3, 32, 3, 1, 2),  # stem
    (96, 24, 1, 1, 1),  # project
])
def test_fold_matches_conv_then_bn(cin, cout, k, groups, stride, eps):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False).double()
    bn = randomize_bn(nn.BatchNorm2d(cout)).double().eval()
    bn.eps = eps
    w, b = fold_bn(conv, bn)
    assert w.shape == conv.weight.shape and w.dtype == torch.float64
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    ref = bn(conv(x))
    out = nn.functional.conv2d(x, w, b, stride, k // 2, groups=groups)
    assert (out - ref).abs().max().item() < 1e-12


def test_fold_handles_conv_bias_and_no_affine():
    conv = nn.Conv2d(4, 6, 1, bias=True).double()
    bn = nn.BatchNorm2d(6, affine=False).double().eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 2)
    w, b = fold_bn(conv, bn)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    assert torch.allclose(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_fold_is_computed_in_float64_then_cast(eps):
    """A tiny running variance: folding in fp16 would lose digits; ours rounds once."""
    conv = nn.Conv2d(8, 8, 1, bias=False).half()
    bn = nn.BatchNorm2d(8, eps=eps).half().eval()
    with torch.no_grad():
        bn.running_var.fill_(1e-4)
        bn.running_mean.uniform_(-1, 1)
    w, b = fold_bn(conv, bn)
    assert w.dtype == torch.float16
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    exact = (conv.weight.double() * scale.view(-1, 1, 1, 1)).half()
    assert torch.equal(w, exact)
    w32, _ = fold_bn(conv, bn, dtype=torch.float32)
    assert torch.equal(w32, (conv.weight.double() * scale.view(-1, 1, 1, 1)).float())


def test_training_mode_batchnorm_is_refused():
    conv, bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="training mode"):
        fold_bn(conv, bn.train())


def test_untracked_statistics_and_mismatch_are_refused():
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="output channels"):
        fold_bn(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(4).eval())
    with pytest.raises(TypeError, match="BatchNorm"):
        fold_bn(nn.Conv2d(4, 4, 1), nn.ReLU())
