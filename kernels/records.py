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
        plus the 3x3 stencil's one-pixel halo on each side, clipped to the image."""
        return min((tile_h - 1) * self.stride + 3, self.h), min((tile_w - 1) * self.stride + 3, self.w)

    def grid(self, cfg: "BlockConfig", n: int) -> tuple[int, int]:
        """The launch grid for a batch of n: (pixel-tile programs, output-channel programs)."""
        if cfg.gather:
            programs = _cdiv(n, cfg.imgs) * _cdiv(self.ho, cfg.tile_h) * _cdiv(self.wo, cfg.tile_w)
        else:
            programs = _cdiv(n * self.ho * self.wo, cfg.block_p)
        return programs, _cdiv(self.cout, cfg.block_co)

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
    constexprs in lower case (block_p -> BLOCK_P), and the warps and pipeline stages.
    Keyword-only, so that no field order is part of the interface."""

    num_warps: int = 4
    num_stages: int = 1

    def constexprs(self) -> dict:
        launch = ("num_warps", "num_stages")
        return {f.name.upper(): getattr(self, f.name) for f in fields(self) if f.name not in launch}

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
    """How one block is launched.  gather=False: flat tiles of block_p output pixels, the expand
    recomputed per tap.  gather=True: tile_h x tile_w output pixels of imgs images, the expand
    computed once over the tile's input region and the taps gathered from it."""

    gather: bool = False
    block_p: int = 64  # tap: output pixels per program
    tile_h: int = 1  # gather: output tile rows ...
    tile_w: int = 1  # ... columns ...
    imgs: int = 1  # ... and images per program
    block_h: int = 32  # hidden channels per chunk
    block_k: int = 32  # input channels per expand product step
    block_co: int = 32  # output channels per program

    def validate(self, shape: BlockShape) -> None:
        def pow2(name: str, v: int, lo: int = 16) -> None:
            if v < lo or v & (v - 1):
                raise ValueError(f"config {name}={v} must be a power of two >= {lo}")

        pow2("block_h", self.block_h)
        pow2("block_k", self.block_k)
        pow2("block_co", self.block_co)
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"config num_warps={self.num_warps}, num_stages={self.num_stages} is invalid")
        if self.gather:
            if not shape.has_expand:
                raise ValueError("gather staging needs an expand stage; use gather=False for t = 1 blocks")
            if min(self.tile_h, self.tile_w, self.imgs) < 1:
                raise ValueError("config tile_h, tile_w and imgs must be >= 1")
        else:
            pow2("block_p", self.block_p)


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
