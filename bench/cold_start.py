"""Cold start: the first forward of the fused MobileNetV2, Triton compilation included.

    TRITON_CACHE_DIR=$(mktemp -d) python bench/cold_start.py OUT.json

Run it in a fresh process with an empty Triton cache (bench/gpu_run.sh does), or the number
measures cache loading instead of compilation.  Writes {"cold_start_s": ..., ...} to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("cold_start: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    from mnv2_fast import mobilenet_v2, optimize
    from mnv2_fast.tools.testing import randomize_bn

    model = randomize_bn(mobilenet_v2()).eval()
    x = torch.randn(256, 3, 224, 224, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    fast = optimize(model).to("cuda", torch.float16)
    with torch.no_grad():
        fast(x)
    torch.cuda.synchronize()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        fast(x)
    torch.cuda.synchronize()
    warm = time.perf_counter() - start
    # Batch 1 launches other configs (the tables' batch <= 8 entries): run them here too, so that
    # a kernel that faults there fails this step (bench/gpu_run.sh then diagnoses) rather than
    # the benchmarks' batch-1 case, which would take every later case of its process with it.
    x1 = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.float16)
    start = time.perf_counter()
    with torch.no_grad():
        fast(x1)
    torch.cuda.synchronize()
    first_b1 = time.perf_counter() - start
    result = {"cold_start_s": round(cold, 2), "second_call_s": round(warm, 4), "batch": 256, "dtype": "float16",
              "batch1_first_call_s": round(first_b1, 2),
              "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR", "default")}
    with open(argv[0], "w") as f:
        json.dump(result, f, indent=1)
    print(f"cold start (first forward, batch 256 fp16, compilation included): {cold:.1f} s; second call {warm:.3f} s; "
          f"then batch 1's first call (its own configs compiled): {first_b1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
