"""neuralcodes: Neural Codes for Image Retrieval (Babenko et al., ECCV 2014) on Tiny ImageNet."""

__version__ = "0.3.0"
