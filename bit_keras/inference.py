"""Inference-only models: weight standardization folded into plain convolutions.

A `StandardizedConv2D` standardizes its kernel on every call, which training needs (the
kernel moves) but serving does not (the kernel is fixed). `fold_standardization` returns
a copy of a model whose convolutions are plain `Conv2D` layers holding the standardized
kernels, so an exported serving signature does that work once, at export time.
"""

from __future__ import annotations

import keras

from bit_keras.layers import StandardizedConv2D, standardize_kernel


def _plain_conv(layer: StandardizedConv2D) -> keras.layers.Conv2D:
    config = layer.get_config()
    config.pop("epsilon", None)
    return keras.layers.Conv2D.from_config(config)


def fold_standardization(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` whose standardized convolutions are plain `Conv2D`.

    Layer names, dtype policies, inputs and outputs are those of `model`; the outputs are
    equal within float32 rounding. The copy shares no variables with `model`, so later
    training of `model` does not reach it: fold again after changing weights.

    Args:
        model: a functional Keras model, e.g. `BiTResNetV2` or `feature_maps(...)`.

    Returns:
        A plain functional `keras.Model` named like `model`.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(f"fold_standardization needs a built functional Keras model (such as "
                         f"BiTResNetV2); received {type(model).__name__}.")
    # A plain Functional view, so clone_model re-creates layers one by one instead of
    # rebuilding the subclass from its config.
    graph = keras.Model(model.input, model.output, name=model.name)
    folded_layers = {}

    def clone(layer):
        if isinstance(layer, StandardizedConv2D):
            conv = _plain_conv(layer)
            folded_layers[layer.name] = layer
            return conv
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(graph, clone_function=clone)
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if layer.name in folded_layers:
            weights = [keras.ops.convert_to_numpy(standardize_kernel(source.kernel, source.epsilon))]
            if source.use_bias:
                weights.append(keras.ops.convert_to_numpy(source.bias))
            layer.set_weights(weights)
        elif source.weights:
            layer.set_weights(source.get_weights())
    return folded
