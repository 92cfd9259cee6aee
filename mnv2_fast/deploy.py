"""`export(model, example, path)`: the fused model as an AOTInductor package (.pt2) that runs
without Python's mnv2_fast, without Triton and without this source: Python loads it with
``torch._inductor.aoti_load_package``, C++ with ``torch::inductor::AOTIModelPackageLoader``.

The registered ops (mnv2_fast/ops.py) are opaque: a package that called them would need
mnv2_fast imported wherever it is loaded.  So the package is made from a lowered program:
`lower_for_package` re-traces the exported program with every op computed by its launcher,
each Triton launch captured by ``torch.library.wrap_triton`` (a ``triton_kernel_wrapper``
node holding the kernel, its grid and its constexprs), and AOTInductor compiles those kernels
into the package as it does Triton kernels of its own.  Nothing is left to chance: an op
that survives the lowering (in the graph, or in the compiled package) is an error naming it,
and no file is written.

A package is made for the example's batch: each launcher chooses its launch config, its
grid (the block kernel's persistent grid) and its number of launches (the stem's, in groups
of 65535 images) by the batch, as it does when run eagerly, and the graph keeps those
choices.  With a symbolic batch (dynamic_batch=True) the lowering detects a launcher that
decides on the batch (a new shape guard) and names it.  fp32 products follow
torch.backends.cudnn.allow_tf32 as it is during the export.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from . import ops

__all__ = ["PackageError", "export", "lower_for_package", "ops_in_graph", "ops_in_package"]


class PackageError(RuntimeError):
    """The package cannot be made self-contained: it would call an op that it does not hold."""


def _namespace(target) -> str | None:
    """The op namespace of an FX node's target (aten, mnv2_fast, ...); None for Python
    functions (operator.getitem, ...) and higher-order operators."""
    return target.namespace if isinstance(target, torch._ops.OpOverload) else None


def ops_in_graph(ep: torch.export.ExportedProgram) -> list[str]:
    """Every registered op outside PyTorch's own (aten, prims) that the program calls: what a
    process loading a package of it would have to have registered."""
    return sorted({n.target.name() for n in ep.graph_module.graph.nodes
                   if n.op == "call_function" and _namespace(n.target) not in (None, "aten", "prims")})


_OP_NAME = re.compile(rb"mnv2_fast::([A-Za-z_][A-Za-z0-9_]*)")


def ops_in_package(path: str | os.PathLike) -> list[str]:
    """The mnv2_fast ops a package's files name (its wrapper code and extern-kernel tables call
    custom ops by their qualified names)."""
    found = set()
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            found.update(m.decode() for m in _OP_NAME.findall(archive.read(name)))
    return sorted(f"mnv2_fast::{name}" for name in found)


@contextlib.contextmanager
def _traced_launches():
    """Every launcher's launch goes through wrap_triton while a program is lowered.

    Every launcher ends with `_common.launch(kernel, grid, x, ...)`, whose `kernel[grid](...)`
    a tracer cannot see.  The launcher modules import that name, so it is swapped in each of
    them and put back afterwards (kernels/ stays free of tracing concerns).  Called with real
    tensors meanwhile (another thread), the traced launch still runs the kernel, through the
    wrapper's eager path."""
    kernels = ops.kernels()
    common = importlib.import_module(kernels.__name__ + "._common")
    original = common.launch

    def launch(kernel, grid, x, *args, **kwargs):
        if any(isinstance(g, int) and g == 0 for g in grid):  # a batch of 0 (a concrete one)
            return
        torch.library.wrap_triton(kernel)[grid](x, *args, **kwargs)

    prefix = kernels.__name__ + "."
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith(prefix) and getattr(m, "launch", None) is original]
    for m in modules:
        m.launch = launch
    try:
        yield
    finally:
        for m in modules:
            m.launch = original


def _batch_guards(x: torch.Tensor) -> int | None:
    """How many shape guards the trace holds, when x's batch is symbolic (None otherwise)."""
    batch = x.shape[0]
    return len(batch.node.shape_env.guards) if isinstance(batch, torch.SymInt) else None


def _lower(op, *args, **kwargs):
    """ops.lowering while a package is made: the op computed by its implementation, whose
    launcher's Triton launches are traced (see _traced_launches)."""
    name = next(n for n, o in ops.OPS.items() if o is op)
    x = args[0] if args else next(iter(kwargs.values()))  # the activation: the schema's first argument
    guards = _batch_guards(x)
    try:
        out = getattr(ops, name)(*args, **kwargs)
    except Exception as err:
        raise PackageError(f"could not lower mnv2_fast::{name} into its Triton launches for the package: "
                           f"{type(err).__name__}: {err}") from err
    if _batch_guards(x) != guards:
        # The launcher chose something (its launch config, grid or number of launches) by the
        # batch: the graph would hold that choice for one batch only.
        raise PackageError(f"mnv2_fast::{name} cannot be lowered with a dynamic batch: its launcher decides its "
                           "launch config or grid by the batch, which a graph for every batch cannot hold. Make the "
                           "package for one batch (dynamic_batch=False, the default)")
    return out


def lower_for_package(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`ep` with every mnv2_fast op replaced by the Triton kernel launches (or, for parts on
    the "torch" backend, the PyTorch ops) that compute it, as its launcher makes them for the
    program's batch.  Needs the compiled kernels (not Triton's interpreter: its kernels cannot
    be captured).  Raises PackageError naming the op that cannot be lowered."""
    if ops.kernels().interpreting():
        raise PackageError("a package holds compiled Triton kernels, and TRITON_INTERPRET=1 makes Triton run them "
                           "through its interpreter instead: unset TRITON_INTERPRET before importing torch")
    ops.lowering = _lower
    try:
        with _traced_launches():
            return ep.run_decompositions({})
    finally:
        ops.lowering = None


def _fused_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    from .fused import FusedPart
    from .graphs import CUDAGraphRunner
    from .optimize import optimize

    if isinstance(model, CUDAGraphRunner):
        model = model.module
    if not any(isinstance(m, FusedPart) for m in model.modules()):
        return optimize(model, backend="triton").to(example.device, example.dtype)
    t = next((t for m in model.modules() if isinstance(m, FusedPart) for t in m.buffers()), None)
    if t is not None and (t.device != example.device or t.dtype != example.dtype):
        raise ValueError(f"the model's fused weights are {t.dtype} on {t.device} but the example is {example.dtype} on "
                         f"{example.device}: move one of them (model.to(device, dtype))")
    if model.training:
        raise ValueError("the model is in training mode: call .eval() before exporting it")
    return model


def export(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, dynamic_batch: bool = False,
           max_batch: int = 4096) -> Path:
    """Write `model`, fused, as an AOTInductor package to `path` (conventionally *.pt2).

    model:   the unfused model (optimized here with backend="triton", on a copy) or what
             ``optimize`` returned (a CUDAGraphRunner is unwrapped), on example's device and dtype.
    example: an input on a CUDA device: its shape, dtype and memory format are the package's.
    dynamic_batch: a package for any batch from 1 to max_batch rather than the example's
             only.  The launchers choose their launch config and grid by the batch, so today
             this raises PackageError naming the first op whose launcher does (see README).

    Returns the path.  Load it with ``torch._inductor.aoti_load_package(path)`` (no mnv2_fast
    needed).  Raises PackageError, writing nothing, when the package could not be made
    self-contained (the message names the ops it would call).  Needs CUDA.
    """
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or example.shape[0] < 1:
        raise ValueError(f"example must be a rank-4 input tensor (N, C, H, W) with N >= 1, got "
                         f"{tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__}")
    if not torch.cuda.is_available():
        raise ValueError("an AOTInductor package of the fused model holds Triton kernels compiled for a GPU, "
                         "and no CUDA device is available here (torch.export.export(optimize(model), ...) works "
                         "without one)")
    if not example.is_cuda:
        raise ValueError(f"example is on {example.device}: the package's kernels are compiled for the example's "
                         "GPU, so give a CUDA tensor")
    path = Path(path)
    fast = _fused_model(model, example)
    traced = example
    dynamic_shapes = None
    if dynamic_batch:
        if not 2 <= max_batch or example.shape[0] > max_batch:
            raise ValueError(f"max_batch ({max_batch}) must be at least 2 and at least the example's batch "
                             f"({example.shape[0]}); for one batch only, dynamic_batch=False")
        # A batch of 1 would be specialised by the tracer (0 and 1 are kept as constants).
        traced = example if example.shape[0] > 1 else torch.cat([example, example])
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with torch.no_grad():
        ep = torch.export.export(fast, (traced,), dynamic_shapes=dynamic_shapes)
        lowered = lower_for_package(ep)
    left = ops_in_graph(lowered)
    if left:
        raise PackageError(f"cannot make a self-contained package: the program still calls {', '.join(left)}, "
                           "which a package cannot hold (loading it would need the library that registers them)")
    from torch._inductor import aoti_compile_and_package

    path.parent.mkdir(parents=True, exist_ok=True)
    # Compiled beside the destination and moved there only once checked: never a broken file at `path`.
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        made = Path(aoti_compile_and_package(lowered, package_path=str(scratch / "model.pt2")))
        named = ops_in_package(made)
        if named:
            raise PackageError(f"the compiled package calls {', '.join(named)}, which it does not hold: it would "
                               "fail wherever mnv2_fast is not imported, so it was not written")
        os.replace(made, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
