"""Hard edges a new user runs into: each bad input gets a clear error or the right (empty)
result, never a silent wrong answer (issue 13; the table is in tests/README.md).  Numbered
as the items of the issue."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnv2_fast
from helpers import DEVICE, INTERPRETER, MODEL_TOLERANCE_FACTOR, assert_close, make_block, nhwc, randomize_bn, reference64
from mnv2_fast import CUDAGraphRunner, fuse_block, fusion_report, optimize
from mnv2_fast.kernels import _common, head_pool, inverted_residual, linear, stem_conv
from mnv2_fast.optimize import FusionEntry
from mnv2_fast.tools import cli


def _block_args(cin=16, hidden=96, cout=16, dtype=torch.float32, device=DEVICE):
    return dict(
        w_exp=torch.randn(cin, hidden, device=device, dtype=dtype), b_exp=torch.randn(hidden, device=device),
        w_dw=torch.randn(9, hidden, device=device), b_dw=torch.randn(hidden, device=device),
        w_proj=torch.randn(hidden, cout, device=device, dtype=dtype), b_proj=torch.randn(cout, device=device),
    )


def _launches(n=1, dtype=torch.float32, device=DEVICE):
    """One call of every launcher at batch n: (kernel module, kernel name, input, thunk, output shape)."""
    x = nhwc(torch.randn(n, 16, 5, 5, device=device, dtype=dtype))
    img = torch.randn(n, 3, 9, 9, device=device, dtype=dtype)
    w27, w16 = torch.randn(27, 16, device=device, dtype=dtype), torch.randn(16, 32, device=device, dtype=dtype)
    a, wl = torch.randn(n, 16, device=device, dtype=dtype), torch.randn(16, 8, device=device, dtype=dtype)
    b16, b32, b8 = (torch.randn(c, device=device) for c in (16, 32, 8))
    block = _block_args(dtype=dtype, device=device)
    return [
        ("block", "_inverted_residual_kernel", x,
         lambda: inverted_residual(x, **block, stride=1, residual=True), (n, 16, 5, 5)),
        ("stem", "_stem_kernel", img, lambda: stem_conv(img, w27, b16), (n, 16, 5, 5)),
        ("head", "_head_pool_kernel", x, lambda: head_pool(x, w16, b32), (n, 32)),
        ("head", "_linear_kernel", a, lambda: linear(a, wl, b8), (n, 8)),
    ]


LAUNCHERS = [pytest.param(i, id=name) for i, name in enumerate(["block", "stem", "head_pool", "linear"])]


# ---- 1. bf16 through Triton's interpreter computes wrong values: refused, with the reason

@pytest.mark.skipif(not INTERPRETER, reason="the interpreter's bf16 refusal (CPU only)")
@pytest.mark.parametrize("index", LAUNCHERS)
def test_1_bf16_under_the_interpreter_is_refused_by_every_launcher(index):
    *_, call, _ = _launches(dtype=torch.bfloat16)[index]
    with pytest.raises(RuntimeError, match="bfloat16 .*interpreter.* known to compute wrong results"):
        call()


# ---- 8. a batch of 0: the empty result, no kernel launched

class _Kernel:
    """Stands in for a @triton.jit kernel: records each launch and where it happened."""

    def __init__(self, spy=None):
        self.spy, self.launches = spy, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, self.spy.inside if self.spy else None))


@pytest.mark.parametrize("index", LAUNCHERS)
def test_8_launchers_return_an_empty_batch_without_launching(index, monkeypatch):
    module, kernel_name, x, call, shape = _launches(n=0)[index]
    kernel = _Kernel()
    monkeypatch.setattr(importlib.import_module(f"mnv2_fast.kernels.{module}"), kernel_name, kernel)
    y = call()
    assert tuple(y.shape) == shape and y.device == x.device and y.dtype == x.dtype
    assert kernel.launches == [], "a kernel was launched for an empty batch"


# ---- 12. every launch runs on the input's device, not on the current one

class _GuardSpy:
    """Stands in for `_common.device_guard` (wrapping `real`, if given): records each device
    guarded, and whether the guard is entered now."""

    def __init__(self, real=None):
        self.real, self.devices, self.inside = real, [], False

    def __call__(self, device):
        self.devices.append(device)
        return self._guard(self.real(device) if self.real else contextlib.nullcontext())

    @contextlib.contextmanager
    def _guard(self, inner):
        with inner:
            self.inside = True
            try:
                yield
            finally:
                self.inside = False


@pytest.mark.parametrize("index", LAUNCHERS)
def test_12_every_launcher_launches_inside_a_guard_for_the_input_device(index, monkeypatch):
    spy = _GuardSpy()
    monkeypatch.setattr(_common, "device_guard", spy)
    module, kernel_name, x, call, _ = _launches()[index]
    kernel = _Kernel(spy)
    monkeypatch.setattr(importlib.import_module(f"mnv2_fast.kernels.{module}"), kernel_name, kernel)
    call()
    assert spy.devices == [x.device]
    assert [inside for _, inside in kernel.launches] == [True], "the kernel was not launched inside the guard"


def test_12_the_guard_makes_the_input_device_current(monkeypatch):
    """With a mock of torch.cuda.device, no GPU needed: an input on cuda:1 enters cuda:1."""
    entered = []

    class FakeDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    with _common.device_guard(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    assert entered == [torch.device("cuda", 1), "exit"]
    with _common.device_guard(torch.device("cpu")):  # nothing to switch for CPU tensors
        pass
    assert len(entered) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("index", LAUNCHERS)
def test_12_gpu_launches_enter_the_input_device(index, monkeypatch):
    spy = _GuardSpy(real=_common.device_guard)
    monkeypatch.setattr(_common, "device_guard", spy)
    *_, x, call, _ = _launches(device=torch.device("cuda", torch.cuda.device_count() - 1))[index]
    call()
    torch.cuda.synchronize()
    assert spy.devices == [x.device]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_12_input_on_the_second_gpu_while_the_first_is_current():
    from mnv2_fast.kernels import reference

    second = torch.device("cuda", 1)
    x = nhwc(torch.randn(2, 16, 7, 7, device=second))
    args = _block_args(device=second)
    with torch.cuda.device(0):
        y = inverted_residual(x, **args, stride=1, residual=True)
        torch.cuda.synchronize(second)
    ref = reference.inverted_residual(*(t.double() for t in (x, *args.values())), stride=1, residual=True)
    assert y.device == second
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-3)


# ---- 13. an `out` that overlaps what the kernel reads would race: refused

def test_13_out_overlapping_the_input_or_a_weight_is_refused():
    x = nhwc(torch.randn(2, 16, 5, 5, device=DEVICE))
    args = _block_args()
    with pytest.raises(ValueError, match="out overlaps the input"):
        inverted_residual(x, **args, stride=1, residual=True, out=x)
    buf = torch.empty(3, 5, 5, 16, device=DEVICE)
    inp, shifted = buf[:2].permute(0, 3, 1, 2), buf[1:].permute(0, 3, 1, 2)  # share image 1
    inp.copy_(x)
    with pytest.raises(ValueError, match="out overlaps the input"):
        inverted_residual(inp, **args, stride=1, residual=True, out=shifted)
    a, w, b = torch.randn(4, 8, device=DEVICE), torch.randn(8, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    with pytest.raises(ValueError, match="out overlaps the input"):
        linear(a, w, b, out=a)
    with pytest.raises(ValueError, match="out overlaps a weight or bias"):
        linear(a, w, b, out=w[:4])


def test_13_separate_parts_of_one_buffer_are_fine():
    buf = torch.empty(2, 16 * 5 * 5, device=DEVICE)
    x = buf[0].view(1, 5, 5, 16).permute(0, 3, 1, 2)
    out = buf[1].view(1, 5, 5, 16).permute(0, 3, 1, 2)
    x.copy_(torch.randn(1, 16, 5, 5))
    args = _block_args()
    from mnv2_fast.kernels import reference

    y = inverted_residual(x, **args, stride=1, residual=True, out=out)
    assert y is out
    torch.testing.assert_close(y, reference.inverted_residual(x, **args, stride=1, residual=True),
                               rtol=1e-4, atol=1e-4)


# ---- 4. TRITON_INTERPRET=1 set after triton was imported: named, not a failure deep in Triton

LATE_SWITCH = """
import os, sys
import torch, triton  # as `import torchvision` does
os.environ["TRITON_INTERPRET"] = "1"
from mnv2_fast.tools.interpreter import use_interpreter
try:
    use_interpreter()
except RuntimeError as err:
    print("use_interpreter:", err)
import mnv2_fast
block = mnv2_fast.model.InvertedResidual(8, 8, 1, 6).eval()
try:
    mnv2_fast.fuse_block(block, backend="triton")(torch.randn(1, 8, 4, 4))
except RuntimeError as err:
    print("fuse_block:", err)
"""


def test_4_interpreter_switched_on_after_triton_was_imported_is_named():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", LATE_SWITCH], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hint = "set TRITON_INTERPRET=1 before importing torch/torchvision/triton"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("use_interpreter:") and hint in lines[0], r.stdout
    assert lines[1].startswith("fuse_block:") and hint in lines[1], r.stdout


def test_4_the_package_docstring_no_longer_calls_a_late_switch_safe():
    import mnv2_fast

    assert "can still be set after" not in mnv2_fast.__doc__
    assert "before importing torch/torchvision/triton" in mnv2_fast.__doc__


# ---- module and model level

@pytest.mark.skipif(not INTERPRETER, reason="the interpreter's bf16 refusal (CPU only)")
def test_1_bf16_model_on_the_interpreter_is_refused_and_auto_runs_pytorch():
    model = _small()
    x = torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(RuntimeError, match="known to compute wrong results"):
        optimize(model, backend="triton").to(dtype=torch.bfloat16)(x)
    with torch.no_grad():  # "auto" runs CPU tensors as folded PyTorch: right, bf16 included
        y = optimize(model).to(dtype=torch.bfloat16)(x)
    assert_close(y, reference64(model, x), torch.bfloat16, "auto bf16", factor=MODEL_TOLERANCE_FACTOR)


def _small(k=10):
    return randomize_bn(mnv2_fast.mobilenet_v2(width_mult=0.35, num_classes=k)).eval()


# ---- 2. train() after optimize(): an error in forward, not dropout coming back

@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_2_forward_in_training_mode_raises(backend):
    fast = optimize(_small(), backend=backend).to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    fast.train()
    with pytest.raises(RuntimeError, match=r"FusedStemBlock is in training mode .*inference only.*call \.eval\(\)"):
        fast(x)
    block = fuse_block(make_block(16, 16, 1, 6), backend=backend).to(DEVICE)
    assert not block.training  # built in eval mode
    with pytest.raises(RuntimeError, match="training mode"):
        block.train()(torch.randn(1, 16, 4, 4, device=DEVICE))
    with torch.no_grad():
        assert torch.equal(fast.eval()(x), fast(x))


# ---- 3. autograd: refused on both backends alike, at no cost under no_grad

@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_3_inference_only_when_grad_is_wanted(backend):
    fused = fuse_block(make_block(16, 24, 2, 6), backend=backend).to(DEVICE)
    x = torch.randn(1, 16, 6, 6, device=DEVICE)
    y = fused(x)  # grad mode on, nothing requires grad: fine
    assert not y.requires_grad
    msg = r"inference only: wrap the call in torch.no_grad\(\) or torch.inference_mode\(\)"
    with pytest.raises(RuntimeError, match=msg):
        fused(x.clone().requires_grad_())
    with torch.no_grad():
        assert torch.equal(fused(x.clone().requires_grad_()), y)
    with torch.inference_mode():
        assert torch.equal(fused(x), y)
    fused.w_dw.requires_grad_()
    with pytest.raises(RuntimeError, match=msg):
        fused(x)
    with pytest.raises(RuntimeError, match=msg):  # the whole model: the stem sees the input first
        optimize(_small(), backend=backend).to(DEVICE)(torch.randn(1, 3, 32, 32, device=DEVICE, requires_grad=True))


# ---- 7. optimize() on an optimized model

def test_7_optimizing_twice_is_an_error():
    fast = optimize(_small())
    for backend in ("auto", "triton"):
        with pytest.raises(ValueError, match=r"already optimized: it holds fused modules \(features\.0 \(FusedStemBlock\)"):
            optimize(fast, backend=backend)
    with pytest.raises(ValueError, match="already optimized"):
        optimize(CUDAGraphRunner(fast))
    with pytest.raises(ValueError, match=r"already optimized.*FusedInvertedResidual"):
        optimize(torch.nn.Sequential(fuse_block(make_block(16, 16, 1, 6))))


# ---- 8. a batch of 0: the empty result, as torchvision gives, with no kernel launched

@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_8_empty_batch_gives_an_empty_result(backend, monkeypatch):
    def no_launch(device):
        raise AssertionError("a kernel was launched for an empty batch")

    monkeypatch.setattr(_common, "device_guard", no_launch)
    model = _small(k=7)
    x = torch.randn(0, 3, 32, 32, device=DEVICE)
    y = optimize(model, backend=backend).to(DEVICE)(x)
    assert y.shape == (0, 7) and y.shape == model.to(DEVICE)(x).shape
    block = fuse_block(make_block(16, 24, 2, 6), backend=backend).to(DEVICE)
    assert block(torch.randn(0, 16, 9, 9, device=DEVICE)).shape == (0, 24, 5, 5)
    with pytest.raises(ValueError, match="empty input"):
        optimize(model, backend=backend).to(DEVICE)(torch.randn(1, 3, 0, 32, device=DEVICE))


# ---- 9. a model with other kinds of blocks: which ones, and that they are not supported yet

def test_9_other_block_types_are_named():
    tv = pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match=r"no InvertedResidual blocks of the family .* it has 8 x "
                                         r"torchvision\.models\.resnet\.BasicBlock.*not supported yet"):
        optimize(tv.models.resnet18().eval())
    # MobileNetV3's blocks are of the family: those with squeeze-excite (or hardswish) are kept and
    # reported, an error with backend="triton" (tests/test_family_models.py).
    with pytest.raises(ValueError, match=r"features\.1: squeeze-excite: not fused yet"):
        optimize(tv.models.mobilenet_v3_small().eval(), backend="triton")
    with pytest.raises(ValueError, match="contains no InvertedResidual blocks: nothing to fuse"):
        optimize(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)).eval())


# ---- 10. the report says what runs: kernels or folded PyTorch, and dropout as nothing

def test_10_report_says_what_runs():
    model = _small()
    auto = optimize(model)  # weights on the CPU: folded PyTorch runs
    report = fusion_report(auto)
    fused = [e for e in report.entries if e.fused]
    # features.1 runs inside features.0's kernel (the stem fused with block 1): 19 fused parts.
    assert len(fused) == 19 and all(e.detail.startswith("folded PyTorch ops on cpu") for e in fused), fused
    assert "one Triton kernel on CUDA, folded PyTorch ops elsewhere" in auto.fusion_report.entries[0].detail
    dropout = [e for e in report.entries if e.name == "classifier.0"]
    assert dropout == [FusionEntry("classifier.0", "identity", False, "Dropout: nothing runs (the identity in eval mode)")]
    assert "19 of 19 parts fused" in str(report) and not report.not_fused
    assert all(e.detail.startswith("folded PyTorch ops:") for e in fusion_report(optimize(model, backend="torch")).fused)
    assert all(e.detail.startswith("one Triton kernel:") for e in fusion_report(optimize(model, backend="triton")).fused)
    assert "folded PyTorch ops on cpu" in repr(auto.features[2])


@pytest.mark.gpu
def test_10_report_after_cuda_says_kernels():
    fast = optimize(_small()).cuda()
    assert all(e.detail.startswith("one Triton kernel:") for e in fusion_report(fast).fused)


# ---- 11. cuda_graph=True without CUDA: refused by optimize(), not at the first forward

def test_11_cuda_graph_without_cuda_fails_in_optimize(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"cuda_graph=True needs CUDA"):
        optimize(_small(), cuda_graph=True)


# ---- 14. load_state_dict of unfused weights into a fused model: one line that says what to do

def test_14_unfused_state_dict_into_a_fused_model_says_load_before_optimize():
    tv = pytest.importorskip("torchvision")
    fast = optimize(_small())
    unfused = tv.models.mobilenet_v2(width_mult=0.35, num_classes=10).state_dict()
    with pytest.raises(RuntimeError, match=r"features\.0 is a fused FusedStem.*Load weights before optimize\(\)") as err:
        fast.load_state_dict(unfused)
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match="Load weights before optimize"):
        fast.load_state_dict(unfused, strict=False)  # would leave the fused weights as they were
    block = fuse_block(make_block(16, 16, 1, 6))
    with pytest.raises(RuntimeError, match=r"FusedInvertedResidual is a fused .*conv\.0\.0\.weight"):
        block.load_state_dict(make_block(16, 16, 1, 6).state_dict())
    other = optimize(_small())  # a fused model's own state_dict loads
    other.load_state_dict(fast.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(x), fast(x))


# ---- the command line (CPU: the interpreter path)

cpu_cli = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CLI without a GPU")


@cpu_cli
@pytest.mark.parametrize("argv", [["check", "--dtype", "bfloat16"], ["bench", "--dtype", "bfloat16"]])
def test_1_cli_refuses_bf16_without_a_gpu_and_says_why(argv):
    with pytest.raises(SystemExit, match="bfloat16 needs a GPU: .*Triton's interpreter, which computes bfloat16 wrongly"):
        cli.main(argv)


@cpu_cli
def test_1_cli_bf16_with_the_torch_backend_runs(capsys):
    assert cli.main(["check", "--dtype", "bfloat16", "--backend", "torch", "--width", "0.35", "--resolution", "32"]) == 0
    assert "20 of 20 parts agree" in capsys.readouterr().out


@cpu_cli
def test_5_unreadable_weights_files_get_one_clear_message(tmp_path):
    tv = pytest.importorskip("torchvision")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a weights file\n")
    (tmp_path / "words.pth").write_text("hello\n")
    torch.save(tv.models.mobilenet_v2(width_mult=0.35), tmp_path / "model.pth")  # a whole model, pickled
    expected = r"expected a state_dict: a dict of tensors saved with torch\.save\(model\.state_dict\(\), path\)"
    for name, what in [("empty", "is empty"), ("text", "is not a file torch.save wrote"),
                       ("words", "is not a file torch.save wrote"),
                       ("model", r"holds pickled Python objects.*a whole model saved with torch\.save\(model\)")]:
        with pytest.raises(SystemExit, match=f"{what}.*{expected}") as err:
            cli.main(["check", "--width", "0.35", "--weights", str(tmp_path / f"{name}.pth")])
        message = str(err.value)
        assert "\n" not in message and "\x1b[" not in message and "weights_only=False" not in message, message


@cpu_cli
@pytest.mark.parametrize("argv,message", [
    (["bench", "--width", "0"], "argument --width: must be positive"),
    (["bench", "--width", "-1"], "argument --width: must be positive"),
    (["check", "--width", "nan"], "argument --width: must be positive"),
    (["check", "--classes", "0"], "argument --classes: must be positive"),
    (["check", "--resolution", "0"], "argument --resolution: must be positive"),
    (["bench", "--reps", "0"], "argument --reps: must be positive"),
    (["bench", "--providers", "fused,fast"], r"argument --providers: unknown providers \['fast'\]"),
    (["tune", "--reps", "0"], "argument --reps: must be positive"),
])
def test_6_bad_arguments_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@cpu_cli
def test_6_unwritable_out_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--out", str(blocker / "results")])
    assert err.value.code == 2 and "is not a writable folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tune", "--out", str(tmp_path)])  # a folder where the table file goes
    assert "is a folder, not a file" in capsys.readouterr().err

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # the check passed, the folder still cannot be made
    assert cli.main(["bench", "--out", str(tmp_path / "new"), "--width", "0.35"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnv2-fast bench: error: [Errno 13] Permission denied") and err.count("\n") == 1, err


@cpu_cli
def test_6_value_errors_past_the_parser_are_one_line_with_exit_code_2(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("something about\nthe input")

    monkeypatch.setattr(cli, "build_model", broken)
    assert cli.main(["check", "--width", "0.35"]) == 2
    assert capsys.readouterr().err == "mnv2-fast check: error: something about the input\n"


@cpu_cli
def test_10_check_with_the_torch_backend_says_folded_pytorch(capsys):
    assert cli.main(["check", "--backend", "torch", "--width", "0.35", "--resolution", "32"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("backend torch, on CPU, folded PyTorch ops") and "interpreter" not in header, header
