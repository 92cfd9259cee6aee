"""The fused parts as registered operators, so that torch.compile, torch.export and
AOTInductor keep each one as one node instead of tracing into Triton's launcher:

    mnv2_fast::stem_conv(x, weight, bias, stride, backend, act="relu6", tf_same=False)
    mnv2_fast::inverted_residual(x, w_exp?, b_exp?, w_dw?, b_dw?, w_proj, b_proj, stride, residual, backend,
                                 act_exp="relu6", act_dw="relu6", act_proj="none", w_start?, b_start?,
                                 tf_same=False)
    mnv2_fast::stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, backend, act_stem="relu6",
                          act_dw="relu6", act_proj="none")   (the stem and a depthwise-separable first block)
    mnv2_fast::head_pool(x, weight, bias, backend, act="relu6")   [N, COUT] (the module adds the 1 x 1)
    mnv2_fast::linear(a, weight, bias, backend)

(the trailing arguments carry the inverted-residual family: activations, 5x5 and start
depthwise, TensorFlow "same" padding; their defaults are MobileNetV2's.)

The weights are the folded ones, in the launchers' layouts (kernels/); `backend` is the
fused module's ("auto", "triton", "torch"), resolved per call from the input's device as
the modules always did.  Each op returns a new tensor (nothing mutated, nothing aliased):
rank 4 in channels_last memory, rank 2 contiguous, on either engine, so the fake (meta)
implementation states the real strides.

Why `torch.library.custom_op` (opaque) and not `triton_op` + `wrap_triton`: triton_op runs
the implementation itself as the fake kernel and makes Inductor trace it.  That fails under
Triton's interpreter (CPU machines and CI: the kernels are InterpretedFunctions, which
wrap_triton cannot capture, so tracing hands fake tensors to the interpreter), it would trace
the launchers with a symbolic batch although they decide by the batch (the tuned config, the
block kernel's persistent grid, the stem's launches), so a compiled graph would be
specialised to one batch, and it needs every launch written as `wrap_triton(kernel)[grid]`
inside kernels/.  An opaque op with `register_fake` behaves the same on torch 2.11 / Triton
3.6 and torch 2.14 / Triton 3.8, on the GPU and under the interpreter; at run time it picks
the launch config from the real batch.  The one place that needs the kernels visible,
an AOTInductor package that must run without this package, lowers the ops itself
(mnv2_fast/deploy.py).

The fused modules call the implementations below directly when nothing traces them: the
dispatcher round trip of a custom op costs several microseconds per call, more than a
batch-1 forward can spare on 19 parts (bench/NOTES.md); `traced(x)` decides.
"""

from __future__ import annotations

import torch

__all__ = ["BACKENDS", "OPS", "check_backend", "head_pool", "inverted_residual", "kernels", "linear", "stem_block",
           "stem_conv", "traced", "use_triton"]

BACKENDS = ("auto", "triton", "torch")


_kernels = None


def kernels():
    """mnv2_fast.kernels, imported on first use: the kernels are decorated when imported, and
    the decoration fixes whether they run through Triton's interpreter (TRITON_INTERPRET).
    Kept once imported: an import statement on every call costs a microsecond per part."""
    global _kernels
    if _kernels is None:
        from . import kernels as k

        _kernels = k
    return _kernels


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Resolve the backend for one input; backend='triton' never falls back silently."""
    if backend == "torch":
        return False
    if backend == "auto":
        return x.is_cuda
    if x.is_cuda or kernels().interpreting(x.device):
        return True
    raise ValueError(
        f"backend='triton' needs a CUDA tensor, got one on {x.device} "
        "(CPU tensors run the Triton kernels only under TRITON_INTERPRET=1; use backend='auto' or 'torch')"
    )


def traced(x: torch.Tensor) -> bool:
    """Whether this call is being traced (torch.compile, torch.export, make_fx, a dispatch
    mode) rather than run: then the fused modules call the registered op, else its
    implementation directly.  Costs well under a microsecond."""
    if torch.compiler.is_compiling():  # Dynamo, and torch.export's non-strict tracing
        return True
    # Fake, functional or proxy tensors, or any TorchDispatchMode (a tracer, FlopCounterMode).
    return type(x) is not torch.Tensor or torch._C._len_torch_dispatch_stack() > 0


_CL = torch.channels_last


def _kernel_layout(y: torch.Tensor) -> torch.Tensor:
    """y in the memory the kernels write (and the fake implementations state): contiguous
    NHWC for rank 4, contiguous for rank 2.  The folded PyTorch ops give that already for
    channels_last inputs; the strides of size-1 dimensions do not count (nor do they for
    opcheck and Inductor's stride asserts)."""
    if y.dim() == 4:
        n, c, h, w = y.shape
        want, memory_format = (h * w * c, 1, w * c, c), _CL
    else:
        want, memory_format = (y.shape[1], 1), torch.contiguous_format
    # (A symbolic size, the batch of a traced graph, is taken as > 1: no guard on it.)
    if all(st == ws for size, st, ws in zip(y.shape, y.stride(), want) if isinstance(size, torch.SymInt) or size > 1):
        return y
    return y.contiguous(memory_format=memory_format)


# ---------------------------------------------------------------- implementations
# Each: the launcher (kernels/) on the Triton path, the folded PyTorch twin
# (kernels/reference.py) otherwise.  Modules call these directly when not traced.

def stem_conv(x, weight, bias, stride: int, backend: str, act: str = "relu6", tf_same: bool = False) -> torch.Tensor:
    if use_triton(backend, x):
        return kernels().stem_conv(x, weight, bias, stride=stride, act=act, tf_same=tf_same)
    # The output in NHWC, as the kernel's: cheaper to convert the 3-channel input than the result.
    x = x.contiguous(memory_format=_CL)
    return _kernel_layout(kernels().reference.stem_conv(x, weight, bias, stride=stride, act=act, tf_same=tf_same))


def inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, stride: int, residual: bool, backend: str,
                      act_exp: str = "relu6", act_dw: str = "relu6", act_proj: str = "none", w_start=None,
                      b_start=None, tf_same: bool = False, config=None) -> torch.Tensor:
    """config: a kernels.BlockConfig pinning the launch (eager calls only; None: the tuned
    table or the heuristic, as the op does)."""
    family = dict(stride=stride, residual=residual, act_exp=act_exp, act_dw=act_dw, act_proj=act_proj,
                  w_start=w_start, b_start=b_start, tf_same=tf_same)
    if use_triton(backend, x):
        return kernels().inverted_residual(x.contiguous(memory_format=_CL), w_exp, b_exp, w_dw, b_dw, w_proj, b_proj,
                                           **family, config=config)
    return _kernel_layout(kernels().reference.inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, **family))


def stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, backend: str, act_stem: str = "relu6",
               act_dw: str = "relu6", act_proj: str = "none", config=None) -> torch.Tensor:
    """config: as for inverted_residual."""
    acts = dict(act_stem=act_stem, act_dw=act_dw, act_proj=act_proj)
    if use_triton(backend, x):
        return kernels().stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, **acts, config=config)
    x = x.contiguous(memory_format=_CL)
    return _kernel_layout(kernels().reference.stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, **acts))


def head_pool(x, weight, bias, backend: str, act: str = "relu6") -> torch.Tensor:
    if use_triton(backend, x):
        return kernels().head_pool(x.contiguous(memory_format=_CL), weight, bias, act=act)
    return _kernel_layout(kernels().reference.head_pool(x, weight, bias, act=act))


def linear(a, weight, bias, backend: str) -> torch.Tensor:
    if use_triton(backend, a):
        return kernels().linear(a.contiguous(), weight, bias)
    return _kernel_layout(kernels().reference.linear(a, weight, bias))


# ---------------------------------------------------------------- fake implementations
# Shapes, dtype, device and strides of the result, from the arguments alone (any batch,
# symbolic included).  They resolve the backend too, so an impossible one (backend='triton'
# on a CPU tensor without the interpreter) fails when the graph is traced, not when it runs.

def _out_size(size, stride: int):
    return (size - 1) // stride + 1


def _nhwc(x: torch.Tensor, n, c, h, w) -> torch.Tensor:
    return torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=_CL)


# (TensorFlow's "same" padding gives the same output size as k // 2: ceil(size / stride).)
def _fake_stem_conv(x, weight, bias, stride, backend, act="relu6", tf_same=False):
    use_triton(backend, x)
    n, _, h, w = x.shape
    return _nhwc(x, n, weight.shape[1], _out_size(h, stride), _out_size(w, stride))


def _fake_inverted_residual(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, stride, residual, backend, act_exp="relu6",
                            act_dw="relu6", act_proj="none", w_start=None, b_start=None, tf_same=False):
    use_triton(backend, x)
    n, _, h, w = x.shape
    return _nhwc(x, n, w_proj.shape[1], _out_size(h, stride), _out_size(w, stride))


def _fake_stem_block(x, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, backend, act_stem="relu6", act_dw="relu6",
                     act_proj="none"):
    use_triton(backend, x)
    n, _, h, w = x.shape
    return _nhwc(x, n, w_proj.shape[1], _out_size(h, 2), _out_size(w, 2))


def _fake_head_pool(x, weight, bias, backend, act="relu6"):
    use_triton(backend, x)
    return x.new_empty((x.shape[0], weight.shape[1]))


def _fake_linear(a, weight, bias, backend):
    use_triton(backend, a)
    return a.new_empty((a.shape[0], weight.shape[1]))


# ---------------------------------------------------------------- registration

# While mnv2_fast.export() makes an AOTInductor package, `lowering` computes an op's result
# with its Triton launches traced into the graph (mnv2_fast/deploy.py sets it); otherwise it
# is None and every trace keeps the op.  The hook is where triton_op decomposes its ops
# (FunctionalTensorMode, the functionalization that torch.export's run_decompositions and
# Inductor trace under); torch.export itself runs with it off, so exported programs hold
# the ops.
lowering = None


def _functional(mode, op, types, args, kwargs):
    if lowering is None:
        return mode.__torch_dispatch__(op, types, args, kwargs)
    with mode:
        return lowering(op, *args, **kwargs)


def _register(name: str, schema: str, impl, fake):
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    op = torch.library.custom_op(f"mnv2_fast::{name}", mutates_args=(), schema=schema)(impl)
    op.register_fake(fake)
    op.register_torch_dispatch(FunctionalTensorMode, _functional)
    return op


_register("stem_conv", "(Tensor x, Tensor weight, Tensor bias, int stride, str backend, str act=\"relu6\", "
          "bool tf_same=False) -> Tensor", stem_conv, _fake_stem_conv)
_register("inverted_residual",
          "(Tensor x, Tensor? w_exp, Tensor? b_exp, Tensor? w_dw, Tensor? b_dw, Tensor w_proj, Tensor b_proj, "
          "int stride, bool residual, str backend, str act_exp=\"relu6\", str act_dw=\"relu6\", "
          "str act_proj=\"none\", Tensor? w_start=None, Tensor? b_start=None, bool tf_same=False) -> Tensor",
          inverted_residual, _fake_inverted_residual)
_register("stem_block",
          "(Tensor x, Tensor w_stem, Tensor b_stem, Tensor w_dw, Tensor b_dw, Tensor w_proj, Tensor b_proj, "
          "str backend, str act_stem=\"relu6\", str act_dw=\"relu6\", str act_proj=\"none\") -> Tensor",
          stem_block, _fake_stem_block)
_register("head_pool", "(Tensor x, Tensor weight, Tensor bias, str backend, str act=\"relu6\") -> Tensor", head_pool,
          _fake_head_pool)
_register("linear", "(Tensor a, Tensor weight, Tensor bias, str backend) -> Tensor", linear, _fake_linear)

# name -> the registered op's overload (what graphs hold: torch.ops.mnv2_fast.<name>.default)
OPS = {name: getattr(torch.ops.mnv2_fast, name).default
       for name in ("stem_conv", "inverted_residual", "stem_block", "head_pool", "linear")}
