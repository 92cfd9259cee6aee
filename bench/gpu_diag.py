"""Which fused layers fail on a GPU, why, and how fast the others run: for a run in which the
whole fused model dies (an illegal address in one kernel ends the CUDA context, and every
later measurement of that process with it).

    python bench/gpu_diag.py OUT_DIR [--batch 256,1] [--dtype float16] [--budget-s 150]

* The fused MobileNetV2 runs one layer at a time (stem with block 1, 16 blocks, head, classifier),
  synchronised after each, in a worker process, each layer on the fused chain's own output
  and checked against the unfused layer in float64 on the same input (its error over the
  dtype's tolerance, as the tests count it).  When a layer kills the worker, a fresh worker
  goes on past it, with the unfused layer in its place.
* Each layer that ran is timed against the unfused layer under cuDNN (channels_last;
  cudnn.benchmark off and on), and the whole model (failed layers unfused) against eager
  cuDNN; at batch <= 8 also as a CUDA graph.
* Each failed block runs again on its own, each time in a fresh process: as shipped three
  times (does it fault every time?), with the Triton twins of the inline-PTX paths
  (MNV2_INLINE_PTX=0), with mma.sync for wgmma (DISABLE_MMA_V3=1), with each switch of its
  config off in turn, with half the warps, and without its register cap: which variants
  survive says which path faults.  With compute-sanitizer installed, the failed
  layer runs once under memcheck, whose report names the kernel and its source line.

Exit status: 1 when a layer faulted, else 3 when one computed a wrong result, else 0.
OUT_DIR gets diag.jsonl (one record per event: layer checked, layer timed, worker died,
variant tried, model timed), worker logs and memcheck logs.  Budgets: --budget-s in all;
variants and memcheck take what the layer passes leave.  --device cpu runs the same passes
through Triton's interpreter (TRITON_INTERPRET=1, tiny sizes, no timing): the restarts and
the records can be checked without a GPU; --fail-at LAYER makes a worker die at that layer
where it runs the shipped config as built by default, as a faulting kernel would.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Variants that change the environment, not the config: the Triton twins of the inline-PTX
# paths; the tensor-core products as mma.sync instead of wgmma (Triton's own switch; the
# products then take registers, and some configs spill).
ENV_VARIANTS = {"no inline PTX": {"MNV2_INLINE_PTX": "0"}, "no wgmma": {"DISABLE_MMA_V3": "1"}}
MAX_RESTARTS = 6  # per batch: more failing layers than this and the run is better spent elsewhere
SWITCHES = ("acc16", "strip", "tall", "stage_vectors", "packed_dw", "recompute_sets", "quads", "join_pairs", "stage_image",
            "project_apart")


# ---------------------------------------------------------------- worker: runs on the device
def _layers(fast, ref16, ref64):
    """(name, fused, unfused in the run's dtype, unfused in float64) of each layer, in order.  A
    layer another one absorbed (features.1, run in features.0's kernel with the stem) is no layer
    of its own: its unfused modules follow the absorbing layer's."""
    import torch.nn as nn

    out = []
    for i, (f, r, r64) in enumerate(zip(fast.features, ref16.features, ref64.features)):
        if isinstance(f, nn.Identity) and not isinstance(r, nn.Identity) and out:
            name, g, q, q64 = out[-1]
            out[-1] = (name, g, nn.Sequential(q, r), nn.Sequential(q64, r64))
        else:
            out.append((f"features.{i}", f, r, r64))
    return out + [("classifier", fast.classifier, ref16.classifier, ref64.classifier)]


def _layer_input(name, h):
    """The classifier reads the pooled, flattened map (the fused head already pooled it)."""
    import torch.nn.functional as F

    return F.adaptive_avg_pool2d(h, 1).flatten(1) if name == "classifier" else h


def _block_launch(fused, inp, dtype, batch, device) -> tuple[object, dict]:
    """A block's config on this input (its pinned one, else the table's) and where it comes
    from: its shape, the batch range of the table entry covering this batch (the batch alone
    where the heuristic chose) and the GPU's table name -- what a workaround table entry
    needs.  (None, {}) for the other layers."""
    from mnv2_fast.fused import FusedInvertedResidual, FusedStemBlock
    from mnv2_fast.kernels import tuned
    from mnv2_fast.kernels.choice import choose_block_config

    if isinstance(fused, FusedStemBlock):  # the stem with block 1: a block launch too
        shape = fused.shape_at(inp.shape[2], inp.shape[3])
    elif isinstance(fused, FusedInvertedResidual):
        shape = fused.spec.at(inp.shape[2], inp.shape[3])
    else:
        return None, {}
    slug = tuned.device_slug(device)
    ranges = [(lo, hi) for table in tuned.load_tuned(slug)
              for lo, hi, _ in table.get((shape, tuned.dtype_name(dtype)), ()) if lo <= batch <= hi]
    return (fused.config or choose_block_config(shape, dtype, batch, device),
            dict(shape=shape.to_dict(), batch_range=list(ranges[0] if ranges else (batch, batch)), slug=slug))


class _Records:
    def __init__(self, path: Path, base: dict):
        self.f = open(path, "a")
        self.base = base

    def __call__(self, **rec) -> None:
        self.f.write(json.dumps({**self.base, **rec}) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())  # a record written before a fault must survive the process


def _worker(args) -> int:
    import torch

    from mnv2_fast import mobilenet_v2, optimize
    from mnv2_fast.kernels.records import BlockConfig
    from mnv2_fast.tools.testing import error_ratio, randomize_bn
    from mnv2_fast.tools.timing import input_pool, time_cuda

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)  # the same weights and input in every worker of a run
    model = randomize_bn(mobilenet_v2(width_mult=args.width), torch.Generator().manual_seed(0)).eval()
    backend = "triton"  # the kernels, also on the CPU (through the interpreter): never a silent fallback
    fast = optimize(model, backend=backend).to(device, dtype)
    ref16 = copy.deepcopy(model).to(device, dtype).to(memory_format=torch.channels_last)
    ref64 = copy.deepcopy(model).to(device, torch.float64)
    layers = _layers(fast, ref16, ref64)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(1))
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    skip = set(filter(None, args.skip.split(",")))
    rec = _Records(Path(args.jsonl), dict(batch=args.batch, dtype=args.dtype, **({"variant": args.variant}
                                                                                  if args.variant else {})))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    h, ran = x, []
    with torch.no_grad():
        for i, (name, f, r16, r64) in enumerate(layers):
            inp = _layer_input(name, h)
            if args.only is not None and name != args.only:
                if [n for n, *_ in layers].index(args.only) < i:
                    break
                h = r16(inp)  # the unfused chain up to the layer asked for
                continue
            if name in skip:
                h = r16(inp)
                continue
            if args.config:
                f.config = BlockConfig.from_dict(json.loads(args.config))
            cfg, key = _block_launch(f, inp, dtype, args.batch, device)
            rec(event="start", layer=name, config=cfg.to_dict() if cfg else None, **key)
            as_shipped = not args.config and not any(os.environ.get(k) == v for env in ENV_VARIANTS.values()
                                                     for k, v in env.items())
            if name == args.fail_at and as_shipped:
                # A stand-in for a kernel that faults as shipped: the process ends here, no record after.
                os._exit(77)
            out = f(inp)
            sync()
            if args.no_check:  # under memcheck: the fault is the question, and float64 there is slow
                rec(event="ran", layer=name)
                break
            want = r64(inp.double())
            if out.dim() == 4 and out.shape[2:] != want.shape[2:]:  # the fused head pools as well
                want = want.mean((2, 3), keepdim=True)
            ratio = error_ratio(out, want, dtype, device=device)  # on the GPU: large batches judged fast
            rec(event="checked", layer=name, error_ratio=ratio, ok=ratio <= 1.0)
            ran.append((name, f, r16, inp))
            h = out

    if args.no_time or device.type != "cuda":
        return 0
    deadline = float(os.environ.get("MNV2_DIAG_DEADLINE", "inf"))

    def timed(fn, pool):
        return round(time_cuda(fn, pool, warmup=5, reps=60, warmup_s=0.1).median_ms, 5)

    with torch.no_grad():
        for name, f, r16, inp in ran:
            if time.time() > deadline:
                rec(event="time", layer=name, skipped="budget used up")
                continue
            pool = input_pool(lambda: torch.randn_like(inp), inp.numel() * inp.element_size())
            times = dict(fused_ms=timed(f, pool))
            for bench in (False, True):
                torch.backends.cudnn.benchmark = bench
                times["cudnn_bench_ms" if bench else "cudnn_ms"] = timed(r16, pool)
            torch.backends.cudnn.benchmark = False
            rec(event="time", layer=name, **times)
        # The whole model, the failed layers unfused.
        patched = copy.deepcopy(fast)
        unfused = {name: r for name, _, r, _ in layers}
        for name in skip:
            if name.startswith("features."):
                i = int(name.split(".")[1])
                patched.features[i] = copy.deepcopy(unfused[name])  # with the layers it absorbed
        pool = input_pool(lambda: torch.randn_like(x), x.numel() * x.element_size())
        times = dict(fused_ms=timed(patched, pool), unfused_layers=sorted(skip))
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            times["cudnn_bench_ms" if bench else "cudnn_ms"] = timed(ref16, pool)
        torch.backends.cudnn.benchmark = False
        if args.batch <= 8:
            from mnv2_fast.graphs import CUDAGraphRunner

            graph = CUDAGraphRunner(patched, copy_output=False)
            times["fused_graph_ms"] = timed(graph, pool)
        rec(event="model", **times)
    return 0


# ---------------------------------------------------------------- driver: no CUDA in this process
def _worker_cmd(a, batch: int, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", a.device, "--dtype", a.dtype,
            "--batch", str(batch), "--width", str(a.width), "--resolution", str(a.resolution),
            "--jsonl", str(a.out / "diag.jsonl"), *extra]


def _run(cmd, log: Path, timeout: float, env=None) -> int:
    with open(log, "w") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1), env=env).returncode
        except subprocess.TimeoutExpired:
            return 124


def _tail(log: Path, n: int = 6) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return " | ".join(lines[-n:])[-1200:]


def _variants(cfg: dict) -> list[tuple[str, dict, dict]]:
    """(label, config to pin, extra environment) for a failed block's config: as shipped (three
    times), each environment of ENV_VARIANTS, each switch that is on turned off, half the warps,
    no register cap.  A variant its shape does not allow fails as the launcher's ValueError,
    not as a fault."""
    # None: the table's config.  As shipped three times, each a fresh process: Hopper faults of
    # Triton's own code (wgmma with several dots, in 3.6-3.7) have struck some processes and
    # spared others.
    out = [("as shipped", None, {}), ("as shipped, again", None, {}), ("as shipped, a third time", None, {})]
    out += [(label, None, env) for label, env in ENV_VARIANTS.items()]
    for s in SWITCHES:
        if cfg.get(s):
            off = dict(cfg, **{s: 0 if s == "strip" else False})
            if s in ("join_pairs", "quads"):  # what needs the switch goes with it
                off.update(quads=False, tall=False, strip=0)
            if s == "project_apart":
                off["hidden_split"] = 1
            out.append((f"{s} off", off, {}))
    if cfg.get("num_warps", 0) >= 8:  # another warpgroup layout for the tensor-core products
        out.append(("half the warps", dict(cfg, num_warps=cfg["num_warps"] // 2), {}))
    if cfg.get("maxnreg"):
        out.append(("no register cap", dict(cfg, maxnreg=None), {}))
    return out


def _layer_pass(a, batch: int, env: dict, t_end: float, counter: list[int]) -> list[tuple[str, dict]]:
    """Workers over the layers at this batch until one finishes; (layer, its start record) of
    each that died."""
    from summarize import read_jsonl  # bench/: a line cut short by a kill is skipped, not fatal

    jsonl = a.out / "diag.jsonl"
    skip: list[tuple[str, dict]] = []
    for _ in range(MAX_RESTARTS + 1):
        if time.time() > t_end - 15:
            break
        counter[0] += 1
        log = a.out / f"worker-{counter[0]}.log"
        before = len(read_jsonl(jsonl))
        extra = ["--skip", ",".join(name for name, _ in skip)] + (["--fail-at", a.fail_at] if a.fail_at else [])
        rc = _run(_worker_cmd(a, batch, *extra), log, t_end - time.time(), env)
        new = read_jsonl(jsonl)[before:]
        done = {r["layer"] for r in new if r.get("event") == "checked"}
        dead = [r for r in new if r.get("event") == "start" and r["layer"] not in done]
        if rc == 0 and not dead:
            break
        layer = dead[-1]["layer"] if dead else None
        with open(jsonl, "a") as f:
            f.write(json.dumps(dict(event="died", batch=batch, layer=layer, rc=rc, log=log.name,
                                    tail=_tail(log))) + "\n")
        print(f"batch {batch}: worker {counter[0]} ended (exit {rc}) in {layer or 'no layer (see ' + log.name + ')'}")
        if layer is None:
            break  # it died outside any layer: another worker would die the same way
        skip.append((layer, dead[-1]))
    return skip


def _investigate(a, batch: int, layer: str, cfg: dict | None, env: dict, t_end: float, memcheck: bool) -> None:
    """A failed block on its own: its config's variants side by side (in parallel: a fault ends
    only its own process), then, with compute-sanitizer at hand, the shipped config under memcheck."""
    jsonl = a.out / "diag.jsonl"
    tag = f"{batch}-{layer}"
    if cfg and time.time() < t_end - 20:
        procs = []
        for label, vcfg, venv in _variants(cfg):
            log = a.out / f"variant-{tag}-{label.replace(' ', '_')}.log"
            cmd = _worker_cmd(a, batch, "--only", layer, "--no-time", "--variant", label,
                              *(["--config", json.dumps(vcfg)] if vcfg else []),
                              *(["--fail-at", a.fail_at] if a.fail_at else []))
            # Side by side: two CPU threads each for the float64 check (not every core each).
            procs.append((label, log, subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                       env=dict(env, OMP_NUM_THREADS="2", **venv))))
        for label, log, p in procs:
            try:
                rc = p.wait(timeout=max(t_end - time.time(), 1))
            except subprocess.TimeoutExpired:
                p.kill()
                rc = 124
            with open(jsonl, "a") as f:
                f.write(json.dumps(dict(event="variant_exit", batch=batch, layer=layer, variant=label, rc=rc,
                                        tail=_tail(log, 3) if rc else "")) + "\n")
    sanitizer = shutil.which("compute-sanitizer") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/compute-sanitizer"))), None)
    if memcheck and sanitizer and a.device == "cuda" and time.time() < t_end - 20:
        log = a.out / f"memcheck-{tag}.log"
        # At most 32 images (the unfused layers before it run instrumented too), the same config
        # pinned; 32 is a multiple of 16, as 256 is, for Triton's integer specialisation.
        small = min(batch, 32)
        pin = ["--config", json.dumps(cfg)] if cfg and small != batch else []
        cmd = [sanitizer, "--tool", "memcheck", "--print-limit", "8", "--target-processes", "application-only",
               *_worker_cmd(a, small, "--only", layer, "--no-time", "--no-check", "--variant", "memcheck", *pin)]
        rc = _run(cmd, log, min(75, t_end - time.time() - 5), dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        with open(jsonl, "a") as f:
            f.write(json.dumps(dict(event="memcheck", batch=batch, layer=layer, rc=rc, log=log.name)) + "\n")


def _driver(a) -> int:
    a.out.mkdir(parents=True, exist_ok=True)
    jsonl = a.out / "diag.jsonl"
    jsonl.write_text("")
    t_end = time.time() + a.budget_s
    env = dict(os.environ, MNV2_DIAG_DEADLINE=str(t_end - 10))
    if a.device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    # Every batch's layers first (their checks and times are the run's measurements), then the
    # faulting blocks' variants; a layer that faulted at two batches gets its variants at each
    # (the config may differ), memcheck once.
    counter, seen, faults = [0], set(), []
    for batch in a.batch:
        faults += [(batch, layer, start) for layer, start in _layer_pass(a, batch, env, t_end, counter)]
    for batch, layer, start in faults:
        _investigate(a, batch, layer, start.get("config"), env, t_end, memcheck=layer not in seen)
        seen.add(layer)
    failed = len(faults)
    # The records as the run's summary will read them (bench/summarize.py), and its report.
    from summarize import diag_lines, read_diag

    diag = read_diag(a.out)
    if diag is None:
        print("gpu_diag: no layer ran (see the worker logs)")
        return 1
    way_round = _workaround(a.out, diag, faults)
    print("\n".join(diag_lines(diag)))
    checked = [r for r in diag["layers"] if r["status"] != "faulted"]
    wrong = [f"{r['layer']} (batch {r['batch']})" for r in checked if r["status"] == "wrong"]
    died = [f"{r['layer']} (batch {r['batch']})" for r in diag["faults"]]
    print(f"gpu_diag: {len(checked)} layer runs checked, {len(wrong)} wrong{': ' + ', '.join(wrong) if wrong else ''}; "
          f"{len(died)} faulted{': ' + ', '.join(died) if died else ''}{'; ' + way_round if way_round else ''}")
    return 1 if failed else 3 if wrong else 0


def _workaround(out: Path, diag: dict, faults: list[tuple[int, str, dict]]) -> str:
    """When every faulting layer has a variant that runs right, what lets the benchmarks
    measure the rest of the run: a user tuned table (kernels/tuned.py) with each faulting
    block's first surviving config variant, else, where only an environment variant survives
    (ENV_VARIANTS), that environment for everything.  Written as OUT/workaround.env (VAR=value lines, for
    bench/gpu_run.sh); nothing when there is no fault or a fault has no way round.  Returns
    what it did, in words."""
    if not faults:
        return ""
    entries, env, missing = [], {}, []
    for batch, layer, start in faults:
        # Its variants that ran, and right, in `_variants` order.
        alive = [v["variant"] for v in diag["variants"] if (v["batch"], v["layer"]) == (batch, layer)
                 and v["rc"] == 0 and v["error_ratio"] is not None and v["error_ratio"] <= 1.0]
        config_variants = [v for v in alive if not v.startswith("as shipped") and v not in ENV_VARIANTS]
        env_variants = [v for v in alive if v in ENV_VARIANTS]
        if start.get("shape") and config_variants:
            cfg = next(c for label, c, _ in _variants(start["config"]) if label == config_variants[0])
            entries.append(dict(shape=start["shape"], dtype=start["dtype"], batch=start["batch_range"], config=cfg,
                                ms=0.0, why=f"{layer} faulted at batch {batch} as shipped; {config_variants[0]} ran"))
        elif env_variants:  # for every kernel of the run: the benchmarks then measure that build
            env.update(ENV_VARIANTS[env_variants[0]])
        else:
            missing.append(f"{layer} (batch {batch})")
    if missing:
        return f"no workaround for {', '.join(missing)}"
    lines = []
    if entries:
        folder = out / "workaround"
        folder.mkdir(exist_ok=True)
        slug = faults[0][2].get("slug", "default")
        (folder / f"{slug}.json").write_text(json.dumps({"meta": {
            "source": "bench/gpu_diag.py workaround", "note": "the shipped configs that faulted on this GPU, each "
            "replaced by its first variant that ran right; a measurement aid, not a tuned result"},
            "blocks": entries}, indent=1) + "\n")
        lines.append(f"MNV2_FAST_TUNED_DIR={folder.resolve()}")
    lines += [f"{k}={v}" for k, v in env.items()]
    (out / "workaround.env").write_text("\n".join(lines) + "\n")
    what = [e["why"] for e in entries] + [f"{k}={v} for every kernel" for k, v in env.items()]
    return "workaround: " + "; ".join(what)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--batch", default="256,1")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--budget-s", type=float, default=150)
    p.add_argument("--fail-at", default=None, metavar="LAYER",
                   help="testing: a worker dies at this layer where it runs the shipped config as built by default")
    # The worker's own options (the driver passes them).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jsonl", help=argparse.SUPPRESS)
    p.add_argument("--skip", default="", help=argparse.SUPPRESS)
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-time", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-check", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.batch = int(a.batch)
        return _worker(a)
    if a.out is None:
        p.error("OUT_DIR is required")
    a.batch = [int(b) for b in a.batch.split(",")]
    return _driver(a)


if __name__ == "__main__":
    sys.exit(main())
