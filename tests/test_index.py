"""Indexes of the user's own folders (issue 20): streamed, compact, incremental and resumable,
named under the run, absolute paths; near-duplicates; readable scores; `search --json` over
several images; the Python API (``neuralcodes.open_run``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import neuralcodes
from neuralcodes.cli import main as cli
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval import (
    Searcher,
    build_index,
    collection,
    duplicate_groups,
    fitting,
    indexing,
)
from neuralcodes.runs import RunDir, TrainedRun


@pytest.fixture(scope="module")
def run(web_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny trained run (this module writes indexes into it)."""
    out = tmp_path_factory.mktemp("index-run") / "run"
    shutil.copytree(web_run, out)
    return out


def _cpu(run: Path) -> TrainedRun:
    """The run opened on the CPU, without progress bars."""
    return TrainedRun.open(run, device="cpu", progress=False)


def _png(path: Path, seed: int, side: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side + seed % 7, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, n: int, first: int = 0) -> Path:
    for i in range(first, first + n):
        _png(root / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.png", i)
    return root


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images each call of the index's code extraction received."""
    calls: list[int] = []
    real = indexing.extract_codes

    def counting(model, images, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return real(model, images, *args, **kwargs)

    for module in (indexing, fitting):  # the folder's codes, the transform's training codes
        monkeypatch.setattr(module, "extract_codes", counting)
    return calls


def test_index_is_compact_named_under_the_run_and_incremental(run, tmp_path, capsys, counted):
    folder = _folder(tmp_path / "photos", 12)
    # the run's transform is fitted once, by whichever index comes first (other test modules
    # share this run): without it, the first extraction is the transform's training images
    fitted_before = any(RunDir(run).indexes.glob("transform-*.npz"))
    assert cli(["index", str(folder), "--run", str(run), "--no-progress", "--batch-size",
                "5"]) == 0
    out = capsys.readouterr().out
    where = RunDir(run).index("photos")
    assert f"{where}: +12 new, -0 gone, 0 changed, 0 kept; 12 images indexed" in out
    if not fitted_before:
        assert counted[0] > 12  # first the transform's training images, once
        del counted[0]
    assert sum(counted) == 12 and max(counted) <= 5  # streamed in batches
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["root"] == str(folder.resolve()) and manifest["count"] == 12
    codes = {layer: np.load(where / f"g1-code{layer}.npy", mmap_mode="r") for layer in "567"}
    assert all(c.dtype == np.float16 and len(c) == 12 for c in codes.values())
    assert codes["5"].shape[1] <= collection.PCA5_DIMS
    np.testing.assert_allclose(np.linalg.norm(codes["6"].astype(np.float32), axis=1), 1,
                               atol=2e-3)
    assert not (where / "pending").exists()

    first = Searcher(_cpu(run), index="photos")
    img005 = first.paths.index(str(folder.resolve() / "img005.png"))
    assert first.folder is not None
    code005 = np.array(first.folder.layers["6"][img005])

    # again, unchanged: nothing computed, nothing written
    counted.clear()
    before = {p.name: p.stat().st_mtime_ns for p in where.iterdir()}
    assert cli(["index", str(folder), "--run", str(run), "--no-progress"]) == 0
    assert "+0 new, -0 gone, 0 changed, 12 kept" in capsys.readouterr().out
    assert counted == [] and {p.name: p.stat().st_mtime_ns for p in where.iterdir()} == before

    # 10 added, 2 deleted, 1 changed: 11 codes computed, the rest kept
    _folder(folder, 10, first=100)
    (folder / "img001.png").unlink()
    (folder / "img002.png").unlink()
    _png(folder / "img004.png", 999, side=50)
    update = build_index(folder, _cpu(run))
    assert (update.new, update.gone, update.changed, update.kept) == (10, 2, 1, 9)
    assert update.computed == 11 and sum(counted) == 11
    assert update.summary() == "+10 new, -2 gone, 1 changed, 9 kept"
    s = Searcher(_cpu(run), index="photos")
    assert len(s) == 20 and s.paths == sorted(s.paths)
    assert str(folder.resolve() / "img100.png") in s.paths
    assert not any(p.endswith("img001.png") for p in s.paths)
    assert sorted(p.name for p in where.glob("g*-code*")) == ["g2-code5.npy", "g2-code6.npy",
                                                              "g2-code7.npy"]
    # the kept rows are the same codes as before (copied, not recomputed)
    assert s.folder is not None
    np.testing.assert_array_equal(
        s.folder.layers["6"][s.paths.index(str(folder.resolve() / "img005.png"))], code005)


def test_an_interrupted_index_resumes_where_it_stopped(run, tmp_path, monkeypatch, counted):
    folder = _folder(tmp_path / "resume", 9)
    real = indexing._save_segment
    saved: list[int] = []

    def stop_after_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(indexing, "_save_segment", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index(folder, _cpu(run), batch_size=3)
    monkeypatch.setattr(indexing, "_save_segment", real)
    where = RunDir(run).index("resume")
    assert not (where / "manifest.json").exists() and len(list((where / "pending").iterdir())) == 2
    counted.clear()
    update = build_index(folder, _cpu(run), batch_size=3)
    assert (update.resumed, update.computed, update.new) == (6, 3, 9) and counted == [3]
    assert len(Searcher(_cpu(run), index="resume")) == 9


def test_search_marks_the_query_itself_and_duplicates_are_grouped(run, tmp_path, capsys,
                                                                  monkeypatch):
    folder = _folder(tmp_path / "dups", 6)
    shutil.copy(folder / "img001.png", folder / "copy-of-1.png")
    assert cli(["index", str(folder), "--run", str(run), "--name", "d", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "dups" / "sub")  # paths work from anywhere: absolute
    query = str(folder / "img001.png")
    assert cli(["search", query, "--run", str(run), "--index", "d", "-k", "7", "--json",
                "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    hits = result["queries"][0]["hits"]
    assert result["score"] == "centred cosine" and result["database_size"] == 7
    marks = {Path(h["path"]).name: h["same"] for h in hits[:2]}
    assert marks == {"img001.png": "same file", "copy-of-1.png": "identical code"}
    assert all(Path(h["path"]).is_file() for h in hits)
    assert all(h["same"] is None for h in hits[2:])
    scores = [h["score"] for h in hits]
    assert scores[0] == pytest.approx(1, abs=2e-3)
    assert max(scores) <= 1  # float16 rows score a little over 1 with themselves: capped
    # centred by the mean training code, the scores spread more than the plain cosine
    s = Searcher(_cpu(run), index="d")
    raw = s.query_codes(np.stack([s.image(i) for i in range(len(s))]), "6")
    plain = raw @ raw[s.paths.index(hits[0]["path"])]
    assert 1 - min(scores) > 2 * (1 - plain.min())
    assert cli(["duplicates", str(run), "--index", "d", "--threshold", "0.999",
                "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "group 1 (2 images):" in out and "copy-of-1.png" in out
    assert "1 groups of near-duplicates (2 of 7 images) at similarity >= 0.99" in out
    groups = duplicate_groups(Searcher(_cpu(run), index="d"), "6", 0.999)
    assert [len(g) for g in groups] == [2]


def test_hits_deleted_since_indexing_are_marked_with_how_to_update(run, tmp_path, capsys):
    folder = _folder(tmp_path / "gone", 4)
    assert cli(["index", str(folder), "--run", str(run), "--no-progress"]) == 0
    (folder / "img001.png").unlink()
    capsys.readouterr()
    assert cli(["search", str(folder / "img002.png"), "--run", str(run), "--index", "gone",
                "-k", "4", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if "img0" in line]
    assert len(lines) == 4 and [line for line in lines if "[gone]" in line] == \
        [line for line in lines if "img001.png" in line]
    assert f"1 of these files are no longer there (marked [gone]); `neuralcodes index {folder} " \
        f"--run {run}` brings the index up to date" in err
    assert cli(["search", str(folder / "img002.png"), "--run", str(run), "--index", "gone",
                "-k", "4", "--device", "cpu", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert {Path(h["path"]).name for h in hits if h["gone"]} == {"img001.png"}


def test_search_several_images_and_a_glob_with_one_model_load(run, tmp_path, capsys,
                                                               monkeypatch):
    from neuralcodes.runs import TrainedRun

    folder = _folder(tmp_path / "many", 5)
    loads: list[int] = []
    real = TrainedRun._load_model
    monkeypatch.setattr(TrainedRun, "_load_model",
                        lambda self: loads.append(1) or real(self))
    assert cli(["search", str(folder / "img001.png"), str(folder / "sub" / "*.png"), "--run",
                str(run), "-k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(loads) == 1
    assert out[0].startswith("layer 6, ") and "the ood set" in out[0]
    queries = [line for line in out if line.startswith("query ")]
    assert queries == [f"query {folder / 'img001.png'}:", f"query {folder / 'sub/img000.png'}:",
                       f"query {folder / 'sub/img003.png'}:"]
    assert len(out) == 1 + 3 * (1 + 3)
    assert cli(["search", str(folder / "nothing-*.png"), "--run", str(run)]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_index_refusals_are_one_line(run, tmp_path, capsys):
    folder = _folder(tmp_path / "one", 2)
    other = _folder(tmp_path / "two" / "one", 2)
    assert cli(["index", str(folder), "--run", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["index", str(other), "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds the images of" in err and "choose another name (--name)" in err
    old = tmp_path / "old.npz"
    np.savez(old, code6=np.zeros((1, 2)))
    assert cli(["search", str(folder / "img000.png"), "--run", str(run), "--index", str(old)]) == 2
    assert "not an index of this neuralcodes version" in capsys.readouterr().err
    assert cli(["search", str(folder / "img000.png"), "--run", str(run), "--index", "nope"]) == 2
    assert "(this run's indexes: " in capsys.readouterr().err
    assert cli(["index", str(folder), "--run", str(run), "--name", ".hidden"]) == 2
    assert "invalid index name" in capsys.readouterr().err


def test_large_indexes_search_through_faiss_with_exact_reranking(run, tmp_path):
    folder = _folder(tmp_path / "big", 30)
    r = _cpu(run)
    build_index(folder, r, name="big", approx_min=20)
    assert r._model is None  # released before FAISS training (the peak); loaded again on use
    assert r.model is not None
    where = RunDir(run).index("big")
    assert sorted(p.name for p in where.glob("*.faiss")) == [
        "g1-ivfpq5.faiss", "g1-ivfpq6.faiss", "g1-ivfpq7.faiss"]
    s = Searcher(_cpu(run), index="big")
    assert s.folder is not None and set(s.folder._approx) == {"5", "6", "7"}
    exact = collection.blocked_top_k
    for layer in "567":
        q = np.asarray(s.folder.layers[layer][:5], dtype=np.float32)
        got = s.folder.search(layer, q, 3)
        want = exact(q, s.folder.layers[layer], 3)
        np.testing.assert_array_equal(got[1][:, 0], np.arange(5))  # each finds itself first
        assert np.mean(got[1] == want[1]) >= 0.8


def test_blocked_search_equals_the_exact_ranking(monkeypatch):
    rng = np.random.default_rng(0)
    db = rng.normal(size=(50, 8)).astype(np.float16)
    db[7] = db[3]  # a tie: the lower id first
    q = rng.normal(size=(4, 8)).astype(np.float32)
    q[0] = db[3]
    monkeypatch.setattr(collection, "BLOCK_BYTES", 4 * 8 * 6)  # blocks of 6 rows
    from neuralcodes.retrieval import exact_top_k

    for exclude in (None, np.array([3, -1, 10, 49])):
        got = collection.blocked_top_k(q, db, 5, exclude)
        want = exact_top_k(q, db.astype(np.float32), 5, exclude)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_non_utf8_names_are_kept_and_shown_escaped(run, tmp_path, capsys):
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    _png(Path(os.fsdecode(raw)), 3)
    _png(folder / "plain.png", 4)
    assert cli(["index", str(folder), "--run", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    s = Searcher(_cpu(run), index="names")
    assert os.fsencode(s.paths[0]) == raw and Path(s.paths[0]).is_file()
    assert cli(["search", str(folder / "plain.png"), "--run", str(run), "--index", "names",
                "--device", "cpu"]) == 0
    assert "caf\\xe9.png" in capsys.readouterr().out


def test_python_api(run, tmp_path, monkeypatch):
    folder = _folder(tmp_path / "api", 4)
    r = neuralcodes.open_run(run, device="cpu")
    update = r.index(folder, name="api", progress=False)
    assert update.count == 4 and "4 kept" not in update.summary()
    result = r.search(folder / "img001.png", k=2, index="api")
    assert result.hits[0].path == str(folder.resolve() / "img001.png")
    assert result.hits[0].same == "same file"
    assert result.hits[1].same is None and result.hits[1].label is None  # absent: None (JSON null)
    monkeypatch.setenv("HOME", str(tmp_path))  # "~" expanded wherever a path enters
    home = r.search("~/api/img001.png", k=1, index="api")
    assert home.hits[0].same == "same file"
    html = result._repr_html_()
    assert html.count("<img") == 3 and "img001.png" in html
    many = r.search([folder / "img001.png", folder / "img002.png"], k=1, index="api")
    assert [m.hits[0].path.endswith(f"img00{i}.png") for i, m in enumerate(many, 1)] == [1, 1]
    codes = r.codes([folder / "img001.png", np.zeros((64, 64, 3), np.uint8)], layer="6")
    assert codes.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1, atol=1e-5)
    with pytest.raises(NeuralCodesError, match="unknown layer"):
        r.codes([folder / "img001.png"], layer="9")
