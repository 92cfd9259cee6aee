"""The whole MobileNetV2 1.0 at 224 px: fused kernels (plain and as one CUDA graph) against
cuDNN (channels_last, with and without BN folded) and torch.compile.  Besides the time it
records the peak memory of one call and the first call's time (compile or capture included).

Matrix: MNV2_BENCH_DTYPES x MNV2_BENCH_BATCHES x providers (see benchlib), where
fused_graph runs at batches 1 and 32 (a latency tool) and torch.compile at float16 batches
1 and 256 and float32 batch 256 (its compile time is what the GPU budget allows).
Smoke: width 0.35 at 32 px, batch 1, providers fused, eager_cl and eager_cl_folded.
"""

import pytest
import torch

import benchlib
from mnv2_fast.model import mobilenet_v2
from mnv2_fast.tools.providers import MODEL_PROVIDERS, make_model_provider
from mnv2_fast.tools.testing import randomize_bn
from mnv2_fast.tools.timing import first_call, nhwc_input_pool

WIDTH, RESOLUTION = 1.0, 224
SMOKE_WIDTH, SMOKE_RESOLUTION = 0.35, 32
SMOKE_PROVIDERS = ("fused", "eager_cl", "eager_cl_folded")  # the others need CUDA or minutes
GRAPH_BATCHES = (1, 32)
COMPILE_AT = {("float16", 1), ("float16", 256), ("float32", 256)}


def _measured(provider: str, dtype: str, batch: int, smoke: bool) -> bool:
    if smoke:
        return provider in SMOKE_PROVIDERS
    if provider == "fused_graph":
        return batch in GRAPH_BATCHES
    if provider == "compile":
        return (dtype, batch) in COMPILE_AT
    return True


def pytest_generate_tests(metafunc):
    s = benchlib.settings(metafunc.config)
    providers = [p for p in s.providers if p in MODEL_PROVIDERS]
    params = [
        pytest.param(provider, dtype, batch, id=f"{provider}-{dtype}-bs{batch}",
                     marks=() if _measured(provider, dtype, batch, s.smoke) else benchlib.DESELECT)
        for dtype in s.dtypes for batch in s.batches for provider in providers
    ]
    metafunc.parametrize("provider,dtype,batch", params)


@pytest.fixture(scope="module")
def model(settings):
    """The unfused reference network (random weights, trained-looking BN), shared by all cases:
    each provider works on its own copy."""
    torch.manual_seed(0)
    net = mobilenet_v2(SMOKE_WIDTH if settings.smoke else WIDTH)
    return randomize_bn(net, torch.Generator().manual_seed(0)).eval()


def test_model(benchmark, settings, model, provider, dtype, batch):
    resolution = SMOKE_RESOLUTION if settings.smoke else RESOLUTION
    dt = getattr(torch, dtype)
    inputs = nhwc_input_pool((batch, 3, resolution, resolution), dt, settings.device)
    fn, first_s = first_call(lambda: make_model_provider(provider, model, batch, dt, settings.device), inputs[0])
    info = benchlib.measure(benchmark, fn, inputs, settings)
    benchmark.extra_info.update(kind="model", provider=provider, dtype=dtype, batch=batch, width=model.width_mult,
                                resolution=resolution, first_call_s=first_s, **info)
