"""One adapter per source library: each reads its library's blocks of the inverted-residual
family into one normalised description (`BlockDesc`), which is all the fused kernel needs.

    BlockDesc: [start depthwise] -> [expand 1x1 + act] -> [depthwise k x k + act]
               -> project 1x1 [+ act] [x layer scale] [+ x]

* torchvision: MobileNetV2's and MobileNetV3's ``InvertedResidual`` (a ``conv`` or ``block``
  Sequential of conv/BN/activation stages), MNASNet's ``_InvertedResidual`` (a flat ``layers``
  Sequential), and MNASNet's stem pair (depthwise, pointwise) as a run of layers in a Sequential;
* timm: ``DepthwiseSeparableConv``, ``InvertedResidual`` and ``UniversalInvertedResidual``
  (MobileNetV4), whose BatchNorm carries the activation (``BatchNormAct2d``) and whose
  tf_ variants pad with ``Conv2dSame`` (TensorFlow's "same" padding).

Blocks are recognised by their structure (the library's class and the stages it holds),
never by the model they sit in.  A recognised block the kernel cannot compute raises
UnsupportedBlockError with the reason (a squeeze-excite: "squeeze-excite: not fused yet";
another activation; a 7x7 depthwise; ...), so optimize() can report it instead of fusing part
of it.  A new library is one more adapter here; the kernel does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .folding import fold_bn

if TYPE_CHECKING:
    from .kernels import BlockShape

__all__ = ["ADAPTERS", "BlockDesc", "Stage", "UnsupportedBlockError", "activation_name", "check_conv", "conv_bn_act",
           "describe_block", "is_block", "separable_run"]

SQUEEZE_EXCITE = "squeeze-excite: not fused yet"
KERNEL_SIZES = (3, 5)


class UnsupportedBlockError(ValueError):
    """A module is a block of the family, but the fused kernel cannot compute it (the reason)."""


# ---------------------------------------------------------------- stages


def activation_name(m: nn.Module | None, what: str | None = None) -> str:
    """"relu6", "relu" or "none" for the activations the kernel has; UnsupportedBlockError else
    (naming the stage `what`)."""
    if _identity(m):
        return "none"
    if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0):
        return "relu6"
    if isinstance(m, nn.ReLU):
        return "relu"
    raise UnsupportedBlockError(f"{what + ': ' if what else ''}activation {type(m).__name__} is not supported "
                                "(ReLU6 or ReLU)")


@dataclass
class Stage:
    """One convolution of a block with the BatchNorm after it and the activation after that."""

    conv: nn.Conv2d
    bn: nn.Module | None  # a BatchNorm (timm's BatchNormAct2d included), or None: the conv's bias only
    act: str  # relu6, relu, none
    what: str  # the stage's name, for errors

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) with the BatchNorm folded in, float64."""
        if self.bn is None:
            w = self.conv.weight.detach().double()
            b = self.conv.bias.detach().double() if self.conv.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
            return w, b
        return fold_bn(self.conv, self.bn, torch.float64)

    def tf_same(self) -> bool:
        return _is_conv_same(self.conv)


@dataclass
class BlockDesc:
    """A block in the kernel's terms (its spec, size 0 x 0 until an input arrives) and the
    stages its weights come from."""

    spec: "BlockShape"
    kind: str  # what the library calls it, for the report
    start: Stage | None
    expand: Stage | None
    depthwise: Stage | None
    project: Stage
    layer_scale: torch.Tensor | None = None  # per output channel, after the project


def _is_conv_same(conv: nn.Module) -> bool:
    """timm's Conv2dSame: TensorFlow "same" padding, computed per input (its own padding is 0)."""
    return type(conv).__name__ == "Conv2dSame"


def check_conv(conv: nn.Module, what: str, *, kernel: tuple[int, ...], depthwise: bool, strides=(1, 2)) -> int:
    """The conv's kernel size after checking what the kernel needs: square, stride 1 or 2, no
    dilation, zero padding k // 2 (or Conv2dSame), depthwise or dense as asked."""
    if not isinstance(conv, nn.Conv2d):
        raise UnsupportedBlockError(f"{what}: expected a Conv2d, got {type(conv).__name__}")
    k = conv.kernel_size[0]
    problems = []
    if conv.kernel_size[0] != conv.kernel_size[1] or k not in kernel:
        need = " or ".join(f"{n}x{n}" for n in kernel)
        problems.append(f"kernel {tuple(conv.kernel_size)} (need {need})")
    if depthwise and not (conv.groups == conv.in_channels == conv.out_channels):
        problems.append(f"groups={conv.groups} for {conv.in_channels} -> {conv.out_channels} channels "
                        "(need a depthwise conv)")
    if not depthwise and conv.groups != 1:
        problems.append(f"groups={conv.groups} (need 1)")
    if conv.stride[0] != conv.stride[1] or conv.stride[0] not in strides:
        problems.append(f"stride {tuple(conv.stride)} (need one of {strides})")
    if conv.dilation != (1, 1):
        problems.append(f"dilation {tuple(conv.dilation)}")
    same = _is_conv_same(conv)
    if conv.padding_mode != "zeros" or (not same and conv.padding != (k // 2, k // 2)) or (same and conv.padding != (0, 0)):
        problems.append(f"padding {conv.padding} ({conv.padding_mode})")
    if problems:
        raise UnsupportedBlockError(f"{what}: " + ", ".join(problems))
    return k


def _block(kind: str, start: Stage | None, expand: Stage | None, depthwise: Stage | None, project: Stage, *,
           residual: bool, layer_scale: torch.Tensor | None = None) -> BlockDesc:
    """Check the stages against each other and the kernel; build the description."""
    from .kernels import BlockShape

    if start is not None:
        check_conv(start.conv, start.what, kernel=KERNEL_SIZES, depthwise=True,
                    strides=(1,) if depthwise is not None else (1, 2))
        if start.act != "none":
            raise UnsupportedBlockError(f"{start.what}: an activation after the start depthwise is not supported")
        if start.tf_same():
            raise UnsupportedBlockError(f"{start.what}: TensorFlow 'same' padding of a start depthwise")
    if expand is not None:
        check_conv(expand.conv, expand.what, kernel=(1,), depthwise=False, strides=(1,))
    if depthwise is not None:
        check_conv(depthwise.conv, depthwise.what, kernel=KERNEL_SIZES, depthwise=True)
    check_conv(project.conv, project.what, kernel=(1,), depthwise=False, strides=(1,))
    cin = (start or expand or depthwise or project).conv.in_channels
    hidden = expand.conv.out_channels if expand is not None else cin
    if start is not None and start.conv.in_channels != cin:
        raise UnsupportedBlockError(f"{start.what} takes {start.conv.in_channels} channels, the block {cin}")
    if depthwise is not None and depthwise.conv.in_channels != hidden:
        raise UnsupportedBlockError(f"{depthwise.what} takes {depthwise.conv.in_channels} channels, "
                                    f"the expand gives {hidden}")
    if project.conv.in_channels != hidden:
        raise UnsupportedBlockError(f"{project.what} takes {project.conv.in_channels} channels, the stage before "
                                    f"gives {hidden}")
    if expand is None and depthwise is None:
        raise UnsupportedBlockError("a block without an expand or a middle depthwise is a 1x1 conv, not fused")
    cout = project.conv.out_channels
    stride = (depthwise or start).conv.stride[0] if (depthwise or start) is not None else 1
    if residual and (stride != 1 or cin != cout):
        raise UnsupportedBlockError(f"a residual is set but stride={stride}, {cin} -> {cout} channels")
    if layer_scale is not None and project.act != "none":
        raise UnsupportedBlockError("a layer scale after an activated project is not supported")
    spec = BlockShape(cin, hidden, cout, stride, 0, 0, expand is not None, residual,
                      ksize=depthwise.conv.kernel_size[0] if depthwise is not None else 0,
                      start_k=start.conv.kernel_size[0] if start is not None else 0,
                      act_exp=expand.act if expand is not None else "relu6",
                      act_dw=depthwise.act if depthwise is not None else "relu6",
                      act_proj=project.act, tf_same=depthwise is not None and depthwise.tf_same() and stride == 2)
    spec.check()
    return BlockDesc(spec, kind, start, expand, depthwise, project, layer_scale)


# ---------------------------------------------------------------- torchvision


def _tv_stage(seq: nn.Module, what: str) -> Stage:
    """torchvision's Conv2dNormActivation (or any Sequential): Conv2d, BatchNorm2d[, activation]."""
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else [seq]
    if not 2 <= len(mods) <= 3 or not isinstance(mods[0], nn.Conv2d) or not isinstance(mods[1], nn.BatchNorm2d):
        raise UnsupportedBlockError(f"{what}: expected Conv2d, BatchNorm2d[, activation]; got "
                                    f"{[type(m).__name__ for m in mods]}")
    return Stage(mods[0], mods[1], activation_name(mods[2] if len(mods) == 3 else None, what), what)


def conv_bn_act(mods: list[nn.Module], what: str) -> Stage:
    """A stem or head as modules in a row: Conv2d, BatchNorm, activation (torchvision), or
    Conv2d, BatchNormAct2d (timm: the activation inside the BatchNorm)."""
    if len(mods) == 2 and isinstance(mods[0], nn.Conv2d) and hasattr(mods[1], "act"):
        return _timm_stage(mods[0], mods[1], what)
    stage = _tv_stage(nn.Sequential(*mods), what)
    if len(mods) != 3:
        raise UnsupportedBlockError(f"{what}: expected Conv2d, BatchNorm2d, activation; got "
                                    f"{[type(m).__name__ for m in mods]}")
    return stage


def _is_squeeze_excite(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return "squeeze" in name or name in ("se", "semodule", "selayer", "seblock")


def _tv_stages(layers: list[nn.Module], residual: bool, kind: str) -> BlockDesc:
    """[expand] depthwise [squeeze-excite] project, as torchvision builds them."""
    if any(_is_squeeze_excite(m) for m in layers):
        raise UnsupportedBlockError(SQUEEZE_EXCITE)
    if len(layers) not in (2, 3):
        raise UnsupportedBlockError(f"{kind} has {len(layers)} stages; expected 2 (no expand) or 3")
    expand = _tv_stage(layers[0], "expand") if len(layers) == 3 else None
    depthwise = _tv_stage(layers[-2], "depthwise")
    project = _tv_stage(layers[-1], "project")
    if project.act != "none":
        raise UnsupportedBlockError(f"project: an activation after the project ({project.act}) in an inverted residual")
    if expand is not None and expand.conv.kernel_size != (1, 1):
        raise UnsupportedBlockError(f"expand: kernel {tuple(expand.conv.kernel_size)} (need 1x1)")
    return _block(kind, None, expand, depthwise, project, residual=residual)


def _torchvision_block(m: nn.Module) -> BlockDesc | None:
    name = type(m).__name__
    if name == "InvertedResidual" and isinstance(getattr(m, "conv", None), nn.Sequential):
        # MobileNetV2 (torchvision's and mnv2_fast.model's): conv = [expand], depthwise, project conv, project BN.
        layers = list(m.conv.children())
        if len(layers) not in (3, 4):
            raise UnsupportedBlockError(f"InvertedResidual.conv has {len(layers)} layers; expected 3 (t = 1) or 4")
        if not isinstance(layers[-1], nn.BatchNorm2d) or not isinstance(layers[-2], nn.Conv2d):
            raise UnsupportedBlockError("project: expected Conv2d, BatchNorm2d; got "
                                        f"{[type(x).__name__ for x in layers[-2:]]}")
        stages = layers[:-2] + [nn.Sequential(layers[-2], layers[-1])]
        residual = bool(getattr(m, "use_res_connect", False))
        return _tv_stages(stages, residual, "inverted residual")
    if name == "InvertedResidual" and isinstance(getattr(m, "block", None), nn.Sequential):
        # MobileNetV3: block = [expand], depthwise, [SqueezeExcitation], project.
        return _tv_stages(list(m.block.children()), bool(getattr(m, "use_res_connect", False)), "inverted residual")
    if name == "_InvertedResidual" and isinstance(getattr(m, "layers", None), nn.Sequential):
        # MNASNet: layers = expand conv, BN, ReLU, depthwise conv, BN, ReLU, project conv, BN.
        layers = list(m.layers.children())
        if len(layers) != 8:
            raise UnsupportedBlockError(f"_InvertedResidual.layers has {len(layers)} layers; expected 8")
        stages = [nn.Sequential(*layers[0:3]), nn.Sequential(*layers[3:6]), nn.Sequential(*layers[6:8])]
        return _tv_stages(stages, bool(getattr(m, "apply_residual", False)), "inverted residual")
    return None


def separable_run(layers: list[nn.Module]) -> BlockDesc | None:
    """A depthwise-separable pair written out as plain layers (MNASNet's stem: depthwise conv, BN,
    ReLU, pointwise conv, BN), or None when the layers are not one."""
    if len(layers) != 5 or not all(isinstance(layers[i], nn.Conv2d) for i in (0, 3)):
        return None
    if not all(isinstance(layers[i], nn.BatchNorm2d) for i in (1, 4)):
        return None
    dw = layers[0]
    if dw.groups == 1 or dw.groups != dw.in_channels or layers[3].kernel_size != (1, 1):
        return None
    try:
        act = activation_name(layers[2])
    except UnsupportedBlockError:
        return None
    return _block("depthwise-separable", None, None, Stage(dw, layers[1], act, "depthwise"),
                  Stage(layers[3], layers[4], "none", "pointwise"), residual=False)


# ---------------------------------------------------------------- timm


def _timm_stage(conv: nn.Module, bn: nn.Module, what: str) -> Stage:
    """A timm conv and its BatchNormAct2d (the activation inside, `act`; `drop` a no-op in eval)."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not hasattr(bn, "act"):
        raise UnsupportedBlockError(f"{what}: expected a BatchNormAct2d after the conv, got {type(bn).__name__}")
    drop = getattr(bn, "drop", None)
    if drop is not None and not isinstance(drop, (nn.Identity, nn.Dropout)):
        raise UnsupportedBlockError(f"{what}: {type(drop).__name__} after the BatchNorm")
    return Stage(conv, bn, activation_name(getattr(bn, "act", None), what), what)


def _timm_conv_norm_act(m: nn.Module, what: str) -> Stage | None:
    """timm's ConvNormAct (UIB's stages), or None for an absent stage (nn.Identity)."""
    if isinstance(m, nn.Identity):
        return None
    if not hasattr(m, "conv") or not hasattr(m, "bn"):
        raise UnsupportedBlockError(f"{what}: expected a ConvNormAct, got {type(m).__name__}")
    if not isinstance(getattr(m, "aa", None) or nn.Identity(), nn.Identity):
        raise UnsupportedBlockError(f"{what}: anti-aliasing ({type(m.aa).__name__}) is not supported")
    return _timm_stage(m.conv, m.bn, what)


def _identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _timm_common(m: nn.Module) -> None:
    """What timm's blocks share and the kernel does not do: squeeze-excite, space-to-depth, anti-aliasing."""
    if not _identity(getattr(m, "se", None)):
        raise UnsupportedBlockError(SQUEEZE_EXCITE)
    if getattr(m, "conv_s2d", None) is not None:
        raise UnsupportedBlockError("space-to-depth stem conv (conv_s2d) is not supported")
    if not _identity(getattr(m, "aa", None)):
        raise UnsupportedBlockError(f"anti-aliasing ({type(m.aa).__name__}) is not supported")


def _timm_block(m: nn.Module) -> BlockDesc | None:
    if not type(m).__module__.startswith("timm."):
        return None
    name = type(m).__name__
    if name == "DepthwiseSeparableConv":
        _timm_common(m)
        dw = _timm_stage(m.conv_dw, m.bn1, "conv_dw")
        pw = _timm_stage(m.conv_pw, m.bn2, "conv_pw")
        return _block("depthwise-separable", None, None, dw, pw, residual=bool(m.has_skip))
    if name == "InvertedResidual":
        _timm_common(m)
        exp = _timm_stage(m.conv_pw, m.bn1, "conv_pw")
        dw = _timm_stage(m.conv_dw, m.bn2, "conv_dw")
        pwl = _timm_stage(m.conv_pwl, m.bn3, "conv_pwl")
        if pwl.act != "none":
            raise UnsupportedBlockError(f"conv_pwl: an activation after the project ({pwl.act})")
        return _block("inverted residual", None, exp, dw, pwl, residual=bool(m.has_skip))
    if name == "UniversalInvertedResidual":
        if not _identity(m.se):
            raise UnsupportedBlockError(SQUEEZE_EXCITE)
        if not _identity(m.dw_end):
            raise UnsupportedBlockError("dw_end: a depthwise after the project would be a third stencil in the "
                                        "block (the fused kernel has a start and a middle one)")
        start = _timm_conv_norm_act(m.dw_start, "dw_start")
        exp = _timm_conv_norm_act(m.pw_exp, "pw_exp")
        mid = _timm_conv_norm_act(m.dw_mid, "dw_mid")
        proj = _timm_conv_norm_act(m.pw_proj, "pw_proj")
        gamma = getattr(m.layer_scale, "gamma", None) if not _identity(m.layer_scale) else None
        if not _identity(m.layer_scale) and gamma is None:
            raise UnsupportedBlockError(f"layer_scale: {type(m.layer_scale).__name__} has no gamma")
        variant = {(True, True): "ExtraDW", (False, True): "IB", (True, False): "ConvNeXt-like",
                   (False, False): "FFN"}[(start is not None, mid is not None)]
        return _block(f"UIB {variant}", start, exp, mid, proj, residual=bool(m.has_skip),
                      layer_scale=None if gamma is None else gamma.detach())
    if name in ("EdgeResidual", "CondConvResidual", "MobileMultiQueryAttention2d", "MobileAttention"):
        raise UnsupportedBlockError(f"timm {name} is not a block the fused kernel computes (a full k x k expand "
                                    "conv, conditional convs or attention)")
    return None


# ---------------------------------------------------------------- the registry

# Each adapter: module -> BlockDesc, None when the module is not one of its library's blocks;
# UnsupportedBlockError for one of its blocks the kernel cannot compute.
ADAPTERS: dict[str, Callable[[nn.Module], BlockDesc | None]] = {
    "torchvision": _torchvision_block,
    "timm": _timm_block,
}


def describe_block(m: nn.Module) -> BlockDesc | None:
    """The normalised description of a block of any known library; None when `m` is no block
    of the family; UnsupportedBlockError when it is one the kernel cannot compute."""
    for adapter in ADAPTERS.values():
        desc = adapter(m)
        if desc is not None:
            return desc
    return None


def is_block(m: nn.Module) -> bool:
    """Whether some adapter recognises `m` as a block (fusable or not)."""
    try:
        return describe_block(m) is not None
    except UnsupportedBlockError:
        return True


# ---------------------------------------------------------------- whole models


@dataclass(frozen=True)
class Part:
    """One place of a known model where optimize() puts a fused module.

    path: the module replaced; part: stem, block, head, classifier, or other (kept: `note`
    says what it is); source(): what the fused module is built from (a module, a Stage, a
    BlockDesc), which may raise UnsupportedBlockError; absorbed: modules folded into this
    part, replaced by nn.Identity (the BatchNorm and activation after a stem conv, say)."""

    path: str
    part: str
    source: Callable[[], object] | None = None
    absorbed: tuple[str, ...] = ()
    note: str = ""


def _dense_1x1(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1 and conv.stride == (1, 1)


def _blocks_within(model: nn.Module, prefix: str, container: nn.Module) -> list[Part]:
    """The blocks (and the modules between them) under a container, in order: block parts for
    what an adapter recognises, other parts for the rest."""
    out = []
    for name, m in container.named_children():
        path = f"{prefix}.{name}"
        if is_block(m):
            out.append(Part(path, "block", lambda m=m: m))
        elif isinstance(m, nn.Sequential) and len(m):
            out += _blocks_within(model, path, m)
        else:
            out.append(Part(path, "other", note=f"{type(m).__name__}: not a block of the inverted-residual family"))
    return out


def _torchvision_layout(model: nn.Module) -> list[Part] | None:
    """MNASNet: layers = stem conv, BN, ReLU, the depthwise-separable pair (5 layers), the
    stacks of blocks, head conv, BN, ReLU; forward() takes the mean over pixels, then the
    classifier (dropout, linear)."""
    if (type(model).__module__, type(model).__name__) != ("torchvision.models.mnasnet", "MNASNet"):
        return None
    layers = list(model.layers.children())
    if len(layers) != 17:
        return None
    parts = [Part("layers.0", "stem", lambda: nn.Sequential(*layers[0:3]), ("layers.1", "layers.2")),
             Part("layers.3", "block", lambda: separable_run(layers[3:8])
                  or _raise("layers.3-7: not a depthwise-separable pair (depthwise conv, BN, act, 1x1 conv, BN)"),
                  tuple(f"layers.{i}" for i in range(4, 8)))]
    for i in range(8, 14):
        parts += _blocks_within(model, f"layers.{i}", layers[i])
    parts.append(Part("layers.14", "head", lambda: nn.Sequential(*layers[14:17]), ("layers.15", "layers.16")))
    parts += _classifier(model.classifier, "classifier")
    return parts


def _raise(message: str):
    raise UnsupportedBlockError(message)


def _classifier(m: nn.Module, path: str) -> list[Part]:
    """A Linear, or a Sequential of Dropout and Linear layers."""
    mods = list(m.named_children()) if isinstance(m, nn.Sequential) else [("", m)]
    out = []
    for name, mod in mods:
        p = f"{path}.{name}" if name else path
        if isinstance(mod, nn.Linear):
            out.append(Part(p, "classifier", lambda mod=mod: mod))
        elif isinstance(mod, (nn.Dropout, nn.Identity)):
            out.append(Part(p, "identity", note=f"{type(mod).__name__}: nothing runs (the identity in eval mode)"))
        else:
            out.append(Part(p, "other", note=type(mod).__name__))
    return out


def _timm_layout(model: nn.Module) -> list[Part] | None:
    """timm's EfficientNet (mobilenetv2_*, efficientnet_lite*, mnasnet_*, efficientnet_b*) and
    MobileNetV3 (mobilenetv3_*, mobilenetv4_*): conv_stem + bn1, the blocks (stages of
    blocks), then either conv_head + bn2 and the global pool (EfficientNet), or the pool on
    the last block (a 1x1 ConvBnAct) followed by conv_head + norm_head on the pooled map
    (MobileNetV3/V4); the classifier."""
    kind = (type(model).__module__, type(model).__name__)
    if kind not in (("timm.models.efficientnet", "EfficientNet"), ("timm.models.mobilenetv3", "MobileNetV3")):
        return None
    pool = getattr(model, "global_pool", None)
    avg_pool = getattr(pool, "pool_type", None) == "avg"
    parts = [Part("conv_stem", "stem", lambda: _timm_stage(model.conv_stem, model.bn1, "stem"), ("bn1",))]
    blocks = _blocks_within(model, "blocks", model.blocks)
    if kind[1] == "MobileNetV3" and avg_pool and blocks:
        last = model.get_submodule(blocks[-1].path)
        conv = getattr(last, "conv", None)
        if (type(last).__name__ == "ConvBnAct" and _dense_1x1(conv) and not getattr(last, "has_skip", False)
                and isinstance(getattr(last, "aa", None) or nn.Identity(), nn.Identity)):
            # The pool follows this 1x1 conv: pooling its output is the fused head's job.
            blocks[-1] = Part(blocks[-1].path, "head", lambda: _timm_stage(conv, last.bn1, "head"))
    parts += blocks
    if kind[1] == "EfficientNet" and _dense_1x1(getattr(model, "conv_head", None)) and avg_pool:
        parts.append(Part("conv_head", "head", lambda: _timm_stage(model.conv_head, model.bn2, "head"), ("bn2",)))
    elif kind[1] == "MobileNetV3" and not isinstance(getattr(model, "conv_head", nn.Identity()), nn.Identity):
        parts.append(Part("conv_head", "other", note="a 1x1 conv on the pooled map (with norm_head after it): "
                                                      "a small dense layer, kept as PyTorch"))
    parts += _classifier(model.classifier, "classifier")
    return parts


# Each layout: model -> its parts in order, or None when the model is not one this library's
# adapter knows whole (optimize() then replaces the blocks it finds, and keeps the rest).
LAYOUTS: dict[str, Callable[[nn.Module], list[Part] | None]] = {
    "torchvision": _torchvision_layout,
    "timm": _timm_layout,
}


def model_layout(model: nn.Module) -> list[Part] | None:
    for layout in LAYOUTS.values():
        parts = layout(model)
        if parts is not None:
            return parts
    return None
