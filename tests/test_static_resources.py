"""Every launch configuration the package ships compiles for Hopper (sm_90) without a GPU and fits:
shared memory within the per-block limit, no register spills, at most 255 registers."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env():
    # The static check needs the real JIT: no interpreter in the child process.
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_every_shipped_config_fits_hopper(capsys):
    r = subprocess.run([sys.executable, "-m", "mnv2_fast.tools.static_check"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=1500)
    with capsys.disabled():  # the table belongs in the CI log
        print("\n" + r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "launches" in r.stdout and "/ ok" in r.stdout


CHECK_A_BAD_CONFIG = """
import torch
from mnv2_fast.tools.interpreter import use_compiler
use_compiler()
from mnv2_fast.kernels import BlockConfig, BlockShape
from mnv2_fast.kernels.aot import compile_variant, problems, resources
from mnv2_fast.tools.inventory import Launch, variant
shape = BlockShape(32, 192, 32, 1, 28, 28, True, True)
# fp32 operands and 256 pixel pairs per program on 4 warps under a 96-register cap: it spills.
cfg = BlockConfig(tile_h=16, tile_w=32, block_hid=32, num_warps=4, maxnreg=96)
fn, args = variant(Launch("block", "oversized", torch.float32, shape, cfg))
print(problems(resources(compile_variant(fn, args, torch.float32))))
"""


def test_the_check_catches_an_oversized_config():
    r = subprocess.run([sys.executable, "-c", CHECK_A_BAD_CONFIG], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "spills" in r.stdout or "shared memory" in r.stdout, r.stdout


def test_problem_rules():
    from mnv2_fast.kernels.aot import HOPPER_SMEM_LIMIT, Resources, problems

    ok = Resources(registers=200, shared=100_000, local=0, stack=8, sass_ops={"HGMMA": 4})
    assert problems(ok) == []
    assert problems(Resources(255, HOPPER_SMEM_LIMIT + 1, 0, 0, {})) != []
    assert problems(Resources(255, 1024, 0, 64, {"STL": 3, "LDL": 2})) != []
    assert problems(Resources(255, 1024, 16, 0, {})) != []


STAGED_STORES = """
import torch
from mnv2_fast.tools.interpreter import use_compiler
use_compiler()
from mnv2_fast.kernels import BlockConfig, BlockShape
from mnv2_fast.kernels.aot import compile_variant, resources
from mnv2_fast.tools.inventory import Launch, variant
shape = BlockShape(24, 96, 24, 1, 8, 8, True, True)
for hid in (16, 32, 64):
    fn, args = variant(Launch("block", "staged", torch.float16, shape, BlockConfig(tile_h=4, tile_w=8, block_hid=hid,
                                                                                   num_warps=4)))
    row = [hid, args["STAGE_VECTORS"], args["INLINE_PTX"]]
    for vectors in (True, False):
        c = compile_variant(fn, dict(args, STAGE_VECTORS=vectors), torch.float16)
        ops = resources(c).sass_ops
        row += [c.asm["ptx"].count("{w0, w1"), sum(ops.get(o, 0) for o in ("STS", "LDS", "LDSM", "STSM"))]
    print(*row)
"""


def test_staged_chunk_is_stored_from_the_products_registers():
    """Compiled, a 16-bit chunk is staged with inline-asm vector stores (v2 for chunks of 16, v4
    otherwise) straight from the expand's accumulators: fewer shared-memory instructions than
    tl.store's layout conversion, which goes through shared memory.  (The interpreter runs the
    twin of these stores: tests/test_block_kernel.py.)"""
    r = subprocess.run([sys.executable, "-c", STAGED_STORES], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in r.stdout.split("\n")[-4:-1]:
        hid, vectors, asm, stores_on, shared_on, stores_off, shared_off = line.split()
        assert vectors == "True" and asm == "True", line
        assert int(stores_on) > 0 and int(stores_off) == 0, line  # the asm's word registers w0, w1, ...
        assert int(shared_on) < int(shared_off), line
