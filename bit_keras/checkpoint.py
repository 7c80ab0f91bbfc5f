"""Reading, checking, loading and writing checkpoints in the release's `.npz` layout.

Loading validates every key and shape from the npz headers, then reads every array once
(length, CRC, NaN/Inf) before a single weight is assigned, so a bad file never leaves a
partially loaded model; arrays are read one at a time (a second time to assign them) so
the peak memory stays near the model's own size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
import zlib

import numpy as np

from bit_keras import files, layout
from bit_keras.architecture import Architecture
from bit_keras.errors import CheckpointError, ConfigError, MissingFileError


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What the keys of a checkpoint say about the network it holds."""

    block_units: tuple
    width: int
    num_classes: int | None  # None: no head in the file

    @property
    def architecture(self) -> Architecture:
        return Architecture(self.block_units, self.width)

    def describe(self) -> str:
        head = f"{self.num_classes}-class head" if self.num_classes else "no head"
        return f"{self.architecture.name}, {head}"


def read_headers(path) -> dict:
    """Maps each array name in an `.npz` to (shape, dtype) without reading the data."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"No checkpoint at {path!r}.")
    if not os.path.isfile(path):  # a device or a pipe could be read forever
        raise CheckpointError(f"{path!r} is not a regular file.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path!r} is not an .npz file (not a zip archive). BiT checkpoints are "
                              "the release's .npz files; the older .h5 files are not supported.")
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as stream:
                try:
                    version = np.lib.format.read_magic(stream)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(stream)
                except ValueError as error:
                    raise CheckpointError(f"{path!r}: array {member!r} is not a valid .npy entry ({error}).")
            headers[member[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    if not headers:
        raise CheckpointError(f"{path!r} is a zip archive with no arrays in it; not a BiT checkpoint.")
    return headers


def identify(headers: dict) -> CheckpointInfo:
    """Infers units per block, width and head size from the keys and the root kernel."""
    root_key = layout.layer_to_key(layout.ROOT_CONV, "kernel")
    if root_key not in headers:
        raise CheckpointError(f"Not a BiT checkpoint: missing key {root_key!r} "
                              f"(found e.g. {sorted(headers)[:3]}).")
    root_shape = headers[root_key][0]
    if len(root_shape) != 4 or root_shape[:3] != (7, 7, 3) or root_shape[3] % 64:
        raise CheckpointError(f"Key {root_key!r} has shape {root_shape}; expected (7, 7, 3, 64*width).")
    units = [0, 0, 0, 0]
    pattern = re.compile(r"^resnet/block(\d)/unit(\d+)/")
    for key in headers:
        match = pattern.match(key)
        if match and 1 <= int(match.group(1)) <= 4:
            block = int(match.group(1)) - 1
            units[block] = max(units[block], int(match.group(2)))
    if min(units) < 1:
        raise CheckpointError(f"Not a whole BiT network: no units in block {units.index(0) + 1} "
                              f"(found units per block {tuple(units)}).")
    head_key = layout.layer_to_key(layout.HEAD_LAYER, "kernel")
    num_classes = headers[head_key][0][-1] if head_key in headers else None
    return CheckpointInfo(tuple(units), root_shape[3] // 64, num_classes)


def check_against_layout(headers: dict, expected, path="checkpoint") -> None:
    """Raises a CheckpointError naming the first missing or mis-shaped key."""
    for entry in expected:
        if entry.key not in headers:
            raise CheckpointError(f"{path}: missing key {entry.key!r} (expected shape {entry.shape}). "
                                  f"{_suggest(headers)}")
        shape, dtype = headers[entry.key]
        if shape != entry.shape:
            raise CheckpointError(f"{path}: key {entry.key!r} has shape {shape}, the model expects "
                                  f"{entry.shape}. {_suggest(headers)}")
        if dtype.kind != "f":
            raise CheckpointError(f"{path}: key {entry.key!r} has dtype {dtype}; expected floating point.")


def _suggest(headers) -> str:
    try:
        info = identify(headers)
    except CheckpointError:
        return "The file does not look like a BiT checkpoint."
    return f"The file holds {info.describe()}: build {info.architecture.name!r} to load it."


def read_network(path, headers: dict) -> dict:
    """The research switches a checkpoint was saved with (`layout.NETWORK_KEY`); BiT's without the key."""
    if layout.NETWORK_KEY not in headers:
        return dict(layout.BIT_NETWORK)
    shape, dtype = headers[layout.NETWORK_KEY]
    if shape != () or dtype.kind != "U":
        raise CheckpointError(f"{path}: key {layout.NETWORK_KEY!r} has shape {shape} and dtype {dtype}; "
                              "expected a 0-d unicode string of JSON.")
    (_, value), = read_arrays(path, [layout.NETWORK_KEY])
    try:
        saved = json.loads(str(value))
        network = layout.network_config(saved["normalization"], saved["weight_standardization"],
                                        layout.BIT_GROUPS if saved.get("groups") is None else saved["groups"])
    except (ValueError, TypeError, KeyError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: key {layout.NETWORK_KEY!r} does not describe a network ({error}).") from None
    return network


def model_network(model) -> dict:
    """The research switches of a BiT backbone or classifier (BiT's for a model without them)."""
    backbone = getattr(model, "backbone", model)
    return dict(getattr(backbone, "network", layout.BIT_NETWORK))


def check_network(path, held: dict, wanted: dict) -> None:
    """Raises a CheckpointError naming the switches when a file's network is not the model's."""
    if held == wanted:
        return
    both_group = held["normalization"] == wanted["normalization"] == "group"
    differ = [f"{key}={held[key]!r} (this model has {wanted[key]!r})" for key in held
              if held[key] != wanted[key] and (key != "groups" or both_group)]
    origin = "a BiT network" if held == layout.BIT_NETWORK else "a research network"
    raise CheckpointError(f"{path} holds {origin} ({layout.describe_network(held)}) but this model is "
                          f"{layout.describe_network(wanted)}: build it with {', '.join(differ)} to load it.")


def read_arrays(path, keys):
    """Yields (key, array) for `keys`, each read whole; short data or a bad CRC is a CheckpointError."""
    with zipfile.ZipFile(path) as archive:
        for key in keys:
            member = archive.getinfo(key + ".npy")
            with archive.open(member) as stream:
                try:
                    version = np.lib.format.read_magic(stream)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)(stream)
                    size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd headers
                    if stream.tell() + size != member.file_size:  # checked before allocating anything
                        raise ValueError(f"its header needs {size} bytes of data, the archive holds "
                                         f"{member.file_size - stream.tell()}")
                    stream.seek(0)
                    array = np.lib.format.read_array(stream, allow_pickle=False)  # the CRC is checked at its end
                except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                    raise CheckpointError(f"{path!r}: array {key!r} cannot be read ({error}); the file is "
                                          "truncated or corrupt.") from None
            yield key, array


def nonfinite_keys(path, keys) -> list:
    """Reads every array in `keys` (see `read_arrays`) and returns those holding NaN or Inf."""
    return sorted(key for key, array in read_arrays(path, keys)
                  if array.dtype.kind in "fc" and not np.isfinite(array).all())


def load_weights(model, path, *, load_head: bool | None = None, allow_nonfinite: bool = False) -> CheckpointInfo:
    """Loads a release-layout `.npz` into a BiT model, by name, all or nothing.

    The head is loaded when the model has one of the checkpoint's class count (or when
    `load_head=True`, which then requires it); otherwise the model's head is left as it is
    (zero-initialised for fine-tuning). Arrays holding NaN or Inf are refused unless
    `allow_nonfinite=True`.
    """
    path = os.fspath(path)
    headers = read_headers(path)
    info = identify(headers)
    model_head = getattr(model, "num_classes", None)
    if load_head is None:
        load_head = model_head is not None and model_head == info.num_classes
    architecture = _architecture(model)
    network = model_network(model)
    check_network(path, read_network(path, headers), network)
    expected = layout.checkpoint_layout(architecture, model_head if load_head else None, network["normalization"])
    check_against_layout(headers, expected, path)
    keys = [entry.key for entry in expected]
    bad = nonfinite_keys(path, keys)  # every array read and checked before any is assigned
    if bad and not allow_nonfinite:
        raise CheckpointError(_nonfinite_problem(path, bad) + "; pass allow_nonfinite=True to load it anyway.")
    for entry, (_, value) in zip(expected, read_arrays(path, keys)):
        weight = getattr(model.get_layer(entry.layer), entry.weight)
        weight.assign(value.reshape(weight.shape).astype("float32", copy=False))
        del value
    return info


def _nonfinite_problem(path, keys) -> str:
    return f"{path}: {len(keys)} array(s) hold NaN or Inf: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"


def _architecture(model) -> Architecture:
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, Architecture):
        raise TypeError(f"{getattr(model, 'name', model)!r} is not a BiTBackbone or BiTImageClassifier.")
    return architecture


def save_weights(model, path) -> None:
    """Writes a BiT model's weights as a release-layout `.npz`, atomically (local or gs://).

    A network built with other research switches is written in the extended layout of
    `bit_keras.layout` (BatchNorm moving statistics included) with its switches under
    `layout.NETWORK_KEY`, so it loads back only into the same kind of network.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ConfigError(f"Checkpoint paths end in .npz; received {path!r}.")
    network = model_network(model)
    entries = layout.checkpoint_layout(_architecture(model), getattr(model, "num_classes", None),
                                       network["normalization"])
    arrays = {}
    if network != layout.BIT_NETWORK:
        arrays[layout.NETWORK_KEY] = np.array(json.dumps(network, sort_keys=True))
    for entry in entries:
        value = getattr(model.get_layer(entry.layer), entry.weight)
        arrays[entry.key] = np.asarray(value, dtype="float32").reshape(entry.shape)
    with files.staged_file(path, overwrite=True) as staging:
        np.savez(staging, **arrays)


def inspect_checkpoint(path) -> dict:
    """A summary of a checkpoint: what it is and whether it loads (no Keras needed)."""
    headers = read_headers(path)
    info = identify(headers)
    report = {"path": os.fspath(path), "arrays": len(headers),
              "parameters": sum(math.prod(s) for s, _ in headers.values()),
              "block_units": list(info.block_units), "width": info.width,
              "num_classes": info.num_classes,
              "architecture": info.architecture.name}
    report["nonfinite_keys"], report["problem"] = [], None
    network = dict(layout.BIT_NETWORK)
    try:
        network = read_network(path, headers)
        check_against_layout(headers, layout.checkpoint_layout(info.architecture, info.num_classes,
                                                               network["normalization"]), path)
    except CheckpointError as error:
        report["problem"] = str(error)
    if network != layout.BIT_NETWORK:  # a release's report keeps its old fields only
        report["network"] = network
    try:  # every array is read: a damaged or non-finite one is a reason not to load
        report["nonfinite_keys"] = nonfinite_keys(path, sorted(headers))
    except CheckpointError as error:
        report["problem"] = report["problem"] or str(error)
    if report["nonfinite_keys"] and not report["problem"]:
        report["problem"] = _nonfinite_problem(path, report["nonfinite_keys"]) + " (loads only with allow_nonfinite=True)"
    report["loads"] = report["problem"] is None
    known = set(e.key for e in layout.checkpoint_layout(info.architecture, info.num_classes,
                                                        network["normalization"]))
    known |= {layout.NETWORK_KEY} if layout.NETWORK_KEY in headers else set()
    report["unexpected_keys"] = sorted(set(headers) - known)
    return report
