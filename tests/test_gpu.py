"""GPU-only checks (marker `gpu`): 224-px shapes at batch 256, bf16, the 2^31 case, the whole
model at batch 1 and 256, the CUDA-graph path, TF32.  Skipped (visibly) without CUDA.

fp32 here is IEEE fp32 (tests/conftest.py turns TF32 off for every test) unless a test turns
TF32 on; TF32 results are judged at the fp16 entry of the tolerance table (same 10-bit
mantissa).  These tests hold large tensors: under pytest-xdist (bench/gpu_run.sh) they
share one worker, so that several of them never fill the GPU's memory at once."""

from __future__ import annotations

import pytest
import torch

from helpers import (
    MODEL_TOLERANCE_FACTOR,
    assert_close,
    call_guarded,
    check_guard,
    error_ratio,
    guarded_empty,
    make_block,
    nhwc,
    randomize_bn,
)
from mnv2_fast import CUDAGraphRunner, fuse_block, optimize
from mnv2_fast.kernels import reference
from mnv2_fast.model import block_specs, mobilenet_v2

pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("gpu_memory")]
CUDA = torch.device("cuda")
TF32_TOLERANCE = torch.float16  # the table entry TF32 results are judged by: fp16's mantissa
SPECS = block_specs(1.0, resolution=224)


def _ref_gpu64(module, x):
    """The unfused module in float64 on the GPU (fast enough at batch 256)."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(module).to(CUDA, torch.float64)(x.to(torch.float64))


def _unique(dtype_all):
    seen, out = set(), []
    for spec in SPECS:
        if dtype_all or spec not in seen:  # records compare by shape, the block's index left out
            out.append(spec)
        seen.add(spec)
    return out


CASES = ([pytest.param(s, torch.float16, id=f"b{s.index}-fp16") for s in _unique(True)]
         + [pytest.param(s, torch.bfloat16, id=f"b{s.index}-bf16") for s in _unique(False)]
         + [pytest.param(s, torch.float32, id=f"b{s.index}-fp32") for s in _unique(False)])


@pytest.mark.parametrize("spec,dtype", CASES)
def test_blocks_at_224px_batch_256(spec, dtype):
    block = make_block(spec.cin, spec.cout, spec.stride, spec.t)
    fused = fuse_block(block, backend="triton").to(CUDA, dtype)
    x = nhwc(torch.randn(256, spec.cin, spec.h, spec.w, device=CUDA, dtype=dtype))
    from mnv2_fast.kernels import inverted_residual

    # Guarded: NaN around the input, the weights and the output (two images: tiles of 2).
    y = call_guarded(inverted_residual, x, fused.w_exp, fused.b_exp, fused.w_dw, fused.b_dw, fused.w_proj,
                     fused.b_proj, out_shape=(256, spec.cout, spec.ho, spec.wo), images=2, stride=spec.stride,
                     residual=spec.residual)
    assert_close(y, _ref_gpu64(block, x), dtype, f"block {spec.index}")


def test_fp32_follows_the_tf32_switch():
    block = make_block(64, 96, 1, 6)
    fused = fuse_block(block, backend="triton").to(CUDA)
    x = nhwc(torch.randn(8, 64, 14, 14, device=CUDA))
    ref = _ref_gpu64(block, x)
    torch.backends.cudnn.allow_tf32 = True  # the autouse strict_fp32 fixture restores it
    tf32 = fused(x)
    torch.backends.cudnn.allow_tf32 = False
    ieee = fused(x)
    assert_close(ieee, ref, torch.float32, "TF32 off: IEEE fp32")
    assert_close(tf32, ref, TF32_TOLERANCE, "TF32 on")
    # An IEEE result passes the line above too: TF32 must also be visibly less exact.
    assert error_ratio(tf32, ref, torch.float32) > 1.0, "TF32 on gave IEEE fp32 accuracy: the switch was ignored"


@pytest.mark.parametrize("cin,cout,stride,t,size,n", [
    (16, 24, 2, 6, 112, 1800),  # the expanded tensor would have 1800*112*112*96 > 2^31 elements
    (32, 16, 1, 1, 112, 5500),  # the input itself has > 2^31 elements
])
def test_tensors_beyond_2_31_elements(cin, cout, stride, t, size, n):
    block = make_block(cin, cout, stride, t)
    fused = fuse_block(block, backend="triton").to(CUDA, torch.float16)
    hidden = cin * t
    assert max(n * size * size * hidden, n * size * size * cin) > 2**31
    x = nhwc(torch.randn(n, cin, size, size, device=CUDA, dtype=torch.float16))
    y = fused(x)
    ref_block = block.to(CUDA).float()
    _check_images(y, lambda i, j: ref_block(x[i:j].float()), [x, y], 200)


def _check_images(y, ref, tensors, count, what=""):
    """y against ref(i, j) (images i..j, in fp32 on the GPU) at the float16 tolerance, on
    `count` images at the start, at each point where one of `tensors` passes 2^31 elements,
    and at the end (where 32-bit offsets would have wrapped)."""
    n = y.shape[0]
    starts = {0, max(0, n - count)}
    for t in tensors:
        per_image = t[0].numel()
        if t.numel() > 2**31:
            starts.add(max(0, min(n - count, 2**31 // per_image - count // 2)))
    with torch.no_grad():
        for i in sorted(starts):
            j = min(n, i + count)
            assert_close(y[i:j], ref(i, j), torch.float16, f"{what} images {i}..{j}")


def test_block_output_beyond_2_31_elements():
    """16 -> 64 channels at stride 1: an output of 2^31 + elements from an input a quarter of it,
    written into a NaN-guarded buffer (an image on each side)."""
    from mnv2_fast.kernels import inverted_residual

    block = make_block(16, 64, 1, 6)
    fused = fuse_block(block, backend="triton").to(CUDA, torch.float16)
    n = 2**31 // (56 * 56 * 64) + 8
    x = nhwc(torch.randn(n, 16, 56, 56, device=CUDA, dtype=torch.float16))
    out = guarded_empty((n, 64, 56, 56), torch.float16, CUDA)
    assert out.numel() > 2**31
    y = inverted_residual(x, fused.w_exp, fused.b_exp, fused.w_dw, fused.b_dw, fused.w_proj, fused.b_proj, stride=1,
                          residual=False, out=out)
    check_guard(out, "output")
    ref_block = block.to(CUDA).float()
    _check_images(y, lambda i, j: ref_block(x[i:j].float()), [y], 200, "block")


def test_stem_beyond_2_31_elements():
    """224-px images: image 14267 starts past 2^31 elements in the input (one launch: the
    in-kernel image index times the image stride), and the output passes 2^31 far earlier."""
    from mnv2_fast.kernels import stem_conv

    n = 2**31 // (3 * 224 * 224) + 4
    x = torch.randn(n, 3, 224, 224, device=CUDA, dtype=torch.float16)
    w, b = (torch.randn(27, 32, device=CUDA) / 4).half(), torch.randn(32, device=CUDA)
    out = guarded_empty((n, 32, 112, 112), torch.float16, CUDA)
    y = stem_conv(x, w, b, out=out)
    check_guard(out, "output")
    _check_images(y, lambda i, j: reference.stem_conv(x[i:j].float(), w.float(), b.float()), [x, y], 100, "stem")


def test_head_and_classifier_beyond_2_31_elements():
    from mnv2_fast.kernels import head_pool, linear

    n = 2**31 // (320 * 7 * 7) + 40  # the last program's images start past 2^31 at any images per program
    x = nhwc(torch.randn(n, 320, 7, 7, device=CUDA, dtype=torch.float16))
    w, b = (torch.randn(320, 1280, device=CUDA) / 18).half(), torch.randn(1280, device=CUDA)
    pooled = call_guarded(head_pool, x, w, b, out_shape=(n, 1280), out_layout="rows")
    _check_images(pooled, lambda i, j: reference.head_pool(x[i:j].float(), w.float(), b.float()), [x], 2000, "head")
    del x
    m = 2**31 // 1280 + 100
    a = torch.randn(m, 1280, device=CUDA, dtype=torch.float16)
    wl, bl = (torch.randn(1280, 1000, device=CUDA) / 36).half(), torch.randn(1000, device=CUDA)
    out = guarded_empty((m, 1000), torch.float16, CUDA, layout="rows")
    logits = linear(a, wl, bl, out=out)
    check_guard(out, "classifier output")
    _check_images(logits, lambda i, j: reference.linear(a[i:j].float(), wl.float(), bl.float()), [a], 20000,
                  "classifier")


def _model(width=1.0, k=1000):
    return randomize_bn(mobilenet_v2(width_mult=width, num_classes=k)).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 256])
def test_whole_model_224px(batch, dtype):
    model = _model()
    fast = optimize(model, backend="triton").to(CUDA, dtype)
    x = torch.randn(batch, 3, 224, 224, device=CUDA, dtype=dtype)
    with torch.no_grad():
        y = fast(x)
    assert_close(y, _ref_gpu64(model, x), dtype, "whole model", factor=MODEL_TOLERANCE_FACTOR)


def test_auto_backend_runs_the_kernels_on_cuda_and_nchw_input_works():
    model = _model(0.5, 10)
    fast = optimize(model).to(CUDA, torch.float16)  # auto
    x = torch.randn(4, 3, 160, 160, device=CUDA, dtype=torch.float16)  # NCHW memory
    with torch.no_grad():
        y = fast(x)
    assert_close(y, _ref_gpu64(model, x), torch.float16, "auto", factor=MODEL_TOLERANCE_FACTOR)


def test_cuda_graph_runner():
    model = _model()
    fast = optimize(model, backend="triton").to(CUDA, torch.float16)
    runner = optimize(model, backend="triton", cuda_graph=True).to(CUDA, torch.float16)
    assert isinstance(runner, CUDAGraphRunner)
    x1 = torch.randn(1, 3, 224, 224, device=CUDA, dtype=torch.float16)
    x2 = torch.randn(1, 3, 224, 224, device=CUDA, dtype=torch.float16)
    with torch.no_grad():
        a1, a2 = fast(x1), fast(x2)
    r1 = runner(x1)
    r2 = runner(x2)  # replay with new data
    assert torch.equal(r1, a1) and torch.equal(r2, a2)
    with pytest.raises(ValueError, match="captured for input shape"):
        runner(torch.randn(2, 3, 224, 224, device=CUDA, dtype=torch.float16))
    runner.reset()
    assert runner(x2[:, :, :192, :192].contiguous()).shape == (1, 1000)


def test_stem_and_head_kernels_at_224px():
    from mnv2_fast.kernels import head_pool, stem_conv

    x = torch.randn(64, 3, 224, 224, device=CUDA, dtype=torch.float16)
    w, b = torch.randn(32, 3, 3, 3, device=CUDA), torch.randn(32, device=CUDA)
    wk = w.reshape(32, 27).t().contiguous().half()
    y = stem_conv(x, wk, b)
    assert_close(y, reference.stem_conv(x.double(), wk.double(), b.double()), torch.float16, "stem")
    h = nhwc(torch.randn(256, 320, 7, 7, device=CUDA, dtype=torch.float16))
    wh, bh = (torch.randn(320, 1280, device=CUDA) / 18).half(), torch.randn(1280, device=CUDA)
    pooled = head_pool(h, wh, bh)
    assert_close(pooled, reference.head_pool(h.double(), wh.double(), bh.double()), torch.float16, "head")
