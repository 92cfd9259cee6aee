"""`mnv2-fast`: benchmark, check, tune and statically check the fused MobileNetV2 kernels (and the
inverted-residual family's models: --model NAME).

    mnv2-fast bench          fused vs eager cuDNN vs torch.compile: table, JSON and PNG
                             (without a GPU: the fused model through Triton's interpreter on a
                             small input, and its agreement with the unfused model)
    mnv2-fast check          every part and the whole model against the unfused model
    mnv2-fast tune           time candidate launch configs per block; write a tuned table (by default
                             <gpu>.json in the user's cache: ~/.cache/mnv2-fast/tuned)
    mnv2-fast static-check   compile every shipped config for Hopper and check its resources
    mnv2-fast perf-model     predict every launch's time from its compiled sm_90 code (no GPU)
    mnv2-fast infer          batch inference over an image set on Ray Data (the extra mnv2-fast[ray])
    mnv2-fast export         (GPU) an AOTInductor package (.pt2) of the fused model, loadable from
                             Python or C++ without mnv2_fast

Weights files (torchvision `mobilenet_v2` state_dicts) are read with
torch.load(..., weights_only=True): tensors only, never arbitrary pickled objects.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import infer
from .interpreter import use_interpreter

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(kind: type):
    """An argparse type: a positive (finite) int or float."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _model_name(text: str) -> str:
    from .zoo import library

    try:
        library(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _providers(text: str) -> str:
    from .providers import MODEL_PROVIDERS

    names = [p for p in text.split(",") if p]
    unknown = [p for p in names if p not in MODEL_PROVIDERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown providers {unknown or [text]}; known: {','.join(MODEL_PROVIDERS)}")
    return ",".join(names)


def _writable(path: Path, what: str) -> Path:
    """`path` can be created or written: its nearest existing ancestor is a writable folder."""
    parent = path if what == "folder" else path.parent
    if what == "folder" and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    if what == "file" and path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: {existing} is not a writable folder")
    return path


def _out_folder(text: str) -> Path:
    return _writable(Path(text), "folder")


def _out_file(text: str) -> Path:
    return _writable(Path(text), "file")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mnv2-fast", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(sp, batch_help):
        sp.add_argument("--model", type=_model_name, default="mobilenet_v2", metavar="NAME",
                        help="mobilenet_v2 (default), or a model of the family: mnasnet0_5 ... mnasnet1_3 "
                             "(torchvision), mobilenetv2_035 ... _140, _110d, _120d, efficientnet_lite0 ... lite4, "
                             "mnasnet_100, mobilenetv4_conv_small (timm, a development dependency), or "
                             "torchvision.NAME / timm.NAME")
        sp.add_argument("--width", type=_positive(float), default=1.0,
                        help="mobilenet_v2's width multiplier (default 1.0)")
        sp.add_argument("--resolution", type=_positive(int), help="input side in pixels (default: 224 on a GPU, 64 without)")
        sp.add_argument("--batch", type=_ints, help=batch_help)
        sp.add_argument("--dtype", choices=sorted(DTYPES),
                        help="default: float16 on a GPU, float32 without (bfloat16 needs a GPU)")
        sp.add_argument("--classes", type=_positive(int), help="number of classes k (default: from --weights, else 1000)")
        sp.add_argument("--weights", type=Path, help="a torchvision mobilenet_v2 state_dict file (.pth)")
        sp.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="fused vs eager cuDNN vs torch.compile")
    model_opts(b, "comma-separated batch sizes (default: 1,32,256 on a GPU, 1 without)")
    b.add_argument("--out", type=_out_folder, default=Path("mnv2-fast-bench"), help="folder for bench.json and bench.png")
    b.add_argument("--reps", type=_positive(int), default=50, help="timed repeats per measurement (median reported)")
    b.add_argument("--providers", type=_providers, default="fused,fused_graph,eager_cl,eager_cl_folded,compile",
                   help="comma-separated subset of fused,fused_graph,eager_cl,eager_cl_folded,compile")

    c = sub.add_parser("check", help="every part and the whole model against the unfused model")
    model_opts(c, "batch size (default: 4 on a GPU, 1 without)")
    c.add_argument("--backend", choices=["triton", "torch"], default="triton")

    t = sub.add_parser("tune", help="choose launch configs per block: timed on a GPU, or by the performance "
                       "model (--model, no GPU); write the tuned table")
    t.add_argument("--width", type=_positive(float), action="append", help="width multiplier(s) to tune (default 1.0)")
    t.add_argument("--resolution", type=_positive(int), default=224)
    t.add_argument("--batch", type=_ints, default=[1, 256], help="batch sizes (each covers a range, default 1,256)")
    t.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="default float16")
    t.add_argument("--reps", type=_positive(int), default=20)
    t.add_argument("--out", type=_out_file, help="table path (default: <gpu>.json in $MNV2_FAST_TUNED_DIR, "
                   "else $XDG_CACHE_HOME/mnv2-fast/tuned, else ~/.cache/mnv2-fast/tuned)")
    t.add_argument("--model", action="store_true",
                   help="no GPU: rank candidates by the calibrated performance model (compiled for sm_90)")
    t.add_argument("--gpu", choices=["h100", "h200"], default="h200", help="with --model: the GPU to model")
    t.add_argument("--network", action="append", default=[], metavar="NAME",
                   help="with --model: also the blocks of this network (e.g. efficientnet_lite0; see --width for "
                        "MobileNetV2), at its training resolution")
    t.add_argument("--first-fit", action="store_true",
                   help="with --model: the first candidate that compiles without spilling, not the fastest")
    t.add_argument("--merge", action="store_true", help="keep the table's entries for shapes not tuned now")

    sub.add_parser("static-check", help="compile every shipped config for sm_90 (no GPU needed)")

    from .perf_model import add_arguments  # imports no kernels

    add_arguments(sub.add_parser("perf-model", help="predict each launch's time with the calibrated performance "
                                 "model, from its sm_90 code (no GPU needed)"))

    e = sub.add_parser("export", help="(GPU) an AOTInductor package (.pt2) of the fused model")
    model_opts(e, "the batch the package takes (default 1)")
    e.add_argument("--out", type=_out_file, default=Path("mnv2-fast.pt2"), help="the package (default mnv2-fast.pt2)")
    e.add_argument("--dynamic-batch", action="store_true",
                   help="any batch from 1 to --max-batch (refused while a launcher decides by the batch)")
    e.add_argument("--max-batch", type=_positive(int), default=4096, help="with --dynamic-batch (default 4096)")
    infer.add_parser(sub)
    return p


# ---------------------------------------------------------------- model and weights

WEIGHTS_FORMAT = ("expected a state_dict: a dict of tensors saved with torch.save(model.state_dict(), path), "
                  "as torchvision's mobilenet_v2 weights are")


def load_state_dict(path: Path) -> dict:
    """A torchvision-style state_dict from `path`, tensors only (torch.load with weights_only=True).
    Any file it cannot read gets one message: what is wrong, and the format expected."""
    import pickle

    if not path.exists():
        raise SystemExit(f"error: weights file {path} does not exist")
    if not path.is_file():
        raise SystemExit(f"error: weights file {path} is not a file; {WEIGHTS_FORMAT}")
    if path.stat().st_size == 0:
        raise SystemExit(f"error: weights file {path} is empty; {WEIGHTS_FORMAT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # PyTorch's message suggests weights_only=False: never repeated here
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) and ("Unsupported global" in text or "allowed global" in text):
            raise SystemExit(f"error: {path} holds pickled Python objects, not only tensors (a whole model saved "
                             f"with torch.save(model)?), and weights files are never unpickled (refused to "
                             f"unpickle it); {WEIGHTS_FORMAT}") from None
        refused = " (refused to unpickle it)" if isinstance(err, pickle.UnpicklingError) else ""
        raise SystemExit(f"error: {path} is not a file torch.save wrote{refused}; {WEIGHTS_FORMAT}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SystemExit(f"error: {path} does not hold a state_dict (a dict of tensors); {WEIGHTS_FORMAT}")
    return obj


def build_model(width: float, classes: int | None, weights: Path | None, seed: int):
    """The unfused reference model in eval mode: given weights, or random with trained-looking BN."""
    from ..model import mobilenet_v2
    from .testing import randomize_bn

    state = load_state_dict(weights) if weights else None
    if classes is None:
        w = state.get("classifier.1.weight") if state else None
        classes = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else 1000
    torch.manual_seed(seed)
    model = mobilenet_v2(width_mult=width, num_classes=classes)
    if state is None:
        randomize_bn(model, torch.Generator().manual_seed(seed))
    else:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                      for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or mismatched:
            lines = [f"error: {weights} is not a mobilenet_v2 state_dict for width {width}, {classes} classes:"]
            for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", mismatched)):
                if items:
                    more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
                    lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + more)
            lines.append("  (check --width and --classes)")
            raise SystemExit("\n".join(lines))
        model.load_state_dict(state)
    return model.eval()


def build_named(args):
    """The model the command works on: mobilenet_v2 (--width, --weights), or another model of the
    family by name (tools/zoo.py) with random weights, or --weights (its own state_dict)."""
    if args.model == "mobilenet_v2":
        return build_model(args.width, args.classes, args.weights, args.seed)
    if args.width != 1.0:
        raise SystemExit(f"error: --width is mobilenet_v2's width multiplier; {args.model} has none")
    from .zoo import build

    state = load_state_dict(args.weights) if args.weights else None
    try:
        model = build(args.model, args.classes or state_classes(state) or 1000, args.seed)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return load_weights(model, state, args.weights, args.model)


def state_classes(state: dict | None) -> int | None:
    """The classes of a state_dict's classifier (its last matrix), None without one."""
    head = [v for k, v in (state or {}).items() if k.endswith("weight") and v.dim() == 2]
    return int(head[-1].shape[0]) if head else None


def load_weights(model, state: dict | None, weights: Path | None, name: str):
    """model in eval mode with `state` loaded (when given); SystemExit naming the file when it does not fit."""
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise SystemExit(f"error: {weights} does not fit the model {name}: "
                             + "; ".join(str(err).splitlines()[:4])) from None
    return model.eval()


def _title(args) -> str:
    return f"width {args.width}" if args.model == "mobilenet_v2" else args.model


def _setup(args) -> tuple[torch.device, bool]:
    """Pick the device; without a GPU, turn Triton's interpreter on before triton is imported."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu and args.dtype == "bfloat16" and getattr(args, "backend", "triton") == "triton":
        raise SystemExit("error: --dtype bfloat16 needs a GPU: without one the kernels run through Triton's "
                         "interpreter, which computes bfloat16 wrongly; use float16 or float32 here"
                         + (", or --backend torch" if args.command == "check" else ""))
    if not on_gpu:
        try:
            use_interpreter()
        except RuntimeError as err:
            raise SystemExit(f"error: no GPU, and {err}") from None
    if getattr(args, "resolution", None) is None:
        args.resolution = 224 if on_gpu else 64
    if getattr(args, "dtype", None) is None:
        args.dtype = "float16" if on_gpu else "float32"
    return torch.device("cuda" if on_gpu else "cpu"), on_gpu


# ---------------------------------------------------------------- check

def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


@torch.no_grad()
def agreement_rows(model, x: torch.Tensor, device, dtype, backend: str, progress=_progress):
    """(part, input shape, error ratio) of every fused part of optimize(model), each on the
    input the unfused model gives it, against the unfused part in float64; then the whole model."""
    import copy

    from ..fused import FusedPart
    from ..optimize import optimize
    from .testing import MODEL_TOLERANCE_FACTOR, error_ratio

    fast = optimize(model, backend=backend).to(device, dtype)
    parts = [e for e in fast.fusion_report.entries if e.fused and isinstance(fast.get_submodule(e.name), FusedPart)]
    ref = copy.deepcopy(model).double()
    inputs: dict[str, torch.Tensor] = {}
    hooks = [ref.get_submodule(e.name).register_forward_pre_hook(
        lambda mod, args, name=e.name: inputs.setdefault(name, args[0])) for e in parts]
    logits_ref = ref(x.to(dtype).double())  # the rounded input both sides see
    for h in hooks:
        h.remove()
    rows = []
    for k, e in enumerate(parts):
        inp = inputs[e.name].to(dtype)  # activations as the network would store them
        progress(f"[{k + 1}/{len(parts) + 1}] {e.name} {e.part} {tuple(inp.shape)}")
        out = fast.get_submodule(e.name)(inp.to(device))
        expect = ref.get_submodule(e.name)(inp.double())
        for other in e.absorbed:  # the BatchNorm and activation modules the fused part took in
            expect = ref.get_submodule(other)(expect)
        if e.part == "head":  # the fused head pools too
            expect = torch.nn.functional.adaptive_avg_pool2d(expect, 1)
        rows.append((f"{e.name} {e.part}", tuple(inp.shape), error_ratio(out, expect, dtype)))
    progress(f"[{len(parts) + 1}/{len(parts) + 1}] whole model")
    out = fast(x.to(device, dtype))
    rows.append(("whole model", tuple(x.shape), error_ratio(out, logits_ref, dtype, MODEL_TOLERANCE_FACTOR)))
    return rows


def cmd_check(args) -> int:
    device, on_gpu = _setup(args)
    dtype = DTYPES[args.dtype]
    batch = (args.batch or [4 if on_gpu else 1])[0]
    model = build_named(args)
    torch.manual_seed(args.seed + 1)
    x = torch.randn(batch, 3, args.resolution, args.resolution)
    engine = {"triton": "Triton kernels" if on_gpu else "Triton interpreter", "torch": "folded PyTorch ops"}
    where = f"{'GPU ' + torch.cuda.get_device_name() if on_gpu else 'CPU'}, {engine[args.backend]}"
    print(f"mnv2-fast check: {_title(args)}, {args.resolution}px, batch {batch}, {args.dtype}, "
          f"backend {args.backend}, on {where}")
    rows = agreement_rows(model, x, device, dtype, args.backend)
    table = [[name, "x".join(map(str, shape)), f"{ratio:.3f}", "PASS" if ratio <= 1 else "FAIL"]
             for name, shape, ratio in rows]
    print(_table(table, ["part", "input", "error / tolerance", "result"]))
    failed = [r for r in rows if not r[2] <= 1]
    print(f"{len(rows) - len(failed)} of {len(rows)} parts agree with the unfused float64 model"
          + (f"; FAILED: {', '.join(r[0] for r in failed)}" if failed else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------- bench

def cmd_bench(args) -> int:
    device, on_gpu = _setup(args)
    dtype = DTYPES[args.dtype]
    model = build_named(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if not on_gpu:
        return _bench_cpu(args, model, dtype)
    from .providers import MODEL_PROVIDERS, make_model_provider
    from .testing import MODEL_TOLERANCE_FACTOR, error_ratio, reference64
    from .timing import copy_bandwidth_gbps, first_call, nhwc_input_pool, peak_memory_mb, run_facts, time_cuda

    providers = [p for p in args.providers.split(",") if p]
    unknown = set(providers) - set(MODEL_PROVIDERS)
    if unknown:
        raise SystemExit(f"error: unknown providers {sorted(unknown)}; known: {', '.join(MODEL_PROVIDERS)}")
    batches = args.batch or [1, 32, 256]
    facts = run_facts()
    facts["copy_gbps"] = round(copy_bandwidth_gbps(), 1)
    print(f"mnv2-fast bench on {facts['gpu']} (torch {facts['torch']}, triton {facts['triton']}, "
          f"cuDNN {facts['cudnn']}, copy {facts['copy_gbps']} GB/s): {_title(args)}, {args.resolution}px, "
          f"{args.dtype}")
    records = []
    steps = len(batches) * len(providers)
    for bi, batch in enumerate(batches):
        pool = nhwc_input_pool((batch, 3, args.resolution, args.resolution), dtype, device)
        for pi, name in enumerate(providers):
            _progress(f"[{bi * len(providers) + pi + 1}/{steps}] batch {batch}: {name} (build, warm up, time)")
            fn, first_s, _ = first_call(lambda: make_model_provider(name, model, batch, dtype, device), pool[0])
            t = time_cuda(fn, pool, reps=args.reps)
            rec = dict(provider=name, dtype=args.dtype, batch=batch, ms=round(t.median_ms, 4),
                       images_per_s=round(batch / t.median_ms * 1e3, 1), peak_mem_mb=round(peak_memory_mb(fn, pool[0]), 1),
                       first_call_s=round(first_s, 2))
            records.append(rec)
            del fn
    _progress("numerics: fused vs the unfused float64 model (batch 2)")
    x = torch.randn(2, 3, args.resolution, args.resolution)
    fused = make_model_provider("fused", model, 2, dtype, device)
    ratio = error_ratio(fused(x.to(device, dtype)), reference64(model, x.to(dtype)), dtype, MODEL_TOLERANCE_FACTOR)
    result = dict(facts, network=args.model, width=args.width, resolution=args.resolution, model=records,
                  numerics={"dtype": args.dtype, "error_over_tolerance": round(ratio, 4)})
    (args.out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_bench_table(records, providers))
    print(f"numerics: fused {args.dtype} vs unfused float64: {ratio:.3f} of the tolerance "
          f"({'PASS' if ratio <= 1 else 'FAIL'})")
    name = f"MobileNetV2 {args.width}" if args.model == "mobilenet_v2" else args.model
    _plot(records, args.out / "bench.png", f"{name} {args.resolution}px {args.dtype}, {facts['gpu']}")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0 if ratio <= 1 else 1


def _bench_table(records: list[dict], providers: list[str]) -> str:
    rows = []
    for batch in sorted({r["batch"] for r in records}):
        by = {r["provider"]: r for r in records if r["batch"] == batch}
        best_fused = min((by[p]["ms"] for p in ("fused", "fused_graph") if p in by), default=None)
        for p in providers:
            r = by.get(p)
            if r is None:
                continue
            speed = f"{r['ms'] / best_fused:.2f}x" if best_fused and not p.startswith("fused") else ""
            rows.append([batch, p, f"{r['ms']:.3f}", f"{r['images_per_s']:.0f}", f"{r['peak_mem_mb']:.0f}",
                         f"{r['first_call_s']:.1f}", speed])
    return _table(rows, ["batch", "provider", "ms", "images/s", "peak MB", "first call s", "fused speed-up"])


def _plot(records: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _progress("matplotlib is not installed: no plot (pip install 'mnv2-fast[bench]')")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in dict.fromkeys(r["provider"] for r in records):
        pts = sorted((r["batch"], r["images_per_s"]) for r in records if r["provider"] == p)
        ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bench_cpu(args, model, dtype) -> int:
    from ..optimize import optimize
    from .testing import MODEL_TOLERANCE_FACTOR, error_ratio, reference64

    batch = (args.batch or [1])[0]
    print(f"mnv2-fast bench: no GPU here, so no timings. Running the fused model through Triton's interpreter "
          f"instead: {_title(args)}, {args.resolution}px, batch {batch}, {args.dtype}.")
    torch.manual_seed(args.seed + 1)
    x = torch.randn(batch, 3, args.resolution, args.resolution)
    _progress("[1/2] fused model (Triton interpreter)")
    t0 = time.time()
    with torch.no_grad():
        out = optimize(model, backend="triton").to(dtype=dtype)(x.to(dtype))
    seconds = time.time() - t0
    _progress("[2/2] unfused model (float64 reference)")
    ref = reference64(model, x.to(dtype))
    ratio = error_ratio(out, ref, dtype, MODEL_TOLERANCE_FACTOR)
    err = (out.double() - ref).abs().max().item()
    print(f"numerics: fused vs unfused float64: max |difference| {err:.3e} on logits up to {ref.abs().max():.3g}; "
          f"{ratio:.3f} of the {args.dtype} tolerance ({'PASS' if ratio <= 1 else 'FAIL'})")
    print(f"interpreter run took {seconds:.1f} s (the interpreter is not a speed measure)")
    print("timings need a GPU: run `mnv2-fast bench` on a machine with CUDA for fused vs cuDNN vs torch.compile.")
    result = dict(gpu="none", network=args.model, width=args.width, resolution=args.resolution, batch=batch,
                  numerics={"dtype": args.dtype, "max_abs_diff": err, "error_over_tolerance": round(ratio, 4)},
                  model=[])
    (args.out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out / 'bench.json'}")
    return 0 if ratio <= 1 else 1


# ---------------------------------------------------------------- tune and static check

def cmd_tune(args) -> int:
    widths = args.width or ([] if args.network else [1.0])
    dtypes = [DTYPES[d] for d in (args.dtype or ["float16"])]
    if args.model:
        from ..kernels import tuned
        from .tune import model_tune

        out = args.out or tuned.user_table_path(args.gpu)
        path = model_tune(widths, args.resolution, args.batch, dtypes, args.gpu, out, progress=_progress,
                          networks=args.network, first_fit_only=args.first_fit, merge=args.merge)
        print(f"wrote {path}")
        return 0
    if args.network or args.first_fit:
        raise SystemExit("error: --network and --first-fit go with --model (a GPU run tunes MobileNetV2's widths)")
    if not torch.cuda.is_available():
        raise SystemExit("error: tuning times kernels on a GPU; none is available here (--model needs none)")
    from .tune import tune

    path = tune(widths, args.resolution, args.batch, dtypes, args.reps, args.out, progress=_progress)
    print(f"wrote {path}")
    return 0


def cmd_static_check(args) -> int:
    from .static_check import main as static_main

    return static_main([])


def cmd_perf_model(args) -> int:
    from .interpreter import use_compiler
    from .perf_model import run

    use_compiler()
    return run(args)


# ---------------------------------------------------------------- export

NO_GPU_EXPORT = ("error: export writes an AOTInductor package, which holds the fused Triton kernels compiled for "
                 "this machine's GPU, and no CUDA device is available here. Without a GPU, "
                 "torch.export.export(mnv2_fast.optimize(model), (x,)) still gives an exported program with one "
                 "mnv2_fast op per fused part (README: compile, export, deploy)")


def cmd_export(args) -> int:
    if not torch.cuda.is_available():
        raise SystemExit(NO_GPU_EXPORT)
    from ..deploy import PackageError, export

    if args.batch and len(args.batch) > 1:
        raise SystemExit("error: export takes one --batch: a package is made for one batch")
    dtype = DTYPES[args.dtype or "float16"]
    resolution = args.resolution or 224
    batch = (args.batch or [1])[0]
    model = build_model(args.width, args.classes, args.weights, args.seed)
    example = torch.randn(batch, 3, resolution, resolution, device="cuda", dtype=dtype)
    _progress(f"exporting MobileNetV2 {args.width}, {resolution}px, {dtype} (torch.export, the kernels lowered into "
              "the graph, AOTInductor compiling them: a minute or two)")
    start = time.time()
    try:
        path = export(model, example, args.out, dynamic_batch=args.dynamic_batch, max_batch=args.max_batch)
    except PackageError as err:
        raise SystemExit(f"error: {err}") from None
    batches = f"batch 1 to {args.max_batch}" if args.dynamic_batch else f"batch {batch}"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.time() - start:.0f} s): input "
          f"[N, 3, {resolution}, {resolution}] {str(dtype).removeprefix('torch.')} NCHW on the GPU, {batches}. "
          f"Load it with torch._inductor.aoti_load_package({str(path)!r}); mnv2_fast is not needed there")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"bench": cmd_bench, "check": cmd_check, "tune": cmd_tune, "static-check": cmd_static_check,
               "perf-model": cmd_perf_model, "infer": infer.cmd_infer, "export": cmd_export}
    try:
        return handler[args.command](args)
    except (ValueError, OSError) as err:  # bad input met past the parser: one line, no traceback
        print(f"mnv2-fast {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
