"""bench/gpu_diag.py without a GPU: its passes through Triton's interpreter on a tiny model,
with a worker made to die in one layer as a faulting kernel's process would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("layer", ["features.2", "features.0"])  # a block; the stem with block 1
def test_a_layer_that_kills_its_worker_is_skipped_and_examined(tmp_path, layer):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_diag.py"), str(tmp_path), "--device", "cpu",
                        "--width", "0.35", "--resolution", "32", "--batch", "1", "--fail-at", layer,
                        "--budget-s", "400"], env=env, capture_output=True, text=True, timeout=500)
    log = r.stdout + r.stderr
    assert r.returncode == 1, log[-3000:]  # a layer faulted
    recs = [json.loads(line) for line in (tmp_path / "diag.jsonl").read_text().splitlines()]
    died = [x for x in recs if x["event"] == "died"]
    assert [(x["layer"], x["rc"]) for x in died] == [(layer, 77)], died
    # The second worker went on past it: every other layer checked, once, and right.
    checked = [x for x in recs if x["event"] == "checked" and "variant" not in x]
    # (features.1 runs in features.0's kernel, with the stem: one layer.)
    names = [f"features.{i}" for i in range(19) if i != 1] + ["classifier"]
    assert sorted({x["layer"] for x in checked}) == sorted(set(names) - {layer})
    assert all(x["ok"] for x in checked), checked
    # The faulting block alone, in its config's variants (each its own process): as shipped it
    # dies again, each of three times; every other variant runs, and right.
    variants = {x["variant"]: x["rc"] for x in recs if x["event"] == "variant_exit"}
    shipped = {v: variants.pop(v) for v in list(variants) if v.startswith("as shipped")}
    assert list(shipped.values()) == [77, 77, 77], shipped
    assert "no inline PTX" in variants and len(variants) >= 2 and set(variants.values()) == {0}, variants
    ran = {x["variant"] for x in recs if x["event"] == "checked" and x.get("variant") and x["layer"] == layer}
    assert ran == set(variants)
    # The workaround: the first switch-off variant that ran, as a tuned table the launchers read.
    first = next(v for v in variants if v not in ("no inline PTX", "no wgmma"))  # a config variant
    assert log.splitlines()[-1] == (f"gpu_diag: 18 layer runs checked, 0 wrong; 1 faulted: {layer} (batch 1); "
                                    f"workaround: {layer} faulted at batch 1 as shipped; {first} ran"), log
    env_lines = (tmp_path / "workaround.env").read_text().split()
    assert env_lines == [f"MNV2_FAST_TUNED_DIR={(tmp_path / 'workaround').resolve()}"]
    entry, = json.loads((tmp_path / "workaround" / "default.json").read_text())["blocks"]
    start = next(x for x in recs if x["event"] == "start" and x["layer"] == layer and "variant" not in x)
    assert entry["shape"] == start["shape"] and entry["batch"] == start["batch_range"]
    assert entry["config"] == dict(start["config"], **{first.removesuffix(" off"): False})


def test_a_faulting_blocks_variants_are_configs_its_shape_allows():
    """Each switch of the shipped block configs turned off, with what needs it (tall groups need
    2x2 groups, which need joined products), is still a valid config of its block: a variant
    the launcher refused would be recorded as a failure of the variant, not of the switch."""
    import importlib.util

    import torch

    from mnv2_fast.kernels.records import BlockConfig
    from mnv2_fast.tools.inventory import shipped_launches

    spec = importlib.util.spec_from_file_location("gpu_diag", ROOT / "bench" / "gpu_diag.py")
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    seen = set()
    for launch in shipped_launches():
        if launch.kind != "block" or launch.dtype != torch.float16:
            continue
        for label, cfg, _ in diag._variants(launch.config.to_dict()):
            if cfg is not None:
                BlockConfig.from_dict(cfg).validate(launch.shape)
                seen.add(label)
    assert {"tall off", "quads off", "join_pairs off"} <= seen, seen
