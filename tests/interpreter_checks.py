"""Every load and store of a launch under Triton's interpreter, checked: a CPU stand-in for
compute-sanitizer's memcheck, and a race check of the block kernel's per-program scratch.

* Bounds: each address a program loads or stores (mask applied) lies inside one of the
  launch's tensors (the view itself, not its buffer), and inside the program's own part of a
  per-program scratch.  An unmasked load past a tensor's end may read garbage that never
  reaches the output (a padded row, a padded pixel pair): invisible to the numbers, an
  illegal address on a GPU.
* Order: the interpreter runs a program's warps in lockstep, so a missing barrier changes no
  result here.  The check follows the barriers (tl.debug_barrier) instead: a program may read
  a scratch buffer only after a barrier that follows its last write there, and may overwrite
  it only after a barrier that follows its last read or write (what lets a GPU's warps run
  apart).

Used by the kernel tests; hooks into Triton's interpreter (its builder's load, store,
barrier and program-index calls), so it runs only where the interpreter does.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, last byte + 1) of t's elements."""
    low = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if s < 0)
    high = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if s > 0)
    return t.data_ptr() + low * t.element_size(), t.data_ptr() + (high + 1) * t.element_size()


class AccessCheck:
    """The problems found in the launches made while `checked_launches` was active."""

    def __init__(self):
        self.problems: list[str] = []
        self.launches = 0
        self.accesses = 0
        self.barriers = 0

    def report(self) -> str:
        shown = self.problems[:8]
        more = len(self.problems) - len(shown)
        return "\n".join(shown) + (f"\n... and {more} more" if more else "")


class _Launch:
    def __init__(self, check: AccessCheck, tensors, scratch: torch.Tensor | None, per_program: int):
        self.check = check
        self.spans = [_span(t) for t in tensors if t is not None and t.numel()]
        self.scratch = _span(scratch) if scratch is not None else None
        self.buf_bytes = per_program * scratch.element_size() // 2 if scratch is not None else 0
        self.pid = None
        self.epoch = 0
        self.last = {}  # (buffer, "r" or "w") -> epoch of the last access
        self.written = {}  # buffer -> (epoch, addresses stored in it during that epoch)

    def new_program(self, pid):
        self.pid, self.epoch, self.last, self.written = pid, 0, {}, {}

    def barrier(self):
        self.epoch += 1
        self.check.barriers += 1

    def access(self, kind: str, addrs: np.ndarray, size: int):
        if addrs.size == 0:
            return
        self.check.accesses += 1
        inside = np.zeros(addrs.shape, dtype=bool)
        for lo, hi in self.spans:
            inside |= (addrs >= lo) & (addrs + size <= hi)
        if not inside.all():
            bad = addrs[~inside]
            self.check.problems.append(
                f"program {self.pid}: {kind} of {bad.size} element(s) outside every tensor of the launch, e.g. at "
                f"{self._where(int(bad[0]))}")
        if self.scratch is None:
            return
        lo, hi = self.scratch
        in_scratch = addrs[(addrs >= lo) & (addrs < hi)]
        if in_scratch.size == 0:
            return
        buffers = np.unique((in_scratch - lo) // self.buf_bytes)
        own = 2 * self.pid[0]
        for b in buffers.tolist():
            if b not in (own, own + 1):
                self.check.problems.append(f"program {self.pid}: {kind} in scratch buffer {b}, another program's "
                                           f"(its own: {own}, {own + 1})")
                continue
            mine = b - own
            if kind == "store" and self.last.get((mine, "r")) == self.epoch:
                self.check.problems.append(f"program {self.pid}: overwrites scratch buffer {mine} with no barrier "
                                           "since it last read it (another warp may still be reading)")
            if kind == "store":
                # Several stores may fill one buffer between barriers (the vector stores' twin
                # stores a chunk element by element); one address written twice may not.
                mine_addrs = np.unique(in_scratch[(in_scratch - lo) // self.buf_bytes == b])
                epoch, seen = self.written.get(mine, (None, None))
                if epoch == self.epoch:
                    if np.intersect1d(seen, mine_addrs).size:
                        self.check.problems.append(f"program {self.pid}: writes an address of scratch buffer {mine} "
                                                   "twice with no barrier between (two warps' stores race)")
                    mine_addrs = np.union1d(seen, mine_addrs)
                self.written[mine] = (self.epoch, mine_addrs)
            if kind == "load" and self.last.get((mine, "w")) == self.epoch:
                self.check.problems.append(f"program {self.pid}: reads scratch buffer {mine} with no barrier since "
                                           "it wrote it (another warp's part may not be there yet)")
            self.last[(mine, "r" if kind == "load" else "w")] = self.epoch

    def _where(self, addr: int) -> str:
        nearest = min(self.spans, key=lambda s: min(abs(addr - s[0]), abs(addr - s[1])))
        offset = addr - nearest[0] if addr < nearest[0] else addr - nearest[1]
        return f"{offset:+d} bytes from the tensor spanning [{nearest[0]:#x}, {nearest[1]:#x})"


@contextlib.contextmanager
def checked_launches(module, scratch_arg: int | None = None, per_program=None):
    """Check every launch made through `module.launch` (the kernel module's name for
    kernels._common.launch) while active.  scratch_arg: the position, among the arguments
    after the input, of a per-program scratch; per_program(kwargs): its elements per program
    (two buffers).  Yields the AccessCheck."""
    from triton.runtime.interpreter import interpreter_builder as builder

    check = AccessCheck()
    real_launch = module.launch

    def launch(kernel, grid, x, *args, **kwargs):
        tensors = [x, *[a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]]
        scratch = args[scratch_arg] if scratch_arg is not None else None
        state = _Launch(check, tensors, scratch, per_program(kwargs) if scratch is not None else 0)
        real = {name: getattr(builder, name) for name in
                ("create_masked_load", "create_masked_store", "create_barrier", "set_grid_idx")}

        def size(ptrs):
            return ptrs.get_element_ty().primitive_bitwidth // 8

        def active(ptrs, mask):
            return ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]

        def load(ptrs, mask, *rest):
            state.access("load", active(ptrs, mask), size(ptrs))
            return real["create_masked_load"](ptrs, mask, *rest)

        def store(ptrs, value, mask, *rest):
            state.access("store", active(ptrs, mask), size(ptrs))
            return real["create_masked_store"](ptrs, value, mask, *rest)

        def barrier():
            state.barrier()
            return real["create_barrier"]()

        def set_grid_idx(x_, y, z):
            state.new_program((x_, y, z))
            return real["set_grid_idx"](x_, y, z)

        hooks = dict(create_masked_load=load, create_masked_store=store, create_barrier=barrier,
                     set_grid_idx=set_grid_idx)
        before = {name: builder.__dict__[name] for name in hooks if name in builder.__dict__}
        builder.__dict__.update(hooks)
        try:
            real_launch(kernel, grid, x, *args, **kwargs)
        finally:
            for name in hooks:
                builder.__dict__.pop(name)
            builder.__dict__.update(before)
        check.launches += 1

    module.launch = launch
    try:
        yield check
    finally:
        module.launch = real_launch


# The block kernel's scratch among the launch's arguments after the input: w_start, b_start,
# w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, out, scratch (kernels/block.py).
SCRATCH_ARG = 9


def block_scratch(kwargs) -> int:
    """The block kernel's scratch per program: two staged chunks of [P_IN, STAGE_HID or BLOCK_HID]."""
    return 2 * kwargs["P_IN"] * (kwargs.get("STAGE_HID") or kwargs["BLOCK_HID"])
