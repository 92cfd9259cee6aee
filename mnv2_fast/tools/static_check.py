"""Compile every shipped launch configuration for Hopper (sm_90) without a GPU and check it fits:
shared memory within the per-block limit, no spills, at most 255 registers.

    python -m mnv2_fast.tools.static_check        (also: mnv2-fast static-check)
"""

from __future__ import annotations

import os
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
        return (f"{d['imgs']}x{d['tile_h']}x{d['tile_w']}{' image' if d.get('stage_image') else ''}"
                f"{' join' if d.get('join_pairs') else ''}{' quads' if d.get('quads') else ''}{' tall' if d.get('tall') else ''}"
                f"{' strip' + str(d['strip']) if d.get('strip') else ''}"
                f"{'' if d.get('stage_vectors', True) else ' tlstore'}{' apart' if d.get('project_apart') else ''}"
                f"{' split' + str(d['hidden_split']) if d.get('hidden_split', 1) > 1 else ''}"
                f"{'' if d.get('packed_dw', True) else ' dw32'}{' remat' if d.get('recompute_sets') else ''} "
                f"h{d['block_hid']}{'/' + str(d['stage_hid']) if d.get('stage_hid') else ''}"
                f"{'' if d['x_resident'] else ' reload'} "
                f"{warps}{reg} p{d['programs_per_sm']}")
    return " ".join(f"{k.lower()}={v}" for k, v in cfg.constexprs().items()) + f" {warps}"


_LAUNCHES: list = []  # what the compile workers read (inherited when they fork)


def _key(launch) -> tuple:
    """The compiled variant a launch runs: kernel, constexprs and launch options, dtype."""
    fn, args = variant(launch)
    return getattr(fn, "__name__", str(fn)), tuple(sorted(args.items())), launch.dtype


def _compile(i: int, arch: int):
    from ..kernels.aot import compile_variant, resources

    launch = _LAUNCHES[i]
    fn, args = variant(launch)
    res = resources(compile_variant(fn, args, launch.dtype, arch=arch))
    print(f"compiled {launch.label} {str(launch.dtype)[6:]}", file=sys.stderr, flush=True)
    return res


def run(arch: int = 90, out=sys.stdout, jobs: int | None = None) -> list[dict]:
    """jobs: processes compiling at once (default: the CPUs this process may use)."""
    use_compiler()
    from ..kernels.aot import problems

    launches = shipped_launches()
    firsts: dict = {}  # variant -> the first launch that compiles to it
    for i, launch in enumerate(launches):
        firsts.setdefault(_key(launch), i)
    t0 = time.time()
    _LAUNCHES[:] = launches
    jobs = jobs or len(os.sched_getaffinity(0))
    if jobs > 1:  # ptxas runs one variant per process: compile several at once
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            found = dict(zip(firsts, pool.map(_compile, firsts.values(), [arch] * len(firsts))))
    else:
        found = {key: _compile(i, arch) for key, i in firsts.items()}
    rows = []
    for launch in launches:
        res = found[_key(launch)]
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
    print(f"{len(rows)} launches, {len(found)} distinct variants compiled for sm_{arch} in {time.time() - t0:.0f} s "
          f"({jobs} processes)", file=out)
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
