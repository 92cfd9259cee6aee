"""Launch-configuration data: the records, tuned tables (shipped and the user's) keyed by shape,
dtype and batch range, and the heuristic."""

import json

import pytest
import torch

from mnv2_fast.kernels import BlockConfig, BlockShape, HeadConfig, default_config, tuned
from mnv2_fast.kernels.block import kernel_args, programs_for
from mnv2_fast.model import block_specs
from mnv2_fast.tools.tune import batch_ranges

SHAPE = BlockShape(24, 144, 24, 1, 56, 56, True, True)
SMALL = BlockConfig(tile_h=4, tile_w=8, block_hid=32)
LARGE = BlockConfig(tile_h=8, tile_w=16, block_hid=64, num_warps=8, maxnreg=128, programs_per_sm=2)


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """An empty shipped folder and an empty user folder, both in tmp_path."""
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    monkeypatch.setattr(tuned, "SHIPPED_DIR", shipped)
    monkeypatch.setenv("MNV2_FAST_TUNED_DIR", str(user))
    yield shipped, user
    tuned.read_table.cache_clear()
    tuned._tables.cache_clear()


def _entries(*rows):
    return [tuned.entry(shape, torch.float16, batch, cfg, 0.1) for shape, batch, cfg in rows]


@pytest.mark.parametrize("name,slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L40S", "l40s"),
                                       ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090")])
def test_gpu_slug(name, slug):
    assert tuned.gpu_slug(name) == slug


def test_tuned_table_lookup(tables, monkeypatch):
    shipped, _ = tables
    path = tuned.write_tuned(shipped / "h100.json", _entries((SHAPE, (1, 16), SMALL), (SHAPE, (17, 1 << 30), LARGE)),
                             {"gpu": "test"})
    assert json.loads(path.read_text())["blocks"][0]["batch"] == [1, 16]
    assert tuned.lookup_tuned(SHAPE, torch.float16, 1, "h100") == SMALL
    assert tuned.lookup_tuned(SHAPE, torch.float16, 256, "h100") == LARGE
    assert tuned.lookup_tuned(SHAPE, torch.float32, 256, "h100") is None  # other dtype
    assert tuned.lookup_tuned(SHAPE, torch.float16, 256, "h200") is None  # other GPU: heuristic
    assert tuned.lookup_tuned(SHAPE.at(28, 28), torch.float16, 256, "h100") is None  # other input size
    # The block's index is a label: a record from the model's table finds the entry too.
    labelled = BlockShape(24, 144, 24, 1, 56, 56, True, True, index=3)
    assert tuned.lookup_tuned(labelled, torch.float16, 1, "h100") == SMALL
    monkeypatch.setenv("MNV2_FAST_TUNED", "h100")
    assert tuned.device_slug(torch.device("cpu")) == "h100"


def test_user_table_comes_before_the_shipped_one(tables):
    shipped, user = tables
    other = SHAPE.at(28, 28)
    tuned.write_tuned(shipped / "h100.json", _entries((SHAPE, (1, 1 << 30), SMALL), (other, (1, 1 << 30), SMALL)), {})
    assert tuned.lookup_tuned(SHAPE, torch.float16, 4, "h100") == SMALL
    tuned.write_tuned(tuned.user_table_path("h100"), _entries((SHAPE, (1, 1 << 30), LARGE)), {})
    assert tuned.user_table_path("h100") == user / "h100.json" and (user / "h100.json").is_file()
    assert tuned.lookup_tuned(SHAPE, torch.float16, 4, "h100") == LARGE  # the user's entry wins
    assert tuned.lookup_tuned(other, torch.float16, 4, "h100") == SMALL  # the shipped table still answers


def test_user_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MNV2_FAST_TUNED_DIR", str(tmp_path / "mine"))
    assert tuned.user_dir() == tmp_path / "mine"
    monkeypatch.delenv("MNV2_FAST_TUNED_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tuned.user_dir() == tmp_path / "cache" / "mnv2-fast" / "tuned"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuned.user_dir() == tmp_path / "home" / ".cache" / "mnv2-fast" / "tuned"
    # Never inside the package, which is read-only once installed.
    assert tuned.SHIPPED_DIR not in tuned.user_table_path("h100").parents


def test_unknown_config_keys_and_positional_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        BlockConfig.from_dict({"tile_h": 2, "tile": 3})
    with pytest.raises(TypeError):
        BlockConfig(True, 64)  # keyword-only: no field order is part of the interface
    assert BlockConfig.from_dict(LARGE.to_dict()) == LARGE


def test_config_fields_are_the_kernels_constexprs():
    assert HeadConfig(block_p=32).constexprs() == {"IMGS": 1, "BLOCK_P": 32, "BLOCK_K": 64, "BLOCK_N": 128}
    assert set(LARGE.constexprs()) == {"TILE_H", "TILE_W", "IMGS", "BLOCK_HID", "X_RESIDENT", "JOIN_PAIRS",
                                       "STAGE_IMAGE", "STAGE_VECTORS", "QUADS", "PROJECT_APART",
                                       "HIDDEN_SPLIT", "PACKED_DW", "RECOMPUTE_SETS", "TALL", "STRIP", "ACC16",
                                       "STAGE_HID"}
    assert LARGE.options() == {"num_warps": 8, "num_stages": 1, "maxnreg": 128}
    assert "maxnreg" not in SMALL.options()  # the compiler's own choice


def test_block_record_geometry():
    s = BlockShape(16, 96, 24, 2, 9, 7, True, False)
    assert (s.ho, s.wo, s.t) == (5, 4, 6)
    assert s.region(2, 3) == (5, 7)  # (2-1)*2+3 rows, (3-1)*2+3 columns: the halo (zero padding) included
    cfg = BlockConfig(tile_h=2, tile_w=3, imgs=2, programs_per_sm=2)
    assert s.tiles(cfg, 5) == 3 * 3 * 2  # images in threes of two, 5 rows in tiles of 2, 4 columns in 3
    assert s.grid(cfg, 5, sms=132) == 18 and s.grid(cfg, 5, sms=4) == 8  # persistent: at most 2 per SM
    args = kernel_args(s, cfg, torch.float16, False)
    assert (args["REG_H"], args["REG_W"], args["P_IN"], args["P2"]) == (5, 7, 128, 16)  # 2 imgs x 35 rows; 6 pairs
    assert (args["K_A"], args["K_B"], args["CO_A"], args["CO_B"]) == (16, 0, 32, 0)
    assert programs_for(s, cfg, 5, torch.device("cpu")) == 3  # the interpreter's few programs
    assert s.at(0, 0).to_dict() == {**s.to_dict(), "h": 0, "w": 0} and "index" not in s.to_dict()


@pytest.mark.parametrize("width", [0.35, 0.5, 1.0, 1.4])
@pytest.mark.parametrize("resolution", [32, 96, 224, 225])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_default_configs_are_valid_everywhere(width, resolution, itemsize):
    for shape in block_specs(width, resolution=resolution):
        for batch in (1, 256):
            cfg = default_config(shape, itemsize, batch)
            cfg.validate(shape)
            # Within the register budget the static check verifies: at most 128 pixel pairs.
            assert cfg.imgs * cfg.tile_h // 2 * cfg.tile_w <= 128


def test_batch_ranges_cover_every_batch():
    ranges = batch_ranges([256, 1, 32])
    assert [b for b, _, _ in ranges] == [1, 32, 256]
    assert ranges[0][1] == 1 and ranges[-1][2] >= 1 << 29
    assert all(ranges[i][2] + 1 == ranges[i + 1][1] for i in range(len(ranges) - 1))
    assert all(lo <= b <= hi for b, lo, hi in ranges)


@pytest.mark.parametrize("n,parts", [(16, (16, 0)), (24, (32, 0)), (40, (32, 16)), (64, (64, 0)), (96, (64, 32)),
                                     (160, (128, 32)), (320, (256, 64)), (8, (16, 0)), (1280, (1024, 256))])
def test_channels_split_into_at_most_two_powers_of_two(n, parts):
    from mnv2_fast.kernels._common import split_pow2

    assert split_pow2(n) == parts
    assert sum(parts) >= n and all(p == 0 or (p >= 16 and p & (p - 1) == 0) for p in parts)


def test_head_config_follows_the_batch():
    from mnv2_fast.kernels.choice import WAVE, choose_head_config

    gpu = torch.device("cuda")  # the GPU heuristic; nothing runs
    big = choose_head_config(320, 1280, 49, 256, gpu)
    assert (big.block_n, big.num_warps, big.block_p) == (128, 8, 128)
    # The images per program fill whole waves: 256 images x 10 channel blocks in one wave of 264.
    assert big.imgs == 10 and -(-256 // big.imgs) * 10 <= WAVE
    assert choose_head_config(320, 1280, 49, 128, gpu).imgs == 5
    one = choose_head_config(320, 1280, 49, 1, gpu)
    assert (one.imgs, one.block_n, one.num_warps, one.block_p) == (1, 32, 4, 64)  # 40 programs, not 10
    assert choose_head_config(320, 1280, 49, 16, gpu).block_n == 64
    assert choose_head_config(320, 1280, 49, 256, gpu, itemsize=4).block_k == 32


def test_project_config_tiles_the_outputs_without_an_empty_half():
    from mnv2_fast.kernels.choice import choose_project_config

    gpu = torch.device("cuda")  # the GPU heuristic; nothing runs

    def tile(m, nout):
        cfg = choose_project_config(m, 960, nout, gpu)
        assert (cfg.block_k, cfg.num_stages) == (64, 2)
        return cfg.block_m, cfg.block_n, cfg.num_warps

    # Batch 256's 7x7 blocks (M = 12544): 64-wide tiles where 64 divides N (block 17's 320),
    # 32-wide where it does not (blocks 14-16's 160: a third 64-wide tile would be half empty).
    assert tile(12544, 320) == (128, 64, 8) and tile(12544, 160) == (128, 32, 8)
    # Batch 64 (M = 3136): 125 tiles of 128 x 64 or 128 x 32 are enough to fill the SMs.
    assert tile(3136, 320) == (128, 64, 8) and tile(3136, 160) == (128, 32, 8)
    # Batch 32 (M = 1568): 128 x 32 for 320 outputs (130 tiles); 65 for 160 are too few.
    assert tile(1568, 320) == (128, 32, 8) and tile(1568, 160) == (64, 32, 4)
    # Batch 16 (M = 784) and 1 (M = 49): 64 x 16 tiles at 4 warps, so that more SMs work.
    assert tile(784, 160) == (64, 16, 4) and tile(49, 320) == (64, 16, 4)


def test_head_config_limits():
    with pytest.raises(ValueError, match="imgs=17"):
        HeadConfig(imgs=17)
    with pytest.raises(ValueError, match="block_p=48"):
        HeadConfig(block_p=48)


def test_tune_candidates_try_the_project_apart_on_small_maps_and_batches():
    from mnv2_fast.tools.tune import candidates

    specs = block_specs(1.0, resolution=224)
    wide, small = specs[1], specs[16]  # block 2 (56 x 56 outputs), block 17 (7 x 7)
    assert not any(c.project_apart for c in candidates(wide, 2, 256))
    at_256 = candidates(small, 2, 256)
    assert any(c.project_apart for c in at_256) and all(c.hidden_split == 1 for c in at_256)
    split = [c for c in candidates(small, 2, 1) if c.hidden_split > 1]
    assert split and all(c.project_apart and c.hidden_split == -(-small.hidden // c.block_hid) for c in split)
    for c in split:
        c.validate(small)
    # 16 warps also with positions recomputed where used (blocks 12-13 ship so: joined strips).
    remat = [c for c in candidates(specs[11], 2, 256) if c.recompute_sets]
    assert remat and all(c.num_warps == 16 for c in remat)
    assert any(c.join_pairs and c.strip == 7 and c.stage_image and c.maxnreg is None for c in remat)
    # 2x2 groups in 4-row bands also as 4x2 groups (block 1 ships so), with the project apart too.
    tall = [c for c in candidates(specs[0], 2, 256) if c.tall]
    assert any((c.tile_h, c.tile_w) == (16, 16) for c in tall)
    assert all(c.quads and c.tile_h % 4 == 0 for c in tall)
    assert any(c.tall and c.project_apart for c in at_256)
    # Chunks of 16-32 channels also staged two at a time where hidden splits so (block 3 ships so:
    # 144 = 4 x 32 + 16).
    wide = [c for c in candidates(specs[2], 2, 256) if c.stage_hid]
    assert any(c.block_hid == 16 and c.stage_hid == 32 and c.strip == 7 for c in wide)
    for c in wide:
        c.validate(specs[2])
    # ... and in 7- or 8-row bands as strips (7x2 groups fill a 28 x 14 tile's 32 group slots).
    strip = [c for c in candidates(specs[2], 2, 256) if c.strip]
    assert any((c.tile_h, c.tile_w, c.strip) == (28, 14, 7) for c in strip)
    assert all(c.quads and not c.tall and c.tile_h % c.strip == 0 for c in strip)


def test_strip_groups_validate_their_rows():
    shape = block_specs(1.0, resolution=224)[2]
    BlockConfig(tile_h=28, tile_w=14, join_pairs=True, quads=True, strip=7).validate(shape)
    with pytest.raises(ValueError, match="even"):  # odd rows only in strips of odd height
        BlockConfig(tile_h=7, tile_w=14, join_pairs=True, quads=True).validate(shape)
    with pytest.raises(ValueError, match="multiple of strip=7"):
        BlockConfig(tile_h=16, tile_w=14, join_pairs=True, quads=True, strip=7).validate(shape)
    for bad in (dict(strip=9), dict(strip=2), dict(strip=7, quads=False, join_pairs=True),
                dict(strip=7, tall=True)):
        cfg = dict(tile_h=14, tile_w=14, join_pairs=True, quads=True) | bad
        with pytest.raises(ValueError):
            BlockConfig(**cfg).validate(shape)


@pytest.mark.parametrize("batch", [1, 256])
def test_tune_candidates_are_valid_configs_of_their_shape(batch):
    """Every candidate passes the launcher's own validation, for MobileNetV2's blocks and for
    the family's other paths: no middle depthwise (an FFN), a start depthwise, both."""
    from mnv2_fast.tools.tune import candidates

    shapes = list(block_specs(1.0, resolution=224)) + [
        BlockShape(64, 256, 64, 1, 14, 14, True, True, ksize=0),
        BlockShape(64, 256, 64, 1, 7, 7, True, True, ksize=3, start_k=3),
        BlockShape(64, 256, 96, 2, 14, 14, True, False, ksize=0, start_k=3),
    ]
    for shape in shapes:
        for cfg in candidates(shape, 2, batch):
            cfg.validate(shape)
