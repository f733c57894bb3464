"""neuralcodes: Neural Codes for Image Retrieval (Babenko et al., ECCV 2014) on Tiny ImageNet.

The Python API (:mod:`neuralcodes.api`): ``run = neuralcodes.open_run("runs/base")``, then
``run.search(image, k=5, index="photos")``, ``run.codes(images, layer="6")`` and
``run.index("~/Pictures", name="photos")``.
"""

from __future__ import annotations

from typing import Any

from neuralcodes.versions import __version__

__all__ = ["Run", "SearchResult", "__version__", "open_run"]


def __getattr__(name: str) -> Any:  # the API imports torch: only when it is used
    if name in ("open_run", "Run", "SearchResult"):
        from neuralcodes import api

        return getattr(api, name)
    raise AttributeError(f"module 'neuralcodes' has no attribute {name!r}")
