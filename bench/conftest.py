"""Benchmark harness: --smoke, the interpreter off the GPU, deselection, deadline, run facts.

    python -m pytest bench --benchmark-json=out/bench.json     on a GPU
    python -m pytest bench --smoke                             anywhere: tiny sizes, batch 1, one
                                                               round, Triton's interpreter on CPU;
                                                               keeps the code paths from rotting,
                                                               makes no timing claims

Triton's interpreter must be switched on before the kernels are imported, so it is switched
on here, at the top of the first file pytest imports, and only when no CUDA device exists.
"""

import signal
import time

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


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true", default=False,
                     help="mnv2 bench: tiny sizes, batch 1, one round, no timing claims (env MNV2_BENCH_SMOKE=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_deselect: a generated case the suite's rules leave out")
    config.stash[_SKIPPED_FOR_TIME] = 0
    s = benchlib.settings(config)  # bad MNV2_BENCH_* values fail here, before collection
    if s.smoke and not s.on_gpu:
        # Tiny tensors gain nothing from threads, and on a busy small machine OpenMP threads
        # waiting on each other made float16 CPU convolutions ~100x slower.
        torch.set_num_threads(1)
    # `timeout` (bench/gpu_run.sh) sends SIGTERM: end the session as on Ctrl-C, so that
    # pytest-benchmark still writes the JSON of what was measured.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_report_header(config):
    return benchlib.settings(config).describe()


def pytest_collection_modifyitems(config, items):
    s = benchlib.settings(config)
    dropped = [item for item in items if item.get_closest_marker("bench_deselect")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("bench_deselect")]
    # Whole-model cases carry the headline numbers: run them first, so that a run cut short
    # by its deadline still has them.
    items.sort(key=lambda item: item.path.name != "test_bench_model.py")
    if not HAS_CUDA and not s.smoke:
        skip = pytest.mark.skip(reason=NO_GPU_REASON)
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def settings(pytestconfig) -> benchlib.Settings:
    return benchlib.settings(pytestconfig)


@pytest.fixture(scope="session", autouse=True)
def _run_info(pytestconfig):
    # Before any benchmark: the copy bandwidth is measured on an idle, empty GPU.
    return benchlib.run_info(pytestconfig)


@pytest.fixture(autouse=True)
def _deadline_and_cleanup(request, settings):
    if settings.deadline is not None and time.time() > settings.deadline:
        request.config.stash[_SKIPPED_FOR_TIME] += 1
        pytest.skip("time budget used up (MNV2_BENCH_DEADLINE)")
    torch.manual_seed(0)
    yield
    if settings.on_gpu:
        torch.cuda.empty_cache()  # the next case starts without the last one's cached blocks


def pytest_benchmark_update_machine_info(config, machine_info):
    # The facts of the process that ran the benchmarks, read back by bench/summarize.py.
    machine_info["mnv2_fast"] = dict(benchlib.run_info(config),
                                     skipped_for_time=config.stash.get(_SKIPPED_FOR_TIME, 0))
