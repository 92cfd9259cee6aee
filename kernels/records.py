"""The records the kernels are specialised on: one per block (`BlockShape`), and one launch
configuration per kernel (`BlockConfig`, `StemConfig`, `HeadConfig`, `LinearConfig`).

Plain data: nothing here imports triton or chooses anything (that is `choice.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


def output_size(size: int, stride: int) -> int:
    """Output rows/columns of a k x k convolution with padding k // 2 (odd k), or TensorFlow's
    "same" padding: ceil(size / stride) either way."""
    return (size - 1) // stride + 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


ACTIVATIONS = ("relu6", "relu", "none")


@dataclass(frozen=True)
class BlockShape:
    """One block of the inverted-residual family: channels, stride, stages and input size.

        y = [x +] act_proj(project(act_dw(depthwise_k(act_exp(expand(start_dw(x)))))))

    MobileNetV2's block is the default (expand, 3x3 depthwise, ReLU6 after both, a linear
    project); ``ksize`` 5 is MNASNet's and EfficientNet's 5x5; ``has_expand`` False a
    depthwise-separable block (or t = 1); ``start_k`` a depthwise on the input before the
    expand and ``ksize`` 0 none in the middle: MobileNetV4's Universal Inverted Bottleneck.

    Built from the model's table (`mnv2_fast.model.block_specs`, sized for a resolution),
    parsed from a module (`mnv2_fast.adapters`, size 0 x 0 until an input arrives: `at(h, w)`),
    or by the launcher from its tensors.  Tuned tables and the compiled-variant cache key on
    it; `index` (the block's place in the network, 0 when unknown) is a label only and takes
    no part in comparisons.
    """

    cin: int
    hidden: int  # expanded channels (= cin without an expand stage)
    cout: int
    stride: int  # the middle depthwise's, else the start depthwise's
    h: int  # input rows (0: not known yet)
    w: int  # input columns
    has_expand: bool  # an expand 1x1 conv precedes the depthwise
    residual: bool  # add the input (stride 1, cin == cout)
    index: int = field(default=0, compare=False)  # 1-based position in the network (features.<index>)
    ksize: int = 3  # middle depthwise kernel, 3 or 5; 0: none (UIB's FFN: two products per pixel)
    start_k: int = 0  # start depthwise kernel (UIB, on the input, no activation), 3 or 5; 0: none
    act_exp: str = "relu6"  # activation after the expand: relu6, relu or none
    act_dw: str = "relu6"  # ... after the middle depthwise
    act_proj: str = "none"  # ... after the project (depthwise-separable blocks may have one)
    tf_same: bool = False  # TensorFlow "same" padding of a stride-2 depthwise (pad from the input size)
    # > 0: the expand is the network's stem, a 3x3 stride-2 conv (padding 1) of an image of cin
    # channels and stem_h x stem_w pixels (any memory format); h x w is then the stem's output
    stem_h: int = 0
    stem_w: int = 0

    @property
    def stem(self) -> bool:
        """Whether the block starts with the network's stem (its expand: `stem_h`)."""
        return self.stem_h > 0

    @property
    def expand_k(self) -> int:
        """The expand's input columns: cin, or the stem's im2col columns (3 x 3 x cin)."""
        return self.cin * 9 if self.stem else self.cin

    @property
    def t(self) -> int | float:
        """The paper's expansion factor (hidden / cin; a fraction when it is not a whole number)."""
        if not self.has_expand:
            return 1
        return self.hidden // self.cin if self.hidden % self.cin == 0 else round(self.hidden / self.cin, 3)

    @property
    def staged(self) -> bool:
        """Whether the kernel stages the expanded chunk for a middle depthwise (else: FFN)."""
        return self.ksize > 0

    @property
    def ho(self) -> int:
        return output_size(self.h, self.stride)

    @property
    def wo(self) -> int:
        return output_size(self.w, self.stride)

    def at(self, h: int, w: int) -> "BlockShape":
        """The same block at an h x w input."""
        return replace(self, h=h, w=w)

    def with_stem(self, cin: int, act: str, h: int, w: int) -> "BlockShape":
        """This block (depthwise-separable) with the network's stem as its expand: a 3x3 stride-2
        conv of an h x w image of cin channels, then act; the block at the stem's output size
        (what kernels.block.stem_block launches)."""
        return replace(self.at(output_size(h, 2), output_size(w, 2)), cin=cin, has_expand=True, act_exp=act,
                       stem_h=h, stem_w=w)

    def region(self, tile_h: int, tile_w: int) -> tuple[int, int]:
        """Input rows and columns a tile_h x tile_w output tile stages: the tile at the stride
        plus the middle depthwise's halo (ksize // 2 on each side, the zero padding included).
        Without a middle depthwise nothing is staged: the tile itself."""
        if not self.staged:
            return tile_h, tile_w
        return (tile_h - 1) * self.stride + self.ksize, (tile_w - 1) * self.stride + self.ksize

    def tiles(self, cfg: "BlockConfig", n: int) -> int:
        """Work items of a batch of n: output tiles of imgs x tile_h x tile_w pixels, each
        split into hidden_split parts of its hidden channels."""
        return _cdiv(n, cfg.imgs) * _cdiv(self.ho, cfg.tile_h) * _cdiv(self.wo, cfg.tile_w) * cfg.hidden_split

    def grid(self, cfg: "BlockConfig", n: int, sms: int) -> int:
        """Programs of the persistent launch: one per work item (`tiles`), at most as many as fit
        the GPU's sms multiprocessors at once (each then walks over several)."""
        return min(self.tiles(cfg, n), cfg.programs_per_sm * sms)

    def weight_elements(self) -> int:
        """Folded weights, biases left out: start depthwise, expand, depthwise, project."""
        return (self.start_k ** 2 * self.cin + self.hidden * (self.expand_k if self.has_expand else 0)
                + self.ksize ** 2 * self.hidden + self.hidden * self.cout)

    def floor_bytes(self, batch: int, itemsize: int) -> int:
        """The fused floor: the input read once, the output written once, the weights read once."""
        pixels_in = self.stem_h * self.stem_w if self.stem else self.h * self.w
        return (batch * (pixels_in * self.cin + self.ho * self.wo * self.cout) + self.weight_elements()) * itemsize

    def flops(self, batch: int) -> int:
        """Multiply-adds x 2 of the unfused block (what any implementation must at least do)."""
        expand_at = (self.h * self.w) if self.staged else (self.ho * self.wo)  # the start depthwise's stride
        start = expand_at * self.cin * self.start_k ** 2
        expand = expand_at * self.expand_k * self.hidden if self.has_expand else 0
        return 2 * batch * (start + expand + self.ho * self.wo * self.hidden * (self.ksize ** 2 + self.cout))

    def to_dict(self) -> dict:
        """The fields a tuned table keys on (the label left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}

    def check(self) -> None:
        """Refuse a combination the kernel does not compute."""
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        if self.ksize not in (0, 3, 5) or self.start_k not in (0, 3, 5):
            raise ValueError(f"depthwise kernels must be 3 or 5 (0: none), got {self.ksize} and start {self.start_k}")
        for name in ("act_exp", "act_dw", "act_proj"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}")
        if not self.staged and not self.has_expand:
            raise ValueError("a block without a middle depthwise needs an expand (it would be a 1x1 conv)")
        if self.start_k and not self.has_expand:
            raise ValueError("a start depthwise needs an expand after it")
        if self.stride == 2 and not (self.ksize or self.start_k):
            raise ValueError("stride 2 needs a depthwise (the middle one, else the start one)")
        if self.tf_same and not self.staged:
            raise ValueError("TensorFlow 'same' padding applies to the middle depthwise, and there is none")
        if self.stem and not (self.has_expand and self.staged and not self.start_k and not self.residual
                              and self.h == output_size(self.stem_h, 2) and self.w == output_size(self.stem_w, 2)):
            raise ValueError(f"a stem (as the expand) needs an expand, a middle depthwise, no start depthwise, no "
                             f"residual, and h x w its output size; got {self}")
        if self.residual and (self.stride != 1 or self.cin != self.cout):
            raise ValueError(f"a residual needs stride 1 and CIN == COUT; got stride {self.stride}, "
                             f"{self.cin} -> {self.cout}")


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """What every launch configuration has: its tile fields, which are the kernel's tile
    constexprs in lower case (block_p -> BLOCK_P), and the launch options (warps, pipeline
    stages, an optional register cap).  Keyword-only, so that no field order is part of the
    interface."""

    LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg", "programs_per_sm")

    num_warps: int = 4
    num_stages: int = 1

    def constexprs(self) -> dict:
        return {f.name.upper(): getattr(self, f.name) for f in fields(self) if f.name not in self.LAUNCH_OPTIONS}

    def options(self) -> dict:
        """Triton launch options: num_warps, num_stages and, when set, maxnreg."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if getattr(self, "maxnreg", None):
            opts["maxnreg"] = self.maxnreg
        return opts

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LaunchConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class BlockConfig(LaunchConfig):
    """How one block is launched (kernels/block.py): output tiles of imgs x tile_h x tile_w
    pixels (tile_h even: the kernel works on vertical pairs, or a multiple of strip), hidden channels in chunks of
    block_hid, the tile's input region kept on chip across chunks when x_resident, and a
    persistent grid of programs_per_sm programs per multiprocessor (the occupancy the
    compiled variant reaches; maxnreg caps its registers to reach it).  stage_image: for
    stride 1 and a tile covering the whole image, only the image's pixels are expanded per
    chunk (the halo ring is padding, zeroed once per program).  join_pairs: the pairs' top and
    bottom pixels projected in one product of twice the rows.  quads, tall and strip: pixels in 2x2,
    4x2 and strip x 2 groups, which share their depthwise windows (kernels/block.py).  stage_vectors: 16-bit
    chunks are staged straight from the expand's accumulators with vector stores (off: through
    tl.store's layout conversion, which needs fewer registers)."""

    tile_h: int = 8  # output tile rows (even) ...
    tile_w: int = 8  # ... columns ...
    imgs: int = 1  # ... and images
    block_hid: int = 32  # hidden channels per chunk
    x_resident: bool = True  # input region loaded once per tile (else once per chunk)
    maxnreg: int | None = None  # register cap per thread (None: the compiler's choice)
    programs_per_sm: int = 2  # resident programs per multiprocessor: sizes the persistent grid
    join_pairs: bool = False  # project both pixels of each pair in one product (2x the rows)
    stage_image: bool = False  # stride 1, one tile per image: expand only the image's pixels (the halo is padding)
    stage_vectors: bool = True  # 16-bit: store staged chunks from the expand's registers (False: tl.store, fewer registers)
    quads: bool = False  # 2x2 pixel groups share window loads and depthwise weights (needs join_pairs, tile_w even)
    project_apart: bool = False  # the kernel writes the hidden tensor, a GEMM projects it (small maps: see block.py)
    hidden_split: int = 1  # with project_apart: a tile's hidden chunks split over this many work items (small batches)
    packed_dw: bool = True  # fp16: the depthwise's bias and clamp on packed pairs (False: in fp32, as bf16 and fp32)
    recompute_sets: bool = False  # positions recomputed where used instead of held from the program's start: the
    # staged rows' per tile, the fused project epilogue's after the chunk loop (registers: 16 warps fit 128)
    tall: bool = False  # 4x2 pixel groups (two 2x2 stacked) share windows of 3 + 3*stride rows (quads, tile_h % 4 == 0)
    strip: int = 0  # > 0: strip x 2 groups (3..8 rows) likewise (quads, tile_h % strip == 0)
    acc16: bool = False  # fp16: the staged expand accumulates in fp16 (other dtypes: in fp32 whatever this says)
    stage_hid: int = 0  # > block_hid: the expand and the staging take this many hidden channels at once (the input
    # region read once per product for all), the depthwise and project block_hid of them at a time

    @property
    def group_rows(self) -> int:
        """Pixel rows per group: pairs and 2x2 groups 2, tall 4, else strip."""
        return self.strip or (4 if self.tall else 2)

    def validate(self, shape: BlockShape) -> None:
        if self.block_hid < 16 or self.block_hid & (self.block_hid - 1):
            raise ValueError(f"config block_hid={self.block_hid} must be a power of two >= 16")
        if self.tile_h < 2 or self.tile_h % (self.strip or 2) or self.tile_w < 1 or self.imgs < 1:
            rows = f"a multiple of strip={self.strip}" if self.strip else "even"  # pairs, or whole strips
            raise ValueError(f"config tile {self.imgs}x{self.tile_h}x{self.tile_w}: tile_h must be {rows} and >= 2, "
                             "tile_w and imgs >= 1")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1 or self.programs_per_sm < 1:
            raise ValueError(f"config num_warps={self.num_warps}, num_stages={self.num_stages}, "
                             f"programs_per_sm={self.programs_per_sm} is invalid")
        if self.maxnreg is not None and not 24 <= self.maxnreg <= 255:
            raise ValueError(f"config maxnreg={self.maxnreg} must be in 24..255")
        if self.stage_image and (shape.stride != 1 or not shape.staged or shape.start_k
                                 or self.tile_h < shape.ho or self.tile_w < shape.wo):
            raise ValueError(f"config stage_image needs stride 1 and a tile covering the image (and a middle depthwise, "
                             f"no start one); got stride {shape.stride}, tile {self.tile_h}x{self.tile_w} for "
                             f"{shape.ho}x{shape.wo} outputs, ksize {shape.ksize}, start_k {shape.start_k}")
        if self.join_pairs and not shape.staged:
            raise ValueError("config join_pairs needs a middle depthwise (the staged path)")
        if self.quads and not (self.join_pairs and self.tile_w % 2 == 0):
            raise ValueError(f"config quads needs join_pairs and an even tile_w (2x2 pixel groups), got "
                             f"join_pairs={self.join_pairs}, tile_w={self.tile_w}")
        if self.tall and not (self.quads and self.tile_h % 4 == 0):
            raise ValueError(f"config tall (4x2 pixel groups) needs quads and tile_h a multiple of 4, got "
                             f"quads={self.quads}, tile_h={self.tile_h}")
        if self.strip and not (3 <= self.strip <= 8 and self.quads and not self.tall):
            raise ValueError(f"config strip={self.strip} (strip x 2 pixel groups) must be 3..8 and needs quads, not "
                             f"tall; got quads={self.quads}, tall={self.tall}")
        if self.project_apart and not shape.staged:
            raise ValueError("config project_apart needs a middle depthwise (the staged path)")
        if self.hidden_split < 1 or (self.hidden_split > 1 and not self.project_apart):
            raise ValueError(f"config hidden_split={self.hidden_split} must be >= 1, and above 1 only with "
                             "project_apart (the parts write disjoint hidden channels; fused, they would need a sum)")
        if self.recompute_sets and not shape.staged:
            raise ValueError("config recompute_sets recomputes the staged rows' and the epilogue's positions: it "
                             "needs a middle depthwise (the staged path)")
        tail = shape.hidden % self.stage_hid if self.stage_hid > self.block_hid else 0
        if self.stage_hid and (self.stage_hid <= self.block_hid or self.stage_hid % self.block_hid
                               or self.stage_hid > 64 or self.hidden_split > 1
                               or self.stage_hid & (self.stage_hid - 1) or not shape.staged
                               or tail % self.block_hid or tail & (tail - 1)):
            raise ValueError(f"config stage_hid={self.stage_hid} must be a power-of-two multiple of block_hid="
                             f"{self.block_hid} above it (0: none), at most 64, leave a last chunk of "
                             f"hidden={shape.hidden} that is one "
                             "too (or none), on the staged path and without hidden_split")
        if shape.stem and not self.x_resident:
            raise ValueError("config x_resident=False: with the stem as the expand, the region's im2col rows are "
                             "loaded once per tile, so they must stay resident")
        if shape.start_k and shape.staged and not self.x_resident:
            raise ValueError("config x_resident=False: a start depthwise is computed once per tile, so its input "
                             "must stay resident")


def _check_pow2(cfg: LaunchConfig, **values: int) -> None:
    for name, v in values.items():
        if v < 16 or v & (v - 1):
            raise ValueError(f"{type(cfg).__name__} {name}={v} must be a power of two >= 16")


@dataclass(frozen=True, kw_only=True)
class StemConfig(LaunchConfig):
    """A 2D tile of output pixels of one image per program: rows and columns are the tile's
    origin plus constants, no division per pixel."""

    tile_h: int = 8  # output rows per program ...
    tile_w: int = 16  # ... and columns (tile_h * tile_w: a power of two)
    block_co: int = 32  # output channels per program

    def __post_init__(self):
        _check_pow2(self, **{"tile_h * tile_w": self.tile_h * self.tile_w, "block_co": self.block_co})


@dataclass(frozen=True, kw_only=True)
class HeadConfig(LaunchConfig):
    """imgs images' pixels, packed end to end, in chunks of block_p, times block_n channels."""

    num_warps: int = 8
    num_stages: int = 2
    imgs: int = 1  # images per program (at most 16: the pooling product's columns)
    block_p: int = 128  # packed pixels per chunk
    block_k: int = 64  # input channels per product step
    block_n: int = 128  # head channels per program

    def __post_init__(self):
        if not 1 <= self.imgs <= 16:
            raise ValueError(f"HeadConfig imgs={self.imgs} must be in 1..16")
        _check_pow2(self, block_p=self.block_p, block_k=self.block_k, block_n=self.block_n)


@dataclass(frozen=True, kw_only=True)
class LinearConfig(LaunchConfig):
    num_stages: int = 2
    block_m: int = 64  # rows per program
    block_n: int = 64  # output features per program
    block_k: int = 64  # input features per product step
