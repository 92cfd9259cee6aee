"""mnv2_fast.export and `mnv2-fast export`: an AOTInductor package that runs without mnv2_fast.

The package itself needs a GPU (tests/test_aoti_gpu.py makes one and loads it in a process
where mnv2_fast cannot be imported).  Here, without one: the refusal, the lowering that makes
the package self-contained (every registered op replaced by its Triton launches, traced on
fake CUDA tensors in a process with the compiled kernels, not the interpreter), and the
checks that refuse a package still calling an op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import mnv2_fast
from helpers import DEVICE, INTERPRETER, randomize_bn
from mnv2_fast import deploy, optimize
from mnv2_fast.tools import cli

ROOT = Path(__file__).resolve().parents[1]
cpu_only = pytest.mark.skipif(DEVICE.type != "cpu", reason="what a machine without a GPU gets")


def _model():
    return randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=10)).eval()


@cpu_only
def test_export_without_cuda_says_so_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="holds Triton kernels compiled for a GPU, and no CUDA device is available"):
        mnv2_fast.export(_model(), torch.randn(1, 3, 32, 32), tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="rank-4"):
        mnv2_fast.export(_model(), torch.randn(3, 32, 32), tmp_path / "m.pt2")
    assert not list(tmp_path.iterdir())


@cpu_only
def test_cli_export_without_gpu_refuses_with_the_reason(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device is available here.*torch.export.export") as err:
        cli.main(["export", "--out", str(tmp_path / "m.pt2"), "--width", "0.35"])
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


LOWER = r"""
import collections, json, sys
import torch
import mnv2_fast
from mnv2_fast import deploy, ops, optimize
from mnv2_fast.tools.testing import randomize_bn
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

model = randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=10)).eval()
result = {}
for backend in ("triton", "torch"):
    fast = optimize(model, backend=backend)
    with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):  # CUDA tensors, no GPU
        fast = fast.to("cuda", torch.float16)
        x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    ep = torch.export.export(fast, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=512)},))
    lowered = deploy.lower_for_package(ep, plan_batch=2)
    nodes = [n for n in lowered.graph_module.graph.nodes if n.op == "call_function"]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in nodes
               if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    result[backend] = dict(
        before=deploy.ops_in_graph(ep), after=deploy.ops_in_graph(lowered),
        modules=sorted({getattr(k, "fn", k).__module__ for k in kernels}), launches=len(kernels),
        batch=[[int(r.lower), int(r.upper)] for r in lowered.range_constraints.values()],
        aten=sorted({str(n.target) for n in nodes if "conv" in str(n.target)}))
    if backend == "triton":
        triton_ep = ep
ops.head_pool = lambda *args: 1 / 0  # a part whose lowering fails
try:
    deploy.lower_for_package(triton_ep, plan_batch=2)
except deploy.PackageError as err:
    result["error"] = str(err)
print(json.dumps(result))
"""


@pytest.mark.skipif(not INTERPRETER, reason="the GPU test makes a real package")
def test_lowering_leaves_no_op_and_keeps_the_dynamic_batch():
    """In a process with the compiled kernels (TRITON_INTERPRET unset; no GPU is touched: the
    model and input are fake CUDA tensors, the launch configs the heuristic's)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MNV2_FAST_TUNED"] = "none"  # which GPU's tuned table: none (the heuristic), asking no driver
    r = subprocess.run([sys.executable, "-c", LOWER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    ops = ["mnv2_fast::head_pool", "mnv2_fast::inverted_residual", "mnv2_fast::linear", "mnv2_fast::stem_conv"]
    triton, folded = result["triton"], result["torch"]
    assert triton["before"] == ops and triton["after"] == []
    assert triton["launches"] == 20 and all(m.startswith("mnv2_fast.kernels.") for m in triton["modules"]), triton
    assert triton["batch"] == [[1, 512]] and not triton["aten"]
    # Parts on the "torch" backend become PyTorch's own ops: self-contained too, not fused.
    assert folded["before"] == ops and folded["after"] == [] and folded["launches"] == 0 and folded["aten"]
    assert result["error"].startswith("could not lower mnv2_fast::head_pool into its Triton launches for the package: "
                                      "ZeroDivisionError"), result.get("error")


@pytest.mark.skipif(not INTERPRETER, reason="the interpreter's refusal")
def test_lowering_refuses_the_interpreters_kernels():
    ep = torch.export.export(torch.nn.ReLU6(), (torch.randn(2, 3, 4, 4),))
    with pytest.raises(deploy.PackageError, match="unset TRITON_INTERPRET"):
        deploy.lower_for_package(ep, plan_batch=2)


def test_an_op_left_in_the_graph_or_the_package_is_named(tmp_path):
    ep = torch.export.export(optimize(_model(), backend="torch"), (torch.randn(2, 3, 32, 32),))
    assert deploy.ops_in_graph(ep) == ["mnv2_fast::head_pool", "mnv2_fast::inverted_residual",
                                       "mnv2_fast::linear", "mnv2_fast::stem_conv"]
    calls, clean = tmp_path / "calls.pt2", tmp_path / "clean.pt2"
    with zipfile.ZipFile(calls, "w") as z:
        z.writestr("m/data/aotinductor/model/wrapper.cpp", 'aoti_torch_call_dispatcher("mnv2_fast::linear", "", s);')
        z.writestr("m/data/aotinductor/model/extern.json", '{"target": "mnv2_fast::head_pool"}')
    with zipfile.ZipFile(clean, "w") as z:
        z.writestr("m/data/aotinductor/model/wrapper.cpp", "launch(mnv2_fast_kernels_block_0, grid);")
    assert deploy.ops_in_package(calls) == ["mnv2_fast::head_pool", "mnv2_fast::linear"]
    assert deploy.ops_in_package(clean) == []
