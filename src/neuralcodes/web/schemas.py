"""Pydantic models of the JSON API's responses (the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageItem(BaseModel):
    """An image of a database."""

    id: int = Field(description="its id: position in the ood set (or in the index)")
    label: int | None = Field(description="dataset class index (None for index images)")
    wnid: str | None = Field(description="WordNet id of the class (None for index images)")
    class_name: str = Field(description="class name; the file name for index images")
    url: str = Field(description="its 64x64 PNG, relative to the app's root")
    source: Literal["ood", "index"] = Field("ood", description="the database it belongs to")
    folder: str | None = Field(None, description="index images: its folder, relative to the "
                               "indexed folder (\"\" for that folder itself)")
    original_url: str | None = Field(None, description="index images: the original file")


class HitOut(ImageItem):
    """One result of a search."""

    rank: int = Field(description="1 = most similar")
    score: float = Field(description="cosine similarity of the unit-length codes")
    same_class: bool | None = Field(description="same class as the query (None: the query has "
                                    "no class, e.g. an upload)")
    same: str | None = Field(None, description="index hits: \"same file\" (the query's own "
                             "file) or \"identical code\" (the query's code, another file)")


class LayerResult(BaseModel):
    """The results of one layer's codes."""

    layer: str = Field(description="a code layer (retrieval.layers): the paper's 5, 6, 7 or a "
                       "registered code feature; \"conv5/<method>\" for a pooled descriptor")
    ap: float | None = Field(description="the query's average precision over the full ranking "
                             "(ood queries only; None when its class has no other image)")
    hits: list[HitOut]
    method: str | None = Field(None, description="the pooling method of a conv5/<method> "
                               "column (its hits are explained by /api/why)")


class QueryInfo(BaseModel):
    """The query: an ood image, or an upload (with its format and size before resizing)."""

    source: Literal["ood", "upload", "index"]
    id: int | None = None
    folder: str | None = None
    original_url: str | None = None
    label: int | None = None
    wnid: str | None = None
    class_name: str | None = None
    url: str | None = Field(None, description="ood: its PNG; upload: a data: URL of the 64x64 "
                            "image the model saw")
    filename: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    upload_id: str | None = Field(None, description="upload: its id for GET /api/upload/{id} "
                                  "(the server keeps the latest uploads in memory)")
    upscaled: bool | None = Field(None, description="upload: smaller than 64x64, so enlarged")
    transparent: bool | None = Field(None, description="upload: had transparent areas, shown "
                                     "to the model on white")
    notes: list[str] = Field(default_factory=list, description="upload: what was done to the "
                             "image before the model saw it, as sentences to show (squeezed to "
                             "64x64 when not square; which side was enlarged when shorter than "
                             "64; transparent areas filled with white); empty when nothing was")


class SearchResult(BaseModel):
    """Top-k results per layer for one query."""

    query: QueryInfo
    database: Literal["ood", "index"]
    database_size: int = Field(description="images ranked (the query itself excluded)")
    k: int = Field(description="results per layer asked for")
    shown: int = Field(description="results per layer given: k, or the whole database when it "
                       "holds fewer images")
    note: str | None = Field(None, description="why fewer than k results are given, if so")
    relu: bool = Field(description="the codes searched: post-ReLU (True) or pre-ReLU (False)")
    layers: list[LayerResult]
    relevant: int | None = Field(None, description="ood query: other images of its class")
    chance_ap: float | None = Field(None, description="ood query: the expected AP of a random "
                                    "ranking (the chance level of AP)")
    scores: str | None = Field(None, description="index: how its similarities are measured")


class Gallery(BaseModel):
    """A page of the ood images."""

    total: int = Field(description="images in the gallery (of the class, if filtered)")
    offset: int
    limit: int
    label: int | None = Field(None, description="the class filter, if any")
    items: list[ImageItem]


class FolderCount(BaseModel):
    folder: str = Field(description="relative to the indexed folder (\"\": that folder)")
    count: int


class CollectionPage(BaseModel):
    """A page of the images of the served index (your own images)."""

    total: int = Field(description="images that pass the filters")
    size: int = Field(description="images in the index")
    offset: int
    limit: int
    folder: str | None = Field(None, description="the folder filter, if any")
    q: str | None = Field(None, description="the text filter (folder or file name), if any")
    folders: list[FolderCount]
    items: list[ImageItem]


class Database(BaseModel):
    name: Literal["ood", "index"]
    size: int
    description: str


class OodClass(BaseModel):
    label: int
    wnid: str
    class_name: str


class Info(BaseModel):
    """The served run and the app's settings."""

    run: str
    layers: list[str]
    relu: bool = Field(description="post-ReLU (True) or pre-ReLU (False) codes")
    k: int = Field(description="default results per layer")
    max_k: int
    gallery_size: int
    databases: list[Database]
    classes: list[OodClass] = Field(description="the out-of-domain classes")
    methods: list[str] = Field(description="pooling methods /api/search/{id}?method= takes")
    upload_formats: list[str]
    max_upload_bytes: int
    max_upload_text: str = Field(description="the upload limit as people read it, e.g. 20 MiB")
    max_pixels: int


class MapRow(BaseModel):
    """Mean average precision of one layer over all ood queries."""

    model_config = ConfigDict(populate_by_name=True)

    layer: str
    relu: bool
    map: float
    p_at_5: float | None = Field(None, alias="p@5", description="mean precision@5")
    p_at_10: float | None = Field(None, alias="p@10", description="mean precision@10")
    n_queries: int
    chance_map: float | None = Field(None, description="mAP of a random ranking")
    chance_p: float | None = Field(None, description="precision@k of a random ranking")


class Chance(BaseModel):
    """Accuracy of guessing a class uniformly at random."""

    top1: float
    top5: float
    top5_trivial: bool = Field(False, description="at most 5 classes: top-5 is always 100% "
                               "(shown as n/a)")


class Reference(BaseModel):
    """The course's reference numbers (when the package knows them)."""

    map: dict[str, float] = Field(description="mAP per layer")
    top1: float | None = Field(description="test top-1 accuracy")
    top5: float | None = Field(description="test top-5 accuracy")
    source: str


class Figure(BaseModel):
    name: str
    title: str
    url: str


class Results(BaseModel):
    """The run's results."""

    run: str
    eval: dict[str, Any] | None = Field(description="eval.json: loss, top-1, top-5 per split "
                                        "(None before `neuralcodes evaluate`)")
    map: list[MapRow]
    map_source: str = Field(description="retrieval/map.json, or computed by the server")
    relu: bool = Field(description="the code variant the app searches")
    n_classes: int = Field(description="in-domain classes the network was trained on")
    chance: Chance
    reference: Reference | None = Field(description="the course's numbers, if known")
    curves_url: str | None = Field(description="the learning curves PNG, if the run has one")
    figures: list[Figure] = Field(description="the run's figures that exist")
    report_url: str | None = Field(description="the run's report.html, if written")
    report_command: str = Field(description="the command that writes report.html (RUN: the "
                                "run's folder)")
    methods: dict[str, Any] | None = Field(None, description="the methods study beyond the "
                                           "paper (methods.json: rows, reference, verdict), "
                                           "if made from the served weights")
