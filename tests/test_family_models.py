"""Whole models of the inverted-residual family: optimize() fuses every block (stem, head and
classifier where the kernels compute them) and the result agrees with the unfused model in
float64; the fusion report counts the parts; squeeze-excite models keep those blocks, say so,
and are an error with backend="triton".

Random weights (mnv2_fast.tools.zoo: torchvision's conv init, trained-looking BN), small
inputs: on a CPU-only machine the kernels run through Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, reference64
from mnv2_fast import UnsupportedBlockError, fusion_report, optimize
from mnv2_fast.fused import FusedStemBlock
from mnv2_fast.tools import zoo

pytest.importorskip("timm")

# One model per family and variant, at small sizes (odd and even, TF "same" padding both ways).
RUNS = [
    ("mnasnet0_5", 32, 2, torch.float32),  # torchvision: ReLU, 3x3/5x5, its stem's separable pair
    ("mobilenetv2_035", 32, 1, torch.float16),  # timm MobileNetV2: depthwise-separable first block
    ("mobilenetv2_110d", 33, 1, torch.float32),  # the deeper variant
    ("efficientnet_lite0", 32, 1, torch.float32),  # ReLU6, 5x5
    ("timm.tf_efficientnet_lite0", 34, 1, torch.float32),  # TF "same" padding, even size (stem and blocks)
    ("timm.tf_efficientnet_lite0", 35, 1, torch.float16),  # ... odd size
    ("mnasnet_100", 32, 1, torch.float16),
    ("mobilenetv4_conv_small", 36, 2, torch.float32),  # UIB: ExtraDW, IB, ConvNeXt-like
]


@pytest.mark.parametrize("name,size,batch,dtype", RUNS, ids=[f"{r[0]}-{r[1]}px-{str(r[3])[6:]}" for r in RUNS])
def test_whole_model_matches_the_unfused_one(name, size, batch, dtype):
    model = zoo.build(name, classes=10)
    fast = optimize(model, backend="triton").to(DEVICE, dtype)
    blocks = [e for e in fast.fusion_report.entries if e.part == "block"]
    assert blocks and all(e.fused for e in blocks)
    x = torch.randn(batch, 3, size, size).to(DEVICE, dtype)
    with torch.no_grad():
        y = fast(x)
    assert y.shape == (batch, 10) and y.dtype == dtype
    assert_close(y, reference64(model, x), dtype, name, factor=MODEL_TOLERANCE_FACTOR)


# Fused parts per model: stem + blocks + head + classifier, the first block (depthwise-separable)
# run in the stem's kernel where it fits (FusedStemBlock: every model here but MobileNetV4, whose
# first block is a full conv); MobileNetV4 keeps its four full-conv ConvBnAct blocks and the 1x1
# conv on the pooled map (conv_head).
PARTS = {
    "mnasnet0_5": (19, 0), "mnasnet0_75": (19, 0), "mnasnet1_0": (19, 0), "mnasnet1_3": (19, 0),
    "mobilenetv2_035": (19, 0), "mobilenetv2_050": (19, 0), "mobilenetv2_075": (19, 0), "mobilenetv2_100": (19, 0),
    "mobilenetv2_140": (19, 0), "mobilenetv2_110d": (24, 0), "mobilenetv2_120d": (28, 0),
    "efficientnet_lite0": (18, 0), "efficientnet_lite1": (23, 0), "efficientnet_lite2": (23, 0),
    "efficientnet_lite3": (26, 0), "efficientnet_lite4": (32, 0), "mnasnet_100": (19, 0),
    "mobilenetv4_conv_small": (15, 5),
}


def _timm_blocks(model) -> int:
    return sum(type(m).__name__ in ("DepthwiseSeparableConv", "InvertedResidual", "UniversalInvertedResidual")
               or type(m).__name__ == "_InvertedResidual" for m in model.modules())


@pytest.mark.parametrize("name", list(PARTS))
def test_fusion_report_counts_every_part(name):
    model = zoo.construct(name, classes=10).eval()  # the library's own init: only the structure counts here
    fast = optimize(model)  # auto: the report says what runs for inputs on each device
    report = fusion_report(fast)
    fused, kept = PARTS[name]
    assert (len(report.fused), len(report.not_fused)) == (fused, kept), str(report)
    parts = [e.part for e in report.fused]
    blocks = _timm_blocks(model) + (1 if name.startswith("mnasnet0") or name.startswith("mnasnet1") else 0)
    stem_block = name != "mobilenetv4_conv_small"
    assert isinstance(fast.get_submodule(report.fused[0].name), FusedStemBlock) == stem_block
    assert parts.count("block") == blocks - stem_block  # torchvision MNASNet: its stem pair is a block too
    assert parts.count("stem") == parts.count("head") == parts.count("classifier") == 1
    assert f"{fused} of {fused + kept} parts fused" in str(report)
    assert all(e.part == "other" for e in report.not_fused)


SE_MODELS = [("timm.efficientnet_b0", 16), ("timm.mnasnet_small", 15), ("torchvision.mobilenet_v3_small", 11)]


@pytest.mark.parametrize("name,blocks", SE_MODELS, ids=[m for m, _ in SE_MODELS])
def test_squeeze_excite_blocks_are_kept_and_reported(name, blocks):
    model = zoo.build(name, classes=10)
    fast = optimize(model)
    report = fusion_report(fast)
    entries = [e for e in report.entries if e.part == "block"]
    assert len(entries) == blocks
    se = [e for e in entries if "squeeze-excite: not fused yet" in e.detail]
    assert se and all(not e.fused for e in se)
    assert all(e.fused or "not fused yet" in e.detail or "not supported" in e.detail for e in entries)
    assert "squeeze-excite: not fused yet" in str(report)
    # In float64 (weights folded in float64; backend "auto" on the CPU: the folded PyTorch ops): the
    # kept blocks and the fused parts compute the unfused model's function.  (In fp32 these random networks amplify each
    # part's rounding, within tolerance, past the whole-model bound: mnasnet_small's logits reach 1e3.)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close(optimize(model.double())(x), reference64(model, x), torch.float64, name,
                     factor=MODEL_TOLERANCE_FACTOR)
    with pytest.raises(UnsupportedBlockError, match="does not fall back"):
        optimize(model, backend="triton")
