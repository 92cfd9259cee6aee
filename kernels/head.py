"""MobileNetV2 head: 1x1 conv + BN + ReLU6, global average pool, and the dense classifier.

`head_pool` computes pooled[n, c] = mean over pixels of relu6(x[n, p] @ W + b)[c] without
writing the [N, H, W, 1280] activation anywhere.  Each program owns IMGS images and BLOCK_N
head channels, and walks the images' pixels packed end to end (49 per image at 224 px, no
padding to 64 per image) in chunks of BLOCK_P:

    act[c, p]     = relu6(W^T[c, :] @ x^T[:, p] + b[c])          (tensor cores, fp32)
    pooled[c, i] += act[c, :] @ S[:, i],  S[p, i] = 1 if pixel p is in image i

The pooling is a second, small product (5% of the first at BLOCK_P = 128, IMGS <= 16) on
the activation as it sits in registers, rounded to the input dtype as the unfused network
rounds it; the channels are the rows (M) so the head weight slab is read once per chunk for
all IMGS images.

`linear` is the classifier.  The paper's final "1x1 conv" to k classes acts on the pooled
1x1x1280 map, where it is exactly a dense layer 1280 -> k: out = a @ W + b.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (INT32_MAX, _activation, check_act, check_activation, check_weight, launch, launch_args, output,
                      tf32)
from .choice import choose_head_config, choose_linear_config
from .records import HeadConfig, LinearConfig


@triton.jit
def _head_pool_kernel(
    x_ptr,  # input, contiguous NHWC [N, H, W, CIN]
    w_ptr,  # folded 1x1 weight [CIN, COUT], input dtype
    b_ptr,  # folded bias [COUT]
    y_ptr,  # pooled output [N, COUT], contiguous, input dtype
    N,  # batch
    cin,  # CIN, at run time: the product loop's bound (see the linear kernel)
    HW: tl.constexpr,  # pixels per image (a constant: one variant per input resolution)
    CIN: tl.constexpr,  # input channels (320 x width)
    COUT: tl.constexpr,  # head channels (1280 for width <= 1)
    ACT: tl.constexpr,  # activation: "relu6" (MobileNetV2), "relu" (MNASNet, MobileNetV4) or "none"
    IMGS: tl.constexpr,  # images per program (grid axis 0)
    BLOCK_P: tl.constexpr,  # packed pixels per chunk
    BLOCK_K: tl.constexpr,  # input channels per product step
    BLOCK_N: tl.constexpr,  # head channels per program (grid axis 1)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
):
    SLOTS: tl.constexpr = 16  # columns of the pooling product: IMGS <= 16 (the smallest product N)
    img0 = tl.program_id(0) * IMGS
    c = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < COUT
    rows = tl.minimum(N - img0, IMGS) * HW  # this program's pixels (fewer in the last group)
    x_grp = x_ptr + img0.to(tl.int64) * (HW * CIN)
    bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    slot = tl.arange(0, SLOTS)
    pooled = tl.zeros([BLOCK_N, SLOTS], dtype=tl.float32)
    for p0 in range(0, rows, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < rows
        acc = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
        for k0 in range(0, cin, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = (k < CIN) | (CIN % BLOCK_K == 0)
            w_t = tl.load(w_ptr + k[None, :] * COUT + c[:, None], mask=c_ok[:, None] & k_ok[None, :], other=0.0)
            x_t = tl.load(x_grp + p[None, :] * CIN + k[:, None], mask=k_ok[:, None] & p_ok[None, :], other=0.0)
            acc = tl.dot(w_t, x_t, acc, input_precision=DOT_PRECISION)
        # Pixels past `rows` hold act(bias): S has no 1 for them.
        act = _activation(acc + bias[:, None], ACT).to(x_ptr.dtype.element_ty)
        in_img = ((p[:, None] // HW) == slot[None, :]) & p_ok[:, None]
        pooled = tl.dot(act, in_img.to(x_ptr.dtype.element_ty), pooled, input_precision=DOT_PRECISION)
    img = img0 + slot
    tl.store(y_ptr + img.to(tl.int64)[None, :] * COUT + c[:, None], (pooled / HW).to(y_ptr.dtype.element_ty),
             mask=c_ok[:, None] & ((slot < IMGS) & (img < N))[None, :])


@triton.jit
def _linear_kernel(
    a_ptr,  # input [M, K], contiguous
    w_ptr,  # weight [K, NOUT], contiguous, input dtype
    b_ptr,  # bias [NOUT]
    y_ptr,  # output [M, NOUT], contiguous, input dtype
    r_ptr,  # residual [M, NOUT], contiguous, input dtype, added last (HAS_RESIDUAL; else not read)
    M,  # rows (batch; a block's project: its pixels)
    k_end,  # K, at run time: the product loop's bound (see below)
    K: tl.constexpr,  # input features
    NOUT: tl.constexpr,  # output features (classes)
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # output features per program
    BLOCK_K: tl.constexpr,  # input features per product step
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 products
    ACT: tl.constexpr = "none",  # activation after the bias (a block's project: its act_proj)
    HAS_RESIDUAL: tl.constexpr = False,  # add r (a block's project: the block's input)
):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    j_ok = j < NOUT
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # A bound the compiler cannot see keeps the product loop a loop for every trip count (no
    # full unrolling), as the performance model's loop count expects; one compare per step.
    for k0 in range(0, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = (k < K) | (K % BLOCK_K == 0)
        a = tl.load(a_ptr + (m * K)[:, None] + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + k[:, None] * NOUT + j[None, :], mask=k_ok[:, None] & j_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    acc = _activation(acc + tl.load(b_ptr + j, mask=j_ok, other=0.0).to(tl.float32)[None, :], ACT)
    ok = m_ok[:, None] & j_ok[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(r_ptr + (m * NOUT)[:, None] + j[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + (m * NOUT)[:, None] + j[None, :], acc.to(y_ptr.dtype.element_ty), mask=ok)


def head_kernel_args(cin: int, cout: int, hw: int, cfg: HeadConfig, dtype: torch.dtype, allow_tf32: bool,
                     act: str = "relu6") -> dict:
    return launch_args(cfg, dtype, allow_tf32, HW=hw, CIN=cin, COUT=cout, ACT=act)


def linear_kernel_args(k: int, nout: int, cfg: LinearConfig, dtype: torch.dtype, allow_tf32: bool,
                       act: str = "none", residual: bool = False) -> dict:
    return launch_args(cfg, dtype, allow_tf32, K=k, NOUT=nout, ACT=act, HAS_RESIDUAL=residual)


def head_pool(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    act: str = "relu6",
    config: HeadConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean over H, W of act(conv1x1(x) + bias), BN folded into weight; act "relu6"
    (MobileNetV2), "relu" (MNASNet, MobileNetV4) or "none".

    x: [N, CIN, H, W] in channels_last memory;  weight: [CIN, COUT] in x's dtype;  bias: [COUT].
    Returns [N, COUT] (contiguous, x's dtype).  Scratch: none; the [N, COUT, H, W]
    activation exists only as one [BLOCK_N, BLOCK_P] register tile per program.
    """
    check_activation("x", x)
    n, cin, h, w = x.shape
    cout = check_weight(weight, bias, cin, x)
    cfg = config or choose_head_config(cin, cout, h * w, n, x.device, x.dtype.itemsize)
    if cfg.imgs * h * w * cin > INT32_MAX:
        raise ValueError(f"{cfg.imgs} image(s) of x {tuple(x.shape)} span more than 2^31 elements: the head kernel "
                         "indexes within a program's images in 32 bits (a config with fewer imgs, or smaller images)")
    out = output(out, (n, cout), x, reads=(weight, bias))
    grid = (triton.cdiv(n, cfg.imgs), triton.cdiv(cout, cfg.block_n))
    launch(_head_pool_kernel, grid, x, weight, bias, out, n, cin,
           **head_kernel_args(cin, cout, h * w, cfg, x.dtype, tf32(allow_tf32), check_act(act)))
    return out


# Same calling convention as head_pool and the other launchers (input, weight, bias, *, config,
# allow_tf32, out): the signatures repeat on purpose.
def linear(
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    act: str = "none",
    residual: torch.Tensor | None = None,
    config: LinearConfig | None = None,
    allow_tf32: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(a @ weight + bias) [+ residual].  a: [M, K] contiguous;  weight: [K, NOUT] in a's
    dtype;  bias: [NOUT];  residual: [M, NOUT] contiguous in a's dtype, or None.  (The classifier;
    also a block's project where it runs apart, `BlockConfig.project_apart`.)

    allow_tf32 (fp32 products on TF32 tensor cores) defaults to
    torch.backends.cuda.matmul.allow_tf32, the switch nn.Linear follows."""
    check_activation("a", a, "MK")
    m, k = a.shape
    nout = check_weight(weight, bias, k, a, "K, NOUT")
    if residual is not None:
        check_activation("residual", residual, "MK")
        if residual.shape != (m, nout) or residual.dtype != a.dtype or residual.device != a.device:
            raise ValueError(f"residual must be [{m}, {nout}] {a.dtype} on {a.device}, got {tuple(residual.shape)} "
                             f"{residual.dtype} on {residual.device}")
    cfg = config or choose_linear_config(m, k, nout, a.device, a.dtype.itemsize)
    out = output(out, (m, nout), a, reads=(weight, bias, residual))
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    launch_linear(a, weight, bias, out, residual, check_act(act), cfg, allow_tf32)
    return out


def launch_linear(a, weight, bias, out, residual, act: str, cfg: LinearConfig, allow_tf32: bool) -> None:
    """`linear`'s launch on arguments its caller has checked (the block launcher's project,
    whose tensors it checked as the block's)."""
    m, k = a.shape
    nout = weight.shape[1]
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(nout, cfg.block_n))
    launch(_linear_kernel, grid, a, weight, bias, out, a if residual is None else residual, m, k,
           **linear_kernel_args(k, nout, cfg, a.dtype, allow_tf32, act, residual is not None))
