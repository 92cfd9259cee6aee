"""The distribution: kernels ship as mnv2_fast.kernels, never as a top-level `kernels`."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tests that build the wheel share one worker, so it is built once per run.
pytestmark = pytest.mark.xdist_group("wheel")
# What the build reads: the package sources, their metadata and the readme.
SOURCES = ("pyproject.toml", "README.md", "mnv2_fast", "kernels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, and two
    # builds in the checkout at once (another worker, a developer's own) break each other.
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the setuptools already installed (no download in CI).
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = out.glob("mnv2_fast-*.whl")
    return whl


def test_wheel_file_list(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mnv2_fast", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("__init__", "block", "stem", "head", "reference", "records", "choice", "tuned",
                   "_common"):
        assert f"mnv2_fast/kernels/{module}.py" in names
    for module in ("model", "folding", "fused", "ops", "optimize", "graphs", "deploy", "tools/__init__", "tools/cli"):
        assert f"mnv2_fast/{module}.py" in names
    assert not any(n.startswith(("kernels/", "tests/", "bench/")) for n in names)
    info = next(t for t in tops if t.endswith(".dist-info"))
    top_level = zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split() if \
        f"{info}/top_level.txt" in names else ["mnv2_fast"]
    assert top_level == ["mnv2_fast"]
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(r.split(":", 1)[1].strip() for r in requires) == ["numpy>=1.24", "torch>=2.11", "triton>=3.6"]
    # Ray only through the extra that `mnv2-fast infer` needs.
    extra = sorted(line.split(":", 1)[1].split(";")[0].strip() for line in meta.splitlines()
                   if line.startswith("Requires-Dist:") and "extra == \"ray\"" in line)
    assert extra == ["pillow>=10", "ray[data]>=2.60"] and "mnv2_fast/tools/infer.py" in names
    entry = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "mnv2-fast = mnv2_fast.tools.cli:main" in entry


def test_installed_wheel_imports_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--target", str(site), str(wheel)], check=True)
    assert not (site / "kernels").exists()
    code = (
        "import importlib.util, mnv2_fast, mnv2_fast.kernels as k, sys;"
        "assert mnv2_fast.__file__.startswith(sys.argv[1]), mnv2_fast.__file__;"
        "assert k.__file__.startswith(sys.argv[1]), k.__file__;"
        "assert callable(k.inverted_residual) and callable(mnv2_fast.optimize);"
        "from mnv2_fast.tools.cli import main; assert callable(main);"
        "spec = importlib.util.find_spec('kernels');"
        "assert spec is None or not spec.origin.startswith(sys.argv[1]), spec;"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    # Run from an empty directory, so the checkout is not importable.
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_source_checkout_maps_kernels_into_the_package():
    import mnv2_fast.kernels as k

    assert Path(k.__file__).resolve().parent == ROOT / "kernels"
    assert "kernels" not in sys.modules or sys.modules["kernels"] is not k
