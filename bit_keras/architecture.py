"""The BiT ResNet-v2 shape as data, and the one walk over its units.

The Keras builder (`backbone.py`), the checkpoint key layout (`layout.py`) and the MAC
count (`bench/counts.py`) all read `Architecture.units()`, so they cannot disagree about
strides, channel counts or which unit has a projection.

One spelling for every architecture, in Python and on every command line:

- `r{depth}x{width}` for the depths with a standard unit count: r14 (1,1,1,1),
  r26 (2,2,2,2), r50 (3,4,6,3), r101 (3,4,23,3), r152 (3,8,36,3); any width, e.g. r50x1,
  r152x4, r14x1 (the offline demo's model);
- `r{u1}-{u2}-{u3}-{u4}x{width}` for any units per block, e.g. r2-3-4-1x2.

Pure Python: listing and parsing never import Keras.
"""

from __future__ import annotations

import dataclasses
import math
import re

from bit_keras.errors import ConfigError

DEPTH_UNITS = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
ROOT_CHANNELS = 64   # x width; block b's bottleneck has ROOT_CHANNELS * width * 2**(b-1) channels
EXPANSION = 4        # a unit's output has 4x its bottleneck channels
GRAMMAR = ("r{depth}x{width} with depth in " + ", ".join(map(str, DEPTH_UNITS))
           + " (e.g. r50x1), or r{u1}-{u2}-{u3}-{u4}x{width} for any units per block (e.g. r2-3-4-1x2)")

_BY_DEPTH = re.compile(r"^r(\d+)x(\d+)$")
_BY_UNITS = re.compile(r"^r(\d+)-(\d+)-(\d+)-(\d+)x(\d+)$")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One pre-activation bottleneck: where it sits and the shapes it maps between."""

    block: int            # 1..4
    index: int            # 1-based within the block
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int           # on the 3x3 convolution (and the projection)
    projection: bool      # a 1x1 projection shortcut on the pre-activated input

    @property
    def name(self) -> str:
        """The release's module path, e.g. "block3/unit06"."""
        return f"block{self.block}/unit{self.index:02d}"


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Units per block and the width multiplier of a BiT ResNet-v2."""

    block_units: tuple
    width: int

    def __post_init__(self):
        try:
            units = tuple(int(u) for u in self.block_units)
            width = int(self.width)
        except (TypeError, ValueError):
            units, width = (), 0
        if len(units) != 4 or min(units) < 1 or width < 1:
            raise ConfigError(f"An architecture needs four positive unit counts and a positive width. "
                              f"Received: block_units={self.block_units}, width={self.width}")
        object.__setattr__(self, "block_units", units)
        object.__setattr__(self, "width", width)

    @classmethod
    def parse(cls, text) -> "Architecture":
        """`r50x1`, `r14x1`, `r2-3-4-1x2`, ... (see the module docstring)."""
        if isinstance(text, Architecture):
            return text
        key = str(text).strip().lower()
        match = _BY_UNITS.match(key)
        if match:
            *units, width = (int(g) for g in match.groups())
            return cls(tuple(units), width)
        match = _BY_DEPTH.match(key)
        if match and int(match.group(1)) in DEPTH_UNITS:
            return cls(DEPTH_UNITS[int(match.group(1))], int(match.group(2)))
        raise ConfigError(f"Unknown architecture {text!r}: write {GRAMMAR}.")

    @property
    def depth(self) -> int:
        return 2 + 3 * sum(self.block_units)

    @property
    def name(self) -> str:
        """The canonical spelling, which `parse` reads back."""
        if DEPTH_UNITS.get(self.depth) == self.block_units:
            return f"r{self.depth}x{self.width}"
        return f"r{'-'.join(map(str, self.block_units))}x{self.width}"

    @property
    def root_channels(self) -> int:
        return ROOT_CHANNELS * self.width

    @property
    def num_features(self) -> int:
        return EXPANSION * ROOT_CHANNELS * self.width * 2 ** 3

    def units(self) -> list:
        """Every unit in network order. The first unit of each block changes the channel
        count (and, from block 2 on, the resolution), so it alone has a projection."""
        walk, channels = [], self.root_channels
        for block, count in enumerate(self.block_units, start=1):
            mid = self.root_channels * 2 ** (block - 1)
            for index in range(1, count + 1):
                stride = 2 if (index == 1 and block > 1) else 1
                out = EXPANSION * mid
                walk.append(Unit(block, index, channels, mid, out, stride,
                                 projection=stride != 1 or channels != out))
                channels = out
        return walk

    def num_params(self, num_classes: int | None = 1000) -> int:
        """Parameters of the checkpoint layout: convolutions, norms and (optionally) the head."""
        from bit_keras import layout

        return sum(math.prod(entry.shape) for entry in layout.checkpoint_layout(self, num_classes))

    def __str__(self) -> str:
        return self.name
