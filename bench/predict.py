"""Predict each fused block's time from a work model of the launch configs, before a GPU run.

    python bench/predict.py [--batch 256] [--mma-tflops 300] [--fma-tflops 50] [--gbps 3400]

For each of the 17 blocks of MobileNetV2 1.0 at 224 px and each stencil staging, counts
what the kernel really executes (padded tiles, expand recomputed per tap or per halo,
output-channel programs redoing the expand), and predicts
    max(tensor-core FLOPs / mma rate, depthwise FLOPs / FMA rate, floor bytes / bandwidth).
The rates are assumptions to be replaced by measured ones (bench/NOTES.md records both).
"""

from __future__ import annotations

import argparse
import math

from mnv2_fast.kernels import staging_configs
from mnv2_fast.model import block_specs

# cuDNN times of blocks 1-17, BN folded, channels_last, fp16, batch 256, one H200
# (torch 2.11, cuDNN 9.19), as reported with the task that asked for the fused kernel.
CUDNN_H200_MS = (0.81, 1.95, 1.30, 0.80, 0.46, 0.46, 0.27, 0.29, 0.29, 0.29, 0.26, 0.35, 0.35, 0.27, 0.28, 0.26,
                 0.14)


def p2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def work(spec, size: int, batch: int, cfg) -> tuple[float, float]:
    """(tensor-core FLOPs, depthwise FLOPs) the config executes for the whole batch."""
    ho = (size - 1) // spec.stride + 1
    k_pad = math.ceil(spec.cin / cfg.block_k) * cfg.block_k
    h_pad = math.ceil(spec.hidden / cfg.block_h) * cfg.block_h
    co_blocks = math.ceil(spec.cout / cfg.block_co)
    if cfg.gather:
        in_h = min((cfg.tile_h - 1) * spec.stride + 3, size)
        in_w = min((cfg.tile_w - 1) * spec.stride + 3, size)
        p_out, p_in = max(16, p2(cfg.imgs * cfg.tile_h * cfg.tile_w)), max(16, p2(cfg.imgs * in_h * in_w))
        programs = math.ceil(batch / cfg.imgs) * math.ceil(ho / cfg.tile_h) * math.ceil(ho / cfg.tile_w)
        expand = 2 * p_in * k_pad * h_pad
    else:
        p_out = cfg.block_p
        programs = math.ceil(batch * ho * ho / p_out)
        expand = 9 * 2 * p_out * k_pad * h_pad if spec.t != 1 else 0
    project = 2 * p_out * h_pad * cfg.block_co
    mma = programs * co_blocks * (expand + project)
    fma = programs * co_blocks * 9 * 2 * p_out * h_pad
    return mma, fma


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mma-tflops", type=float, default=300.0, help="assumed fp16 tensor-core rate reached")
    ap.add_argument("--fma-tflops", type=float, default=50.0, help="assumed fp32 FMA rate reached (depthwise)")
    ap.add_argument("--gbps", type=float, default=3400.0, help="assumed DRAM bandwidth reached (GB/s)")
    a = ap.parse_args(argv)
    print(f"batch {a.batch}, fp16; assumed rates: mma {a.mma_tflops} TFLOP/s, FMA {a.fma_tflops} TFLOP/s, "
          f"{a.gbps} GB/s\n")
    print("| block | cin→hidden→cout, s | staging | mma GFLOP | dw GFLOP | MB | predicted ms | other staging ms |"
          " cuDNN ms (H200) | predicted speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = 0.0
    for spec, cudnn in zip(block_specs(1.0, resolution=224), CUDNN_H200_MS):
        size = spec.h
        nbytes = spec.floor_bytes(a.batch, 2)

        def predict(cfg):
            mma, fma = work(spec, size, a.batch, cfg)
            ms = max(mma / a.mma_tflops / 1e9, fma / a.fma_tflops / 1e9, nbytes / a.gbps / 1e6)
            return ms, mma, fma

        default, other = staging_configs(spec, 2)
        ms, mma, fma = predict(default)
        other_ms = predict(other)[0] if other else None
        total += ms
        print(f"| {spec.index} | {spec.cin}→{spec.hidden}→{spec.cout}, s{spec.stride} | "
              f"{'gather' if default.gather else 'tap'} | {mma / 1e9:.1f} | {fma / 1e9:.2f} | {nbytes / 1e6:.0f} | "
              f"{ms:.3f} | {'–' if other_ms is None else f'{other_ms:.3f}'} | {cudnn} | {cudnn / ms:.1f}x |")
    print(f"\nsum of blocks: {total:.2f} ms predicted (cuDNN: {sum(CUDNN_H200_MS):.2f} ms)")


if __name__ == "__main__":
    main()
