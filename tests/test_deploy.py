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
import json
import pathlib
import sys
import zipfile

import torch
import torch._inductor
import mnv2_fast
from mnv2_fast import deploy, ops, optimize
from mnv2_fast.kernels import block
from mnv2_fast.tools.testing import randomize_bn
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

block._sm_count = lambda index: 132  # the persistent grid's multiprocessors: an H100's, asking no driver
model = randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=10)).eval()


def exported(backend, dynamic):
    fast = optimize(model, backend=backend)
    with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):  # CUDA tensors, no GPU
        fast = fast.to("cuda", torch.float16)
        x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    shapes = ({0: torch.export.Dim("batch", min=1, max=512)},) if dynamic else None
    return torch.export.export(fast, (x,), dynamic_shapes=shapes)


def lowered(backend, dynamic):
    ep = exported(backend, dynamic)
    try:
        low = deploy.lower_for_package(ep)
    except deploy.PackageError as err:
        return dict(error=str(err))
    nodes = [n for n in low.graph_module.graph.nodes if n.op == "call_function"]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in nodes
               if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    return dict(before=deploy.ops_in_graph(ep), after=deploy.ops_in_graph(low), launches=len(kernels),
                modules=sorted({getattr(k, "fn", k).__module__ for k in kernels}),
                batch=[[int(r.lower), int(r.upper)] for r in low.range_constraints.values()],
                aten=sorted({str(n.target) for n in nodes if "conv" in str(n.target)}))


result = {f"{backend}-{'dynamic' if dynamic else 'static'}": lowered(backend, dynamic)
          for backend, dynamic in (("triton", False), ("torch", True), ("triton", True))}

# export() end to end, AOTInductor's compiler replaced by a stand-in that writes the program's
# code into a zip (and, the second time, a call of an op, as a package calling one would).
out = pathlib.Path(sys.argv[1])


def compile_and_package(ep, package_path, extra=""):
    with zipfile.ZipFile(package_path, "w") as z:
        z.writestr("model/wrapper.py", ep.graph_module.code + extra)
    return package_path


torch._inductor.aoti_compile_and_package = compile_and_package
fast = optimize(model, backend="triton")
with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
    fast = fast.to("cuda", torch.float16)
    x = torch.randn(1, 3, 64, 64, device="cuda", dtype=torch.float16)
no_cuda = torch.cuda.is_available


def cuda_once():  # export() asks first and hears yes; the tracer after it must hear the truth
    torch.cuda.is_available = no_cuda
    return True


torch.cuda.is_available = cuda_once
path = deploy.export(fast, x, out / "m.pt2")
code = zipfile.ZipFile(path).read("model/wrapper.py").decode()
result["export"] = dict(files=sorted(p.name for p in out.iterdir()), kernels=code.count("higher_order.triton_kernel_wrapper_functional("),
                        ops=deploy.ops_in_package(path))
torch._inductor.aoti_compile_and_package = lambda ep, package_path: compile_and_package(
    ep, package_path, "\n# aoti_torch_call_dispatcher('mnv2_fast::linear')")
torch.cuda.is_available = cuda_once
try:
    deploy.export(fast, x, out / "calls.pt2")
except deploy.PackageError as err:
    result["export"]["calls"] = str(err)
result["export"]["files_after"] = sorted(p.name for p in out.iterdir())

ops.head_pool = lambda *args: 1 / 0  # a part whose lowering fails
result["failing"] = lowered("triton", False)
print(json.dumps(result))
"""


@pytest.mark.skipif(not INTERPRETER, reason="the GPU test makes a real package")
def test_lowering_leaves_no_op_and_names_what_it_cannot_lower(tmp_path):
    """In a process with the compiled kernels (TRITON_INTERPRET unset; no GPU is touched: the
    model and input are fake CUDA tensors, the launch configs the heuristic's)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MNV2_FAST_TUNED"] = "none"  # which GPU's tuned table: none (the heuristic), asking no driver
    r = subprocess.run([sys.executable, "-c", LOWER, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    ops = ["mnv2_fast::head_pool", "mnv2_fast::inverted_residual", "mnv2_fast::linear", "mnv2_fast::stem_block"]
    static = result["triton-static"]
    assert static["before"] == ops and static["after"] == [] and not static["aten"], static
    assert static["launches"] == 19 and all(m.startswith("mnv2_fast.kernels.") for m in static["modules"]), static
    # Parts on the "torch" backend become PyTorch's own ops, for any batch: self-contained, not fused.
    folded = result["torch-dynamic"]
    assert folded["before"] == ops and folded["after"] == [] and folded["launches"] == 0 and folded["aten"]
    assert folded["batch"] == [[1, 512]]
    # The launchers decide by the batch (the stem's launches, the block's persistent grid): named.
    assert result["triton-dynamic"]["error"].startswith(
        "mnv2_fast::stem_block cannot be lowered with a dynamic batch: its launcher decides"), result["triton-dynamic"]
    # export(): the lowered program compiled (by a stand-in here), checked, moved into place;
    # a package that names an op is refused and leaves nothing.
    export = result["export"]
    assert export["files"] == ["m.pt2"] and export["kernels"] == 19 and export["ops"] == [], export
    assert export["calls"].startswith("the compiled package calls mnv2_fast::linear, which it does not hold"), export
    assert export["files_after"] == ["m.pt2"], export
    assert result["failing"]["error"].startswith(
        "could not lower mnv2_fast::head_pool into its Triton launches for the package: ZeroDivisionError"), result


@pytest.mark.skipif(not INTERPRETER, reason="the interpreter's refusal")
def test_lowering_refuses_the_interpreters_kernels():
    ep = torch.export.export(torch.nn.ReLU6(), (torch.randn(2, 3, 4, 4),))
    with pytest.raises(deploy.PackageError, match="unset TRITON_INTERPRET"):
        deploy.lower_for_package(ep)


def test_an_op_left_in_the_graph_or_the_package_is_named(tmp_path):
    ep = torch.export.export(optimize(_model(), backend="torch"), (torch.randn(2, 3, 32, 32),))
    assert deploy.ops_in_graph(ep) == ["mnv2_fast::head_pool", "mnv2_fast::inverted_residual",
                                       "mnv2_fast::linear", "mnv2_fast::stem_block"]
    calls, clean = tmp_path / "calls.pt2", tmp_path / "clean.pt2"
    with zipfile.ZipFile(calls, "w") as z:
        z.writestr("m/data/aotinductor/model/wrapper.cpp", 'aoti_torch_call_dispatcher("mnv2_fast::linear", "", s);')
        z.writestr("m/data/aotinductor/model/extern.json", '{"target": "mnv2_fast::head_pool"}')
    with zipfile.ZipFile(clean, "w") as z:
        z.writestr("m/data/aotinductor/model/wrapper.cpp", "launch(mnv2_fast_kernels_block_0, grid);")
    assert deploy.ops_in_package(calls) == ["mnv2_fast::head_pool", "mnv2_fast::linear"]
    assert deploy.ops_in_package(clean) == []
