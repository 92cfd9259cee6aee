"""Every launch configuration the package ships, for the checks that must see them all:

* `static-check`: compile each for Hopper ahead of time and read its resources (no GPU);
* `sanitize`:     run each once on a small input (under compute-sanitizer in bench/gpu_run.sh),
                  and compare with the unfused PyTorch computation.

"Shipped" = what the launchers pick for MobileNetV2 at SHIPPED_WIDTHS and 224 px on a GPU,
for each tuned table in kernels/tuned/ and for the heuristic default, plus every tuned entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .model import LAST_CHANNELS, STEM_CHANNELS, block_specs, make_divisible

SHIPPED_WIDTHS = (0.5, 1.0, 1.4)
RESOLUTION = 224
ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Launch:
    kind: str  # block, stem, head, linear
    label: str
    dtype: torch.dtype
    shape: tuple  # block: BlockShape; stem: (cin, cout, h, w); head: (cin, cout, h, w); linear: (m, k, n)
    config: object
    tf32: bool = False  # fp32 only: products on TF32 tensor cores (PyTorch's default for convs)

    def key(self):
        return (self.kind, self.shape, self.config, self.dtype, self.tf32)


def _k():
    from . import kernels

    return kernels


def shipped_launches(widths=SHIPPED_WIDTHS, resolution: int = RESOLUTION, experiments: bool = True) -> list[Launch]:
    """experiments: also the other-staging configs the block benchmark times (provider
    fused_alt), fp16 at width 1.0, so that a GPU run never meets an untested config."""
    from .baselines import block_shape, staging_configs

    k = _k()
    from .kernels import configs as C

    slugs = sorted({p.stem for p in C.TUNED_DIR.glob("*.json")}) if C.TUNED_DIR.is_dir() else []
    out: dict = {}

    def add(launch: Launch) -> None:
        out.setdefault(launch.key(), launch)
        if launch.dtype == torch.float32 and not launch.tf32:  # fp32 ships both product precisions
            tf32 = replace(launch, label=launch.label + " tf32", tf32=True)
            out.setdefault(tf32.key(), tf32)

    for width in widths:
        dtypes = ALL_DTYPES if width == 1.0 else (torch.float16,)
        size = (resolution - 1) // 2 + 1
        stem = make_divisible(STEM_CHANNELS * width)
        for dtype in dtypes:
            add(Launch("stem", f"w{width} stem", dtype, (3, stem, resolution, resolution),
                       C.choose_stem_config(stem, torch.device("cuda"))))
        s = size
        for spec in block_specs(width):
            shape = block_shape(spec, s, s)
            for dtype in dtypes:
                for batch in (256, 1):  # the heuristic's two batch classes
                    add(Launch("block", f"w{width} block {spec.index}" + (" (batch <= 8)" if batch == 1 else ""),
                               dtype, shape, C.default_config(shape, dtype.itemsize, batch)))
                for slug in slugs:
                    for batch in (1, 32, 256):
                        cfg = C.lookup_tuned(shape, dtype, batch, slug)
                        if cfg is not None:
                            add(Launch("block", f"w{width} block {spec.index} ({slug}, batch {batch})", dtype,
                                       shape, cfg))
            alt = staging_configs(shape, 2)[1]
            if experiments and width == 1.0 and alt is not None:
                add(Launch("block", f"w{width} block {spec.index} other staging", torch.float16, shape, alt))
            s = shape.ho
        last = make_divisible(LAST_CHANNELS * max(1.0, width))
        cin = block_specs(width)[-1].cout
        for dtype in dtypes:
            add(Launch("head", f"w{width} head", dtype, (cin, last, s, s),
                       C.choose_head_config(cin, last, s * s, torch.device("cuda"), dtype.itemsize)))
            for m in (1, 256):
                add(Launch("linear", f"w{width} classifier, batch {m}", dtype, (m, last, 1000),
                           C.choose_linear_config(m, last, 1000, torch.device("cuda"))))
    # Tuned entries for shapes outside the widths above ship too.
    for slug in slugs:
        for (shape, dtype_name), entries in C.load_tuned(slug).items():
            for lo, hi, cfg in entries:
                add(Launch("block", f"tuned {slug} {shape} batch {lo}-{hi}", getattr(torch, dtype_name), shape, cfg))
    return list(out.values())


def variant(launch: Launch):
    """(jit function, constexpr arguments) of a launch."""
    import importlib

    # The package exports launchers under the module names; import the modules themselves.
    H, IR, S = (importlib.import_module(f"{__package__}.kernels.{m}") for m in ("head", "inverted_residual", "stem"))

    allow_tf32 = launch.tf32
    if launch.kind == "block":
        return IR._inverted_residual_kernel, IR.kernel_args(launch.shape, launch.config, launch.dtype, allow_tf32)
    if launch.kind == "stem":
        cin, cout, _, _ = launch.shape
        return S._stem_kernel, S.stem_kernel_args(cin, cout, 2, launch.config, launch.dtype, allow_tf32)
    if launch.kind == "head":
        cin, cout, h, w = launch.shape
        return H._head_pool_kernel, H.head_kernel_args(cin, cout, h * w, launch.config, launch.dtype, allow_tf32)
    if launch.kind == "linear":
        _, kdim, n = launch.shape
        return H._linear_kernel, H.linear_kernel_args(kdim, n, launch.config, launch.dtype, allow_tf32)
    raise ValueError(launch.kind)


@torch.no_grad()
def run_once(launch: Launch, device: torch.device, batch: int = 2) -> float:
    """Run one shipped launch on a small input; return its error over the dtype's tolerance."""
    from .testing import error_ratio

    k = _k()
    g = torch.Generator().manual_seed(0)
    dt = launch.dtype

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dt)

    def nhwc(t):
        return t.contiguous(memory_format=torch.channels_last)

    if launch.kind == "block":
        s = launch.shape
        x = nhwc(rnd(batch, s.cin, s.h, s.w))
        w_exp = rnd(s.cin, s.hidden, scale=s.cin ** -0.5) if s.has_expand else None
        b_exp = rnd(s.hidden) if s.has_expand else None
        w_dw, b_dw = rnd(9, s.hidden, scale=0.3), rnd(s.hidden)
        w_proj, b_proj = rnd(s.hidden, s.cout, scale=s.hidden ** -0.5), rnd(s.cout)
        y = k.inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, stride=s.stride, residual=s.residual,
                                config=launch.config, allow_tf32=launch.tf32)
        d = lambda t: t.double().cpu()  # noqa: E731
        h = d(x)
        if s.has_expand:
            h = F.conv2d(h, d(w_exp).t()[:, :, None, None], d(b_exp)).clamp(0, 6)
        h = F.conv2d(h, d(w_dw).t().reshape(s.hidden, 1, 3, 3), d(b_dw), stride=s.stride, padding=1,
                     groups=s.hidden).clamp(0, 6)
        ref = F.conv2d(h, d(w_proj).t()[:, :, None, None], d(b_proj))
        ref = ref + d(x) if s.residual else ref
    elif launch.kind == "stem":
        cin, cout, h, w = launch.shape
        x, wt, b = rnd(batch, cin, h, w), rnd(cout, cin, 3, 3, scale=0.3), rnd(cout)
        y = k.stem_conv(x, wt.reshape(cout, cin * 9).t().contiguous(), b, config=launch.config,
                        allow_tf32=launch.tf32)
        ref = F.conv2d(x.double().cpu(), wt.double().cpu(), b.double().cpu(), stride=2, padding=1).clamp(0, 6)
    elif launch.kind == "head":
        cin, cout, h, w = launch.shape
        x, wt, b = nhwc(rnd(batch, cin, h, w)), rnd(cin, cout, scale=cin ** -0.5), rnd(cout)
        y = k.head_pool(x, wt, b, config=launch.config, allow_tf32=launch.tf32)
        ref = F.conv2d(x.double().cpu(), wt.double().cpu().t()[:, :, None, None], b.double().cpu())
        ref = ref.clamp(0, 6).mean(dim=(2, 3))
    else:
        m, kdim, n = launch.shape
        a, wt, b = rnd(m, kdim), rnd(kdim, n, scale=kdim ** -0.5), rnd(n)
        y = k.linear(a, wt, b, config=launch.config, allow_tf32=launch.tf32)
        ref = a.double().cpu() @ wt.double().cpu() + b.double().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    # TF32 keeps 10 mantissa bits, as fp16 does: judge it by the fp16 tolerance.
    return error_ratio(y, ref, torch.float16 if launch.tf32 else launch.dtype)


def interpreter_off() -> None:
    """AOT compilation needs the real JIT: refuse if the kernels were imported interpreted."""
    import sys

    if "mnv2_fast.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("static checks need TRITON_INTERPRET unset before the kernels are imported")
    os.environ.pop("TRITON_INTERPRET", None)
