"""The released BiT checkpoints as data, and the one grammar for model names.

A name is either a release (`BiT-M-R50x1`, `m-r50x1`, `BiT-M-R50x1-ILSVRC2012`,
`BiT-M-R50x1-distilled-224`; case-insensitive, `_` for `-` too), which means the released
weights, or an architecture (`r50x1`, `r14x1`, `r2-3-4-1x2`; see `architecture.py`), which
means random weights. Each release carries what the rest of the library needs to know
about it: upstream data, head, multi-label or not, the HyperRule's resolution for it,
where it is downloaded from and, where known, its SHA-256.

Pure Python: `bit_keras list` never imports Keras.
"""

from __future__ import annotations

import dataclasses

from bit_keras.architecture import GRAMMAR, Architecture
from bit_keras.errors import ConfigError
from bit_keras.hyperrule import DEFAULT_LARGE_RESOLUTION

RELEASE_URL = "https://storage.googleapis.com/bit_models"
EVALUATION_RESOLUTION = 224  # what an architecture, BiT-S and BiT-M are evaluated at (the ILSVRC fine-tunes: more)
HYPERRULE_RESOLUTION = DEFAULT_LARGE_RESOLUTION  # (resize, crop) for images of 96x96 px and more
HYPERRULE_RESOLUTION_R152X4 = (512, 480)         # the paper's larger crop for its largest model
RELEASED_ARCHITECTURES = ("r50x1", "r50x3", "r101x1", "r101x3", "r152x2", "r152x4")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One released `.npz` checkpoint."""

    name: str                 # canonical release name, e.g. "BiT-M-R50x1-ILSVRC2012"
    architecture: Architecture
    upstream: str             # what it was trained on
    num_classes: int
    multi_label: bool         # sigmoid (BiT-M, ImageNet-21k) or softmax head
    relative_url: str
    resolution: int           # the resolution its release reports results at
    hyperrule_resolution: tuple = HYPERRULE_RESOLUTION  # (resize, crop) when fine-tuned on large images
    sha256: str | None = None  # verified on download when known

    @property
    def url(self) -> str:
        return f"{RELEASE_URL}/{self.relative_url}"

    @property
    def filename(self) -> str:
        return self.relative_url.replace("/", "_")

    @property
    def short_name(self) -> str:
        return self.name.lower().replace("bit-", "", 1)


def _release_presets() -> dict:
    presets = {}
    for arch_name in RELEASED_ARCHITECTURES:
        arch = Architecture.parse(arch_name)
        stem = arch_name.upper().replace("X", "x")  # "R50x1"
        large = HYPERRULE_RESOLUTION_R152X4 if arch_name == "r152x4" else HYPERRULE_RESOLUTION
        reported = 480 if arch_name == "r152x4" else 448  # ILSVRC-2012 top-1 was measured there
        releases = [
            (f"BiT-S-{stem}", "ILSVRC-2012", 1000, False, 224),
            (f"BiT-M-{stem}", "ImageNet-21k", 21843, True, 224),
            (f"BiT-M-{stem}-ILSVRC2012", "ImageNet-21k -> ILSVRC-2012", 1000, False, reported),
        ]
        for name, upstream, classes, multi_label, resolution in releases:
            presets[name] = Preset(name, arch, upstream, classes, multi_label, f"{name}.npz", resolution, large)
    for size in (224, 160):
        name = f"BiT-M-R50x1-distilled-{size}"
        presets[name] = Preset(name, Architecture.parse("r50x1"), "ILSVRC-2012 (distilled from BiT-M-R152x2)",
                               1000, False, f"distill/R50x1_{size}.npz", size)
    return presets


PRESETS = _release_presets()


def _key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    return key if key.startswith("bit-") else "bit-" + key


_BY_KEY = {_key(name): preset for name, preset in PRESETS.items()}


def timm_name(preset: Preset) -> str | None:
    """timm's name of a release (`resnetv2_50x1_bit.goog_in21k`), where timm has it (not BiT-S)."""
    depth_width = preset.architecture.name[1:]  # "50x1"
    if preset.name.endswith("-ILSVRC2012"):
        return f"resnetv2_{depth_width}_bit.goog_in21k_ft_in1k"
    if preset.name == "BiT-M-R50x1-distilled-224":
        return "resnetv2_50x1_bit.goog_distilled_in1k"
    return f"resnetv2_{depth_width}_bit.goog_in21k" if preset.name.startswith("BiT-M-") and "distilled" not in preset.name else None


# timm's names are accepted wherever a release name is (also as `hf://timm/NAME`).
TIMM_NAMES = {timm_name(p): p for p in PRESETS.values() if timm_name(p)}
_BY_KEY.update({_key(name): preset for name, preset in TIMM_NAMES.items()})


def find_preset(name) -> Preset | None:
    """The release a name stands for, or None (an architecture, or not a name at all)."""
    if isinstance(name, Preset):
        return name
    if isinstance(name, str) and name.startswith("hf://timm/"):
        name = name[len("hf://timm/"):].strip("/")
    return _BY_KEY.get(_key(name)) if isinstance(name, str) else None


def resolve(name) -> tuple:
    """(Architecture, Preset or None) for any accepted name; an unknown name is a ConfigError."""
    if isinstance(name, Architecture):
        return name, None
    preset = find_preset(name)
    if preset is not None:
        return preset.architecture, preset
    try:
        return Architecture.parse(name), None
    except ConfigError:
        raise ConfigError(f"Unknown BiT model {name!r}. Use a released name (BiT-M-R50x1, m-r50x1, "
                          f"s-r101x3, BiT-M-R50x1-ILSVRC2012, ...; `bit_keras list` shows all) or an "
                          f"architecture: {GRAMMAR}.") from None


def presets_for(architecture: Architecture) -> list:
    """The releases of one architecture (for "is one of them in the cache?")."""
    return [p for p in PRESETS.values() if p.architecture == architecture]


def hyperrule_resolution(architecture) -> tuple:
    """The HyperRule's (resize, crop) for large images on this architecture: its releases' own."""
    choices = {p.hyperrule_resolution for p in presets_for(architecture)} if architecture else set()
    return choices.pop() if len(choices) == 1 else HYPERRULE_RESOLUTION
