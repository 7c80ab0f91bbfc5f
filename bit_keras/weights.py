"""The one rule for which weights a model gets, used by Python and by every command.

- a released name (`m-r50x1`, `BiT-S-R101x3`, `BiT-M-R50x1-ILSVRC2012`) means the released
  weights, downloaded once into the cache; offline with an empty cache that fails at once,
  naming the cache path and the URL;
- an architecture (`r50x1`, `r2-3-4-1x2`) means random weights (`WeightsChoice.random`);
- `weights=` (a local `.npz`, a URL or a release name) overrides either;
- `load_weights=False` asks for random weights on a released name (keras-hub's spelling; `--random-weights`);
- timm's names (`resnetv2_50x1_bit.goog_in21k`) are release names; `hf://timm/NAME` (as a
  name or `weights=`) and a local timm `.safetensors` file read timm's layout (`timm.py`).

`resolve` only finds (and if needed downloads) the file and checks that it fits; nothing
here imports Keras until a model is built, so a bad name or a missing file fails fast.
"""

from __future__ import annotations

import dataclasses
import os

from bit_keras import checkpoint, download, layout, presets
from bit_keras.architecture import Architecture
from bit_keras.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class WeightsChoice:
    """What `resolve` decided: the architecture, the weights file (None: random) and where it came from."""

    architecture: Architecture
    path: str | None
    source: str                          # "random", a URL, or a local path
    preset: presets.Preset | None        # the release whose facts apply (None for other files)
    checkpoint_classes: int | None = None  # the head in the file, if any

    @property
    def random(self) -> bool:
        return self.path is None

    @property
    def name(self) -> str:
        return self.preset.name if self.preset else self.architecture.name

    def describe(self) -> str:
        """One line for the top of a command's output."""
        if not self.random:
            return f"{self.name}: weights from {self.source}"
        releases = presets.presets_for(self.architecture)
        hint = f"; a released name such as {releases[0].short_name} brings BiT's" if releases and not self.preset else ""
        return f"{self.name}: random weights (untrained{hint})"

    def default_num_classes(self) -> int:
        """The head a classifier gets by default: the file's, else the release's, else 1000."""
        return self.checkpoint_classes or (self.preset.num_classes if self.preset else 1000)

    def multi_label(self, num_classes) -> bool:
        """Whether a head of `num_classes` is the release's own multi-label (sigmoid) head."""
        return self.preset is not None and num_classes == self.preset.num_classes and self.preset.multi_label


def resolve(name=None, weights=None, *, load_weights: bool = True, cache_dir=None) -> WeightsChoice:
    """Applies the weights rule to a model name and an optional `weights=` override.

    `name=None` takes the architecture from the `weights` file (any depth and width).
    """
    if weights is not None and not load_weights:
        raise ConfigError("Pass either weights=... or load_weights=False, not both.")
    if name is None and weights is None:
        raise ConfigError("Name a model (e.g. 'm-r50x1') or a checkpoint (weights=FILE.npz).")
    from bit_keras import timm

    if timm.hub_name(name) is not None and weights is None and load_weights:
        weights = name  # `hf://timm/NAME`: timm's own file from the Hugging Face Hub
    architecture, preset = presets.resolve(timm.hub_name(name) or name) if name is not None else (None, None)
    if weights is None:
        if preset is None or not load_weights:
            return WeightsChoice(architecture, None, "random", preset)
        return _checked(architecture, preset, download.fetch_preset(preset, directory=cache_dir), preset.url)
    weights = os.fspath(weights)
    weights_preset = presets.find_preset(weights)
    if timm.hub_name(weights) is not None:  # timm's layout, converted once into a release-layout .npz
        path, source = timm.fetch(timm.hub_name(weights), cache_dir), timm.HF_URL.format(name=timm.hub_name(weights))
        preset = preset or weights_preset
    elif weights.endswith(".safetensors") and os.path.isfile(weights):
        path, source = timm.as_npz(weights, cache_dir), os.path.abspath(weights)
    elif download.is_url(weights):
        path, source = download.fetch(weights, directory=cache_dir), weights
    elif os.path.exists(weights):
        path, source = weights, os.path.abspath(weights)
    elif weights_preset is not None:
        path, source = download.fetch_preset(weights_preset, directory=cache_dir), weights_preset.url
        preset = preset or weights_preset
    else:
        raise ConfigError(f"weights={weights!r} is neither a file, a URL nor a released checkpoint name "
                          "(`bit_keras list` shows them).")
    return _checked(architecture, preset, path, source)


def _checked(architecture, preset, path, source) -> WeightsChoice:
    """The file must hold the named architecture; a release's facts apply only to its own head."""
    info = checkpoint.identify(checkpoint.read_headers(path))
    held = Architecture(info.block_units, info.width)
    if architecture is not None and held != architecture:
        raise CheckpointError(f"{path} holds {info.describe()}, but the model asked for is {architecture.name}. "
                              "Name the matching model or another file.")
    if preset is not None and (preset.architecture != held or (info.num_classes or preset.num_classes) != preset.num_classes):
        preset = None
    return WeightsChoice(held, path, source, preset, info.num_classes)


def warn_if_random(choice, *, asked: bool) -> None:
    """Python's counterpart of the CLI's first line: a name that means random weights says so (once per call site).

    Silent when random weights were asked for (`load_weights=False`)."""
    if choice.random and not asked:
        import warnings

        warnings.warn(f"{choice.describe()}. Pass load_weights=False to ask for random weights without this "
                      "warning.", UserWarning, stacklevel=3)


def is_export(source) -> bool:
    """Whether a model source is an export that carries its own weights: a directory (SavedModel,
    keras-hub preset) or a `.keras` file, rather than a name the weights rule resolves."""
    return isinstance(source, (str, os.PathLike)) and (os.path.isdir(source) or os.fspath(source).endswith(".keras"))


def release_refusal(release: str, network: dict) -> str:
    """One line: release weights do not fit the research network asked for, and what to change."""
    differ = [f"{key}={value!r}" for key, value in network.items()
              if value != layout.BIT_NETWORK[key] and value is not None]
    return (f"{release} holds BiT's network ({layout.describe_network(layout.BIT_NETWORK)}) and loads only into "
            f"it; this model asks for {', '.join(differ) or layout.describe_network(network)}. Drop "
            f"{'that switch' if len(differ) == 1 else 'those switches'} (defaults: "
            f"{layout.network_switches(layout.BIT_NETWORK)}) or train this network from random weights "
            f"(load_weights=False).")


def refuse_release_into(name=None, weights=None, *, normalization="group", weight_standardization=True,
                        groups=layout.BIT_GROUPS, **_):
    """Raises a ConfigError, before any download, when released weights are asked for a non-BiT network."""
    network = layout.network_config(normalization, weight_standardization, groups)
    if network == layout.BIT_NETWORK:
        return
    source = weights if weights is not None else name
    release = presets.find_preset(source) if isinstance(source, str) and not os.path.exists(source) else None
    if release is None and weights is not None and download.is_url(weights):
        release = next((p for p in presets.PRESETS.values() if p.url == weights), None)
    if release is not None:
        raise ConfigError(release_refusal(release.name, network))


def cached_release(architecture, cache_dir=None) -> str | None:
    """A released checkpoint of `architecture` already in the cache (the demo uses it), else None."""
    for preset in presets.presets_for(Architecture.parse(architecture)):
        path = download.cached_preset(preset, directory=cache_dir)
        if path is not None:
            return path
    return None
