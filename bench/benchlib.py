"""What the benchmark suites share: settings (from --smoke and MNV2_BENCH_* variables), the
phases and their order, the measurement protocol, and the run facts stored with the results.

Importing this module does not import triton: conftest.py must be able to switch Triton's
interpreter on first.

Environment knobs (comma-separated lists; the order is the run order, so the headline
cases come first and survive a run cut short by its deadline):

    MNV2_BENCH_SMOKE=1       same as --smoke
    MNV2_BENCH_PHASE         all (default), headline, rest, family or compile: which cases run (below)
    MNV2_BENCH_BATCHES       default 256,1,32 (smoke: always 1)
    MNV2_BENCH_DTYPES        default float16,float32
    MNV2_BENCH_PROVIDERS     default: every provider of the suite
    MNV2_BENCH_BLOCKS        default 1-17 (block indices, e.g. 1,2,17)
    MNV2_BENCH_REPEATS       times each headline model case runs, interleaved, default 3 (smoke: 1)
    MNV2_BENCH_REPS          CUDA-event repeats per measurement, default 30
    MNV2_BENCH_WARMUP_S      seconds of GPU time spent warming up before timing, default 0.2
    MNV2_BENCH_WARMUP        calls before timing, at least (default 1)
    MNV2_BENCH_ROUNDS        rounds of pytest-benchmark's own (synchronised) timing, default 5
    MNV2_BENCH_DEADLINE      unix time after which no further benchmark starts (gpu_run.sh
                             sets it, so pytest ends in time to write its JSON)
    MNV2_BENCH_COMPILE_S     expected seconds of one torch.compile case before any has been
                             timed, default 90 (model) and 40 (block); a compile case starts
                             only when that much time is left before the deadline

Phases, in run order (each case belongs to one):
    headline   whole model at float16, batches 256 and 1, providers fused, fused_graph, eager_cl,
               eager_cl_folded, each MNV2_BENCH_REPEATS times as interleaved rounds (every
               provider once, then again); between the first round and the others, the 17
               blocks at float16 batch 256 with those providers (batch 1 in smoke mode)
    rest       everything else but torch.compile, whole model first
    family     other models of the family (test_bench_family.py), float16 batch 256: fused and
               eager first, then their torch.compile cases
    compile    torch.compile of MobileNetV2, last across both its suites (each case costs a
               compilation)
The eager baselines run with cuDNN's autotuning (torch.backends.cudnn.benchmark) off and on.
"""

from __future__ import annotations

import itertools
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from mnv2_fast.tools.providers import BLOCK_PROVIDERS, MODEL_PROVIDERS
from mnv2_fast.tools.testing import MODEL_TOLERANCE_FACTOR, error_ratio, reference64
from mnv2_fast.tools.timing import (copy_bandwidth_gbps, first_call, nhwc_input_pool, peak_memory_mb, run_facts,
                                    time_cuda)

DTYPE_NAMES = ("float16", "bfloat16", "float32")
NUM_BLOCKS = 17
ALL_PROVIDERS = tuple(dict.fromkeys(MODEL_PROVIDERS + BLOCK_PROVIDERS))
PHASES = ("headline", "rest", "family", "compile")
HEADLINE_DTYPE = "float16"
HEADLINE_MODEL_BATCHES = (256, 1)
HEADLINE_BLOCK_BATCH = 256
HEADLINE_PROVIDERS = ("fused", "fused_graph", "eager_cl", "eager_cl_folded")
EAGER_PROVIDERS = ("eager_cl", "eager_cl_folded")  # timed with cudnn.benchmark off and on
COMPILE_EXPECTED_S = {"model": 90.0, "block": 40.0, "family": 90.0}
SMOKE_COMPILE_EXPECTED_S = 15.0


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: torch.device
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    providers: tuple[str, ...]  # a filter: each suite keeps those it knows, in this order
    blocks: tuple[int, ...]
    phase: str  # "all" or one of PHASES
    repeats: int
    reps: int
    warmup: int
    warmup_s: float
    rounds: int
    deadline: float | None
    compile_s: float | None  # MNV2_BENCH_COMPILE_S, None: the suite's default

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        where = f"cuda ({torch.cuda.get_device_name()})" if self.on_gpu else "cpu, Triton interpreter"
        mode = "smoke (code paths only, no timing claims)" if self.smoke else "full"
        text = (f"mnv2 bench: {mode} on {where}; phase {self.phase}; batches {list(self.batches)}, "
                f"dtypes {list(self.dtypes)}, providers {list(self.providers)}, headline repeats {self.repeats}, "
                f"reps {self.reps}, warm-up {self.warmup_s} s (>= {self.warmup} calls), rounds {self.rounds}")
        if self.deadline:
            text += f"; deadline in {self.deadline - time.time():.0f} s"
        return text


def _env_list(name: str, default: str, convert: Callable[[str], object], allowed=None) -> tuple:
    text = os.environ.get(name, "") or default
    try:
        values = tuple(convert(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise pytest.UsageError(f"{name}={text!r}: not a comma-separated list of the right type") from None
    bad = [v for v in values if allowed is not None and v not in allowed]
    if not values or bad:
        raise pytest.UsageError(f"{name}={text!r}: {'unknown ' + str(bad) if bad else 'empty'}; "
                                f"allowed: {', '.join(map(str, allowed)) if allowed else 'positive integers'}")
    return values


def _env_int(name: str, default: int, smallest: int = 0) -> int:
    text = os.environ.get(name, "") or str(default)
    if not text.isdigit() or int(text) < smallest:
        raise pytest.UsageError(f"{name}={text!r}: expected an integer >= {smallest}")
    return int(text)


def _env_seconds(name: str, default: float | None) -> float | None:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise pytest.UsageError(f"{name}={text!r}: expected a number of seconds >= 0")
    return value


def _blocks(text: str) -> list[int]:
    lo, _, hi = text.partition("-")  # "1-17" or "5"
    return list(range(int(lo), int(hi or lo) + 1))


_SETTINGS = pytest.StashKey[Settings]()


def settings(config: pytest.Config) -> Settings:
    """The run's settings, parsed once per session (bad knobs are usage errors)."""
    if _SETTINGS not in config.stash:
        smoke = bool(config.getoption("--smoke")) or os.environ.get("MNV2_BENCH_SMOKE", "") not in ("", "0")
        on_gpu = torch.cuda.is_available()
        blocks = sorted({b for part in _env_list("MNV2_BENCH_BLOCKS", "1-17", _blocks) for b in part})
        if not blocks or blocks[0] < 1 or blocks[-1] > NUM_BLOCKS:
            raise pytest.UsageError(f"MNV2_BENCH_BLOCKS: block indices run from 1 to {NUM_BLOCKS}")
        phase = os.environ.get("MNV2_BENCH_PHASE", "") or "all"
        if phase not in ("all",) + PHASES:
            raise pytest.UsageError(f"MNV2_BENCH_PHASE={phase!r}: expected all or one of {', '.join(PHASES)}")
        config.stash[_SETTINGS] = Settings(
            smoke=smoke,
            device=torch.device("cuda" if on_gpu else "cpu"),
            batches=(1,) if smoke else _env_list("MNV2_BENCH_BATCHES", "256,1,32", int),
            dtypes=_env_list("MNV2_BENCH_DTYPES", "float16,float32", str, DTYPE_NAMES),
            providers=_env_list("MNV2_BENCH_PROVIDERS", ",".join(ALL_PROVIDERS), str, ALL_PROVIDERS),
            blocks=tuple(blocks),
            phase=phase,
            # Smoke: one call each, no warm-up loops, no repeats; only the code paths matter.
            repeats=1 if smoke else _env_int("MNV2_BENCH_REPEATS", 3, 1),
            reps=2 if smoke else _env_int("MNV2_BENCH_REPS", 30, 1),
            warmup=0 if smoke else _env_int("MNV2_BENCH_WARMUP", 1),
            warmup_s=0.0 if smoke else _env_seconds("MNV2_BENCH_WARMUP_S", 0.2),
            rounds=1 if smoke else _env_int("MNV2_BENCH_ROUNDS", 5, 1),
            deadline=_env_seconds("MNV2_BENCH_DEADLINE", None),
            compile_s=_env_seconds("MNV2_BENCH_COMPILE_S", None),
        )
        if min(config.stash[_SETTINGS].batches) < 1:
            raise pytest.UsageError("MNV2_BENCH_BATCHES: batch sizes must be positive")
    return config.stash[_SETTINGS]


# Marks a generated case that the suite's rules leave out; conftest deselects it, so it is
# counted as deselected instead of passing without measuring anything.
DESELECT = pytest.mark.bench_deselect


def phase_of(s: Settings, provider: str, dtype: str, batch: int, block: int | None = None,
             network: str | None = None) -> str:
    """The phase a case runs in (see the module docstring)."""
    if network is not None:  # the family's other models: a phase of their own, torch.compile included
        return "family"
    if provider == "compile":
        return "compile"
    if provider in HEADLINE_PROVIDERS and dtype == HEADLINE_DTYPE:
        if block is None and batch in HEADLINE_MODEL_BATCHES:
            return "headline"
        if block is not None and batch == (1 if s.smoke else HEADLINE_BLOCK_BATCH):
            return "headline"
    return "rest"


def case_marks(s: Settings, measured: bool, phase: str) -> tuple:
    """DESELECT for a case the suite's rules or the chosen phase leave out."""
    return () if measured and s.phase in ("all", phase) else (DESELECT,)


def cudnn_benchmark_modes(provider: str) -> tuple:
    """cudnn.benchmark settings a provider is timed with: both for the eager baselines (None:
    left as it is, recorded as it was)."""
    return (False, True) if provider in EAGER_PROVIDERS else (None,)


def case_id(provider: str, dtype: str, batch: int, cudnn_benchmark: bool | None, repeat: int = 0) -> str:
    return (f"{provider}-{dtype}-bs{batch}" + ("-cudnn_benchmark" if cudnn_benchmark else "")
            + (f"-repeat{repeat}" if repeat else ""))


def run_order(s: Settings, suite: str, phase: str, repeat: int, provider: str = "") -> tuple:
    """Sort key of a case: headline (model round 1, blocks, further model rounds), then the
    rest (model first), then the family (torch.compile last), then torch.compile (model first)."""
    suite_rank = ("model", "block", "family").index(suite)
    if phase == "headline":
        return (0, repeat > 0, repeat, suite_rank)
    if phase == "family":
        return (PHASES.index(phase), provider == "compile", 0, suite_rank)
    return (PHASES.index(phase), 0, 0, suite_rank)


@contextmanager
def cudnn_benchmark(mode: bool | None):
    """torch.backends.cudnn.benchmark = mode inside (None: untouched)."""
    old = torch.backends.cudnn.benchmark
    if mode is not None:
        torch.backends.cudnn.benchmark = mode
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def expected_compile_s(s: Settings, suite: str, seen: dict) -> float:
    """Seconds one torch.compile case of `suite` is expected to take: the longest seen so far
    in this session, else MNV2_BENCH_COMPILE_S, else the suite's default."""
    if seen.get(suite):
        return max(seen[suite])
    if s.compile_s is not None:
        return s.compile_s
    return SMOKE_COMPILE_EXPECTED_S if s.smoke else COMPILE_EXPECTED_S[suite]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, fn: Callable, inputs: list[torch.Tensor], s: Settings) -> dict:
    """Time fn the authoritative way (CUDA events, see mnv2_fast.tools.timing) and let pytest-benchmark
    time a few synchronised calls so its JSON is complete.  Off the GPU nothing is timed: the
    interpreter is no speed measure, so ms is None."""
    info: dict = {"ms": None, "min_ms": None, "p20_ms": None, "p80_ms": None, "reps": 0, "peak_mem_mb": None}
    if s.on_gpu:
        t = time_cuda(fn, inputs, warmup=s.warmup, warmup_s=s.warmup_s, reps=s.reps)
        info.update(ms=t.median_ms, min_ms=t.min_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
                    peak_mem_mb=peak_memory_mb(fn, inputs[0]))
    info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    nxt = itertools.cycle(inputs).__next__

    def call():
        fn(nxt())
        _sync(s.device)

    benchmark.pedantic(call, rounds=s.rounds, iterations=1, warmup_rounds=0)
    return info


def run_case(benchmark, s: Settings, provider: str, make: Callable, module: torch.nn.Module, shape: tuple,
             dtype: torch.dtype, cudnn_mode: bool | None, whole_model: bool) -> dict:
    """One case of a suite, under its cudnn.benchmark mode: a pool of inputs of `shape`, seeded
    (the providers of one module get the same inputs: one float64 reference serves them), the
    provider built by make() and called once (`first_call`), timed (`measure`) and its first
    output checked (`check_output`).  measure()'s info, with first_call_s and error_ratio."""
    torch.manual_seed(0)
    inputs = nhwc_input_pool(shape, dtype, s.device)
    with cudnn_benchmark(cudnn_mode):
        fn, first_s, first_y = first_call(make, inputs[0])
        info = measure(benchmark, fn, inputs, s)
        info.update(first_call_s=first_s,
                    error_ratio=check_output(first_y, module, inputs[0], provider, s, whole_model))
    return info


_REFERENCES: dict = {}


def check_output(out: torch.Tensor, module: torch.nn.Module, x: torch.Tensor, provider: str, s: Settings,
                 whole_model: bool) -> float | None:
    """Smoke runs (off the GPU): a provider's output on x (its first call's) against the
    unfused module in float64, as the error over the tolerance table's bound (a whole model:
    MODEL_TOLERANCE_FACTOR times it).  A fused provider beyond its bound fails the case: a fast
    wrong kernel is no result.  The baselines' ratios are only recorded.  On the GPU the suites
    time, and the tests check."""
    if s.on_gpu:
        return None
    key = (id(module), x.dtype, tuple(x.shape), x.double().sum().item())
    if key not in _REFERENCES:  # the module is kept alive with it, so that its id is never reused
        _REFERENCES[key] = (module, reference64(module, x))
    ratio = error_ratio(out.detach().cpu().to(torch.float64), _REFERENCES[key][1], x.dtype,
                        MODEL_TOLERANCE_FACTOR if whole_model else 1.0)
    assert not provider.startswith("fused") or ratio <= 1.0, (
        f"{provider}: error is {ratio:.3g} x the {x.dtype} tolerance")
    return ratio


_FACTS = pytest.StashKey[dict]()


def run_info(config: pytest.Config) -> dict:
    """The facts a result set carries (once per session): run_facts() of this process, the
    copy bandwidth measured here (None in smoke runs), and the settings."""
    if _FACTS not in config.stash:
        s = settings(config)
        facts = run_facts()
        facts.update(
            smoke=s.smoke,
            device=str(s.device),
            copy_gbps=round(copy_bandwidth_gbps(), 1) if s.on_gpu and not s.smoke else None,
            reps=s.reps,
            warmup=s.warmup,
            warmup_s=s.warmup_s,
            repeats=s.repeats,
        )
        config.stash[_FACTS] = facts
    return config.stash[_FACTS]
