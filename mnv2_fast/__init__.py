"""mnv2-fast: MobileNetV2 inference on fused Triton kernels, as a drop-in.

    import mnv2_fast
    fast = mnv2_fast.optimize(model.eval())      # torchvision or mnv2_fast.mobilenet_v2
    print(mnv2_fast.fusion_report(fast))
    mnv2_fast.export(model.eval(), example, "model.pt2")   # GPU: an AOTInductor package

The runtime is this package's top level: ``model`` (the unfused reference network),
``folding`` (BN into the convolutions), ``fused`` (the fused modules), ``ops`` (each fused
part as a registered op, ``torch.ops.mnv2_fast.*``), ``optimize`` (the whole network),
``graphs`` (CUDA graphs) and ``deploy`` (``export``: the AOTInductor package), on the
kernels of ``mnv2_fast.kernels``.
``mnv2_fast.tools`` serves the CLI, the benchmarks and the checks; the runtime never
imports it.

``import mnv2_fast`` does not import Triton; the kernels import it when a block is first
fused.  To run the kernels on CPU tensors through Triton's interpreter, set TRITON_INTERPRET=1
before importing torch/torchvision/triton (torchvision imports triton; so may other
packages): Triton fixes the choice for its own library kernels when it is imported, and a
late switch is refused with an error saying so.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys


def _register_checkout_kernels() -> None:
    """In a source checkout kernels/ sits beside this package; installs ship it as
    mnv2_fast/kernels.  Map the name for the checkout only, leaving installs alone."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "kernels")):
        return
    src = os.path.join(os.path.dirname(here), "kernels")
    if not os.path.isfile(os.path.join(src, "__init__.py")):
        return
    name = __name__ + ".kernels"

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(src, "__init__.py"), submodule_search_locations=[src]
            )

    for finder in sys.meta_path:  # an editable install maps the name itself
        try:
            if finder.find_spec(name, __path__) is not None:
                return
        except Exception:  # a foreign finder that cannot answer for this name
            continue
    sys.meta_path.append(_Finder())


_register_checkout_kernels()

# None of these import triton at import time: the kernels load on first use.
from .deploy import export  # noqa: E402
from .folding import check_eval, fold_bn  # noqa: E402
from .fused import FusedInvertedResidual, UnsupportedBlockError, fuse_block  # noqa: E402
from .graphs import CUDAGraphRunner  # noqa: E402
from .model import MobileNetV2, block_specs, mobilenet_v2  # noqa: E402
from .optimize import FusionReport, fusion_report, optimize  # noqa: E402  (the function shadows its module)

__version__ = "0.1.0"

__all__ = [
    "CUDAGraphRunner",
    "FusedInvertedResidual",
    "FusionReport",
    "MobileNetV2",
    "UnsupportedBlockError",
    "block_specs",
    "check_eval",
    "export",
    "fold_bn",
    "fuse_block",
    "fusion_report",
    "mobilenet_v2",
    "optimize",
]
