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


@pytest.fixture
def strict_fp32():
    """fp32 products in IEEE fp32 (no TF32), on the GPU as in the reference."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
