"""The models of the inverted-residual family the tools know by name: `mnv2-fast check/bench/
perf-model --model NAME`, the tests and the benchmark suites.

    mobilenet_v2                      mnv2_fast's own (torchvision's weights load unchanged)
    mnasnet0_5 ... mnasnet1_3         torchvision
    mobilenetv2_035 ... _140, _110d, _120d, efficientnet_lite0 ... lite4, mnasnet_100,
    mobilenetv4_conv_small            timm (a development dependency only: pip install timm)
    torchvision.NAME, timm.NAME       any other model of either library (e.g. timm.efficientnet_b0,
                                      whose squeeze-excite blocks optimize() keeps and reports)

Random weights: every conv initialised as torchvision initialises its MobileNets (Kaiming
normal, fan-out), then trained-looking BatchNorm statistics (`randomize_bn`).  timm's own
initialisation counts only k*k as a depthwise's fan-out: with randomised BatchNorm the
activations then grow by orders of magnitude per stage (mnasnet_100 reaches 1e20), and the
unfused model in float32 is already far from its float64 self, so no fused result could be
judged against it.
"""

from __future__ import annotations

import torch
from torch import nn

TORCHVISION = ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3")
TIMM = ("mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_140",
        "mobilenetv2_110d", "mobilenetv2_120d", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
        "efficientnet_lite3", "efficientnet_lite4", "mnasnet_100", "mobilenetv4_conv_small")
MODELS = ("mobilenet_v2",) + TORCHVISION + TIMM


def library(name: str) -> tuple[str, str]:
    """(library, its name for the model): "mnv2_fast", "torchvision" or "timm"."""
    if name == "mobilenet_v2":
        return "mnv2_fast", name
    source, dot, rest = name.partition(".")
    if dot and source in ("torchvision", "timm"):
        return source, rest
    if name in TORCHVISION:
        return "torchvision", name
    if name in TIMM:
        return "timm", name
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}, or torchvision.NAME / timm.NAME")


def construct(name: str, classes: int = 1000) -> nn.Module:
    """The model with its library's own initialisation (no weights are downloaded)."""
    source, model = library(name)
    if source == "mnv2_fast":
        from ..model import mobilenet_v2

        return mobilenet_v2(num_classes=classes)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(model, weights=None, num_classes=classes)
    try:
        import timm
    except ImportError:
        raise ValueError(f"model {name} needs timm, a development dependency of mnv2-fast: pip install timm") from None
    return timm.create_model(model, pretrained=False, num_classes=classes)


@torch.no_grad()
def randomize(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """torchvision's MobileNet initialisation for every conv (Kaiming normal, fan-out) and
    trained-looking BatchNorm statistics (see the module docstring)."""
    from .testing import randomize_bn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator)
                           * (2.0 / (m.weight.shape[0] * m.weight[0, 0].numel())) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
    return randomize_bn(model, generator)


def resolution(name: str) -> int:
    """The input side the model was trained at (timm's pretrained_cfg; 224 for the others)."""
    if library(name)[0] != "timm":
        return 224
    cfg = getattr(construct(name), "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def build(name: str, classes: int = 1000, seed: int = 0) -> nn.Module:
    """The named model in eval mode with random weights (see `randomize`)."""
    torch.manual_seed(seed)
    return randomize(construct(name, classes), torch.Generator().manual_seed(seed)).eval()


def fused_parts(name: str, resolution: int = 224, classes: int = 1000) -> list[tuple[str, nn.Module, tuple]]:
    """(path, fused module, input shape at batch 1) of every fused part of optimize(NAME) at a
    square input of `resolution` pixels, in the order a forward runs them (shapes from a
    forward on the meta device: nothing is computed)."""
    from ..fused import FusedPart
    from ..optimize import optimize

    fast = optimize(build(name, classes), backend="torch").to("meta")
    seen: list[tuple[str, nn.Module, tuple]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, path=path: seen.append((path, mod, tuple(args[0].shape))))
             for path, m in fast.named_modules() if isinstance(m, FusedPart)]
    with torch.no_grad():
        fast(torch.empty(1, 3, resolution, resolution, device="meta"))
    for h in hooks:
        h.remove()
    return seen


def block_shapes(name: str, resolution: int) -> list[tuple[object, str]]:
    """(BlockShape at its input size, "NAME path") of every fused block of optimize(NAME)."""
    from ..fused import FusedInvertedResidual

    return [(m.spec.at(shape[2], shape[3]), f"{name} {path}") for path, m, shape in fused_parts(name, resolution)
            if isinstance(m, FusedInvertedResidual)]
