"""The assignment's ConvNet (architecture only) and its Keras-'same' layers."""

from neuralcodes.model.convnet import (
    CODE_LAYERS,
    FEATURE_MAPS,
    ConvNet,
    count_parameters,
    layer_table,
)
from neuralcodes.model.layers import PaddedConv2d, SameMaxPool2d, same_conv2d, same_padding

__all__ = ["CODE_LAYERS", "FEATURE_MAPS", "ConvNet", "PaddedConv2d", "SameMaxPool2d",
           "count_parameters", "layer_table", "same_conv2d", "same_padding"]
