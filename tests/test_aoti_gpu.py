"""(gpu) The AOTInductor round trip: `mnv2-fast export` (mnv2_fast.export underneath) writes a
.pt2 package; a fresh Python process in which mnv2_fast cannot be imported loads it with
torch._inductor.aoti_load_package and runs it at three batches; its logits match the eager
fused model and the unfused float64 model.

The slowest GPU test (Inductor compiles the 20 Triton launches and the package's C++
wrapper, a minute or so): its file name puts it first in collection, so under pytest-xdist
(bench/gpu_run.sh) it starts first, not at the end of the tests step's time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import MODEL_TOLERANCE_FACTOR, assert_close, reference64
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
    xs = [torch.randn(n, 3, size, size, dtype=dtype) for n in (4, 1, 9)]  # the example's batch, and others
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
