"""Shared test helpers.  The tolerance table, BN randomisation and float64 references live in
mnv2_fast.tools.testing (the CLI's `check` uses them too); here: blocks, layouts, and guarded
buffers: every tensor a kernel test hands a kernel is a view into a larger buffer whose rest
(the guard) holds NaN, so that a stray store shows in the guard and a stray load in the output."""

from __future__ import annotations

import mmap

import torch
from torch import nn

from mnv2_fast.kernels import interpreting
from mnv2_fast.tools.testing import (  # noqa: F401
    MODEL_TOLERANCE_FACTOR,
    TOLERANCES,
    error_ratio,
    randomize_bn,
    reference64,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETER = interpreting()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", factor: float = 1.0) -> None:
    """Every element within its tolerance (mnv2_fast.tools.testing: atol relative to the
    reference's typical magnitude, rtol to its own, times factor), no NaN/Inf."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    ratio = error_ratio(out, ref, dtype, factor)
    assert ratio <= 1.0, f"{what}: error is {ratio:.3g} x the {dtype} tolerance"


def make_block(cin: int, cout: int, stride: int, t: int, torchvision_block: bool = False) -> nn.Module:
    """A random inverted-residual block in eval mode, with randomised BN statistics."""
    if torchvision_block:
        from torchvision.models.mobilenetv2 import InvertedResidual as TVBlock

        block = TVBlock(cin, cout, stride, t)
    else:
        from mnv2_fast.model import InvertedResidual

        block = InvertedResidual(cin, cout, stride, t)
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
    return randomize_bn(block).eval()


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def poisoned_like(n: int, c: int, h: int, w: int, dtype: torch.dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write shows up."""
    out = torch.empty((n, c, h, w), dtype=dtype, device=device, memory_format=torch.channels_last)
    return out.fill_(float("nan"))


# ---- guard regions

NAN = float("nan")


def guarded_empty(shape: tuple[int, ...], dtype: torch.dtype, device=DEVICE, *, layout: str = "nhwc",
                  images: int = 1, pad: int = 0, fill: float = NAN) -> torch.Tensor:
    """A tensor of `shape`, filled with `fill`, that is a view into a larger buffer whose rest is
    `fill` too (the guard, see `check_guard`):

    * "nhwc": [N, C, H, W] in channels_last memory (what the block and head kernels read and
      every kernel writes): `images` whole images before and after; with `pad`, also extra
      channels, rows and columns on each side of each image (no longer contiguous: only
      for the stem, which reads any strides);
    * "nchw": [N, C, H, W] in NCHW order, images and padding as for "nhwc" (the stem);
    * "rows": a contiguous matrix (the head's and the classifier's outputs, the classifier's
      input): `images` rows before and after;
    * "flat": a contiguous tensor of any rank (weights, biases): `images` * its size before
      and after (at least 64 elements)."""
    if layout == "nhwc":
        n, c, h, w = shape
        buf = torch.full((n + 2 * images, h + 2 * pad, w + 2 * pad, c + 2 * pad), fill, dtype=dtype, device=device)
        return buf[images:images + n, pad:pad + h, pad:pad + w, pad:pad + c].permute(0, 3, 1, 2)
    if layout == "nchw":
        n, c, h, w = shape
        buf = torch.full((n + 2 * images, c + 2 * pad, h + 2 * pad, w + 2 * pad), fill, dtype=dtype, device=device)
        return buf[images:images + n, pad:pad + c, pad:pad + h, pad:pad + w]
    if layout == "rows":
        m, k = shape
        buf = torch.full((m + 2 * images, k), fill, dtype=dtype, device=device)
        return buf[images:images + m]
    if layout == "flat":
        numel = 1
        for d in shape:
            numel *= d
        margin = max(64, images * numel)
        buf = torch.full((numel + 2 * margin,), fill, dtype=dtype, device=device)
        return buf[margin:margin + numel].view(shape)
    raise ValueError(f"unknown layout {layout!r}")


def guarded(t: torch.Tensor, *, layout: str | None = None, images: int = 1, pad: int = 0,
            fill: float = NAN) -> torch.Tensor:
    """A copy of t (None stays None) inside a guarded buffer (`guarded_empty`): an input
    whose neighbours are NaN, which shows in the output wherever the kernel reads one.
    layout: "nhwc" for rank 4 in channels_last memory, "rows" for a matrix, else "flat"."""
    if t is None:
        return None
    if layout is None:
        if t.dim() == 4:
            layout = "nhwc" if t.stride(1) == 1 else "nchw"
        else:
            layout = "flat"
    view = guarded_empty(tuple(t.shape), t.dtype, t.device, layout=layout, images=images, pad=pad, fill=fill)
    return view.copy_(t)


def guard_region(view: torch.Tensor) -> torch.Tensor:
    """The elements of view's buffer that are not view's own (a flat copy)."""
    base = view._base if view._base is not None else view
    inside = torch.zeros(base.numel(), dtype=torch.bool, device=view.device)
    inside.as_strided(view.shape, view.stride(), view.storage_offset() - base.storage_offset()).fill_(True)
    return base.reshape(-1)[~inside]


def check_guard(view: torch.Tensor, what: str = "", fill: float = NAN) -> None:
    """The guard around `view` (from `guarded_empty`/`guarded`) still holds only `fill`:
    nothing was stored outside the tensor."""
    assert view._base is not None, f"{what}: not a guarded view"
    guard = guard_region(view)
    intact = torch.isnan(guard) if fill != fill else guard == fill
    bad = (~intact).sum().item()
    assert bad == 0, f"{what}: {bad} element(s) of the guard region around the tensor were overwritten"


def check_unchanged(view: torch.Tensor, before: torch.Tensor, what: str = "") -> None:
    """An input is as it was (NaN where it was NaN), its guard included."""
    assert torch.equal(torch.nan_to_num(view, 7.0), torch.nan_to_num(before, 7.0)), f"{what}: the input was modified"
    check_guard(view, what)



def call_guarded(fn, *args, out_shape: tuple[int, ...], out_layout: str = "nhwc", images: int = 1, pad: int = 0,
                 **kwargs) -> torch.Tensor:
    """fn(*args, out=..., **kwargs) with every tensor argument copied into a guarded buffer
    (NaN around it; the first, the activation, also padded by `pad` where its layout allows)
    and a guarded, NaN-filled output of out_shape; then checks that the launcher returned that
    output, that nothing was stored around it, and that no input (nor its guard) changed."""
    def guard(a, first=False):
        return guarded(a, pad=pad if first else 0, images=images) if isinstance(a, torch.Tensor) else a

    args = [guard(a, i == 0) for i, a in enumerate(args)]
    kwargs = {k: guard(v) for k, v in kwargs.items()}
    inputs = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)]
    before = [a.clone() for a in inputs]
    out = guarded_empty(out_shape, inputs[0].dtype, inputs[0].device, layout=out_layout, images=images)
    y = fn(*args, out=out, **kwargs)
    assert y.data_ptr() == out.data_ptr() and y.shape == out.shape, "the launcher did not return `out`"
    check_guard(out, "output")
    for i, (a, b) in enumerate(zip(inputs, before)):
        check_unchanged(a, b, f"input {i}")
    return y


# ---- tensors of more than 2^31 elements without the memory

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value (the constant is Python >= 3.13's)
_MAPPINGS: list = []


def sparse_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float16, device=DEVICE,
                 channels_last: bool = False) -> torch.Tensor:
    """An uninitialised tensor that costs memory only where it is written: on the CPU, an
    anonymous mapping that reserves nothing (untouched pages read as zeros); on a GPU, a
    plain allocation.  channels_last: [N, C, H, W] in NHWC memory."""
    if channels_last:
        n, c, h, w = shape
        return sparse_empty((n, h, w, c), dtype, device).permute(0, 3, 1, 2)
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    numel = 1
    for d in shape:
        numel *= d
    mm = mmap.mmap(-1, max(1, numel * dtype.itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    _MAPPINGS.append(mm)  # the tensor borrows the mapping's memory: kept for the process's life
    return torch.frombuffer(mm, dtype=dtype, count=numel).view(shape)


def release_sparse() -> None:
    """Unmap what sparse_empty mapped (its tensors must be gone)."""
    _MAPPINGS.clear()
