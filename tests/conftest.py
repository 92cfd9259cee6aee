"""Test harness: Triton's interpreter on CPU-only machines, seeds, tolerances, BN randomisation.

Triton's interpreter must be switched on before the kernels are imported, so it is switched
on here, at the top of the first file pytest imports, and only when no CUDA device exists.
"""

import torch  # importing torch does not import triton

from mnv2_fast.tools.interpreter import use_interpreter  # imports no kernels

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    use_interpreter()

import pytest  # noqa: E402

from helpers import DEVICE  # noqa: E402,F401


def pytest_configure(config):
    # bench/gpu_run.sh runs the suite with pytest-xdist (--dist loadgroup), which defines this
    # marker; without xdist it must still be known.
    config.addinivalue_line("markers", "xdist_group(name): tests that share one xdist worker")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    """Every test starts from its own fixed seed: reproducible, yet inputs differ between tests."""
    seed = sum(request.node.nodeid.encode()) % (2**31)
    torch.manual_seed(seed)
    yield


@pytest.fixture(autouse=True)
def strict_fp32():
    """Every test: fp32 products in IEEE fp32 (no TF32), as the float64 reference and the fp32
    tolerance assume.  PyTorch's default (cudnn.allow_tf32 = True), which the fused kernels
    follow, would put every fp32 test on TF32 on a GPU; a test about TF32 switches it on itself."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
