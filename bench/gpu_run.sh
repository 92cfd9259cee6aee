#!/usr/bin/env bash
# Everything a GPU check needs, in one command for a freshly started GPU machine without
# network (torch, Triton, pytest and pytest-benchmark installed; nothing is pip-installed:
# the package runs from this checkout through PYTHONPATH):
#
#   bash bench/gpu_run.sh OUT_DIR             GPU tests, compute-sanitizer, benchmarks, summary
#   bash bench/gpu_run.sh --dry-run OUT_DIR   the same steps without a GPU: GPU tests skip, the
#                                             sanitizer step only runs its no-GPU check, the
#                                             benchmarks run in smoke mode (Triton's interpreter)
#
# OUT_DIR gets gpu_run.log (everything printed), cold_start.json, bench.json, summary.json,
# summary.md and summary.png.  The steps stop at the first failure, except that failed or cut-short
# benchmarks are still summarised (they are too expensive to throw away) before the
# script exits non-zero.
#
# Time: the whole run stays within MNV2_GPU_BUDGET_S (default 480 s).  Each step has its
# own limit (MNV2_GPU_TESTS_S=150, MNV2_GPU_SANITIZE_S=120, MNV2_GPU_COLD_S=60,
# MNV2_GPU_SUMMARY_S=30, which is
# also kept back for the summary); the benchmarks get the rest, and stop starting new cases
# MNV2_BENCH_MARGIN_S (default 40) before their limit, so that pytest-benchmark still writes
# its JSON.  MNV2_BENCH_* variables choose what is measured (see bench/benchlib.py).
# MNV2_GPU_SANITIZE=0 skips the sanitizer step, saying so (compute-sanitizer refuses the
# GPU on some machines).  PYTHON picks the interpreter (default: the first python with torch).

set -uo pipefail

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: bash bench/gpu_run.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
cd "$ROOT" || exit 2

BUDGET=${MNV2_GPU_BUDGET_S:-480}
TESTS_S=${MNV2_GPU_TESTS_S:-150}
SANITIZE_S=${MNV2_GPU_SANITIZE_S:-120}
COLD_S=${MNV2_GPU_COLD_S:-60}
SUMMARY_S=${MNV2_GPU_SUMMARY_S:-30}
MARGIN_S=${MNV2_BENCH_MARGIN_S:-40}
KILL_S=20  # after its limit a step gets SIGTERM, and SIGKILL this much later
RESERVE=$((SUMMARY_S + KILL_S))  # kept back by every step for the summary
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

LOG="$OUT/gpu_run.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
trap 'exec >&- 2>&-; wait "$TEE_PID"' EXIT  # let tee finish the log before the script ends

START=$SECONDS
used() { echo $((SECONDS - START)); }

banner() { printf '\n==== %s  [%s s of %s s used] ====\n' "$1" "$(used)" "$BUDGET"; }

die() {
    printf '\n!!!! FAILED: %s  [%s s of %s s used]\n' "$1" "$(used)" "$BUDGET"
    exit "${2:-1}"
}

# limit STEP_BUDGET RESERVE: seconds a step may take, within the total and leaving RESERVE.
limit() {
    local left=$((BUDGET - $(used) - $2 - KILL_S))
    echo $(($1 < left ? $1 : left))
}

# run LABEL LIMIT CMD...: run CMD under `timeout`, print its exit status and time taken.
run() {
    local label=$1 lim=$2 t=$SECONDS rc
    shift 2
    if ((lim < 10)); then
        echo "no time left for $label"
        return 124
    fi
    echo "limit ${lim} s: $*"
    timeout -k "$KILL_S" "$lim" "$@"
    rc=$?
    ((rc == 124 || rc == 137)) && echo "$label: stopped by its time limit (${lim} s)"
    echo "---- $label: exit $rc after $((SECONDS - t)) s"
    return $rc
}

pick_python() {
    if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"; return; fi
    local c
    # PATH first; then a virtual environment inside or beside the checkout.
    for c in python python3 "$ROOT/.venv/bin/python" "$(dirname "$ROOT")/venv/bin/python"; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' 2>/dev/null; then
            echo "$c"
            return
        fi
    done
    return 1
}

# ---------------------------------------------------------------- 0. environment
banner "0. environment ($( ((DRY_RUN)) && echo 'DRY RUN: smoke mode, no GPU needed' || echo 'GPU run'))"
PY=$(pick_python) || die "no python with torch found (set PYTHON=/path/to/python)" 2
echo "repo $ROOT, output $OUT, python $(command -v "$PY")"
echo "budget: total ${BUDGET} s; tests ${TESTS_S} s, sanitizer ${SANITIZE_S} s, summary ${SUMMARY_S} s," \
     "benchmarks the rest (new cases stop ${MARGIN_S} s before their limit)"
env | grep -E '^MNV2_' | sort
"$PY" - <<'EOF' || die "the Python environment lacks what the steps need" 2
import importlib, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device:",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "pytest", "pytest_benchmark", "matplotlib"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except ImportError:
        if name == "matplotlib":
            print("matplotlib missing: the summary will have no plot")
        else:
            raise SystemExit(f"{name} is not installed")
EOF
if ((DRY_RUN)); then
    export MNV2_BENCH_SMOKE=1
else
    "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
        die "no CUDA device here (use --dry-run on a machine without a GPU)" 2
    nvidia-smi -L 2>/dev/null
fi

# ---------------------------------------------------------------- 1. GPU tests
banner "1. GPU tests: pytest tests -m gpu"
run "GPU tests" "$(limit "$TESTS_S" "$RESERVE")" "$PY" -m pytest tests -m gpu -x -q -p no:cacheprovider ||
    die "GPU tests"

# ---------------------------------------------------------------- 2. compute-sanitizer
banner "2. compute-sanitizer memcheck: every shipped launch config once"
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if ((DRY_RUN)); then
    echo "dry run: no GPU to sanitise; compute-sanitizer ${SANITIZER:-not found}. Checking that the runner"
    echo "reports the missing device (exit 2) instead of passing:"
    run "sanitizer (dry run)" "$(limit 60 "$RESERVE")" "$PY" -m mnv2_fast.tools.sanitize
    rc=$?
    ((rc == 2)) || die "python -m mnv2_fast.tools.sanitize without a GPU exited $rc, expected 2"
    echo "ok: skipped for lack of a GPU, as it should be"
elif [[ ${MNV2_GPU_SANITIZE:-1} == 0 ]]; then
    echo "SKIPPED by request (MNV2_GPU_SANITIZE=0): this run has NO memcheck of the shipped launch configs"
else
    [[ -n $SANITIZER ]] || die "compute-sanitizer is not on PATH nor in /usr/local/cuda*/bin"
    # Without PyTorch's caching allocator every tensor is its own allocation, so an access
    # past a tensor's end lands outside any allocation, where memcheck sees it.
    if ! run "sanitizer" "$(limit "$SANITIZE_S" "$RESERVE")" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" -m mnv2_fast.tools.sanitize; then
        grep -q "Device not supported" "$LOG" &&
            echo "compute-sanitizer cannot attach to this GPU here: use another machine, or MNV2_GPU_SANITIZE=0"
        die "compute-sanitizer"
    fi
fi

# ---------------------------------------------------------------- 2b. cold start
banner "2b. cold start: first forward with an empty Triton cache"
if ((DRY_RUN)); then
    echo "dry run: no GPU, no cold start to time"
else
    cold_cache=$(mktemp -d)
    run "cold start" "$(limit "$COLD_S" "$RESERVE")" env TRITON_CACHE_DIR="$cold_cache" "$PY" bench/cold_start.py \
        "$OUT/cold_start.json" || echo "cold start not measured (the benchmarks still run)"
    rm -rf "$cold_cache"
fi

# ---------------------------------------------------------------- 3. benchmarks
banner "3. benchmarks: pytest bench"
lim=$(limit "$BUDGET" "$RESERVE")
export MNV2_BENCH_DEADLINE=$(($(date +%s) + lim - MARGIN_S))
rm -f "$OUT/bench.json"
run "benchmarks" "$lim" "$PY" -m pytest bench -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
    --benchmark-columns=median,rounds --benchmark-sort=name
bench_rc=$?
if ((bench_rc != 0)); then
    [[ -s $OUT/bench.json ]] || die "benchmarks (no bench.json written)" "$bench_rc"
    echo "benchmarks failed or were cut short (exit $bench_rc): summarising what was measured"
fi

# ---------------------------------------------------------------- 4. summary
banner "4. summary: bench/summarize.py"
run "summary" "$(limit "$SUMMARY_S" 0)" "$PY" bench/summarize.py "$OUT/bench.json" "$OUT" || die "summary"

((bench_rc == 0)) || die "benchmarks (exit $bench_rc; the summary covers what was measured)" "$bench_rc"
banner "done in $(used) s of the ${BUDGET} s budget"
ls -l "$OUT"
