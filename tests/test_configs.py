"""Launch-configuration data: tuned tables keyed by shape, dtype and batch range; the heuristic."""

import json

import pytest
import torch

from mnv2_fast.baselines import block_input_size, block_shape
from mnv2_fast.kernels import BlockConfig, BlockShape, default_config
from mnv2_fast.kernels import configs as C
from mnv2_fast.model import block_specs
from mnv2_fast.tune import batch_ranges


@pytest.mark.parametrize("name,slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L40S", "l40s"),
                                       ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090")])
def test_gpu_slug(name, slug):
    assert C.gpu_slug(name) == slug


def test_tuned_table_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "TUNED_DIR", tmp_path)
    C.load_tuned.cache_clear()
    shape = BlockShape(24, 144, 24, 1, 56, 56, True, True)
    small = BlockConfig(gather=False, block_p=32, block_h=32, block_k=32, block_co=32)
    large = BlockConfig(gather=True, tile_h=8, tile_w=8, block_h=64, block_k=32, block_co=32, num_warps=8)
    entries = [dict(shape=shape.__dict__, dtype="float16", batch=[1, 16], config=small.to_dict(), ms=0.01),
               dict(shape=shape.__dict__, dtype="float16", batch=[17, 1 << 30], config=large.to_dict(), ms=0.2)]
    path = C.write_tuned("h100", entries, {"gpu": "test"})
    assert json.loads(path.read_text())["blocks"][0]["batch"] == [1, 16]
    assert C.lookup_tuned(shape, torch.float16, 1, "h100") == small
    assert C.lookup_tuned(shape, torch.float16, 256, "h100") == large
    assert C.lookup_tuned(shape, torch.float32, 256, "h100") is None  # other dtype
    assert C.lookup_tuned(shape, torch.float16, 256, "h200") is None  # other GPU: heuristic
    other = BlockShape(24, 144, 24, 1, 28, 28, True, True)
    assert C.lookup_tuned(other, torch.float16, 256, "h100") is None  # other input size
    monkeypatch.setenv("MNV2_FAST_TUNED", "h100")
    assert C.device_slug(torch.device("cpu")) == "h100"
    C.load_tuned.cache_clear()


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        BlockConfig.from_dict({"gather": True, "tile": 3})


@pytest.mark.parametrize("width", [0.35, 0.5, 1.0, 1.4])
@pytest.mark.parametrize("resolution", [32, 96, 224, 225])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_default_configs_are_valid_everywhere(width, resolution, itemsize):
    for spec, size in zip(block_specs(width), block_input_size(width, resolution)):
        shape = block_shape(spec, size, size)
        cfg = default_config(shape, itemsize)
        cfg.validate(shape)
        if cfg.gather:
            assert shape.has_expand and shape.cin > 32
        if cfg.gather:  # within the register budget the static check verifies at 224 px
            assert cfg.imgs * cfg.tile_h * cfg.tile_w <= C.MAX_P_OUT


def test_batch_ranges_cover_every_batch():
    ranges = batch_ranges([256, 1, 32])
    assert [b for b, _, _ in ranges] == [1, 32, 256]
    assert ranges[0][1] == 1 and ranges[-1][2] >= 1 << 29
    assert all(ranges[i][2] + 1 == ranges[i + 1][1] for i in range(len(ranges) - 1))
    assert all(lo <= b <= hi for b, lo, hi in ranges)
