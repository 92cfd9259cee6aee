"""Which engine computes each part, on every backend: the fused Triton kernel or the folded
PyTorch ops (kernels/reference.py).  Comparing numbers cannot tell them apart (both are
right), so the engine that must not run is made to raise, and the one that must is counted."""

from __future__ import annotations

import pytest
import torch

import mnv2_fast
from helpers import DEVICE, make_block
from mnv2_fast import fuse_block, optimize
from mnv2_fast.kernels import reference

# Each part's launcher in mnv2_fast.kernels, and its twin of the same name in kernels.reference.
ENGINES = ("stem_conv", "stem_block", "inverted_residual", "head_pool", "linear")
# Calls per forward of the width-0.35 model: the stem with block 1, blocks 2-17, the head, the
# classifier.
CALLS = {"stem_conv": 0, "stem_block": 1, "inverted_residual": 16, "head_pool": 1, "linear": 1}


def _expected(backend: str, device: torch.device) -> str:
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        return "triton"
    return "torch"


class _Engines:
    """Stands in for both engines of every part: counts the calls of the expected one (and
    passes them through), raises on any call of the other."""

    def __init__(self, monkeypatch, expected: str):
        self.calls = {name: 0 for name in ENGINES}
        for name in ENGINES:
            for engine, module in (("triton", mnv2_fast.kernels), ("torch", reference)):
                real = getattr(module, name)
                monkeypatch.setattr(module, name, self._spy(name, real) if engine == expected
                                    else self._refuse(name, engine))

    def _spy(self, name, real):
        def spy(*args, **kwargs):
            self.calls[name] += 1
            return real(*args, **kwargs)
        return spy

    @staticmethod
    def _refuse(name, engine):
        def refuse(*args, **kwargs):
            raise AssertionError(f"{name} ran on the {engine} engine")
        return refuse


BACKENDS = ["triton", "torch", "auto"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_part_runs_on_the_engine_its_backend_names(backend, monkeypatch):
    model = mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=10).eval()
    fast = optimize(model, backend=backend).to(DEVICE)
    expected = _expected(backend, DEVICE)
    engines = _Engines(monkeypatch, expected)
    with torch.no_grad():
        y = fast(torch.randn(1, 3, 32, 32, device=DEVICE))
    assert y.shape == (1, 10)
    assert engines.calls == CALLS, f"backend {backend!r} on {DEVICE.type}: expected the {expected} engine"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fused_block_runs_on_the_engine_its_backend_names(backend, monkeypatch):
    fused = fuse_block(make_block(16, 24, 2, 6), backend=backend).to(DEVICE)
    engines = _Engines(monkeypatch, _expected(backend, DEVICE))
    assert fused(torch.randn(1, 16, 6, 6, device=DEVICE)).shape == (1, 24, 3, 3)
    assert engines.calls["inverted_residual"] == 1

