"""`mnv2-fast infer` and its pieces on the CPU: preprocessing against torchvision's transforms,
decoding (grayscale, alpha, 16-bit, corrupt, truncated, missing), the Predictor against
optimize(model) run directly, and the whole command on a local Ray cluster with 2 CPUs."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DEVICE
from mnv2_fast import mobilenet_v2, optimize
from mnv2_fast.tools.testing import MODEL_TOLERANCE_FACTOR, TOLERANCES, error_ratio, randomize_bn

pa = pytest.importorskip("pyarrow", reason="the extra mnv2-fast[ray] (pyarrow comes with ray[data])")
Image = pytest.importorskip("PIL.Image", reason="the extra mnv2-fast[ray] (pillow)")
tv = pytest.importorskip("torchvision.transforms.v2", reason="torchvision: the independent preprocessing reference")

from mnv2_fast.tools.infer import InferOptions, ModelSpec, Predictor, Preprocess, decode_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FP32 = torch.float32
# Small and fast: width 0.35, 10 classes, 32 px (the shorter side resized to 36, then cropped).
SPEC = ModelSpec("mobilenet_v2", None, 0.35, 10, seed=3)
PREP = Preprocess(resolution=32, crop=0.875)


def reference_inputs(images: list[np.ndarray], prep: Preprocess = PREP) -> torch.Tensor:
    """torchvision's evaluation transform, image by image, on RGB uint8 arrays."""
    t = tv.Compose([tv.ToDtype(torch.float32, scale=False), tv.Resize(prep.resize, antialias=True),
                    tv.CenterCrop(prep.resolution), tv.Normalize([255 * m for m in prep.mean],
                                                                 [255 * s for s in prep.std])])
    return torch.stack([t(torch.from_numpy(np.array(a)).permute(2, 0, 1)) for a in images])


@torch.no_grad()
def direct(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """optimize(model) run directly: (logits, pooled features)."""
    fast = optimize(model)
    kept = {}
    fast.classifier.register_forward_pre_hook(lambda m, a: kept.setdefault("f", a[0]))
    logits = fast(x)
    return logits, kept["f"]


def rgb(a: np.ndarray) -> np.ndarray:
    """The RGB image of a uint8 array (H x W, or H x W x C with C = 1, 3, 4): gray repeated,
    alpha dropped, as decoding a PNG of it gives and as the Predictor reads it."""
    a = a[:, :, None] if a.ndim == 2 else a
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[:, :, :3]


def png(a: np.ndarray) -> bytes:
    return _encode(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a, "PNG")


# ---------------------------------------------------------------- pieces (no cluster)

@pytest.mark.parametrize("hw", [(40, 40), (36, 48), (61, 23), (20, 30), (32, 32)])
def test_preprocess_matches_torchvision(hw):
    """Resize (antialiased, shorter side), center crop and normalise: torchvision's numbers
    (up- and down-scaling, odd sizes, no resize at all)."""
    img = np.random.default_rng(hw[0] * hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = torch.from_numpy(img)[None].permute(0, 3, 1, 2).float()
    ours = PREP.normalize(PREP.resize_crop(x).clone())
    assert ours.shape == (1, 3, 32, 32)
    assert error_ratio(ours, reference_inputs([img]), FP32) <= 1


def _encode(a: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, fmt)
    return buf.getvalue()


def test_decode_batch_every_kind_of_file(tmp_path):
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    rgba = rng.integers(0, 256, (4, 8, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 3), dtype=np.uint16)
    jpeg = _encode(color, "JPEG")
    items = [_encode(color, "PNG"), _encode(gray, "PNG"), _encode(rgba, "PNG"), _encode(deep, "PNG"),
             jpeg, b"not an image", jpeg[: len(jpeg) // 2], b""]
    ids = np.arange(len(items))
    out = decode_batch({"id": ids, "image": np.array(items, dtype=object)}, column="image", kind="bytes")
    assert list(out) == ["id", "image", "error"] and (out["id"] == ids).all()
    images, errors = out["image"], out["error"]
    assert (images[0] == color).all() and errors[0] == ""
    assert (images[1] == rgb(gray)).all()
    assert (images[2] == rgba[:, :, :3]).all()
    assert (images[3] == rgb((deep >> 8).astype(np.uint8))).all()  # the high byte, not clipped to 255
    assert (images[4] == np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))).all()  # lossy: PIL's pixels
    assert errors[5] == "UnidentifiedImageError: not an image format PIL can read"
    assert errors[6].startswith("OSError") and "truncated" in errors[6].lower()
    assert errors[7].startswith("UnidentifiedImageError")
    assert all(images[i].shape == (0, 0, 3) for i in (5, 6, 7))
    # Paths: a missing file is an error row too; the path column passes through.
    (tmp_path / "a.png").write_bytes(items[1])
    paths = np.array([str(tmp_path / "a.png"), str(tmp_path / "missing.png")], dtype=object)
    out = decode_batch({"path": paths}, column="path", kind="path")
    assert (out["path"] == paths).all() and (out["image"][0] == rgb(gray)).all()
    assert out["error"][0] == "" and out["error"][1].startswith("FileNotFoundError")
    # Struct rows, as Hugging Face datasets store images; resizing in the decode task rounds to uint8.
    out = decode_batch({"img": np.array([{"bytes": items[0], "path": "x"}], dtype=object)}, column="img",
                       kind="struct", resize=Preprocess(resolution=4, crop=1.0))
    want = PREP.__class__(4, 1.0).resize_crop(torch.from_numpy(color)[None].permute(0, 3, 1, 2).float())
    assert out["image"][0].shape == (4, 4, 3)
    assert (out["image"][0] == want[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).all()


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(40, 40, 3), (36, 48, 3), (40, 40), (36, 48, 4), (50, 33, 1)]
    return [rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8) for i in range(n)]


def test_predictor_matches_optimize_and_pads_to_the_fixed_batch():
    """Mixed sizes and channel counts, two rows with errors, 13 rows in batches of 8: every
    model call sees exactly 8 rows, the outputs equal optimize(model) on torchvision's
    preprocessing, and the error rows are null."""
    model = SPEC.build()
    p = Predictor(model, InferOptions(batch_size=8, prep=PREP, outputs=("topk", "logits", "features"), top_k=3,
                                      fixed_batch=True), device="cpu")
    seen = []
    p.net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    images = _images(13)
    errors = [""] * 13
    errors[4] = "OSError: decode failed"
    images[9] = np.zeros((0, 0, 3), np.uint8)  # what the decode stage leaves for a failed row
    obj = np.empty(13, dtype=object)
    obj[:] = images
    out = p({"path": np.array([f"{i}.png" for i in range(13)], dtype=object), "image": obj,
             "error": np.array(errors, dtype=object)})
    assert out.num_rows == 13 and out.column_names == ["path", "error", "topk_ids", "topk_probs", "logits", "features"]
    assert seen == [8, 8] and p.stats == {"batches": 2, "rows": 13, "padded_rows": 5, "errors": 2}
    rows = out.to_pylist()
    assert rows[4]["error"] == "OSError: decode failed" and rows[4]["logits"] is None
    assert rows[9]["error"].startswith("image array of shape (0, 0, 3)") and rows[9]["topk_ids"] is None
    ok = [i for i in range(13) if i not in (4, 9)]
    assert all(rows[i]["error"] is None for i in ok)
    logits, features = direct(model, reference_inputs([rgb(images[i]) for i in ok]))
    got = torch.tensor([rows[i]["logits"] for i in ok])
    assert error_ratio(got, logits, FP32, MODEL_TOLERANCE_FACTOR) <= 1
    assert error_ratio(torch.tensor([rows[i]["features"] for i in ok]), features, FP32, MODEL_TOLERANCE_FACTOR) <= 1
    probs, ids = torch.softmax(got, 1).topk(3, 1)
    assert torch.equal(torch.tensor([rows[i]["topk_ids"] for i in ok]), ids.int())
    assert torch.allclose(torch.tensor([rows[i]["topk_probs"] for i in ok]), probs, atol=1e-6)
    # A pyarrow Table in (Ray's batch_format="pyarrow" path), no rows in: the same columns, empty.
    empty = p(pa.table({"path": pa.array([], pa.string()), "image": pa.array([], pa.binary())}))
    assert empty.num_rows == 0 and empty.column_names == out.column_names


def test_model_spec_builds_torchvision_and_refuses_what_does_not_fit(tmp_path):
    """torchvision.NAME with a state_dict (classes read from it), and the errors a user gets."""
    import torchvision

    tv_model = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=7)
    torch.save(tv_model.state_dict(), tmp_path / "tv.pth")
    built = ModelSpec("torchvision.mobilenet_v2", str(tmp_path / "tv.pth"), width=0.5).build()
    assert type(built) is type(tv_model) and not built.training
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), tv_model.state_dict().values()))
    with pytest.raises(SystemExit, match="does not fit the model torchvision.mobilenet_v2"):
        ModelSpec("torchvision.mobilenet_v2", str(tmp_path / "tv.pth")).build()  # width 1.0
    with pytest.raises(SystemExit, match="expected mobilenet_v2, torchvision.NAME"):
        ModelSpec("resnet").build()
    with pytest.raises(SystemExit, match="model torchvision.no_such_net: ValueError"):
        ModelSpec("torchvision.no_such_net").build()
    with pytest.raises(SystemExit, match="model no_such_module:build: ModuleNotFoundError"):
        ModelSpec("no_such_module:build").build()


def test_workers_that_a_cluster_cannot_hold_are_named():
    from mnv2_fast.tools.infer import shortfall

    assert shortfall(1, 0, 1, gpus=0, cpus=2) is None  # one CPU worker, one CPU decoding
    assert shortfall(2, 0, 1, gpus=0, cpus=2) == ("2 model worker(s) and the decoding need 0 GPUs and 3 CPUs; "
                                                  "the cluster has 0 and 2")
    assert shortfall(4, 0.5, 1, gpus=2, cpus=16) is None
    assert "need 2 GPUs" in shortfall(2, 1, 1, gpus=1, cpus=16)


def test_predictor_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="outputs must be"):
        InferOptions(outputs=("logits", "probabilities"))
    with pytest.raises(ValueError, match="crop must be in"):
        Preprocess(crop=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no GPU"):
            Predictor(SPEC.build(), device="cuda")


# ---------------------------------------------------------------- the command on a local cluster

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the extra mnv2-fast[ray]")


@needs_ray
def test_ray_tensor_columns_of_one_size_and_of_many_give_the_same_rows():
    """What Ray hands the Predictor: a fixed-shape tensor column (one [N, H, W, C] array, no
    per-row copies) or a variable-shaped one (rows grouped by size, put back in order)."""
    from ray.data.extensions import ArrowTensorArray, ArrowVariableShapedTensorArray

    model = SPEC.build()
    p = Predictor(model, InferOptions(batch_size=4, prep=PREP, outputs=("logits",)), device="cpu")
    same = np.stack(_images(6, seed=1)[:1] * 6)  # 40 x 40 x 3, six times
    same = same + np.arange(6, dtype=np.uint8)[:, None, None, None]
    fixed = p(pa.table({"k": pa.array(range(6)), "image": ArrowTensorArray.from_numpy(same)}))
    mixed_images = [rgb(a) for a in _images(6, seed=2)]  # Ray wants one ndim per column
    obj = np.empty(6, dtype=object)
    obj[:] = mixed_images
    mixed = p(pa.table({"k": pa.array(range(6)), "image": ArrowVariableShapedTensorArray.from_numpy(obj)}))
    for table, images in ((fixed, list(same)), (mixed, mixed_images)):
        assert table.column("k").to_pylist() == list(range(6)) and table.column("error").null_count == 6
        logits, _ = direct(model, reference_inputs([rgb(a) for a in images]))
        assert error_ratio(torch.tensor(table.column("logits").to_pylist()), logits, FP32, MODEL_TOLERANCE_FACTOR) <= 1


def write_image_set(root: Path, n: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """n small images (JPEG and PNG; grayscale and RGBA among them; two sizes) in three
    folders, plus a corrupt file, a truncated JPEG and a broken link.  Returns the readable
    ones as decoded by PIL (path -> RGB array) and the bad paths."""
    rng = np.random.default_rng(7)
    good = {}
    for i in range(n):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (36, 48, 3) if i % 2 else (40, 40, 3), dtype=np.uint8)
        if i % 7 == 0:
            path, img = folder / f"{i}.png", Image.fromarray(a[:, :, 0], "L")
        elif i % 11 == 0:
            path, img = folder / f"{i}.png", Image.fromarray(np.dstack([a, a[:, :, :1]]), "RGBA")
        else:
            path, img = folder / f"{i}.JPG", Image.fromarray(a)
        img.save(path, quality=90) if path.suffix == ".JPG" else img.save(path)
        with Image.open(path) as im:
            good[str(path)] = np.asarray(im.convert("RGB"))
    (root / "notes.txt").write_text("not an image, and not listed")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    jpeg = next(p for p in good if p.endswith(".JPG"))
    data = Path(jpeg).read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "gone.png").symlink_to(root / "does-not-exist.png")
    return good, [str(root / n) for n in ("corrupt.jpg", "gone.png", "truncated.jpg")]


def _ray_processes(tag: str) -> list[str]:
    """Command lines of live processes that mention tag (the cluster's temp folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if tag in cmd:
                found.append(f"{pid}: {cmd[:120]}")
    return found


def run_infer(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`mnv2-fast infer ARGS` as a user runs it, on its own local cluster (2 CPUs) in a fresh
    temp folder; afterwards no process of that cluster may be left."""
    tmp = tempfile.mkdtemp(prefix="mnv2ray")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = tmp
    try:
        r = subprocess.run([sys.executable, "-m", "mnv2_fast.tools.cli", "infer", "--cpus", "2", *args], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=timeout)
        deadline = time.time() + 20
        while _ray_processes(tmp) and time.time() < deadline:
            time.sleep(0.5)
        left = _ray_processes(tmp)
        assert not left, "the cluster did not stop:\n" + "\n".join(left)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def read_output(folder: Path) -> dict[str, dict]:
    import pyarrow.dataset as pads

    return {row["path"]: row for row in pads.dataset(str(folder), format="parquet").to_table().to_pylist()}


@needs_ray
@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU pipeline; the GPU one is measured in test_infer_gpu.py")
def test_infer_an_image_folder_on_a_local_cluster(tmp_path):
    """A few hundred files on a 2-CPU local cluster: one row per file, predictions equal to
    optimize(model) run directly, the bad files reported, the cluster gone afterwards."""
    good, bad = write_image_set(tmp_path / "images", 300)
    out = tmp_path / "predictions"
    r = run_infer(["--input", str(tmp_path / "images"), "--output", str(out), "--width", "0.35", "--classes", "10",
                   "--seed", "3", "--resolution", "32", "--batch", "32", "--outputs", "topk,logits,features",
                   "--top-k", "3"])
    rows = read_output(out)
    assert sorted(rows) == sorted([*good, *bad])  # every file once; notes.txt is not an image
    for path in bad:
        assert rows[path]["error"] and rows[path]["logits"] is None
    assert "corrupt.jpg: OSError" in r.stderr and "gone.png: FileNotFoundError" in r.stderr
    assert "truncated.jpg: OSError: image file is truncated" in r.stderr
    assert "303 rows, 3 errors" in r.stdout and "images/s on 1 CPU worker(s)" in r.stdout
    assert "folded PyTorch" in r.stdout and "19 of 19 parts fused" in r.stdout
    paths = sorted(good)
    logits, features = direct(SPEC.build(), reference_inputs([good[p] for p in paths]))
    assert all(rows[p]["error"] is None for p in paths)
    got = torch.tensor([rows[p]["logits"] for p in paths])
    assert error_ratio(got, logits, FP32, MODEL_TOLERANCE_FACTOR) <= 1
    assert error_ratio(torch.tensor([rows[p]["features"] for p in paths]), features, FP32,
                       MODEL_TOLERANCE_FACTOR) <= 1
    assert torch.equal(torch.tensor([rows[p]["topk_ids"] for p in paths]), logits.topk(3, 1).indices.int())


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    from mnv2_fast.tools.cli import main
    from mnv2_fast.tools.infer import _prepare_output

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(_images(1)[0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-0.parquet").write_bytes(b"old")
    with pytest.raises(SystemExit, match="is not empty"):
        main(["infer", "--input", str(tmp_path / "images"), "--output", str(out)])
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="other files than Parquet"):
        _prepare_output(out, overwrite=True)
    (out / "keep.txt").unlink()
    _prepare_output(out, overwrite=True)
    assert not out.exists()
    with pytest.raises(SystemExit, match="holds no images"):
        main(["infer", "--input", str(out.parent / "images" / "a.png"), "--output", str(out)])


@needs_ray
@pytest.mark.skipif(DEVICE.type != "cpu", reason="the interpreter runs on the CPU")
def test_infer_parquet_through_the_interpreter(tmp_path):
    """Parquet of encoded images (one corrupt, an id column kept), the Triton kernels through
    Triton's interpreter inside the Ray workers: the same numbers as optimize(model) directly."""
    import pyarrow.parquet as pq

    images = _images(6, seed=5)
    encoded = [png(a) for a in images]
    encoded[2] = b"garbage"
    pq.write_table(pa.table({"id": pa.array(range(100, 106)), "image": pa.array(encoded, pa.binary())}),
                   tmp_path / "in.parquet")
    out = tmp_path / "out"
    r = run_infer(["--input", str(tmp_path / "in.parquet"), "--output", str(out), "--width", "0.35", "--classes",
                   "10", "--seed", "3", "--resolution", "32", "--batch", "8", "--outputs", "logits", "--interpreter"])
    assert "Triton's interpreter" in r.stdout and "6 rows, 1 errors" in r.stdout
    import pyarrow.dataset as pads

    rows = {row["id"]: row for row in pads.dataset(str(out), format="parquet").to_table().to_pylist()}
    assert sorted(rows) == list(range(100, 106)) and set(rows[100]) == {"id", "error", "logits"}
    assert rows[102]["error"].startswith("UnidentifiedImageError") and rows[102]["logits"] is None
    ok = [i for i in range(6) if i != 2]
    logits, _ = direct(SPEC.build(), reference_inputs([rgb(images[i]) for i in ok]))
    got = torch.tensor([rows[100 + i]["logits"] for i in ok])
    assert error_ratio(got, logits, FP32, MODEL_TOLERANCE_FACTOR) <= 1


def test_infer_without_ray_names_the_extra():
    """`import mnv2_fast` and the CLI never import Ray; `infer` without it says what to install."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "import mnv2_fast, mnv2_fast.tools.cli as cli\n"
            "assert not {'ray', 'pyarrow', 'PIL'} & set(k for k in sys.modules if sys.modules[k]), 'imported'\n"
            "try:\n    cli.main(['infer', '--input', '.', '--output', 'x'])\n"
            "except SystemExit as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install 'mnv2-fast[ray]'" in r.stdout
