"""Run every shipped launch configuration once on a small input, checking its numerics.

Meant to run under compute-sanitizer (bench/gpu_run.sh does):

    compute-sanitizer --tool memcheck python -m mnv2_fast.tools.sanitize

Triton has generated out-of-bounds shared-memory reads for some configurations; memcheck
reports those, and this exits non-zero when any launch fails or disagrees with PyTorch.
"""

from __future__ import annotations

import sys
import time

import torch


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mnv2_fast.tools.sanitize", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--kind", action="append", choices=["block", "stem", "head", "linear"], help="only these kinds")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitize: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    from .inventory import run_once, shipped_launches

    launches = [launch for launch in shipped_launches() if not args.kind or launch.kind in args.kind]
    failed = []
    t0 = time.time()
    for i, launch in enumerate(launches):
        try:
            ratio = run_once(launch, torch.device("cuda"), args.batch)
            status = "ok" if ratio <= 1.0 else f"WRONG (error {ratio:.2f} x tolerance)"
        except Exception as err:  # report every launch, then fail
            ratio, status = float("nan"), f"ERROR {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        if status != "ok":
            failed.append(launch.label)
        print(f"[{i + 1}/{len(launches)}] {launch.label} {str(launch.dtype)[6:]}: {status}", flush=True)
    print(f"sanitize: {len(launches) - len(failed)} of {len(launches)} launches ok in {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
