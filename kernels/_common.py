"""What every launcher shares: input checks, the output buffer, the launch arguments, the
launch itself (on the input's device); and the small Triton helpers the kernels share."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .records import ACTIVATIONS

# Activation dtypes the kernels accept; matrix products run on tensor cores for the 16-bit ones.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting(device: torch.device | None = None) -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1), and,
    given a device, when tensors there run through it (CPU tensors)."""
    if device is not None and device.type != "cpu":
        return False
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def split_pow2(n: int) -> tuple[int, int]:
    """n channels as one or two power-of-two parts (each >= 16) that cover it with the least
    padding: 160 -> (128, 32), 96 -> (64, 32), 24 -> (32, 0), 64 -> (64, 0).  tl.dot needs
    power-of-two sizes; two products of the exact parts waste less than one padded one."""
    whole = max(16, next_pow2(n))
    if whole == n or n <= 16:
        return whole, 0
    first = whole // 2
    second = max(16, next_pow2(n - first))
    return (first, second) if first + second < whole else (whole, 0)


def triton_interpreting() -> bool:
    """Whether Triton's own library kernels (tl.cdiv, tl.sum, ...) run through its interpreter:
    fixed when triton was imported, as ours are when this package is."""
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


def check_interpreter_switch() -> None:
    """Refuse kernels decorated one way (TRITON_INTERPRET now) on a Triton imported the other
    way: every launch would fail deep in Triton ("Cannot call @triton.jit'd outside of the
    scope of a kernel")."""
    ours, theirs = interpreting(), triton_interpreting()
    if ours and not theirs:
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported (torchvision imports it), so "
                           "Triton's interpreter cannot run the kernels: set TRITON_INTERPRET=1 before importing "
                           "torch/torchvision/triton (e.g. in the shell: TRITON_INTERPRET=1 python ...)")
    if theirs and not ours:
        raise RuntimeError("TRITON_INTERPRET was unset after triton was imported with it on, so the kernels "
                           "cannot be compiled: set or unset TRITON_INTERPRET before importing torch/torchvision/triton")


check_interpreter_switch()  # when the kernels are imported, before any is decorated

# Triton's interpreter computes bf16 tl.dot wrongly (values off by ~1e11; Triton 3.6 and 3.8):
# a bf16 launch there is refused rather than returned.
BF16_INTERPRETER = (
    "bfloat16 Triton kernels under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) are known to "
    "compute wrong results; run bfloat16 on a GPU, use float16 or float32 here, or the 'torch' backend"
)


# The kernels index within an image (the block: within a tile's images; the head: within an
# image group) in 32 bits, from one 64-bit base per image or group: the launchers refuse what
# would not fit.
INT32_MAX = 2**31 - 1


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def check_device(name: str, t: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors when the interpreter is on."""
    if t.is_cuda or interpreting(t.device):
        return
    raise ValueError(
        f"{name} is on {t.device}; the Triton kernels need a CUDA tensor"
        " (CPU tensors run only under TRITON_INTERPRET=1)"
    )


_LAYOUTS = {"NCHW": 4, "NHWC": 4, "MK": 2}


def check_activation(name: str, x: torch.Tensor, layout: str = "NHWC") -> None:
    """A non-empty tensor of a supported dtype on a device the kernels run on, in `layout`:
    "NHWC" (rank 4 in channels_last memory), "NCHW" (rank 4, any strides) or "MK" (a
    contiguous matrix)."""
    rank = _LAYOUTS[layout]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have rank {rank} ({', '.join(layout.replace('NHWC', 'NCHW'))}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32")
    if min(x.shape[1:]) < 1:  # a batch of 0 is fine: an empty output, no launch (see `launch`)
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if layout == "NHWC" and (x.stride(1) != 1 or not x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{name} must be in channels_last memory (NHWC, channel stride 1); got strides {x.stride()}:"
            " use x.contiguous(memory_format=torch.channels_last)"
        )
    if layout == "MK" and not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    check_device(name, x)
    if x.dtype == torch.bfloat16 and interpreting(x.device):
        raise RuntimeError(BF16_INTERPRETER)


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


def check_weight(weight: torch.Tensor, bias: torch.Tensor, rows: int, like: torch.Tensor,
                 layout: str = "CIN, COUT") -> int:
    """A [rows, COLS] weight in the input's dtype and a [COLS] bias on its device; returns COLS.
    layout names the weight's dimensions in the error."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != rows:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape [{layout}] with {rows} rows, got {got}")
    cols = weight.shape[1]
    check_param("weight", weight, (rows, cols), like.device, like.dtype)
    check_param("bias", bias, (cols,), like.device)
    return cols


def output(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor,
           reads: tuple[torch.Tensor | None, ...] = ()) -> torch.Tensor:
    """The launch's output: the caller's `out`, checked (it may not overlap `like` or the other
    tensors the kernel `reads`), or a new tensor of `like`'s dtype and device (channels_last
    memory for rank 4)."""
    if out is None:
        memory_format = torch.channels_last if len(shape) == 4 else torch.contiguous_format
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
    check_out(out, shape, like)
    for t in (like, *reads):
        if t is not None and overlaps(out, t):
            what = "the input" if t is like else "a weight or bias"
            raise ValueError(f"out overlaps {what} in memory: the kernel's programs would read what others"
                             " have already overwritten (a race); pass a separate output tensor")
    return out


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) byte address `t`'s elements can occupy."""
    low = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < 0)
    high = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st > 0)
    size = t.element_size()
    return t.data_ptr() + low * size, t.data_ptr() + (high + 1) * size


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory: same device and intersecting byte ranges.
    Conservative: interleaved views that touch no common element still count."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = _byte_span(a), _byte_span(b)
    return a0 < b1 and b0 < a1


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


def device_guard(device: torch.device):
    """Make `device` the current CUDA device for a launch: Triton launches (and compiles for) the
    current device, which need not be the input's (an input on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch(kernel, grid: tuple[int, ...], x: torch.Tensor, *args, **kwargs) -> None:
    """kernel[grid](x, *args, **kwargs) on x's device, the one call every launcher ends with.
    An empty grid (a batch of 0) launches nothing: the output is empty already."""
    if 0 in grid:
        return
    with device_guard(x.device):
        kernel[grid](x, *args, **kwargs)


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """fp32 products follow PyTorch's TF32 switch; 16-bit inputs always use the tensor cores."""
    if dtype == torch.float32 and not allow_tf32:
        return "ieee"
    return "tf32"


def tf32(allow_tf32: bool | None) -> bool:
    """A launcher's allow_tf32: None follows torch.backends.cudnn.allow_tf32, as the
    convolutions the kernels replace do."""
    return torch.backends.cudnn.allow_tf32 if allow_tf32 is None else allow_tf32


def launch_args(cfg, dtype: torch.dtype, allow_tf32: bool, **shape_constexprs) -> dict:
    """The keyword arguments of one launch, for every kernel of the family: the kernel's
    shape constexprs, the config's tile constexprs (its fields in upper case), DOT_PRECISION,
    and its launch options (num_warps, num_stages, maxnreg when set)."""
    return dict(shape_constexprs, **cfg.constexprs(), DOT_PRECISION=dot_precision(dtype, allow_tf32),
                **cfg.options())


@triton.jit
def _relu6(x):
    # NaN must survive the clamp, as it does in torch.nn.ReLU6.
    return tl.clamp(x, 0.0, 6.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tf_same_pad(OUT, STRIDE: tl.constexpr, K: tl.constexpr, IN):
    """TensorFlow "same" padding before the first row or column: the total padding a k x k
    window at the stride needs, split with the odd pixel at the bottom/right."""
    return tl.maximum((OUT - 1) * STRIDE + K - IN, 0) // 2


@triton.jit
def _activation(x, ACT: tl.constexpr):
    """"relu6", "relu" or "none" (NaN survives, as in torch.nn.ReLU6 / ReLU)."""
    if ACT == "relu6":
        x = _relu6(x)
    elif ACT == "relu":
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return x


def check_act(act: str) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
    return act
