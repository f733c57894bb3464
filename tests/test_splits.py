"""The assignment's splits: the course notebook's exact partition, its options, and the CSV."""

from __future__ import annotations

import csv
import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import SHARED_ZIP, make_tiny_imagenet, tiny_config
from neuralcodes.cli import main
from neuralcodes.config import DataConfig
from neuralcodes.data import Dataset, Splits, load_data, make_splits, prepare, write_splits_csv
from neuralcodes.errors import NeuralCodesError
from neuralcodes.runs import RunDir

SPLITS = ("train", "val", "test", "ood")

# -- the course notebook's partition, written out independently --------------------------------


def _zip_listing(path: Path) -> dict[str, list[str]]:
    """wnid -> train file names, from a zip in the official layout (``tiny-imagenet-200/``)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        wnids = z.read("tiny-imagenet-200/wnids.txt").decode().split()
    listing: dict[str, list[str]] = {w: [] for w in wnids}
    for name in names:
        parts = name.split("/")
        if len(parts) == 5 and parts[1] == "train" and parts[3] == "images" and parts[4]:
            listing[parts[2]].append(parts[4])
    return listing


def _folder_listing(root: Path) -> dict[str, list[str]]:
    """wnid -> train file names, from an extracted dataset folder."""
    wnids = (root / "wnids.txt").read_text().split()
    return {w: os.listdir(root / "train" / w / "images") for w in wnids}


def _course_partition(listing: dict[str, list[str]], *, seed: int = 42, n_ood: int = 10,
                      fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                      max_classes: int | None = None, max_per_class: int | None = None
                      ) -> dict[str, list[tuple[str, str]]]:
    """The four rules: sorted wnids (the last ``n_ood`` ood), files ``sorted(os.listdir())``;
    ``np.random.seed(seed)`` (here: its identical RandomState stream); ``permutation(N)``: val =
    first round(0.1 N), test = next round(0.1 N), train = rest; then ``permutation(N_ood)``
    shuffles the ood set. Returns split -> [(file name, wnid)] in order."""
    wnids = sorted(listing)[:max_classes]
    files = {w: sorted(listing[w])[:max_per_class] for w in wnids}
    inside = [(f, w) for w in wnids[: len(wnids) - n_ood] for f in files[w]]
    outside = [(f, w) for w in wnids[len(wnids) - n_ood:] for f in files[w]]
    stream = np.random.RandomState(seed)
    perm = stream.permutation(len(inside))
    n_val = int(round(fractions[1] * len(inside)))
    n_test = int(round(fractions[2] * len(inside)))
    return {"val": [inside[i] for i in perm[:n_val]],
            "test": [inside[i] for i in perm[n_val: n_val + n_test]],
            "train": [inside[i] for i in perm[n_val + n_test:]],
            "ood": [outside[i] for i in stream.permutation(len(outside))]}


def _named(ds: Dataset, sp: Splits) -> dict[str, list[tuple[str, str]]]:
    """The project's splits as (file base name, wnid) in split order."""
    return {s: [(os.path.basename(ds.paths[i]), ds.wnids[ds.labels[i]])
                for i in getattr(sp, s)] for s in SPLITS}


def test_legacy_stream_is_np_random_seed() -> None:
    """The rule says ``np.random.seed(seed); np.random.permutation(...)`` twice: RandomState(seed)
    gives the identical numbers without touching numpy's global state."""
    state = np.random.get_state()
    try:
        np.random.seed(42)
        expected = [np.random.permutation(50), np.random.permutation(7)]
    finally:
        np.random.set_state(state)
    stream = np.random.RandomState(42)
    assert all(np.array_equal(e, stream.permutation(len(e))) for e in expected)


@pytest.fixture(scope="module")
def zip12(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    """14 classes x 12 images as a zip: names _0.._11, so lexicographic != natural order."""
    root = tmp_path_factory.mktemp("zip12")
    z = make_tiny_imagenet(root / "src", 14, 12, learnable=False, zip_it=True)
    return z, Dataset.load(prepare(z, root / "cache", progress=False))


@pytest.mark.parametrize("settings", [
    {},
    {"seed": 7, "fractions": (0.7, 0.2, 0.1), "ood_classes": 3},
    {"max_classes": 13, "max_per_class": 11, "ood_classes": 4, "seed": 0},
])
def test_partition_is_the_course_notebooks(zip12: tuple[Path, Dataset], settings: dict) -> None:
    z, ds = zip12
    sp = make_splits(ds, DataConfig(**settings))
    expected = _course_partition(
        _zip_listing(z), seed=settings.get("seed", 42), n_ood=settings.get("ood_classes", 10),
        fractions=settings.get("fractions", (0.8, 0.1, 0.1)),
        max_classes=settings.get("max_classes"), max_per_class=settings.get("max_per_class"))
    assert _named(ds, sp) == expected
    assert ds.paths[:3] == [f"train/{ds.wnids[0]}/images/{ds.wnids[0]}_{i}.JPEG"
                            for i in (0, 1, 10)]  # the cache is in lexicographic order


def test_partition_of_a_folder_source(tiny_data_config: DataConfig) -> None:
    ds, sp = load_data(tiny_data_config, progress=False)
    expected = _course_partition(_folder_listing(Path(tiny_data_config.source)), n_ood=2)
    assert _named(ds, sp) == expected
    assert [len(expected[s]) for s in SPLITS] == [64, 8, 8, 40]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason=f"shared real-image zip absent: {SHARED_ZIP}")
def test_partition_of_the_shared_zip(tmp_path: Path) -> None:
    ds, sp = load_data(DataConfig(source=str(SHARED_ZIP), cache_dir=str(tmp_path)),
                       progress=False)
    expected = _course_partition(_zip_listing(SHARED_ZIP))
    assert _named(ds, sp) == expected
    assert [len(expected[s]) for s in SPLITS] == [12_000, 1_500, 1_500, 5_000]


# -- the partition as CSV ------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_prepare_export_splits(tiny_source: Path, tiny_cache_root: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "partition.csv"
    assert main(["prepare", "--data", str(tiny_source), "--cache-dir", str(tiny_cache_root),
                 "--set", "data.ood_classes=2", "--export-splits", str(out),
                 "--no-progress"]) == 0
    assert str(out) in capsys.readouterr().out
    rows = _csv_rows(out)
    assert rows[0] == ["split", "position", "file_name", "wnid"]
    expected = _course_partition(_folder_listing(tiny_source), n_ood=2)
    assert rows[1:] == [[s, str(k), f, w] for s in SPLITS for k, (f, w) in
                        enumerate(expected[s])]
    assert rows[1][2].endswith(".JPEG") and "/" not in rows[1][2]


def test_trained_run_has_the_same_splits_csv(tiny_data_config: DataConfig, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from neuralcodes.training.loop import train

    run = RunDir(train(tiny_config(tiny_data_config, max_epochs=1), tmp_path / "run",
                       progress=False).root)
    exported = tmp_path / "exported.csv"
    assert main(["prepare", "--source", tiny_data_config.source, "--cache-dir",
                 tiny_data_config.cache_dir, "--set", "data.ood_classes=2", "--export-splits",
                 str(exported), "--no-progress"]) == 0
    assert run.splits_csv.read_bytes() == exported.read_bytes()
    assert len(_csv_rows(run.splits_csv)) == 1 + 120


def test_write_splits_csv_is_atomic(tiny_data_config: DataConfig, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ds, sp = load_data(tiny_data_config, progress=False)
    path = tmp_path / "splits.csv"
    path.write_text("old\n")
    broken = dataclasses.replace(sp, ood=np.array([len(ds)]))  # an index past the end
    with pytest.raises(IndexError):
        write_splits_csv(ds, broken, path)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["splits.csv"]


# -- sizes, options, determinism -----------------------------------------------------------------


def test_load_data_splits_tiny(tiny_data_config: DataConfig) -> None:
    ds, sp = load_data(tiny_data_config, progress=False)
    assert sp.sizes() == {"train": 64, "val": 8, "test": 8, "ood": 40, "in_classes": 4,
                          "ood_classes": 2}
    assert sp.in_classes == [0, 1, 2, 3] and sp.ood_classes == [4, 5]
    parts = [sp.train, sp.val, sp.test, sp.ood]
    assert all(p.dtype == np.int64 for p in parts)
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything) == len(ds)  # disjoint and complete
    assert set(ds.labels[np.concatenate(parts[:3])]) == {0, 1, 2, 3}
    assert set(ds.labels[sp.ood]) == {4, 5}
    assert (ds.root / "splits" / f"{sp.hash[:16]}.npz").is_file()
    assert np.array_equal(sp.model_labels(np.array([0, 3, 4, 5])), [0, 3, -1, -1])


def test_splits_deterministic_and_seeded(tiny_data_config: DataConfig) -> None:
    ds = Dataset.load(prepare(tiny_data_config.source, tiny_data_config.cache_dir,
                              progress=False))
    a = make_splits(ds, tiny_data_config)
    b = make_splits(ds, tiny_data_config)
    c = make_splits(ds, dataclasses.replace(tiny_data_config, seed=7))
    for name in SPLITS:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.hash == b.hash and a.hash != c.hash
    assert not np.array_equal(a.train, c.train)
    # the seed also orders the ood set (the same images)
    assert not np.array_equal(a.ood, c.ood) and np.array_equal(np.sort(a.ood), np.sort(c.ood))
    loaded = Splits.load(a.save(tmp := ds.root))
    assert loaded.hash == a.hash and tmp.is_dir()


def _many_classes(tmp_path: Path, n_classes: int, per_class: int) -> Dataset:
    src = make_tiny_imagenet(tmp_path / "src", n_classes, per_class, learnable=False,
                             zip_it=True)
    return Dataset.load(prepare(src, tmp_path / "cache", progress=False))


def test_190_10_rule_on_200_classes(tmp_path: Path) -> None:
    ds = _many_classes(tmp_path, 200, 3)
    sp = make_splits(ds, DataConfig())
    assert sp.in_classes == list(range(190)) and sp.ood_classes == list(range(190, 200))
    assert [ds.wnids[c] for c in sp.ood_classes] == sorted(ds.wnids)[-10:]
    assert sp.sizes() == {"train": 456, "val": 57, "test": 57, "ood": 30, "in_classes": 190,
                          "ood_classes": 10}
    assert ds.manifest["splits"]["default"]["hash"] == sp.hash


def test_ood_options_and_subsampling(tmp_path: Path) -> None:
    ds = _many_classes(tmp_path, 12, 4)
    w = ds.wnids
    explicit = make_splits(ds, DataConfig(ood_wnids=[w[5], w[0]]))
    assert explicit.ood_classes == [0, 5] and len(explicit.in_classes) == 10
    assert set(ds.labels[explicit.ood].tolist()) == {0, 5}
    with pytest.raises(NeuralCodesError, match="n99999999"):
        make_splits(ds, DataConfig(ood_wnids=[w[0], "n99999999"]))
    r1 = make_splits(ds, DataConfig(ood_classes=3, ood_random=True, seed=1))
    r1b = make_splits(ds, DataConfig(ood_classes=3, ood_random=True, seed=1))
    assert r1.ood_classes == r1b.ood_classes and len(r1.ood_classes) == 3
    assert set(ds.labels[r1.ood].tolist()) == set(r1.ood_classes)
    draws = {tuple(make_splits(ds, DataConfig(ood_classes=3, ood_random=True, seed=s))
                   .ood_classes) for s in range(6)}
    assert len(draws) > 1
    quick = make_splits(ds, DataConfig(max_classes=5, max_per_class=2, ood_classes=2))
    assert quick.in_classes == [0, 1, 2] and quick.ood_classes == [3, 4]
    used = np.concatenate([quick.train, quick.val, quick.test, quick.ood])
    first_two = [i for c in range(5) for i in np.flatnonzero(ds.labels == c)[:2]]
    assert sorted(used.tolist()) == first_two
    with pytest.raises(NeuralCodesError, match="data.ood_classes=12 leaves 0 in-domain"):
        make_splits(ds, DataConfig(ood_classes=12))
    with pytest.raises(NeuralCodesError,
                       match=r"ood_classes=4 leaves 1 in-domain.*=2 \(any N from 2 to 3\)"):
        make_splits(ds, DataConfig(max_classes=5, ood_classes=4))  # 1 class cannot be trained
    with pytest.raises(ValueError, match="fractions"):  # refused by the config itself
        DataConfig(fractions=(0.5, 0.1, 0.1))
