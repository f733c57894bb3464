"""The assignment's ConvNet (architecture only) and its Keras-'same' layers; the model as training
and inference build it (:mod:`.build`) and its checkpoint files (:mod:`.checkpoint`)."""

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
