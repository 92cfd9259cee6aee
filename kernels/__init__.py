"""Triton kernels for MobileNetV2 inference (installed as ``mnv2_fast.kernels``).

Each module holds a private ``@triton.jit`` kernel and a plain launcher that checks
shapes, dtypes, devices and strides, builds the grid and launches.  This layer imports
torch and triton only, never ``mnv2_fast``.
"""

from .configs import BlockConfig, BlockShape, HeadConfig, LinearConfig, StemConfig, choose_block_config, default_config
from .head import head_pool, linear
from .inverted_residual import inverted_residual, output_size
from .stem import stem_conv

__all__ = [
    "BlockConfig",
    "BlockShape",
    "HeadConfig",
    "LinearConfig",
    "StemConfig",
    "choose_block_config",
    "default_config",
    "head_pool",
    "inverted_residual",
    "linear",
    "output_size",
    "stem_conv",
]
