"""The `mnv2-fast` command line on a machine without a GPU (the interpreter path)."""

import json
import pickle
import subprocess
import sys

import pytest
import torch

from helpers import DEVICE
from mnv2_fast.tools.cli import main

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path of the CLI; GPU runs go through bench/")


def test_check_passes_and_prints_a_table(capsys):
    assert main(["check", "--width", "0.5", "--resolution", "40"]) == 0
    out = capsys.readouterr()
    assert "features.17 block" in out.out and "whole model" in out.out and "FAIL" not in out.out
    assert "features.0 stem" in out.out and "features.1 " not in out.out  # block 1 runs in the stem's kernel
    assert "20 of 20 parts agree" in out.out
    assert "[20/20] whole model" in out.err  # progress


def test_bench_without_gpu_reports_numerics_and_says_timings_need_a_gpu(capsys, tmp_path):
    assert main(["bench", "--width", "0.5", "--resolution", "48", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "timings need a GPU" in out and "PASS" in out
    assert f"wrote {tmp_path / 'bench.json'}" in out  # where the result went (issue 13, item 14)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["gpu"] == "none" and result["numerics"]["error_over_tolerance"] <= 1 and result["model"] == []


def test_torchvision_weights_file_loads_and_classes_are_inferred(capsys, tmp_path):
    tv = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)
    path = tmp_path / "mnv2.pth"
    torch.save(tv.state_dict(), path)
    assert main(["check", "--width", "0.5", "--resolution", "32", "--weights", str(path)]) == 0
    assert "20 of 20 parts agree" in capsys.readouterr().out


def test_weights_for_another_architecture_name_the_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10).state_dict(), path)
    with pytest.raises(SystemExit, match=r"shape mismatches .*features\.0\.0\.weight: file \(16, 3, 3, 3\)"):
        main(["check", "--width", "1.0", "--weights", str(path)])
    state = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10).state_dict()
    state.pop("features.3.conv.1.1.running_var")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(SystemExit, match=r"(?s)missing keys \(1\): features\.3\.conv\.1\.1\.running_var.*"
                                         r"unexpected keys \(1\): extra\.weight"):
        main(["check", "--width", "0.5", "--weights", str(path)])


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.0.weight": _Payload()}, f)
    with pytest.raises(SystemExit, match="refused to unpickle"):
        main(["check", "--weights", str(path)])
    assert "arbitrary code ran" not in capsys.readouterr().out
    torch.save({"a": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(SystemExit, match="does not hold a state_dict"):
        main(["check", "--weights", str(tmp_path / "list.pth")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["check", "--weights", str(tmp_path / "missing.pth")])


def test_tune_needs_a_gpu():
    with pytest.raises(SystemExit, match="GPU"):
        main(["tune"])


def test_console_script_runs_in_a_fresh_process():
    """As a user runs it: the entry point turns the interpreter on by itself."""
    r = subprocess.run([sys.executable, "-c", "import sys; from mnv2_fast.tools.cli import main; sys.exit(main())",
                        "check", "--width", "0.35", "--resolution", "32"],
                       capture_output=True, text=True, env={k: v for k, v in __import__("os").environ.items()
                                                             if k != "TRITON_INTERPRET"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "20 of 20 parts agree" in r.stdout


def test_bad_arguments():
    with pytest.raises(SystemExit):
        main(["bench", "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_gpu_bench_table_and_plot_render(tmp_path):
    """The GPU path's table and plot, fed with records shaped like the ones it measures."""
    from mnv2_fast.tools.cli import _bench_table, _plot

    records = [dict(provider=p, dtype="float16", batch=b, ms=ms * b, images_per_s=1e3 / ms, peak_mem_mb=10.0 * b,
                    first_call_s=1.0)
               for b in (1, 256) for p, ms in (("fused", 0.01), ("fused_graph", 0.008), ("eager_cl", 0.05),
                                               ("compile", 0.03))]
    text = _bench_table(records, ["fused", "fused_graph", "eager_cl", "compile"])
    assert "eager_cl" in text and "6.25x" in text  # 0.05 / 0.008: against the faster fused variant
    _plot(records, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_check_and_bench_take_a_model_of_the_family_by_name(capsys, tmp_path):
    # torchvision's MNASNet (no timm needed): its stem, separable pair, 16 blocks, head, classifier.
    assert main(["check", "--model", "mnasnet0_5", "--resolution", "24"]) == 0
    out = capsys.readouterr().out
    # (its stem pair, layers.3-7, runs in the stem's kernel: checked with layers.0)
    assert "mnv2-fast check: mnasnet0_5, 24px" in out and "layers.8.0 block" in out and "FAIL" not in out
    assert "layers.0 stem" in out and "layers.3 " not in out and "20 of 20 parts agree" in out
    assert main(["bench", "--model", "mnasnet0_5", "--resolution", "24", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["network"] == "mnasnet0_5" and result["numerics"]["error_over_tolerance"] <= 1
    with pytest.raises(SystemExit):
        main(["check", "--model", "resnet50"])
    assert "unknown model 'resnet50'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="has none"):
        main(["check", "--model", "mnasnet0_5", "--width", "0.5"])
