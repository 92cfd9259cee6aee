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

import torch
from torch import nn

from . import ops
from .adapters import BlockDesc, Stage, UnsupportedBlockError, check_conv, conv_bn_act, describe_block, is_block
from .folding import check_eval, fold_bn
from .ops import BACKENDS, check_backend, use_triton  # noqa: F401 (part of this module's interface)

__all__ = [
    "BACKENDS",
    "FusedInvertedResidual",
    "FusedLinear",
    "FusedStem",
    "FusedStemBlock",
    "FusedHead",
    "FusedPart",
    "UnsupportedBlockError",
    "fuse_block",
    "is_inverted_residual",
    "parse_inverted_residual",
]
# (UnsupportedBlockError lives in mnv2_fast.adapters, where blocks are read; re-exported here.)

INFERENCE_ONLY = "inference only: wrap the call in torch.no_grad() or torch.inference_mode()"


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


def _stage(seq: nn.Module | Stage, what: str, kernel: int) -> Stage:
    """A stem or head: a Stage, or a Sequential of Conv2d, BatchNorm2d, activation (ReLU6 or ReLU;
    timm's BatchNormAct2d carries it), with a dense kernel x kernel conv."""
    stage = seq if isinstance(seq, Stage) else conv_bn_act(list(seq.children()) if isinstance(seq, nn.Sequential)
                                                           else [seq], what)
    check_conv(stage.conv, what, kernel=(kernel,), depthwise=False, strides=(1, 2) if kernel > 1 else (1,))
    if stage.bn is None:
        raise UnsupportedBlockError(f"{what}: expected a BatchNorm after the conv")
    return stage


_ACT_TEXT = {"relu6": "ReLU6", "relu": "ReLU", "none": "no activation"}


def is_inverted_residual(m: nn.Module) -> bool:
    """A block of the inverted-residual family that some adapter (mnv2_fast.adapters) recognises:
    torchvision's MobileNetV2/V3 InvertedResidual and MNASNet block, timm's inverted residual,
    depthwise-separable and UIB blocks; fusable or not."""
    return is_block(m)


def parse_inverted_residual(block: nn.Module) -> BlockDesc:
    """The normalised description of a block (mnv2_fast.adapters), or say why it has none."""
    desc = describe_block(block)
    if desc is None:
        raise UnsupportedBlockError(f"{type(block).__name__} is not an InvertedResidual block (nor another block "
                                    "of the inverted-residual family: see mnv2_fast.adapters)")
    return desc


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
    """One block of the inverted-residual family, BN folded, computed in a single Triton kernel
    (or folded PyTorch): MobileNetV2's, MNASNet's and EfficientNet's inverted residuals (3x3 or
    5x5, ReLU6 or ReLU), depthwise-separable blocks, MobileNetV4's UIB blocks.

    Built from a module (any block an adapter of mnv2_fast.adapters reads) or from its
    BlockDesc.  Buffers, in kernel layout: w_start [s*s, cin], b_start (UIB's start
    depthwise); w_exp [cin, hidden], b_exp; w_dw [k*k, hidden], b_dw; w_proj [hidden, cout],
    b_proj (a layer scale folded in); absent stages are None.  ``spec``: the block's record
    (channels, stride, stages, activations).  Output: channels_last memory, like cuDNN's.
    """

    def __init__(self, block: nn.Module | BlockDesc, backend: str = "auto"):
        super().__init__(backend)
        if isinstance(block, BlockDesc):
            p = block
            for stage in (p.start, p.expand, p.depthwise, p.project):
                if stage is not None:
                    check_eval(stage.bn or stage.conv, stage.what)
        else:
            p = parse_inverted_residual(block)
            check_eval(block, type(block).__name__)
        self.spec = s = p.spec
        self.kind = p.kind

        def stage(names: tuple[str, str], st, rows: int, cols: int, scale=None) -> None:
            if st is None:
                setattr(self, names[0], None)
                setattr(self, names[1], None)
                return
            w, b = st.folded()  # float64; cast below with the module
            if scale is not None:  # y = gamma * conv(h): a per-channel scale of the conv
                gamma = scale.double()
                w, b = w * gamma[:, None, None, None], b * gamma
            dt = st.conv.weight.dtype
            self.register_buffer(names[0], w.reshape(cols, rows).t().contiguous().to(dt))
            self.register_buffer(names[1], b.to(dt))

        stage(("w_start", "b_start"), p.start, s.start_k ** 2, s.cin)
        stage(("w_exp", "b_exp"), p.expand, s.cin, s.hidden)
        stage(("w_dw", "b_dw"), p.depthwise, s.ksize ** 2, s.hidden)
        stage(("w_proj", "b_proj"), p.project, s.hidden, s.cout, p.layer_scale)  # a layer scale folded in
        self.config = None  # a kernels.BlockConfig to pin the launch; None = tuned table / heuristic

    def computes(self) -> str:
        s = self.spec
        parts = [f"{s.cin} -> {s.hidden} (t={s.t}) -> {s.cout}"]
        if s.start_k:
            parts.append(f"start depthwise {s.start_k}x{s.start_k}")
        if s.ksize:
            parts.append(f"{s.ksize}x{s.ksize} depthwise" + (" (TF same padding)" if s.tf_same else ""))
        parts.append(f"stride {s.stride}")
        acts = {a for a in (s.act_exp if s.has_expand else None, s.act_dw if s.ksize else None) if a}
        if acts != {"relu6"}:
            parts.append("/".join(sorted(acts)))
        if s.act_proj != "none":
            parts.append(f"{s.act_proj} after the project")
        if self.kind not in ("inverted residual",):
            parts.append(self.kind)
        return ", ".join(parts) + (", +x" if s.residual else "")

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.spec.cin, self.w_proj, "FusedInvertedResidual")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return self.call("inverted_residual", x, self.w_exp, self.b_exp, self.w_dw, self.b_dw, self.w_proj,
                         self.b_proj, s.stride, s.residual, self.backend, s.act_exp, s.act_dw, s.act_proj,
                         self.w_start, self.b_start, s.tf_same, config=self.config)


def fuse_block(block: nn.Module, backend: str = "auto") -> FusedInvertedResidual:
    """Fuse one block of the inverted-residual family (eval mode) into one-kernel form:
    torchvision's InvertedResidual (MobileNetV2; MobileNetV3's without squeeze-excite) and
    MNASNet block, timm's InvertedResidual, DepthwiseSeparableConv and
    UniversalInvertedResidual (see mnv2_fast.adapters).

    backend: "triton" (the fused kernel), "torch" (folded PyTorch) or "auto" (Triton for
    CUDA tensors).  Raises UnsupportedBlockError for blocks the kernel cannot compute.
    """
    return FusedInvertedResidual(block, backend)


class FusedStem(FusedPart):
    """3x3 stride-2 conv + BN + ReLU6 (or ReLU) as one kernel; reads NCHW or channels_last input.
    TensorFlow's "same" padding (timm's tf_ models, Conv2dSame) too."""

    def __init__(self, seq: nn.Module | Stage, backend: str = "auto"):
        super().__init__(backend)
        stage = _stage(seq, "stem", 3)
        conv = stage.conv
        self.cin, self.cout, self.stride = conv.in_channels, conv.out_channels, conv.stride[0]
        self.act, self.tf_same = stage.act, stage.tf_same()
        w, b = fold_bn(conv, stage.bn)
        self.register_buffer("weight", w.reshape(self.cout, self.cin * 9).t().contiguous())
        self.register_buffer("bias", b)

    def computes(self) -> str:
        pad = " (TF same padding)" if self.tf_same else ""
        return f"3x3 conv stride {self.stride}{pad} + BN + {_ACT_TEXT[self.act]}, reads NCHW or NHWC"

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.cin, self.weight, "the model")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("stem_conv", x, self.weight, self.bias, self.stride, self.backend, self.act, self.tf_same)


class FusedStemBlock(FusedPart):
    """The stem and the first block as one kernel, when that block is depthwise-separable
    (MobileNetV2's t = 1 block): the stem's output, the network's largest activation, never
    reaches GPU memory (kernels.block.stem_block).  Built from the two fused modules; holds
    their folded weights (weight, bias: the stem's; w_dw, b_dw, w_proj, b_proj: the block's)."""

    @staticmethod
    def fits(stem: nn.Module, block: nn.Module) -> bool:
        """Whether this stem and block can run as one kernel: a 3x3 stride-2 stem with padding 1
        and at most 64 im2col columns, then a block of a 3x3 stride-1 depthwise and the
        project, no expand, no residual, on the same backend."""
        if not (isinstance(stem, FusedStem) and isinstance(block, FusedInvertedResidual)):
            return False
        s = block.spec
        return (stem.stride == 2 and not stem.tf_same and stem.cin * 9 <= 64 and stem.cout == s.cin
                and stem.backend == block.backend and not s.has_expand and s.ksize == 3 and s.stride == 1
                and not s.start_k and not s.residual and not s.tf_same)

    def __init__(self, stem: FusedStem, block: FusedInvertedResidual):
        if not self.fits(stem, block):
            raise UnsupportedBlockError("the stem and the first block cannot run as one kernel (FusedStemBlock.fits)")
        super().__init__(stem.backend)
        self.stem_part, self.block_part = stem.computes(), block.computes()
        self.cin, self.act = stem.cin, stem.act
        self.spec = block.spec
        for name in ("weight", "bias"):
            self.register_buffer(name, getattr(stem, name))
        for name in ("w_dw", "b_dw", "w_proj", "b_proj"):
            self.register_buffer(name, getattr(block, name))
        self.config = block.config  # a kernels.BlockConfig to pin the launch; None = tuned table / heuristic

    def shape_at(self, h: int, w: int):
        """The launch's record (a kernels.BlockShape) for an h x w image: the block's, at the
        stem's output size, with the stem as its expand."""
        return self.spec.with_stem(self.cin, self.act, h, w)

    def computes(self) -> str:
        return f"stem ({self.stem_part}) and block ({self.block_part}); the stem's output is never written"

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.cin, self.weight, "the model")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return self.call("stem_block", x, self.weight, self.bias, self.w_dw, self.b_dw, self.w_proj, self.b_proj,
                         self.backend, self.act, s.act_dw, s.act_proj, config=self.config)


class FusedHead(FusedPart):
    """1x1 conv + BN + ReLU6 (or ReLU) + global average pool as one kernel; returns [N, C, 1, 1].

    The [N, C, H, W] activation of the 1x1 conv is never written: only its mean is."""

    def __init__(self, seq: nn.Module | Stage, backend: str = "auto"):
        super().__init__(backend)
        stage = _stage(seq, "head", 1)
        conv = stage.conv
        self.cin, self.cout, self.act = conv.in_channels, conv.out_channels, stage.act
        w, b = fold_bn(conv, stage.bn)
        self.register_buffer("weight", w.reshape(self.cout, self.cin).t().contiguous())
        self.register_buffer("bias", b)

    def computes(self) -> str:
        return (f"1x1 conv {self.cin} -> {self.cout} + BN + {_ACT_TEXT[self.act]} + global average pool "
                "(the full map is never written)")

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.cin, self.weight, "FusedHead")

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("head_pool", x, self.weight, self.bias, self.backend, self.act)[:, :, None, None]


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
