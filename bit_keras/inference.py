"""Inference-only models: weight standardization folded into plain convolutions.

A `StandardizedConv2D` standardizes its kernel on every call, which training needs (the
kernel moves) but serving does not (the kernel is fixed). `fold_standardization` returns
a copy of a model whose convolutions are plain `Conv2D` layers holding the standardized
kernels, so an exported serving signature does that work once, at export time.

Every research setting of `BiTBackbone` goes through: BatchNorm layers are copied with
their moving statistics, drop-path and dropout with their rates (the identity at
inference), and a network without weight standardization has nothing to fold (a copy).
"""

from __future__ import annotations

import keras

from bit_keras.layers import StandardizedConv2D, standardize_kernel
from bit_keras.errors import ConfigError


def _plain_conv(layer: StandardizedConv2D) -> keras.layers.Conv2D:
    config = layer.get_config()
    config.pop("epsilon", None)
    return keras.layers.Conv2D.from_config(config)


def rebuild(model: keras.Model, replace, weights_of=None) -> keras.Model:
    """A plain functional copy of a BiT model in which `replace(layer)` may swap layers.

    A classifier's backbone is inlined, so the copy is one graph of named layers.
    `replace(layer)` returns a new layer or None (keep a fresh copy of `layer`);
    `weights_of(source_layer)` gives the weights the copy gets (default: the source's own).
    The copy shares no variables with `model`.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ConfigError(f"Need a built functional Keras model (such as BiTBackbone or BiTImageClassifier); "
                         f"received {type(model).__name__}.")
    graph = _flat_graph(model)
    sources = {layer.name: layer for layer in graph.layers}

    def clone(layer):
        return replace(layer) or layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(graph, clone_function=clone)
    for layer in copy.layers:
        source = sources[layer.name]
        weights = weights_of(source) if weights_of else None
        if weights is None and source.weights:
            weights = source.get_weights()
        if weights:
            layer.set_weights(weights)
    return copy


def _flat_graph(model):
    """`model` as a plain Functional graph (so clone_model copies layer by layer), backbone inlined."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras.Model):
        return keras.Model(model.input, model.output, name=model.name)
    head = [layer for layer in model.layers if layer is not backbone and not isinstance(layer, keras.layers.InputLayer)]
    x = backbone.output
    for layer in head:  # the classifier's head is a chain: Dense, then the float32 logits
        x = layer(x)
    return keras.Model(backbone.input, x, name=model.name)


def fold_standardization(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` whose standardized convolutions are plain `Conv2D`.

    Layer names, dtype policies, inputs and outputs are those of `model`; the outputs are
    equal within float32 rounding. The copy shares no variables with `model`, so later
    training of `model` does not reach it: fold again after changing weights.

    Args:
        model: a `BiTBackbone`, `BiTImageClassifier` or `feature_maps(...)` model.
    """

    def fold(layer):
        return _plain_conv(layer) if isinstance(layer, StandardizedConv2D) else None

    def folded_weights(layer):
        if not isinstance(layer, StandardizedConv2D):
            return None
        weights = [keras.ops.convert_to_numpy(standardize_kernel(layer.kernel, layer.epsilon))]
        if layer.use_bias:
            weights.append(keras.ops.convert_to_numpy(layer.bias))
        return weights

    return rebuild(model, fold, folded_weights)
