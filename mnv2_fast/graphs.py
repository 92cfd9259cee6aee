"""Replaying the whole network as one CUDA graph: the lowest-latency way to run it at small batch."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CUDAGraphRunner"]


class CUDAGraphRunner(nn.Module):
    """Replays one CUDA graph of ``module`` for a fixed input shape, dtype, device and layout.

    The first call warms up (compiling the Triton kernels) and captures; later calls copy the
    input into the graph's static buffer and replay.  A different input shape is an error:
    call ``reset()`` (or make another runner) to capture again.
    """

    def __init__(self, module: nn.Module, *, warmup: int = 2, copy_output: bool = True):
        super().__init__()
        self.module = module
        self.warmup = warmup
        self.copy_output = copy_output
        self.fusion_report = getattr(module, "fusion_report", None)
        self.reset()

    def reset(self) -> None:
        self._graph = None
        self._signature = None
        self._static_in = None
        self._static_out = None

    def _apply(self, fn, *args, **kwargs):
        self.reset()  # moved or cast: the captured graph points at the old buffers
        return super()._apply(fn, *args, **kwargs)

    @staticmethod
    def _sig(x: torch.Tensor):
        return tuple(x.shape), x.dtype, x.device, x.stride()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_cuda:
            raise ValueError("CUDAGraphRunner needs a CUDA input tensor")
        sig = self._sig(x)
        if self._graph is None:
            self._capture(x)
        elif sig != self._signature:
            raise ValueError(
                f"this CUDA graph was captured for input shape {self._signature[0]}, dtype {self._signature[1]}, "
                f"strides {self._signature[3]}; got shape {sig[0]}, dtype {sig[1]}, strides {sig[3]}. "
                "A graph has fixed shapes: call reset() to capture a new one"
            )
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out.clone() if self.copy_output else self._static_out

    def _capture(self, x: torch.Tensor) -> None:
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, self.warmup)):
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        self._graph, self._signature = graph, self._sig(x)
        self._static_in, self._static_out = static_in, static_out
