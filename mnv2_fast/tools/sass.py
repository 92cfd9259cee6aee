"""Read `cuobjdump --dump-sass` text and count what a program executes on the GPU.

The counts feed the performance model (`perf_model`); they are static, taken from the
compiled code with no GPU:

* instructions, parsed into address, guard predicate, opcode with its modifiers, operands;
* loops, found as backward branches (a BRA to a lower address), with their nesting;
* per program, each instruction weighted by the trip counts of the loops around it:
  - warp instructions issued (all warps of the program summed),
  - 128-byte L1/shared-memory wavefronts of loads and stores, plus the tensor-core
    operands that HGMMA reads from shared memory,
  - tensor-core multiply-adds (HGMMA per warpgroup, HMMA per warp),
  - shuffles, and instruction counts per category (integer/index math, FP32, ...).

What the counts assume (a model, not a simulation):
* every instruction of the main body runs once per trip of its loops: both sides of a
  forward branch are charged, and a guard predicate does not skip the issue slot;
* code after the last EXIT (out-of-line slow paths such as the IEEE division fallback)
  is cold and weighs 0; `@!PT` instructions (never executed, scheduling filler) issue
  but move no data;
* a warp-wide access is coalesced: 32 lanes x the access width, in 128-byte wavefronts
  (at least one); bank conflicts and uncoalesced global accesses are not modelled.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

WAVEFRONT_BYTES = 128
WARP = 32
WARPGROUP = 4  # warps that issue one HGMMA together

_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+([^;]*?)\s*;")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_PREDICATE = re.compile(r"^@(!?)(U?P(?:T|\d+))\s+")
_HEX = re.compile(r"0x([0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction.  `opcode` is the base name (LDG), `modifiers` the dotted
    suffixes (E, 128); `predicate` the guard without '@' ('P0', '!P0', '!PT') or None."""

    address: int
    predicate: str | None
    opcode: str
    modifiers: tuple[str, ...]
    operands: tuple[str, ...]

    @property
    def mnemonic(self) -> str:
        return ".".join((self.opcode,) + self.modifiers)

    @property
    def never(self) -> bool:
        """Guarded by the constant-false predicate: issues, does nothing."""
        return self.predicate == "!PT"

    @property
    def branch_target(self) -> int | None:
        """Target address of a direct branch (BRA), else None."""
        if self.opcode != "BRA" or not self.operands:
            return None
        m = _HEX.search(self.operands[-1].strip())
        return int(m.group(1), 16) if m else None


@dataclass(frozen=True)
class Loop:
    """A loop: the body runs from `start` (the branch target) to `end` (the backward
    branch), both addresses inclusive.  depth 0 = outermost; parent = index in the list
    returned by `find_loops`, or None."""

    start: int
    end: int
    depth: int
    parent: int | None
    instructions: int  # static instructions in [start, end], nested loops included

    def contains(self, address: int) -> bool:
        return self.start <= address <= self.end


@dataclass
class Function:
    name: str
    instructions: list[Instruction]

    @property
    def main_end(self) -> int:
        """Index one past the last EXIT: what follows is cold code and padding.  Unless the
        code right after it ends in an unconditional branch back before it: a loop the compiler
        rotated to leave by that EXIT closes there, and that code is the loop's."""
        ins = self.instructions
        for i in range(len(ins) - 1, -1, -1):
            if ins[i].opcode == "EXIT":
                for k in range(i + 1, len(ins)):
                    if ins[k].opcode in ("EXIT", "RET", "CALL") or (ins[k].opcode == "BRA" and ins[k].predicate):
                        break
                    if ins[k].opcode == "BRA":
                        target = ins[k].branch_target
                        return k + 1 if target is not None and target < ins[i].address else i + 1
                return i + 1
        return len(ins)

    @property
    def main(self) -> list[Instruction]:
        return self.instructions[: self.main_end]


def _split_operands(text: str) -> tuple[str, ...]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return tuple(out)


def parse_instruction(address: int, text: str) -> Instruction:
    predicate = None
    m = _PREDICATE.match(text)
    if m:
        predicate = m.group(1) + m.group(2)
        text = text[m.end():]
    head, _, rest = text.partition(" ")
    parts = head.split(".")
    return Instruction(address, predicate, parts[0], tuple(parts[1:]), _split_operands(rest.strip()))


def parse(text: str) -> list[Function]:
    """All functions of a `cuobjdump --dump-sass` listing, instructions in address order."""
    functions: list[Function] = []
    for line in text.splitlines():
        f = _FUNCTION.match(line)
        if f:
            functions.append(Function(f.group(1), []))
            continue
        m = _LINE.match(line)
        if m:
            if not functions:
                functions.append(Function("", []))
            functions[-1].instructions.append(parse_instruction(int(m.group(1), 16), m.group(2)))
    if not functions or not any(fn.instructions for fn in functions):
        raise ValueError("no SASS instructions found (expected `cuobjdump --dump-sass` output)")
    return functions


def kernel(text: str, name: str | None = None) -> Function:
    """The one function of a listing (a Triton cubin holds one kernel), or the one named."""
    fns = [f for f in parse(text) if f.instructions]
    if name is not None:
        fns = [f for f in fns if f.name == name]
    if len(fns) != 1:
        raise ValueError(f"expected one function{f' named {name}' if name else ''}, found {[f.name for f in fns]}")
    return fns[0]


def find_loops(fn: Function) -> list[Loop]:
    """Loops of the main body as backward branches, ordered by (depth, start address).

    Several backward branches to one target (a `continue`) make one loop reaching the
    last of them.  Loops must nest properly; overlapping ranges mean control flow this
    model cannot weight, and raise."""
    body = fn.main
    ends: dict[int, int] = {}
    for ins in body:
        t = ins.branch_target
        if t is not None and t < ins.address and not ins.never:
            ends[t] = max(ends.get(t, t), ins.address)
    spans = sorted(ends.items(), key=lambda se: (se[0], -se[1]))
    for i, (s1, e1) in enumerate(spans):
        for s2, e2 in spans[i + 1:]:
            if s2 <= e1 < e2:
                raise ValueError(f"loops {s1:#x}-{e1:#x} and {s2:#x}-{e2:#x} overlap without nesting")
    addresses = [ins.address for ins in body]
    raw = []
    for s, e in spans:
        parents = [j for j, (ps, pe) in enumerate(spans) if (ps, pe) != (s, e) and ps <= s and e <= pe]
        # The innermost enclosing loop is the one that starts last.
        parent = max(parents, key=lambda j: spans[j][0]) if parents else None
        count = sum(1 for a in addresses if s <= a <= e)
        raw.append((len(parents), s, e, parent, count))
    order = sorted(range(len(raw)), key=lambda i: (raw[i][0], raw[i][1]))
    new_index = {old: new for new, old in enumerate(order)}
    return [Loop(raw[i][1], raw[i][2], raw[i][0], None if raw[i][3] is None else new_index[raw[i][3]], raw[i][4])
            for i in order]


def weights(fn: Function, loops: list[Loop], trips: list[float]) -> list[float]:
    """Executions of each main-body instruction per warp: the product of the trips of the
    loops around it.  trips[i] = iterations of loops[i] each time it is entered (for an
    outermost loop: per program; a mean over programs may be fractional)."""
    if len(trips) != len(loops):
        found = ", ".join(f"{lp.start:#x}-{lp.end:#x} (depth {lp.depth})" for lp in loops) or "none"
        raise ValueError(f"{len(trips)} trip counts given for {len(loops)} loops found in the SASS: {found}")
    if any(t < 0 for t in trips):
        raise ValueError(f"trip counts must be >= 0, got {trips}")
    out = []
    for ins in fn.main:
        w = 1.0
        for lp, t in zip(loops, trips):
            if lp.contains(ins.address):
                w *= t
        out.append(w)
    return out


# ---------------------------------------------------------------- data movement and MMA

_MEMORY = {"LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST", "LDGSTS", "ATOM", "ATOMS", "ATOMG", "RED", "REDG"}
_WIDTH_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16}
_MATRIX_COUNT = {"1": 1, "2": 2, "4": 4}
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "884": (8, 8, 4), "1684": (16, 8, 4)}
_GMMA_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def access_bytes(ins: Instruction) -> int:
    """Bytes one lane moves in a load/store (32-bit unless a width modifier says otherwise)."""
    for m in ins.modifiers:
        if m in _WIDTH_BYTES:
            return _WIDTH_BYTES[m]
    return 4


def memory_space(ins: Instruction) -> str | None:
    """'global', 'shared', 'local' or None for instructions that move no L1/shared data."""
    op = ins.opcode
    if op in ("LDG", "STG", "LDGSTS", "ATOM", "ATOMG", "RED", "REDG", "LD", "ST"):
        return "global"
    if op in ("LDS", "STS", "LDSM", "STSM", "ATOMS"):
        return "shared"
    if op in ("LDL", "STL"):
        return "local"
    return None


def mma_shape(ins: Instruction) -> tuple[int, int, int] | None:
    """(M, N, K) of a tensor-core instruction: HGMMA/QGMMA per warpgroup, HMMA per warp."""
    if ins.opcode in ("HGMMA", "QGMMA", "IGMMA"):
        for m in ins.modifiers:
            g = _GMMA_SHAPE.match(m)
            if g:
                return int(g.group(1)), int(g.group(2)), int(g.group(3))
        raise ValueError(f"cannot read the shape of {ins.mnemonic}")
    if ins.opcode in ("HMMA", "IMMA"):
        for m in ins.modifiers:
            if m in _HMMA_SHAPES:
                return _HMMA_SHAPES[m]
        raise ValueError(f"cannot read the shape of {ins.mnemonic}")
    return None


def gmma_smem_bytes(ins: Instruction) -> int:
    """Bytes of shared-memory operands one HGMMA reads.  B always comes from shared memory.
    `HGMMA D, gdesc[UR], C` reads A there too (the uniform register pair holds both
    descriptors); `HGMMA D, Ra, gdesc[UR], C` takes A from registers.  A K-slice is 32
    bytes per row for every dense input type (16 x fp16/bf16, 8 x tf32, 32 x fp8)."""
    m, n, _ = mma_shape(ins)
    if len(ins.operands) < 3:
        raise ValueError(f"unexpected HGMMA operands: {ins.operands}")
    a_in_shared = ins.operands[1].startswith("gdesc")
    return (m * 32 if a_in_shared else 0) + n * 32


def wavefronts(ins: Instruction) -> float:
    """128-byte L1/shared wavefronts of one execution by a warp (for HGMMA: by its warpgroup)."""
    if ins.never:
        return 0.0
    if ins.opcode in ("LDSM", "STSM"):
        # Each 8x8 matrix of 16-bit values is 128 bytes: .4 moves four.
        return float(next((_MATRIX_COUNT[m] for m in ins.modifiers if m in _MATRIX_COUNT), 1))
    if ins.opcode in _MEMORY:
        return float(math.ceil(WARP * access_bytes(ins) / WAVEFRONT_BYTES))
    if ins.opcode in ("HGMMA", "QGMMA", "IGMMA"):
        return gmma_smem_bytes(ins) / WAVEFRONT_BYTES
    return 0.0


def is_warpgroup_op(ins: Instruction) -> bool:
    return ins.opcode in ("HGMMA", "QGMMA", "IGMMA")


# ---------------------------------------------------------------- categories

_CATEGORY = {
    "mma": ("HGMMA", "HMMA", "QGMMA", "IGMMA", "IMMA", "DMMA", "BMMA"),
    "fp32": ("FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD", "FRND"),
    "fp16": ("HADD2", "HFMA2", "HMUL2", "HMNMX2", "HSETP2", "HSET2"),
    "special": ("MUFU",),
    "convert": ("F2F", "F2FP", "F2I", "I2F", "I2FP", "I2I", "F2IP"),
    "int": ("IMAD", "IADD3", "IADD", "IMUL", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "LEA", "SEL", "IABS",
            "IMNMX", "SGXT", "PRMT", "BMSK", "POPC", "FLO", "BREV", "VIADD", "VIADDMNMX", "VIMNMX", "IDP", "PLOP3"),
    "move": ("MOV", "CS2R", "S2R", "LDC", "P2R", "R2P", "R2UR", "S2UR"),
    "shuffle": ("SHFL",),
    "memory": tuple(_MEMORY | {"LDSM", "STSM"}),
    "sync": ("BAR", "DEPBAR", "LDGDEPBAR", "WARPGROUP", "MEMBAR", "FENCE", "WARPSYNC", "BSSY", "BSYNC", "SYNCS",
             "ERRBAR", "CCTL", "ARRIVES", "ELECT", "VOTE", "VOTEU", "NANOSLEEP"),
    "control": ("BRA", "BRX", "JMP", "JMX", "EXIT", "CALL", "RET", "NOP", "YIELD", "KILL", "BPT"),
}
_CATEGORY_OF = {op: cat for cat, ops in _CATEGORY.items() for op in ops}


def category(ins: Instruction) -> str:
    """Coarse class of an instruction, for reading where the issue slots go."""
    if ins.opcode == "IMAD" and ins.modifiers[:1] == ("MOV",):
        return "move"  # IMAD.MOV is how ptxas spells a register move on the FMA pipe
    if ins.opcode in _CATEGORY_OF:
        return _CATEGORY_OF[ins.opcode]
    if ins.opcode.startswith("U"):
        return "uniform"  # uniform datapath (ULDC, UIADD3, ...): one per warp, still an issue slot
    return "other"


# ---------------------------------------------------------------- per-program counts

@dataclass
class Counts:
    """Loop-weighted counts for one program (all its warps), see `count`."""

    num_warps: int
    warp_instructions: float
    l1_wavefronts: float
    wavefronts_by_space: dict  # global / shared / local / mma_operands
    mma_macs: float
    mma_instructions: dict  # mnemonic -> executions per program (warpgroup ops per warpgroup)
    shuffles: float
    by_category: dict  # category -> warp instructions per program
    by_opcode: dict  # mnemonic -> warp instructions per program
    loops: list[Loop] = field(default_factory=list)
    trips: list[float] = field(default_factory=list)
    never_executed: float = 0.0  # `@!PT` warp instructions per program: issued, no effect
    static_instructions: int = 0  # main body, each once
    cold_instructions: int = 0  # after the last EXIT (padding excluded)

    def as_dict(self) -> dict:
        return {
            "num_warps": self.num_warps,
            "warp_instructions_per_program": self.warp_instructions,
            "l1_wavefronts_per_program": self.l1_wavefronts,
            "wavefronts_by_space": dict(self.wavefronts_by_space),
            "mma_macs_per_program": self.mma_macs,
            "mma_instructions": dict(self.mma_instructions),
            "shuffles_per_program": self.shuffles,
            "never_executed_per_program": self.never_executed,
            "by_category": dict(self.by_category),
            "static_instructions": self.static_instructions,
            "cold_instructions": self.cold_instructions,
            "loops": [{"sass_start": f"{lp.start:#x}", "sass_end": f"{lp.end:#x}", "depth": lp.depth,
                       "instructions": lp.instructions, "trips": t} for lp, t in zip(self.loops, self.trips)],
        }


def count(fn: Function, trips: list[float], num_warps: int) -> Counts:
    """Per-program counts of `fn` launched with `num_warps` warps, its loops (see
    `find_loops`, ordered by depth then address) running trips[i] times per entry."""
    if num_warps < 1:
        raise ValueError(f"num_warps must be >= 1, got {num_warps}")
    loops = find_loops(fn)
    w = weights(fn, loops, list(trips))
    groups = num_warps / WARPGROUP
    instr = macs = shfl = never = 0.0
    spaces: Counter = Counter()
    cats: Counter = Counter()
    ops: Counter = Counter()
    mma: Counter = Counter()
    for ins, wt in zip(fn.main, w):
        if wt == 0:
            continue
        instr += wt
        cats[category(ins)] += wt * num_warps
        ops[ins.mnemonic] += wt * num_warps
        if ins.opcode == "SHFL":
            shfl += wt * num_warps
        if ins.never:
            never += wt * num_warps
        wf = wavefronts(ins)
        if is_warpgroup_op(ins):
            # One HGMMA per warpgroup: every warp issues it, the tensor core runs it once.
            if not ins.never:
                m, n, k = mma_shape(ins)
                macs += wt * groups * m * n * k
                mma[ins.mnemonic] += wt * groups
                spaces["mma_operands"] += wt * groups * wf
        else:
            shape = mma_shape(ins)
            if shape is not None and not ins.never:
                macs += wt * num_warps * shape[0] * shape[1] * shape[2]
                mma[ins.mnemonic] += wt * num_warps
            if wf:
                spaces[memory_space(ins)] += wt * num_warps * wf
    l1 = sum(spaces.values())
    tail = fn.instructions[fn.main_end:]
    cold = sum(1 for ins in tail if ins.opcode != "NOP" and ins.branch_target != ins.address)
    return Counts(num_warps=num_warps, warp_instructions=instr * num_warps, l1_wavefronts=l1,
                  wavefronts_by_space=dict(spaces), mma_macs=macs, mma_instructions=dict(mma), shuffles=shfl,
                  by_category=dict(cats), by_opcode=dict(ops), loops=loops, trips=list(trips),
                  never_executed=never, static_instructions=len(fn.main), cold_instructions=cold)
