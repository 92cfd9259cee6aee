"""Fold an inference-mode BatchNorm into the convolution in front of it.

    BN(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta
                = (s W) x + (s (b - mean) + beta),      s = gamma / sqrt(var + eps)

computed in float64 and cast once at the end: trained nets have channels with tiny
running variances (large s), where folding in half precision would lose digits.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_bn", "check_eval"]


def check_eval(module: nn.Module, what: str = "model") -> None:
    """Refuse a module in training mode, or one holding a BatchNorm or Dropout in training
    mode: BatchNorm would normalise with batch statistics, dropout would drop."""
    for name, m in module.named_modules():
        stateful = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
        if m.training and (not name or stateful):
            where = f"{what}.{name}" if name else what
            raise ValueError(
                f"{where} ({type(m).__name__}) is in training mode; fused inference needs eval mode: call .eval() first"
            )


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) of the single convolution equal to ``bn(conv(x))`` in eval mode.

    Works for any Conv2d whose output channels match the BatchNorm (1x1, depthwise, stem).
    The result has the conv weight's shape and ``dtype`` (default: the conv weight's dtype).
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("BatchNorm is in training mode (it would use batch statistics); call .eval() before folding")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm has no running statistics (track_running_stats=False); it cannot be folded")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels but BatchNorm has {bn.num_features} features")
    out_dtype = dtype or conv.weight.dtype
    f64 = torch.float64
    w = conv.weight.detach().to(f64)
    b = conv.bias.detach().to(f64) if conv.bias is not None else torch.zeros(conv.out_channels, dtype=f64, device=w.device)
    mean = bn.running_mean.detach().to(f64)
    var = bn.running_var.detach().to(f64)
    gamma = bn.weight.detach().to(f64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(f64) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    b = (b - mean) * scale + beta
    return w.to(out_dtype), b.to(out_dtype)
