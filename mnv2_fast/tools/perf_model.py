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
      the largest to the mean work per program for persistent grids; a grid smaller than the
      SMs' slots holds ceil(programs / SMs) per SM (programs go one per SM first);
    * w = resident warps per SM sub-partition (scheduler), from registers, shared memory and
      warps: with few warps to switch between, latency is not hidden.

    k and c (and p, from a small fixed set) are fitted by least squares in log space to the
    calibration set: 31 fused inverted-residual kernels of an earlier design, timed on one
    H200 (`../shared/perf-calibration`, beside the repository).

How well it fits (`python -m mnv2_fast.tools.perf_model --calibrate` prints the table)
    Fitted here: p = 4, k = 1.08, c = 1.12: rms log error 0.111, leave-one-out 0.121 (p, k
    and c refitted without each kernel), Spearman rho 0.97, worst error 32%, n = 31.  The
    plain maximum (p = inf) fits with k = 1.07, c = 1.33: rms 0.126, leave-one-out 0.133,
    worst 28%.  The worst miss, H17 (predicted 32% short), spills 1 KiB per thread; the l1
    floor charges those local accesses as L1 hits, and they likely are not.

Use
    predict(features, gpu)             time of one launch from its Features
    analyse_compiled(compiled, ...)    Features of a Triton compiled kernel (aot.compile_variant)
    analyse_sass(text, ...)            ... of a `cuobjdump --dump-sass` listing
    analyse_launch(launch, batch)      compile a shipped launch (cached on disk), check its loops
                                       against the source, count, predict: one JSON-ready record
    python -m mnv2_fast.tools.perf_model [--gpu h200|h100] [--batch 256] [--json F] [--sass-dir D]
                                       every launch of one MobileNetV2 forward, with cuDNN's times

What it is not
    A model with three fitted numbers, checked against kernels of a different design from the
    ones it will rank.  Its predictions guide which configs to spend GPU time on; only GPU
    measurements count as results.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
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

    def as_dict(self) -> dict:
        # JSON has no infinity: the maximum is written "inf".
        return {"k": round(self.k, 4), "c": round(self.c, 4), "p": self.p if math.isfinite(self.p) else "inf"}


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


def resident(occ: Occupancy, programs: int, num_warps: int, gpu: str | GpuSpec = "h200") -> Occupancy:
    """The occupancy a grid reaches: the hardware hands out programs one per SM before a second
    to any, so a grid of fewer programs than the SMs' slots holds ceil(programs / SMs) per SM
    on the busiest ones, not as many as fit (and has as few warps per scheduler)."""
    g = gpu_spec(gpu)
    n = min(occ.programs_per_sm, max(1, math.ceil(programs / g.sms)))
    if n == occ.programs_per_sm:
        return occ
    return Occupancy(n, "grid", n * num_warps / g.schedulers)


def _terms(f: Features, gpu) -> tuple[dict, Occupancy, float, float]:
    occ = resident(occupancy(f.registers, f.shared_bytes, f.num_warps, gpu), f.programs, f.num_warps, gpu)
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
        return {**self.params.as_dict(), "rms_log_error": round(self.rms_log_error, 4), "loo_rms_log_error": round(self.loo_rms_log_error, 4),
                "spearman": round(self.spearman, 4), "worst_error": round(self.worst_error, 4), "n": self.n}


P_CHOICES = (2.0, 3.0, 4.0, 6.0, 8.0, math.inf)
_C_MAX = 8.0


def _fit_kc(base: list[tuple[float, ...]], inv_w: list[tuple[float, ...]], logm: list[float],
            rows: list[int]) -> tuple[float, float, float]:
    """(mean squared log error, log k, c) minimising over c in [0, _C_MAX], log k in closed form.
    A sample's time is the sum over its launches (base[i][j], inv_w[i][j])."""

    def err(c: float) -> tuple[float, float]:
        res = [logm[i] - math.log(_unscaled(base[i], inv_w[i], c)) for i in rows]
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


def _unscaled(base: tuple[float, ...], inv_w: tuple[float, ...], c: float) -> float:
    """A sample's prediction over k: the sum of its launches' (predict() without k)."""
    return sum(b * (1 + c * w) for b, w in zip(base, inv_w))


def fit(samples: list[tuple[Features | tuple[Features, ...], float]], gpu: str | GpuSpec = "h200",
        p_choices: tuple[float, ...] = P_CHOICES) -> Fit:
    """Fit k, c (and p among p_choices) to (features, measured ms) pairs by least squares on
    log(predicted / measured); leave-one-out refits all of them without each sample.  A
    sample timed as several launches in a row (a block with its project apart: the kernel and
    the GEMM) gives a tuple of features, predicted as the sum of theirs."""
    if len(samples) < 3:
        raise ValueError("fitting needs at least 3 measured kernels")
    launches = [f if isinstance(f, tuple) else (f,) for f, _ in samples]
    terms = [[_terms(f, gpu) for f in fs] for fs in launches]
    logm = [math.log(ms) for _, ms in samples]
    inv_w = [tuple(1 / occ.warps_per_scheduler for _, occ, _, _ in ts) for ts in terms]
    bases = {p: [tuple(combine(fl, p) * tail for fl, _, _, tail in ts) for ts in terms] for p in p_choices}

    def best_over_p(rows: list[int]) -> tuple[float, float, float, float]:
        return min((_fit_kc(bases[p], inv_w, logm, rows) + (p,) for p in p_choices), key=lambda t: t[0])

    everything = list(range(len(samples)))
    _, lk, c, p = best_over_p(everything)
    params = Params(math.exp(lk), c, p)
    pred = [params.k * _unscaled(bases[p][i], inv_w[i], c) for i in everything]
    errs = [math.log(pred[i]) - logm[i] for i in everything]
    loo = []
    for i in everything:
        _, lk_i, c_i, p_i = best_over_p([j for j in everything if j != i])
        loo.append(lk_i + math.log(_unscaled(bases[p_i][i], inv_w[i], c_i)) - logm[i])
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


# ---------------------------------------------------------------- the project's own launches

# cuDNN on an H200, batch 256 fp16, channels_last, BN folded, per block 1-17 (ms): the
# reference run the project compares against (not a model output).
CUDNN_H200_B256_FP16_MS = (0.81, 1.95, 1.30, 0.80, 0.46, 0.46, 0.27, 0.29, 0.29, 0.29, 0.26, 0.35, 0.35, 0.27,
                           0.28, 0.26, 0.14)
ARCH = 90


def sass_cache_dir() -> Path:
    """Where compiled SASS is kept between runs: MNV2_FAST_SASS_CACHE, else ~/.cache/mnv2-fast/sass."""
    env = os.environ.get("MNV2_FAST_SASS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mnv2-fast" / "sass"


# A variant's SASS is about 0.3 MB, and a tuning sweep compiles hundreds: unbounded, the cache
# grew to 4 GB on one machine.  MNV2_FAST_SASS_CACHE_BYTES sets another bound.
SASS_CACHE_BYTES = 1 << 30


def sass_cache_limit() -> int:
    env = os.environ.get("MNV2_FAST_SASS_CACHE_BYTES")
    return int(env) if env else SASS_CACHE_BYTES


def prune_sass_cache(cache: Path, limit: int) -> int:
    """When the cache holds more than `limit` bytes, delete its least recently used variants
    (a hit touches one) until it holds at most three quarters of it, so that pruning is rare.
    Returns how many variants were deleted.  Safe beside another process using the cache:
    a variant deleted under it is compiled again."""
    variants = []
    for sass_file in cache.glob("*.sass"):
        try:
            st = sass_file.stat()
            size = st.st_size + sass_file.with_suffix(".json").stat().st_size
        except FileNotFoundError:  # half a variant (being written, or being deleted): not counted
            continue
        variants.append((st.st_mtime, size, sass_file))
    total = sum(size for _, size, _ in variants)
    if total <= limit:
        return 0
    deleted = 0
    for _, size, sass_file in sorted(variants, key=lambda v: v[0]):
        if total <= limit * 3 // 4:
            break
        for path in (sass_file, sass_file.with_suffix(".json")):
            path.unlink(missing_ok=True)
        total -= size
        deleted += 1
    return deleted


def variant_key(fn, constexprs: dict, dtype, arch: int = ARCH) -> str:
    """Hash of what determines the SASS: the kernel source with the jit functions it calls
    (Triton's cache_key), the constexprs, dtype, Triton version and target."""
    import triton

    src = getattr(fn, "cache_key", None) or getattr(fn, "src", None) or repr(fn)
    blob = json.dumps([src, sorted((k, repr(v)) for k, v in constexprs.items()), str(dtype), triton.__version__,
                       arch])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def compiled_sass(fn, constexprs: dict, dtype, arch: int = ARCH, cache: Path | None = None) -> tuple[str, dict]:
    """(SASS text, {registers, shared, local, stack}) of one kernel variant compiled for
    sm_<arch>, from the on-disk cache when present."""
    cache = cache if cache is not None else sass_cache_dir()
    key = variant_key(fn, constexprs, dtype, arch)
    sass_file, meta_file = cache / f"{key}.sass", cache / f"{key}.json"
    try:
        text, usage = sass_file.read_text(), json.loads(meta_file.read_text())
        with contextlib.suppress(OSError):  # a read-only cache still serves
            os.utime(sass_file)  # recently used: pruned last
        return text, usage
    except FileNotFoundError:
        pass
    from ..kernels.aot import compile_variant

    compiled = compile_variant(fn, constexprs, dtype, arch=arch)
    text, usage = dump_sass(compiled.asm["cubin"])
    usage["shared"] = int(compiled.metadata.shared)
    cache.mkdir(parents=True, exist_ok=True)
    for path, data in ((sass_file, text), (meta_file, json.dumps(usage))):
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(data)
        tmp.replace(path)  # atomic: a concurrent run never reads half a file
    prune_sass_cache(cache, sass_cache_limit())
    return text, usage


def _inventory():
    """The shipped-launch inventory and its helpers (one place to adjust if they move)."""
    from . import inventory
    from .static_check import describe

    return inventory, describe


@dataclass
class NetworkLaunch:
    part: str  # stem / stem+block / block / head / classifier
    block: int | None  # 1-17 for blocks
    launch: object  # shipped.Launch
    # False: a block the forward runs inside another launch (block 1, in the stem's), listed
    # alone for its own figures (fuse_block runs it so) and left out of the network's total
    counted: bool = True


def network_launches(batch: int = 256, dtype=None, gpu: str = "h200", width: float = 1.0,
                     resolution: int = 224) -> list[NetworkLaunch]:
    """Every kernel launch of one MobileNetV2 forward, in order, with the config a GPU of
    this kind picks at this batch (`choice.tabled_block_config`), as shipped."""
    import torch

    from ..kernels import choice as C
    from ..model import block_specs, head_channels, stem_block_spec

    shipped, _ = _inventory()
    dtype = dtype or torch.float16
    cuda = torch.device("cuda")
    # optimize() runs the stem and block 1 as one launch (kernels.block.stem_block).
    fused = stem_block_spec(width, resolution=resolution)
    out = [NetworkLaunch("stem+block", None, shipped.Launch("block", f"w{width} stem + block 1", dtype, fused,
                                                            C.tabled_block_config(fused, dtype, batch, gpu)))]
    specs = block_specs(width, resolution=resolution)
    for shape in specs:
        cfg = C.tabled_block_config(shape, dtype, batch, gpu)
        out.append(NetworkLaunch("block", shape.index,
                                 shipped.Launch("block", f"w{width} block {shape.index}", dtype, shape, cfg),
                                 counted=shape.index != 1))
    s = specs[-1].ho
    last = head_channels(width)
    cin = specs[-1].cout
    out.append(NetworkLaunch("head", None, shipped.Launch(
        "head", f"w{width} head", dtype, (cin, last, s, s),
        C.choose_head_config(cin, last, s * s, batch, cuda, dtype.itemsize))))
    out.append(NetworkLaunch("classifier", None, shipped.Launch(
        "linear", f"w{width} classifier, batch {batch}", dtype, (batch, last, 1000),
        C.choose_linear_config(batch, last, 1000, cuda, dtype.itemsize))))
    return out


def family_launches(model: str, batch: int = 256, dtype=None, gpu: str = "h200",
                    resolution: int | None = None) -> list[NetworkLaunch]:
    """Every kernel launch of one forward of optimize(model) for a model of the family by name
    (tools/zoo.py), in order, with the config a GPU of this kind picks (its tuned table, else the
    reference table, else the heuristic: as the launchers choose).  Parts kept as PyTorch launch
    no kernel of ours and are left out (the fusion report lists them)."""
    import torch

    from ..fused import FusedHead, FusedInvertedResidual, FusedLinear, FusedStem, FusedStemBlock
    from ..kernels import choice as C
    from . import zoo

    shipped, _ = _inventory()
    dtype = dtype or torch.float16
    cuda = torch.device("cuda")
    resolution = resolution or zoo.resolution(model)
    out, blocks = [], 0
    for path, m, shape in zoo.fused_parts(model, resolution):
        label = f"{model} {path}"
        if isinstance(m, FusedStem):
            launch = shipped.Launch("stem", label, dtype, (m.cin, m.cout, shape[2], shape[3], m.act, m.tf_same),
                                    C.choose_stem_config(m.cout, cuda))
            out.append(NetworkLaunch("stem", None, launch))
        elif isinstance(m, FusedStemBlock):  # the stem with the first block: one block launch
            spec = m.shape_at(shape[2], shape[3])
            blocks += 1
            out.append(NetworkLaunch("stem+block", None, shipped.Launch(
                "block", label, dtype, spec, C.tabled_block_config(spec, dtype, batch, gpu))))
        elif isinstance(m, FusedInvertedResidual):
            spec = m.spec.at(shape[2], shape[3])
            cfg = C.tabled_block_config(spec, dtype, batch, gpu)
            blocks += 1
            out.append(NetworkLaunch("block", blocks, shipped.Launch("block", label, dtype, spec, cfg)))
        elif isinstance(m, FusedHead):
            hw = shape[2] * shape[3]
            out.append(NetworkLaunch("head", None, shipped.Launch(
                "head", label, dtype, (m.cin, m.cout, shape[2], shape[3], m.act),
                C.choose_head_config(m.cin, m.cout, hw, batch, cuda, dtype.itemsize))))
        elif isinstance(m, FusedLinear):
            out.append(NetworkLaunch("classifier", None, shipped.Launch(
                "linear", f"{label}, batch {batch}", dtype, (batch, m.in_features, m.out_features),
                C.choose_linear_config(batch, m.in_features, m.out_features, cuda, dtype.itemsize))))
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LoopSpec:
    """A loop the kernel source declares: its trips per entry, the loops directly inside it
    (in source order), and whether the compiler may unroll it away (then it is absent)."""

    name: str
    trips: float
    inner: tuple = ()
    optional: bool = False


def _chain(*loops: tuple[str, float]) -> list[LoopSpec]:
    """Loops each inside the one before."""
    out: tuple = ()
    for name, trips in reversed(loops):
        out = (LoopSpec(name, trips, out),)
    return list(out)


def match_loops(declared: list[LoopSpec], found: list) -> list[LoopSpec]:
    """The declared loop for each loop found in the SASS (`sass.find_loops`: ordered by depth,
    then address), trying every choice of optional loops unrolled away.  Code is laid out in
    source order, so siblings keep their declared order.  Raises when no choice, or several
    with different trips, fit."""
    optional = []

    def collect(nodes):
        for n in nodes:
            if n.optional:
                optional.append(n)
            collect(n.inner)

    collect(declared)
    fits = []
    for mask in range(1 << len(optional)):
        absent = {id(n) for i, n in enumerate(optional) if mask >> i & 1}
        flat: list = []  # (depth, parent position in flat, spec), pre-order = source order

        def walk(nodes, depth, parent):
            for n in nodes:
                if id(n) in absent:
                    continue
                flat.append((depth, parent, n))
                walk(n.inner, depth + 1, len(flat) - 1)

        walk(declared, 0, None)
        order = sorted(range(len(flat)), key=lambda i: (flat[i][0], i))
        pos = {old: new for new, old in enumerate(order)}
        expect = [(flat[i][0], None if flat[i][1] is None else pos[flat[i][1]]) for i in order]
        if expect == [(lp.depth, lp.parent) for lp in found]:
            fits.append([flat[i][2] for i in order])
    if not fits or len({tuple((m.name, m.trips) for m in f) for f in fits}) > 1:
        def show(nodes):
            return ", ".join(f"{n.name}{'?' if n.optional else ''}" + (f" [{show(n.inner)}]" if n.inner else "")
                             for n in nodes)

        where = ", ".join(f"{lp.start:#x}-{lp.end:#x} depth {lp.depth}" for lp in found) or "none"
        what = "fit several ways" if fits else "do not fit"
        raise ValueError(f"the source declares loops [{show(declared)}] (?: may be unrolled), the SASS has {where}: "
                         f"they {what}")
    return fits[0]


def launch_geometry(launch, batch: int, gpu: str | GpuSpec = "h200") -> dict:
    """From the kernel source: programs, the loops it declares (`LoopSpec`s, outer first, with
    trips per entry), the multiply-adds one program's products imply (padded tiles), and
    compulsory HBM bytes.  Loops the compiler removes (one trip) are left out;
    tl.static_range loops are unrolled and never appear."""
    cfg, itemsize = launch.config, launch.dtype.itemsize
    imbalance, row_padding = 1.0, 1
    if launch.kind == "block":
        from ..kernels.block import kernel_args

        s = launch.shape
        args = kernel_args(s, cfg, launch.dtype, launch.tf32)
        tiles = s.tiles(cfg, batch)
        programs = s.grid(cfg, batch, gpu_spec(gpu).sms)
        per_program = tiles / programs
        imbalance = _cdiv(tiles, programs) / per_program  # the last programs walk one tile fewer
        # Chunks per work item (hidden_split: a share of a tile's; the last share, if shorter, is
        # charged as a full one).
        # stage_hid: chunks are staged at that width and depthwise-projected in parts of block_hid;
        # a hidden size no multiple of it ends with one chunk of the rest (the tail), unrolled.
        width = cfg.stage_hid or cfg.block_hid
        tail = s.hidden % width if width > cfg.block_hid else 0
        chunks = _cdiv(_cdiv(s.hidden - tail, width), cfg.hidden_split)
        # The expand runs over the staged rows (P_STAGE: the region, or with stage_image the
        # images' own pixels), or (no middle depthwise) on the top and bottom pixels.
        rows = args["P_STAGE"] if s.staged else 2 * args["P2"]
        expand = rows * (args["K_A"] + args["K_B"]) if s.has_expand else 0
        # Pixels per pair or group, as joined for the project (a power of two: 7-row strips pad to 8).
        group = 2 * (1 << (cfg.group_rows - 1).bit_length()) if cfg.quads else 2
        # project_apart: the project is the GEMM launched after it (`inventory.project_launch`).
        project = 0 if cfg.project_apart else group * args["P2"] * (args["CO_A"] + args["CO_B"])
        macs = per_program * (chunks * width + tail) * (expand + project)
        # wgmma works on 64-row tiles: the project's rows (2 x P2 joined, else P2 per product) and
        # the expand's (P_STAGE) pad up to them.
        project_rows = group * args["P2"] if cfg.join_pairs and not cfg.project_apart else args["P2"]
        row_padding = max(1, 64 / min(project_rows, args["P_STAGE"] if s.staged else args["P2"]))
        # The persistent tile loop always stays a loop; the chunk loop is unrolled away when it
        # has one trip.  The compiler usually unrolls the depthwise's row loop (KSIZE + STRIDE
        # trips); where it keeps it, it is innermost.  The start depthwise's row loop has a
        # run-time bound: one loop per call (per input-channel part; the top and the bottom
        # pixels without a middle depthwise), before the chunks.
        depthwise = (LoopSpec("depthwise rows", s.ksize + s.stride, optional=True),) if s.staged else ()
        calls = (1 if s.staged else 2) * (2 if args["K_B"] else 1) if s.start_k else 0
        inner = tuple(LoopSpec("start depthwise rows", s.start_k) for _ in range(calls))
        inner += (LoopSpec("hidden chunks", chunks, depthwise),) if chunks > 1 else depthwise
        loops = [LoopSpec("tiles", per_program, inner)]
        hbm = s.floor_bytes(batch, itemsize)
        if cfg.project_apart:  # the hidden tensor written instead of the output, the project's weights not read
            hbm += (batch * s.ho * s.wo * (s.hidden - s.cout) - s.hidden * s.cout - s.cout) * itemsize
    elif launch.kind == "stem":
        from ..kernels.stem import stem_block_k

        cin, cout, h, w = launch.shape[:4]
        ho, wo = output_size(h, 2), output_size(w, 2)
        block_k = stem_block_k(cin)
        programs = batch * _cdiv(ho, cfg.tile_h) * _cdiv(wo, cfg.tile_w) * _cdiv(cout, cfg.block_co)
        macs = cfg.tile_h * cfg.tile_w * _cdiv(cin * 9, block_k) * block_k * cfg.block_co
        loops = []  # the product steps are a static_range
        hbm = (batch * cin * h * w + batch * ho * wo * cout + cin * 9 * cout + cout) * itemsize
    elif launch.kind == "head":
        # Both loops have run-time bounds (they stay loops).  A short last image group walks
        # fewer chunks; it is charged as a full one, as the slowest program sets the time.
        cin, cout, h, w = launch.shape[:4]
        chunks = _cdiv(min(batch, cfg.imgs) * h * w, cfg.block_p)
        k_steps = _cdiv(cin, cfg.block_k)
        programs = _cdiv(batch, cfg.imgs) * _cdiv(cout, cfg.block_n)
        # The 1x1 conv, then the pooling product (16 image columns) per chunk of packed pixels.
        macs = chunks * cfg.block_p * cfg.block_n * (k_steps * cfg.block_k + 16)
        loops = _chain(("pixel chunks", chunks), ("k steps", k_steps))
        hbm = (batch * h * w * cin + cin * cout + cout + batch * cout) * itemsize
    elif launch.kind == "linear":
        _, k, nout, *rest = launch.shape
        m = batch  # the classifier's batch; a block's project: the batch's pixels
        steps = _cdiv(k, cfg.block_k)
        programs = _cdiv(m, cfg.block_m) * _cdiv(nout, cfg.block_n)
        macs = cfg.block_m * steps * cfg.block_k * cfg.block_n
        loops = _chain(("k steps", steps))  # a run-time bound: a loop even for one step
        residual = bool(rest) and rest[1]
        hbm = (m * k + k * nout + nout + (2 if residual else 1) * m * nout) * itemsize
    else:
        raise ValueError(launch.kind)
    return {"programs": programs, "loops": loops, "expected_macs_per_program": macs, "hbm_bytes": hbm,
            "imbalance": imbalance, "row_padding": row_padding}


def analyse_launch(launch, batch: int, gpu: str = "h200", *, part: str | None = None, block: int | None = None,
                   sass_dir: str | Path | None = None, params: Params = CALIBRATED,
                   cache: Path | None = None) -> dict:
    """Compile one launch for sm_90 (or take it from the cache), count its SASS with the loop
    trips its source declares, and predict its time.  Raises when the loops found in the
    SASS do not nest as declared, or the multiply-adds counted differ from those the tile
    sizes imply (then the trips would be wrong)."""
    shipped, describe = _inventory()
    fn, args = shipped.variant(launch)
    text, usage = compiled_sass(fn, args, launch.dtype, cache=cache)
    geo = launch_geometry(launch, batch, gpu)
    fn_sass = S.kernel(text)
    loops = S.find_loops(fn_sass)
    try:
        declared = match_loops(geo["loops"], loops)
    except ValueError as err:
        raise ValueError(f"{launch.label}: {err}") from None
    trips = [d.trips for d in declared]
    counts = S.count(fn_sass, trips, args["num_warps"])
    implied = geo["expected_macs_per_program"]
    replication = counts.mma_macs / implied
    # Fewer products than the tiles need means the trips undercount the loops; more is
    # possible (a tile of 64 rows on two warpgroups: both compute it; a tile of fewer rows
    # than a warpgroup product's 64 padded up to them), never beyond that.
    limit = max(1, args["num_warps"] // S.WARPGROUP) * geo.get("row_padding", 1)
    on_fma_units = args.get("DOT_PRECISION") == "ieee" and counts.mma_macs == 0  # fp32 products as FFMA
    if not on_fma_units and not 1 - 1e-9 <= replication <= limit + 1e-9:
        raise ValueError(f"{launch.label}: {counts.mma_macs:.0f} multiply-adds per program counted in the SASS, "
                         f"{implied} implied by the tiles: loop trips {trips} are wrong")
    name = None
    if sass_dir is not None:
        name = f"{launch.label.replace(' ', '_').replace(',', '')}_{variant_key(fn, args, launch.dtype)[:8]}.sass"
        Path(sass_dir).mkdir(parents=True, exist_ok=True)
        (Path(sass_dir) / name).write_text(text)
    f = Features(programs=geo["programs"], num_warps=args["num_warps"], registers=usage["registers"],
                 shared_bytes=usage["shared"], warp_instructions_per_program=counts.warp_instructions,
                 l1_wavefronts_per_program=counts.l1_wavefronts, mma_macs_per_program=counts.mma_macs,
                 hbm_bytes=geo["hbm_bytes"], imbalance=geo["imbalance"], counts=counts)
    pred = predict(f, gpu, params)
    project = None
    if launch.kind == "block" and launch.config.project_apart:  # the GEMM after it, as one more launch
        s = launch.shape
        project = analyse_launch(shipped.project_launch(launch, batch * s.ho * s.wo), batch * s.ho * s.wo, gpu,
                                 part=part, block=block, sass_dir=sass_dir, params=params, cache=cache)
    record = {
        "part": part or {"linear": "classifier"}.get(launch.kind, launch.kind),
        "block": block,
        "label": launch.label,
        "config": describe(launch.config),
        "config_json": json.dumps(launch.config.to_dict()),
        "programs": f.programs,
        "num_warps": f.num_warps,
        "registers": f.registers,
        "shared_bytes": f.shared_bytes,
        "stack_bytes": usage.get("stack", 0),
        "sass": name,
        "loops": [{"name": d.name, "sass_start": f"{lp.start:#x}", "sass_end": f"{lp.end:#x}", "depth": lp.depth,
                   "trips_per_program": d.trips} for d, lp in zip(declared, loops)],
        "warp_instructions_per_program": counts.warp_instructions,
        "l1_wavefronts_per_program": counts.l1_wavefronts,
        "wavefronts_by_space": counts.wavefronts_by_space,
        "mma_macs_per_program": counts.mma_macs,
        "implied_macs_per_program": implied,
        "mma_replication": replication,
        "shuffles_per_program": counts.shuffles,
        "instructions_by_category": counts.by_category,
        "hbm_bytes": f.hbm_bytes,
        "imbalance": f.imbalance,
        **pred.as_dict(),
    }
    if project is not None:  # the block's time is both launches'
        record["kernel_ms"] = record["predicted_ms"]
        record["project"] = project
        record["predicted_ms"] += project["predicted_ms"]
    if launch.kind == "block" and launch.shape.ksize:
        record["instructions_per_element_tap"] = instructions_per_element_tap(record, launch.shape, batch)
    return record


def instructions_per_element_tap(record: dict, shape, batch: int) -> float:
    """Thread-instructions of a block's launches (with the project apart, the GEMM's too) per
    multiply-add its depthwise needs: N x HO x WO x hidden x k^2 (issue 12 asks for at most 4)."""
    warp = record["warp_instructions_per_program"] * record["programs"]
    if "project" in record:
        warp += record["project"]["warp_instructions_per_program"] * record["project"]["programs"]
    return warp * 32 / (batch * shape.ho * shape.wo * shape.hidden * shape.ksize ** 2)


# ---------------------------------------------------------------- recalibration on the project's own kernels


def features_of(record: dict) -> Features:
    """The Features an `analyse_launch` record was predicted from."""
    return Features(programs=record["programs"], num_warps=record["num_warps"], registers=record["registers"],
                    shared_bytes=record["shared_bytes"],
                    warp_instructions_per_program=record["warp_instructions_per_program"],
                    l1_wavefronts_per_program=record["l1_wavefronts_per_program"],
                    mma_macs_per_program=record["mma_macs_per_program"], hbm_bytes=record["hbm_bytes"],
                    imbalance=record["imbalance"])


def measured_blocks(summary: dict, gpu: str, analyse=None) -> list[dict]:
    """The fused blocks a GPU run timed (a `bench/results/<run>/summary.json`: provider "fused",
    a time, and the config it ran, `config_json`; or, for a run whose model faulted, the
    layers bench/gpu_diag.py timed, `diag`), each analysed as the model sees it:
    {block, dtype, batch, measured_ms, record}.  analyse: `analyse_launch` (the tests pass a
    stand-in that compiles nothing)."""
    import torch

    from ..kernels.records import BlockConfig, BlockShape
    from ..model import block_specs

    shipped, _ = _inventory()
    analyse = analyse or analyse_launch
    specs = block_specs(1.0, resolution=224)  # the block suite's shapes (bench/test_bench_blocks.py)

    def row(index: int, dtype_name: str, batch: int, shape, cfg, ms: float, what: str) -> dict:
        spec = specs[index - 1]
        if (shape.cin, shape.hidden, shape.cout, shape.stride) != (spec.cin, spec.hidden, spec.cout, spec.stride):
            raise ValueError(f"{what} is not MobileNetV2 1.0's block {index}")
        dtype = getattr(torch, dtype_name)
        launch = shipped.Launch("block", f"w1.0 block {index}", dtype, shape, cfg,
                                tf32=dtype == torch.float32 and bool(summary.get("allow_tf32")))
        return {"block": index, "dtype": dtype_name, "batch": batch, "measured_ms": ms,
                "record": analyse(launch, batch, gpu)}

    rows = []
    for r in summary.get("blocks", []):
        if r.get("provider") != "fused" or not r.get("ms") or not r.get("config_json"):
            continue
        shape = replace(specs[r["block"] - 1], cin=r.get("cin"), hidden=r.get("hidden"), cout=r.get("cout"),
                        stride=r.get("stride"), h=r["size"], w=r["size"])
        rows.append(row(r["block"], r["dtype"], r["batch"], shape, BlockConfig.from_dict(json.loads(r["config_json"])),
                        r["ms"], f"block {r['block']} of the run ({r})"))
    timed = {(r["block"], r["dtype"], r["batch"]) for r in rows}
    for r in (summary.get("diag") or {}).get("layers", []):
        index = int(r["layer"].split(".")[1]) if r["layer"].startswith("features.") else 0
        if not (1 <= index <= len(specs)) or r["status"] != "ok" or not r.get("fused_ms") or not r.get("config"):
            continue
        if (index, r["dtype"], r["batch"]) not in timed:  # the benchmarks' own time of it comes first
            rows.append(row(index, r["dtype"], r["batch"], BlockShape(**r["shape"]), BlockConfig.from_dict(r["config"]),
                            r["fused_ms"], f"layer {r['layer']} of the run's diagnosis"))
    return rows


def recalibrate(rows: list[dict], gpu: str, p_choices: tuple[float, ...] = P_CHOICES) -> tuple[Fit, list[dict]]:
    """Fit k, c and p to measured blocks (`measured_blocks`), and each block's time under the
    shipped constants and under the refit, beside its measurement.  A block whose project
    runs apart is two launches with one measured time: fitted as the sum of the two."""

    def launches(r: dict) -> tuple[dict, ...]:
        return (r["record"],) + ((r["record"]["project"],) if "project" in r["record"] else ())

    fitted = fit([(tuple(features_of(x) for x in launches(r)), r["measured_ms"]) for r in rows], gpu, p_choices)
    out = []
    for r in rows:
        out.append({"block": r["block"], "dtype": r["dtype"], "batch": r["batch"], "config": r["record"]["config"],
                    "predicted_ms": r["record"]["predicted_ms"],
                    "refit_ms": sum(predict(features_of(x), gpu, fitted.params).ms for x in launches(r)),
                    "measured_ms": r["measured_ms"], "launches": len(launches(r))})
    return fitted, out


def recalibration_table(fitted: Fit, rows: list[dict]) -> str:
    lines = [f"{'block':>5} {'dtype':<8} {'batch':>5} {'config':<40} {'pred ms':>8} {'meas ms':>8} {'error':>6} "
             f"{'refit':>8} {'error':>6}"]
    for r in rows:
        m = r["measured_ms"]
        lines.append(f"{r['block']:>5} {r['dtype']:<8} {r['batch']:>5} {r['config'][:40]:<40} {r['predicted_ms']:>8.4f} "
                     f"{m:>8.4f} {r['predicted_ms'] / m - 1:>+6.0%} {r['refit_ms']:>8.4f} {r['refit_ms'] / m - 1:>+6.0%}"
                     + ("  (kernel + project GEMM)" if r["launches"] > 1 else ""))
    lines.append(f"shipped constants: {CALIBRATED.as_dict()}; refit on the {fitted.n} measured blocks: "
                 f"{fitted.summary()}")
    return "\n".join(lines)


def analyse_network(batch: int = 256, dtype=None, gpu: str = "h200", sass_dir: str | Path | None = None,
                    params: Params = CALIBRATED, log=None, model: str = "mobilenet_v2",
                    resolution: int | None = None) -> dict:
    """analyse_launch over a whole forward; cuDNN reference times where they were measured
    (MobileNetV2).  model: mobilenet_v2 (its shipped launches, checked against the inventory)
    or a model of the family by name (tools/zoo.py; at its training resolution by default)."""
    import torch
    import triton

    from .interpreter import use_compiler

    shipped, _ = _inventory()
    use_compiler()
    dtype = dtype or torch.float16
    family = model != "mobilenet_v2"
    if family:
        launches = family_launches(model, batch, dtype, gpu, resolution)
    else:
        launches = network_launches(batch, dtype, gpu, resolution=resolution or 224)
        inventory = {launch.key() for launch in shipped.shipped_launches()}
    records = []
    for i, nl in enumerate(launches):
        # The inventory holds the head and classifier at batch 1 and 256 only (their configs depend
        # on the batch); every other launch ships as is.
        if (not family and nl.launch.key() not in inventory
                and not (nl.part in ("head", "classifier") and batch not in (1, 256))):
            raise ValueError(f"{nl.launch.label} ({nl.launch.config}) is not in the shipped inventory")
        rec = analyse_launch(nl.launch, batch, gpu, part=nl.part, block=nl.block, sass_dir=sass_dir, params=params)
        # cuDNN was measured on an H200; an H100, with less memory bandwidth, is no faster, so
        # the same figures make a conservative yardstick there.
        reference = not family and batch == 256 and dtype == torch.float16 and nl.block is not None
        rec["cudnn_ms"] = CUDNN_H200_B256_FP16_MS[nl.block - 1] if reference else None
        rec["counted"] = nl.counted
        records.append(rec)
        if log:
            log(f"[{i + 1}] {rec['label']}: {rec['predicted_ms']:.3f} ms")
    result = {
        "gpu": gpu,
        "triton": triton.__version__,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "params": params.as_dict(),
        "launches": records,
        "total_predicted_ms": sum(r["predicted_ms"] for r in records if r["counted"]),
    }
    if family:
        from .zoo import resolution as default_resolution

        result.update(network=model, resolution=resolution or default_resolution(model))
    return result


def network_table(result: dict) -> str:
    width = max([30] + [len(r["label"]) for r in result["launches"]])
    lines = [f"{'launch':<{width}} {'config':<36} {'prog':>6} {'reg':>3} {'smem':>6} {'occ':>3} {'w':>3} {'tail':>5} "
             f"{'issue':>6} {'l1':>6} {'mma':>6} {'hbm':>6} {'pred':>6} {'cudnn':>6} {'i/tap':>5}  bound"]
    for r in result["launches"]:
        fl = r["floors_ms"]
        cudnn = f"{r['cudnn_ms']:6.2f}" if r.get("cudnn_ms") is not None else f"{'':>6}"
        per_tap = f"{r['instructions_per_element_tap']:5.1f}" if "instructions_per_element_tap" in r else f"{'':>5}"
        label = r["label"] if r.get("counted", True) else r["label"] + " *"
        lines.append(f"{label:<{width}} {r['config'][:36]:<36} {r['programs']:>6} {r['registers']:>3} "
                     f"{r['shared_bytes']:>6} "
                     f"{r['programs_per_sm']:>3} {r['warps_per_scheduler']:>3.0f} {r['tail']:>5.2f} "
                     f"{fl['issue']:>6.3f} {fl['l1']:>6.3f} {fl['mma']:>6.3f} {fl['hbm']:>6.3f} "
                     f"{r['predicted_ms']:>6.3f} {cudnn} {per_tap}  {r['bound']}")
    blocks = [r for r in result["launches"] if r["part"] == "block"]
    cudnn = [r["cudnn_ms"] for r in blocks if r.get("cudnn_ms") is not None]
    lines.append(f"blocks: issue floor {sum(r['floors_ms']['issue'] for r in blocks):.2f} ms, predicted "
                 f"{sum(r['predicted_ms'] for r in blocks):.2f} ms" + (f", cuDNN {sum(cudnn):.2f} ms" if cudnn else ""))
    over = [f"{r['block']} ({r['instructions_per_element_tap']:.1f})" for r in blocks
            if r.get("instructions_per_element_tap", 0) > 4]
    if over:
        lines.append("blocks above 4 thread-instructions per depthwise element-tap (i/tap): " + ", ".join(over))
    if any(not r.get("counted", True) for r in result["launches"]):
        lines.append("* alone, as fuse_block runs it: the network runs it inside another launch (stem + block 1), "
                     "so it is in the blocks' sum above but not in the total below")
    what = f"{result['network']} at {result['resolution']} px, " if result.get("network") else ""
    lines.append(f"total predicted (stem, blocks, head, classifier): {result['total_predicted_ms']:.2f} ms "
                 f"on {result['gpu']}, {what}batch {result['batch']}, {result['dtype']}, Triton {result['triton']}")
    return "\n".join(lines)


def add_arguments(ap) -> None:
    """The options of `mnv2-fast perf-model` (and of python -m mnv2_fast.tools.perf_model)."""
    ap.add_argument("--calibrate", action="store_true", help="fit to the calibration set and print the comparison")
    ap.add_argument("--recalibrate", metavar="SUMMARY_JSON",
                    help="fit to the fused blocks a GPU run measured (bench/results/<run>/summary.json; where its "
                         "model faulted, the layers its diagnosis timed) and print prediction, refit and measurement "
                         "side by side")
    ap.add_argument("--gpu", choices=sorted(GPUS), help="default: h200; with --recalibrate, the run's own GPU")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--model", default="mobilenet_v2", metavar="NAME",
                    help="mobilenet_v2 (default: the shipped launches, with cuDNN's measured times), or a model of "
                         "the family by name (e.g. efficientnet_lite0, mnasnet1_0, mobilenetv4_conv_small; "
                         "tools/zoo.py), as optimize() runs it")
    ap.add_argument("--resolution", type=int, help="input side in pixels (default: 224; the model's own for others)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--sass-dir", help="write each launch's SASS here")


def run(args) -> int:
    import sys

    if args.calibrate:
        fitted, kernels = calibrate()
        print(comparison_table(kernels, fitted))
        for p in P_CHOICES:
            print(f"p = {p}:", fit([(k.features, k.measured_ms) for k in kernels], "h200", (p,)).summary())
        print("chosen:", fitted.summary())
        return 0
    if args.recalibrate:
        summary = json.loads(Path(args.recalibrate).read_text())
        ran_on = summary.get("gpu_slug")
        if args.gpu and ran_on in GPUS and ran_on != args.gpu:
            print(f"{args.recalibrate} was measured on {ran_on}, not {args.gpu}", file=sys.stderr)
            return 2
        gpu = args.gpu or (ran_on if ran_on in GPUS else "h200")
        rows = measured_blocks(summary, gpu)
        if len(rows) < 3:
            print(f"{args.recalibrate}: {len(rows)} fused block(s) with a time and a config_json; the fit needs "
                  "at least 3", file=sys.stderr)
            return 2
        fitted, table = recalibrate(rows, gpu)
        print(recalibration_table(fitted, table))
        if args.json:
            Path(args.json).write_text(json.dumps({"gpu": gpu, "summary": args.recalibrate,
                                                   "shipped": CALIBRATED.as_dict(), "refit": fitted.summary(),
                                                   "blocks": table}, indent=1) + "\n")
        return 0
    import torch

    result = analyse_network(args.batch, getattr(torch, args.dtype), args.gpu or "h200", args.sass_dir,
                             log=lambda m: print(m, file=sys.stderr, flush=True), model=args.model,
                             resolution=args.resolution)
    path = calibration_dir()
    if (path / "kernels.json").is_file():
        fitted, _ = calibrate(path)
        result["calibration"] = {k: v for k, v in fitted.summary().items() if k != "worst_error"}
    else:  # the constants fitted when the set was last at hand
        result["calibration"] = {**CALIBRATED.as_dict(), "note": f"calibration set not found at {path.name}"}
    print(network_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mnv2_fast.tools.perf_model", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
