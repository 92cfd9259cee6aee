"""The inverted-residual family on the one block kernel, each kind against its unfused module in
float64: 5x5 depthwise, ReLU and ReLU6 (each stage its own), expansions t = 1 (with and
without an expand conv), 3, 6 and fractional ones, depthwise-separable blocks (with an
activation after the project and a residual), MobileNetV4's UIB variants (start and middle
depthwise, the FFN with neither, layer scale), TensorFlow "same" padding (timm's tf_ models).

Blocks are built from timm's and torchvision's own classes, read by the adapters of
mnv2_fast.adapters; on a CPU-only machine they run through Triton's interpreter at small sizes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import DEVICE, INTERPRETER, assert_close, call_guarded, nhwc, reference64
from interpreter_checks import SCRATCH_ARG, block_scratch, checked_launches
from mnv2_fast import UnsupportedBlockError, fuse_block
from mnv2_fast.kernels import BlockConfig, inverted_residual, output_size
from mnv2_fast.kernels.choice import interpreter_config
from mnv2_fast.tools.zoo import randomize

timm_blocks = pytest.importorskip("timm.models._efficientnet_blocks")
tv_mnasnet = pytest.importorskip("torchvision.models.mnasnet")


def _ir(cin, cout, k=3, s=1, t=6.0, act=nn.ReLU6, same=False, **kw):
    return timm_blocks.InvertedResidual(cin, cout, dw_kernel_size=k, stride=s, exp_ratio=t, act_layer=act,
                                        pad_type="same" if same else "", **kw)


def _ds(cin, cout, k=3, s=1, act=nn.ReLU6, pw_act=False, noskip=False):
    return timm_blocks.DepthwiseSeparableConv(cin, cout, dw_kernel_size=k, stride=s, act_layer=act, pw_act=pw_act,
                                              noskip=noskip)


def _uib(cin, cout, start=0, mid=3, s=1, t=4.0, layer_scale=None):
    return timm_blocks.UniversalInvertedResidual(cin, cout, dw_kernel_size_start=start, dw_kernel_size_mid=mid,
                                                 stride=s, exp_ratio=t, layer_scale_init_value=layer_scale)


def _mnasnet(cin, cout, k, s, t):
    return tv_mnasnet._InvertedResidual(cin, cout, k, s, t)


def _mnv2(cin, cout, s, t):
    from mnv2_fast.model import InvertedResidual

    return InvertedResidual(cin, cout, s, t)


def _ready(block: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (torchvision's init), trained-looking BN, a random layer scale."""
    g = torch.Generator().manual_seed(seed)
    randomize(block, g)
    gamma = getattr(getattr(block, "layer_scale", None), "gamma", None)
    if gamma is not None:
        with torch.no_grad():
            gamma.copy_(torch.empty(gamma.shape).uniform_(-1.5, 1.5, generator=g))
    return block.eval()


# (id, block, spec facts the adapter must read: ksize, start_k, t, act_exp, act_dw, act_proj, residual, tf_same)
CASES = [
    ("ir-k5-s1-relu-t6-res", lambda: _ir(24, 24, 5, 1, 6, nn.ReLU), (5, 0, 6, "relu", "relu", "none", True, False)),
    ("ir-k5-s2-relu6-t3", lambda: _ir(16, 24, 5, 2, 3), (5, 0, 3, "relu6", "relu6", "none", False, False)),
    ("ir-k3-s1-relu-t2.5-res", lambda: _ir(16, 16, 3, 1, 2.5, nn.ReLU), (3, 0, 2.5, "relu", "relu", "none", True, False)),
    ("ir-k5-s1-t1-expand-conv", lambda: _ir(16, 24, 5, 1, 1.0), (5, 0, 1, "relu6", "relu6", "none", False, False)),
    ("ir-k5-s2-tf-same", lambda: _ir(16, 24, 5, 2, 6, same=True), (5, 0, 6, "relu6", "relu6", "none", False, True)),
    ("ir-k3-s2-tf-same", lambda: _ir(24, 40, 3, 2, 6, same=True), (3, 0, 6, "relu6", "relu6", "none", False, True)),
    ("mnv2-k3-t2.5-fraction", lambda: _mnv2(12, 12, 1, 2.5), (3, 0, 2.5, "relu6", "relu6", "none", True, False)),
    ("mnasnet-k5-s2-t3", lambda: _mnasnet(16, 24, 5, 2, 3), (5, 0, 3, "relu", "relu", "none", False, False)),
    ("mnasnet-k3-s1-t6-res", lambda: _mnasnet(24, 24, 3, 1, 6), (3, 0, 6, "relu", "relu", "none", True, False)),
    ("ds-k3-relu6", lambda: _ds(32, 16), (3, 0, 1, "relu6", "relu6", "none", False, False)),
    ("ds-k5-relu-pwact-res", lambda: _ds(24, 24, 5, act=nn.ReLU, pw_act=True), (5, 0, 1, "relu6", "relu", "relu", True,
                                                                                 False)),
    ("ds-k3-s2-relu", lambda: _ds(16, 24, 3, 2, nn.ReLU), (3, 0, 1, "relu6", "relu", "none", False, False)),
    ("uib-extradw-s2-k5-k5", lambda: _uib(32, 40, 5, 5, 2, 3), (5, 5, 3, "relu", "relu", "none", False, False)),
    ("uib-extradw-k3-k3-res", lambda: _uib(40, 40, 3, 3, 1, 4), (3, 3, 4, "relu", "relu", "none", True, False)),
    ("uib-ib-k5", lambda: _uib(24, 32, 0, 5, 1, 4), (5, 0, 4, "relu", "relu", "none", False, False)),
    ("uib-convnext-k3-res", lambda: _uib(48, 48, 3, 0, 1, 4), (0, 3, 4, "relu", "relu6", "none", True, False)),
    ("uib-convnext-k5-s2", lambda: _uib(24, 32, 5, 0, 2, 4), (0, 5, 4, "relu", "relu6", "none", False, False)),
    ("uib-ffn-res", lambda: _uib(32, 32, 0, 0, 1, 3), (0, 0, 3, "relu", "relu6", "none", True, False)),
    ("uib-extradw-layer-scale", lambda: _uib(24, 24, 5, 3, 1, 2, layer_scale=1.0), (3, 5, 2, "relu", "relu", "none",
                                                                                    True, False)),
    ("uib-ffn-layer-scale", lambda: _uib(16, 16, 0, 0, 1, 2, layer_scale=1.0), (0, 0, 2, "relu", "relu6", "none", True,
                                                                               False)),
]
# Input sizes (odd, even, non-square) and dtypes cycled over the cases: each kind in fp32, most in
# fp16 as well.
SIZES = [(9, 7), (8, 10), (7, 7), (10, 6), (5, 9), (6, 8)]


def _params():
    out = []
    for i, (name, make, facts) in enumerate(CASES):
        h, w = SIZES[i % len(SIZES)]
        out.append(pytest.param(make, facts, 2, h, w, torch.float32, id=f"{name}-{h}x{w}-float32"))
        if i % 3 != 2:
            h, w = SIZES[(i + 3) % len(SIZES)]
            out.append(pytest.param(make, facts, 1, h, w, torch.float16, id=f"{name}-{h}x{w}-float16"))
    return out


@pytest.mark.parametrize("make,facts,batch,h,w,dtype", _params())
def test_family_block_matches_unfused(make, facts, batch, h, w, dtype):
    block = _ready(make())
    fused = fuse_block(block, backend="triton").to(DEVICE, dtype)
    s = fused.spec
    act_exp = s.act_exp if s.has_expand else "relu6"
    act_dw = s.act_dw if s.ksize else "relu6"
    assert (s.ksize, s.start_k, s.t, act_exp, act_dw, s.act_proj, s.residual, s.tf_same) == facts
    x = nhwc(torch.randn(batch, s.cin, h, w)).to(DEVICE, dtype)
    y = fused(x)
    assert y.shape == (batch, s.cout, output_size(h, s.stride), output_size(w, s.stride))
    assert_close(y, reference64(block, x), dtype, str(s))


# Tilings the whole-image interpreter configs never produce, for the new stencils: several tiles
# per image and images per tile, partial hidden chunks, the input reloaded per chunk (5x5), the
# persistent grid's programs walking several tiles (the interpreter runs 3).
TILINGS = {
    "small-2imgs": dict(tile_h=2, tile_w=3, imgs=2, block_hid=16),
    "reload": dict(tile_h=4, tile_w=2, imgs=1, block_hid=32, x_resident=False),
    "3imgs": dict(tile_h=6, tile_w=5, imgs=3, block_hid=64),
    "quads": dict(tile_h=2, tile_w=4, imgs=2, block_hid=32, join_pairs=True, quads=True),
    # The 5x5 blocks' configs the tables ship (attempt 10): 4x2 and 7x2 groups, the positions
    # recomputed, the project apart (its tiles' chunks split), chunks staged 32 wide.
    "tall": dict(tile_h=4, tile_w=4, imgs=2, block_hid=32, join_pairs=True, quads=True, tall=True,
                 recompute_sets=True),
    "strip": dict(tile_h=7, tile_w=4, imgs=2, block_hid=16, join_pairs=True, quads=True, strip=7,
                  recompute_sets=True),
    "pairs-apart": dict(tile_h=4, tile_w=3, imgs=2, block_hid=16, join_pairs=True, project_apart=True,
                        recompute_sets=True),
    "tall-apart-split": dict(tile_h=4, tile_w=6, imgs=2, block_hid=16, join_pairs=True, quads=True, tall=True,
                             project_apart=True, hidden_split=3),
    "stage-hid": dict(tile_h=2, tile_w=4, imgs=2, block_hid=16, stage_hid=32, join_pairs=True, quads=True,
                      recompute_sets=True),
    # small batches': the whole image staged, a work item per hidden chunk (120 = 7 x 16 + 8)
    "image-apart-split": dict(tile_h=8, tile_w=6, imgs=1, block_hid=16, join_pairs=True, quads=True, stage_image=True,
                              project_apart=True, hidden_split=8),
}
TILED = {
    "ir-k5-s2-tf-same": lambda: _ir(40, 48, 5, 2, 2.5, same=True),  # hidden 100: chunks of 16/32/64 end partial
    "ir-k5-s1-relu-res": lambda: _ir(40, 40, 5, 1, 3, nn.ReLU),
    "uib-extradw-s2": lambda: _uib(40, 48, 5, 3, 2, 2.5),
    "uib-convnext-s2": lambda: _uib(40, 48, 3, 0, 2, 2.5),
    "ds-k5-pwact-res": lambda: _ds(40, 40, 5, pw_act=True),
    "ir-k5-s1-t6-res": lambda: _ir(40, 40, 5, 1, 6),  # hidden 240: seven chunks of 32, then 16
}
TILED_CASES = [("ir-k5-s2-tf-same", "small-2imgs"), ("ir-k5-s1-relu-res", "reload"), ("ir-k5-s1-relu-res", "3imgs"),
               ("uib-extradw-s2", "small-2imgs"), ("uib-extradw-s2", "3imgs"), ("uib-convnext-s2", "small-2imgs"),
               ("uib-convnext-s2", "reload"), ("ds-k5-pwact-res", "small-2imgs"), ("ir-k5-s2-tf-same", "quads"),
               ("ir-k5-s1-relu-res", "quads"), ("uib-extradw-s2", "quads"), ("ds-k5-pwact-res", "quads"),
               ("ir-k5-s2-tf-same", "tall"), ("ir-k5-s1-relu-res", "strip"), ("ir-k5-s2-tf-same", "pairs-apart"),
               ("ir-k5-s1-relu-res", "tall-apart-split"), ("ir-k5-s1-t6-res", "stage-hid"),
               ("ir-k5-s1-relu-res", "image-apart-split")]


def _launch_guarded(fused, x, cfg):
    """The launcher on guarded copies of x and the module's weights, into a guarded output
    (tests/helpers.py: NaN around every tensor, as many guard images as a tile has)."""
    s = fused.spec
    n, _, h, w = x.shape
    return call_guarded(inverted_residual, x, fused.w_exp, fused.b_exp, fused.w_dw, fused.b_dw, fused.w_proj,
                        fused.b_proj, out_shape=(n, s.cout, output_size(h, s.stride), output_size(w, s.stride)),
                        images=cfg.imgs, stride=s.stride, residual=s.residual, act_exp=s.act_exp, act_dw=s.act_dw,
                        act_proj=s.act_proj, w_start=fused.w_start, b_start=fused.b_start, tf_same=s.tf_same,
                        config=cfg)


@pytest.mark.parametrize("name,tiling", TILED_CASES, ids=[f"{n}-{t}" for n, t in TILED_CASES])
def test_family_tilings(name, tiling):
    """Each tiling against the unfused module, nothing read or written outside the launch's
    tensors (guard regions; under the interpreter also every load and store, and the scratch
    in barrier order: tests/interpreter_checks.py)."""
    block = _ready(TILED[name]())
    fused = fuse_block(block, backend="triton").to(DEVICE)
    cfg = BlockConfig(**TILINGS[tiling])
    x = nhwc(torch.randn(3, fused.spec.cin, 7, 6)).to(DEVICE)
    if INTERPRETER:
        from mnv2_fast.kernels import block as block_module

        staged = fused.spec.staged  # without a middle depthwise nothing is staged: no scratch
        with checked_launches(block_module, scratch_arg=SCRATCH_ARG if staged else None,
                              per_program=block_scratch if staged else None) as check:
            y = _launch_guarded(fused, x, cfg)
        assert check.launches == 1 and check.accesses > 0
        assert not check.problems, check.report()
    else:
        y = _launch_guarded(fused, x, cfg)
    assert_close(y, reference64(block, x), torch.float32, f"{name} {cfg}")


@pytest.mark.parametrize("make", [lambda: _uib(24, 32, 5, 3, 2, 2), lambda: _uib(24, 24, 3, 0, 1, 3),
                                  lambda: _ds(24, 24, 5, act=nn.ReLU, pw_act=True)], ids=["extradw", "convnext", "ds"])
def test_nan_and_inf_propagate_as_in_the_module(make):
    block = _ready(make())
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = torch.randn(2, fused.spec.cin, 8, 7)
    x[0, 3, 2, 5] = float("nan")
    x[1, 1, 4, 0] = float("inf")
    x[1, 2, 7, 6] = float("-inf")
    x = nhwc(x).to(DEVICE)
    y = fused(x).double().cpu()
    ref = reference64(block, x)
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert_close(torch.where(finite, y, 0), torch.where(finite, ref, 0), torch.float32, "finite part")


def test_start_depthwise_needs_its_input_resident():
    fused = fuse_block(_ready(_uib(24, 24, 3, 3, 1, 2)), backend="triton").to(DEVICE)
    fused.config = BlockConfig(tile_h=2, tile_w=2, x_resident=False)
    with pytest.raises(ValueError, match="x_resident=False: a start depthwise"):
        fused(nhwc(torch.randn(1, 24, 5, 5)).to(DEVICE))


@pytest.mark.parametrize("make,msg", [
    (lambda: _ir(16, 24, 3, 1, 6, se_layer=timm_blocks.SqueezeExcite), "squeeze-excite: not fused yet"),
    (lambda: _ir(16, 24, 3, 1, 6, nn.SiLU), "activation SiLU is not supported"),
    (lambda: _ir(16, 24, 7, 1, 6), r"kernel \(7, 7\)"),
    (lambda: _ds(16, 24, 3, act=nn.Hardswish), "activation Hardswish"),
    (lambda: timm_blocks.UniversalInvertedResidual(16, 16, 0, 3, dw_kernel_size_end=3, exp_ratio=2),
     "dw_end: a depthwise after the project"),
    (lambda: timm_blocks.EdgeResidual(16, 24, exp_kernel_size=3, exp_ratio=4), "EdgeResidual is not a block"),
], ids=["squeeze-excite", "silu", "7x7", "hardswish", "uib-dw-end", "edge-residual"])
def test_unsupported_family_blocks_are_named(make, msg):
    with pytest.raises(UnsupportedBlockError, match=msg):
        fuse_block(_ready(make()))
