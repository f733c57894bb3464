"""Image retrieval with neural codes (assignment Task 3).

    metrics.py   pure measures: AP/mAP/precision@k (the ranking rule), top-k accuracy, chance
                 levels, paired bootstrap intervals
    codes.py     neural codes of images and of a run's splits; CodeSet (the .npz file)
    images.py    the user's own image files, found in a folder and decoded into 64x64 RGB
                 (read_image; the decoding itself: neuralcodes.imageio)
    index.py     CodeIndex: the one exact top-k (exact_top_k) or FAISS IVF/HNSW
    collection.py  an index of a folder of the user's images on disk (float16, memory-mapped,
                 centred codes, layer 5 by PCA; FAISS IVF-PQ when large): FolderIndex
    indexing.py  build_index: build or update it, streamed, incremental, resumable
    fitting.py   the transform of an index's codes (centring, layer-5 PCA), fitted
    pca.py       PCA of codes and the PCA study
    evidence.py  measured layer differences with their baselines
    study.py     run_study: the ood study (map.json, figures, evidence.json, pca.json)
    search.py    Searcher, search, search_many, duplicate_groups, Hit: own images against the
                 ood set or an index
    labelled.py  measure_collection: a labelled index measured (mAP, mAP@k, P@k, recall@k)
    methods/     beyond the paper: pooled conv descriptors, whitening, re-ranking and their
                 study (not wired into the commands yet)
"""

from neuralcodes.retrieval.codes import (
    DEFAULT_BATCH,
    SPLITS,
    VARIANT,
    CodeSet,
    extract_code_variants,
    extract_codes,
    l2_normalize,
    ood_codes,
    run_codes,
    split_indices,
)
from neuralcodes.retrieval.evidence import colour_histograms, layer_evidence
from neuralcodes.retrieval.images import image_files, read_image, read_images
from neuralcodes.retrieval.index import KINDS, CodeIndex, exact_top_k
from neuralcodes.retrieval.indexing import IndexUpdate, build_index
from neuralcodes.retrieval.metrics import (
    RankingMetrics,
    chance_average_precision,
    chance_map,
    paired_bootstrap,
    ranking_metrics,
    self_retrieval_metrics,
)
from neuralcodes.retrieval.pca import PCA, pca_study
from neuralcodes.retrieval.search import Hit, Searcher, duplicate_groups, search, search_many
from neuralcodes.retrieval.study import PCA_FIT_IMAGES, evaluate_codes, run_study

load_codes = CodeSet.load  #: read a codes file (the name other modules import)

__all__ = [
    "DEFAULT_BATCH", "KINDS", "PCA", "PCA_FIT_IMAGES", "SPLITS", "VARIANT", "CodeIndex",
    "CodeSet", "Hit", "IndexUpdate", "RankingMetrics", "Searcher", "build_index",
    "chance_average_precision", "chance_map", "colour_histograms", "duplicate_groups",
    "evaluate_codes", "exact_top_k", "extract_code_variants", "extract_codes",
    "image_files", "l2_normalize", "layer_evidence", "load_codes", "ood_codes",
    "paired_bootstrap", "pca_study", "ranking_metrics", "read_image", "read_images",
    "run_codes", "run_study", "search", "search_many", "self_retrieval_metrics",
    "split_indices",
]
