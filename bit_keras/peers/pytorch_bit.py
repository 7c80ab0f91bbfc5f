"""BiT ResNet-v2 as a PyTorch user writes it: the peer `bit_keras bench --baseline pytorch` races.

An eager `nn.Module` in the form of the official BiT PyTorch model and timm's `resnetv2`:
`F.conv2d` on per-call standardized kernels, `nn.GroupNorm(32, C, eps=1e-5)`, zero padding
before the stem's max-pool, the projection on the pre-activated input. It takes what our
models take (float NCHW images in [0, 1], mapped to [-1, 1] inside) and loads a
release-layout `.npz` dictionary, so both sides compute the same function from the same
weights (tests/test_pytorch_peer.py checks the logits against the NumPy reference).
Imports torch; nothing else in bit_keras does outside the PyTorch backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WS_EPSILON = 1e-10   # inside the square root, as in every framework of the release
GN_EPSILON = 1e-5


class StdConv2d(nn.Conv2d):
    """A convolution whose kernel is standardized per output channel on every call."""

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + WS_EPSILON)
        return F.conv2d(x, weight, None, self.stride, self.padding)


def _gn(channels):
    return nn.GroupNorm(32, channels, eps=GN_EPSILON)


class PreActBottleneck(nn.Module):
    def __init__(self, cin, mid, out, stride):
        super().__init__()
        self.gn1, self.conv1 = _gn(cin), StdConv2d(cin, mid, 1, bias=False)
        self.gn2, self.conv2 = _gn(mid), StdConv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.gn3, self.conv3 = _gn(mid), StdConv2d(mid, out, 1, bias=False)
        self.downsample = StdConv2d(cin, out, 1, stride=stride, bias=False) if stride != 1 or cin != out else None

    def forward(self, x):
        h = F.relu(self.gn1(x))
        shortcut = self.downsample(h) if self.downsample is not None else x
        h = self.conv1(h)
        h = self.conv2(F.relu(self.gn2(h)))
        h = self.conv3(F.relu(self.gn3(h)))
        return h + shortcut


class ResNetV2(nn.Module):
    """BiT-R{depth}x{width}: `block_units` units per block, `num_classes` logits."""

    def __init__(self, block_units, width, num_classes):
        super().__init__()
        self.root = StdConv2d(3, 64 * width, 7, stride=2, padding=3, bias=False)
        blocks, cin = [], 64 * width
        for index, units in enumerate(block_units):
            mid = 64 * width * 2 ** index
            stride = 1 if index == 0 else 2
            blocks.append(nn.Sequential(*[PreActBottleneck(cin if u == 0 else 4 * mid, mid, 4 * mid,
                                                           stride if u == 0 else 1) for u in range(units)]))
            cin = 4 * mid
        self.blocks = nn.Sequential(*blocks)
        self.norm = _gn(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, images):
        x = self.root(images * 2.0 - 1.0)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # zeros, not -inf, as the release
        x = F.relu(self.norm(self.blocks(x)))
        return self.head(x.mean(dim=(2, 3)))


def load_release(model: ResNetV2, arrays) -> ResNetV2:
    """Copies a release-layout dictionary (`resnet/block1/unit01/a/...`) into `model`."""
    def conv(module, key):
        module.weight.data = torch.from_numpy(arrays[f"resnet/{key}/standardized_conv2d/kernel"]).permute(3, 2, 0, 1).contiguous()

    def norm(module, key):
        module.weight.data = torch.from_numpy(arrays[f"resnet/{key}group_norm/gamma"]).clone()
        module.bias.data = torch.from_numpy(arrays[f"resnet/{key}group_norm/beta"]).clone()

    conv(model.root, "root_block")
    for b, block in enumerate(model.blocks, start=1):
        for u, unit in enumerate(block, start=1):
            path = f"block{b}/unit{u:02d}"
            for letter, gn, cv in (("a", unit.gn1, unit.conv1), ("b", unit.gn2, unit.conv2), ("c", unit.gn3, unit.conv3)):
                norm(gn, f"{path}/{letter}/")
                conv(cv, f"{path}/{letter}")
            if unit.downsample is not None:
                conv(unit.downsample, f"{path}/a/proj")
    norm(model.norm, "")
    model.head.weight.data = torch.from_numpy(arrays["resnet/head/conv2d/kernel"][0, 0].T).contiguous()
    model.head.bias.data = torch.from_numpy(arrays["resnet/head/conv2d/bias"]).clone()
    return model
