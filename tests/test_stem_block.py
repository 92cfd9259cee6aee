"""The stem fused with a depthwise-separable first block (kernels.block.stem_block) against
its float64 PyTorch twin: the stem conv, then the block (kernels/reference.py).  Every launch
reads guarded copies (NaN around each input; the NCHW image also has NaN channels, rows and
columns around it) and writes into a NaN-filled guarded output."""

import pytest
import torch

from helpers import DEVICE, assert_close, call_guarded, nhwc
from mnv2_fast.kernels import BlockConfig, output_size, reference, stem_block


def _weights(c: int, cout: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Stem [27, c], depthwise [9, c], project [c, cout] and their biases, scaled so that the
    activations stay O(1) and the ReLU6 clamps some of them."""
    def rnd(*size, scale=1.0):
        return torch.randn(*size, generator=generator) * scale

    return [rnd(27, c, scale=0.6), rnd(c, scale=0.5) + 1.0, rnd(9, c, scale=0.5), rnd(c, scale=0.5),
            rnd(c, cout, scale=c ** -0.5), rnd(cout, scale=0.5)]


def _run(x, weights, dtype, config=None, **kwargs):
    w_stem, b_stem, w_dw, b_dw, w_proj, b_proj = weights
    n, _, h, w = x.shape
    out_shape = (n, w_proj.shape[1], output_size(h, 2), output_size(w, 2))
    args = [x.to(DEVICE, dtype), w_stem.to(DEVICE, dtype), b_stem.to(DEVICE), w_dw.to(DEVICE), b_dw.to(DEVICE),
            w_proj.to(DEVICE, dtype), b_proj.to(DEVICE)]
    y = call_guarded(stem_block, *args, out_shape=out_shape, pad=1 if x.stride(1) != 1 else 0, config=config,
                     **kwargs)
    ref = reference.stem_block(*[a.double().cpu() for a in args], **kwargs)
    return y, ref


CONFIGS = {
    "pairs": BlockConfig(tile_h=4, tile_w=4, block_hid=16),
    "joined quads": BlockConfig(tile_h=4, tile_w=4, block_hid=16, join_pairs=True, quads=True),
    "strip3, 2 images": BlockConfig(tile_h=6, tile_w=4, block_hid=16, join_pairs=True, quads=True, strip=3, imgs=2),
    "4x2 groups": BlockConfig(tile_h=8, tile_w=8, block_hid=32, join_pairs=True, quads=True, tall=True),
    "whole image": BlockConfig(tile_h=10, tile_w=8, block_hid=16, join_pairs=True, stage_image=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_stem_block(config, layout, dtype):
    # 17 x 15 -> 9 x 8: tiles on every border, ragged tiles, the image's last row and column
    # read by the stem's bottom and right taps only.
    g = torch.Generator().manual_seed(len(config) * 7 + (layout == "nhwc") + 2 * (dtype == torch.float16))
    x = torch.randn(3, 3, 17, 15, generator=g)
    x = nhwc(x) if layout == "nhwc" else x
    y, ref = _run(x, _weights(32, 16, g), dtype, CONFIGS[config])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, ref, dtype, f"stem_block {config} {layout}")


def test_stem_block_default_config_and_other_widths():
    # Width 0.5's first block (16 -> 8) and activations other than ReLU6; the config the
    # launcher chooses itself.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 12, 10, generator=g)
    y, ref = _run(x, _weights(16, 8, g), torch.float32, act_stem="relu", act_dw="none", act_proj="relu6")
    assert_close(y, ref, torch.float32, "stem_block relu")


def test_stem_block_refuses_what_it_does_not_compute():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    w_stem, b_stem, w_dw, b_dw, w_proj, b_proj = [t.to(DEVICE) for t in _weights(16, 8, g)]
    with pytest.raises(ValueError, match=r"w_stem must have shape \[3\*9, C\]"):
        stem_block(x, w_stem[:18], b_stem, w_dw, b_dw, w_proj, b_proj)
    with pytest.raises(ValueError, match="3x3 depthwise"):
        stem_block(x, w_stem, b_stem, torch.zeros(25, 16, device=DEVICE), b_dw, w_proj, b_proj)
    with pytest.raises(ValueError, match="x_resident=False: with the stem"):
        stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj,
                   config=BlockConfig(tile_h=4, tile_w=4, block_hid=16, x_resident=False))
