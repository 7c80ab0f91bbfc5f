"""Inference-only models: weight standardization folded into plain convolutions.

A `StandardizedConv2D` standardizes its kernel on every call, which training needs (the
kernel moves) but serving does not (the kernel is fixed). `fold_standardization` returns
a copy of a model whose convolutions are plain `Conv2D` layers holding the standardized
kernels, so an exported serving signature does that work once, at export time.

`standardized_kernels(model)` does the same work once per `predict` call without a copy:
for the length of the call the kernel variables hold their standardized values (computed
once, eagerly), the convolutions skip standardization, and the raw kernels are put back
bit for bit afterwards. Weights cannot change inside one `predict`, so this is exact after
any `fit`, `load_weights`, `set_weights` or assignment; `BiTBackbone.predict`
(`StandardizesOncePerPredict`) and `BiTImageClassifier.predict` use it. The compiled predict
function that reads the standardized kernels is a second one, kept apart from Keras' own and
only ever run inside the context, so no trace (tf.function, jax.jit) mixes the two.

Every research setting of `BiTBackbone` goes through: BatchNorm layers are copied with
their moving statistics, drop-path and dropout with their rates (the identity at
inference), and a network without weight standardization has nothing to fold (a copy).
"""

from __future__ import annotations

import contextlib

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


_FOLDED_PREDICT = "_bit_keras_folded_predict"  # model attribute: (compile settings, the predict function)


def _compile_token(model):
    """What a predict function was built for: a recompile (new settings) needs a new one."""
    return getattr(model, "_compile_config", None), getattr(model, "jit_compile", None)


def _same_compile(token, other) -> bool:
    return token[0] is other[0] and token[1] == other[1]


@contextlib.contextmanager
def standardized_kernels(model: keras.Model):
    """For the length of the block, `model`'s standardized convolutions hold standardized kernels.

    Each kernel is standardized once (eagerly, `standardize_kernel`) and assigned to its own
    variable; the layers skip standardization meanwhile, and `model.predict_function` is a
    separate one built for that state. On exit (also on an error) the raw kernels are assigned
    back, exactly, and Keras' own predict function returns. Only for inference: nothing may
    train or save the model inside the block (it would see standardized kernels).
    """
    convs = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, StandardizedConv2D) and layer.built and not layer.lora_enabled]
    mine = [layer for layer in convs if not layer.holds_standardized_kernel]  # an outer block holds the rest
    token = _compile_token(model)
    own_function = model.predict_function
    cached = getattr(model, _FOLDED_PREDICT, None)
    model.predict_function = cached[1] if cached is not None and _same_compile(cached[0], token) else None
    raw = []
    try:
        for layer in mine:
            raw.append(keras.ops.copy(layer._kernel.value))
            layer._kernel.assign(standardize_kernel(raw[-1], layer.epsilon))
            layer.holds_standardized_kernel = True
        yield model
    finally:
        for layer, kernel in zip(mine, raw):
            layer._kernel.assign(kernel)
            layer.holds_standardized_kernel = False
        if model.predict_function is not None:
            # Past Keras' and TensorFlow's attribute tracking: a private cache, never saved or exported.
            object.__setattr__(model, _FOLDED_PREDICT, (token, model.predict_function))
        model.predict_function = own_function


class StandardizesOncePerPredict:
    """`predict` standardizes each kernel once per call instead of once per batch (`standardized_kernels`).

    `predict_on_batch` and direct calls keep standardizing on every call: nothing tells them
    that the weights did not change since the last one. For many such calls on fixed
    weights, fold once instead (`fold_standardization`).
    """

    def predict(self, *args, **kwargs):
        with standardized_kernels(self):
            return super().predict(*args, **kwargs)
