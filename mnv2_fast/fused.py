"""Fused modules: one inverted-residual block as one kernel (`fuse_block`), and the pieces
`optimize` assembles a whole network from (stem, head, classifier).

Each module keeps its BN-folded weights as buffers in the layout the kernels read, so
``.to(device, dtype)`` moves and casts them like any module.  ``backend`` picks the engine:

* "triton": the fused Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1);
* "torch":  the same folded computation in plain PyTorch (kernels/reference.py; any device);
* "auto":   Triton for CUDA tensors, PyTorch otherwise.

Each part is one registered operator (mnv2_fast/ops.py: ``mnv2_fast::stem_conv``,
``inverted_residual``, ``head_pool``, ``linear``), which is what torch.compile and
torch.export see; run eagerly, a module calls the op's implementation directly.

Inference only, on either engine: a fused module in training mode (after ``.train()``) or
asked for gradients raises in forward, and a batch of 0 gives the empty result.  Their
state_dicts hold the folded weights: load trained weights into the unfused model first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import ops
from .folding import check_eval, fold_bn
from .ops import BACKENDS, check_backend, use_triton  # noqa: F401 (part of this module's interface)

if TYPE_CHECKING:
    from .kernels import BlockShape

__all__ = [
    "BACKENDS",
    "FusedInvertedResidual",
    "FusedLinear",
    "FusedStem",
    "FusedHead",
    "FusedPart",
    "UnsupportedBlockError",
    "fuse_block",
    "is_inverted_residual",
    "parse_inverted_residual",
]

INFERENCE_ONLY = "inference only: wrap the call in torch.no_grad() or torch.inference_mode()"


class UnsupportedBlockError(ValueError):
    """A module looks like an inverted-residual block but the fused kernel cannot compute it."""


def _kernels():
    return ops.kernels()


def check_input(x: torch.Tensor, channels: int, like: torch.Tensor, what: str) -> None:
    """Errors that name the problem, before any kernel sees the tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what} expects a rank-4 input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.dtype != like.dtype:
        raise TypeError(
            f"{what} has {like.dtype} weights but the input is {x.dtype}: convert the input, or the module with .to(dtype)"
        )
    if x.device != like.device:
        raise ValueError(f"{what} has weights on {like.device} but the input is on {x.device}: move one of them")
    if min(x.shape[1:]) < 1:  # a batch of 0 is fine: its result is empty
        raise ValueError(f"{what} got an empty input of shape {tuple(x.shape)}")


def _is_relu6(m: nn.Module) -> bool:
    if isinstance(m, nn.ReLU6):
        return True
    return isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0


def _conv_bn(seq: nn.Module, what: str, *, act: bool) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A Conv2d -> BatchNorm2d [-> ReLU6] sequence, as torchvision's Conv2dNormActivation."""
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else [seq]
    if len(mods) != (3 if act else 2) or not isinstance(mods[0], nn.Conv2d) or not isinstance(mods[1], nn.BatchNorm2d):
        raise UnsupportedBlockError(f"{what}: expected Conv2d, BatchNorm2d{', ReLU6' if act else ''}; got {[type(m).__name__ for m in mods]}")
    if act and not _is_relu6(mods[2]):
        raise UnsupportedBlockError(f"{what}: activation {type(mods[2]).__name__} is not ReLU6")
    return mods[0], mods[1]


def _check_conv(conv: nn.Conv2d, what: str, *, kernel: int, groups: int, strides: tuple[int, ...]) -> None:
    problems = []
    if conv.kernel_size != (kernel, kernel):
        problems.append(f"kernel {conv.kernel_size} (need {kernel}x{kernel})")
    if conv.groups != groups:
        problems.append(f"groups={conv.groups} (need {groups})")
    if conv.stride[0] != conv.stride[1] or conv.stride[0] not in strides:
        problems.append(f"stride {conv.stride} (need one of {strides})")
    if conv.dilation != (1, 1):
        problems.append(f"dilation {conv.dilation}")
    if conv.padding != ((kernel - 1) // 2,) * 2 or conv.padding_mode != "zeros":
        problems.append(f"padding {conv.padding} ({conv.padding_mode})")
    if problems:
        raise UnsupportedBlockError(f"{what}: " + ", ".join(problems))


def is_inverted_residual(m: nn.Module) -> bool:
    """torchvision-style InvertedResidual: a `conv` Sequential and a `use_res_connect` flag."""
    return type(m).__name__ == "InvertedResidual" and isinstance(getattr(m, "conv", None), nn.Sequential)


@dataclass
class ParsedBlock:
    """A block read out of a module: its record (size unknown: 0 x 0) and its three stages."""

    spec: BlockShape
    expand: tuple[nn.Conv2d, nn.BatchNorm2d] | None
    depthwise: tuple[nn.Conv2d, nn.BatchNorm2d]
    project: tuple[nn.Conv2d, nn.BatchNorm2d]


def parse_inverted_residual(block: nn.Module) -> ParsedBlock:
    """Read expand / depthwise / project out of a torchvision-style block, or say why not."""
    if not is_inverted_residual(block):
        raise UnsupportedBlockError(f"{type(block).__name__} is not an InvertedResidual block")
    layers = list(block.conv.children())
    if len(layers) == 4:
        expand = _conv_bn(layers[0], "expand", act=True)
        layers = layers[1:]
    elif len(layers) == 3:
        expand = None
    else:
        raise UnsupportedBlockError(f"InvertedResidual.conv has {len(layers)} layers; expected 3 (t = 1) or 4")
    depthwise = _conv_bn(layers[0], "depthwise", act=True)
    project = _conv_bn(nn.Sequential(layers[1], layers[2]), "project", act=False)
    dw = depthwise[0]
    hidden = dw.in_channels
    _check_conv(dw, "depthwise", kernel=3, groups=hidden, strides=(1, 2))
    if dw.out_channels != hidden:
        raise UnsupportedBlockError(f"depthwise: {dw.in_channels} -> {dw.out_channels} channels is not depthwise")
    if expand is not None:
        _check_conv(expand[0], "expand", kernel=1, groups=1, strides=(1,))
        if expand[0].out_channels != hidden:
            raise UnsupportedBlockError(f"expand gives {expand[0].out_channels} channels, depthwise takes {hidden}")
        cin = expand[0].in_channels
    else:
        cin = hidden
    _check_conv(project[0], "project", kernel=1, groups=1, strides=(1,))
    if project[0].in_channels != hidden:
        raise UnsupportedBlockError(f"project takes {project[0].in_channels} channels, depthwise gives {hidden}")
    cout = project[0].out_channels
    stride = dw.stride[0]
    residual = bool(getattr(block, "use_res_connect", stride == 1 and cin == cout))
    if residual and (stride != 1 or cin != cout):
        raise UnsupportedBlockError(f"use_res_connect is set but stride={stride}, {cin} -> {cout} channels")
    spec = _kernels().BlockShape(cin, hidden, cout, stride, 0, 0, expand is not None, residual)
    return ParsedBlock(spec, expand, depthwise, project)


class FusedPart(nn.Module):
    """The base of the fused modules.  forward() refuses training mode and autograd, checks the
    input (check_input), then computes the part (compute()): one registered op of
    mnv2_fast/ops.py, which runs the kernel or the same computation in PyTorch ops (from
    kernels/reference.py) as the backend says; describe() says what runs and what it
    computes (computes()), for the fusion report and the repr."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = check_backend(backend)
        self.training = False  # built from eval-mode modules, for inference only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is in training mode (was .train() called?): the fused modules "
                               "are inference only (dropout and batch statistics are gone); call .eval()")
        # Grad mode first: under no_grad / inference_mode this check costs one call.
        if torch.is_grad_enabled() and (getattr(x, "requires_grad", False)
                                        or any(t.requires_grad for t in self._buffers.values() if t is not None)):
            raise RuntimeError(f"{type(self).__name__}: {INFERENCE_ONLY} (the input or a weight requires grad)")
        self.check_input(x)
        return self.compute(x)

    def call(self, name: str, *args, **eager_only):
        """ops.<name>(*args): the registered op (torch.ops.mnv2_fast.<name>) when traced, so that
        it stays one node; its implementation itself when run, saving the dispatcher's round trip.
        eager_only: keyword arguments the implementation takes and the op's schema does not."""
        if ops.traced(args[0]):
            if any(v is not None for v in eager_only.values()):
                raise ValueError(f"{type(self).__name__}: {', '.join(eager_only)} applies to eager calls only; "
                                 "torch.compile and torch.export run the registered op, which takes none: "
                                 f"set {', '.join(eager_only)} to None first")
            return ops.OPS[name](*args)
        return getattr(ops, name)(*args, **eager_only)

    @property
    def device(self) -> torch.device:
        return next(t for t in self._buffers.values() if t is not None).device

    def runs(self, device: torch.device | None = None) -> str:
        """What computes this part: for inputs on `device` (where the weights are, so the only
        place an input can be), or for any input when None."""
        if self.backend == "triton":
            return "one Triton kernel"
        if self.backend == "torch":
            return "folded PyTorch ops"
        if device is None:
            return "one Triton kernel on CUDA, folded PyTorch ops elsewhere"
        return "one Triton kernel" if device.type == "cuda" else f"folded PyTorch ops on {device.type} (a kernel on CUDA)"

    def describe(self, now: bool = False) -> str:
        """What runs and what it computes; now=True: what runs with the weights where they are."""
        return f"{self.runs(self.device if now else None)}: {self.computes()}"

    def extra_repr(self) -> str:
        return f"{self.describe(now=True)}; backend={self.backend!r}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A state_dict of the unfused model (e.g. torchvision's) has other keys here: say so in one line
        # instead of listing hundreds of missing and unexpected keys.
        own = {prefix + name for name, t in self._buffers.items() if t is not None}
        foreign = sorted(k for k in state_dict if k.startswith(prefix) and k not in own)
        if foreign:
            where = prefix[:-1] or type(self).__name__
            raise RuntimeError(
                f"{where} is a fused {type(self).__name__}: it holds BatchNorm-folded weights "
                f"({', '.join(sorted(k[len(prefix):] for k in own))}), but the state_dict has the unfused "
                f"model's keys ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}). "
                "Load weights before optimize(): into the unfused model, then optimize (or fuse_block) it")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class FusedInvertedResidual(FusedPart):
    """One MobileNetV2 block, BN folded, computed in a single Triton kernel (or folded PyTorch).

    Buffers, in kernel layout: w_exp [cin, hidden], b_exp; w_dw [9, hidden], b_dw;
    w_proj [hidden, cout], b_proj.  ``spec``: the block's record (channels, stride, stages).
    Output: channels_last memory, like cuDNN's.
    """

    def __init__(self, block: nn.Module, backend: str = "auto"):
        super().__init__(backend)
        p = parse_inverted_residual(block)
        check_eval(block, type(block).__name__)
        self.spec = s = p.spec
        if p.expand is not None:
            w, b = fold_bn(*p.expand)
            self.register_buffer("w_exp", w.reshape(s.hidden, s.cin).t().contiguous())
            self.register_buffer("b_exp", b)
        else:
            self.w_exp = self.b_exp = None
        w, b = fold_bn(*p.depthwise)
        self.register_buffer("w_dw", w.reshape(s.hidden, 9).t().contiguous())
        self.register_buffer("b_dw", b)
        w, b = fold_bn(*p.project)
        self.register_buffer("w_proj", w.reshape(s.cout, s.hidden).t().contiguous())
        self.register_buffer("b_proj", b)
        self.config = None  # a kernels.BlockConfig to pin the launch; None = tuned table / heuristic

    def computes(self) -> str:
        s = self.spec
        return f"{s.cin} -> {s.hidden} (t={s.t}) -> {s.cout}, stride {s.stride}" + (", +x" if s.residual else "")

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.spec.cin, self.w_proj, "FusedInvertedResidual")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return self.call("inverted_residual", x, self.w_exp, self.b_exp, self.w_dw, self.b_dw, self.w_proj,
                         self.b_proj, s.stride, s.residual, self.backend, config=self.config)


def fuse_block(block: nn.Module, backend: str = "auto") -> FusedInvertedResidual:
    """Fuse a torchvision-style InvertedResidual (eval mode) into one-kernel form.

    backend: "triton" (the fused kernel), "torch" (folded PyTorch) or "auto" (Triton for
    CUDA tensors).  Raises UnsupportedBlockError for blocks the kernel cannot compute.
    """
    return FusedInvertedResidual(block, backend)


class FusedStem(FusedPart):
    """3x3 stride-2 conv + BN + ReLU6 as one kernel; reads NCHW or channels_last input."""

    def __init__(self, seq: nn.Module, backend: str = "auto"):
        super().__init__(backend)
        conv, bn = _conv_bn(seq, "stem", act=True)
        _check_conv(conv, "stem", kernel=3, groups=1, strides=(1, 2))
        self.cin, self.cout, self.stride = conv.in_channels, conv.out_channels, conv.stride[0]
        w, b = fold_bn(conv, bn)
        self.register_buffer("weight", w.reshape(self.cout, self.cin * 9).t().contiguous())
        self.register_buffer("bias", b)

    def computes(self) -> str:
        return f"3x3 conv stride {self.stride} + BN + ReLU6, reads NCHW or NHWC"

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.cin, self.weight, "the model")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("stem_conv", x, self.weight, self.bias, self.stride, self.backend)


class FusedHead(FusedPart):
    """1x1 conv + BN + ReLU6 + global average pool as one kernel; returns [N, C, 1, 1].

    The [N, C, H, W] activation of the 1x1 conv is never written: only its mean is."""

    def __init__(self, seq: nn.Module, backend: str = "auto"):
        super().__init__(backend)
        conv, bn = _conv_bn(seq, "head", act=True)
        _check_conv(conv, "head", kernel=1, groups=1, strides=(1,))
        self.cin, self.cout = conv.in_channels, conv.out_channels
        w, b = fold_bn(conv, bn)
        self.register_buffer("weight", w.reshape(self.cout, self.cin).t().contiguous())
        self.register_buffer("bias", b)

    def computes(self) -> str:
        return f"1x1 conv {self.cin} -> {self.cout} + BN + ReLU6 + global average pool (the full map is never written)"

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.cin, self.weight, "FusedHead")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("head_pool", x, self.weight, self.bias, self.backend)[:, :, None, None]


class FusedLinear(FusedPart):
    """The classifier: the paper's final 1x1 conv on the pooled map, i.e. a dense layer."""

    def __init__(self, linear: nn.Linear, backend: str = "auto"):
        super().__init__(backend)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().t().contiguous())
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros_like(linear.weight[:, 0])
        self.register_buffer("bias", bias.clone())

    def computes(self) -> str:
        return f"dense {self.in_features} -> {self.out_features} (the paper's final 1x1 conv)"

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FusedLinear expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"FusedLinear expects [N, {self.in_features}], got {tuple(x.shape)}")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("linear", x, self.weight, self.bias, self.backend)
