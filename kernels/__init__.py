"""Triton kernels for MobileNetV2 inference (installed as ``mnv2_fast.kernels``).

Each kernel module holds a private ``@triton.jit`` kernel and a plain launcher that checks
shapes, dtypes, devices and strides, builds the grid and launches:

    block.py               one inverted-residual block (expand, depthwise, project) per kernel; the stem
                           and a depthwise-separable first block in one (stem_block)
    stem.py, head.py       the stem conv; the head conv + global pool, and the classifier
    reference.py           each launcher's computation in PyTorch ops (same arguments)
    records.py             BlockShape (one per block) and the launch-config records
    choice.py              which config a launch gets: tuned table, heuristic, interpreter tiles
    tuned.py               the tuned tables: shipped ones (tuned/) and the user's
    aot.py                 compile a variant for sm_90 without a GPU, read its resources

This layer imports torch and triton only, never ``mnv2_fast``.
"""

from . import reference  # noqa: F401 (the PyTorch twin of each launcher)
from ._common import interpreting
from .choice import choose_block_config, default_config
from .head import head_pool, linear
from .block import inverted_residual, stem_block
from .records import BlockConfig, BlockShape, HeadConfig, LinearConfig, StemConfig, output_size
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
    "interpreting",
    "inverted_residual",
    "linear",
    "output_size",
    "stem_block",
    "stem_conv",
]
