"""The providers every benchmark compares: the fused kernels and the baselines they must beat.

    fused            mnv2_fast.optimize / fuse_block, Triton kernels
    fused_alt        (blocks) the fused kernel in the other stencil staging than the default
                     (tap <-> gather): the experiment that picks the staging per block
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

from .fused import fuse_block
from .network import optimize

MODEL_PROVIDERS = ("fused", "fused_graph", "eager_cl", "eager_cl_folded", "compile")
BLOCK_PROVIDERS = ("fused", "fused_alt", "eager_cl", "eager_cl_folded", "compile")


def block_shape(spec, h: int, w: int):
    """The kernels' BlockShape of a model BlockSpec at an h x w input."""
    from .kernels import BlockShape

    return BlockShape(spec.cin, spec.hidden, spec.cout, spec.stride, h, w, spec.t != 1, spec.residual)


def staging_configs(shape, itemsize: int):
    """(default config, the best config of the other staging or None) for a kernels.BlockShape."""
    from .kernels import default_config
    from .kernels.configs import gather_candidates, tap_config

    default = default_config(shape, itemsize)
    if default.gather:
        return default, tap_config(shape, itemsize)
    other = gather_candidates(shape, itemsize) if shape.has_expand else []
    return default, (other[0] if other else None)


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
    if name in ("fused", "fused_alt"):
        fused = fuse_block(block, backend="triton").to(device, dtype)
        if name == "fused":
            return _no_grad(fused)

        def other_staging(x):
            if fused.config is None:  # pinned on the first call, when the input size is known
                from .kernels import BlockShape

                shape = BlockShape(fused.cin, fused.hidden, fused.cout, fused.stride, x.shape[2], x.shape[3],
                                   fused.has_expand, fused.residual)
                fused.config = staging_configs(shape, dtype.itemsize)[1]
                if fused.config is None:
                    raise ValueError("this block has a single staging (no expand stage): no alternative")
            return fused(x)

        return _no_grad(other_staging)
    fn = _baseline(name, block, lambda b: fuse_block(b, backend="torch"), batch, dtype, device)
    if fn is None:
        raise ValueError(f"unknown provider {name!r}; known: {BLOCK_PROVIDERS}")
    return fn


def block_bytes(spec, h: int, w: int, batch: int, itemsize: int) -> int:
    """The fused floor: input read once, output written once, weights read once."""
    ho, wo = (h - 1) // spec.stride + 1, (w - 1) // spec.stride + 1
    weights = spec.hidden * (spec.cin if spec.t != 1 else 0) + 9 * spec.hidden + spec.hidden * spec.cout
    return (batch * (h * w * spec.cin + ho * wo * spec.cout) + weights) * itemsize


def block_flops(spec, h: int, w: int, batch: int) -> int:
    """Multiply-adds x 2 of the unfused block (what any implementation must at least do)."""
    ho, wo = (h - 1) // spec.stride + 1, (w - 1) // spec.stride + 1
    expand = h * w * spec.cin * spec.hidden if spec.t != 1 else 0
    return 2 * batch * (expand + ho * wo * spec.hidden * (9 + spec.cout))


def block_input_size(width: float, resolution: int) -> list[int]:
    """Input side length of each of the 17 blocks for a square input of `resolution` px."""
    from .model import block_specs

    size = (resolution - 1) // 2 + 1  # after the stride-2 stem
    sizes = []
    for spec in block_specs(width):
        sizes.append(size)
        size = (size - 1) // spec.stride + 1
    return sizes
