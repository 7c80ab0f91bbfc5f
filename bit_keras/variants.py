"""The BiT variants as data: architectures, released checkpoints and how names map to them.

Everything here is plain Python so that the command line can list variants and the
checkpoint tools can identify files without importing Keras.
"""

from __future__ import annotations

import dataclasses
import re

RELEASE_URL = "https://storage.googleapis.com/bit_models"

BLOCK_UNITS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A ResNet-v2 shape: units per block and the width multiplier."""

    name: str  # e.g. "r50x1"
    block_units: tuple
    width: int

    @property
    def num_features(self) -> int:
        return 2048 * self.width

    def num_params(self, num_classes: int | None = 1000) -> int:
        """Parameter count computed from the layout (convolutions, norms, head)."""
        from bit_keras import layout  # local import keeps this module dependency-free

        return sum(
            _prod(entry.shape) for entry in layout.checkpoint_layout(self.block_units, self.width, num_classes)
        )


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One released `.npz` file."""

    name: str  # canonical release name, e.g. "BiT-M-R50x1-ILSVRC2012"
    architecture: Architecture
    upstream: str  # dataset the checkpoint was trained on
    num_classes: int
    multi_label: bool
    relative_url: str
    resolution: int  # the training/evaluation resolution the release reports

    @property
    def url(self) -> str:
        return f"{RELEASE_URL}/{self.relative_url}"

    @property
    def filename(self) -> str:
        return self.relative_url.replace("/", "_")


def _prod(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


ARCHITECTURES = {
    f"r{depth}x{width}": Architecture(f"r{depth}x{width}", BLOCK_UNITS[depth], width)
    for depth, width in [(50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4)]
}


def _release_checkpoints() -> dict:
    checkpoints = {}
    for arch in ARCHITECTURES.values():
        stem = arch.name.upper().replace("X", "x")  # "R50x1"
        for family, upstream, classes in [("S", "ILSVRC-2012", 1000), ("M", "ImageNet-21k", 21843)]:
            name = f"BiT-{family}-{stem}"
            checkpoints[name] = Checkpoint(
                name, arch, upstream, classes, multi_label=(family == "M"),
                relative_url=f"{name}.npz", resolution=224,
            )
        name = f"BiT-M-{stem}-ILSVRC2012"
        checkpoints[name] = Checkpoint(
            name, arch, "ImageNet-21k -> ILSVRC-2012", 1000, multi_label=False,
            relative_url=f"{name}.npz", resolution=480 if arch.name == "r152x4" else 448,
        )
    for size in (224, 160):
        name = f"BiT-M-R50x1-distilled-{size}"
        checkpoints[name] = Checkpoint(
            name, ARCHITECTURES["r50x1"], "ILSVRC-2012 (distilled from BiT-M-R152x2)", 1000,
            multi_label=False, relative_url=f"distill/R50x1_{size}.npz", resolution=size,
        )
    return checkpoints


CHECKPOINTS = _release_checkpoints()

_SHORT_NAME = re.compile(r"^(?:bit-)?(?:(?P<family>[sm])-)?(?P<arch>r\d+x\d+)(?P<suffix>-.+)?$")


def canonical_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_CHECKPOINT_BY_KEY = {canonical_key(name): ckpt for name, ckpt in CHECKPOINTS.items()}


def resolve_architecture(variant: str) -> Architecture:
    """Returns the architecture for a variant name in any accepted spelling.

    Accepted: release names ("BiT-M-R50x1", "BiT-M-R50x1-ILSVRC2012"), TF-Hub style short
    names ("m-r50x1"), and bare architectures ("r50x1"), case-insensitive.
    """
    if isinstance(variant, Architecture):
        return variant
    match = _SHORT_NAME.match(canonical_key(str(variant)))
    if match is None or match.group("arch") not in ARCHITECTURES:
        raise ValueError(
            f"Unknown BiT variant {variant!r}. Expected one of the architectures "
            f"{sorted(ARCHITECTURES)} optionally prefixed by the family, e.g. 'm-r50x1' or "
            f"'BiT-S-R101x3'. Run `bit_keras list` for every name."
        )
    if match.group("suffix") and resolve_checkpoint(variant, required=False) is None:
        raise ValueError(f"Unknown BiT variant {variant!r}: no released checkpoint has that suffix. "
                         "Run `bit_keras list` for every name.")
    return ARCHITECTURES[match.group("arch")]


def resolve_checkpoint(variant: str, *, required: bool = True) -> Checkpoint | None:
    """Returns the released checkpoint a variant name stands for.

    "m-r50x1" and "BiT-M-R50x1" both name BiT-M-R50x1; a bare architecture ("r50x1")
    names no checkpoint, which is an error when `required`.
    """
    key = canonical_key(str(variant))
    if not key.startswith("bit-"):
        key = "bit-" + key
    checkpoint = _CHECKPOINT_BY_KEY.get(key)
    if checkpoint is None and required:
        raise ValueError(
            f"{variant!r} names no released BiT checkpoint. Name the family too, e.g. "
            f"'m-r50x1' (BiT-M) or 's-r50x1' (BiT-S); `bit_keras list` shows all of them."
        )
    return checkpoint


def architecture_for(block_units, width) -> Architecture | None:
    """The named architecture with these units and width, if any."""
    for arch in ARCHITECTURES.values():
        if tuple(arch.block_units) == tuple(block_units) and arch.width == width:
            return arch
    return None
