"""The unfused reference model: Table 2 shapes, torchvision state_dict compatibility."""

import pytest
import torch
from torch import nn

from helpers import randomize_bn
import mnv2_fast
from mnv2_fast.model import TABLE_2, block_specs, make_divisible

torchvision = pytest.importorskip("torchvision")


def test_table_2_blocks_at_width_1():
    specs = block_specs(1.0)
    assert len(specs) == 17 == sum(n for _, _, n, _ in TABLE_2)
    assert [(b.t, b.cout, b.stride) for b in specs] == [
        (1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
        (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
        (6, 320, 1)]
    assert [b.residual for b in specs] == [False, False, True, False, True, True, False, True, True, True,
                                           False, True, True, False, True, True, False]
    assert specs[0].cin == 32 and specs[0].hidden == 32 and specs[-1].hidden == 960


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
def test_state_dict_keys_and_shapes_match_torchvision(width):
    ours = mnv2_fast.mobilenet_v2(width_mult=width, num_classes=17).state_dict()
    theirs = torchvision.models.mobilenet_v2(width_mult=width, num_classes=17).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("width,k", [(1.0, 1000), (1.0, 10), (0.5, 1000), (0.5, 10)])
def test_loads_torchvision_weights_and_matches_in_float64(width, k):
    tv = randomize_bn(torchvision.models.mobilenet_v2(width_mult=width, num_classes=k)).eval().double()
    ours = mnv2_fast.mobilenet_v2(width_mult=width, num_classes=k).double()
    ours.load_state_dict(tv.state_dict(), strict=True)
    # eps is no state: a model built for other weights (a Keras port's 1e-3) sets it itself.
    bns = [[m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] for model in (ours, tv)]
    assert len(bns[0]) == len(bns[1])
    for a, b in zip(*bns):
        a.eps = b.eps
    ours.eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = ours(x), tv(x)
    assert a.shape == (2, k)
    assert (a - b).abs().max().item() <= 1e-10


@pytest.mark.parametrize("k", [1, 10, 1000, 1001])
def test_classifier_is_the_papers_final_1x1_conv(k):
    """On the pooled 1x1x1280 map, a 1x1 Conv2d and the Linear classifier give the same logits."""
    lin = nn.Linear(1280, k).double()
    conv = nn.Conv2d(1280, k, 1).double()
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
        conv.bias.copy_(lin.bias)
    fmap = torch.randn(3, 1280, 7, 7, dtype=torch.float64)
    pooled = nn.functional.adaptive_avg_pool2d(fmap, 1)
    assert torch.allclose(conv(pooled).flatten(1), lin(pooled.flatten(1)), rtol=0, atol=1e-12)


def test_make_divisible_rounds_like_the_reference():
    assert [make_divisible(32 * w) for w in (0.35, 0.5, 0.75, 1.0, 1.4)] == [16, 16, 24, 32, 48]
    assert make_divisible(16 * 0.35) == 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="width_mult"):
        mnv2_fast.mobilenet_v2(width_mult=0)
    with pytest.raises(ValueError, match="num_classes"):
        mnv2_fast.mobilenet_v2(num_classes=0)
