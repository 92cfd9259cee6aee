"""Shared launcher checks and small Triton helpers for the kernel family."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Activation dtypes the kernels accept; matrix products run on tensor cores for the 16-bit ones.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def check_device(name: str, t: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors when the interpreter is on."""
    if t.is_cuda:
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"{name} is on {t.device}; the Triton kernels need a CUDA tensor"
        " (CPU tensors run only under TRITON_INTERPRET=1)"
    )


def check_activation(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    """A rank-4 NCHW-shaped tensor in channels_last memory, of a supported dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, the weights expect {channels}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if x.stride(1) != 1 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"{name} must be in channels_last memory (NHWC, channel stride 1); got strides {x.stride()}:"
            " use x.contiguous(memory_format=torch.channels_last)"
        )
    check_device(name, x)


def check_param(name: str, t: torch.Tensor, shape: tuple[int, ...], device: torch.device, dtype=None) -> None:
    """A contiguous weight or bias of the expected shape, on the activation's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the input is on {device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}; it must match the input dtype {dtype}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} has dtype {t.dtype}; expected a floating-point tensor")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_out(out: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    """A caller-provided output: right shape, dtype, device, channels_last memory."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != like.dtype or out.device != like.device:
        raise TypeError(f"out is {out.dtype} on {out.device}, expected {like.dtype} on {like.device}")
    if len(shape) == 4 and (out.stride(1) != 1 or not out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("out must be in channels_last memory")
    if len(shape) == 2 and not out.is_contiguous():
        raise ValueError("out must be contiguous")


def empty_nhwc(n: int, c: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty((n, c, h, w), dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """fp32 products follow PyTorch's TF32 switch; 16-bit inputs always use the tensor cores."""
    if dtype == torch.float32 and not allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def _relu6(x):
    # NaN must survive the clamp, as it does in torch.nn.ReLU6.
    return tl.clamp(x, 0.0, 6.0, propagate_nan=tl.PropagateNan.ALL)
