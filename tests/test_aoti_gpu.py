"""(gpu) The AOTInductor round trip: `mnv2-fast export` (mnv2_fast.export underneath) writes a
.pt2 package; a fresh Python process in which mnv2_fast cannot be imported loads it with
torch._inductor.aoti_load_package and runs it; its logits match the eager fused model and the
unfused float64 model.  And a package for a dynamic batch: refused, naming the op whose
launcher decides by the batch, or (once none does) right at every batch.

The slowest GPU test (Inductor compiles the 20 Triton launches and the package's C++
wrapper, a minute or so): its file name puts it first in collection, so under pytest-xdist
(bench/gpu_run.sh) it starts first, not at the end of the tests step's time."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import MODEL_TOLERANCE_FACTOR, assert_close, reference64
import mnv2_fast
from mnv2_fast import deploy, optimize
from mnv2_fast.tools import cli

pytestmark = pytest.mark.gpu

# Run in the fresh process: mnv2_fast blocked (an import raises ImportError), the repository
# off sys.path; the package alone computes the logits.
LOAD = r"""
import sys
sys.modules["mnv2_fast"] = None
try:
    import mnv2_fast  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("mnv2_fast could be imported: the check proves nothing")
import torch

package, inputs, outputs = sys.argv[1:]
runner = torch._inductor.aoti_load_package(package)
with torch.no_grad():
    ys = [runner(x.cuda()) for x in torch.load(inputs)]
torch.save([y.cpu() for y in ys], outputs)
print("loaded and ran", package)
"""


def test_package_runs_without_mnv2_fast_and_matches_the_eager_model(tmp_path):
    width, classes, size, dtype = 0.5, 10, 96, torch.float16
    path = tmp_path / "mnv2.pt2"
    argv = ["export", "--width", str(width), "--classes", str(classes), "--resolution", str(size), "--batch", "4",
            "--dtype", "float16", "--max-batch", "64", "--out", str(path)]
    assert cli.main(argv) == 0
    assert path.is_file() and deploy.ops_in_package(path) == []
    assert not [p for p in tmp_path.iterdir() if p != path], "the export left temporary files"

    model = cli.build_model(width, classes, None, 0)  # the command's model: same seed, same weights
    fast = optimize(model, backend="triton").to("cuda", dtype)
    xs = [torch.randn(4, 3, size, size, dtype=dtype) for _ in range(2)]  # the package's batch
    torch.save(xs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", LOAD, str(path), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    ys = torch.load(tmp_path / "out.pt")
    for x, y in zip(xs, ys):
        with torch.no_grad():
            eager = fast(x.cuda())
        assert y.shape == (x.shape[0], classes) and y.dtype == dtype
        assert_close(y, eager, dtype, f"package vs eager fused, batch {x.shape[0]}", factor=MODEL_TOLERANCE_FACTOR)
        assert_close(y, reference64(model, x), dtype, f"package vs unfused, batch {x.shape[0]}",
                     factor=MODEL_TOLERANCE_FACTOR)


def test_a_dynamic_batch_package_is_refused_by_name_or_takes_every_batch(tmp_path):
    model = cli.build_model(0.5, 10, None, 0)
    fast = optimize(model, backend="triton").to("cuda", torch.float16)
    example = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    path = tmp_path / "dynamic.pt2"
    try:
        mnv2_fast.export(fast, example, path, dynamic_batch=True, max_batch=16)
    except deploy.PackageError as err:
        assert re.match(r"mnv2_fast::\w+ cannot be lowered with a dynamic batch: its launcher decides", str(err)), err
        assert not list(tmp_path.iterdir()), "a refused package left files"
        return
    runner = torch._inductor.aoti_load_package(str(path))
    for n in (1, 3, 16):
        x = torch.randn(n, 3, 64, 64, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            assert_close(runner(x), fast(x), torch.float16, f"dynamic package, batch {n}", factor=MODEL_TOLERANCE_FACTOR)
