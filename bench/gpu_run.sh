#!/usr/bin/env bash
# Everything a GPU check needs, in one command for a freshly started GPU machine without
# network (torch, Triton and pytest installed; pytest-benchmark, pytest-xdist, matplotlib and
# compute-sanitizer used when there; nothing is pip-installed: the package runs from this
# checkout through PYTHONPATH):
#
#   bash bench/gpu_run.sh OUT_DIR             the GPU run
#   bash bench/gpu_run.sh --dry-run OUT_DIR   the same steps without a GPU: benchmarks in smoke
#                                             mode (Triton's interpreter), tests and sanitizer
#                                             shards only collected or listed
#
# Steps, in this order.  None of them ends the run: each one's status (ok, failed with its
# exit code, timed out, or skipped and why) and duration go to steps.jsonl, and from there
# into summary.json and summary.md.
#   environment     versions; facts.json (GPU, driver, torch, Triton, CUDA, commit, date)
#   cold_start      first forward of the fused model, compilation included, into the run's own
#                   empty Triton cache (later steps reuse what it compiled); then batch 1's
#                   first forward (its configs compiled too)
#   diag            only when the cold start failed: bench/gpu_diag.py, the fused model layer by
#                   layer (a fresh process past each layer that faults), timed against cuDNN,
#                   and each faulting block's config variants and memcheck; in the headline's
#                   time.  When every faulting layer has a variant that ran right, the
#                   benchmark steps run with it (diag/workaround.env: a tuned table of those
#                   configs, or an environment such as MNV2_INLINE_PTX=0), else the headline
#                   is skipped
#   headline        benchmarks, phase headline (bench/benchlib.py): the whole model at fp16,
#                   batches 256 and 1, fused, fused_graph, eager_cl and eager_cl_folded, repeated
#                   and interleaved; the 17 blocks at fp16 batch 256
#   summary         what is measured so far
#   tests           every test that can use a GPU: all of tests/ but the static check and the
#                   packaging test (no GPU in them; CI runs them), with pytest-xdist over the
#                   cores when it is installed, serially when not
#   rest            benchmarks, phase rest: the rest of the matrix, torch.compile excepted
#   ray             tests/test_infer_gpu.py alone: `mnv2-fast infer` on Ray Data against a plain
#                   DataLoader loop, images/s at batch 256 (issue 17); Ray from .carry/ray/
#                   (scripts/pack_ray_for_gpu) where the machine has none, else skipped
#   family          benchmarks, phase family: efficientnet_lite0, mnasnet1_0 and
#                   mobilenetv4_conv_small whole at fp16 batch 256, fused against eager (and
#                   cuDNN autotuning), then torch.compile as time allows; timm's models are
#                   skipped, with that reason, where timm is not installed
#   compile         benchmarks, phase compile: torch.compile cases, each started only when its
#                   expected time still fits
#   sanitizer_warm  every shipped launch config once without instrumentation, in parallel
#                   shards: numerics checked, Triton's cache filled for the sanitizer
#   memcheck        compute-sanitizer memcheck over every shipped config, in parallel shards, at
#                   batch 16 (Triton's variant for batches divisible by 16), the persistent grid
#                   sized as for one multiprocessor (each program walks many tiles)
#   racecheck       compute-sanitizer racecheck over one config of each kernel path (expand at stride 1 and 2, no expand)
#   initcheck       compute-sanitizer initcheck over the same two
#   final_summary   everything, with every step's status
#
# OUT_DIR gets summary.json, summary.md, summary.png, gpu_run.log (everything printed) and
# raw.tar.gz (facts.json, steps.jsonl, cold_start.json, each benchmark step's JSON and JSONL):
# five files, easy to copy back from a remote machine.  MNV2_GPU_KEEP_RAW=1 keeps OUT_DIR/raw/.
#
# Time: one deadline, MNV2_GPU_BUDGET_S (default 540) seconds after the start.  A step's
# limit is its share, cut to what is left once the later steps' minimum is kept back (the
# sanitizer steps 90 s, the final summary MNV2_GPU_SUMMARY_S), so late steps shrink instead of
# overrunning.  Shares: cold start 60 s (MNV2_GPU_COLD_S); a diagnosis MNV2_GPU_DIAG_S (180);
# the headline ends MNV2_GPU_HEADLINE_BY_S (180) s into the run, later by the diagnosis's time;
# summary MNV2_GPU_SUMMARY_S (25); tests MNV2_GPU_TESTS_S (120); rest MNV2_GPU_REST_S (40); Ray
# MNV2_GPU_RAY_S (100); family MNV2_GPU_FAMILY_S (150); torch.compile whatever is left; sanitizer warm-up 45,
# memcheck 90, racecheck 30, initcheck 30.  A step that overruns its limit gets SIGTERM (a
# benchmark step then still writes its JSON), and SIGKILL MNV2_GPU_KILL_S (10) s later;
# benchmark steps stop starting cases MNV2_BENCH_MARGIN_S (15) s before their limit.
#
# Other knobs: MNV2_GPU_STEPS=headline,tests,...  runs only those steps (the environment and
# the summaries always run; "sanitizer" names its four steps); MNV2_GPU_SANITIZE=0 skips the
# sanitizer steps, saying so; MNV2_GPU_WORKERS (default: the core count, at most 16) sets the
# parallel test workers and warm-up shards, MNV2_GPU_MEMCHECK_SHARDS (8) the memcheck
# processes; MNV2_COMMIT names the commit where the checkout has no .git; MNV2_BENCH_* choose
# what is measured (bench/benchlib.py); PYTHON picks the interpreter (default: the first
# python with torch).

set -uo pipefail

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: bash bench/gpu_run.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
RAW="$OUT/raw"
rm -rf "$RAW" "$OUT/raw.tar.gz" "$OUT"/summary.{json,md,png} && mkdir -p "$RAW"  # nothing stale
cd "$ROOT" || exit 2

BUDGET=${MNV2_GPU_BUDGET_S:-540}
HEADLINE_BY=${MNV2_GPU_HEADLINE_BY_S:-180}
DIAG_S=${MNV2_GPU_DIAG_S:-180}
DIAG_USED=0
COLD_S=${MNV2_GPU_COLD_S:-60}
SUMMARY_S=${MNV2_GPU_SUMMARY_S:-25}
TESTS_S=${MNV2_GPU_TESTS_S:-120}
REST_S=${MNV2_GPU_REST_S:-40}
FAMILY_S=${MNV2_GPU_FAMILY_S:-150}
RAY_S=${MNV2_GPU_RAY_S:-100}
KILL_S=${MNV2_GPU_KILL_S:-10}
MARGIN_S=${MNV2_BENCH_MARGIN_S:-15}
STEPS=${MNV2_GPU_STEPS:-all}
MIN_STEP_S=10  # a step given less is skipped: Python and torch take seconds to start
CORES=$(nproc 2>/dev/null || echo 4)
WORKERS=${MNV2_GPU_WORKERS:-$((CORES < 16 ? CORES : 16))}
MEMCHECK_SHARDS=${MNV2_GPU_MEMCHECK_SHARDS:-8}
ORDER=(cold_start diag headline summary tests rest ray family compile sanitizer_warm memcheck racecheck initcheck
       final_summary)
declare -A CAP=([cold_start]=$COLD_S [summary]=$SUMMARY_S [tests]=$TESTS_S [rest]=$REST_S [ray]=$RAY_S
                [family]=$FAMILY_S
                [compile]=$BUDGET
                [sanitizer_warm]=45 [memcheck]=90 [racecheck]=30 [initcheck]=30 [final_summary]=$SUMMARY_S)
declare -A FLOOR=([sanitizer_warm]=20 [memcheck]=40 [racecheck]=15 [initcheck]=15 [final_summary]=$SUMMARY_S)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The steps that run many processes at once (tests, sanitizer shards) give each one CPU
# thread: with 16 OpenMP threads in each of 16 processes, the first GPU run's parallel steps
# got through a small part of their work (bench/NOTES.md).
ONE_THREAD=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)

LOG="$OUT/gpu_run.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
# The run's own Triton cache: the cold start compiles into an empty one, and every later
# step (the tests' parallel workers too) reuses it.
TRITON_CACHE_DIR=$(mktemp -d)
export TRITON_CACHE_DIR
# shellcheck disable=SC2064
trap "rm -rf '$TRITON_CACHE_DIR'; exec >&- 2>&-; wait $TEE_PID" EXIT  # tee finishes the log first

START=$SECONDS
DEADLINE=$(($(date +%s) + BUDGET))
used() { echo $((SECONDS - START)); }
banner() { printf '\n==== %s  [%s s of %s s used] ====\n' "$1" "$(used)" "$BUDGET"; }

selected() {  # NAME: whether MNV2_GPU_STEPS asks for this step
    local name=$1
    [[ $name == sanitizer_warm || $name == memcheck || $name == racecheck || $name == initcheck ]] && name=sanitizer
    [[ $STEPS == all || ,$STEPS, == *,$1,* || ,$STEPS, == *,$name,* ]]
}

kept_after() {  # NAME: seconds kept back for the selected steps after NAME
    local after=0 sum=0 s
    for s in "${ORDER[@]}"; do
        if ((after)) && { [[ $s == final_summary ]] || selected "$s"; }; then
            [[ ${MNV2_GPU_SANITIZE:-1} == 0 && $s =~ check|sanitizer ]] || sum=$((sum + ${FLOOR[$s]:-0}))
        fi
        [[ $s == "$1" ]] && after=1
    done
    echo "$sum"
}

# ---------------------------------------------------------------- step bookkeeping
STEP="" STEP_T0=0 STEP_LIMIT=0 FAILED=0

record() {  # STATUS RC NOTE: one line of steps.jsonl for the current step
    local note=${3//\\/\/}
    note=${note//\"/\'}
    printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "note": "%s"}\n' \
        "$STEP" "$1" "${2:-null}" "$((SECONDS - STEP_T0))" "$STEP_LIMIT" "$note" >>"$RAW/steps.jsonl"
    printf -- '---- %s: %s%s after %s s (limit %s s)%s\n' "$STEP" "$1" "${2:+ (exit $2)}" "$((SECONDS - STEP_T0))" \
        "$STEP_LIMIT" "${3:+: $3}"
}

skip() { record skipped "" "$1"; }

finish() {  # RC [NOTE]: record the current step's outcome from its exit status
    local rc=$1 note=${2:-}
    if ((rc == 0)); then
        record ok "" "$note"
    elif ((rc == 124 || rc == 137)); then
        record "timed out" "$rc" "stopped by its limit (${STEP_LIMIT} s)${note:+; $note}"
        FAILED=1
    else
        record failed "$rc" "$note"
        FAILED=1
    fi
}

begin() {  # NAME TITLE: banner and limit; false (the step recorded as skipped) when it does not run
    STEP=$1 STEP_T0=$SECONDS STEP_LIMIT=0
    banner "$1: $2"
    if [[ $1 != *summary ]] && ! selected "$1"; then
        skip "not selected (MNV2_GPU_STEPS=$STEPS)"
        return 1
    fi
    local cap=${CAP[$1]:-$BUDGET}
    [[ $1 == diag ]] && cap=$DIAG_S
    # The headline ends HEADLINE_BY s in, later by what a diagnosis took before it.
    [[ $1 == headline ]] && cap=$((HEADLINE_BY + DIAG_USED - $(used)))
    local left=$((DEADLINE - $(date +%s) - $(kept_after "$1") - KILL_S))
    STEP_LIMIT=$((cap < left ? cap : left))
    if ((STEP_LIMIT < MIN_STEP_S)); then
        skip "no time left (${STEP_LIMIT} s; the later steps keep $(kept_after "$1") s)"
        return 1
    fi
}

limited() {  # CMD...: run CMD under the current step's limit
    echo "limit ${STEP_LIMIT} s: $*"
    timeout -k "$KILL_S" "$STEP_LIMIT" "$@"
}

# shards N OUTPUT CMD...: CMD --shard I/N for every I in parallel, each under the step's
# limit; their output goes to OUTPUT, then to the log.  Returns 124 when any timed out,
# else the first non-zero exit status, else 0.
shards() {
    local n=$1 output=$2 i rc worst=0 pids=()
    shift 2
    echo "limit ${STEP_LIMIT} s, $n processes: $* --shard I/$n"
    for ((i = 0; i < n; i++)); do
        timeout -k "$KILL_S" "$STEP_LIMIT" "$@" --shard "$i/$n" >"$output.$i" 2>&1 &
        pids+=($!)
    done
    : >"$output"
    for ((i = 0; i < n; i++)); do
        wait "${pids[i]}"
        rc=$?
        sed "s|^|[$i/$n] |" "$output.$i" >>"$output"
        rm -f "$output.$i"
        if ((rc == 124 || rc == 137)); then worst=124; elif ((rc != 0 && worst == 0)); then worst=$rc; fi
    done
    cat "$output"
    return "$worst"
}

launch_total() {  # FILE: the launches a sanitize run (or its shards) covered, from their last lines
    sed -nE 's/.*sanitize: ([0-9]+ of )?([0-9]+) launches (ok|selected).*/\2/p' "$1" | awk '{n += $1} END {print n + 0}'
}

bench_step() {  # PHASE: pytest bench in that phase; JSON and JSONL in raw/
    local phase=$1 json="$RAW/bench-$1.json" margin rc
    if ! "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
        skip "pytest-benchmark is not installed"
        return
    fi
    margin=$((MARGIN_S < STEP_LIMIT / 4 ? MARGIN_S : STEP_LIMIT / 4))
    limited env "${WORKAROUND[@]}" MNV2_BENCH_PHASE="$phase" MNV2_BENCH_DEADLINE=$(($(date +%s) + STEP_LIMIT - margin)) \
        "$PY" -m pytest bench -q -p no:cacheprovider --benchmark-json="$json" \
        --benchmark-columns=median,rounds --benchmark-sort=name
    rc=$?
    local measured skipped note why
    measured=$(grep -c '"extra_info"' "${json%.json}.jsonl" 2>/dev/null)
    skipped=$(sed -nE 's/.*"skipped_for_time": ([1-9][0-9]*).*/\1/p' "${json%.json}.jsonl" 2>/dev/null | tail -n 1)
    note="${measured:-0} cases measured${skipped:+, $skipped not started for lack of time}"
    ((${#WORKAROUND[@]})) && note+="; with gpu_diag's workaround for the faulting layers (${WORKAROUND[*]%%=*})"
    # Cases skipped for another reason (timm missing, say): how many, and the reasons.
    why=$(grep '"skipped": {' "${json%.json}.jsonl" 2>/dev/null | grep -v 'time budget used up' |
        sed -nE 's/.*"reason": "([^"]*)".*/\1/p' | sort | uniq -c | sed -E 's/^ *([0-9]+) /\1 skipped: /' |
        paste -sd';' -)
    note+="${why:+; $why}"
    [[ -s $json ]] || note+="; no JSON written, the JSONL keeps them"
    if ((rc == 5)); then skip "no case in this phase"; else finish "$rc" "$note"; fi
}

summary_step() {
    limited "$PY" bench/summarize.py "$RAW/bench-headline.json" "$RAW/bench-rest.json" "$RAW/bench-family.json" \
        "$RAW/bench-compile.json" "$OUT"
    finish $?
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

# ---------------------------------------------------------------- environment
STEP=environment STEP_T0=$SECONDS STEP_LIMIT=60
banner "environment ($( ((DRY_RUN)) && echo 'DRY RUN: smoke mode, no GPU needed' || echo 'GPU run'))"
if ! PY=$(pick_python); then
    record failed 2 "no python with torch found (set PYTHON=/path/to/python)"
    exit 2
fi
# The commit measured: git's when the checkout has its .git (not a repository around a copy),
# else MNV2_COMMIT from the caller, else "unknown".
if [[ -e $ROOT/.git ]] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    MNV2_COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD)
    [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no) ]] && MNV2_COMMIT+=-dirty
fi
export MNV2_COMMIT=${MNV2_COMMIT:-unknown}
echo "repo $ROOT, output $OUT, python $(command -v "$PY"), commit $MNV2_COMMIT, $CORES cores"
echo "budget ${BUDGET} s, ends $(date -d "@$DEADLINE" '+%H:%M:%S' 2>/dev/null || echo "at +$BUDGET s"); steps: $STEPS"
env | grep -E '^MNV2_' | sort
if ((DRY_RUN)); then
    export MNV2_BENCH_SMOKE=1
elif ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    record failed 2 "no CUDA device here (use --dry-run on a machine without a GPU)"
    exit 2
else
    nvidia-smi -L 2>/dev/null
fi
limited "$PY" bench/facts.py "$RAW/facts.json"
finish $?

# ---------------------------------------------------------------- cold start
if begin cold_start "first forward with an empty Triton cache"; then
    if ((DRY_RUN)); then
        skip "dry run: no GPU, no cold start to time"
    else
        limited "$PY" bench/cold_start.py "$RAW/cold_start.json" 2>&1 | tee "$RAW/cold_start.log"
        rc=${PIPESTATUS[0]}
        # What went wrong, in the summary (the first GPU run's said nothing of its fault).
        finish "$rc" "$(grep -E '^[A-Za-z_.]*(Error|Exception)\b' "$RAW/cold_start.log" | tail -n 1 | cut -c1-200)"
    fi
fi

# ---------------------------------------------------------------- diagnosis, when the fused model faults
# A kernel that faults ends its process's CUDA context: every later case of a benchmark step
# would fail with it.  So when the cold start failed, bench/gpu_diag.py runs first: the layers
# one by one (a fresh process past each that faults), each timed against cuDNN, the faulting
# ones' config variants and memcheck.  Where a variant ran right for every fault, the
# benchmarks run with it; else the headline is skipped.
FAULTED=0 WORKAROUND=()
if begin diag "bench/gpu_diag.py: the fused model layer by layer, when the cold start failed"; then
    cold=$(grep '"step": "cold_start"' "$RAW/steps.jsonl" | grep -c '"status": "failed"\|"status": "timed out"')
    if ((!DRY_RUN && cold == 0)) && [[ ,$STEPS, != *,diag,* ]]; then
        skip "the cold start ran: nothing to diagnose"
    else
        # A dry run: the same passes through Triton's interpreter on a tiny model.  MNV2_GPU_DIAG_ARGS:
        # more arguments (the tests make a layer fault with --fail-at).
        # shellcheck disable=SC2206
        args=($( ((DRY_RUN)) && echo --device cpu --width 0.35 --resolution 32 --batch 1) ${MNV2_GPU_DIAG_ARGS:-})
        limited "$PY" bench/gpu_diag.py "$RAW/diag" --budget-s $((STEP_LIMIT - 5)) "${args[@]}" | tee "$RAW/diag.log"
        rc=${PIPESTATUS[0]}
        ((rc == 1)) && FAULTED=1
        finish "$rc" "$( ((DRY_RUN)) && echo 'dry run: interpreter, width 0.35, 32 px; ')$(tail -n 1 "$RAW/diag.log")"
        # Every faulting layer had a config variant (or the PTX twins) that ran right: the
        # benchmark steps run with it (their notes say so), and measure after all.
        if ((FAULTED)) && [[ -s $RAW/diag/workaround.env ]]; then
            mapfile -t WORKAROUND <"$RAW/diag/workaround.env"
            FAULTED=0
        fi
        DIAG_USED=$((SECONDS - STEP_T0))
    fi
    rm -f "$RAW/diag.log"
fi

# ---------------------------------------------------------------- headline benchmarks
if begin headline "benchmarks, phase headline (whole model fp16 at batches 256 and 1, then the 17 blocks)"; then
    if ((FAULTED)); then
        skip "the fused model faults (diag step): its cases would fail one after another"
    else
        bench_step headline
    fi
fi
begin summary "bench/summarize.py (headline)" && summary_step

# ---------------------------------------------------------------- tests
if begin tests "every test that can use a GPU: pytest tests"; then
    args=(tests -q -p no:cacheprovider --ignore=tests/test_static_resources.py --ignore=tests/test_packaging.py
          --ignore=tests/test_gpu_run.py)
    note=""
    if "$PY" -c 'import xdist' 2>/dev/null; then
        # test_gpu.py's large tensors stay on one worker (xdist_group), the rest spread out.
        args+=(-n "$WORKERS" --dist loadgroup)
        note="$WORKERS workers"
    else
        note="serially: pytest-xdist is not installed"
    fi
    if ((!DRY_RUN)); then
        args+=(-v)  # each test's outcome as it ends: a step stopped by its limit still names its failures
    else
        args+=(--collect-only -qq)
        note="dry run: collected only, $note"
    fi
    limited "${ONE_THREAD[@]}" "$PY" -m pytest "${args[@]}" 2>&1 | tee "$RAW/tests.log"
    rc=${PIPESTATUS[0]}
    if ((DRY_RUN)); then
        counts="$(awk -F': ' '/^tests\/.*: [0-9]+$/ {n += $2} END {print n + 0}' "$RAW/tests.log") tests"
    else
        counts=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)' "$RAW/tests.log" | tail -n 1 | tr -d '=')
    fi
    finish "$rc" "$note${counts:+; $(echo $counts)}"
    rm -f "$RAW/tests.log"
fi

# ---------------------------------------------------------------- the rest, Ray, the family, torch.compile last
begin rest "benchmarks, phase rest (the matrix but torch.compile)" && bench_step rest

# Issue 17: mnv2-fast infer on Ray Data against a DataLoader loop, the GPU to itself.  The
# image has no Ray; scripts/pack_ray_for_gpu packs one small enough to carry (.carry/ray/),
# installed here into a temporary folder.
if begin ray "tests/test_infer_gpu.py: the Ray pipeline's images/s against a DataLoader loop"; then
    site=""
    if ! "$PY" -c 'import ray' 2>/dev/null && [[ -f $ROOT/.carry/ray/ray-site.tar.xz ]]; then
        site=$(mktemp -d)
        "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$ROOT/.carry/ray/ray-site.tar.xz" "$site" &&
            "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$ROOT"/.carry/ray/*.whl
    fi
    if ! PYTHONPATH="${site:+$site:}$PYTHONPATH" "$PY" -c 'import ray' 2>/dev/null; then
        skip "no Ray here, and no .carry/ray/ carried with the checkout (scripts/pack_ray_for_gpu makes it)"
    else
        limited env "${WORKAROUND[@]}" PYTHONPATH="${site:+$site:}$PYTHONPATH" "$PY" -m pytest tests/test_infer_gpu.py \
            -v -s -p no:cacheprovider 2>&1 | tee "$RAW/ray.log"
        rc=${PIPESTATUS[0]}
        finish "$rc" "$(grep -m 1 -E 'images/s|passed|skipped' "$RAW/ray.log" | tr -d '=' | tr -s ' ' | sed 's/^ //')"
        rm -f "$RAW/ray.log"
    fi
    [[ -n $site ]] && rm -rf "$site"
fi

begin family "benchmarks, phase family (efficientnet_lite0, mnasnet1_0, mobilenetv4_conv_small at fp16 batch 256)" &&
    bench_step family
if begin compile "benchmarks, phase compile (torch.compile, each when it still fits)"; then
    need=$( ((DRY_RUN)) && echo 25 || echo 50)  # a block's compile (40 s) and pytest's start
    if ((STEP_LIMIT < need)); then
        skip "${STEP_LIMIT} s left: not enough for one torch.compile case (~${need} s)"
    else
        bench_step compile
    fi
fi

# ---------------------------------------------------------------- compute-sanitizer
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
# application-only: not the compiler processes Triton starts; a print limit keeps one bad
# config from flooding the log.  Without PyTorch's caching allocator every tensor is its own
# allocation, so an access past a tensor's end lands outside any allocation, where it shows.
SANITIZE=("${ONE_THREAD[@]}" PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --target-processes application-only --print-limit 20
          --error-exitcode 1)
no_sanitizer_reason() {
    if [[ ${MNV2_GPU_SANITIZE:-1} == 0 ]]; then
        echo "MNV2_GPU_SANITIZE=0: this run has NO compute-sanitizer check"
    elif ((!DRY_RUN)) && [[ -z $SANITIZER ]]; then
        echo "compute-sanitizer is not on PATH nor in /usr/local/cuda*/bin"
    fi
}
sanitizer_note() {  # LOG: what a failed sanitizer run says
    grep -q "Device not supported" "$1" && echo "compute-sanitizer cannot attach to this GPU here"
    grep -m 1 -E "ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]|Hazard" "$1"
}

if begin sanitizer_warm "every shipped launch config once, no instrumentation, $WORKERS processes"; then
    if [[ ${MNV2_GPU_SANITIZE:-1} == 0 ]]; then
        skip "$(no_sanitizer_reason)"
    else
        "$PY" -m mnv2_fast.tools.sanitize --list >"$RAW/sanitizer_list.log" 2>&1 &  # the whole list, meanwhile
        list_pid=$!
        if ((DRY_RUN)); then
            shards "$WORKERS" "$RAW/sanitizer_warm.log" "$PY" -m mnv2_fast.tools.sanitize --list
        else
            shards "$WORKERS" "$RAW/sanitizer_warm.log" "${ONE_THREAD[@]}" "$PY" -m mnv2_fast.tools.sanitize
        fi
        rc=$?
        wait "$list_pid"
        total=$(launch_total "$RAW/sanitizer_list.log")
        covered=$(launch_total "$RAW/sanitizer_warm.log")
        note="${covered:-0} of ${total:-?} launches in $WORKERS shards"
        ((DRY_RUN)) && note="dry run: listed only, $note"
        if ((rc == 0)) && [[ ${covered:-0} != "${total:-x}" ]]; then rc=1 note+=" (shards do not cover the list)"; fi
        finish "$rc" "$note"
        rm -f "$RAW/sanitizer_warm.log" "$RAW/sanitizer_list.log"
    fi
fi

if begin memcheck "compute-sanitizer memcheck, every shipped launch config, $MEMCHECK_SHARDS processes"; then
    if [[ -n $(no_sanitizer_reason) ]]; then
        skip "$(no_sanitizer_reason)"
    elif ((DRY_RUN)); then
        # No GPU to sanitise: the runner must say so (exit 2) instead of passing.
        limited "$PY" -m mnv2_fast.tools.sanitize
        rc=$?
        if ((rc == 2)); then
            skip "dry run: no GPU (the runner exits 2 without one, as it should)"
        else
            finish $((rc == 0 ? 1 : rc)) "without a GPU the runner exited $rc, expected 2"
        fi
    else
        # As batch 256 runs them: --one-sm, each program walks many tiles (at batch 2 on the whole
        # GPU each has at most one); --batch 16, Triton compiles the variant of a batch divisible
        # by 16 (it specialises integer arguments on that), the one the model ran when it faulted.
        shards "$MEMCHECK_SHARDS" "$RAW/memcheck.log" "${SANITIZE[@]}" --tool memcheck "$PY" -m mnv2_fast.tools.sanitize \
            --one-sm --batch 16
        rc=$?
        finish "$rc" "$(launch_total "$RAW/memcheck.log") launches; $(sanitizer_note "$RAW/memcheck.log" | head -n 2 | tr '\n' ' ')"
        rm -f "$RAW/memcheck.log"
    fi
fi

for tool in racecheck initcheck; do
    if begin "$tool" "compute-sanitizer $tool, one config of each kernel path (expand at stride 1 and 2, no expand)"; then
        if [[ -n $(no_sanitizer_reason) ]]; then
            skip "$(no_sanitizer_reason)"
        elif ((DRY_RUN)); then
            picked=$("$PY" -m mnv2_fast.tools.sanitize --list --one-per-path | grep -v '^sanitize:' | cut -d: -f1 | paste -sd';' -)
            skip "dry run: no GPU; would check ${picked:-nothing}"
        else
            limited "${SANITIZE[@]}" --tool "$tool" "$PY" -m mnv2_fast.tools.sanitize --one-per-path 2>&1 |
                tee "$RAW/$tool.log"
            rc=${PIPESTATUS[0]}
            finish "$rc" "$(launch_total "$RAW/$tool.log") launches; $(sanitizer_note "$RAW/$tool.log" | head -n 2 | tr '\n' ' ')"
            rm -f "$RAW/$tool.log"
        fi
    fi
done

# ---------------------------------------------------------------- final summary
begin final_summary "bench/summarize.py (everything, every step's status)" && summary_step

# Few files at the top of OUT: the raw ones go into one archive.
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && [[ ${MNV2_GPU_KEEP_RAW:-0} == 0 ]] && rm -rf "$RAW"
banner "done in $(used) s of the ${BUDGET} s budget$( ((FAILED)) && echo ': SOME STEPS FAILED OR TIMED OUT (see summary.md)')"
ls -l "$OUT"
exit "$FAILED"
