"""How the kernels run in this process: through Triton's CPU interpreter, or compiled.

Triton fixes the choice for each kernel when it is decorated: its own library kernels when
triton is imported (torchvision imports it; torch does not), ours when ``mnv2_fast.kernels``
is; so the switch (TRITON_INTERPRET) is set before both, and these refuse once either was
imported the other way.  Neither imports the kernels.
"""

from __future__ import annotations

import os
import sys

_KERNELS = "mnv2_fast.kernels"


def _imported_interpreting() -> bool | None:
    """Whether the kernels were imported for the interpreter (None: not imported yet)."""
    kernels = sys.modules.get(_KERNELS)
    return None if kernels is None else kernels.interpreting()


def _triton_interpreting() -> bool | None:
    """Whether triton was imported for its interpreter (None: not imported yet)."""
    if "triton" not in sys.modules:
        return None
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


def use_interpreter() -> None:
    """Run the kernels through Triton's interpreter (CPU tensors; no GPU needed)."""
    if _imported_interpreting() is False:
        raise RuntimeError("the kernels were imported compiled; Triton's interpreter must be switched on "
                           "(TRITON_INTERPRET=1) before anything imports mnv2_fast.kernels")
    if _triton_interpreting() is False:
        raise RuntimeError("triton was imported before Triton's interpreter was switched on (torchvision imports "
                           "it): set TRITON_INTERPRET=1 before importing torch/torchvision/triton")
    os.environ["TRITON_INTERPRET"] = "1"


def use_compiler() -> None:
    """Compile the kernels (what the static check needs: it compiles for a GPU target)."""
    if _imported_interpreting():
        raise RuntimeError("the kernels were imported for Triton's interpreter; the static check needs "
                           "TRITON_INTERPRET unset before anything imports mnv2_fast.kernels")
    os.environ.pop("TRITON_INTERPRET", None)
