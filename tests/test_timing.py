"""The benchmark warm-up lasts a span of GPU time, not a number of calls (checked with a
simulated GPU clock: CUDA events are faked, each call advances the clock)."""

import pytest
import torch

from mnv2_fast.tools import timing


class _Clock:
    def __init__(self, ms_per_call):
        self.now, self.calls, self.ms_per_call = 0.0, 0, ms_per_call

    def call(self, _x):
        self.calls += 1
        self.now += self.ms_per_call


@pytest.fixture
def gpu_clock(monkeypatch):
    clock = _Clock(0.0)

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock.now

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.t - self.t

    monkeypatch.setattr(torch.cuda, "Event", Event)
    return clock


@pytest.mark.parametrize("ms_per_call", [0.01, 0.7, 45.0, 300.0])
def test_warm_up_lasts_the_requested_gpu_time(gpu_clock, ms_per_call):
    gpu_clock.ms_per_call = ms_per_call
    calls = timing.warm_up(gpu_clock.call, [None], calls=1, seconds=0.2)
    assert calls == gpu_clock.calls
    assert gpu_clock.now >= 200.0  # at least 0.2 s of GPU time
    # ... and not much more: batches are sized from the time measured so far.
    assert gpu_clock.now <= max(2 * 200.0, 200.0 + 2 * ms_per_call)


def test_warm_up_makes_at_least_the_requested_calls(gpu_clock):
    gpu_clock.ms_per_call = 50.0
    assert timing.warm_up(gpu_clock.call, [None], calls=7, seconds=0.0) == 7
    gpu_clock.calls = 0
    assert timing.warm_up(gpu_clock.call, [None], calls=7, seconds=0.2) >= 7
