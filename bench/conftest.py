"""Benchmark harness: --smoke, the interpreter off the GPU, phases and run order, deadline,
a JSONL record per finished case, run facts.

    python -m pytest bench --benchmark-json=out/bench.json     on a GPU
    python -m pytest bench --smoke                             anywhere: tiny sizes, batch 1, one
                                                               round, Triton's interpreter on CPU;
                                                               keeps the code paths from rotting,
                                                               makes no timing claims

Every case that finishes is appended at once to a JSONL file (--bench-jsonl, by default the
--benchmark-json path with the suffix .jsonl), so a run killed before pytest-benchmark
writes its JSON still has the cases it finished; bench/summarize.py reads either.  A case
skipped (timm missing, the time budget spent) is appended too, with its reason.

Triton's interpreter must be switched on before the kernels are imported, so it is switched
on here, at the top of the first file pytest imports, and only when no CUDA device exists.
"""

import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch  # importing torch does not import triton

from mnv2_fast.tools.interpreter import use_interpreter  # imports no kernels

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    use_interpreter()

import pytest  # noqa: E402

import benchlib  # noqa: E402

NO_GPU_REASON = ("no CUDA device: the benchmarks time GPU work. Run with --smoke (or MNV2_BENCH_SMOKE=1) "
                 "to exercise their code paths through Triton's interpreter instead")
_SKIPPED_FOR_TIME = pytest.StashKey[int]()
_COMPILE_SECONDS = pytest.StashKey[dict]()  # suite -> seconds each finished torch.compile case took
_JSONL = pytest.StashKey[Path | None]()


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true", default=False,
                     help="mnv2 bench: tiny sizes, batch 1, one round, no timing claims (env MNV2_BENCH_SMOKE=1)")
    parser.addoption("--bench-jsonl", default=None, metavar="PATH",
                     help="mnv2 bench: append each finished case here as one JSON line "
                          "(default: the --benchmark-json path with the suffix .jsonl)")


def option_path(value) -> Path | None:
    """--benchmark-json's value as a path: older pytest-benchmark releases (the GPU image's)
    hand over the file they opened for it, newer ones its name."""
    if value is None:
        return None
    return Path(value if isinstance(value, (str, os.PathLike)) else value.name)


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_deselect: a generated case the suite's rules leave out")
    config.stash[_SKIPPED_FOR_TIME] = 0
    config.stash[_COMPILE_SECONDS] = {}
    s = benchlib.settings(config)  # bad MNV2_BENCH_* values fail here, before collection
    if s.smoke and not s.on_gpu:
        # Tiny tensors gain nothing from threads, and on a busy small machine OpenMP threads
        # waiting on each other made float16 CPU convolutions ~100x slower.
        torch.set_num_threads(1)
    jsonl = config.getoption("--bench-jsonl")
    bench_json = option_path(config.getoption("benchmark_json", None))
    if jsonl is None and bench_json is not None:
        jsonl = bench_json.with_suffix(".jsonl")
    config.stash[_JSONL] = Path(jsonl) if jsonl else None
    if jsonl:
        Path(jsonl).parent.mkdir(parents=True, exist_ok=True)
        Path(jsonl).write_text("")  # this session's records only
    # `timeout` (bench/gpu_run.sh) sends SIGTERM: end the session as on Ctrl-C, so that
    # pytest-benchmark still writes the JSON of what was measured.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_report_header(config):
    return benchlib.settings(config).describe()


def _params(item) -> dict:
    return item.callspec.params if hasattr(item, "callspec") else {}


def _suite(item) -> str:
    p = _params(item)
    return "block" if "block" in p else "family" if "network" in p else "model"


def pytest_collection_modifyitems(config, items):
    s = benchlib.settings(config)
    dropped = [item for item in items if item.get_closest_marker("bench_deselect")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("bench_deselect")]

    # Headline cases first, torch.compile last across both suites: a run cut short by its
    # deadline keeps the numbers that answer the most.
    def order(item):
        p = _params(item)
        phase = benchlib.phase_of(s, p["provider"], p["dtype"], p["batch"], p.get("block"), p.get("network"))
        return benchlib.run_order(s, _suite(item), phase, p.get("repeat", 0), p["provider"])

    items.sort(key=order)
    if not HAS_CUDA and not s.smoke:
        skip = pytest.mark.skip(reason=NO_GPU_REASON)
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def settings(pytestconfig) -> benchlib.Settings:
    return benchlib.settings(pytestconfig)


def _append(config, record: dict) -> None:
    path = config.stash.get(_JSONL, None)
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


@pytest.fixture(scope="session", autouse=True)
def _run_info(pytestconfig):
    # Before any benchmark: the copy bandwidth is measured on an idle, empty GPU.
    facts = benchlib.run_info(pytestconfig)
    _append(pytestconfig, {"machine_info": {"mnv2_fast": facts},
                           "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return facts


@pytest.fixture(autouse=True)
def _deadline_and_cleanup(request, settings):
    p = _params(request.node)
    compile_case = p.get("provider") == "compile"
    if settings.deadline is not None:
        left = settings.deadline - time.time()
        need = (benchlib.expected_compile_s(settings, _suite(request.node), request.config.stash[_COMPILE_SECONDS])
                if compile_case else 0.0)
        if left <= need:
            request.config.stash[_SKIPPED_FOR_TIME] += 1
            pytest.skip(f"time budget used up (MNV2_BENCH_DEADLINE): {max(left, 0):.0f} s left"
                        + (f", a torch.compile case is expected to take {need:.0f} s" if compile_case else ""))
    torch.manual_seed(0)
    start = time.time()
    yield
    if compile_case:
        request.config.stash[_COMPILE_SECONDS].setdefault(_suite(request.node), []).append(time.time() - start)
    if settings.on_gpu:
        torch.cuda.empty_cache()  # the next case starts without the last one's cached blocks


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and call.when in ("setup", "call"):  # why a case did not run, kept with the results
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _append(item.config, {"skipped": {"name": item.name, "params": _params(item),
                                          "reason": reason.removeprefix("Skipped: ")}})
        return
    if call.when != "call" or not report.passed:
        return
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(fixture, "stats", None)
    if stats:  # a finished measurement: keep it now, whatever happens to the session later
        _append(item.config, {"name": stats.name, "fullname": stats.fullname, "params": stats.params,
                              "extra_info": stats.extra_info, "stats": stats.stats.as_dict()})


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # A case cut short inside pytest-benchmark's rounds (a timeout, Ctrl-C) leaves a record with
    # no timings, on which pytest-benchmark's JSON writer fails ("min() arg is an empty
    # sequence") and writes nothing.  Drop those before it runs.
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None:
        empty = [b for b in bench_session.benchmarks if not b]
        if empty:
            bench_session.benchmarks[:] = [b for b in bench_session.benchmarks if b]
            print(f"\nmnv2 bench: dropped {len(empty)} unfinished measurement(s): "
                  f"{', '.join(b.name for b in empty)}", file=sys.stderr)
    _append(session.config, {"session": {"exitstatus": int(exitstatus),
                                         "skipped_for_time": session.config.stash.get(_SKIPPED_FOR_TIME, 0)}})
    yield


def pytest_benchmark_update_machine_info(config, machine_info):
    # The facts of the process that ran the benchmarks, read back by bench/summarize.py.
    machine_info["mnv2_fast"] = dict(benchlib.run_info(config),
                                     skipped_for_time=config.stash.get(_SKIPPED_FOR_TIME, 0))
