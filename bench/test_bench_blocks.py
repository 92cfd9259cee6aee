"""The 17 inverted-residual blocks of MobileNetV2 1.0, each at its input size in a 224-px
network: the fused kernel against cuDNN (channels_last, with and without BN folded) and
torch.compile; and, as the experiment that checks the performance model's choice of launch
config, the fused kernel with the heuristic's config (provider fused_heuristic, float16 batch
256).  The eager baselines
run with cudnn.benchmark off and on.

Matrix: MNV2_BENCH_DTYPES x MNV2_BENCH_BATCHES x MNV2_BENCH_BLOCKS x providers (see
benchlib).  torch.compile is measured at float16 batch 256 only: one compile per block is
what the GPU time budget allows, and those cases run last.  Smoke: every block at 4x4 or
8x8, batch 1, all providers but compile, which runs for one block (a few seconds on CPU).
"""

import json

import pytest
import torch

import benchlib
from mnv2_fast.kernels import choose_block_config, default_config
from mnv2_fast.tools.static_check import describe
from mnv2_fast.model import InvertedResidual, block_specs
from mnv2_fast.tools.providers import BLOCK_PROVIDERS, make_block_provider
from mnv2_fast.tools.testing import randomize_bn

WIDTH, RESOLUTION = 1.0, 224
SPECS = block_specs(WIDTH, resolution=RESOLUTION)  # each at its input size in a 224-px network
COMPILE_AT = ("float16", 256)
ALT_AT = ("float16", 256)  # the config experiment (provider fused_heuristic)
SMOKE_ALT = (3, 12)
SMOKE_COMPILE = (3, "float32")  # (block, dtype): expand, depthwise, project and the residual


def smoke_size(size: int) -> int:
    return 8 if size >= 28 else 4


def _measured(block: int, provider: str, dtype: str, batch: int, smoke: bool) -> bool:
    if provider == "fused_heuristic":
        # Smoke: two blocks only; GPU-sized tiles are slow in the interpreter.
        return block in SMOKE_ALT if smoke else (dtype, batch) == ALT_AT
    if provider != "compile":
        return True
    return (block, dtype) == SMOKE_COMPILE if smoke else (dtype, batch) == COMPILE_AT


def pytest_generate_tests(metafunc):
    s = benchlib.settings(metafunc.config)
    providers = [p for p in s.providers if p in BLOCK_PROVIDERS]
    params = [
        pytest.param(block, provider, dtype, batch, cudnn_bm,
                     id=f"b{block:02d}-" + benchlib.case_id(provider, dtype, batch, cudnn_bm),
                     marks=benchlib.case_marks(s, _measured(block, provider, dtype, batch, s.smoke),
                                               benchlib.phase_of(s, provider, dtype, batch, block)))
        for dtype in s.dtypes for batch in s.batches for block in s.blocks for provider in providers
        for cudnn_bm in benchlib.cudnn_benchmark_modes(provider)
    ]
    metafunc.parametrize("block,provider,dtype,batch,cudnn_benchmark", params)


def make_block(index: int) -> InvertedResidual:
    """Block `index` (1-based) with random weights and trained-looking BN, in eval mode."""
    spec = SPECS[index - 1]
    torch.manual_seed(index)
    block = InvertedResidual(spec.cin, spec.cout, spec.stride, spec.t)
    return randomize_bn(block, torch.Generator().manual_seed(index)).eval()


def test_block(benchmark, settings, block, provider, dtype, batch, cudnn_benchmark):
    spec = SPECS[block - 1]
    if settings.smoke:
        spec = spec.at(smoke_size(spec.h), smoke_size(spec.w))
    size = spec.h
    dt = getattr(torch, dtype)
    module = make_block(block)
    info = benchlib.run_case(benchmark, settings, provider,
                             lambda: make_block_provider(provider, module, batch, dt, settings.device), module,
                             (batch, spec.cin, size, size), dt, cudnn_benchmark, whole_model=False)
    if provider.startswith("fused"):
        cfg = (default_config(spec, dt.itemsize, batch) if provider == "fused_heuristic"
               else choose_block_config(spec, dt, batch, torch.device(settings.device)))
        info["config"] = describe(cfg)
        info["config_json"] = json.dumps(cfg.to_dict())  # for `mnv2-fast perf-model --recalibrate`
    benchmark.extra_info.update(
        kind="block", block=block, provider=provider, dtype=dtype, batch=batch,
        cin=spec.cin, hidden=spec.hidden, cout=spec.cout, stride=spec.stride, size=size,
        bytes=spec.floor_bytes(batch, dt.itemsize), flops=spec.flops(batch), **info,
    )
