"""The registered ops (mnv2_fast/ops.py) and what they compose with: opcheck for each op,
torch.compile(fullgraph=True) without a graph break, torch.export with a dynamic batch and
one mnv2_fast node per fused part, the exported program against the unfused model.

Without a GPU the kernels run through Triton's interpreter, and torch.compile uses the
"aot_eager" backend: Dynamo and AOTAutograd (the fake kernels, functionalization) exactly as
with Inductor, the graph then run eagerly; Inductor's C++ codegen would take minutes on CI's
two cores.  With a GPU the same tests compile with Inductor."""

from __future__ import annotations

import collections
import io

import pytest
import torch

import mnv2_fast
from helpers import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, make_block, nhwc, randomize_bn, reference64
from mnv2_fast import fuse_block, ops, optimize

COMPILE_BACKEND = "inductor" if DEVICE.type == "cuda" else "aot_eager"
# MobileNetV2's 19 fused parts: the stem with block 1, 16 blocks, the head, the classifier.
PARTS = {"stem_block": 1, "inverted_residual": 16, "head_pool": 1, "linear": 1}


def _model(k=10):
    return randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=k)).eval()


def _mnv2_nodes(gm: torch.fx.GraphModule) -> collections.Counter:
    return collections.Counter(n.target.name().split("::")[1] for n in gm.graph.nodes
                               if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                               and n.target.namespace == "mnv2_fast")


def _convolutions(gm: torch.fx.GraphModule) -> list[str]:
    """aten.convolution, aten.conv2d, ... (any PyTorch convolution: the fused parts replace them all)."""
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "aten" and "conv" in str(n.target)]


def _opcheck_cases(backend):
    cin, hidden, cout = 16, 96, 16
    x = nhwc(torch.randn(2, cin, 5, 5, device=DEVICE))
    w = lambda *shape: torch.randn(*shape, device=DEVICE)  # noqa: E731
    return [
        ("inverted_residual", (x, w(cin, hidden), w(hidden), w(9, hidden), w(hidden), w(hidden, cout), w(cout), 1, True,
                               backend)),
        ("inverted_residual", (torch.randn(3, 16, 7, 6, device=DEVICE), None, None, w(9, 16), w(16), w(16, 24), w(24), 2,
                               False, backend)),  # t = 1, stride 2, NCHW input
        ("stem_conv", (torch.randn(2, 3, 9, 8, device=DEVICE), w(27, 16), w(16), 2, backend)),
        ("stem_block", (torch.randn(2, 3, 9, 8, device=DEVICE), w(27, 16), w(16), w(9, 16), w(16), w(16, 8), w(8),
                        backend)),
        ("head_pool", (x, w(cin, 32), w(32), backend)),
        ("linear", (w(3, 16), w(16, 8), w(8), backend)),
    ]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_every_op_passes_opcheck(backend):
    """Schema, fake implementation (shapes, dtypes and strides, symbolic sizes included),
    autograd registration, AOTAutograd with dynamic shapes."""
    checked = set()
    for name, args in _opcheck_cases(backend):
        result = torch.library.opcheck(ops.OPS[name], args)
        assert set(result.values()) == {"SUCCESS"}, (name, result)
        checked.add(name)
    assert checked == set(ops.OPS) >= set(PARTS)  # (stem_conv: the family's stems)


def _reference(name, args):
    """The op's float64 twin in kernels/reference.py (same arguments, the backend left out)."""
    d = [a.double() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
    ref = mnv2_fast.kernels.reference
    if name == "inverted_residual":
        return ref.inverted_residual(*d[:7], stride=d[7], residual=d[8])
    if name == "stem_conv":
        return ref.stem_conv(*d[:3], stride=d[3])
    if name == "stem_block":
        return ref.stem_block(*d[:7])
    return getattr(ref, name)(*d)


def test_op_results_match_the_reference_and_the_fake_strides():
    for name, args in _opcheck_cases("triton"):
        out = ops.OPS[name](*args)
        assert_close(out, _reference(name, args), torch.float32, name)
        with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
            fake = ops.OPS[name](*args)
        assert fake.shape == out.shape and fake.stride() == out.stride(), name


def test_eager_forward_never_goes_through_the_dispatcher(monkeypatch):
    """Run eagerly, the modules call the implementations directly (bench/host_overhead.py:
    the dispatcher's round trip would cost more than the modules themselves); traced, they
    call the registered ops."""
    calls = collections.Counter()

    def counted(name, op):
        def call(*args):
            calls[name] += 1
            return op(*args)

        return call

    for name, op in list(ops.OPS.items()):
        monkeypatch.setitem(ops.OPS, name, counted(name, op))
    fast = optimize(_model(), backend="triton").to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        eager = fast(x)
    assert not calls
    with torch.no_grad(), torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
        fast(x)  # a fake tensor: traced
    assert calls == PARTS


def test_compile_fullgraph_without_graph_breaks_matches_eager():
    torch._dynamo.reset()
    model = _model()
    fast = optimize(model, backend="triton").to(DEVICE)
    graphs = []

    def backend(gm, example_inputs):  # the configured backend, keeping what Dynamo captured
        graphs.append(gm)
        return torch._dynamo.lookup_backend(COMPILE_BACKEND)(gm, example_inputs)

    compiled = torch.compile(fast, fullgraph=True, backend=backend)  # a graph break would be an error
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    with torch.no_grad():
        y = compiled(x)
        assert len(graphs) == 1 and _mnv2_nodes(graphs[0]) == PARTS and not _convolutions(graphs[0])
        assert_close(y, fast(x), torch.float32, "compiled vs eager")
        assert_close(y, reference64(model, x), torch.float32, "compiled vs unfused")
        # Another batch (recompiled with a dynamic batch dimension) and an empty one.
        x2 = torch.randn(2, 3, 16, 16, device=DEVICE)
        assert_close(compiled(x2), reference64(model, x2), torch.float32, "compiled, batch 2")
        assert compiled(x2[:0]).shape == (0, 10)
        assert all(_mnv2_nodes(gm) == PARTS for gm in graphs)


def test_compile_keeps_the_inference_only_errors():
    torch._dynamo.reset()
    fast = optimize(_model(), backend="triton").to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with pytest.raises(Exception, match="inference only"):
        torch.compile(fast, backend=COMPILE_BACKEND)(x.clone().requires_grad_())


def _export(fast, x):
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(fast, (x,), dynamic_shapes=({0: batch},))


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_export_dynamic_batch_one_node_per_fused_part(backend):
    model = _model()
    fast = optimize(model, backend=backend).to(DEVICE)
    x = torch.randn(2, 3, 24, 24, device=DEVICE)
    ep = _export(fast, x)
    assert _mnv2_nodes(ep.graph_module) == PARTS, ep.graph_module.code
    assert not _convolutions(ep.graph_module)
    (batch_range,) = ep.range_constraints.values()  # the batch, symbolic
    assert (batch_range.lower, batch_range.upper) == (1, 1024)
    # The core ATen form (what deployment tools read) keeps them too.
    core = ep.run_decompositions()
    assert _mnv2_nodes(core.graph_module) == PARTS and not _convolutions(core.graph_module)
    with torch.no_grad():
        for n in (1, 3):
            xn = torch.randn(n, 3, 24, 24, device=DEVICE)
            y = ep.module()(xn)
            assert y.shape == (n, 10)
            assert_close(y, reference64(model, xn), torch.float32, f"exported, batch {n}")
            assert_close(y, fast(xn), torch.float32, f"exported vs eager, batch {n}")


def test_exported_program_saves_loads_and_runs_fp16():
    """Serialised and loaded back (mnv2_fast imported: the loader needs the ops registered)."""
    model = _model()
    fast = optimize(model, backend="triton").to(DEVICE, torch.float16)
    x = torch.randn(2, 3, 24, 24, device=DEVICE, dtype=torch.float16)
    buf = io.BytesIO()
    torch.export.save(_export(fast, x), buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert _mnv2_nodes(loaded.graph_module) == PARTS
    with torch.no_grad():
        y = loaded.module()(x)
    assert_close(y, reference64(model, x), torch.float16, "loaded", factor=MODEL_TOLERANCE_FACTOR)


def test_a_single_block_exports_as_one_op():
    block = make_block(24, 32, 2, 6)
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = torch.randn(2, 24, 9, 9, device=DEVICE)
    ep = _export(fused, x)
    assert _mnv2_nodes(ep.graph_module) == {"inverted_residual": 1}
    with torch.no_grad():
        assert_close(ep.module()(x), reference64(block, x), torch.float32, "exported block")


def test_a_pinned_launch_config_is_eager_only():
    block = make_block(16, 16, 1, 6)
    fused = fuse_block(block, backend="triton").to(DEVICE)
    x = torch.randn(1, 16, 6, 6, device=DEVICE)
    fused.config = mnv2_fast.kernels.default_config(fused.spec.at(6, 6), 4, 1)  # the GPU heuristic's, fp32
    with torch.no_grad():
        assert_close(fused(x), reference64(block, x), torch.float32, "pinned config, eager")
    with pytest.raises(ValueError, match="config applies to eager calls only.*set config to None"):
        _export(fused, x)
