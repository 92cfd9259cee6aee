"""Host cost of one fused MobileNetV2 forward at batch 1, with the GPU work taken away: what
the Python side of the fused parts (19: the stem runs with block 1) costs per forward, the
time a batch-1 forward waits for before the GPU has anything to do.  Runs on the CPU
(Triton's interpreter is switched on, but no kernel runs):

    python bench/host_overhead.py [--rounds 15] [--forwards 300]

Two ways of taking the GPU work away:

    launch     every Triton launch is a no-op (the launchers still check their inputs,
               choose a config, allocate the output)
    launcher   every launcher (kernels.stem_conv, stem_block, inverted_residual, head_pool, linear)
               returns a preallocated output at once: what is left is the modules' own cost

and, where the tree has the registered ops (mnv2_fast/ops.py), two ways of calling them:

    direct     as the fused modules run eagerly: the op's implementation, called directly
    dispatch   every part through torch.ops.mnv2_fast.* (the dispatcher's round trip), as
               if the modules always called the registered op

To compare with a tree before the op layer, run this same file with that tree first on
PYTHONPATH; bench/NOTES.md has the numbers.  Microseconds per forward, of the fastest round
(the one least disturbed by other processes, as timeit advises), and the median round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch: no GPU needed, none used

import torch  # noqa: E402

LAUNCHERS = ("stem_conv", "stem_block", "inverted_residual", "head_pool", "linear")


@contextlib.contextmanager
def no_launches():
    """Every kernels module's `launch` (the one call each launcher ends with) does nothing."""
    from mnv2_fast import kernels
    from mnv2_fast.kernels import _common

    original = _common.launch
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith(kernels.__name__ + ".") and getattr(m, "launch", None) is original]
    for m in modules:
        m.launch = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for m in modules:
            m.launch = original


@contextlib.contextmanager
def no_launchers(fast: torch.nn.Module, x: torch.Tensor):
    """Each launcher returns, in turn, the outputs the launchers returned in one real forward."""
    from mnv2_fast import kernels

    originals = {name: getattr(kernels, name) for name in LAUNCHERS}
    outputs: list[torch.Tensor] = []
    turn = iter(())

    def recording(name):
        def call(*args, **kwargs):
            outputs.append(originals[name](*args, **kwargs))
            return outputs[-1]

        return call

    def replaying(*args, **kwargs):
        nonlocal turn
        out = next(turn, None)
        if out is None:  # a new forward
            turn = iter(outputs)
            out = next(turn)
        return out

    try:
        with no_launches():
            for name in LAUNCHERS:
                setattr(kernels, name, recording(name))
            fast(x)
        for name in LAUNCHERS:
            setattr(kernels, name, replaying)
        yield
    finally:
        for name, fn in originals.items():
            setattr(kernels, name, fn)


@contextlib.contextmanager
def through_dispatcher():
    import mnv2_fast.ops as ops

    original = ops.traced
    ops.traced = lambda x: True
    try:
        yield
    finally:
        ops.traced = original


def per_forward_us(fast, x, rounds: int, forwards: int) -> tuple[float, float]:
    """(fastest, median) round's microseconds per forward."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(forwards):
            fast(x)
        samples.append((time.perf_counter() - start) / forwards * 1e6)
    return min(samples), statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--forwards", type=int, default=300)
    args = p.parse_args(argv)

    import mnv2_fast
    from mnv2_fast.tools.testing import randomize_bn

    has_ops = hasattr(mnv2_fast.fused, "ops")  # a tree before the op layer has no mnv2_fast/ops.py
    torch.manual_seed(0)
    fast = mnv2_fast.optimize(randomize_bn(mnv2_fast.mobilenet_v2()).eval(), backend="triton")
    x = torch.randn(1, 3, 224, 224)
    parts = sum(isinstance(m, mnv2_fast.fused.FusedPart) for m in fast.modules())
    print(f"mnv2_fast from {os.path.dirname(mnv2_fast.__file__)}; registered ops: {'yes' if has_ops else 'no'}; "
          f"torch {torch.__version__}; batch 1, 224 px, {parts} fused parts; {args.rounds} rounds of {args.forwards}")
    calls = [("direct", contextlib.nullcontext)] + ([("dispatch", through_dispatcher)] if has_ops else [])
    with torch.inference_mode():
        for level in ("launch", "launcher"):
            for how, ctx in calls:
                mock = no_launches() if level == "launch" else no_launchers(fast, x)
                with mock, ctx():
                    fast(x)  # warm: caches, first-call paths
                    best, median = per_forward_us(fast, x, args.rounds, args.forwards)
                print(f"  {level:<9} mocked, {how:<8}: {best:7.1f} us per forward ({best / parts:5.2f} per part), "
                      f"median round {median:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
