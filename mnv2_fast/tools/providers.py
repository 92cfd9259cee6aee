"""The providers every benchmark compares: the fused kernels and the baselines they must beat.

    fused            mnv2_fast.optimize / fuse_block, Triton kernels
    fused_heuristic  (blocks) the fused kernel with the heuristic's config instead of the tuned
                     table's (the performance model's choice): the experiment that checks it
    fused_graph      the same, replayed as one CUDA graph (whole model only)
    eager_cl         the unfused model on cuDNN, channels_last
    eager_cl_folded  the unfused model with BN folded into the convs, channels_last
    compile          torch.compile with freezing (mode reduce-overhead at batch 1)

Each `make_*` returns a callable taking a channels_last input on the device.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..fused import fuse_block
from ..optimize import optimize

MODEL_PROVIDERS = ("fused", "fused_graph", "eager_cl", "eager_cl_folded", "compile")
BLOCK_PROVIDERS = ("fused", "fused_heuristic", "eager_cl", "eager_cl_folded", "compile")


def _no_grad(fn: Callable) -> Callable:
    def call(x):
        with torch.inference_mode():
            return fn(x)

    return call


def _compiled(module: nn.Module, batch: int) -> Callable:
    import torch._inductor.config as inductor_config

    # Dynamo caches per code object and falls back to eager after a few recompiles; every
    # block shares InvertedResidual.forward, so each compiled provider starts afresh.
    torch._dynamo.reset()
    inductor_config.freezing = True  # constant-fold weights, as a deployment would
    mode = "reduce-overhead" if batch == 1 else None
    return torch.compile(module, mode=mode, dynamic=False)


def _baseline(name: str, module: nn.Module, folded: Callable[[nn.Module], nn.Module], batch: int,
              dtype: torch.dtype, device) -> Callable | None:
    """The baselines both suites share (None for other names): cuDNN channels_last as is or
    with BN folded, and torch.compile."""
    if name not in ("eager_cl", "eager_cl_folded", "compile"):
        return None
    m = folded(module) if name == "eager_cl_folded" else copy.deepcopy(module)
    m = m.to(device, dtype).to(memory_format=torch.channels_last)
    return _no_grad(_compiled(m, batch) if name == "compile" else m)


def make_model_provider(name: str, model: nn.Module, batch: int, dtype: torch.dtype,
                        device: torch.device | str = "cuda") -> Callable[[torch.Tensor], torch.Tensor]:
    """model: the unfused network in eval mode (left untouched)."""
    if name == "fused":
        return _no_grad(optimize(model, backend="triton").to(device, dtype))
    if name == "fused_graph":
        return optimize(model, backend="triton", cuda_graph=True).to(device, dtype)
    fn = _baseline(name, model, lambda m: optimize(m, backend="torch"), batch, dtype, device)
    if fn is None:
        raise ValueError(f"unknown provider {name!r}; known: {MODEL_PROVIDERS}")
    return fn


def make_block_provider(name: str, block: nn.Module, batch: int, dtype: torch.dtype,
                        device: torch.device | str = "cuda") -> Callable[[torch.Tensor], torch.Tensor]:
    """block: an unfused InvertedResidual in eval mode (left untouched)."""
    if name in ("fused", "fused_heuristic"):
        fused = fuse_block(block, backend="triton").to(device, dtype)
        if name == "fused":
            return _no_grad(fused)

        def heuristic(x):
            if fused.config is None:  # pinned on the first call, when the input size is known
                from ..kernels import default_config

                fused.config = default_config(fused.spec.at(x.shape[2], x.shape[3]), dtype.itemsize, batch)
            return fused(x)

        return _no_grad(heuristic)
    fn = _baseline(name, block, lambda b: fuse_block(b, backend="torch"), batch, dtype, device)
    if fn is None:
        raise ValueError(f"unknown provider {name!r}; known: {BLOCK_PROVIDERS}")
    return fn
