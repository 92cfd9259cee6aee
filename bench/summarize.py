"""Summarise the pytest-benchmark JSON files written by the bench/ suites.

    python bench/summarize.py BENCH_JSON [BENCH_JSON ...] OUT_DIR

writes OUT_DIR/summary.json (run facts, the run's steps, one record per measurement),
OUT_DIR/summary.md (steps and ratio tables) and OUT_DIR/summary.png (per-block bars,
whole-model throughput).  A BENCH_JSON that is missing (its run was killed before pytest
wrote it) is replaced by the JSONL beside it (same name, suffix .jsonl: one line per case
that finished).  From the folder of the first BENCH_JSON it also reads, when present,
facts.json (bench/facts.py), steps.jsonl (bench/gpu_run.sh) and cold_start.json.

A headline case measured several times (interleaved repeats) becomes one record: the median
of its repeats, which are kept in ms_repeats.

The times are the suites' CUDA-event medians (extra_info["ms"]), not pytest-benchmark's own
statistics, which time a synchronised call from the host.  A smoke run has no times: its
tables show dashes and its plot says so.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from mnv2_fast.tools.providers import MODEL_PROVIDERS

# What summary.json says about where it was measured (from mnv2_fast.tools.timing.run_facts()).
FACT_KEYS = ("gpu", "sm_count", "driver", "cuda", "torch", "triton", "cudnn", "commit")
STEP_KEYS = ("step", "status", "rc", "seconds", "limit_s", "note")
BASELINES = ("eager_cl", "eager_cl_folded", "compile")
DTYPE_ORDER = ("float16", "bfloat16", "float32")
PLOT_BLOCKS_AT = ("float16", 256)
DASH = "–"


def color(provider: str) -> str:
    """One colour per provider in both panels."""
    return f"C{MODEL_PROVIDERS.index(provider)}"


def read_run(bench_json: Path) -> dict | None:
    """{"machine_info", "datetime", "benchmarks", "source"} of one pytest session: its JSON,
    else (none, or empty or cut short) the JSONL beside it; None when neither exists."""
    bench_json = Path(bench_json)
    try:
        # Empty when pytest-benchmark opened it at start (older releases do) and never wrote it.
        data = json.loads(bench_json.read_text()) if bench_json.is_file() else None
    except ValueError:
        data = None
    if data is not None:
        data["source"] = bench_json.name
        data["skipped"] = read_skipped(bench_json.with_suffix(".jsonl"))  # pytest-benchmark keeps no skips
        return data
    jsonl = bench_json.with_suffix(".jsonl")
    if not jsonl.is_file():
        return None
    data = {"machine_info": {}, "datetime": None, "benchmarks": [], "source": jsonl.name + " (no JSON written)",
            "skipped": read_skipped(jsonl)}
    for entry in read_jsonl(jsonl):
        if "machine_info" in entry:
            data["machine_info"], data["datetime"] = entry["machine_info"], entry.get("datetime")
        elif "session" in entry:
            data["machine_info"].setdefault("mnv2_fast", {})["skipped_for_time"] = entry["session"].get(
                "skipped_for_time", 0)
        elif "extra_info" in entry:
            data["benchmarks"].append(entry)
    return data


def read_jsonl(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return entries


def read_skipped(jsonl: Path) -> list[dict]:
    """The cases a session skipped, with the reason (bench/conftest.py appends them)."""
    return [e["skipped"] for e in read_jsonl(jsonl) if "skipped" in e]


def _record(e: dict) -> tuple[str, dict] | None:
    """(kind, summary record) of one benchmark's extra_info."""
    record = {"provider": e["provider"], "dtype": e["dtype"], "batch": e["batch"], "ms": e.get("ms"),
              "cudnn_benchmark": e.get("cudnn_benchmark")}
    if e.get("kind") == "model":
        record.update(peak_mem_mb=e.get("peak_mem_mb"), first_call_s=e.get("first_call_s"),
                      width=e.get("width"), resolution=e.get("resolution"))
        return "model", record
    if e.get("kind") == "family":
        record = {"network": e["network"], **record}
        record.update(peak_mem_mb=e.get("peak_mem_mb"), first_call_s=e.get("first_call_s"),
                      resolution=e.get("resolution"))
        return "family", record
    if e.get("kind") == "block":
        record = {"block": e["block"], **record}
        record.update({k: e.get(k) for k in ("cin", "hidden", "cout", "stride", "size", "bytes", "flops",
                                              "peak_mem_mb", "first_call_s", "config", "config_json")})
        return "blocks", record
    return None


def merge_repeats(records: list[dict]) -> list[dict]:
    """One record per case: repeats of a case (same block, provider, dtype, batch and
    cudnn.benchmark) become the first of them with the median time, all times in ms_repeats."""
    groups: dict = {}
    for r in records:
        key = (r.get("block"), r.get("network"), r["provider"], r["dtype"], r["batch"], r.get("cudnn_benchmark"))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        record = dict(group[0])
        if len(group) > 1:
            times = [r["ms"] for r in group if r.get("ms") is not None]
            record["ms"] = statistics.median(times) if times else None
            record["ms_repeats"] = times
        record["repeats"] = len(group)
        out.append(record)
    return out


def load(*bench_jsons: Path) -> dict:
    """The summary record of one run: facts, steps, then `model` and `blocks` measurements,
    from every bench JSON (or its JSONL) given, and the run files beside the first."""
    folder = Path(bench_jsons[0]).parent
    facts_file = folder / "facts.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    runs = [(Path(b).stem, read_run(b)) for b in bench_jsons]
    bench_facts = [r["machine_info"].get("mnv2_fast") for _, r in runs if r and r["machine_info"].get("mnv2_fast")]
    if not facts and not bench_facts and any(r for _, r in runs):
        raise SystemExit(f"error: {bench_jsons[0]} has no machine_info.mnv2_fast: not written by the bench/ suites")
    for f in reversed(bench_facts):  # the first session's facts win (its copy bandwidth: an idle GPU)
        facts.update({k: v for k, v in f.items() if v is not None})
    summary = {key: facts.get(key) for key in FACT_KEYS}
    datetimes = [r["datetime"] for _, r in runs if r and r.get("datetime")]
    summary.update(copy_gbps=facts.get("copy_gbps"), smoke=facts.get("smoke", False),
                   gpu_slug=facts.get("gpu_slug"), allow_tf32=facts.get("allow_tf32"), reps=facts.get("reps"),
                   skipped_for_time=sum(f.get("skipped_for_time", 0) for f in bench_facts),
                   datetime=datetimes[0] if datetimes else facts.get("date"),
                   date=facts.get("date"), cudnn_benchmark=facts.get("cudnn_benchmark"),
                   warmup_s=facts.get("warmup_s"), repeats=facts.get("repeats"),
                   sources={name: (r["source"] if r else None) for name, r in runs},
                   steps=read_steps(folder / "steps.jsonl"), model=[], blocks=[], family=[])
    for _, run in runs:
        for bench in (run or {}).get("benchmarks", []):
            kind_record = _record(bench.get("extra_info", {}))
            if kind_record:
                summary[kind_record[0]].append(kind_record[1])
        for skipped in (run or {}).get("skipped", []):  # the family's cases that did not run, and why
            p = skipped.get("params", {})
            if "network" in p:
                summary["family"].append({"network": p["network"], "provider": p.get("provider"),
                                          "dtype": p.get("dtype"), "batch": p.get("batch"), "ms": None,
                                          "cudnn_benchmark": p.get("cudnn_benchmark"),
                                          "skipped": skipped.get("reason")})
    summary["diag"] = read_diag(folder / "diag")
    summary["model"] = merge_repeats(summary["model"])
    summary["blocks"] = merge_repeats(summary["blocks"])
    summary["family"] = merge_repeats(summary["family"])
    return summary


def _short_paths(text: str) -> str:
    """Absolute paths as their last two parts (kernels/block.py:318): the GPU machine's
    folders say nothing to a reader and have no place in committed results."""
    return re.sub(r"(?:/[\w.+-]+)+/([\w.+-]+/[\w.+-]+)", r"\1", text)


def read_diag(folder: Path) -> dict | None:
    """What bench/gpu_diag.py found (OUT/raw/diag, when the run's cold start failed): each
    layer's status, error and times per batch, the whole model's times, the faults, the
    faulting blocks' variants, and memcheck's first report lines."""
    recs = read_jsonl(folder / "diag.jsonl")
    if not recs:
        return None
    main = [r for r in recs if "variant" not in r]
    starts = {(r["batch"], r["layer"]): r for r in main if r.get("event") == "start"}
    times = {(r["batch"], r["layer"]): r for r in main if r.get("event") == "time"}
    layers = {}
    for r in main:
        key = (r["batch"], r["layer"])
        if r.get("event") == "checked":
            layers[key] = {"status": "ok" if r["ok"] else "wrong", "error_ratio": r["error_ratio"]}
        elif r.get("event") == "died" and r.get("layer"):
            layers[key] = {"status": "faulted", "error_ratio": None}
    out_layers = []
    for (batch, layer), st in layers.items():
        start, t = starts.get((batch, layer), {}), times.get((batch, layer), {})
        out_layers.append(dict(layer=layer, batch=batch, dtype=start.get("dtype"), **st, config=start.get("config"),
                               shape=start.get("shape"), fused_ms=t.get("fused_ms"), cudnn_ms=t.get("cudnn_ms"),
                               cudnn_bench_ms=t.get("cudnn_bench_ms")))
    memcheck = []
    for r in recs:
        if r.get("event") == "memcheck":
            log = folder / r["log"]
            lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
            found = [_short_paths(line.strip(" =")) for line in lines
                     if "Invalid" in line or re.search(r"\bat .*\.py:\d+", line) or "ERROR SUMMARY" in line]
            memcheck.append({"layer": r["layer"], "batch": r["batch"], "rc": r["rc"], "report": found[:8]})
    checked = {(r["batch"], r["layer"], r["variant"]): r for r in recs
               if r.get("event") == "checked" and "variant" in r}
    variants = [{"layer": r["layer"], "batch": r["batch"], "variant": r["variant"], "rc": r["rc"],
                 "error_ratio": checked.get((r["batch"], r["layer"], r["variant"]), {}).get("error_ratio")}
                for r in recs if r.get("event") == "variant_exit"]
    return {"layers": out_layers,
            "model": [{k: v for k, v in r.items() if k != "event"} for r in main if r.get("event") == "model"],
            "faults": [{"layer": r["layer"], "batch": r["batch"], "rc": r["rc"],
                        "error": _short_paths(r["tail"])[-300:]} for r in recs if r.get("event") == "died"],
            "variants": variants, "memcheck": memcheck}


def diag_lines(d: dict) -> list[str]:
    lines = ["", "## Layer by layer (bench/gpu_diag.py: the cold start failed)", "",
             "Each layer of the fused model on its own, synchronised, on the fused chain's own input; error: "
             "against the unfused layer in float64, over the dtype's tolerance; speed-up: the faster cuDNN time "
             "(cudnn.benchmark off, on) over the fused one.", ""]
    rows = [[r["layer"], str(r["batch"]), r["status"], fmt(r["error_ratio"], ".3g"), fmt(r["fused_ms"], ".4f"),
             fmt(r["cudnn_ms"], ".4f"), fmt(r["cudnn_bench_ms"], ".4f"),
             fmt(ratio(min(r["cudnn_ms"], r["cudnn_bench_ms"]) if r["cudnn_ms"] and r["cudnn_bench_ms"] else None,
                       r["fused_ms"]), ".2f", "x")] for r in d["layers"]]
    lines += table(["layer", "batch", "status", "error / tol", "fused ms", "cuDNN ms", "cuDNN bench ms", "speed-up"],
                   rows)
    for m in d["model"]:
        unfused = ", ".join(m["unfused_layers"]) or "none"
        graph = f", as a CUDA graph {fmt(m.get('fused_graph_ms'), '.4f')} ms" if m.get("fused_graph_ms") else ""
        lines += ["", f"Whole model at batch {m['batch']}, the faulting layers ({unfused}) unfused: fused "
                      f"{fmt(m.get('fused_ms'), '.4f')} ms{graph}; cuDNN {fmt(m.get('cudnn_ms'), '.4f')} ms, with "
                      f"cudnn.benchmark {fmt(m.get('cudnn_bench_ms'), '.4f')} ms."]
    for f in d["faults"]:
        lines += ["", f"**{f['layer']} faulted at batch {f['batch']}** (exit {f['rc']}): {f['error']}"]
    if d["variants"]:
        lines += ["", "Each faulting block alone, in variants of its config:", ""]
        lines += table(["layer", "batch", "variant", "outcome"],
                       [[v["layer"], str(v["batch"]), v["variant"],
                         f"ran, error / tol {v['error_ratio']:.3g}" if v["rc"] == 0 and v["error_ratio"] is not None
                         else f"failed (exit {v['rc']})"] for v in d["variants"]])
    for m in d["memcheck"]:
        lines += ["", f"memcheck on {m['layer']} at batch {m['batch']} (exit {m['rc']}):", ""]
        lines += ["    " + line for line in m["report"]] or ["    (no report lines)"]
    return lines


def read_steps(path: Path) -> list[dict]:
    """The steps bench/gpu_run.sh ran so far, one JSON line each."""
    return read_jsonl(path)


def ms_of(records: list[dict], **match) -> float | None:
    """The best time of the records matching all of `match` (an eager baseline has one with
    cudnn.benchmark off and one with it on: the faster counts), or None."""
    times = [r["ms"] for r in records if all(r.get(k) == v for k, v in match.items()) and r.get("ms") is not None]
    return min(times) if times else None


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    return DASH if value is None else f"{value:{spec}}{suffix}"


def combos(records: list[dict]) -> list[tuple[str, int]]:
    """(dtype, batch) pairs present, float16 first, batches ascending."""
    def key(c):
        return (DTYPE_ORDER.index(c[0]) if c[0] in DTYPE_ORDER else 9, c[1])

    return sorted({(r["dtype"], r["batch"]) for r in records}, key=key)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def model_table(s: dict) -> list[str]:
    m = s["model"]
    header = ["dtype", "batch", "fused ms", "fused img/s", "fused_graph ms"]
    header += [f"{b} / fused" for b in BASELINES] + [f"{b} / graph" for b in BASELINES]
    header += ["peak MB fused", "peak MB eager_cl"]
    rows = []
    for dtype, batch in combos(m):
        at = dict(dtype=dtype, batch=batch)
        fused, graph = ms_of(m, provider="fused", **at), ms_of(m, provider="fused_graph", **at)
        base = [ms_of(m, provider=b, **at) for b in BASELINES]
        peak = {r["provider"]: r.get("peak_mem_mb") for r in m if r["dtype"] == dtype and r["batch"] == batch}
        rows.append([dtype, str(batch), fmt(fused), fmt(ratio(batch * 1e3, fused), ".0f"), fmt(graph)]
                    + [fmt(ratio(b, fused), ".2f", "x") for b in base]
                    + [fmt(ratio(b, graph), ".2f", "x") for b in base]
                    + [fmt(peak.get("fused"), ".0f"), fmt(peak.get("eager_cl"), ".0f")])
    return table(header, rows)


def family_table(s: dict) -> list[str]:
    """One row per model of the family: fused against the baselines, or why it did not run."""
    f = s["family"]
    header = ["model", "px", "dtype", "batch", "fused ms", "fused img/s"] + [f"{b} / fused" for b in BASELINES]
    header += ["first call s", "skipped"]
    rows = []
    for network in dict.fromkeys(r["network"] for r in f):
        mine = [r for r in f if r["network"] == network]
        for dtype, batch in combos(mine):
            at = dict(network=network, dtype=dtype, batch=batch)
            fused = ms_of(f, provider="fused", **at)
            first = [r.get("first_call_s") for r in mine if r["provider"] == "fused" and r.get("first_call_s")]
            px = next((r.get("resolution") for r in mine if r.get("resolution")), None)
            why = sorted({r["skipped"] for r in mine if r.get("skipped") and (r["dtype"], r["batch"]) == (dtype, batch)})
            rows.append([network, str(px or DASH), dtype, str(batch), fmt(fused), fmt(ratio(batch * 1e3, fused), ".0f")]
                        + [fmt(ratio(ms_of(f, provider=b, **at), fused), ".2f", "x") for b in BASELINES]
                        + [fmt(first[0] if first else None, ".1f"), "; ".join(why) or DASH])
    return table(header, rows)


def cudnn_benchmark_table(s: dict) -> list[str]:
    """The eager baselines with cuDNN's autotuning off and on (whole model)."""
    m = s["model"]
    rows = []
    for dtype, batch in combos(m):
        for provider in ("eager_cl", "eager_cl_folded"):
            at = dict(provider=provider, dtype=dtype, batch=batch)
            off, on = ms_of(m, cudnn_benchmark=False, **at), ms_of(m, cudnn_benchmark=True, **at)
            if off is not None or on is not None:
                rows.append([dtype, str(batch), provider, fmt(off), fmt(on), fmt(ratio(off, on), ".2f", "x")])
    return table(["dtype", "batch", "baseline", "ms, benchmark off", "ms, benchmark on", "off / on"], rows) if rows else []


def steps_table(s: dict) -> list[str]:
    rows = [[str(st.get("step")), str(st.get("status")) + (f" (rc {st['rc']})" if st.get("status") == "failed" else ""),
             fmt(st.get("seconds"), ".0f"), fmt(st.get("limit_s"), ".0f"), str(st.get("note") or "")]
            for st in s.get("steps", [])]
    return table(["step", "status", "seconds", "limit s", "note"], rows)


def block_tables(s: dict) -> list[str]:
    blocks, copy = s["blocks"], s.get("copy_gbps")
    header = ["block", "cin→hidden→cout, stride", "input", "config", "fused ms"]
    header += [f"{b} / fused" for b in BASELINES] + ["heuristic / fused"]
    header += ["fused GB/s", "% of copy", "floor ms", "fused / floor"]
    lines = []
    for dtype, batch in combos(blocks):
        rows = []
        for r in sorted((r for r in blocks if (r["dtype"], r["batch"], r["provider"]) == (dtype, batch, "fused")),
                        key=lambda r: r["block"]):
            at = dict(block=r["block"], dtype=dtype, batch=batch)
            fused = r["ms"]
            gbps = ratio(r["bytes"] / 1e6, fused)  # bytes / ms -> GB/s
            floor = ratio(r["bytes"] / 1e6, copy)  # the fused floor: its bytes at copy speed
            rows.append([str(r["block"]), f"{r['cin']}→{r['hidden']}→{r['cout']}, s{r['stride']}",
                         f"{r['size']}x{r['size']}", r.get("config") or DASH, fmt(fused, ".4f")]
                        + [fmt(ratio(ms_of(blocks, provider=b, **at), fused), ".2f", "x") for b in BASELINES]
                        + [fmt(ratio(ms_of(blocks, provider="fused_heuristic", **at), fused), ".2f", "x")]
                        + [fmt(gbps, ".0f"), fmt(ratio(gbps, copy), ".0%"),
                           fmt(floor, ".3g"), fmt(ratio(fused, floor), ".2f", "x")])
        lines += ["", f"### {dtype}, batch {batch}", ""] + table(header, rows)
    return lines


def render_md(s: dict) -> str:
    tf32 = "on" if s.get("allow_tf32") else "off"
    timed = (f"Times: median of {s.get('reps')} CUDA-event timings of one call, inputs rotated through a pool "
             "larger than L2. ")
    lines = ["# MobileNetV2 fused-kernel benchmarks", ""]
    if s.get("steps"):
        lines += ["## Steps of this run (bench/gpu_run.sh)", "",
                  "Every step before this summary; the summary's own status is in gpu_run.log.", ""]
        lines += steps_table(s) + [""]
    if s.get("smoke"):
        lines += ["**Smoke run** (tiny sizes, Triton's interpreter on the CPU): the code paths ran, nothing was "
                  "timed, so every time below is a dash.", ""]
        timed = ""
    elif not s.get("reps"):
        lines += ["**Nothing was timed in this run** (see the steps above): every time below is a dash.", ""]
        timed = ""
    lines += [f"GPU {s.get('gpu')} ({s.get('sm_count')} SMs), driver {s.get('driver')}, CUDA {s.get('cuda')}; "
              f"torch {s.get('torch')}, Triton {s.get('triton')}, cuDNN {s.get('cudnn')}; commit {s.get('commit')}; "
              f"date {s.get('datetime') or s.get('date')}; TF32 for fp32 convolutions {tf32}.",
              f"Device-to-device copy bandwidth (read + write): {fmt(s.get('copy_gbps'), '.0f', ' GB/s')}.",
              "",
              timed + "Ratios: baseline ms / fused ms, so above 1x the fused kernels are faster. Providers: "
              "`fused` (Triton kernels), `fused_graph` (the same as one CUDA graph), `eager_cl` (cuDNN, "
              "channels_last), `eager_cl_folded` (cuDNN with BN folded), `compile` (torch.compile); the eager "
              "baselines are timed with cudnn.benchmark off and on, and the faster counts; "
              "`heuristic / fused` is the fused kernel with the heuristic's launch config instead of the "
              "tuned table's (the performance model's choice): above 1x the model chose well."]
    if s.get("cold_start_s") is not None:
        lines += ["", f"Cold start (first forward of the fused model at batch 256 fp16 with an empty Triton cache, "
                      f"compilation included): {s['cold_start_s']:.1f} s."]
    if s.get("skipped_for_time"):
        lines += ["", f"**{s['skipped_for_time']} benchmarks did not run: the time budget ran out.**"]
    if s["model"]:
        r = s["model"][0]
        lines += ["", f"## Whole model (width {r.get('width')}, {r.get('resolution')} px)", ""] + model_table(s)
        repeated = [r for r in s["model"] if r.get("ms_repeats") and len(r["ms_repeats"]) > 1]
        if repeated:
            spread = max(max(r["ms_repeats"]) / min(r["ms_repeats"]) for r in repeated)
            lines += ["", f"Headline cases ran {max(r['repeats'] for r in repeated)} times, interleaved "
                          f"(every provider once, then again); times are the median; the widest spread "
                          f"between repeats of one case was {spread:.2f}x."]
        cudnn = cudnn_benchmark_table(s)
        if cudnn:
            lines += ["", "### cuDNN autotuning (torch.backends.cudnn.benchmark)", ""] + cudnn
    if s.get("family"):
        lines += ["", "## Other models of the inverted-residual family (whole model)", "",
                  "Random weights; fused = every block, the stem, the head and the classifier where the kernels "
                  "compute them (see the fusion report); first call: Triton's compilation included."]
        lines += [""] + family_table(s)
    if s.get("diag"):
        lines += diag_lines(s["diag"])
    if s["blocks"]:
        lines += ["", "## Blocks of MobileNetV2 1.0", "",
                  "GB/s: the fused floor's bytes (input and output once, weights once) per fused time; "
                  "floor ms: those bytes at copy bandwidth."] + block_tables(s)
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> bool:
    """Per-block bars at float16 batch 256 and whole-model images/s against batch, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("summarize: matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, (ax_b, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    dtype, batch = PLOT_BLOCKS_AT
    bars = [r for r in s["blocks"] if (r["dtype"], r["batch"]) == PLOT_BLOCKS_AT and r["ms"] is not None]
    providers = [p for p in MODEL_PROVIDERS if any(r["provider"] == p for r in bars)]
    for i, p in enumerate(providers):
        pts = sorted((r["block"], r["ms"]) for r in bars if r["provider"] == p)
        width = 0.8 / len(providers)
        ax_b.bar([b - 0.4 + width * (i + 0.5) for b, _ in pts], [ms for _, ms in pts], width, label=p,
                 color=color(p))
    ax_b.set(title=f"blocks, {dtype}, batch {batch}", xlabel="block", ylabel="ms (lower is better)",
             xticks=range(1, 18))
    lines = [r for r in s["model"] if r["ms"] is not None]
    for dt in DTYPE_ORDER:
        for p in MODEL_PROVIDERS:
            pts = sorted((r["batch"], r["batch"] / r["ms"] * 1e3) for r in lines
                         if (r["provider"], r["dtype"]) == (p, dt))
            if pts:
                ax_m.plot(*zip(*pts), marker="o", color=color(p), linestyle="-" if dt == "float16" else "--",
                          label=f"{p} {dt}")
    ax_m.set(title="whole model", xlabel="batch", ylabel="images / s (higher is better)")
    if lines:
        ax_m.set_xscale("log", base=2)
        ax_m.set_yscale("log")
        batches = sorted({r["batch"] for r in lines})
        ax_m.set_xticks(batches, labels=[str(b) for b in batches], minor=False)
        ax_m.set_xticks([], minor=True)
    for ax, has in ((ax_b, bars), (ax_m, lines)):
        if has:
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no timings\n(smoke run)" if s.get("smoke") else "not measured",
                    ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"MobileNetV2, {s.get('gpu')}, commit {s.get('commit')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def results_folder_name(s: dict) -> str:
    """bench/results/<date>-<gpu>: where this run's summary goes when committed."""
    return f"{(s.get('datetime') or 'undated')[:10]}-{s.get('gpu_slug') or 'gpu'}"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    bench_jsons, out = [Path(a) for a in argv[:-1]], Path(argv[-1])
    s = load(*bench_jsons)
    if not any(s["sources"].values()) and not s["steps"] and s.get("gpu") is None:
        print(f"summarize: nothing to summarise: none of {', '.join(map(str, bench_jsons))} (nor their .jsonl) "
              "exists, and no facts.json or steps.jsonl beside them", file=sys.stderr)
        return 1
    for name, source in s["sources"].items():
        if source is None or not source.endswith(".json"):
            print(f"summarize: {name}: {source or 'no results'}", file=sys.stderr)
    cold = bench_jsons[0].with_name("cold_start.json")  # bench/cold_start.py, run by gpu_run.sh
    s["cold_start_s"] = json.loads(cold.read_text())["cold_start_s"] if cold.is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    md = render_md(s)
    (out / "summary.md").write_text(md)
    wrote = ["summary.json", "summary.md"] + (["summary.png"] if plot(s, out / "summary.png") else [])
    print(f"summarize: {len(s['model'])} model and {len(s['blocks'])} block measurements; wrote "
          f"{', '.join(str(out / w) for w in wrote)}")
    if s["steps"]:
        print("\n".join(steps_table(s)))
    if s["model"]:
        print("\n".join(model_table(s)))
    if s["family"]:
        print("\n".join(family_table(s)))
    if not s.get("smoke"):
        print(f"to keep this run: copy those files to bench/results/{results_folder_name(s)}/ and run "
              "python bench/update_results.py")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
