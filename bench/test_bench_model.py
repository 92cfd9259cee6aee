"""The whole MobileNetV2 1.0 at 224 px: fused kernels (plain and as one CUDA graph) against
cuDNN (channels_last, with and without BN folded) and torch.compile.  Besides the time it
records the peak memory of one call and the first call's time (compile or capture included).

Matrix: MNV2_BENCH_DTYPES x MNV2_BENCH_BATCHES x providers (see benchlib), where
fused_graph runs at batches 1 and 32 (a latency tool), torch.compile at float16 batches
1 and 256 and float32 batch 256 (its compile time is what the GPU budget allows), and the
eager baselines with cudnn.benchmark off and on.  The headline cases (float16, batches 256
and 1) run MNV2_BENCH_REPEATS times, interleaved; bench/summarize.py takes their median.
Smoke: width 0.35 at 32 px, batch 1, providers fused, eager_cl and eager_cl_folded.
"""

import pytest
import torch

import benchlib
from mnv2_fast.model import mobilenet_v2
from mnv2_fast.tools.providers import MODEL_PROVIDERS, make_model_provider
from mnv2_fast.tools.testing import randomize_bn

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
    params = []
    for dtype in s.dtypes:
        for batch in s.batches:
            for provider in providers:
                phase = benchlib.phase_of(s, provider, dtype, batch)
                marks = benchlib.case_marks(s, _measured(provider, dtype, batch, s.smoke), phase)
                for repeat in range(s.repeats if phase == "headline" else 1):
                    params += [pytest.param(provider, dtype, batch, cudnn_bm, repeat, marks=marks,
                                            id=benchlib.case_id(provider, dtype, batch, cudnn_bm, repeat))
                               for cudnn_bm in benchlib.cudnn_benchmark_modes(provider)]
    metafunc.parametrize("provider,dtype,batch,cudnn_benchmark,repeat", params)


@pytest.fixture(scope="module")
def model(settings):
    """The unfused reference network (random weights, trained-looking BN), shared by all cases:
    each provider works on its own copy."""
    torch.manual_seed(0)
    net = mobilenet_v2(SMOKE_WIDTH if settings.smoke else WIDTH)
    return randomize_bn(net, torch.Generator().manual_seed(0)).eval()


def test_model(benchmark, settings, model, provider, dtype, batch, cudnn_benchmark, repeat):
    resolution = SMOKE_RESOLUTION if settings.smoke else RESOLUTION
    dt = getattr(torch, dtype)
    info = benchlib.run_case(benchmark, settings, provider,
                             lambda: make_model_provider(provider, model, batch, dt, settings.device), model,
                             (batch, 3, resolution, resolution), dt, cudnn_benchmark, whole_model=True)
    benchmark.extra_info.update(kind="model", provider=provider, dtype=dtype, batch=batch, width=model.width_mult,
                                resolution=resolution, repeat=repeat, **info)
