"""Tensors of more than 2^31 elements, without a GPU.

* Each kernel's offset arithmetic past 2^31 (tests/offsets_probe.py): the programs of the last
  images of a launch over more than 2^31 elements run under Triton's interpreter, in a child
  process (a wrapped offset may crash it); the rest of those tensors is never touched, so it
  costs no memory.
* The launchers refuse what their 32-bit offsets within an image cannot reach.

test_gpu.py runs whole launches past 2^31 elements on a GPU."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import DEVICE, sparse_empty
from mnv2_fast.kernels import BlockConfig, HeadConfig, head_pool, inverted_residual, stem_conv

# On a GPU the guards' tensors are real allocations of 4-9 GB: with test_gpu.py's, on one
# pytest-xdist worker (bench/gpu_run.sh), never several at once.
pytestmark = pytest.mark.xdist_group("gpu_memory")
PROBE = Path(__file__).with_name("offsets_probe.py")
KERNELS = ["block", "stem", "stem_block", "head", "linear"]


@pytest.fixture(scope="module")
def probe_results(request):
    """The probes of the kernels this session tests, in as few child processes as crashes
    allow: {kernel: result}."""
    results: dict = {}
    left = [k for k in KERNELS if any(getattr(item, "originalname", "") == "test_offsets_past_2_31_elements"
                                      and item.callspec.params["kernel"] == k for item in request.session.items)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    while left:
        r = subprocess.run([sys.executable, str(PROBE), *left], capture_output=True, text=True, env=env, timeout=900)
        started = None
        for line in r.stdout.splitlines():
            if not line.startswith("{"):
                continue
            item = json.loads(line)
            if item.get("started"):
                started = item["kernel"]
            else:
                results[item["kernel"]] = item
                started = None
        if started is not None:  # the process died in this kernel's probe
            results[started] = {"ok": False, "detail": f"the probe process died (exit status {r.returncode}) in the "
                                                       f"{started} kernel: an offset wrapped?\n{r.stderr[-2000:]}"}
        elif r.returncode != 0 or not set(left) <= set(results):
            pytest.fail(f"the probe failed to run (exit status {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        left = [k for k in left if k not in results]
    return results


@pytest.mark.parametrize("kernel", KERNELS)
def test_offsets_past_2_31_elements(kernel, probe_results):
    result = probe_results[kernel]
    assert result["ok"], f"{kernel}: {result['detail']}\n{result.get('traceback', '')}"


# ---- the launchers' guards: one image (or one program's images) beyond 2^31 elements

def _huge_nhwc(n, c, h, w):
    """Never read: the launcher must refuse it before any kernel runs."""
    return sparse_empty((n, c, h, w), channels_last=True)


@pytest.fixture
def no_launch(monkeypatch):
    """A launch past the guards fails at once (instead of running a kernel over 2^31 elements)."""
    def launch(*args, **kwargs):
        raise AssertionError("launched: the launcher did not refuse the input")

    for name in ("block", "stem", "head"):
        monkeypatch.setattr(importlib.import_module(f"mnv2_fast.kernels.{name}"), "launch", launch)


def _block_weights(cin, hidden, cout, dtype=torch.float16):
    return [torch.zeros(cin, hidden, dtype=dtype, device=DEVICE), torch.zeros(hidden, device=DEVICE),
            torch.zeros(9, hidden, device=DEVICE), torch.zeros(hidden, device=DEVICE),
            torch.zeros(hidden, cout, dtype=dtype, device=DEVICE), torch.zeros(cout, device=DEVICE)]


@pytest.mark.parametrize("n,cin,h,w,cout,imgs", [
    (1, 16, 16384, 8193, 16, 1),  # the input image: 2^31 + 16 * 16384 elements
    (1, 16, 8192, 8192, 64, 1),  # the output image: 2^32 elements
    (2, 16, 8192, 8193, 16, 2),  # each image fits, a tile's two do not
])
def test_block_refuses_images_beyond_32_bit_offsets(n, cin, h, w, cout, imgs, no_launch):
    x = _huge_nhwc(n, cin, h, w)
    with pytest.raises(ValueError, match="more than 2\\^31: the block kernel indexes within a tile's images in 32 bits"):
        inverted_residual(x, *_block_weights(cin, 32, cout), stride=1, residual=False,
                          config=BlockConfig(tile_h=2, tile_w=8, imgs=imgs), out=_huge_nhwc(n, cout, h, w))


def test_block_takes_the_largest_image_that_fits(monkeypatch):
    """2^31 - 1 elements per image is fine: the launcher gets as far as the launch."""
    from mnv2_fast.kernels import block

    launched = []
    monkeypatch.setattr(block, "launch", lambda *args, **kwargs: launched.append(args[1]))
    monkeypatch.setattr(block, "programs_for", lambda *args: 1)  # no scratch for a whole grid
    x = _huge_nhwc(1, 1, 46341, 46340)  # 2147441940 elements: just below 2^31
    inverted_residual(x, *_block_weights(1, 16, 1), stride=1, residual=False, config=BlockConfig(tile_h=2, tile_w=8),
                      out=_huge_nhwc(1, 1, 46341, 46340))
    assert launched == [(1,)]


@pytest.mark.parametrize("cin,h,w,cout", [
    (3, 26755, 26755, 16),  # the input image: 2^31 + 3107 elements
    (3, 8192, 8192, 128),  # the output image: 4096^2 * 128 = 2^31 elements
])
def test_stem_refuses_images_beyond_32_bit_offsets(cin, h, w, cout, no_launch):
    x = sparse_empty((1, cin, h, w))
    weight = torch.zeros(cin * 9, cout, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="spans more than 2\\^31 elements; the stem indexes within an image in 32 bits"):
        stem_conv(x, weight, torch.zeros(cout, device=DEVICE), out=_huge_nhwc(1, cout, (h + 1) // 2, (w + 1) // 2))


@pytest.mark.parametrize("n,h,w,cout,imgs", [
    (1, 26755, 26755, 16, 1),  # the input image: 2^31 + 3107 elements
    (2, 20000, 20000, 16, 2),  # each image fits (1.2e9 elements), a tile's two do not
    (1, 16386, 16386, 32, 1),  # the output image: 8193^2 * 32, past 2^31
])
def test_stem_block_refuses_images_beyond_32_bit_offsets(n, h, w, cout, imgs, no_launch):
    from mnv2_fast.kernels import stem_block

    x = sparse_empty((n, 3, h, w))
    w_stem, b_stem, w_dw, b_dw, w_proj, b_proj = _block_weights(27, 32, cout)
    with pytest.raises(ValueError, match="more than 2\\^31: the block kernel indexes within a tile's images in 32 bits"):
        stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, config=BlockConfig(tile_h=2, tile_w=8, imgs=imgs),
                   out=_huge_nhwc(n, cout, (h + 1) // 2, (w + 1) // 2))


@pytest.mark.parametrize("n,imgs,size", [(1, 1, 2600), (4, 4, 1300)])  # one image, or four, of 2.16e9 elements
def test_head_refuses_image_groups_beyond_32_bit_offsets(n, imgs, size, no_launch):
    x = _huge_nhwc(n, 320, size, size)
    assert imgs * 320 * size * size > 2**31
    weight = torch.zeros(320, 64, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="span more than 2\\^31 elements: the head kernel indexes within a program"):
        head_pool(x, weight, torch.zeros(64, device=DEVICE), config=HeadConfig(imgs=imgs, block_n=64))
