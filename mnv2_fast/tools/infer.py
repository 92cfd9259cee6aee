"""`mnv2-fast infer`: classify or embed an image set on Ray Data, one fused model per worker.

    ray.data rows (paths or encoded bytes)
      -> decode            CPU tasks: bytes -> RGB uint8 arrays; a bad file becomes a row with an error
      -> Predictor         one actor per GPU (or CPU worker): optimize(model) built once, a fixed
                           batch (the last one padded) so one CUDA graph serves every call; resize,
                           crop, normalise and layout on the device; logits / top-k / features out
      -> Parquet           one row per input row, in any order, with the input's own columns

`Predictor` also works on its own, in any ``ds.map_batches(Predictor, ...)`` over uint8 image
arrays (``ray.data.read_images`` gives those); `predict_dataset` adds the decode stage and the
Ray arguments that make the batches full.  Ray (the optional extra ``mnv2-fast[ray]``) is
imported only inside the functions that need it: the rest of the package never needs it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["IMAGE_EXTENSIONS", "InferOptions", "ModelSpec", "Preprocess", "Predictor", "decode_batch",
           "predict_dataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
OUTPUTS = ("topk", "logits", "features")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def require_ray():
    """Ray Data, or an error that names the extra which brings it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise SystemExit("error: `mnv2-fast infer` runs on Ray Data, an optional extra: "
                         f"pip install 'mnv2-fast[ray]' ({err})") from None
    return ray


# ---------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class Preprocess:
    """torchvision's evaluation transform: Resize(floor(resolution / crop)) on the shorter side
    (bilinear, antialiased), CenterCrop(resolution), scale to [0, 1], Normalize(mean, std)."""

    resolution: int = 224
    crop: float = 0.875  # the fraction of the resized shorter side kept by the center crop
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"crop must be in (0, 1], got {self.crop}")

    @property
    def resize(self) -> int:
        """The shorter side after the resize (256 for 224 at crop 0.875)."""
        return max(self.resolution, math.floor(self.resolution / self.crop))

    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size after the resize, as torchvision rounds it (the longer side truncated)."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)

    def resize_crop(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] float pixel values (0..255) -> [N, 3, resolution, resolution]."""
        h, w = x.shape[-2:]
        nh, nw = self.resized_hw(h, w)
        if (nh, nw) != (h, w):
            x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                                                antialias=True)
        r = self.resolution
        top, left = int(round((nh - r) / 2.0)), int(round((nw - r) / 2.0))
        return x[..., top:top + r, left:left + r]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] pixel values (0..255, float32) -> normalised, in place.  Scalars per
        channel: no host-to-device copy of mean and std, which would wait for the GPU."""
        x.div_(255.0)
        for c, (m, s) in enumerate(zip(self.mean, self.std)):
            x[:, c].sub_(m).div_(s)
        return x


def _as_rgb(t: torch.Tensor) -> torch.Tensor:
    """[N, H, W] or [N, H, W, C] uint8 (C = 1, 3 or 4) -> [N, 3, H, W] float32: gray repeated, alpha dropped."""
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, -1, 3)
    return t[..., :3].permute(0, 3, 1, 2).float()


def _bad_shape(a) -> str | None:
    """Why a value cannot be an image array (None when it can)."""
    if not isinstance(a, np.ndarray):
        return f"not an image array: {type(a).__name__}"
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or min(a.shape[:2], default=0) < 1:
        return f"image array of shape {a.shape}: expected H x W or H x W x C with C in 1, 3, 4"
    return None


# ---------------------------------------------------------------- decoding (CPU tasks)

def decode_image(data: bytes, draft: int | None = None) -> np.ndarray:
    """Encoded bytes -> H x W x 3 uint8 RGB.  draft: let JPEG decode at 1/2, 1/4 or 1/8 size
    (DCT scaling) while both sides stay >= draft: faster, but not the full decode's pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if draft and im.format == "JPEG":
            im.draft("RGB", (draft, draft))
        im.load()  # decode now: a truncated or corrupt file fails here, inside the caller's try
        if im.mode.startswith("I;16"):  # 16-bit gray: keep the high byte (PIL would clip to 255)
            gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.array(im.convert("RGB"))  # writable (np.asarray would be a read-only view)


def _read(item, kind: str) -> bytes:
    if kind == "path":
        with open(item, "rb") as f:
            return f.read()
    if kind == "struct":  # {"bytes": ..., "path": ...}, as Hugging Face datasets export images
        item = item["bytes"]
    if not isinstance(item, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected encoded image bytes, got {type(item).__name__}")
    return bytes(item)


def _describe(err: Exception) -> str:
    if type(err).__name__ == "UnidentifiedImageError":  # PIL's text names the in-memory buffer, not the file
        return "UnidentifiedImageError: not an image format PIL can read"
    return f"{type(err).__name__}: {err}"


def decode_batch(batch: dict, *, column: str, kind: str, draft: int | None = None,
                 resize: Preprocess | None = None) -> dict:
    """Ray Data map_batches function (numpy format): ``column`` holds paths (kind "path") or
    encoded bytes ("bytes", or a struct with a bytes field: "struct").  Adds ``image`` (uint8
    H x W x 3 arrays; 0 x 0 x 3 where decoding failed) and ``error`` ("" or what went wrong);
    every other column passes through, the bytes column excepted.  With ``resize``, the images
    leave already resized and cropped (rounded to uint8): for mixed-size photos, where resizing
    them one by one on the GPU would cost more than here, spread over the CPU workers."""
    items = batch[column]
    n = len(items)
    images = np.empty(n, dtype=object)
    errors = np.empty(n, dtype=object)
    for i, item in enumerate(items):
        try:
            img = decode_image(_read(item, kind), draft)
            if resize is not None:
                x = resize.resize_crop(_as_rgb(torch.from_numpy(img)[None]))
                img = x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            images[i], errors[i] = img, ""
        except Exception as err:  # noqa: BLE001 - any failure of one file is that row's error, not the job's
            images[i], errors[i] = np.zeros((0, 0, 3), np.uint8), _describe(err)
    out = {k: v for k, v in batch.items() if not (k == column and kind != "path")}
    out["image"], out["error"] = images, errors
    return out


# ---------------------------------------------------------------- the model

@dataclass(frozen=True)
class ModelSpec:
    """A model each worker builds for itself: a constructor and a state_dict file (on storage
    every node sees), so no weights travel with the workers' arguments.

    name: "mobilenet_v2" (mnv2_fast's reference model), "torchvision.NAME", "timm.NAME" or
    "module:callable"; weights: a state_dict file read with weights_only=True (None: random
    weights with trained-looking BatchNorm statistics, the same in every worker for one seed).
    classes defaults to the weights' classifier; width is mobilenet_v2's width multiplier."""

    name: str = "mobilenet_v2"
    weights: str | None = None
    width: float = 1.0
    classes: int | None = None
    seed: int = 0

    def build(self) -> nn.Module:
        """The model in eval mode, on the CPU; SystemExit with the reason when it cannot be built."""
        from .cli import build_model as build_mobilenet_v2
        from .cli import load_state_dict, load_weights, state_classes

        weights = Path(self.weights) if self.weights else None
        if self.name == "mobilenet_v2":
            return build_mobilenet_v2(self.width, self.classes, weights, self.seed)
        state = load_state_dict(weights) if weights else None
        kwargs = {}
        classes = self.classes if self.classes is not None else state_classes(state)
        if classes is not None:
            kwargs["num_classes"] = classes
        if self.width != 1.0:
            kwargs["width_mult"] = self.width
        torch.manual_seed(self.seed)
        model = self._construct(kwargs)
        if state is None:
            from .testing import randomize_bn

            randomize_bn(model, torch.Generator().manual_seed(self.seed))
        return load_weights(model, state, weights, self.name)

    def _construct(self, kwargs: dict) -> nn.Module:
        source, dot, name = self.name.partition(".")
        try:
            if source == "torchvision" and dot:
                import torchvision

                model = torchvision.models.get_model(name, weights=None, **kwargs)
            elif source == "timm" and dot:
                import timm

                model = timm.create_model(name, pretrained=False, **kwargs)
            elif ":" in self.name:
                import importlib

                module, _, fn = self.name.partition(":")
                model = getattr(importlib.import_module(module), fn)(**kwargs)
            else:
                raise SystemExit(f"error: model {self.name!r}: expected mobilenet_v2, torchvision.NAME, timm.NAME "
                                 "or module:callable")
        except (ImportError, AttributeError, ValueError, TypeError) as err:
            raise SystemExit(f"error: model {self.name}: {type(err).__name__}: {err}") from None
        if not isinstance(model, nn.Module):
            raise SystemExit(f"error: model {self.name} built a {type(model).__name__}, not a torch module")
        return model


# ---------------------------------------------------------------- the predictor (one per actor)

@dataclass(frozen=True)
class InferOptions:
    """What every Predictor computes, and how."""

    batch_size: int = 256
    prep: Preprocess = field(default_factory=Preprocess)
    outputs: tuple[str, ...] = ("topk",)  # any of OUTPUTS
    top_k: int = 5
    dtype: str | None = None  # float16 on a GPU, float32 on the CPU
    interpreter: bool = False  # CPU: the Triton kernels through Triton's interpreter, not folded PyTorch
    cuda_graph: bool = True  # on a GPU: one CUDA graph for the fixed batch
    fixed_batch: bool | None = None  # pad every call to batch_size (default: when a CUDA graph is used)
    timing: bool = False  # add ``done_s``: the wall-clock time each row's batch finished

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        bad = set(self.outputs) - set(OUTPUTS)
        if bad or not self.outputs:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {self.outputs}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be positive, got {self.top_k}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def find_classifier(model: nn.Module) -> nn.Module | None:
    """The module whose input is the pooled feature vector (torchvision's `classifier` or
    `fc`, timm's get_classifier())."""
    get = getattr(model, "get_classifier", None)
    if callable(get) and isinstance(get(), nn.Module):
        return get()
    for name in ("classifier", "fc", "head"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _interpreter_on() -> None:
    """Triton's interpreter for this process's kernels.  Triton fixes compiled-or-interpreted as
    it is imported, so it must not be imported yet (a fresh Ray worker has not imported it)."""
    from .interpreter import use_interpreter

    if os.environ.get("TRITON_INTERPRET") != "1" and "triton" in sys.modules:
        raise RuntimeError("interpreter=True, but triton was imported in this process without TRITON_INTERPRET=1: "
                           "set TRITON_INTERPRET=1 before importing torchvision or triton")
    use_interpreter()


class _WithFeatures(nn.Module):
    """[pooled features | logits] as one tensor, so that one CUDA graph holds both."""

    def __init__(self, model: nn.Module, classifier: nn.Module):
        super().__init__()
        self.model = model
        self._features = None
        classifier.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self._features = args[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return torch.cat([self._features.flatten(1).to(logits.dtype), logits], 1)


class Predictor:
    """A callable class for ``ray.data.Dataset.map_batches``: builds ``optimize(model)`` once
    per actor, then maps batches of images to logits, top-k and pooled features.

        ds.map_batches(Predictor, fn_constructor_kwargs={"model": model}, batch_size=256,
                       batch_format="pyarrow", num_gpus=1, compute=ray.data.ActorPoolStrategy(size=4))

    model:   a ModelSpec (built here), or an eval-mode module optimize() accepts (copied, not
             modified), or a Ray ObjectRef to one
    options: InferOptions (batch size, preprocessing, outputs, dtype, ...)
    device:  "auto" (the GPU Ray gave this actor, else the CPU), "cuda" or "cpu"
    image_column: uint8 arrays, H x W x C (C = 1, 3 or 4) or H x W; any size (resized here)

    A batch is a pyarrow Table or a dict of numpy arrays; the result is a pyarrow Table with the
    input's columns (the image column dropped), ``error`` (null, or why the row has no
    prediction: an ``error`` column from the decode stage carries through) and the outputs:
    ``topk_ids`` (int32) and ``topk_probs`` (softmax, float32), ``logits``, ``features``, each
    a fixed-size list (null where the row has an error).  Rows keep their order and count.
    """

    def __init__(self, model: nn.Module, options: InferOptions | None = None, device: str = "auto",
                 image_column: str = "image"):
        from ..optimize import optimize

        self.options = o = options or InferOptions()
        self.image_column = image_column
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but this worker sees no GPU (give it num_gpus)")
        self.device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        on_gpu = self.device.type == "cuda"
        self.dtype = DTYPES[o.dtype or ("float16" if on_gpu else "float32")]
        backend = "auto"
        if o.interpreter and not on_gpu:
            if self.dtype == torch.bfloat16:
                raise ValueError("bfloat16 is computed wrongly by Triton's interpreter: use float32 or float16")
            _interpreter_on()  # before the model is built: torchvision imports triton
            backend = "triton"
        if isinstance(model, ModelSpec):
            model = model.build()
        elif type(model).__name__ == "ObjectRef":  # from predict_dataset: fetched once per actor
            import ray

            model = ray.get(model)
        fast = optimize(model, backend=backend)
        report = fast.fusion_report
        self.parts = (len(report.fused), len(report.fused) + len(report.not_fused))  # identity parts left out
        net: nn.Module = fast
        self.with_features = "features" in o.outputs
        if self.with_features:
            classifier = find_classifier(fast)
            if classifier is None:
                raise ValueError(f"{type(model).__name__} has no classifier / fc / get_classifier(): "
                                 "cannot find the pooled features")
            net = _WithFeatures(fast, classifier)
        net = net.to(self.device, self.dtype)
        self.graphed = on_gpu and o.cuda_graph
        if self.graphed:
            from ..graphs import CUDAGraphRunner

            net = CUDAGraphRunner(net)
        self.net = net.eval()
        self.fixed = o.fixed_batch if o.fixed_batch is not None else self.graphed
        r = o.prep.resolution
        self._x = torch.zeros(o.batch_size, 3, r, r, dtype=self.dtype, device=self.device).contiguous(
            memory_format=torch.channels_last)
        self.stats = {"batches": 0, "rows": 0, "padded_rows": 0, "errors": 0}
        self._pinned = None  # the staging buffer of the uploads (GPU)
        # One forward now: on a GPU it compiles and captures the graph before the first batch
        # arrives; everywhere it gives the output widths (an empty batch still has its columns).
        out = self._forward(1)
        inner = net.module if self.graphed else net
        self.feature_dim = inner._features.flatten(1).shape[1] if self.with_features else 0
        self.classes = int(out.shape[1]) - self.feature_dim

    def _forward(self, m: int) -> torch.Tensor:
        """The model on the first m rows of the input buffer (all of it when the batch is fixed)."""
        with torch.no_grad():
            return self.net(self._x if self.fixed else self._x[:m])[:m]

    def _upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8 arrays -> tensors on the device; on a GPU through one pinned staging buffer
        (the previous batch's copies are done: its outputs came back to the host since)."""
        if self.device.type != "cuda":
            return [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
        total = sum(a.nbytes for a in arrays)
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        out, at = [], 0
        for a in arrays:
            staging = self._pinned[at:at + a.nbytes].view(a.shape)
            staging.numpy()[...] = a
            out.append(staging.to(self.device, non_blocking=True))
            at += a.nbytes
        return out

    def _load(self, images) -> np.ndarray:
        """Upload, resize, crop and normalise images (an [N, H, W(, C)] array, or a list of
        arrays of any sizes) into the first rows of the input buffer, one resize per distinct
        size.  Returns the input row each buffer row holds (rows grouped by size)."""
        if isinstance(images, np.ndarray):  # one size (Ray's fixed-shape tensor column)
            order, groups = np.arange(len(images)), [images]
        else:
            by_shape: dict[tuple, list[int]] = {}
            for i, a in enumerate(images):
                by_shape.setdefault(a.shape, []).append(i)
            order = np.concatenate([np.array(idx) for idx in by_shape.values()])
            groups = [np.stack([images[i] for i in idx]) for idx in by_shape.values()]
        prep = self.options.prep
        parts = [prep.resize_crop(_as_rgb(t)) for t in self._upload(groups)]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        self._x[:len(order)].copy_(prep.normalize(x))
        return order

    def predict(self, images) -> dict[str, np.ndarray]:
        """Valid uint8 images (an [N, H, W(, C)] array or a list of arrays) -> {output column:
        array with one row per image}."""
        o = self.options
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), o.batch_size):
            part = images[start:start + o.batch_size]
            m = len(part)
            back = np.argsort(self._load(part))  # buffer rows -> input rows
            out = self._forward(m).float()
            self.stats["batches"] += 1
            self.stats["padded_rows"] += (o.batch_size - m) if self.fixed else 0
            features, logits = out[:, :self.feature_dim], out[:, self.feature_dim:]
            cols = {}
            if "topk" in o.outputs:
                k = min(o.top_k, logits.shape[1])
                probs, ids = torch.softmax(logits, dim=1).topk(k, dim=1)
                cols["topk_ids"], cols["topk_probs"] = ids.int(), probs
            if "logits" in o.outputs:
                cols["logits"] = logits
            if self.with_features:
                cols["features"] = features
            for name, value in cols.items():
                chunks.setdefault(name, []).append(value.cpu().numpy()[back])
        return {name: np.concatenate(parts) for name, parts in chunks.items()}

    def __call__(self, batch):
        import pyarrow as pa

        table, images = _split(batch, self.image_column)
        n = len(images)
        errors = [e or None for e in table["error"].to_pylist()] if "error" in table.column_names else [None] * n
        for i in range(n):
            if errors[i] is None:
                errors[i] = _bad_shape(images[i])
        ok = [i for i in range(n) if errors[i] is None]
        valid = images if len(ok) == n else images[ok] if isinstance(images, np.ndarray) else [images[i] for i in ok]
        results = self.predict(valid) if ok else {}
        self.stats["rows"] += n
        self.stats["errors"] += n - len(ok)
        out = table.drop_columns([c for c in ("error", "done_s") if c in table.column_names])
        out = out.append_column("error", pa.array(errors, type=pa.string()))
        o = self.options
        widths = {"topk_ids": min(o.top_k, self.classes), "logits": self.classes, "features": self.feature_dim}
        widths["topk_probs"] = widths["topk_ids"]
        names = (["topk_ids", "topk_probs"] if "topk" in o.outputs else []) + \
            (["logits"] if "logits" in o.outputs else []) + (["features"] if self.with_features else [])
        for name in names:
            values = np.zeros((n, widths[name]), np.int32 if name == "topk_ids" else np.float32)
            if ok:
                values[ok] = results[name]
            out = out.append_column(name, _fixed_lists(values, valid=ok))
        if o.timing:
            out = out.append_column("done_s", pa.array(np.full(n, time.time())))
        return out


def _fixed_lists(values: np.ndarray, valid: list[int] | None = None):
    """[n, w] numpy -> an Arrow fixed-size-list column (null rows where not in valid)."""
    import pyarrow as pa

    n, w = values.shape[0], int(np.prod(values.shape[1:], dtype=np.int64))
    mask = None
    if valid is not None:
        mask = np.ones(n, bool)
        mask[valid] = False
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), w,
                                             mask=None if mask is None else pa.array(mask))


def _split(batch, image_column: str):
    """A batch (pyarrow Table or dict of numpy arrays) -> (Table of the other columns, the
    images: one [N, H, W(, C)] array when they share a size, else a list of arrays)."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        # Ray's tensor extension arrays: fixed-shape ones give one array, variable-shaped ones
        # an object array of arrays.
        chunks = [c.to_numpy(zero_copy_only=False) for c in batch[image_column].chunks]
        if chunks and all(c.dtype != object for c in chunks) and len({c.shape[1:] for c in chunks}) == 1:
            images = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        else:
            images = [a for c in chunks for a in c]
        return batch.drop_columns([image_column]), images
    if image_column not in batch:
        raise KeyError(f"the batch has no {image_column!r} column (columns: {sorted(batch)})")
    images = batch[image_column]
    images = list(images) if images.dtype == object else images
    cols = {name: (pa.array(list(v) if v.dtype == object else v) if v.ndim == 1 else _fixed_lists(v))
            for name, v in batch.items() if name != image_column}
    table = pa.table(cols) if cols else pa.table({"_": pa.nulls(len(images))}).drop_columns(["_"])
    return table, images


# ---------------------------------------------------------------- the pipeline

def predict_dataset(ds, model: ModelSpec | nn.Module, options: InferOptions, *, column: str, kind: str,
                    workers: int = 1, gpus_per_worker: float = 1.0, cpus_per_worker: float = 1.0, device: str = "cuda",
                    draft: int | None = None, resize_on_cpu: bool = False):
    """``ds`` (rows with paths or encoded images in ``column``; kind: "path", "bytes" or
    "struct") -> a Dataset of predictions, one row per input row.

    Decoded rows are regrouped into blocks of ``batch_size`` (streaming, no shuffle), so the
    actors get full batches: give ``ds`` blocks of a multiple of it where you can.  device
    "cuda": one actor per ``gpus_per_worker`` GPUs; "cpu": actors on ``cpus_per_worker`` CPUs
    each, running folded PyTorch (or the Triton interpreter when options.interpreter)."""
    ray = require_ray()
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu (the workers' resources follow from it), got {device!r}")
    b = options.batch_size
    ds = ds.map_batches(decode_batch, batch_size=b, batch_format="numpy", num_cpus=1,
                        fn_kwargs=dict(column=column, kind=kind, draft=draft,
                                       resize=options.prep if resize_on_cpu else None))
    # Blocks of exactly b rows: every actor call is a full batch (one partial block per input
    # block at most).  It also keeps Ray from fusing the decode tasks into the model's actors.
    ds = ds.repartition(target_num_rows_per_block=b, strict=True)
    remote = dict(num_cpus=cpus_per_worker)
    if device == "cuda":
        remote["num_gpus"] = gpus_per_worker
    if isinstance(model, nn.Module):
        from ..folding import check_eval

        check_eval(model)  # here, not in every actor
        # Once through the object store; the actors' arguments hold only the reference, which
        # this driver keeps alive, so a restarted actor finds it again.
        model = ray.put(model)
    return ds.map_batches(Predictor, fn_constructor_kwargs=dict(model=model, options=options, device=device),
                          batch_size=b, batch_format="pyarrow", zero_copy_batch=True,
                          compute=ray.data.ActorPoolStrategy(size=workers), **remote)


def list_images(root: Path) -> list[str]:
    """Every file under root with an image extension, sorted; broken links included (they
    become error rows, as unreadable files do)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def parquet_files(path: Path) -> list[str]:
    return [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))


def parquet_column(files: list[str], column: str | None) -> tuple[str, str]:
    """(column, kind) of the images in a Parquet input: encoded bytes, a struct with a bytes
    field, or paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(files[0])
    names = [column] if column else [c for c in ("image", "bytes", "path") if c in schema.names]
    if not names or names[0] not in schema.names:
        wanted = f"column {column!r}" if column else "image, bytes or path column"
        raise SystemExit(f"error: {files[0]} has no {wanted} (columns: {', '.join(schema.names)}); "
                         "name one with --column")
    t = schema.field(names[0]).type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return names[0], "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return names[0], "struct"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return names[0], "path"
    raise SystemExit(f"error: column {names[0]!r} of {files[0]} is {t}: expected encoded image bytes, "
                     "a struct with a bytes field, or paths")


# ---------------------------------------------------------------- the command

def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `mnv2-fast infer` on the CLI's subparsers."""
    p = sub.add_parser("infer", help="batch inference over an image folder or Parquet on Ray Data (mnv2-fast[ray])",
                       description="Classify or embed an image set on Ray Data: one fused model per GPU worker. "
                                   "Connects to the cluster at $RAY_ADDRESS, else starts a local one.")
    p.add_argument("--input", type=Path, required=True,
                   help="a folder of images (searched recursively) or Parquet (a file or a folder of them) "
                        "with encoded images or paths")
    p.add_argument("--output", type=Path, required=True, help="folder for the predictions, as Parquet files")
    p.add_argument("--model", default="mobilenet_v2",
                   help="mobilenet_v2 (mnv2_fast's, the default), torchvision.NAME, timm.NAME or module:callable")
    p.add_argument("--weights", type=Path, help="the model's state_dict file (read with weights_only=True); "
                   "without it: random weights, for trying the pipeline")
    p.add_argument("--width", type=_positive(float), default=1.0, help="width multiplier (mobilenet_v2)")
    p.add_argument("--classes", type=_positive(int), help="number of classes (default: from --weights)")
    p.add_argument("--batch", type=_positive(int), default=256, help="images per model call (default 256)")
    p.add_argument("--resolution", type=_positive(int), default=224, help="model input side (default 224)")
    p.add_argument("--crop", type=_positive(float), default=0.875,
                   help="center-crop fraction: resize the shorter side to resolution / crop first (default 0.875)")
    p.add_argument("--outputs", default="topk", help="comma-separated: topk, logits, features (default topk)")
    p.add_argument("--top-k", type=_positive(int), default=5)
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: float16 on GPUs, float32 on CPUs")
    p.add_argument("--gpus-per-worker", type=_positive(float), default=1.0,
                   help="GPUs per model worker (below 1: several workers share a GPU)")
    p.add_argument("--workers", type=_positive(int), help="model workers (default: the cluster's GPUs / "
                   "--gpus-per-worker; 1 without GPUs)")
    p.add_argument("--cpus-per-worker", type=_positive(float), default=1.0, help="CPUs per model worker")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="auto: GPUs when the cluster has them, else the CPU (folded PyTorch)")
    p.add_argument("--interpreter", action="store_true",
                   help="on the CPU, run the Triton kernels through Triton's interpreter (slow; a check)")
    p.add_argument("--column", help="Parquet input: the column with the images or paths (default: image, bytes "
                   "or path)")
    p.add_argument("--resize-on-cpu", action="store_true",
                   help="resize in the decode tasks, not on the GPU: for mixed-size photos")
    p.add_argument("--fast-decode", action="store_true",
                   help="JPEG: decode at 1/2, 1/4 or 1/8 size when still large enough (faster; other pixels)")
    p.add_argument("--cpus", type=_positive(int), help="CPUs of the local cluster, when one is started")
    p.add_argument("--timing", action="store_true",
                   help="add a done_s column (when each row's batch finished) and report the steady rate")
    p.add_argument("--overwrite", action="store_true", help="replace the Parquet files of an existing --output")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (without --weights)")
    return p


def _prepare_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: --output {path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()):
        others = [p.name for p in path.iterdir() if p.suffix != ".parquet"]
        if not overwrite:
            raise SystemExit(f"error: --output {path} is not empty (--overwrite replaces its Parquet files)")
        if others:
            raise SystemExit(f"error: --output {path} holds other files than Parquet ({', '.join(others[:3])}): "
                             "not replacing it")
        shutil.rmtree(path)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_infer(args) -> int:
    ray = require_ray()
    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
    if args.interpreter and (args.device == "cuda" or args.dtype == "bfloat16"):
        raise SystemExit("error: --interpreter runs the kernels on the CPU, in float32 or float16 (Triton's "
                         "interpreter computes bfloat16 wrongly)")
    try:
        options = InferOptions(batch_size=args.batch, prep=Preprocess(args.resolution, args.crop),
                               outputs=outputs, top_k=args.top_k, dtype=args.dtype, interpreter=args.interpreter,
                               timing=args.timing)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if not args.input.exists():
        raise SystemExit(f"error: --input {args.input} does not exist")
    parquet = args.input.suffix == ".parquet" or (args.input.is_dir() and any(args.input.rglob("*.parquet")))
    if parquet:
        files = parquet_files(args.input)
        column, kind = parquet_column(files, args.column)
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        what = f"{rows} rows of {len(files)} Parquet file(s), column {column!r} ({kind})"
    else:
        paths = list_images(args.input)
        rows, column, kind = len(paths), "path", "path"
        what = f"{rows} image files under {args.input}"
    if rows == 0:
        raise SystemExit(f"error: --input {args.input} holds no images ({', '.join(IMAGE_EXTENSIONS)}) nor Parquet")
    _prepare_output(args.output, args.overwrite)
    spec = ModelSpec(args.model, str(args.weights.resolve()) if args.weights else None, args.width, args.classes,
                     args.seed)
    model = spec.build()  # here first: a bad model or weights file fails before any worker starts

    address = os.environ.get("RAY_ADDRESS")
    if address and args.cpus:
        raise SystemExit("error: --cpus sizes a local cluster, but RAY_ADDRESS names an existing one")
    started = not ray.is_initialized()
    t_start = time.perf_counter()
    if started:
        try:
            ray.init(address=address or "local", num_cpus=None if address else args.cpus,
                     include_dashboard=False if not address else None)
        except ConnectionError as err:
            raise SystemExit(f"error: cannot reach the Ray cluster at RAY_ADDRESS={address}: {err}") from None
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        device = args.device if args.device != "auto" else ("cuda" if gpus and not args.interpreter else "cpu")
        if device == "cuda" and not gpus:
            raise SystemExit("error: --device cuda, but the cluster has no GPUs")
        cpus = resources.get("CPU", 0)
        if device == "cuda":
            workers = args.workers or max(1, int(gpus / args.gpus_per_worker))
            where = f"{workers} GPU worker(s), {args.gpus_per_worker:g} GPU each, of {gpus:g} GPUs"
        else:
            workers = args.workers or 1
            where = (f"{workers} CPU worker(s) ("
                     + ("the Triton kernels through Triton's interpreter" if args.interpreter else "folded PyTorch")
                     + ")" + ("" if args.device == "cpu" or args.interpreter else ": the cluster has no GPUs"))
        msg = shortfall(workers, args.gpus_per_worker if device == "cuda" else 0, args.cpus_per_worker, gpus, cpus)
        if msg:  # Ray would wait for what a fixed cluster never gets
            if started and not address:
                raise SystemExit(f"error: {msg} (see --workers, --gpus-per-worker, --cpus-per-worker, --cpus)")
            _progress(f"warning: {msg} now: waiting for the cluster to grow")
        fused, total = _fused_parts(model)
        print(f"mnv2-fast infer: {what} -> {args.output}; model {args.model}"
              f"{'' if args.weights else ' (random weights: no --weights)'}, {fused} of {total} parts fused; "
              f"batch {args.batch}, {args.resolution} px; {where}; cluster {cpus:g} CPUs",
              flush=True)
        if parquet:
            ds = ray.data.read_parquet(files)
        else:
            import pyarrow as pa

            # Blocks of whole batches, several per CPU so that every decode task has work.
            per = args.batch * max(1, min(16, rows // (args.batch * 4 * max(1, int(resources.get("CPU", 1))))))
            ds = ray.data.from_arrow([pa.table({"path": paths[i:i + per]}) for i in range(0, rows, per)])
        ds = predict_dataset(ds, spec, options, column=column, kind=kind, workers=workers,
                             gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                             device=device, draft=options.prep.resize if args.fast_decode else None,
                             resize_on_cpu=args.resize_on_cpu)
        t0 = time.perf_counter()
        ds.write_parquet(str(args.output), min_rows_per_file=max(args.batch, 65536))
        seconds = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return _report(args, rows, seconds, time.perf_counter() - t_start, workers, device)


def shortfall(workers: int, gpus_per_worker: float, cpus_per_worker: float, gpus: float, cpus: float) -> str | None:
    """What the model workers and the decode tasks (one CPU at least) need beyond the
    cluster's GPUs and CPUs, or None when it fits."""
    need_gpus, need_cpus = workers * gpus_per_worker, workers * cpus_per_worker + 1
    if need_gpus <= gpus and need_cpus <= cpus:
        return None
    return (f"{workers} model worker(s) and the decoding need {need_gpus:g} GPUs and {need_cpus:g} CPUs; "
            f"the cluster has {gpus:g} and {cpus:g}")


def _fused_parts(model: nn.Module) -> tuple[int, int]:
    from ..optimize import optimize

    report = optimize(model, backend="torch").fusion_report
    return len(report.fused), len(report.fused) + len(report.not_fused)  # identity parts left out


def _report(args, rows: int, seconds: float, total_s: float, workers: int, device: str) -> int:
    """Read the written predictions back (their row count and error column only), print the
    errors and the throughput line; 1 when a row went missing."""
    import pyarrow.dataset as pads

    data = pads.dataset(str(args.output), format="parquet")
    names = data.schema.names
    # The row's name in the error lines: its path, else the input's first column.
    key = "path" if "path" in names else names[0] if names[0] != "error" else None
    table = data.to_table(columns=["error"] + ([key] if key else []) + (["done_s"] if args.timing else []))
    errors = table.filter(table["error"].is_valid())
    for row in errors.slice(0, 5).to_pylist():
        _progress(f"  error: {(str(row[key]) + ': ') if key else ''}{row['error']}")
    if errors.num_rows > 5:
        _progress(f"  ... and {errors.num_rows - 5} more errors (the output's error column has them all)")
    steady = ""
    if args.timing and table.num_rows:
        done = np.sort(table["done_s"].to_numpy())
        after = int(np.sum(done > done[0]))
        if after and done[-1] > done[0]:
            steady = f"; steady {after / (done[-1] - done[0]):,.0f} images/s after the first batch"
    print(f"mnv2-fast infer: {table.num_rows} rows, {errors.num_rows} errors, in {seconds:.1f} s "
          f"({total_s:.1f} s in all): {table.num_rows / seconds:,.0f} images/s on {workers} "
          f"{'GPU' if device == 'cuda' else 'CPU'} worker(s){steady}; wrote {args.output}", flush=True)
    if table.num_rows != rows:
        print(f"error: {rows} input rows but {table.num_rows} output rows", file=sys.stderr)
        return 1
    return 0
