"""Ahead-of-time compilation for a GPU target, on a machine with no GPU.

Triton compiles a kernel variant to a cubin for e.g. Hopper (sm_90) anywhere; the
cuobjdump that ships inside Triton's package then reports its registers, shared memory,
local memory and stack frame (spills).  This finds resource failures before a GPU run.
Needs the real JIT (TRITON_INTERPRET unset).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton

# Hopper: 227 KiB of shared memory per block (opt-in), 255 registers per thread.
HOPPER_SMEM_LIMIT = 232448
MAX_REGISTERS = 255
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Resources:
    registers: int
    shared: int  # bytes, as Triton launches it (dynamic shared memory)
    local: int  # bytes of local memory per thread
    stack: int  # bytes of stack frame per thread (register spills land here)
    sass_ops: dict  # opcode -> count, e.g. HGMMA, HMMA, FFMA, LDL, STL

    @property
    def spills(self) -> bool:
        # A stack frame alone is not a spill (the gather lowering keeps 8 B there);
        # local stores and loads in the SASS are.
        return self.local > 0 or self.sass_ops.get("STL", 0) > 0 or self.sass_ops.get("LDL", 0) > 0


def _tool(name: str) -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found in Triton's package ({path})")
    return path


def compile_variant(fn, constexprs: dict, dtype: torch.dtype, *, arch: int = 90):
    """Compile one variant of `fn` (a @triton.jit kernel) for sm_<arch>.

    constexprs: name -> value, plus num_warps / num_stages.  Pointer arguments (names
    ending in _ptr) are typed with `dtype` and assumed 16-byte aligned, as at run time;
    the other arguments are i32 scalars (sizes).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not hasattr(fn, "fn"):
        raise RuntimeError("kernels are interpreted (TRITON_INTERPRET=1); AOT compilation needs the real JIT")
    consts = dict(constexprs)
    options = {"num_warps": consts.pop("num_warps"), "num_stages": consts.pop("num_stages")}
    if "maxnreg" in consts:  # a register cap, when the config sets one
        options["maxnreg"] = consts.pop("maxnreg")
    params = list(inspect.signature(fn.fn).parameters)
    signature, attrs = {}, {}
    for i, p in enumerate(params):
        if p in consts:
            signature[p] = "constexpr"
        elif p.endswith("_ptr"):
            signature[p] = "*" + _TRITON_TYPES[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p] = "i32"
    src = ASTSource(fn=fn, signature=signature, constexprs={(params.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resources(compiled) -> Resources:
    """Registers, shared/local memory, stack frame and SASS opcode counts of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", f.name], capture_output=True, text=True,
                              check=True).stdout

    def field(name: str) -> int:
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    ops: dict[str, int] = {}
    for line in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
    return Resources(field("REG"), int(compiled.metadata.shared), field("LOCAL"), field("STACK"), ops)


def problems(res: Resources, smem_limit: int = HOPPER_SMEM_LIMIT) -> list[str]:
    """What makes a variant unfit to ship: too much shared memory, spills, too many registers."""
    out = []
    if res.shared > smem_limit:
        out.append(f"shared memory {res.shared} B > {smem_limit} B")
    if res.spills:
        out.append(f"spills ({res.sass_ops.get('STL', 0)} STL, {res.sass_ops.get('LDL', 0)} LDL, stack {res.stack} B)")
    if res.registers > MAX_REGISTERS:
        out.append(f"{res.registers} registers > {MAX_REGISTERS}")
    return out
