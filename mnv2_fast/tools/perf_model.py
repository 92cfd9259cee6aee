"""A performance model of compiled kernels, calibrated on measured H200 times (no GPU needed).

What it is
    Each launch is reduced to four floors, in ms, from its sm_90 SASS (see `sass`) and its
    grid, each the time one SM resource needs if it were the only limit:

    * issue: loop-weighted warp instructions x programs / (SMs x 4 schedulers x clock);
    * l1:    128-byte L1/shared wavefronts (global, shared and local loads and stores, plus
             the HGMMA operands read from shared memory) x programs / (SMs x 1 per clock x clock);
    * mma:   tensor-core multiply-adds / (SMs x 1024 per clock x clock);
    * hbm:   compulsory bytes (inputs, outputs and weights once) / HBM bandwidth.

    The time is  T = k * ||floors||_p * tail * (1 + c / w)  where
    * ||.||_p is a smooth maximum (p = inf: the largest floor; a finite p charges floors of
      similar size for overlapping imperfectly);
    * tail = ceil(waves) / waves, waves = programs / (SMs x programs per SM), times the ratio of
      the largest to the mean work per program for persistent grids;
    * w = resident warps per SM sub-partition (scheduler), from registers, shared memory and
      warps: with few warps to switch between, latency is not hidden.

    k and c (and p, from a small fixed set) are fitted by least squares in log space to the
    calibration set: 31 fused inverted-residual kernels of an earlier design, timed on one
    H200 (`../shared/perf-calibration`, beside the repository).

How well it fits (`python -m mnv2_fast.tools.perf_model --calibrate` prints the table)
    Fitted here: p = 4, k = 1.08, c = 1.12: rms log error 0.111, leave-one-out 0.121 (p, k
    and c refitted without each kernel), Spearman rho 0.97, worst error 32% (H17, whose
    spills go to L2, which the l1 floor does not see), n = 31.  The plain maximum (p = inf)
    fits with k = 1.07, c = 1.33: rms 0.126, leave-one-out 0.133, worst 28%.

What it is not
    A model with three fitted numbers, checked against kernels of a different design from the
    ones it will rank.  Its predictions guide which configs to spend GPU time on; only GPU
    measurements count as results.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import sass as S

# ---------------------------------------------------------------- the GPUs


@dataclass(frozen=True)
class GpuSpec:
    name: str
    sms: int
    clock_ghz: float  # sustained SM clock under load
    hbm_tb_per_s: float
    issue_per_clock: int = 4  # warp instructions per SM per clock (one per scheduler)
    wavefronts_per_clock: int = 1  # 128-byte L1/shared wavefronts per SM per clock
    mma_macs_per_clock: int = 1024  # fp16 tensor-core multiply-adds per SM per clock, as Triton's small tiles reach
    schedulers: int = 4
    registers_per_sm: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    warp_unit: int = 4  # ... and warps in groups of 4 (one per scheduler)
    max_registers: int = 255
    shared_per_sm: int = 233472  # 228 KiB
    shared_per_block_reserved: int = 1024  # the driver keeps 1 KiB per resident block
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32


# Both are GH100 with 132 SMs; they differ in HBM.  The clock is the one the calibration was
# fitted at (1.755 GHz): both SXM parts list the same 1.98 GHz maximum boost, so nothing
# public says an H100 SXM sustains a different clock under this load.  k absorbs the gap
# between the nominal and the real clock on the GPU that was measured.
GPUS = {
    "h200": GpuSpec("H200 SXM", sms=132, clock_ghz=1.755, hbm_tb_per_s=4.8),
    "h100": GpuSpec("H100 SXM", sms=132, clock_ghz=1.755, hbm_tb_per_s=3.35),
}


def gpu_spec(gpu: str | GpuSpec) -> GpuSpec:
    if isinstance(gpu, GpuSpec):
        return gpu
    try:
        return GPUS[gpu]
    except KeyError:
        raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(GPUS)}") from None


# ---------------------------------------------------------------- occupancy, waves


@dataclass(frozen=True)
class Occupancy:
    programs_per_sm: int
    limited_by: str  # registers / shared / warps / blocks
    warps_per_scheduler: float


def occupancy(registers: int, shared_bytes: int, num_warps: int, gpu: str | GpuSpec = "h200") -> Occupancy:
    """Programs (thread blocks) resident per SM, as the hardware allocates them."""
    g = gpu_spec(gpu)
    if not 1 <= registers <= g.max_registers:
        raise ValueError(f"registers per thread must be in 1..{g.max_registers}, got {registers}")
    if num_warps < 1:
        raise ValueError(f"num_warps must be >= 1, got {num_warps}")
    per_warp = math.ceil(registers * 32 / g.register_unit) * g.register_unit
    warps_by_regs = (g.registers_per_sm // (per_warp * g.warp_unit)) * g.warp_unit
    limits = {
        "registers": warps_by_regs // num_warps,
        "shared": g.shared_per_sm // (shared_bytes + g.shared_per_block_reserved),
        "warps": g.max_warps_per_sm // num_warps,
        "blocks": g.max_blocks_per_sm,
    }
    limited_by = min(limits, key=limits.get)
    n = limits[limited_by]
    if n < 1:
        raise ValueError(f"a program of {num_warps} warps, {registers} registers and {shared_bytes} B of shared "
                         f"memory does not fit an SM ({limited_by})")
    return Occupancy(n, limited_by, n * num_warps / g.schedulers)


def waves_and_tail(programs: int, programs_per_sm: int, gpu: str | GpuSpec = "h200",
                   imbalance: float = 1.0) -> tuple[float, float]:
    """(waves, tail): the last wave runs as long as a full one, so the grid costs ceil(waves)
    full waves; imbalance = max / mean work per program (persistent grids), else 1."""
    g = gpu_spec(gpu)
    waves = programs / (programs_per_sm * g.sms)
    return waves, math.ceil(waves) / waves * imbalance


# ---------------------------------------------------------------- features and prediction


@dataclass
class Features:
    """What the model needs of one launch; per-program counts are all warps summed."""

    programs: int
    num_warps: int
    registers: int
    shared_bytes: int
    warp_instructions_per_program: float
    l1_wavefronts_per_program: float
    mma_macs_per_program: float
    hbm_bytes: float
    imbalance: float = 1.0  # max / mean work per program
    counts: S.Counts | None = field(default=None, repr=False)


FLOORS = ("issue", "l1", "mma", "hbm")


def floors_ms(f: Features, gpu: str | GpuSpec = "h200") -> dict:
    g = gpu_spec(gpu)
    hz_ms = g.clock_ghz * 1e6  # clocks per ms
    return {
        "issue": f.warp_instructions_per_program * f.programs / (g.sms * g.issue_per_clock * hz_ms),
        "l1": f.l1_wavefronts_per_program * f.programs / (g.sms * g.wavefronts_per_clock * hz_ms),
        "mma": f.mma_macs_per_program * f.programs / (g.sms * g.mma_macs_per_clock * hz_ms),
        "hbm": f.hbm_bytes / (g.hbm_tb_per_s * 1e9),
    }


@dataclass(frozen=True)
class Params:
    k: float
    c: float
    p: float  # the norm that combines the floors; math.inf = their maximum


# Fitted to the calibration set by `fit` (tests/test_perf_model.py checks that a fresh fit
# still gives these); kept here so that predictions work where the set is absent.
CALIBRATED = Params(k=1.079, c=1.116, p=4.0)


def combine(floors: dict, p: float) -> float:
    v = [floors[name] for name in FLOORS]
    top = max(v)
    if math.isinf(p) or top == 0:
        return top
    return top * sum((x / top) ** p for x in v) ** (1 / p)


@dataclass
class Prediction:
    ms: float
    floors_ms: dict
    bound: str  # the largest floor
    occupancy: Occupancy
    waves: float
    tail: float

    def as_dict(self) -> dict:
        return {"predicted_ms": self.ms, "floors_ms": dict(self.floors_ms), "bound": self.bound,
                "programs_per_sm": self.occupancy.programs_per_sm, "limited_by": self.occupancy.limited_by,
                "warps_per_scheduler": self.occupancy.warps_per_scheduler, "waves": self.waves, "tail": self.tail}


def _terms(f: Features, gpu) -> tuple[dict, Occupancy, float, float]:
    occ = occupancy(f.registers, f.shared_bytes, f.num_warps, gpu)
    waves, tail = waves_and_tail(f.programs, occ.programs_per_sm, gpu, f.imbalance)
    return floors_ms(f, gpu), occ, waves, tail


def predict(f: Features, gpu: str | GpuSpec = "h200", params: Params = CALIBRATED) -> Prediction:
    floors, occ, waves, tail = _terms(f, gpu)
    ms = params.k * combine(floors, params.p) * tail * (1 + params.c / occ.warps_per_scheduler)
    return Prediction(ms, floors, max(floors, key=floors.get), occ, waves, tail)


# ---------------------------------------------------------------- fitting


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two sequences of equal length >= 2")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb)


@dataclass
class Fit:
    params: Params
    rms_log_error: float
    loo_rms_log_error: float
    spearman: float
    worst_error: float  # largest |predicted / measured - 1|
    n: int
    predicted_ms: list[float]
    measured_ms: list[float]

    def summary(self) -> dict:
        return {"k": round(self.params.k, 4), "c": round(self.params.c, 4), "p": self.params.p,
                "rms_log_error": round(self.rms_log_error, 4), "loo_rms_log_error": round(self.loo_rms_log_error, 4),
                "spearman": round(self.spearman, 4), "worst_error": round(self.worst_error, 4), "n": self.n}


P_CHOICES = (2.0, 3.0, 4.0, 6.0, 8.0, math.inf)
_C_MAX = 8.0


def _fit_kc(base: list[float], inv_w: list[float], logm: list[float], rows: list[int]) -> tuple[float, float, float]:
    """(mean squared log error, log k, c) minimising over c in [0, _C_MAX], log k in closed form."""

    def err(c: float) -> tuple[float, float]:
        res = [logm[i] - math.log(base[i] * (1 + c * inv_w[i])) for i in rows]
        lk = sum(res) / len(res)
        return sum((r - lk) ** 2 for r in res) / len(res), lk

    # A coarse grid, then golden-section search around the best point: deterministic, no scipy.
    step = 0.25
    grid = [i * step for i in range(int(_C_MAX / step) + 1)]
    best = min(grid, key=lambda c: err(c)[0])
    lo, hi = max(0.0, best - step), min(_C_MAX, best + step)
    phi = (math.sqrt(5) - 1) / 2
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    fa, fb = err(a)[0], err(b)[0]
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - phi * (hi - lo)
            fa = err(a)[0]
        else:
            lo, a, fa = a, b, fb
            b = lo + phi * (hi - lo)
            fb = err(b)[0]
    c = (lo + hi) / 2
    e, lk = err(c)
    return e, lk, c


def fit(samples: list[tuple[Features, float]], gpu: str | GpuSpec = "h200",
        p_choices: tuple[float, ...] = P_CHOICES) -> Fit:
    """Fit k, c (and p among p_choices) to (features, measured ms) pairs by least squares on
    log(predicted / measured); leave-one-out refits all of them without each sample."""
    if len(samples) < 3:
        raise ValueError("fitting needs at least 3 measured kernels")
    terms = [_terms(f, gpu) for f, _ in samples]
    logm = [math.log(ms) for _, ms in samples]
    inv_w = [1 / occ.warps_per_scheduler for _, occ, _, _ in terms]
    bases = {p: [combine(fl, p) * tail for fl, _, _, tail in terms] for p in p_choices}

    def best_over_p(rows: list[int]) -> tuple[float, float, float, float]:
        return min((_fit_kc(bases[p], inv_w, logm, rows) + (p,) for p in p_choices), key=lambda t: t[0])

    everything = list(range(len(samples)))
    _, lk, c, p = best_over_p(everything)
    params = Params(math.exp(lk), c, p)
    pred = [params.k * bases[p][i] * (1 + c * inv_w[i]) for i in everything]
    errs = [math.log(pred[i]) - logm[i] for i in everything]
    loo = []
    for i in everything:
        _, lk_i, c_i, p_i = best_over_p([j for j in everything if j != i])
        loo.append(lk_i + math.log(bases[p_i][i] * (1 + c_i * inv_w[i])) - logm[i])
    measured = [ms for _, ms in samples]
    return Fit(params=params,
               rms_log_error=math.sqrt(sum(e * e for e in errs) / len(errs)),
               loo_rms_log_error=math.sqrt(sum(e * e for e in loo) / len(loo)),
               spearman=spearman(pred, measured),
               worst_error=max(abs(math.exp(e) - 1) for e in errs),
               n=len(samples), predicted_ms=pred, measured_ms=measured)


# ---------------------------------------------------------------- the calibration set


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def calibration_dir() -> Path:
    """`shared/perf-calibration` beside the repository root; MNV2_PERF_CALIBRATION overrides."""
    env = os.environ.get("MNV2_PERF_CALIBRATION")
    return Path(env) if env else repo_root().parent / "shared" / "perf-calibration"


def output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def block_hbm_bytes(batch: int, h: int, w: int, cin: int, hidden: int, cout: int, stride: int,
                    has_expand: bool, itemsize: int = 2) -> int:
    """Compulsory bytes of one fused block: the input and output activations once and the
    weights once (expand, depthwise, project and their biases, in the activation dtype)."""
    ho, wo = output_size(h, stride), output_size(w, stride)
    weights = (cin * hidden + hidden if has_expand else 0) + 10 * hidden + hidden * cout + cout
    return (batch * h * w * cin + batch * ho * wo * cout + weights) * itemsize


@dataclass
class CalibrationKernel:
    tag: str
    block: int
    kind: str
    features: Features
    measured_ms: float
    cudnn_ms: float
    reference: dict  # reference_features of kernels.json: another analysis, for comparison


def load_calibration(path: str | Path | None = None) -> list[CalibrationKernel]:
    """Parse and count every kernel of the calibration set (a second or so)."""
    path = Path(path) if path is not None else calibration_dir()
    meta = json.loads((path / "kernels.json").read_text())
    out = []
    for k in meta["kernels"]:
        fn = S.kernel(gzip.decompress((path / "sass" / f"{k['tag']}.sass.gz").read_bytes()).decode())
        loops = S.find_loops(fn)
        declared = [(int(lp["sass_start"], 16), int(lp["sass_end"], 16)) for lp in k["loops"]]
        if [(lp.start, lp.end) for lp in loops] != declared:
            raise ValueError(f"{k['tag']}: loops found {[(hex(a.start), hex(a.end)) for a in loops]} "
                             f"differ from the declared {k['loops']}")
        trips = [lp["trips_per_program"] for lp in k["loops"]]
        counts = S.count(fn, trips, k["num_warps"])
        s = k["shape"]
        itemsize = {"float16": 2, "bfloat16": 2, "float32": 4}[s["dtype"]]
        hbm = block_hbm_bytes(s["batch"], s["h"], s["w"], s["cin"], s["hidden"], s["cout"], s["stride"],
                              s["t"] > 1, itemsize)
        # Persistent grids walk tiles in their outer loop: the busiest program does ceil(mean) of them.
        imbalance = 1.0
        if k["kind"] == "halo-scratch" and trips and trips[0] > 0:
            imbalance = math.ceil(trips[0]) / trips[0]
        f = Features(programs=k["programs"], num_warps=k["num_warps"], registers=k["registers"],
                     shared_bytes=k["shared_bytes"], warp_instructions_per_program=counts.warp_instructions,
                     l1_wavefronts_per_program=counts.l1_wavefronts, mma_macs_per_program=counts.mma_macs,
                     hbm_bytes=hbm, imbalance=imbalance, counts=counts)
        out.append(CalibrationKernel(k["tag"], k["block"], k["kind"], f, k["measured_ms"], k["cudnn_ms"],
                                     k.get("reference_features", {})))
    return out


def calibrate(path: str | Path | None = None, p_choices: tuple[float, ...] = P_CHOICES) -> tuple[Fit, list]:
    kernels = load_calibration(path)
    return fit([(k.features, k.measured_ms) for k in kernels], "h200", p_choices), kernels


def comparison_table(kernels: list[CalibrationKernel], fitted: Fit) -> str:
    """Own counts next to reference_features, and predicted next to measured time."""
    g = gpu_spec("h200")
    lines = [f"{'tag':<4} {'warp instr/prog':>16} {'(ref)':>10} {'wavefronts/prog':>16} {'(ref)':>10} "
             f"{'mma ms':>7} {'(ref)':>7} {'occ':>3} {'w':>3} {'tail':>6} {'bound':>5} {'pred ms':>8} {'meas ms':>8} "
             f"{'err':>5}"]
    for k, pred in zip(kernels, fitted.predicted_ms):
        f, r = k.features, k.reference
        floors, occ, _, tail = _terms(f, g)
        lines.append(
            f"{k.tag:<4} {f.warp_instructions_per_program:>16.1f} {r.get('warp_instructions_per_program', 0):>10.1f} "
            f"{f.l1_wavefronts_per_program:>16.1f} {r.get('l1_wavefronts_per_program', 0):>10.1f} "
            f"{floors['mma']:>7.4f} {r.get('mma_ms_at_1024', 0):>7.4f} {occ.programs_per_sm:>3} "
            f"{occ.warps_per_scheduler:>3.0f} {tail:>6.3f} {max(floors, key=floors.get):>5} {pred:>8.4f} "
            f"{k.measured_ms:>8.4f} {pred / k.measured_ms - 1:>+5.0%}")
    return "\n".join(lines)


# ---------------------------------------------------------------- compiled Triton kernels


def dump_sass(cubin: bytes) -> tuple[str, dict]:
    """(SASS text, {registers, local, stack}) of a cubin, via the cuobjdump in Triton's package."""
    from ..kernels.aot import _tool  # noqa: PLC0415 - the one place that locates cuobjdump

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "--dump-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    def field_(name: str) -> int:
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    return text, {"registers": field_("REG"), "local": field_("LOCAL"), "stack": field_("STACK")}


def analyse_sass(text: str, loop_trips: list[float], programs: int, num_warps: int, registers: int,
                 shared_bytes: int, hbm_bytes: float, imbalance: float = 1.0) -> Features:
    """Features of one launch from its SASS text.  loop_trips: iterations per entry of each
    loop, in the order of `sass.find_loops` (outer loops first, then by address)."""
    counts = S.count(S.kernel(text), loop_trips, num_warps)
    return Features(programs=programs, num_warps=num_warps, registers=registers, shared_bytes=shared_bytes,
                    warp_instructions_per_program=counts.warp_instructions,
                    l1_wavefronts_per_program=counts.l1_wavefronts, mma_macs_per_program=counts.mma_macs,
                    hbm_bytes=hbm_bytes, imbalance=imbalance, counts=counts)


def analyse_compiled(compiled, loop_trips: list[float], programs: int, hbm_bytes: float,
                     sass_path: str | Path | None = None, num_warps: int | None = None,
                     imbalance: float = 1.0) -> Features:
    """Features of a Triton compiled kernel (kernels.aot.compile_variant); writes its SASS
    to sass_path when given."""
    text, usage = dump_sass(compiled.asm["cubin"])
    if sass_path is not None:
        Path(sass_path).write_text(text)
    nw = num_warps if num_warps is not None else compiled.metadata.num_warps
    return analyse_sass(text, loop_trips, programs, nw, usage["registers"], int(compiled.metadata.shared),
                        hbm_bytes, imbalance)
