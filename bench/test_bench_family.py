"""Other models of the inverted-residual family, whole, at float16 batch 256 and each one's
training resolution: the fused kernels against cuDNN (channels_last; cudnn.benchmark off and
on) and torch.compile.

    efficientnet_lite0       timm: ReLU6, 3x3 and 5x5 depthwise, a depthwise-separable first block
    mnasnet1_0               torchvision: ReLU, 3x3 and 5x5, its stem's separable pair
    mobilenetv4_conv_small   timm: MobileNetV4's UIB blocks (start depthwise, FFN)

Random weights (mnv2_fast.tools.zoo).  timm is a development dependency: without it the timm
models are skipped with that reason (recorded in the JSONL and the summary), and
torchvision's mnasnet1_0 still runs.  These cases form the phase "family" (bench/benchlib.py):
the fused and eager cases of every model first, torch.compile after them.  Smoke: 32 px,
batch 1, fused and eager_cl.
"""

import pytest
import torch

import benchlib
from mnv2_fast.tools import zoo
from mnv2_fast.tools.providers import make_model_provider

NETWORKS = ("efficientnet_lite0", "mnasnet1_0", "mobilenetv4_conv_small")
PROVIDERS = ("fused", "eager_cl", "compile")
SMOKE_PROVIDERS = ("fused", "eager_cl")
AT = ("float16", 256)  # (dtype, batch) measured on a GPU
SMOKE_RESOLUTION = 32


def pytest_generate_tests(metafunc):
    s = benchlib.settings(metafunc.config)
    dtype, batch = ("float16", 1) if s.smoke else AT
    providers = [p for p in s.providers if p in (SMOKE_PROVIDERS if s.smoke else PROVIDERS)]
    marks = benchlib.case_marks(s, True, "family")
    params = [pytest.param(network, provider, dtype, batch, cudnn_bm, marks=marks,
                           id=f"{network}-" + benchlib.case_id(provider, dtype, batch, cudnn_bm))
              for network in NETWORKS for provider in providers for cudnn_bm in benchlib.cudnn_benchmark_modes(provider)]
    metafunc.parametrize("network,provider,dtype,batch,cudnn_benchmark", params)


def missing_library(network: str) -> str | None:
    """Why the network cannot be built here, or None."""
    if zoo.library(network)[0] != "timm":
        return None
    try:
        import timm  # noqa: F401
    except ImportError:
        return "timm is not installed (a development dependency of mnv2-fast): no timm models in this run"
    return None


def test_family(benchmark, settings, network, provider, dtype, batch, cudnn_benchmark):
    reason = missing_library(network)
    if reason:
        pytest.skip(reason)
    resolution = SMOKE_RESOLUTION if settings.smoke else zoo.resolution(network)
    dt = getattr(torch, dtype)
    model = zoo.build(network)
    info = benchlib.run_case(benchmark, settings, provider,
                             lambda: make_model_provider(provider, model, batch, dt, settings.device), model,
                             (batch, 3, resolution, resolution), dt, cudnn_benchmark, whole_model=True)
    benchmark.extra_info.update(kind="family", network=network, provider=provider, dtype=dtype, batch=batch,
                                resolution=resolution, **info)
