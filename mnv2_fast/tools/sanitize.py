"""Run every shipped launch configuration once on a small input, checking its numerics.

Meant to run under compute-sanitizer (bench/gpu_run.sh does):

    compute-sanitizer --tool memcheck python -m mnv2_fast.tools.sanitize
    compute-sanitizer --tool racecheck python -m mnv2_fast.tools.sanitize --one-per-path

--shard I/N takes every N-th launch from the I-th, so N processes share the work (warming
Triton's cache, or under the sanitizer); --list prints the selection and needs no GPU.

Triton has generated out-of-bounds shared-memory reads for some configurations; memcheck
reports those, and this exits non-zero when any launch fails or disagrees with PyTorch.
"""

from __future__ import annotations

import sys
import time

import torch


def one_multiprocessor() -> None:
    """From now on in this process, the block kernels' persistent grid is sized as for a GPU of
    one multiprocessor (programs_per_sm programs), so each program walks many tiles."""
    from ..kernels import block

    block._sm_count = lambda index: 1  # what programs_for asks the driver for


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mnv2_fast.tools.sanitize", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--kind", action="append", choices=["block", "stem", "head", "linear"], help="only these kinds")
    p.add_argument("--one-per-path", action="store_true",
                   help="only the first fp16 block config of each stride with an expand stage, and of the "
                        "blocks without one (the kernel's three code paths)")
    p.add_argument("--one-sm", action="store_true",
                   help="size the block kernels' persistent grid as for a GPU of one multiprocessor: each program "
                        "then walks many tiles, as at large batches (at --batch 2 on a whole GPU each has at most one)")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="every N-th launch, from the I-th (default 0/1)")
    p.add_argument("--list", action="store_true", help="print the selected launches and exit (no GPU needed)")
    args = p.parse_args(argv)
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        p.error(f"--shard {args.shard!r}: expected I/N with 0 <= I < N")
    index, count = int(index), int(count)
    if not args.list and not torch.cuda.is_available():
        print("sanitize: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    from .inventory import run_once, shipped_launches

    if args.one_sm:
        one_multiprocessor()

    launches = [launch for launch in shipped_launches() if not args.kind or launch.kind in args.kind]
    if args.one_per_path:
        firsts: dict = {}
        blocks = [b for b in launches if b.kind == "block" and b.dtype == torch.float16]
        for launch in sorted(blocks, key=lambda b: not b.label.startswith("w1.0 ")):  # width 1.0 first
            firsts.setdefault((launch.shape.has_expand, launch.shape.stride), launch)
        launches = [firsts[g] for g in sorted(firsts)]
    launches = launches[index::count]
    if args.list:
        for launch in launches:
            print(f"{launch.label} {str(launch.dtype)[6:]}: {launch.config}")
        print(f"sanitize: {len(launches)} launches selected (shard {index}/{count})")
        return 0
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
