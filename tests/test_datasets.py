"""Datasets as modules: one contract over every registered dataset (generated data: a tiny
Tiny-ImageNet-layout zip and a labelled folder of JPEGs and PNGs of mixed sizes), the labelled
folder's own rules and errors, and `run --preset quick --data FOLDER` end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import fixture_wnids, folder_classes, make_image_folder, make_tiny_imagenet
from neuralcodes import datasets as registry
from neuralcodes import lineage
from neuralcodes.cli import main
from neuralcodes.config import DataConfig
from neuralcodes.data import Dataset, make_splits, prepare
from neuralcodes.data.dataset import FORMAT_VERSION
from neuralcodes.datasets.imagefolder import read_image
from neuralcodes.plan import planned_sizes

N_CLASSES, PER_CLASS = 5, 6

#: For each registered dataset: a generated source and its class ids (sorted).
SOURCES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "tiny-imagenet": lambda p: (make_tiny_imagenet(p, N_CLASSES, PER_CLASS, zip_it=True),
                                fixture_wnids(N_CLASSES)),
    "image-folder": lambda p: (make_image_folder(p, N_CLASSES, PER_CLASS),
                               folder_classes(N_CLASSES)),
}


def test_every_registered_dataset_has_a_generated_source() -> None:
    assert set(SOURCES) == set(registry.DATASETS)
    assert ("auto", *registry.DATASETS) == registry.CHOICES


@pytest.mark.parametrize("name", list(registry.DATASETS))
def test_dataset_contract(name: str, tmp_path: Path) -> None:
    """Classes, ids, names, split sizes and the uint8 64x64 cache, the same for every dataset;
    the cache records (and is named by) which dataset read which files."""
    source, classes = SOURCES[name](tmp_path / "src")
    root = prepare(source, tmp_path / "cache", progress=False)
    ds = Dataset.load(root)
    assert ds.spec is registry.DATASETS[name] and ds.manifest["dataset"] == name
    assert prepare(source, tmp_path / "cache", dataset=name, progress=False) == root
    fp = ds.manifest[lineage.KEY]
    assert fp == lineage.cache_fingerprint(name, ds.manifest["source"]["checksum"],
                                           FORMAT_VERSION, (64, 64, 3))
    assert root.name == f"{name}-{lineage.digest(fp)}"
    # classes and ids
    assert ds.wnids == classes == sorted(classes) and len(ds.names) == N_CLASSES
    assert all(ds.names) and ds.manifest["counts"] == dict.fromkeys(classes, PER_CLASS)
    # the cache
    assert ds.images.dtype == np.uint8 and ds.images.shape == (N_CLASSES * PER_CLASS, 64, 64, 3)
    assert np.array_equal(ds.labels, np.repeat(np.arange(N_CLASSES), PER_CLASS))
    assert len(set(ds.paths)) == len(ds) and ds.images.std() > 10  # decoded, not blank
    # the course's splits; the plan reads the same sizes from the listing alone
    cfg = DataConfig(source=str(source), ood_classes=2)
    sp = make_splits(ds, cfg)
    assert sp.sizes() == {"train": 14, "val": 2, "test": 2, "ood": 12, "in_classes": 3,
                          "ood_classes": 2}
    ood = [N_CLASSES - 2, N_CLASSES - 1]
    assert sp.ood_classes == ood and set(ds.labels[sp.ood]) == set(ood)
    assert planned_sizes(cfg)[0] == sp.sizes()


def test_folder_images_are_decoded_like_user_images(tmp_path: Path) -> None:
    source = make_image_folder(tmp_path, 2, 5)
    ds = Dataset.load(prepare(source, tmp_path / "cache", progress=False))
    assert ds.paths[:3] == ["a-ants/img000.jpg", "a-ants/img001.PNG", "a-ants/img002.jpg"]
    sizes = {Image.open(source / p).size for p in ds.paths}
    assert len(sizes) > 2  # mixed sizes, every one resized to 64x64
    for i, rel in enumerate(ds.paths):
        assert np.array_equal(ds.images[i], read_image(source / rel)), rel
    assert ds.names == ds.wnids == ["a-ants", "b-bees"]


def test_a_changed_folder_is_decoded_again(tmp_path: Path) -> None:
    source = make_image_folder(tmp_path, 2, 5)
    first = prepare(source, tmp_path / "cache", progress=False)
    Image.new("RGB", (70, 50), (9, 9, 9)).save(source / "b-bees" / "new.png")
    second = prepare(source, tmp_path / "cache", progress=False)
    assert second != first and len(Dataset.load(second)) == 11
    assert Dataset.load(second).manifest[lineage.KEY] != Dataset.load(first).manifest[lineage.KEY]


def _garbage(p: Path) -> None:
    (p / "a-ants" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def _thin_ood(p: Path) -> None:
    for f in sorted((p / "c-cats").iterdir())[1:]:
        f.unlink()


@pytest.mark.parametrize(("change", "settings", "says"), [
    (lambda p: [f.unlink() for d in p.iterdir() for f in d.iterdir()], [],
     "wrong layout in"),
    (None, ["data.ood_classes=4"], "data.ood_classes=4 leaves 0 in-domain"),
    (_garbage, [], "cannot be read as images, e.g. a-ants/broken.jpg"),
    (_thin_ood, [], "out-of-domain class c-cats"),
    (None, ["data.max_per_class=2", "retrieval.k=1", "retrieval.figure_queries=2"], "split of"),
    (lambda p: (p / "d-empty").mkdir(), [], "holds no images"),
])
def test_a_folder_that_cannot_work_says_what_to_do(tmp_path: Path, change, settings: list[str],
                                                   says: str, capsys: pytest.CaptureFixture
                                                   ) -> None:
    source = make_image_folder(tmp_path, 4, 6)
    if change:
        change(source)
    argv = ["prepare", "--data", str(source), "--cache-dir", str(tmp_path / "cache"),
            "--set", "data.ood_classes=2", "--no-progress"]
    for s in settings:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not [p for p in (tmp_path / "cache").glob("*") if p.name.startswith(".building")]


def _no_cache_built(cache: Path) -> bool:
    return not list(cache.rglob("images.npy")) and not list(cache.glob(".building*"))


def test_too_few_in_domain_classes_are_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """6 classes with the quick preset's 5 ood ones leave 1 to train on: every command says
    so in one line, with a --set that works, before decoding an image (--plan too)."""
    source = make_image_folder(tmp_path, 6, 3)
    cache = tmp_path / "cache"
    common = ["--data", str(source), "--cache-dir", str(cache)]
    for argv in (["run", "--preset", "quick", "--plan", "--out", str(tmp_path / "r")],
                 ["run", "--preset", "quick", "--no-progress", "--out", str(tmp_path / "r")],
                 ["train", "--set", "data.ood_classes=5", "--out", str(tmp_path / "t")],
                 ["prepare", "--set", "data.ood_classes=5", "--no-progress"]):
        assert main([*argv, *common]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (argv, err)
        assert "has 6 classes; data.ood_classes=5 leaves 1 in-domain" in err[0], err
        assert "--set data.ood_classes=2 (any N from 2 to 4)" in err[0], err
        assert _no_cache_built(cache) and not (tmp_path / "r").exists(), argv
    assert main(["prepare", *common, "--set", "data.ood_classes=4", "--no-progress"]) == 0


def test_a_folder_of_one_class_says_how_many_are_needed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = make_image_folder(tmp_path, 1, 3)
    for extra in ([], ["--plan"]):
        assert main(["run", "--preset", "quick", "--data", str(source), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has 1 class: at least 4 are needed (2 in-domain to train on, "\
            "2 out of domain for retrieval): add class folders" in err[0], err
        assert "below 1" not in err[0] and _no_cache_built(tmp_path / "cache")


def test_dataset_setting_is_validated_with_the_registry(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    folder = make_image_folder(tmp_path, 2, 5)
    for argv, says in [
            (["--set", "data.dataset=cifar"], "data.dataset: unknown dataset 'cifar'"),
            (["--set", "data.dataset=image-folder"], "cannot be downloaded"),
            (["--data", str(folder), "--set", "data.dataset=tiny-imagenet"],
             "wrong layout in"),
            (["--data", str(make_tiny_imagenet(tmp_path, 2, 3, zip_it=True)),
              "--set", "data.dataset=image-folder"], "wrong layout at the top of")]:
        code = main(["prepare", "--cache-dir", str(tmp_path / "cache"), "--no-progress", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], (argv, err)


def test_quick_run_on_a_labelled_folder_end_to_end(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`neuralcodes run --preset quick --data FOLDER` on JPEGs and PNGs of mixed sizes."""
    source = make_image_folder(tmp_path, 5, 10)
    run = tmp_path / "run"
    assert main(["run", "--preset", "quick", "--data", str(source), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(run), "--no-progress",
                 "--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
                 "--set", "train.max_epochs=1", "--set", "data.ood_classes=2",
                 "--set", "retrieval.pca_dims=[4]", "--set", "retrieval.figure_queries=4"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["dataset"] == "image-folder"
    assert saved["data"]["ood_classes"] == [{"wnid": c, "name": c} for c in ("d-dogs", "e-eels")]
    md = (run / "report.md").read_text()
    assert "labelled image folder" in md
    assert "course reference" not in md and "course's model reached" not in md
    for name in ("eval.json", "retrieval/map.json", "report.html"):
        assert (run / name).is_file(), name
    # the web app's results page, likewise, shows no course numbers beside this run's
    from neuralcodes.runs import TrainedRun
    from neuralcodes.web.results import run_results
    from neuralcodes.web.service import ServedRun

    results = run_results(ServedRun(TrainedRun.open(run, device="cpu", progress=False)))
    assert results["reference"] is None and results["map"]
