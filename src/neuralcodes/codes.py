"""Compatibility: the old home of the neural-codes functions, now in
:mod:`neuralcodes.retrieval.codes` (``Codes`` is :class:`~neuralcodes.retrieval.CodeSet`) and
:mod:`neuralcodes.retrieval.images`. Import from :mod:`neuralcodes.retrieval`; this module goes
once every caller has moved."""

from neuralcodes.retrieval import (
    DEFAULT_BATCH,
    CodeSet,
    extract_code_variants,
    extract_codes,
    image_files,
    l2_normalize,
    load_codes,
    read_image,
    read_images,
    run_codes,
)

Codes = CodeSet

__all__ = ["DEFAULT_BATCH", "CodeSet", "Codes", "extract_code_variants", "extract_codes",
           "image_files", "l2_normalize", "load_codes", "read_image", "read_images", "run_codes"]
