"""The assignment's ConvNet (architecture only; the features it gives by name are declared in
:mod:`neuralcodes.features`), its Keras-'same' layers, the model registry (:mod:`.registry`),
the model as training and inference build it (:mod:`.build`) and its checkpoint files
(:mod:`.checkpoint`)."""

from neuralcodes.model.convnet import ConvNet, count_parameters, layer_table
from neuralcodes.model.layers import PaddedConv2d, SameMaxPool2d, same_conv2d, same_padding
from neuralcodes.model.registry import (
    checkpoint_meta,
    create_model,
    model_names,
    model_spec,
    register_model,
)

__all__ = ["ConvNet", "PaddedConv2d", "SameMaxPool2d", "checkpoint_meta", "count_parameters",
           "create_model", "layer_table", "model_names", "model_spec", "register_model",
           "same_conv2d", "same_padding"]
