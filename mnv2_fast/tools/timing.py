"""Device timing and the run's facts, shared by `mnv2-fast bench`, `mnv2-fast tune` and bench/.

Timings are CUDA-event intervals around each call after a warm-up, reported as the median
of many repeats.  Inputs rotate through a pool larger than L2, so a small block does not
read its input from cache every time (the network never does).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

L2_ROTATE_BYTES = 256 << 20  # > the 50-60 MB L2 of H100/H200


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def input_pool(make: Callable[[], torch.Tensor], nbytes_each: int) -> list[torch.Tensor]:
    """Enough distinct inputs that cycling through them defeats the L2 cache (at most 64)."""
    count = max(1, min(64, -(-L2_ROTATE_BYTES // max(nbytes_each, 1))))
    return [make() for _ in range(count)]


def nhwc_input_pool(shape: tuple[int, ...], dtype: torch.dtype, device) -> list[torch.Tensor]:
    """Random channels_last inputs of `shape`, enough of them that rotating defeats the L2."""
    numel = 1
    for d in shape:
        numel *= d
    return input_pool(lambda: torch.randn(shape, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last), numel * dtype.itemsize)


def first_call(build: Callable[[], Callable], x: torch.Tensor) -> tuple[Callable, float, object]:
    """Build a provider and run it once: (fn, seconds a user waits for the first result,
    Triton JIT, torch.compile or CUDA-graph capture included, that result)."""
    start = time.perf_counter()
    fn = build()
    y = fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return fn, time.perf_counter() - start, y


def warm_up(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor], *, calls: int = 1,
            seconds: float = 0.0) -> int:
    """Call fn at least `calls` times and for at least `seconds` of GPU time (clocks ramp up,
    caches and autotuners settle); return the number of calls.  The calls go in batches
    sized from the time of the last batch, so a fast kernel is not synchronised per call."""
    done, batch, elapsed_ms = 0, max(1, calls), 0.0
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn(inputs[done % len(inputs)])
            done += 1
        end.record()
        end.synchronize()
        batch_ms = start.elapsed_time(end)
        elapsed_ms += batch_ms
        left_ms = seconds * 1e3 - elapsed_ms
        if done >= calls and left_ms <= 0:
            return done
        per_call = max(batch_ms / batch, 1e-3)
        batch = max(1, min(int(left_ms / per_call) + 1, 4 * batch, 100_000), calls - done)


def time_cuda(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor], *, warmup: int = 10,
              reps: int = 50, warmup_s: float = 0.0) -> Timing:
    """Median device time of fn(x) in ms, CUDA events around each call, inputs rotated, after
    a warm-up of at least `warmup` calls and `warmup_s` seconds of GPU time."""
    warm_up(fn, inputs, calls=warmup, seconds=warmup_s)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fn(inputs[i % len(inputs)])
        ends[i].record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    q = statistics.quantiles(ms, n=5) if len(ms) > 1 else [ms[0]] * 4
    return Timing(statistics.median(ms), ms[0], q[0], q[3], reps)


def peak_memory_mb(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    """Peak memory allocated during one call, beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_cuda(lambda s: dst.copy_(s), [src], warmup=3, reps=reps)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9


def git_commit() -> str:
    """MNV2_COMMIT when set (bench/gpu_run.sh sets it: a copy of the tree on a GPU machine may
    have no .git), else the checkout's commit, else "unknown"."""
    if os.environ.get("MNV2_COMMIT"):
        return os.environ["MNV2_COMMIT"]
    try:
        root = Path(__file__).resolve().parent  # anywhere inside the checkout
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_facts() -> dict:
    """What a result set must say about where it was measured."""
    import triton

    from ..kernels.tuned import gpu_slug

    facts = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "commit": git_commit(),
        "allow_tf32": torch.backends.cudnn.allow_tf32,  # fp32 convs and the fused kernels follow it
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # cuDNN's algorithm autotuning, off by default
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_slug=gpu_slug(props.name), sm_count=props.multi_processor_count,
                     driver=driver_version(), cuda=torch.version.cuda)
    else:
        facts.update(gpu="none", gpu_slug=None, sm_count=0, driver="none", cuda=None)
    return facts
