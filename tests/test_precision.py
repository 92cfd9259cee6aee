"""Precision: which product precision each launch asks for, and the partial sums that must
stay fp32.

The kernels round by design where the unfused network does (inputs, weights, the stored
activations) and, in the block's depthwise, each row's three taps (packed fp16x2/bf16x2
arithmetic): the tolerance table covers that.  Every sum across product steps, hidden-channel
chunks or depthwise rows must stay fp32.  The tests below build inputs whose partial sums are
large and cancel exactly, with every value exact in fp16, so that a correct kernel is exact
up to the final rounding and one partial sum rounded to the activation dtype is off by many
tolerances."""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICE, INTERPRETER, assert_close, call_guarded, nhwc
from mnv2_fast.kernels import BlockConfig, HeadConfig, LinearConfig, head_pool, inverted_residual, linear, reference
from mnv2_fast.kernels import _common, block, head, stem

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
# bf16 through the interpreter computes wrong values (the launchers refuse it): GPU only.
HALF = [FP16, pytest.param(BF16, marks=pytest.mark.skipif(INTERPRETER, reason="bf16: GPU only"))]


@pytest.mark.parametrize("dtype,allow_tf32,expected", [
    (FP32, False, "ieee"), (FP32, True, "tf32"),
    (FP16, False, "tf32"), (FP16, True, "tf32"), (BF16, False, "tf32"), (BF16, True, "tf32"),
])
def test_dot_precision_per_dtype_and_switch(dtype, allow_tf32, expected):
    """fp32 products are IEEE unless TF32 is allowed; 16-bit products run on the tensor cores
    whatever the switch (their products are exact in fp32 there)."""
    assert _common.dot_precision(dtype, allow_tf32) == expected


class _Capture:
    """Stands in for a @triton.jit kernel: keeps the keyword arguments of each launch."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(kwargs)


def _launch_block(dtype, allow_tf32):
    x = nhwc(torch.randn(1, 16, 4, 4, device=DEVICE, dtype=dtype))
    w = dict(w_exp=torch.randn(16, 32, device=DEVICE, dtype=dtype), b_exp=torch.randn(32, device=DEVICE),
             w_dw=torch.randn(9, 32, device=DEVICE), b_dw=torch.randn(32, device=DEVICE),
             w_proj=torch.randn(32, 16, device=DEVICE, dtype=dtype), b_proj=torch.randn(16, device=DEVICE))
    inverted_residual(x, **w, stride=1, residual=True, allow_tf32=allow_tf32)


def _launch_stem(dtype, allow_tf32):
    stem.stem_conv(torch.randn(1, 3, 8, 8, device=DEVICE, dtype=dtype), torch.randn(27, 16, device=DEVICE, dtype=dtype),
                   torch.randn(16, device=DEVICE), allow_tf32=allow_tf32)


def _launch_head(dtype, allow_tf32):
    head_pool(nhwc(torch.randn(1, 16, 3, 3, device=DEVICE, dtype=dtype)), torch.randn(16, 32, device=DEVICE, dtype=dtype),
              torch.randn(32, device=DEVICE), allow_tf32=allow_tf32)


def _launch_linear(dtype, allow_tf32):
    linear(torch.randn(2, 16, device=DEVICE, dtype=dtype), torch.randn(16, 8, device=DEVICE, dtype=dtype),
           torch.randn(8, device=DEVICE), allow_tf32=allow_tf32)


# (kernel module, kernel name, launch, the PyTorch switch allow_tf32=None follows: the one the
# replaced op follows, cuDNN's for convolutions, cuBLAS's for the dense layer)
LAUNCHES = {
    "block": (block, "_inverted_residual_kernel", _launch_block, "cudnn"),
    "stem": (stem, "_stem_kernel", _launch_stem, "cudnn"),
    "head": (head, "_head_pool_kernel", _launch_head, "cudnn"),
    "linear": (head, "_linear_kernel", _launch_linear, "matmul"),
}


def _set_switches(cudnn: bool, matmul: bool) -> None:
    torch.backends.cudnn.allow_tf32 = cudnn  # the autouse strict_fp32 fixture restores both
    torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize("dtype", [FP32, FP16])
@pytest.mark.parametrize("kind", LAUNCHES)
def test_each_launch_passes_the_product_precision_of_its_switch(kind, dtype, monkeypatch):
    module, name, launch, follows = LAUNCHES[kind]
    kernel = _Capture()
    monkeypatch.setattr(module, name, kernel)
    for on in (False, True):
        # allow_tf32=None follows its own switch; the other switch is set the other way.
        _set_switches(cudnn=on if follows == "cudnn" else not on, matmul=on if follows == "matmul" else not on)
        launch(dtype, None)
        assert kernel.launches[-1]["DOT_PRECISION"] == _common.dot_precision(dtype, on), (kind, "switch", on)
        # An explicit allow_tf32 wins over both switches, which are set against it.
        _set_switches(cudnn=not on, matmul=not on)
        launch(dtype, on)
        assert kernel.launches[-1]["DOT_PRECISION"] == _common.dot_precision(dtype, on), (kind, "explicit", on)


# ---- partial sums that must stay fp32

def _exact_ref(fn, *args, **kwargs):
    return fn(*[a.double().cpu() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)


def _block(x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, *, stride, cfg):
    """The block kernel (guarded) and its float64 twin on the very same (rounded) tensors."""
    n, _, h, w = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    y = call_guarded(inverted_residual, x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, out_shape=(n, w_proj.shape[1], ho, wo),
                     stride=stride, residual=False, config=cfg)
    return y, _exact_ref(reference.inverted_residual, x, w_exp, b_exp, w_dw, b_dw, w_proj, b_proj, stride=stride,
                         residual=False)


def _quarters(*size, high=24):
    """Multiples of 1/4 in [0, high/4): exact in fp16 and bf16, unchanged by ReLU6 below 6."""
    return torch.randint(0, high, size).float() / 4


def _centre_tap(hidden):
    w_dw = torch.zeros(9, hidden)
    w_dw[4] = 1.0  # the depthwise passes its input through
    return w_dw


@pytest.mark.parametrize("dtype", HALF)
def test_project_sums_hidden_chunks_in_fp32(dtype):
    """Hidden chunk 1 cancels chunk 0 exactly: their sum is ~10^3 (fp16 spacing 0.5 there)
    and only fp32 carries the small rest of chunks 2 and 3 across it."""
    hidden, chunk, cout = 64, 16, 32
    x = _quarters(2, hidden, 6, 5)
    x[:, chunk:2 * chunk] = x[:, :chunk]  # chunk 1 repeats chunk 0's activations ...
    w_proj = torch.randn(hidden, cout) / 4
    w_proj[:chunk] = torch.randint(-128, 128, (chunk, cout)).float()
    w_proj[chunk:2 * chunk] = -w_proj[:chunk]  # ... with the opposite weights
    args = [nhwc(x), None, None, _centre_tap(hidden), torch.zeros(hidden), w_proj, torch.zeros(cout)]
    args = [a if a is None else a.to(DEVICE, dtype) for a in args]
    cfg = BlockConfig(tile_h=2, tile_w=5, block_hid=chunk)
    y, ref = _block(*args, stride=1, cfg=cfg)
    assert_close(y, ref, dtype, "project across hidden chunks")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", HALF)
def test_depthwise_sums_rows_in_fp32(dtype, stride):
    """The depthwise input's rows repeat 2048, 1.5, -2048 (per channel from another phase) and
    only the middle column's taps are 1: each row's taps are exact in fp16 (the kernel sums
    them in the activation dtype, by design), their sum across the three rows is 1.5, and a
    running sum rounded to fp16 loses the 1.5 next to 2048."""
    hidden, n, h, w = 32, 1, 9, 4
    pattern = torch.tensor([2048.0, 1.5, -2048.0])
    rows = torch.arange(h)[None, :] + torch.arange(hidden)[:, None]  # [hidden, h]: each channel its phase
    x = pattern[rows % 3][None, :, :, None].expand(n, hidden, h, w).contiguous()
    w_dw = torch.zeros(9, hidden)
    w_dw[[1, 4, 7]] = 1.0  # taps (0, 1), (1, 1), (2, 1): the middle column
    w_proj = torch.eye(hidden)  # the project passes the depthwise through
    args = [nhwc(x), None, None, w_dw, torch.zeros(hidden), w_proj, torch.zeros(hidden)]
    args = [a if a is None else a.to(DEVICE, dtype) for a in args]
    y, ref = _block(*args, stride=stride, cfg=BlockConfig(tile_h=2, tile_w=4, block_hid=16))
    assert_close(y, ref, dtype, "depthwise across rows")
    interior = ref[:, :, 1:-1] if stride == 1 else ref[:, :, 1:]
    assert (interior == 1.5).float().mean() > 0.5  # the construction does what it says


@pytest.mark.parametrize("dtype", HALF)
def test_expand_sums_its_two_input_parts_in_fp32(dtype):
    """48 input channels run as two products (32 + 16 channels); the second cancels half of
    the first exactly, so the sum between them is large and its rest small."""
    cin, hidden, cout = 48, 32, 16
    x = _quarters(2, cin, 5, 4)
    x[:, 32:] = x[:, :16]
    w_exp = torch.randn(cin, hidden) / 8
    w_exp[:16] = torch.randint(-128, 128, (16, hidden)).float()
    w_exp[32:] = -w_exp[:16]
    args = [nhwc(x), w_exp, torch.full((hidden,), 1.0), _centre_tap(hidden), torch.zeros(hidden),
            torch.randn(hidden, cout) / 4, torch.zeros(cout)]
    args = [a.to(DEVICE, dtype) for a in args]
    y, ref = _block(*args, stride=1, cfg=BlockConfig(tile_h=2, tile_w=4, block_hid=16))
    assert_close(y, ref, dtype, "expand across input parts")


@pytest.mark.parametrize("dtype", HALF)
def test_head_sums_input_channel_steps_in_fp32(dtype):
    """The 1x1 conv's second step of 32 input channels cancels the first exactly."""
    cin, cout, step = 96, 32, 32
    x = _quarters(3, cin, 3, 3)
    x[:, step:2 * step] = x[:, :step]
    w = torch.randn(cin, cout) / 4
    w[:step] = torch.randint(-128, 128, (step, cout)).float()
    w[step:2 * step] = -w[:step]
    x, w, b = nhwc(x).to(DEVICE, dtype), w.to(DEVICE, dtype), torch.full((cout,), 3.0, device=DEVICE)
    y = call_guarded(head_pool, x, w, b, out_shape=(3, cout), out_layout="rows",
                     config=HeadConfig(imgs=2, block_p=16, block_k=step, block_n=32))
    assert_close(y, _exact_ref(reference.head_pool, x, w, b), dtype, "head across input steps")


@pytest.mark.parametrize("dtype", HALF)
def test_linear_sums_input_steps_in_fp32(dtype):
    m, k, nout, step = 5, 96, 24, 32
    a = _quarters(m, k)
    a[:, step:2 * step] = a[:, :step]
    w = torch.randn(k, nout) / 4
    w[:step] = torch.randint(-128, 128, (step, nout)).float()
    w[step:2 * step] = -w[:step]
    a, w, b = a.to(DEVICE, dtype), w.to(DEVICE, dtype), torch.randn(nout, device=DEVICE)
    y = call_guarded(linear, a, w, b, out_shape=(m, nout), out_layout="rows",
                     config=LinearConfig(block_m=16, block_n=16, block_k=step))
    assert_close(y, _exact_ref(reference.linear, a, w, b), dtype, "linear across input steps")
