"""timm's layout of BiT weights (`hf://timm/resnetv2_50x1_bit.goog_in21k`, ...) read into ours.

timm (`timm/models/resnetv2.py`, `_load_weights`) maps the release `.npz` to its PyTorch
modules key by key; this is that map read backwards, derived from our one walk over the
network (`layout.checkpoint_layout`), so each release key has exactly one timm key:

    resnet/root_block/standardized_conv2d/kernel         stem.conv.weight
    resnet/block{b}/unit{u:02d}/{a,b,c}/standardized_conv2d/kernel
                                                         stages.{b-1}.blocks.{u-1}.conv{1,2,3}.weight
    resnet/block{b}/unit{u:02d}/{a,b,c}/group_norm/{gamma,beta}
                                                         stages.{b-1}.blocks.{u-1}.norm{1,2,3}.{weight,bias}
    resnet/block{b}/unit01/a/proj/standardized_conv2d/kernel
                                                         stages.{b-1}.blocks.0.downsample.conv.weight
    resnet/group_norm/{gamma,beta}                       norm.{weight,bias}
    resnet/head/conv2d/{kernel,bias}                     head.fc.{weight,bias}

Kernels are HWIO in the release and OIHW in timm (timm's `t2p` transposes [3, 2, 0, 1]).
A timm file is turned into a release-layout `.npz` once (atomically, in our cache), so
everything after that (identification, checks, loading, `inspect`) is the `.npz` path.

safetensors are read here by hand with NumPy (an 8-byte header length, a JSON header of
names, dtypes, shapes and byte ranges, then raw little-endian data): the format holds no
code, this reader executes none, and it avoids a dependency for ~40 lines of parsing.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np

from bit_keras import files, layout
from bit_keras.architecture import Architecture
from bit_keras.errors import CheckpointError, DownloadError

HF_SCHEME = "hf://timm/"
HF_URL = "https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
_NORM = {"gamma": "weight", "beta": "bias"}
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}  # BF16: read as uint16, widened below


def timm_key(key: str) -> str:
    """timm's `ResNetV2` state-dict name of a release checkpoint key."""
    parts = key[len(layout.PREFIX):].split("/")
    if parts[0] == "root_block":
        return "stem.conv.weight"
    if parts[0] == "head":
        return "head.fc." + {"kernel": "weight", "bias": "bias"}[parts[-1]]
    if parts[0] == "group_norm":
        return "norm." + _NORM[parts[-1]]
    block, unit, part = parts[:3]
    base = f"stages.{int(block[len('block'):]) - 1}.blocks.{int(unit[len('unit'):]) - 1}."
    if parts[3] == "proj":
        return base + "downsample.conv.weight"
    index = "abc".index(part) + 1
    return base + (f"conv{index}.weight" if parts[3] == "standardized_conv2d" else f"norm{index}.{_NORM[parts[-1]]}")


def to_timm(key: str, array):
    """A release array in timm's layout (kernels OIHW)."""
    array = np.asarray(array)
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array


def read_safetensors_header(path) -> tuple:
    """(header dict without "__metadata__", byte offset of the data) of a safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than its 8-byte header length).")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path} is not a safetensors file (header length {length} of a {size}-byte file).")
        try:
            header = json.loads(stream.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON: {error}).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object).")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + length, size - 8 - length
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (truncated?).")
    return header, data_start


def read_safetensors(path) -> dict:
    """Every tensor of a safetensors file as a float32 NumPy array."""
    header, data_start = read_safetensors_header(path)
    arrays = {}
    with open(path, "rb") as stream:
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            stream.seek(data_start + begin)
            raw = stream.read(end - begin)
            dtype, shape = entry["dtype"], tuple(entry["shape"])
            if dtype == "BF16":
                values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype in _DTYPES:
                values = np.frombuffer(raw, _DTYPES[dtype])
            else:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; BiT weights are floating point.")
            if values.size != int(np.prod(shape)):
                raise CheckpointError(f"{path}: tensor {name!r} holds {values.size} values for shape {shape}.")
            arrays[name] = values.reshape(shape).astype(np.float32)
    return arrays


def write_safetensors(path, arrays: dict) -> None:
    """Writes float32 arrays as a safetensors file (atomically): how timm's files are laid out."""
    header, offset, chunks = {}, 0, []
    for name, array in arrays.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with files.staged_file(path, overwrite=True) as staging, open(staging, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def architecture_of(names) -> tuple:
    """(Architecture, num_classes or None) of a timm BiT state dict, from its key names and shapes."""
    units = [0, 0, 0, 0]
    for name in names:
        match = re.match(r"^stages\.(\d)\.blocks\.(\d+)\.", name)
        if match and int(match.group(1)) < 4:
            units[int(match.group(1))] = max(units[int(match.group(1))], int(match.group(2)) + 1)
    if "stem.conv.weight" not in names or min(units) < 1:
        raise CheckpointError(f"Not a timm BiT (ResNetV2) state dict: units per block {tuple(units)}, "
                              f"keys such as {sorted(names)[:3]}.")
    width = names["stem.conv.weight"][0] // 64
    head = names.get("head.fc.weight")
    return Architecture(tuple(units), width), (head[0] if head else None)


def to_release_arrays(timm_arrays: dict, source="timm weights") -> dict:
    """The release `.npz` arrays (HWIO kernels, release shapes) of a timm BiT state dict."""
    shapes = {name: tuple(np.shape(array)) for name, array in timm_arrays.items()}
    architecture, num_classes = architecture_of(shapes)
    arrays = {}
    for entry in layout.checkpoint_layout(architecture, num_classes):
        name = timm_key(entry.key)
        if name not in timm_arrays:
            raise CheckpointError(f"{source}: missing timm key {name!r} (release key {entry.key}).")
        array = np.asarray(timm_arrays[name], "float32")
        array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
        if array.size != int(np.prod(entry.shape)):
            raise CheckpointError(f"{source}: timm key {name!r} has shape {shapes[name]}; "
                                  f"{architecture.name} needs {entry.shape} (HWIO).")
        arrays[entry.key] = array.reshape(entry.shape)
    return arrays


def as_npz(path, directory=None) -> str:
    """A timm-layout safetensors file as a release-layout `.npz` in the cache (converted once,
    keyed by the file's SHA-256, written atomically); returns its path."""
    from bit_keras import download

    digest = download.sha256_of(path)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.fspath(path))).rsplit(".", 1)[0].lstrip(".")
    target = os.path.join(download.cache_dir(directory), f"{stem}-timm-{digest[:16]}.npz")
    if not os.path.isfile(target):
        arrays = to_release_arrays(read_safetensors(path), source=os.fspath(path))
        with files.staged_file(target, overwrite=True) as staging:
            np.savez(staging, **arrays)
    return target


def hub_name(name) -> str | None:
    """timm's model name in an `hf://timm/NAME` handle, else None."""
    return name[len(HF_SCHEME):].strip("/") if isinstance(name, str) and name.startswith(HF_SCHEME) else None


def fetch(name, directory=None) -> str:
    """timm's safetensors of `name` from the Hugging Face Hub, through our verified cache, as an `.npz`."""
    from bit_keras import download

    url = HF_URL.format(name=name)
    path = download.fetch(url, f"{name}.safetensors", directory=directory, verify=_verify_download)
    return as_npz(path, directory)


def _verify_download(source, path) -> None:
    """What the download cache checks before keeping a timm file: its header and key names."""
    try:
        header, _ = read_safetensors_header(path)
        architecture_of({name: tuple(entry["shape"]) for name, entry in header.items()})
    except (CheckpointError, KeyError, TypeError, ValueError) as error:
        raise DownloadError(f"{source} is not a usable timm BiT safetensors file ({error}); nothing was cached.") from None
