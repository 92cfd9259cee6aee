"""bench/gpu_run.sh when a benchmark step is stopped by its time limit in the middle of
pytest-benchmark's rounds: the run goes on, the step is marked timed out, and the cases it
finished before are in the summary, from pytest-benchmark's JSON or, when that was never
written, from the JSONL the bench harness appends to after every case."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ["test_model[eager_cl-float16-bs1]", "test_model[eager_cl-float16-bs1-cudnn_benchmark]"]


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_step_killed_mid_round_is_summarised(tmp_path):
    out = tmp_path / "out"
    # Not an xdist worker's variables: the run's own pytest would take itself for a worker.
    outer = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env = dict(outer, PYTHON=sys.executable, MNV2_GPU_STEPS="headline", MNV2_GPU_KEEP_RAW="1",
               MNV2_GPU_KILL_S="30", MNV2_BENCH_PROVIDERS="eager_cl,eager_cl_folded",  # the fast ones
               PYTEST_ADDOPTS="-p kill_mid_round", MNV2_TEST_KILL_AFTER=str(len(FINISHED)),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "--dry-run", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 1, log[-3000:]  # a step timed out; the run itself went to the end

    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["environment"]["status"] == "ok", steps
    assert steps["headline"]["status"] == "timed out" and steps["headline"]["rc"] == 124, steps
    assert steps["tests"]["status"] == "skipped" and "not selected" in steps["tests"]["note"], steps
    assert [(m["provider"], m["cudnn_benchmark"]) for m in summary["model"]] == [("eager_cl", False),
                                                                                ("eager_cl", True)]
    assert "| headline | timed out |" in (out / "summary.md").read_text()
    assert (out / "raw.tar.gz").is_file()

    # pytest-benchmark wrote its JSON without the case cut short (no "min() arg is an empty sequence").
    raw = out / "raw"
    bench = json.loads((raw / "bench-headline.json").read_text())
    assert [b["name"] for b in bench["benchmarks"]] == FINISHED
    assert "dropped 1 unfinished measurement" in log

    # Killed before any JSON is written (SIGKILL): the JSONL holds the same cases.
    (raw / "bench-headline.json").unlink()
    again = tmp_path / "again"
    assert _summarize().main([str(raw / "bench-headline.json"), str(again)]) == 0
    from_jsonl = json.loads((again / "summary.json").read_text())
    assert from_jsonl["model"] == summary["model"]
    assert from_jsonl["sources"]["bench-headline"] == "bench-headline.jsonl (no JSON written)"
    assert from_jsonl["commit"] == summary["commit"]
    assert from_jsonl["steps"][:len(summary["steps"])] == summary["steps"]  # and the final summary's own

    # Older pytest-benchmark releases (the GPU image's) create the JSON when pytest starts: a
    # session that dies leaves it empty, and the JSONL still holds the cases.
    (raw / "bench-headline.json").write_text("")
    empty = tmp_path / "empty"
    assert _summarize().main([str(raw / "bench-headline.json"), str(empty)]) == 0
    assert json.loads((empty / "summary.json").read_text())["model"] == summary["model"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")  # bench/'s marks: its conftest registers them
def test_benchmark_json_option_as_an_open_file(tmp_path):
    """Older pytest-benchmark releases hand the bench harness the file they opened for
    --benchmark-json, newer ones its name: the JSONL goes beside it either way (the first GPU
    run's benchmark steps all stopped at this, in pytest_configure)."""
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "bench" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec.loader.exec_module(conftest)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    path = tmp_path / "bench-headline.json"
    with open(path, "wb") as opened:
        assert conftest.option_path(opened) == path
    assert conftest.option_path(str(path)) == conftest.option_path(path) == path
    assert conftest.option_path(None) is None


def test_family_rows_keep_the_reason_a_model_was_skipped(tmp_path):
    """The family's models (bench/test_bench_family.py) become summary rows; a case skipped for
    a reason (timm missing) is a row that says why, from the JSONL beside the JSON."""
    raw = tmp_path / "raw"
    raw.mkdir()
    info = {"mnv2_fast": {"gpu": "H200", "commit": "abc", "smoke": False}}
    ran = {"extra_info": {"kind": "family", "network": "mnasnet1_0", "provider": "fused", "dtype": "float16",
                          "batch": 256, "ms": 2.0, "resolution": 224, "first_call_s": 9.0, "cudnn_benchmark": None}}
    eager = {"extra_info": dict(ran["extra_info"], provider="eager_cl", ms=5.0, cudnn_benchmark=True)}
    why = "timm is not installed (a development dependency of mnv2-fast): no timm models in this run"
    skipped = [{"skipped": {"name": f"test_family[{p}]", "reason": why,
                            "params": {"network": "efficientnet_lite0", "provider": p, "dtype": "float16", "batch": 256,
                                       "cudnn_benchmark": None}}} for p in ("fused", "compile")]
    (raw / "bench-family.json").write_text(json.dumps({"machine_info": info, "datetime": "2026-01-01",
                                                       "benchmarks": [ran, eager]}))
    (raw / "bench-family.jsonl").write_text("\n".join(json.dumps(e) for e in [{"machine_info": info}, ran, eager]
                                                      + skipped) + "\n")
    out = tmp_path / "out"
    assert _summarize().main([str(raw / "bench-family.json"), str(out)]) == 0
    family = json.loads((out / "summary.json").read_text())["family"]
    assert [(r["network"], r["provider"], r["ms"], r.get("skipped")) for r in family] == [
        ("mnasnet1_0", "fused", 2.0, None), ("mnasnet1_0", "eager_cl", 5.0, None),
        ("efficientnet_lite0", "fused", None, why), ("efficientnet_lite0", "compile", None, why)]
    md = (out / "summary.md").read_text()
    assert "| mnasnet1_0 | 224 | float16 | 256 | 2.000 | 128000 | 2.50x |" in md
    assert f"| efficientnet_lite0 | – | float16 | 256 | – | – | – | – | – | – | {why} |" in md


def test_a_faulting_layer_with_a_workaround_still_gets_the_headline_measured(tmp_path):
    """The diag step (bench/gpu_diag.py, through the interpreter in a dry run) finds the layer
    made to fault, a config variant of it that runs right, and writes the workaround; the
    headline then runs with it and says so."""
    out = tmp_path / "out"
    outer = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env = dict(outer, PYTHON=sys.executable, MNV2_GPU_STEPS="diag,headline", MNV2_GPU_KEEP_RAW="1",
               MNV2_GPU_DIAG_ARGS="--fail-at features.2", MNV2_BENCH_PROVIDERS="eager_cl")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "--dry-run", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 1, log[-3000:]  # the fault fails the run; the steps after it still ran
    steps = {s["step"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    diag = steps["diag"]
    assert diag["status"] == "failed" and diag["rc"] == 1, diag
    assert "1 faulted: features.2 (batch 1); workaround: features.2 faulted at batch 1 as shipped;" in diag["note"]
    headline = steps["headline"]
    assert headline["status"] == "ok", headline
    assert "with gpu_diag's workaround for the faulting layers (MNV2_FAST_TUNED_DIR)" in headline["note"], headline
    # The diagnosis is in the summary (raw/ is not committed): every layer, the fault, the variants.
    summary = json.loads((out / "summary.json").read_text())
    diag = summary["diag"]
    assert [(f["layer"], f["batch"], f["rc"]) for f in diag["faults"]] == [("features.2", 1, 77)]
    status = {r["layer"]: r["status"] for r in diag["layers"]}
    # 19 layers: features.1 runs in features.0's kernel, with the stem.
    assert len(status) == 19 and status.pop("features.2") == "faulted" and set(status.values()) == {"ok"}
    assert {v["variant"]: v["rc"] for v in diag["variants"]}["as shipped"] == 77
    md = (out / "summary.md").read_text()
    assert "## Layer by layer (bench/gpu_diag.py" in md and "| features.2 | 1 | faulted |" in md
    assert "| features.2 | 1 | as shipped | failed (exit 77) |" in md
    # memcheck's report as committed: the GPU machine's folders cut off.
    short = _summarize()._short_paths("    at _inverted_residual_kernel+0x1a30 in /srv/checkout/kernels/block.py:204")
    assert short == "    at _inverted_residual_kernel+0x1a30 in kernels/block.py:204"
    # The workaround is a tuned table the launchers read: the faulting block's shape, its variant.
    from mnv2_fast.kernels import tuned

    table = tuned.read_table(out / "raw" / "diag" / "workaround" / "default.json")
    ((shape, dtype), [(lo, hi, cfg)]), = table.items()
    assert dtype == "float16" and lo <= 1 <= hi and shape.stride == 2
    assert cfg.stage_vectors is False  # the first switch of the shipped config turned off
