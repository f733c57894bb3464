"""Lineage: every derived artifact records what made it; a stage reruns exactly when that changed.

A *fingerprint* is a JSON object::

    {"stage": "codes", "format": 1,
     "weights": {"file": "best.pt", "epoch": 4, "sha256": "9c1e..."},   # the content hash
     "settings": {"train.precision": "fp32", "split": "ood", "relu": false, ...},
     "inputs": {"codes": "<digest of the input's fingerprint>", ...}}

``weights`` is the sha256 of the checkpoint file's bytes (hashed once per process and file
version), never a file time, so a run directory that is copied or moved stays current. Each
stage's fingerprint holds the settings that change its result and the digests of the
fingerprints of the artifacts it reads, so a change anywhere upstream reaches everything
downstream. Every artifact carries its own fingerprint under the name ``made_by``:

- JSON (eval.json, map.json, top{k}.json, evidence.json, pca.json, methods.json, a cache's
  manifest.json): a ``made_by`` key;
- .npz (codes, indexes): a ``made_by`` member holding the JSON text;
- PNG (figures): a ``made_by`` text chunk;
- Markdown / HTML (the report): a last line ``<!-- made_by: {...} -->``.

(``eval.csv`` is the same table as eval.json, written with it.) :func:`check` compares an
artifact's recorded fingerprint with the current one and says why they differ in words;
:func:`needs_run` turns that into the one line a stage logs. The stages' fingerprints are built
here (:func:`eval_fingerprint` ... :func:`report_fingerprint`); the file names are in
:mod:`neuralcodes.runs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuralcodes.errors import NeuralCodesError

log = logging.getLogger(__name__)

KEY = "made_by"
#: Format version of each stage's artifacts: bump one when what the stage writes changes, and
#: every artifact written before is recomputed.
FORMATS: dict[str, int] = {"eval": 1, "codes": 1, "map": 1, "figures": 1, "evidence": 1,
                           "pca": 1, "report": 1, "index": 2, "cache": 1, "methods": 1,
                           "collection": 1}
_MD_PREFIX = "<!-- made_by: "
_MD_SUFFIX = " -->"
_HASHES: dict[tuple[str, int, int], tuple[str, int]] = {}  # (path, size, mtime_ns) -> (sha, epoch)

Fingerprint = dict[str, Any]


# --------------------------------------------------------------------------- weights


def weights_identity(path: str | Path) -> dict[str, Any]:
    """``{"file", "epoch", "sha256"}`` of a checkpoint: the sha256 of its bytes (computed once
    per process for each (path, size, mtime) it sees) and the epoch it records."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NeuralCodesError(f"{path}: checkpoint not found") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _HASHES[key] = (h.hexdigest(), _epoch(path))
    sha, epoch = _HASHES[key]
    return {"file": path.name, "epoch": epoch, "sha256": sha}


def _epoch(path: Path) -> int:
    import torch

    try:  # mmap: only the few bytes of the epoch are read, not the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or foreign file
        raise NeuralCodesError(f"{path}: not a readable neuralcodes checkpoint ({e})") from None
    return int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0


def describe_weights(w: dict[str, Any] | None) -> str:
    """``best.pt, epoch 4, sha256 9c1e2b3a4d5f`` (``unknown weights`` for None)."""
    if not w:
        return "unknown weights"
    return f"{w.get('file')}, epoch {w.get('epoch')}, sha256 {str(w.get('sha256'))[:12]}"


# --------------------------------------------------------------------------- fingerprints


def make(stage: str, *, weights: dict[str, Any] | None = None,
         settings: dict[str, Any] | None = None, inputs: dict[str, str] | None = None
         ) -> Fingerprint:
    """A stage's fingerprint (JSON-ready: tuples become lists)."""
    fp = {"stage": stage, "format": FORMATS[stage], "weights": weights,
          "settings": settings or {}, "inputs": inputs or {}}
    return json.loads(json.dumps(fp))


def digest(fp: Fingerprint) -> str:
    """A short hash of a fingerprint: how downstream fingerprints name their inputs."""
    text = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_fingerprint(dataset: str, files: str, cache_format: int,
                      image_shape: Sequence[int]) -> Fingerprint:
    """An image cache (its ``manifest.json``): which dataset read which files (``files``: the
    source's content checksum), into which cache format and image shape. Its :func:`digest`
    names the cache folder, so a changed source is decoded into a new cache."""
    return make("cache", settings={"dataset": dataset, "cache.format": cache_format,
                                   "image_shape": list(image_shape)}, inputs={"files": files})


def eval_fingerprint(weights: dict[str, Any], precision: str, splits_hash: str) -> Fingerprint:
    """eval.json: the weights evaluated, in which precision, on which partition."""
    return make("eval", weights=weights, settings={"train.precision": precision,
                                                   "data.splits_hash": splits_hash})


def codes_fingerprint(weights: dict[str, Any], split: str, relu: bool, precision: str,
                      splits_hash: str, layers: Sequence[str] = (),
                      paper: Sequence[str] = ()) -> Fingerprint:
    """codes/<split>-<pre|post>relu.npz: the paper's codes (layers 5, 6 and 7) and any other
    code layer; ``layers`` is recorded only when it is not just the ``paper``'s, so files
    written before it was recorded stay current."""
    settings = {"split": split, "relu": bool(relu), "train.precision": precision,
                "data.splits_hash": splits_hash}
    if tuple(layers) != tuple(paper):
        settings["layers"] = list(layers)
    return make("codes", weights=weights, settings=settings)


def map_fingerprint(codes: dict[bool, Fingerprint], layers: Sequence[str]) -> Fingerprint:
    """map.json: the ood codes of both variants, the layers studied."""
    return make("map", weights=codes[False]["weights"],
                settings={"retrieval.layers": list(layers)},
                inputs={f"codes-{'post' if v else 'pre'}relu": digest(fp)
                        for v, fp in sorted(codes.items())})


def figures_fingerprint(codes: Fingerprint, layers: Sequence[str], k: int,
                        figure_queries: int) -> Fingerprint:
    """top{k}.json and the top-k figures."""
    return make("figures", weights=codes["weights"], inputs={"codes": digest(codes)},
                settings={"retrieval.relu": codes["settings"]["relu"],
                          "retrieval.layers": list(layers), "retrieval.k": k,
                          "retrieval.figure_queries": figure_queries})


def evidence_fingerprint(codes: Fingerprint, layers: Sequence[str], k: int,
                         figure_queries: int) -> Fingerprint:
    """evidence.json (its top-k comparisons use k and the first figure_queries queries)."""
    return make("evidence", weights=codes["weights"], inputs={"codes": digest(codes)},
                settings={"retrieval.relu": codes["settings"]["relu"],
                          "retrieval.layers": list(layers), "retrieval.k": k,
                          "retrieval.figure_queries": figure_queries})


def pca_fingerprint(codes: Fingerprint, layers: Sequence[str], pca_dims: Sequence[int],
                    fit_images: int) -> Fingerprint:
    """pca.json and pca.png (the PCA is fitted on training codes of the same weights)."""
    return make("pca", weights=codes["weights"], inputs={"codes": digest(codes)},
                settings={"retrieval.relu": codes["settings"]["relu"],
                          "retrieval.layers": list(layers),
                          "retrieval.pca_dims": list(pca_dims), "pca_images": fit_images})


def methods_fingerprint(codes: Fingerprint, families: Sequence[str], train_images: int
                        ) -> Fingerprint:
    """methods.json and methods.png: the weights (through the ood codes' fingerprint, whose
    settings are the ReLU variant, precision and partition the study's descriptors share),
    the families run and the training sample size."""
    return make("methods", weights=codes["weights"], inputs={"codes": digest(codes)},
                settings={"retrieval.relu": codes["settings"]["relu"],
                          "retrieval.methods": list(families), "train_images": train_images})


def report_fingerprint(weights: dict[str, Any], inputs: dict[str, str]) -> Fingerprint:
    """report.md and report.html: the fingerprints of everything they state."""
    return make("report", weights=weights, inputs=inputs)


def index_fingerprint(weights: dict[str, Any], run: str, relu: bool, precision: str,
                      layers: Sequence[str], dims: dict[str, int], transform: dict[str, Any]
                      ) -> Fingerprint:
    """An index of the user's images: the run, its weights, the code sizes it stores and the
    transform of its codes (centring, PCA: fitted on training codes of the same weights)."""
    return make("index", weights=weights, settings={
        "run": run, "relu": bool(relu), "train.precision": precision, "layers": list(layers),
        "dims": dims, "transform": transform})


def collection_fingerprint(index: Fingerprint, entries: str, generation: int,
                           ks: Sequence[int]) -> Fingerprint:
    """The measurement of a labelled index (retrieval.json, its figure and report): the index's
    own fingerprint, its generation and the digest of its file list, and the k measured."""
    return make("collection", weights=index.get("weights"), settings={
        "ks": list(ks), "index.generation": int(generation)},
        inputs={"index": digest(index), "entries": entries})


# --------------------------------------------------------------------------- reading, checking


def recorded(path: str | Path) -> Fingerprint | None:
    """The fingerprint an artifact records (None: it records none, or cannot be read)."""
    path = Path(path)
    try:
        suffix = path.suffix.lower()
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                found = json.load(f).get(KEY)
        elif suffix == ".npz":
            import numpy as np

            with np.load(path) as f:
                found = json.loads(str(f[KEY])) if KEY in f.files else None
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                text = getattr(im, "text", {}).get(KEY)
            found = json.loads(text) if text else None
        else:  # Markdown, HTML: the last line
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 65536))
                last = f.read().decode("utf-8", "replace").rstrip().rsplit("\n", 1)[-1]
            found = (json.loads(last[len(_MD_PREFIX):-len(_MD_SUFFIX)])
                     if last.startswith(_MD_PREFIX) and last.endswith(_MD_SUFFIX) else None)
    except (OSError, ValueError, KeyError, AttributeError, EOFError, zipfile.BadZipFile):
        return None  # damaged or foreign: it records nothing, so it is made again
    return found if isinstance(found, dict) else None


def text_line(fp: Fingerprint) -> str:
    """The line that records ``fp`` at the end of a Markdown or HTML file."""
    return _MD_PREFIX + json.dumps(fp, separators=(",", ":")).replace("--", "-\\u002d") + \
        _MD_SUFFIX


def png_metadata(fp: Fingerprint) -> dict[str, str]:
    """What ``savefig(metadata=...)`` writes into a PNG to record ``fp``."""
    return {KEY: json.dumps(fp, separators=(",", ":"))}


def explain(old: Fingerprint | None, new: Fingerprint) -> str | None:
    """Why an artifact that records ``old`` is not what ``new`` would make (None: it is)."""
    if old is None:
        return "it records nothing of what made it (written by an older neuralcodes)"
    if old == new:
        return None
    if old.get("stage") != new["stage"] or old.get("format") != new["format"]:
        return "it was written in another format (by another version of neuralcodes)"
    was, now = old.get("weights"), new.get("weights")
    if was != now:
        return (f"the weights changed since it was computed ({describe_weights(now)}; it was "
                f"made from {describe_weights(was)})")
    a, b = old.get("settings") or {}, new["settings"]
    changed = [f"{k} changed ({a.get(k)!r} -> {b.get(k)!r})"
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if changed:
        return "; ".join(changed)
    ins = [k for k in sorted(set(old.get("inputs") or {}) | set(new["inputs"]))
           if (old.get("inputs") or {}).get(k) != new["inputs"].get(k)]
    return f"its input{'s' if len(ins) > 1 else ''} {', '.join(ins)} changed" if ins else \
        "what made it changed"


def check(paths: Sequence[Path] | Path, fp: Fingerprint) -> str | None:
    """None when every one of ``paths`` exists and records ``fp``; else why not, in words
    naming the first file that is missing or stale."""
    for path in [paths] if isinstance(paths, Path) else paths:
        if not path.is_file():
            return f"{path.name} does not exist yet"
        why = explain(recorded(path), fp)
        if why:
            return f"{path.name}: {why}"
    return None


def is_current(path: Path, fp: Fingerprint) -> tuple[bool, str]:
    """(whether ``path`` records ``fp``, the reason in words)."""
    why = check(path, fp)
    return why is None, why or f"{path.name} is up to date"


def needs_run(stage: str, paths: Sequence[Path] | Path, fp: Fingerprint, *,
              force: bool = False) -> bool:
    """Whether a stage must (re)compute ``paths``; logs one line saying why, or that it is
    skipped, e.g. ``codes: ood-prerelu.npz: the weights changed since it was computed
    (best.pt is now epoch 4, ...): recomputing``."""
    if force:  # asked for: no line
        return True
    why = check(paths, fp)
    if why is None:
        first = paths if isinstance(paths, Path) else paths[0]
        log.info(f"{stage}: skipped: {first.name} is up to date "
                 f"({describe_weights(fp.get('weights'))})")
        return False
    if why.endswith("does not exist yet"):  # the stage's header says it runs: no line
        log.debug(f"{stage}: computing")
        return True
    log.info(f"{stage}: {why}: recomputing")
    return True


def stamped(obj: dict[str, Any], fp: Fingerprint) -> dict[str, Any]:
    """A JSON artifact's dict with its fingerprint (``made_by``) added."""
    return {**obj, KEY: fp}
