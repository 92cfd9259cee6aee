"""The records the kernels are specialised on: one per block (`BlockShape`), and one launch
configuration per kernel (`BlockConfig`, `StemConfig`, `HeadConfig`, `LinearConfig`).

Plain data: nothing here imports triton or chooses anything (that is `choice.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


def output_size(size: int, stride: int) -> int:
    """Output rows/columns of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class BlockShape:
    """One inverted-residual block: channels, stride, stages and input size.

    Built from the model's table (`mnv2_fast.model.block_specs`, sized for a resolution),
    parsed from a module (`mnv2_fast.fused.parse_inverted_residual`, size 0 x 0 until an
    input arrives: `at(h, w)`), or by the launcher from its tensors.  Tuned tables and the
    compiled-variant cache key on it; `index` (the block's place in the network, 0 when
    unknown) is a label only and takes no part in comparisons.
    """

    cin: int
    hidden: int  # expanded channels (= cin without an expand stage)
    cout: int
    stride: int
    h: int  # input rows (0: not known yet)
    w: int  # input columns
    has_expand: bool  # t > 1: an expand 1x1 conv precedes the depthwise
    residual: bool  # add the input (stride 1, cin == cout)
    index: int = field(default=0, compare=False)  # 1-based position in features (features.<index>)

    @property
    def t(self) -> int:
        """The paper's expansion factor."""
        return self.hidden // self.cin if self.has_expand else 1

    @property
    def ho(self) -> int:
        return output_size(self.h, self.stride)

    @property
    def wo(self) -> int:
        return output_size(self.w, self.stride)

    def at(self, h: int, w: int) -> "BlockShape":
        """The same block at an h x w input."""
        return replace(self, h=h, w=w)

    def region(self, tile_h: int, tile_w: int) -> tuple[int, int]:
        """Input rows and columns a tile_h x tile_w output tile reads: the tile at the stride
        plus the 3x3 stencil's one-pixel halo on each side (the zero padding included)."""
        return (tile_h - 1) * self.stride + 3, (tile_w - 1) * self.stride + 3

    def tiles(self, cfg: "BlockConfig", n: int) -> int:
        """Output tiles of a batch of n: imgs x tile_h x tile_w pixels each."""
        return _cdiv(n, cfg.imgs) * _cdiv(self.ho, cfg.tile_h) * _cdiv(self.wo, cfg.tile_w)

    def grid(self, cfg: "BlockConfig", n: int, sms: int) -> int:
        """Programs of the persistent launch: one per tile, at most as many as fit the GPU's
        sms multiprocessors at once (each then walks over several tiles)."""
        return min(self.tiles(cfg, n), cfg.programs_per_sm * sms)

    def floor_bytes(self, batch: int, itemsize: int) -> int:
        """The fused floor: the input read once, the output written once, the weights read once."""
        weights = self.hidden * (self.cin if self.has_expand else 0) + 9 * self.hidden + self.hidden * self.cout
        return (batch * (self.h * self.w * self.cin + self.ho * self.wo * self.cout) + weights) * itemsize

    def flops(self, batch: int) -> int:
        """Multiply-adds x 2 of the unfused block (what any implementation must at least do)."""
        expand = self.h * self.w * self.cin * self.hidden if self.has_expand else 0
        return 2 * batch * (expand + self.ho * self.wo * self.hidden * (9 + self.cout))

    def to_dict(self) -> dict:
        """The fields a tuned table keys on (the label left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}


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
    pixels (tile_h even: the kernel works on vertical pairs), hidden channels in chunks of
    block_hid, the tile's input region kept on chip across chunks when x_resident, and a
    persistent grid of programs_per_sm programs per multiprocessor (the occupancy the
    compiled variant reaches; maxnreg caps its registers to reach it).  stage_image: for
    stride 1 and a tile covering the whole image, only the image's pixels are expanded per
    chunk (the halo ring is padding, zeroed once per program).  join_pairs: the pairs' top and
    bottom pixels projected in one product of twice the rows."""

    tile_h: int = 8  # output tile rows (even) ...
    tile_w: int = 8  # ... columns ...
    imgs: int = 1  # ... and images
    block_hid: int = 32  # hidden channels per chunk
    x_resident: bool = True  # input region loaded once per tile (else once per chunk)
    maxnreg: int | None = None  # register cap per thread (None: the compiler's choice)
    programs_per_sm: int = 2  # resident programs per multiprocessor: sizes the persistent grid
    join_pairs: bool = False  # project both pixels of each pair in one product (2x the rows)
    stage_image: bool = False  # stride 1, one tile per image: expand only the image's pixels (the halo is padding)

    def validate(self, shape: BlockShape) -> None:
        if self.block_hid < 16 or self.block_hid & (self.block_hid - 1):
            raise ValueError(f"config block_hid={self.block_hid} must be a power of two >= 16")
        if self.tile_h < 2 or self.tile_h % 2 or self.tile_w < 1 or self.imgs < 1:
            raise ValueError(f"config tile {self.imgs}x{self.tile_h}x{self.tile_w}: tile_h must be even and >= 2, "
                             "tile_w and imgs >= 1")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1 or self.programs_per_sm < 1:
            raise ValueError(f"config num_warps={self.num_warps}, num_stages={self.num_stages}, "
                             f"programs_per_sm={self.programs_per_sm} is invalid")
        if self.maxnreg is not None and not 24 <= self.maxnreg <= 255:
            raise ValueError(f"config maxnreg={self.maxnreg} must be in 24..255")
        if self.stage_image and (shape.stride != 1 or self.tile_h < shape.ho or self.tile_w < shape.wo):
            raise ValueError(f"config stage_image needs stride 1 and a tile covering the image; got stride "
                             f"{shape.stride}, tile {self.tile_h}x{self.tile_w} for {shape.ho}x{shape.wo} outputs")


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
