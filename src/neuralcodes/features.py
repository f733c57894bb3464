"""The features a model gives by name: declared once here, read everywhere (settings, CLI help,
estimates, the codes stage, the report, the web app, the methods study).

A *tap* is a position in the network's forward pass, named as the model names it (see
:data:`TAPS`: ``conv1`` ... ``conv5`` after the convolution and its batch norm, *before* the pool
and the ReLU; ``pool1``, ``pool2``, ``pool5`` after the pool, before the ReLU; ``fc6``, ``fc7``
before their ReLU). A :class:`Feature` is what callers ask for: a tap, optionally reduced (ReLU,
flatten, a pooling) to a map (N, C, H, W) or a code (N, D). The model computes any set of them in
one forward pass (:meth:`neuralcodes.model.ConvNet.forward_intermediates`), stopping after the last
tap it needs.

*Codes* (``kind="code"``) are the vectors retrieval ranks by: the paper's three (``"5"``, ``"6"``,
``"7"``: pre-ReLU, as the course's solution used; the post-ReLU variant is their ReLU) and any
registered later. Settings (``retrieval.layers``), ``neuralcodes search --layer`` and the codes
stage read :func:`code_names` when they run, so one :func:`register` call anywhere before makes a
new feature usable by all of them, e.g. a max-pooled conv4 vector::

    register(Feature("conv4-mac", "max over conv4's ReLU map", kind="code", tap="conv4",
                     reduce=lambda t: t.relu().amax((2, 3)), shape=lambda s: s[:1]))

Nothing here imports torch: the reductions use tensor methods only, so the settings and the
command line read the declaration without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neuralcodes.errors import NeuralCodesError

#: The ConvNet's taps in forward order, each with what it holds.
TAPS: dict[str, str] = {
    "conv1": "conv1 (4x4) + batch norm, before its 3x3/2 pool and ReLU",
    "pool1": "conv1 after its 3x3/2 pool, before the ReLU",
    "conv2": "conv2 (5x5) + batch norm, before its pool and ReLU",
    "pool2": "conv2 after its 3x3/2 pool, before the ReLU",
    "conv3": "conv3 (3x3) + batch norm, before its ReLU (no pool)",
    "conv4": "conv4 (3x3) + batch norm, before its ReLU (no pool)",
    "conv5": "conv5 (3x3) + batch norm, before its pool and ReLU",
    "pool5": "conv5 after its 3x3/2 pool, before the ReLU",
    "fc6": "fc6, before its ReLU (dropout never applied)",
    "fc7": "fc7, before its ReLU (dropout never applied)",
}

Shape = tuple[int, ...]


def _relu(t: Any) -> Any:
    return t.relu()


def _flatten(t: Any) -> Any:
    return t.flatten(1)


def _flat_shape(s: Shape) -> Shape:
    return (math.prod(s),)


@dataclass(frozen=True)
class Feature:
    """One feature by name: what it means, which tap it is read from and how it is reduced."""

    name: str  # how settings, files (``code<name>``), the CLI and the API name it
    meaning: str  # one line for help texts and the API
    kind: str  # "code": a vector (N, D) to rank by; "map": a feature map (N, C, H, W)
    tap: str  # the network position it is read from (a key of TAPS)
    reduce: Callable[[Any], Any] | None = None  # tap tensor -> feature (None: the tap as is)
    shape: Callable[[Shape], Shape] | None = None  # tap shape -> feature shape (None: same)
    label: str = ""  # how the report and the web app name it ("" : the name)
    paper: bool = False  # one of the paper's codes (the study's default layers)
    alias: str = ""  # its row name in the methods study ("" : the name)

    def __post_init__(self) -> None:
        if self.kind not in ("code", "map"):
            raise ValueError(f"feature {self.name!r}: kind must be 'code' or 'map'")
        if self.tap not in TAPS:
            raise ValueError(f"feature {self.name!r}: unknown tap {self.tap!r} (one of "
                             f"{', '.join(TAPS)})")

    def apply(self, tap: Any) -> Any:
        """This feature from its tap's tensor."""
        return tap if self.reduce is None else self.reduce(tap)

    def shape_of(self, tap_shape: Shape) -> Shape:
        """This feature's shape for one image, from its tap's."""
        return tuple(tap_shape) if self.shape is None else tuple(self.shape(tuple(tap_shape)))

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def row(self) -> str:
        return self.alias or self.name


_FEATURES: dict[str, Feature] = {}


def register(feature: Feature) -> Feature:
    """Add ``feature`` to the registry (its name must be new); returns it."""
    if feature.name in _FEATURES:
        raise ValueError(f"feature {feature.name!r} is already registered")
    _FEATURES[feature.name] = feature
    return feature


def unregister(name: str) -> None:
    """Remove a registered feature (tests; the built-in ones stay)."""
    if _FEATURES.get(name) in _BUILTIN:
        raise ValueError(f"feature {name!r} is built in")
    _FEATURES.pop(name, None)


def features(kind: str | None = None) -> tuple[Feature, ...]:
    """Every registered feature (of ``kind``), in registration order."""
    return tuple(f for f in _FEATURES.values() if kind is None or f.kind == kind)


def code_names() -> tuple[str, ...]:
    """Names of every feature usable as a retrieval code (``retrieval.layers``, ``--layer``)."""
    return tuple(f.name for f in features("code"))


def map_names() -> tuple[str, ...]:
    """Names of every feature map (the methods study pools them)."""
    return tuple(f.name for f in features("map"))


def paper_codes() -> tuple[str, ...]:
    """The paper's codes: layers 5, 6 and 7 (the default ``retrieval.layers``)."""
    return tuple(f.name for f in features("code") if f.paper)


def get(name: str) -> Feature:
    """The feature ``name``; one clear line for an unknown name."""
    try:
        return _FEATURES[name]
    except KeyError:
        raise NeuralCodesError(f"unknown feature '{name}' (choose from "
                               f"{', '.join(_FEATURES)})") from None


def code_layers(layers: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The codes the codes stage computes for ``retrieval.layers``: the paper's three (the
    study compares them), then any other code asked for, in registry order."""
    return tuple(n for n in code_names() if n in paper_codes() or n in layers)


def labels() -> dict[str, str]:
    """Feature name -> how the report and the web app name it."""
    return {f.name: f.title for f in _FEATURES.values()}


def _builtin() -> tuple[Feature, ...]:
    # conv5 (before its pool, 16x16 for 64x64 images) is the map pooled descriptors (MAC, SPoC,
    # GeM, R-MAC) are meant for, as in Tolias et al. and Radenovic et al., who drop the
    # network's last max-pool: the pool's overlapping 3x3 windows count most cells of the 16x16
    # map twice or four times in a sum (SPoC, GeM), and R-MAC's regions need the finer grid (3
    # scales fit in 16x16, hardly in 8x8); MAC is the same on both (a max of maxima). ReLU and
    # max-pool commute, so pool5 is exactly the ReLU of the layer-5 code's map.
    maps = [Feature(f"conv{i}", f"ReLU(conv{i}) before its 3x3/2 pool", "map", f"conv{i}",
                    _relu) for i in (1, 2, 5)]
    maps += [Feature(f"pool{i}", f"ReLU(conv{i}) after its 3x3/2 pool", "map", f"pool{i}",
                     _relu) for i in (1, 2, 5)]
    maps += [Feature(f"conv{i}", f"ReLU(conv{i}) (no pool follows)", "map", f"conv{i}", _relu)
             for i in (3, 4)]
    order = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    maps.sort(key=lambda f: order.index(f.name))
    codes = [
        Feature("5", "layer 5: the last pool's map, flattened, pre-ReLU", "code", "pool5",
                _flatten, _flat_shape, "layer 5 (last pool)", True, "layer5"),
        Feature("6", "layer 6: fc6, pre-ReLU", "code", "fc6", label="layer 6 (fc6)",
                paper=True, alias="fc6"),
        Feature("7", "layer 7: fc7, pre-ReLU", "code", "fc7", label="layer 7 (fc7)",
                paper=True, alias="fc7"),
    ]
    return (*maps, *codes)


_BUILTIN = _builtin()
for _f in _BUILTIN:
    register(_f)
