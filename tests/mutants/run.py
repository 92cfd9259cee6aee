"""Run the mutant suite: each mutant (tests/mutants/mutants.py) applied to its own copy of the
package in a temporary folder, then the tests that must catch it run against that copy.

    ./scripts/mutants                   all mutants, 2 at a time, then the table
    ./scripts/mutants NAME ...          some of them
    ./scripts/mutants --readme          also write the table into tests/README.md

The checkout is never modified.  First the union of the mutants' tests runs against an
unmodified copy: it must pass, or a "killed" mutant would mean nothing.  A mutant is killed
when a test fails (pytest exit status 1) or a test process dies of a signal (a wrapped
offset may crash Triton's interpreter); it survives when its tests pass; any other outcome
(the edit's text is gone from the source, pytest cannot collect, a timeout) is an error.
The exit status is 0 only when every mutant is killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

README = ROOT / "tests" / "README.md"
BEGIN, END = "<!-- mutants: begin -->", "<!-- mutants: end -->"


def copy_package(dest: Path) -> None:
    """The package as it imports (kernels/ as mnv2_fast/kernels), the tests and pytest's
    settings: what a mutant's tests need, without the virtual environment."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "mnv2_fast", dest / "mnv2_fast", ignore=ignore)
    shutil.copytree(ROOT / "kernels", dest / "mnv2_fast" / "kernels", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "mutants"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _in_copy(path: str) -> str:
    return "mnv2_fast/" + path if path.startswith("kernels/") else path


def apply(mutant: Mutant, dest: Path) -> None:
    target = dest / _in_copy(mutant.file)
    text = target.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise LookupError(f"{mutant.file}: the text to replace occurs {count} times (the source moved on: update "
                          f"the entry in tests/mutants/mutants.py)")
    target.write_text(text.replace(mutant.old, mutant.new))


def pytest(dest: Path, tests, timeout: float) -> tuple[int | None, str, float]:
    """(exit status, None on timeout; the output's tail; seconds) of pytest on the copy."""
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider",
                            "--no-header"], cwd=dest, env=env, capture_output=True,
                           text=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr)[-4000:], time.monotonic() - t0
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return None, out[-4000:], time.monotonic() - t0


def _imports_the_copy(dest: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(dest))
    where = subprocess.run([sys.executable, "-c", "import mnv2_fast.kernels.block as b; print(b.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(dest)):
        raise RuntimeError(f"the copy's tests would import {where!r}, not the copy in {dest}")


def _failed_test(output: str) -> str:
    m = re.search(r"^FAILED (\S+)", output, re.M) or re.search(r"^ERROR (\S+)", output, re.M)
    return m.group(1) if m else ""


def run_one(mutant: Mutant, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        dest = Path(tmp)
        copy_package(dest)
        try:
            apply(mutant, dest)
        except LookupError as err:
            return dict(name=mutant.name, result="error", detail=str(err), seconds=0.0)
        rc, out, seconds = pytest(dest, mutant.tests, timeout)
    if rc is None:
        result, detail = "error", f"timed out after {timeout:.0f} s"
    elif rc == 1 or rc < 0:
        failed = _failed_test(out)
        result = "killed"
        detail = f"by {failed}" if failed else f"the tests' process died (exit status {rc})"
    elif rc == 0:
        result, detail = "SURVIVED", "its tests pass"
    else:
        result, detail = "error", f"pytest exit status {rc}: {out[-600:]}"
    return dict(name=mutant.name, result=result, detail=detail, seconds=seconds)


def table(results: list[dict], total_s: float, baseline_s: float) -> str:
    by_name = {m.name: m for m in MUTANTS}
    killed = sum(r["result"] == "killed" for r in results)
    lines = [f"Last run: {killed} of {len(results)} mutants killed, in {total_s:.0f} s on {os.cpu_count()} cores "
             f"(the unmutated baseline: {baseline_s:.0f} s).", "",
             "| mutant | the bug | result | caught by | s |", "|---|---|---|---|---|"]
    for r in results:
        m = by_name[r["name"]]
        detail = r["detail"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{m.name}` | {m.bug} | {r['result']} | {detail} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="./scripts/mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant (default 600)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated copy")
    p.add_argument("--readme", action="store_true", help="write the table into tests/README.md")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = p.parse_args(argv)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        p.error(f"unknown mutants: {sorted(unknown)}")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.bug} ({m.file}; {' '.join(m.tests)})")
        return 0
    t0 = time.monotonic()
    baseline_s = 0.0
    if not args.no_baseline:
        tests = sorted({t for m in chosen for t in m.tests})
        with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
            copy_package(Path(tmp))
            _imports_the_copy(Path(tmp))
            rc, out, baseline_s = pytest(Path(tmp), tests, args.timeout * 2)
        print(f"baseline (no mutation, {len(tests)} test targets): exit status {rc} in {baseline_s:.0f} s", flush=True)
        if rc != 0:
            print(out)
            print("the unmutated copy fails its mutants' tests: fix that first")
            return 2
    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(lambda m: run_one(m, args.timeout), chosen):
            print(f"{r['name']}: {r['result']} ({r['detail'][:200]}) {r['seconds']:.0f} s", flush=True)
            results.append(r)
    text = table(results, time.monotonic() - t0, baseline_s)
    print("\n" + text)
    if args.readme:
        write_readme(text)
    return 0 if all(r["result"] == "killed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
