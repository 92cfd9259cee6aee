"""Compile every shipped launch configuration for Hopper (sm_90) without a GPU and check it fits:
shared memory within the per-block limit, no spills, at most 255 registers.

    python -m mnv2_fast.tools.static_check        (also: mnv2-fast static-check)
"""

from __future__ import annotations

import sys
import time

from .interpreter import use_compiler
from .inventory import shipped_launches, variant


def describe(cfg) -> str:
    """A config in one short line: tile, chunk, warps, register cap, programs per SM."""
    warps = f"w{cfg.num_warps} s{cfg.num_stages}"
    d = cfg.to_dict()
    if "block_hid" in d:
        reg = f" r{d['maxnreg']}" if d["maxnreg"] else ""
        return (f"{d['imgs']}x{d['tile_h']}x{d['tile_w']} h{d['block_hid']}{'' if d['x_resident'] else ' reload'} "
                f"{warps}{reg} p{d['programs_per_sm']}")
    return " ".join(f"{k.lower()}={v}" for k, v in cfg.constexprs().items()) + f" {warps}"


def run(arch: int = 90, out=sys.stdout) -> list[dict]:
    use_compiler()
    from ..kernels.aot import compile_variant, problems, resources

    rows, seen = [], {}
    launches = shipped_launches()
    t0 = time.time()
    for i, launch in enumerate(launches):
        fn, args = variant(launch)
        key = (fn.__name__ if hasattr(fn, "__name__") else str(fn), tuple(sorted(args.items())), launch.dtype)
        if key not in seen:
            seen[key] = resources(compile_variant(fn, args, launch.dtype, arch=arch))
            print(f"[{i + 1}/{len(launches)}] compiled {launch.label} {str(launch.dtype)[6:]}", file=sys.stderr,
                  flush=True)
        res = seen[key]
        mma = {op: n for op, n in res.sass_ops.items() if op in ("HGMMA", "HMMA", "QGMMA")}
        rows.append(dict(kind=launch.kind, label=launch.label, dtype=str(launch.dtype)[6:],
                         config=describe(launch.config), registers=res.registers, shared=res.shared,
                         local=res.local, stack=res.stack, mma=mma, problems=problems(res)))
    print(f"{'launch':<34} {'dtype':<8} {'config':<44} {'regs':>4} {'shared':>7} {'local':>5} {'stack':>5}  mma / status",
          file=out)
    for r in rows:
        mma = ",".join(f"{k}:{v}" for k, v in r["mma"].items()) or "none"
        status = "; ".join(r["problems"]) or "ok"
        print(f"{r['label']:<34} {r['dtype']:<8} {r['config']:<44} {r['registers']:>4} {r['shared']:>7} "
              f"{r['local']:>5} {r['stack']:>5}  {mma} / {status}", file=out)
    print(f"{len(rows)} launches, {len(seen)} distinct variants compiled for sm_{arch} in {time.time() - t0:.0f} s",
          file=out)
    return rows


def main(argv=None) -> int:
    rows = run()
    bad = [r for r in rows if r["problems"]]
    if bad:
        print(f"FAIL: {len(bad)} launch(es) do not fit", file=sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
