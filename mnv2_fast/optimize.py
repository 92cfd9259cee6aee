"""`optimize(model)`: the whole network on fused kernels, with a report of what was fused."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import nn

from .adapters import Part, model_layout
from .folding import check_eval
from .fused import (
    FusedHead,
    FusedInvertedResidual,
    FusedLinear,
    FusedPart,
    FusedStem,
    FusedStemBlock,
    UnsupportedBlockError,
    check_backend,
    is_inverted_residual,
)
from .graphs import CUDAGraphRunner

__all__ = ["FusionEntry", "FusionReport", "fusion_report", "optimize"]

# Classes whose forward is known to be features -> adaptive_avg_pool2d -> flatten -> classifier,
# so the head conv and the pool can become one kernel.
_KNOWN_MOBILENET_V2 = {("torchvision.models.mobilenetv2", "MobileNetV2"), ("mnv2_fast.model", "MobileNetV2")}


@dataclass(frozen=True)
class FusionEntry:
    name: str  # module path in the optimized model
    part: str  # stem, block, head, classifier, other; identity: a module nothing runs for (dropout)
    fused: bool
    detail: str  # what runs there, or why it is not fused
    absorbed: tuple[str, ...] = ()  # modules folded into this part (now nn.Identity): its BN, its activation


@dataclass(frozen=True)
class FusionReport:
    """What optimize() replaced and what runs there.  ``fusion_report(model)`` reads it from the
    model as it is now (after ``.cuda()``, say); the ``fusion_report`` attribute optimize() sets
    says what runs for inputs on each device."""

    backend: str
    entries: tuple[FusionEntry, ...]

    @property
    def fused(self) -> list[FusionEntry]:
        return [e for e in self.entries if e.fused]

    @property
    def not_fused(self) -> list[FusionEntry]:
        """The parts that compute something and are kept as PyTorch."""
        return [e for e in self.entries if not e.fused and e.part != "identity"]

    def __str__(self) -> str:
        width = max([len(e.name) for e in self.entries] + [6])
        parts = len(self.fused) + len(self.not_fused)
        lines = [f"mnv2_fast fusion report (backend={self.backend!r}): {len(self.fused)} of {parts} parts fused"]
        lines.append(f"  {'module':<{width}}  {'part':<10}  {'fused':<5}  detail")
        for e in self.entries:
            mark = "-" if e.part == "identity" else "yes" if e.fused else "NO"
            lines.append(f"  {e.name:<{width}}  {e.part:<10}  {mark:<5}  {e.detail}")
        return "\n".join(lines)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _try_fuse(root, path, make, part, backend, entries, absorbed: tuple[str, ...] = ()) -> None:
    """Replace root.<path> by make() (and the modules it absorbs by nn.Identity); with
    backend='triton' an unsupported part is an error."""
    try:
        new = make()
    except UnsupportedBlockError as err:
        if backend == "triton":
            raise UnsupportedBlockError(f"{path}: {err} (backend='triton' does not fall back)") from None
        entries.append(FusionEntry(path, part, False, f"kept as PyTorch: {err}"))
        return
    _replace(root, path, new)
    for other in absorbed:
        _replace(root, other, nn.Identity())
    entries.append(FusionEntry(path, part, True, new.describe(), absorbed))


def _fuse_blocks(model: nn.Module, names: list[str], backend: str, entries: list[FusionEntry]) -> None:
    for path in names:
        block = model.get_submodule(path)
        _try_fuse(model, path, lambda b=block: FusedInvertedResidual(b, backend), "block", backend, entries)


_FUSED = {"stem": FusedStem, "block": FusedInvertedResidual, "head": FusedHead, "classifier": FusedLinear}


def _fuse_layout(model: nn.Module, parts: list[Part], backend: str, entries: list[FusionEntry]) -> None:
    """A known model of another family (mnv2_fast.adapters.model_layout): each part fused where
    the kernels compute it; what a fused part absorbs (the BatchNorm and activation modules
    after its conv) becomes nn.Identity."""
    for p in parts:
        if p.part in _FUSED:
            _try_fuse(model, p.path, lambda p=p: _FUSED[p.part](p.source(), backend), p.part, backend, entries,
                      p.absorbed)
            fused = entries[-1].fused
            for path in p.absorbed:
                entries.append(FusionEntry(path, "identity", False, f"folded into {p.path}: nothing runs") if fused
                               else FusionEntry(path, "other", False, f"kept as PyTorch, with {p.path}"))
        elif p.part == "identity":
            entries.append(FusionEntry(p.path, "identity", False, p.note))
        else:
            entries.append(FusionEntry(p.path, "other", False, f"kept as PyTorch: {p.note}"))
    _fuse_stem_block(model, entries)


def _is_known_mobilenet_v2(model: nn.Module) -> bool:
    key = (type(model).__module__, type(model).__name__)
    return (
        key in _KNOWN_MOBILENET_V2
        and isinstance(getattr(model, "features", None), nn.Sequential)
        and isinstance(getattr(model, "classifier", None), nn.Sequential)
    )


def _fuse_mobilenet_v2(model: nn.Module, backend: str, entries: list[FusionEntry]) -> None:
    features = model.features
    n = len(features)
    _try_fuse(model, "features.0", lambda: FusedStem(features[0], backend), "stem", backend, entries)
    blocks = [f"features.{i}" for i in range(1, n - 1) if is_inverted_residual(features[i])]
    others = [f"features.{i}" for i in range(1, n - 1) if not is_inverted_residual(features[i])]
    _fuse_blocks(model, blocks, backend, entries)
    _fuse_stem_block(model, entries)
    for path in others:
        entries.append(FusionEntry(path, "other", False, f"kept as PyTorch: {type(model.get_submodule(path)).__name__}"))
    _try_fuse(model, f"features.{n - 1}", lambda: FusedHead(features[n - 1], backend), "head", backend, entries)
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for i, m in enumerate(model.classifier):
        if isinstance(m, nn.Dropout):
            entries.append(FusionEntry(f"classifier.{i}", "identity", False,
                                       "Dropout: nothing runs (the identity in eval mode)"))
    for i in linears:
        lin = model.classifier[i]
        _try_fuse(model, f"classifier.{i}", lambda lin=lin: FusedLinear(lin, backend), "classifier", backend, entries)


def _fuse_stem_block(model: nn.Module, entries: list[FusionEntry]) -> None:
    """The stem and the first block as one kernel (FusedStemBlock) where they fit, with nothing
    but absorbed modules between them: the stem's output, the network's largest activation, is
    never written.  The block becomes nn.Identity, absorbed by the stem's part as a fused part's
    BatchNorm is (its own absorbed modules with it, in forward order)."""
    fused = [i for i, e in enumerate(entries) if e.fused]
    if len(fused) < 2:
        return
    i, j = fused[:2]
    stem_e, block_e = entries[i], entries[j]
    if (stem_e.part, block_e.part) != ("stem", "block") or any(e.part != "identity" for e in entries[i + 1:j]):
        return
    stem, block = model.get_submodule(stem_e.name), model.get_submodule(block_e.name)
    if not FusedStemBlock.fits(stem, block):
        return
    new = FusedStemBlock(stem, block)
    _replace(model, stem_e.name, new)
    _replace(model, block_e.name, nn.Identity())
    entries[i] = replace(stem_e, detail=new.describe(), absorbed=(*stem_e.absorbed, block_e.name, *block_e.absorbed))
    entries[j] = FusionEntry(block_e.name, "identity", False, f"folded into {stem_e.name}, which runs the stem and this "
                             f"block ({block.computes()}) as one kernel: nothing runs here")
    for k in range(j + 1, len(entries)):  # the block's own absorbed modules
        if entries[k].name in block_e.absorbed:
            entries[k] = replace(entries[k], detail=f"folded into {stem_e.name}: nothing runs")


def _check_not_optimized(model: nn.Module) -> None:
    """optimize() takes the unfused model: fused modules in it mean it ran already."""
    if isinstance(model, CUDAGraphRunner):
        model = model.module
    fused = [f"{name or type(model).__name__} ({type(m).__name__})"
             for name, m in model.named_modules() if isinstance(m, FusedPart)]
    if fused:
        listed = ", ".join(fused[:3]) + (f" and {len(fused) - 3} more" if len(fused) > 3 else "")
        raise ValueError(f"this model is already optimized: it holds fused modules ({listed}). optimize() takes "
                         "the unfused model; use this one as it is, or optimize the original for another backend")


_BLOCK_WORDS = ("residual", "bottleneck", "block")  # class names that say "a block"


def _no_blocks_error(model: nn.Module) -> ValueError:
    """Name the block types the model has instead (e.g. MobileNetV3's InvertedResidual)."""
    kinds = Counter(f"{type(m).__module__}.{type(m).__name__}" for _, m in model.named_modules()
                    if any(w in type(m).__name__.lower() for w in _BLOCK_WORDS))
    name = type(model).__name__
    if not kinds:
        return ValueError(f"{name} contains no InvertedResidual blocks: nothing to fuse")
    found = ", ".join(f"{n} x {kind}" for kind, n in kinds.most_common())
    return ValueError(f"{name} contains no InvertedResidual blocks of the family the kernels compute "
                      f"(torchvision's MobileNetV2/V3 and MNASNet blocks, timm's inverted residual, "
                      f"depthwise-separable and UIB blocks); it has {found}: those are not supported yet")


def optimize(model: nn.Module, *, backend: str = "auto", inplace: bool = False, cuda_graph: bool = False) -> nn.Module:
    """Return ``model`` with its MobileNetV2 (and inverted-residual family) parts running on
    fused kernels.

    model:    torchvision's ``mobilenet_v2`` (any width, any number of classes, any input
              size), ``mnv2_fast.mobilenet_v2``; torchvision's ``mnasnet*`` and timm's
              ``mobilenetv2_*``, ``efficientnet_lite*``, ``mnasnet_*``, ``mobilenetv4_conv_*``
              (stem, blocks, head and classifier where the kernels compute them); or any
              module containing blocks of the family (mnv2_fast.adapters: those are replaced,
              everything else is kept).  Blocks the kernels do not compute (squeeze-excite,
              other activations) are kept as PyTorch with the reason in the report, or are an
              error with backend="triton".  Must be in eval mode.
    backend:  "auto" (Triton kernels for CUDA inputs, folded PyTorch otherwise), "triton"
              (always the kernels; an unsupported part is an error) or "torch".
    inplace:  modify ``model`` itself instead of a deep copy.
    cuda_graph: wrap the result in a CUDAGraphRunner (fixed input shape, lowest latency;
              needs CUDA).

    The result follows ``.to(device, dtype)`` and carries ``.fusion_report``.  It is for
    inference only: in training mode (after ``.train()``) or with autograd its fused parts
    raise.  Load weights into ``model`` before optimizing it.  An already optimized model is
    an error.
    """
    check_backend(backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if cuda_graph and not torch.cuda.is_available():
        raise ValueError("cuda_graph=True needs CUDA (a CUDA graph replays GPU work), and no CUDA device is available")
    _check_not_optimized(model)
    check_eval(model)
    target = model if inplace else copy.deepcopy(model)
    entries: list[FusionEntry] = []
    layout = None if _is_known_mobilenet_v2(target) else model_layout(target)
    if layout is None and _is_known_mobilenet_v2(target):
        _fuse_mobilenet_v2(target, backend, entries)
    elif layout is not None:
        _fuse_layout(target, layout, backend, entries)
    else:
        names = []
        for name, m in target.named_modules():
            if name and is_inverted_residual(m) and not any(name.startswith(p + ".") for p in names):
                names.append(name)
        if not names:
            raise _no_blocks_error(model)
        _fuse_blocks(target, names, backend, entries)
        entries.append(FusionEntry("(rest)", "other", False,
                                   f"kept as PyTorch: {type(model).__name__} is not a model whose layout "
                                   "mnv2_fast knows, so only its blocks are replaced"))
    report = FusionReport(backend, tuple(entries))
    target.fusion_report = report
    if cuda_graph:
        target = CUDAGraphRunner(target)
    return target


def fusion_report(model: nn.Module) -> FusionReport:
    """The report of a model returned by ``optimize`` (print it for a table), as the model is now:
    each fused part says what runs with its weights where they are (a kernel on CUDA, folded
    PyTorch elsewhere with backend="auto")."""
    report = getattr(model, "fusion_report", None)
    if not isinstance(report, FusionReport):
        raise ValueError("this model was not produced by mnv2_fast.optimize: it has no fusion report")
    root = model.module if isinstance(model, CUDAGraphRunner) else model
    entries = []
    for e in report.entries:
        part = root.get_submodule(e.name) if e.fused else None
        entries.append(replace(e, detail=part.describe(now=True)) if isinstance(part, FusedPart) else e)
    return FusionReport(report.backend, tuple(entries))
