"""Every launch configuration the package ships, for the checks that must see them all:

* `static-check`: compile each for Hopper ahead of time and read its resources (no GPU);
* `sanitize`:     run each once on a small input (under compute-sanitizer in bench/gpu_run.sh),
                  and compare with the same computation in float64 PyTorch (kernels/reference.py).

"Shipped" = what the launchers pick for MobileNetV2 at SHIPPED_WIDTHS and 224 px on a GPU:
the heuristic default, and each table shipped in the package's tuned/ folder, plus every
entry of those tables.  (Users' own tables, written by `mnv2-fast tune`, are not shipped.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..model import block_specs, head_channels, stem_block_spec, stem_channels

SHIPPED_WIDTHS = (0.5, 1.0, 1.4)
RESOLUTION = 224
ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Each kind of launch by the name its launcher and its PyTorch twin share.
LAUNCHERS = {"block": "inverted_residual", "stem": "stem_conv", "head": "head_pool", "linear": "linear"}


@dataclass(frozen=True)
class Launch:
    kind: str  # block, stem, head, linear
    label: str
    dtype: torch.dtype
    # block: BlockShape; stem: (cin, cout, h, w[, act, tf_same]); head: (cin, cout, h, w[, act]);
    # linear: (m, k, n[, act, residual]) (with them: a block's project, run apart)
    shape: tuple
    config: object
    tf32: bool = False  # fp32 only: products on TF32 tensor cores (PyTorch's default for convs)

    def key(self):
        return (self.kind, self.shape, self.config, self.dtype, self.tf32)


def launcher_name(launch: Launch) -> str:
    """The launcher (and its PyTorch twin) of a launch: a block launch with the stem as its
    expand is stem_block's."""
    return "stem_block" if launch.kind == "block" and launch.shape.stem else LAUNCHERS[launch.kind]


def project_launch(launch: Launch, m: int) -> Launch | None:
    """The GEMM that projects a block's hidden tensor of m pixels where its config runs the
    project apart (`BlockConfig.project_apart`), else None."""
    from ..kernels.choice import choose_project_config

    s = launch.shape
    if launch.kind != "block" or not launch.config.project_apart:
        return None
    cfg = choose_project_config(m, s.hidden, s.cout, torch.device("cuda"), launch.dtype.itemsize)
    return Launch("linear", launch.label + " project", launch.dtype, (m, s.hidden, s.cout, s.act_proj, s.residual),
                  cfg, launch.tf32)


def _block_name(spec) -> str:
    return f"stem + block {spec.index}" if spec.stem else f"block {spec.index}"


def shipped_launches(widths=SHIPPED_WIDTHS, resolution: int = RESOLUTION) -> list[Launch]:
    from ..kernels import choice, tuned

    tables = {path.stem: tuned.read_table(path) for path in tuned.shipped_tables()}
    gpu = torch.device("cuda")
    out: dict = {}

    def add(launch: Launch) -> None:
        out.setdefault(launch.key(), launch)
        if launch.dtype == torch.float32 and not launch.tf32:  # fp32 ships both product precisions
            tf32 = replace(launch, label=launch.label + " tf32", tf32=True)
            out.setdefault(tf32.key(), tf32)
        for batch in (1, 256) if launch.kind == "block" else ():
            # The GEMM's config depends on its rows (a small batch's or a large one's); its
            # compiled variant does not, so the launch keeps a small m (run_once's input).
            project = project_launch(launch, batch * launch.shape.ho * launch.shape.wo)
            if project is not None:
                add(replace(project, shape=(2 * launch.shape.ho * launch.shape.wo, *project.shape[1:])))

    for width in widths:
        dtypes = ALL_DTYPES if width == 1.0 else (torch.float16,)
        stem = stem_channels(width)
        for dtype in dtypes:
            add(Launch("stem", f"w{width} stem", dtype, (3, stem, resolution, resolution),
                       choice.choose_stem_config(stem, gpu)))
        specs = block_specs(width, resolution=resolution)
        # The stem with block 1 (what optimize() runs), then every block alone (fuse_block).
        for spec in [stem_block_spec(width, resolution=resolution), *specs]:
            for dtype in dtypes:
                for batch in (256, 1):  # on a GPU without a table of its own: the reference table, else the heuristic
                    cfg = (tuned.lookup(tables.get(choice.REFERENCE_TABLE, {}), spec, dtype, batch)
                           or choice.default_config(spec, dtype.itemsize, batch))
                    add(Launch("block", f"w{width} {_block_name(spec)}" + (" (batch <= 8)" if batch == 1 else ""),
                               dtype, spec, cfg))
                for slug, table in tables.items():
                    for batch in (1, 32, 256):
                        cfg = tuned.lookup(table, spec, dtype, batch)
                        if cfg is not None:
                            add(Launch("block", f"w{width} {_block_name(spec)} ({slug}, batch {batch})", dtype,
                                       spec, cfg))
        cin, last, s = specs[-1].cout, head_channels(width), specs[-1].ho
        for dtype in dtypes:
            for m in (1, 256):
                add(Launch("head", f"w{width} head, batch {m}", dtype, (cin, last, s, s),
                           choice.choose_head_config(cin, last, s * s, m, gpu, dtype.itemsize)))
                add(Launch("linear", f"w{width} classifier, batch {m}", dtype, (m, last, 1000),
                           choice.choose_linear_config(m, last, 1000, gpu, dtype.itemsize)))
    # Tuned entries for shapes outside the widths above ship too.
    for slug, table in tables.items():
        for (shape, dtype_name), entries in table.items():
            for lo, hi, cfg in entries:
                add(Launch("block", f"tuned {slug} {shape} batch {lo}-{hi}", getattr(torch, dtype_name), shape, cfg))
    return list(out.values())


def variant(launch: Launch):
    """(jit function, constexpr arguments) of a launch: what it compiles to."""
    from ..kernels.head import _head_pool_kernel, _linear_kernel, head_kernel_args, linear_kernel_args
    from ..kernels.block import _inverted_residual_kernel, kernel_args
    from ..kernels.stem import _stem_kernel, stem_kernel_args

    s, cfg, dtype, tf32 = launch.shape, launch.config, launch.dtype, launch.tf32
    if launch.kind == "block":
        return _inverted_residual_kernel, kernel_args(s, cfg, dtype, tf32)
    if launch.kind == "stem":
        # The input as users pass it: contiguous NCHW.
        return _stem_kernel, stem_kernel_args(s[0], s[1], 2, cfg, dtype, tf32, (s[2] * s[3], s[3], 1), *s[4:])
    if launch.kind == "head":
        return _head_pool_kernel, head_kernel_args(s[0], s[1], s[2] * s[3], cfg, dtype, tf32, *s[4:])
    if launch.kind == "linear":
        return _linear_kernel, linear_kernel_args(s[1], s[2], cfg, dtype, tf32, *s[3:])
    raise ValueError(launch.kind)


def map_tensors(args: list, kwargs: dict, f) -> tuple[list, dict]:
    """f applied to every tensor among a launcher's arguments (None and other values kept)."""
    return ([None if a is None else f(a) for a in args],
            {k: f(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})


def random_inputs(launch: Launch, batch: int, generator: torch.Generator) -> tuple[list, dict]:
    """(arguments, keyword arguments) of the launch's launcher, random, float32 on the CPU:
    the input first, then weights scaled so that activations stay O(1)."""

    def rnd(*size, scale=1.0):
        return torch.randn(*size, generator=generator) * scale

    if launch.kind == "block" and launch.shape.stem:  # stem_block's arguments: the image, stem, depthwise, project
        s = launch.shape
        return ([rnd(batch, s.cin, s.stem_h, s.stem_w), rnd(s.cin * 9, s.hidden, scale=0.3), rnd(s.hidden),
                 rnd(9, s.hidden, scale=0.3), rnd(s.hidden), rnd(s.hidden, s.cout, scale=s.hidden ** -0.5),
                 rnd(s.cout)], dict(act_stem=s.act_exp, act_dw=s.act_dw, act_proj=s.act_proj))
    if launch.kind == "block":
        s = launch.shape
        x = rnd(batch, s.cin, s.h, s.w)
        expand = [rnd(s.cin, s.hidden, scale=s.cin ** -0.5), rnd(s.hidden)] if s.has_expand else [None, None]
        dw = [rnd(s.ksize ** 2, s.hidden, scale=0.9 / s.ksize), rnd(s.hidden)] if s.ksize else [None, None]
        start = dict(w_start=rnd(s.start_k ** 2, s.cin, scale=0.9 / s.start_k), b_start=rnd(s.cin)) if s.start_k else {}
        return ([x, *expand, *dw, rnd(s.hidden, s.cout, scale=s.hidden ** -0.5), rnd(s.cout)],
                dict(stride=s.stride, residual=s.residual, act_exp=s.act_exp, act_dw=s.act_dw, act_proj=s.act_proj,
                     tf_same=s.tf_same, **start))
    if launch.kind == "stem":
        cin, cout, h, w, *rest = launch.shape
        extra = dict(zip(("act", "tf_same"), rest))
        return [rnd(batch, cin, h, w), rnd(cin * 9, cout, scale=0.3), rnd(cout)], dict(stride=2, **extra)
    if launch.kind == "head":
        cin, cout, h, w, *rest = launch.shape
        return [rnd(batch, cin, h, w), rnd(cin, cout, scale=cin ** -0.5), rnd(cout)], dict(zip(("act",), rest))
    m, k, n, *rest = launch.shape
    act, residual = rest or ("none", False)
    return [rnd(m, k), rnd(k, n, scale=k ** -0.5), rnd(n)], dict(act=act, residual=rnd(m, n) if residual else None)


@torch.no_grad()
def run_once(launch: Launch, device: torch.device, batch: int = 2) -> float:
    """Run one shipped launch on a small input; return its error over the dtype's tolerance,
    against the same computation in float64 on the dtype-rounded inputs."""
    from .. import kernels
    from ..kernels import reference
    from .testing import error_ratio

    args, kwargs = random_inputs(launch, batch, torch.Generator().manual_seed(0))
    args, kwargs = map_tensors(args, kwargs, lambda t: t.to(device, launch.dtype))
    name = launcher_name(launch)
    if name in ("inverted_residual", "head_pool"):  # they read channels_last activations; the stem any layout
        args[0] = args[0].contiguous(memory_format=torch.channels_last)
    y = getattr(kernels, name)(*args, **kwargs, config=launch.config, allow_tf32=launch.tf32)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref_args, ref_kwargs = map_tensors(args, kwargs, lambda t: t.double().cpu())
    ref = getattr(reference, name)(*ref_args, **ref_kwargs)
    # TF32 keeps 10 mantissa bits, as fp16 does: judge it by the fp16 tolerance.
    return error_ratio(y, ref, torch.float16 if launch.tf32 else launch.dtype)
