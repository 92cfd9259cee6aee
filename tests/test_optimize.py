"""optimize(): whole-model agreement with torchvision, the contract, the report, the errors."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from helpers import DEVICE, INTERPRETER, MODEL_TOLERANCE_FACTOR, assert_close, make_block, randomize_bn, reference64
import mnv2_fast
from mnv2_fast import CUDAGraphRunner, UnsupportedBlockError, fusion_report, optimize
from mnv2_fast.fused import FusedStemBlock

torchvision = pytest.importorskip("torchvision")


def _tv(width=1.0, k=1000):
    return randomize_bn(torchvision.models.mobilenet_v2(width_mult=width, num_classes=k)).eval()


@pytest.mark.parametrize("width,k,size,batch", [
    (0.5, 10, 64, 2), (0.5, 1000, 96, 1), (1.0, 10, 67, 1), (1.0, 1000, 64, 2), (0.5, 10, 33, 3),
])
def test_whole_model_matches_torchvision(width, k, size, batch):
    model = _tv(width, k)
    fast = optimize(model, backend="triton").to(DEVICE)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    with torch.no_grad():
        y = fast(x)
    assert y.shape == (batch, k)
    assert_close(y, reference64(model, x), torch.float32, "whole model")


def test_whole_model_fp16_and_channels_last_input():
    model = _tv(0.5, 10)
    fast = optimize(model, backend="triton").to(DEVICE, torch.float16)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last).to(DEVICE, torch.float16)
    with torch.no_grad():
        y = fast(x)
    assert y.dtype == torch.float16
    assert_close(y, reference64(model, x), torch.float16, "fp16 model", factor=MODEL_TOLERANCE_FACTOR)


def test_reference_model_and_torch_backend():
    model = randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.5, num_classes=7)).eval()
    x = torch.randn(1, 3, 48, 48)
    for backend in ("torch", "auto"):  # auto on a CPU tensor: folded PyTorch
        assert_close(optimize(model, backend=backend)(x), reference64(model, x), torch.float32, backend)


def test_argument_untouched_unless_inplace():
    model = _tv(0.5, 10)
    snapshot = copy.deepcopy(model)
    fast = optimize(model)
    assert fast is not model
    assert [type(m) for m in model.modules()] == [type(m) for m in snapshot.modules()]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), snapshot.state_dict().values()))
    assert not hasattr(model, "fusion_report")
    same = optimize(model, inplace=True)
    assert same is model and isinstance(model.features[2], mnv2_fast.FusedInvertedResidual)


def test_report_lists_every_part():
    fast = optimize(_tv(1.0, 1000))
    report = fusion_report(fast)
    assert report.entries == tuple(e if not e.fused else replace(e, detail=fast.get_submodule(e.name).describe(now=True))
                                   for e in fast.fusion_report.entries)
    parts = [e.part for e in report.entries]
    # Block 1 (t = 1) runs in the stem's kernel: features.0 absorbs features.1.
    assert parts.count("block") == 16 and parts.count("stem") == 1 and parts.count("head") == 1
    stem, first = report.entries[0], next(e for e in report.entries if e.name == "features.1")
    assert isinstance(fast.features[0], FusedStemBlock) and isinstance(fast.features[1], nn.Identity)
    assert stem.absorbed == ("features.1",) and "stem (3x3 conv stride 2" in stem.detail
    assert "32 -> 32 (t=1) -> 16" in stem.detail and "never written" in stem.detail
    assert first.part == "identity" and not first.fused and "folded into features.0" in first.detail
    assert all(e.fused for e in report.entries if e.part != "identity") and not report.not_fused
    text = str(report)
    assert "19 of 19 parts fused" in text and "features.17" in text and "global average pool" in text
    assert "dense 1280 -> 1000" in text


def test_unsupported_block_falls_back_with_auto_and_is_reported():
    model = _tv(0.5, 10)
    model.features[3].conv[1][2] = nn.SiLU()
    fast = optimize(model)
    bad = fast.fusion_report.not_fused
    assert [e.name for e in bad] == ["features.3"] and "SiLU" in bad[0].detail
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():  # the block kept as PyTorch has parameters that require grad
        assert_close(fast(x), reference64(model, x), torch.float32, "with fallback")
    with pytest.raises(UnsupportedBlockError, match="features.3.*does not fall back"):
        optimize(model, backend="triton")


def test_generic_module_with_blocks():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), make_block(16, 24, 2, 6), make_block(24, 24, 1, 6),
                        nn.AdaptiveAvgPool2d(1)).eval()
    fast = optimize(net, backend="triton").to(DEVICE)
    names = [e.name for e in fast.fusion_report.entries if e.fused]
    assert names == ["1", "2"]
    assert "(rest)" in str(fast.fusion_report)
    x = torch.randn(2, 3, 10, 10, device=DEVICE)
    with torch.no_grad():  # the kept Conv2d's parameters require grad
        assert_close(fast(x), reference64(net, x), torch.float32, "generic")


def test_errors():
    with pytest.raises(ValueError, match="training mode"):
        optimize(torchvision.models.mobilenet_v2(width_mult=0.5))
    model = _tv(0.5, 10)
    model.features[2].conv[0][1].train()
    with pytest.raises(ValueError, match=r"features\.2\.conv\.0\.1 \(BatchNorm2d\) is in training mode"):
        optimize(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        optimize(_tv(0.5, 10), backend="fast")
    with pytest.raises(ValueError, match="no InvertedResidual"):
        optimize(nn.Sequential(nn.Conv2d(3, 3, 1)).eval())
    with pytest.raises(TypeError, match="nn.Module"):
        optimize("mobilenet")
    with pytest.raises(ValueError, match="not produced by mnv2_fast.optimize"):
        fusion_report(nn.Linear(2, 2))
    fast = optimize(_tv(0.5, 10), backend="triton").to(DEVICE)
    with pytest.raises(ValueError, match="rank-4"):
        fast(torch.randn(3, 32, 32, device=DEVICE))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        fast(torch.randn(1, 1, 32, 32, device=DEVICE))
    with pytest.raises(TypeError, match="input is torch.float16"):
        fast(torch.randn(1, 3, 32, 32, device=DEVICE).half())
    with pytest.raises(TypeError, match="input is torch.int64"):
        fast(torch.ones(1, 3, 32, 32, dtype=torch.long, device=DEVICE))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="device mismatch needs weights off the input's device")
def test_device_mismatch_is_named():
    fast = optimize(_tv(0.5, 10), backend="triton").to("meta")
    with pytest.raises(ValueError, match="weights on meta but the input is on cpu"):
        fast(torch.randn(1, 3, 32, 32))


@pytest.mark.skipif(not INTERPRETER, reason="the CPU-without-interpreter error")
def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    fast = optimize(_tv(0.5, 10), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA tensor"):
        fast(torch.randn(1, 3, 32, 32))


def test_cuda_graph_runner_needs_cuda_input():
    runner = CUDAGraphRunner(optimize(_tv(0.5, 10)))
    assert runner.fusion_report is not None
    with pytest.raises(ValueError, match="CUDA input"):
        runner(torch.randn(1, 3, 32, 32))
