"""Retrieval: the FAISS index, PCA study, layer evidence, and the study of a trained run
(codes, figures, mAP, PCA) plus indexing and searching own images, on a tiny trained model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcodes import lineage
from neuralcodes.cli import main as cli
from neuralcodes.config import Config, DataConfig, ModelConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json
from neuralcodes.retrieval import (
    PCA,
    CodeIndex,
    CodeSet,
    Searcher,
    build_index,
    chance_average_precision,
    colour_histograms,
    evaluate_codes,
    exact_top_k,
    l2_normalize,
    layer_evidence,
    load_codes,
    pca_study,
    run_study,
    search,
    self_retrieval_metrics,
)
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.runtime import to_input


def quiet(run: Path) -> TrainedRun:
    """The run opened on the CPU, without progress bars."""
    return TrainedRun.open(run, device="cpu", progress=False)


def clustered(n: int, dim: int, n_clusters: int, spread: float, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    labels = rng.integers(0, n_clusters, n)
    return l2_normalize(centres[labels] + spread * rng.standard_normal((n, dim))), labels


# --------------------------------------------------------------------------- index


def reference_top_k(queries: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """Plain NumPy: full lexsort of each row by (score desc, id asc)."""
    scores = queries @ db.T
    return np.array([np.lexsort((np.arange(len(db)), -row))[:k] for row in scores])


def test_exact_index_equals_numpy_ranking_and_excludes_by_id():
    db, _ = clustered(500, 24, 5, 0.8)
    queries = db[:40]
    scores, ids = CodeIndex(24).add(db[:200]).add(db[200:]).search(queries, 7)
    np.testing.assert_array_equal(ids, reference_top_k(queries, db, 7))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ db.T, ids, 1), atol=1e-5)
    _, ids_ex = CodeIndex(24).add(db).search(queries, 7, exclude=np.arange(40))
    ref = reference_top_k(queries, db, 8)
    for i in range(40):
        np.testing.assert_array_equal(ids_ex[i], [j for j in ref[i] if j != i][:7])


def test_exact_top_k_is_the_index_path_and_handles_small_databases(monkeypatch):
    from neuralcodes.retrieval import metrics

    db, _ = clustered(60, 8, 3, 0.5, seed=9)
    queries = db[:5]
    scores, ids = exact_top_k(queries, db, 6, exclude=np.array([0, 1, -1, 3, 4]))
    np.testing.assert_array_equal(ids, CodeIndex(8).add(db).search(
        queries, 6, exclude=np.array([0, 1, -1, 3, 4]))[1])
    assert ids[2, 0] == 2 and 0 not in ids[0] and 3 not in ids[3]  # -1: nothing excluded
    monkeypatch.setattr(metrics, "CHUNK_BYTES", 1)  # one query per chunk: same result
    from neuralcodes.retrieval import index as index_module

    monkeypatch.setattr(index_module, "CHUNK_BYTES", 1)
    np.testing.assert_array_equal(exact_top_k(queries, db, 6, exclude=np.array([0, 1, -1, 3,
                                                                                 4]))[1], ids)
    # all of a 3-item database, the query excluded: two results, then padding
    scores, ids = exact_top_k(db[:1], db[:3], 4, exclude=np.array([0]))
    assert ids[0, 2:].tolist() == [-1, -1] and 0 not in ids[0] and set(ids[0, :2]) == {1, 2}
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()


def test_exact_index_breaks_ties_by_id_and_pads_missing():
    rng = np.random.default_rng(1)
    base = l2_normalize(rng.standard_normal((3, 8)))
    db = base[[2, 0, 1, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]]  # many exact duplicates
    index = CodeIndex(8).add(db)
    _, ids = index.search(base[:1], 12)
    assert ids[0].tolist() == [1, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    _, ids = index.search(base[:1], 3, exclude=np.array([3]))  # query is item 3: a duplicate
    assert ids[0].tolist() == [1, 5, 7]
    scores, ids = CodeIndex(8).add(db[:2]).search(base[:1], 4)
    assert ids[0].tolist() == [1, 0, -1, -1] and np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours(kind):
    db, _ = clustered(4000, 16, 20, 0.3, seed=2)
    queries, _ = clustered(100, 16, 20, 0.3, seed=3)
    index = CodeIndex(16, kind, nprobe=8).add(db)
    truth = reference_top_k(queries, db, 5)
    recall = np.mean([len(set(a) & set(b)) / 5
                      for a, b in zip(index.search(queries, 5)[1], truth, strict=True)])
    assert recall > 0.9
    if kind == "ivf":  # visiting every cell is an exhaustive search
        index.tune(nprobe=10_000)
        np.testing.assert_array_equal(index.search(queries, 5)[1], truth)


def test_index_errors():
    with pytest.raises(NeuralCodesError, match="unknown index kind"):
        CodeIndex(4, "lsh")
    with pytest.raises(NeuralCodesError, match="do not fit"):
        CodeIndex(4).add(np.zeros((2, 5)))
    with pytest.raises(NeuralCodesError, match="k must be positive"):
        CodeIndex(4).add(np.eye(4)).search(np.eye(4), 0)


# --------------------------------------------------------------------------- PCA, evidence


def test_pca_matches_exact_svd_on_both_paths():
    rng = np.random.default_rng(4)
    scales = np.concatenate([[10, 8, 6, 5, 4], np.linspace(2, 0.1, 115)])
    x = (rng.standard_normal((400, 120)) * scales).astype(np.float32)
    exact = np.linalg.svd(x - x.mean(0), full_matrices=False)[2]
    for k in (8, 80):  # 8: randomized svd_lowrank, 80: full SVD
        pca = PCA.fit(x, k)
        assert pca.components.shape == (k, 120)
        np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(k), atol=1e-4)
        cos = np.abs(np.sum(pca.components[:5] * exact[:5], axis=1))
        assert (cos > 0.999).all()
        assert (np.diff(pca.variances) <= 1e-9).all()
        np.testing.assert_allclose(pca.variances[:3], scales[:3] ** 2, rtol=0.25)
    y = pca.transform(x[:10], 16, whiten=True)
    assert y.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    with pytest.raises(NeuralCodesError, match="only 80 components"):
        pca.transform(x, 81)


def test_pca_study_fits_on_the_training_codes_only():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 25)
    ood = np.zeros((100, 6), np.float32)
    ood[:, :2] = np.eye(4)[labels][:, :2] * 3 + np.eye(4)[labels][:, 2:3] * -3  # class: dims 0-1
    ood[:, 2:] = rng.standard_normal((100, 4))  # noise: dims 2-5
    codes = CodeSet({"6": l2_normalize(ood)}, np.arange(100), labels, False)
    noise_train = np.zeros((300, 6), np.float32)
    noise_train[:, 2:] = rng.standard_normal((300, 4)) * 5  # train variance only in noise dims
    class_train = np.zeros((300, 6), np.float32)
    class_train[:, :2] = rng.standard_normal((300, 2)) * 5
    bad = pca_study({"6": l2_normalize(noise_train)}, codes, (2, 4, 16))
    good = pca_study({"6": l2_normalize(class_train)}, codes, (2,))
    assert {(r["dims"], r["whiten"]) for r in bad} == {("full", False), (2, False), (2, True),
                                                       (4, False), (4, True)}  # 16 > 6: skipped
    full = self_retrieval_metrics(codes.layers["6"], labels).map
    assert bad[0]["map"] == pytest.approx(full)
    pick = {(r["dims"], r["whiten"]): r["map"] for r in bad}
    assert pick[(2, False)] < 0.45 < next(r["map"] for r in good if r["dims"] == 2)


def test_colour_histograms_and_layer_evidence():
    n = 40
    labels = np.repeat(np.arange(4), 10)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]])
    images = np.broadcast_to(colours[labels][:, None, None, :], (n, 8, 8, 3)).astype(np.uint8)
    hist = colour_histograms(images)
    np.testing.assert_allclose(hist.sum(axis=1), 1)
    assert hist.shape == (n, 64) and (hist.max(axis=1) == 1).all()
    # layer "5" clusters by label (so by colour), layer "7" is unrelated to colour
    by_colour = l2_normalize(np.eye(4)[labels] + 0.01 * np.random.default_rng(0).random((n, 4)))
    random, _ = clustered(n, 12, 1, 1.0, seed=7)  # layer "7": unrelated to colour
    codes = CodeSet({"5": by_colour, "7": random}, np.arange(n), labels, False)
    ev = layer_evidence(codes, evaluate_codes(codes), images)
    assert ev["per_layer"]["5"]["colour_similarity"] == pytest.approx(1.0)
    assert ev["per_layer"]["7"]["colour_similarity"] < 0.6
    assert ev["per_layer"]["5"]["p@5"] == 1.0 and ev["per_layer"]["5"]["dims"] == 4
    assert ev["per_layer"]["5"]["sparsity"] == 0.0  # all positive
    base = ev["colour_similarity_baseline"]
    assert base["same_class_pairs"] == pytest.approx(1.0) and base["random_pairs"] < 0.5
    assert 0 <= ev["top_k_changed"]["5-7"] <= 10 and ev["first_queries"] == 10
    for layer in ("5", "7"):  # the baselines stand beside every layer's value
        assert ev["per_layer"][layer]["colour_similarity_random_pairs"] == base["random_pairs"]
        assert ev["per_layer"][layer]["colour_similarity_same_class_pairs"] == pytest.approx(1.0)
    assert ev["top_k"] == 5 and ev["baseline_pairs_per_query"] == 5


def test_same_class_baseline_pairs_are_other_members_of_the_class():
    from neuralcodes.retrieval.evidence import _same_class_partners

    labels = np.array([3, 1, 3, 2, 1, 3, 1, 3, 9])  # classes 2 and 9: one member, no partner
    partners, has = _same_class_partners(labels, 50, np.random.default_rng(0))
    assert has.tolist() == [True, True, True, False, True, True, True, True, False]
    for i in np.flatnonzero(has):
        assert (labels[partners[i]] == labels[i]).all() and i not in partners[i]
        members = set(np.flatnonzero(labels == labels[i])) - {i}
        assert set(partners[i].tolist()) == members  # every other member gets drawn


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def tiny_run(tiny_source: Path, tiny_cache_root: Path, tmp_path_factory) -> Path:
    from neuralcodes.training.loop import train

    cfg = Config()
    cfg.data = DataConfig(source=str(tiny_source), cache_dir=str(tiny_cache_root), ood_classes=2)
    cfg.model = ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16)
    cfg.train.max_epochs, cfg.train.batch_size, cfg.train.device = 2, 16, "cpu"
    cfg.retrieval.pca_dims = (4, 16, 32)
    cfg.retrieval.methods = False  # its own test below (test_methods_study_stage_...)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(cfg, out, progress=False)
    return out


def test_codes_command_writes_both_variants(tiny_run, capsys):
    assert cli(["codes", str(tiny_run), "--no-progress"]) == 0
    assert "40 images (layer 5: 256, layer 6: 16, layer 7: 16)" in capsys.readouterr().out
    rd = RunDir(tiny_run)
    pre, post = load_codes(rd.codes("ood", False)), load_codes(rd.codes("ood", True))
    loaded = TrainedRun.load(tiny_run)
    dataset, splits = loaded.dataset, loaded.splits
    np.testing.assert_array_equal(pre.index, splits.ood)
    np.testing.assert_array_equal(pre.labels, dataset.labels[splits.ood])
    assert not pre.relu and post.relu and (post.layers["6"] >= 0).all()
    assert set(pre.labels.tolist()) == set(splits.ood_classes)
    assert cli(["codes", str(tiny_run), "--split", "nope"]) == 2  # a usage error, one line


def test_codes_that_cannot_fit_in_memory_are_refused_with_advice(tiny_run, monkeypatch):
    from neuralcodes.retrieval import codes as codes_module
    from neuralcodes.retrieval import run_codes

    # 64 train images: 64 x ((256 + 16 + 16) x 4 bytes x variants + 64 x 64 x 3 image bytes)
    # = 912 KiB for both variants, 840 KiB for one; the limit is 90% of the available 970 KiB
    monkeypatch.setattr(codes_module, "available_memory", lambda: 970 * 1024)
    with pytest.raises(NeuralCodesError, match=r"64 train images .* one variant at a time"):
        run_codes(quiet(tiny_run), "train")
    assert not RunDir(tiny_run).codes("train", False).exists()
    paths = run_codes(quiet(tiny_run), "train", relu=False)  # one variant fits
    assert len(load_codes(paths[False])) == 64
    monkeypatch.setattr(codes_module, "available_memory", lambda: None)  # unknown: no check
    assert run_codes(quiet(tiny_run), "train")[True].is_file()


@pytest.mark.slow
def test_run_study_writes_every_output_once(tiny_run, capsys):
    result = run_study(quiet(tiny_run))
    out = RunDir(tiny_run).retrieval
    names = {"map.json", "top5.json", "top5_layer5.png", "top5_layer6.png", "top5_layer7.png",
             "top5_layers.png", "evidence.json", "pca.json", "pca.png"}
    assert names <= {p.name for p in out.iterdir()}
    maps = read_json(out / "map.json")
    assert {"pre", "post"} <= set(maps) and set(maps["pre"]) == {"5", "6", "7"}
    pre = load_codes(RunDir(tiny_run).codes("ood", False))
    # chance level: 2 ood classes of 20, each query against the other 39 (19 relevant)
    assert maps["chance_map"] == pytest.approx(chance_average_precision(39, 19))
    assert maps["chance_p@5"] == pytest.approx(19 / 39)
    for variant in ("pre", "post"):
        pairs = maps["pairs"][variant]
        assert [(p["a"], p["b"]) for p in pairs] == [("5", "6"), ("5", "7"), ("6", "7")]
        for p in pairs:
            assert p["diff"] == pytest.approx(maps[variant][p["a"]]["map"]
                                              - maps[variant][p["b"]]["map"])
            lo, hi = p["ci95"]
            assert lo <= p["diff"] <= hi and p["significant"] == (lo > 0 or hi < 0)
        best = maps["best_layer"][variant]
        if best is not None:  # it beats both others significantly
            assert all(p["significant"] and (p["diff"] > 0) == (p["a"] == best)
                       for p in pairs if best in (p["a"], p["b"]))
    assert maps["bootstrap"] == {"resamples": 2000, "seed": 0, "confidence": 0.95,
                                 "unit": "query"}
    for layer in ("5", "6", "7"):
        m = self_retrieval_metrics(pre.layers[layer], pre.labels, ks=(5, 10))
        assert maps["pre"][layer]["map"] == pytest.approx(m.map)
        assert maps["pre"][layer]["p@10"] == pytest.approx(m.precision[10].mean())
        assert maps["pre"][layer]["n_queries"] == 40
    top5 = read_json(out / "top5.json")
    assert len(top5["queries"]) == 10 and top5["relu"] is False
    q0 = top5["queries"][0]["layers"]["6"]
    assert len(q0) == 5 and all(r["position"] != 0 for r in q0)
    assert [r["score"] for r in q0] == sorted((r["score"] for r in q0), reverse=True)
    pca = read_json(out / "pca.json")
    dims = {(r["layer"], r["dims"]) for r in pca["table"]}
    assert ("5", 32) in dims and ("6", 16) in dims and ("6", 32) not in dims  # fc: 16 dims
    assert pca["fit"] == {"split": "train", "images": 64}
    full = {r["layer"]: r["map"] for r in pca["table"] if r["dims"] == "full"}
    for r in pca["table"]:
        if r["dims"] == "full":
            assert r["diff_vs_full"] is None and r["ci95"] is None
        else:
            assert r["diff_vs_full"] == pytest.approx(r["map"] - full[r["layer"]])
            assert r["ci95"][0] <= r["diff_vs_full"] <= r["ci95"][1]
    ev = read_json(out / "evidence.json")
    for layer in ("5", "6", "7"):
        assert ev["per_layer"][layer]["colour_similarity_random_pairs"] == pytest.approx(
            ev["colour_similarity_baseline"]["random_pairs"])
        assert ev["per_layer"][layer]["colour_similarity_same_class_pairs"] == pytest.approx(
            ev["colour_similarity_baseline"]["same_class_pairs"])
    assert result["evidence"]["per_layer"]["5"]["dims"] == 256
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli(["retrieval", str(tiny_run), "--no-progress"]) == 0  # all exists: nothing is redone
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "pre-ReLU layer 6: mAP" in capsys.readouterr().out
    post = run_study(quiet(tiny_run), relu=True)  # other codes: redone for them
    assert post["pca"]["relu"] is True and read_json(out / "top5.json")["relu"] is True
    assert post["evidence"]["relu"] is True and read_json(out / "map.json") == maps


def test_methods_study_stage_writes_once_and_reruns_when_its_settings_change(tiny_run, capsys,
                                                                             tmp_path, caplog):
    from neuralcodes.retrieval.methods.stage import run_methods

    rd = RunDir(tiny_run)
    assert run_study(quiet(tiny_run))["methods"] is None  # off in this run
    assert not rd.methods_file("json").exists()
    cfg = rd.read_config()
    cfg.retrieval.methods = ["whitening"]
    table = run_methods(tiny_run, config=cfg, progress=False)
    made = lineage.recorded(rd.methods_file("json"))
    assert made["settings"]["retrieval.methods"] == ["whitening"]
    assert made["weights"] == lineage.weights_identity(rd.best_checkpoint)
    assert lineage.recorded(rd.methods_file("png")) == made
    assert {r["family"] for r in table["rows"]} == {"paper", "whitening"}
    assert "fc6+lw16" in {r["method"] for r in table["rows"]} and table["verdict"]
    stamp = rd.methods_file("json").stat().st_mtime_ns
    assert run_methods(tiny_run, config=cfg, progress=False) == table  # current: skipped
    assert rd.methods_file("json").stat().st_mtime_ns == stamp
    cfg.retrieval.methods = ["whitening", "reranking"]
    with caplog.at_level("INFO"):
        again = run_methods(tiny_run, config=cfg, progress=False)
    assert "retrieval.methods changed" in caplog.text
    assert any(r["family"] == "reranking" for r in again["rows"])
    cfg.retrieval.methods = False
    assert run_methods(tiny_run, config=cfg, progress=False) is None
    # search --method: a pooled conv5 descriptor ranks the ood set; --why explains the hits
    query = _save_png(tmp_path / "q.png", Searcher(quiet(tiny_run)).image(3))
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(tiny_run), "--method", "spoc", "-k", "3",
                "--why", str(tmp_path / "why.png"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("method spoc") and [line.split()[0] for line in out[1:4]] == \
        ["1", "2", "3"]
    assert float(out[1].split()[1]) == pytest.approx(1.0, abs=1e-4)  # its own twin first
    assert Image.open(tmp_path / "why.png").size[1] > 3 * 128  # a row per hit
    assert cli(["search", str(query), "--run", str(tiny_run), "--method", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'nope'" in err[0] and "spoc" in err[0]


def _save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_search_own_image_finds_its_ood_twin(tiny_run, tmp_path, capsys):
    s = Searcher(quiet(tiny_run))
    query = _save_png(tmp_path / "q.png", s.image(3))
    hits = search(query, quiet(tiny_run), layer="5", k=4, figure=tmp_path / "fig.png")
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].position == 3
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[0].label
    assert (tmp_path / "fig.png").is_file()
    assert cli(["search", str(query), "--run", str(tiny_run), "-k", "2", "--device", "cpu"]) == 0
    head, *lines = capsys.readouterr().out.strip().splitlines()
    assert head == "layer 6, pre-ReLU codes, the ood set:"  # the search says what it ranked by
    assert len(lines) == 2 and lines[0].split()[0] == "1"
    # the run's retrieval.layers choose the default layer; --layer still wins
    assert cli(["search", str(query), "--run", str(tiny_run), "--device", "cpu",
                "--set", 'retrieval.layers=["5"]']) == 0
    assert capsys.readouterr().out.startswith("layer 5, ")
    assert cli(["search", str(query), "--run", str(tiny_run), "--device", "cpu",
                "--set", 'retrieval.layers=["5"]', "--layer", "7"]) == 0
    assert capsys.readouterr().out.startswith("layer 7, ")
    assert cli(["search", str(tmp_path / "missing.png"), "--run", str(tiny_run)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_index_folder_and_search_it(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mine"
    for i in range(5):
        _save_png(folder / ("sub" if i % 2 else "") / f"img{i}.png",
                  rng.integers(0, 256, (30 + 10 * i, 50, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "mine-index"
    assert cli(["index", str(folder), "--run", str(tiny_run), "--out", str(out), "--no-progress",
                "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "broken.jpg" in text and "+5 new, -0 gone, 0 changed, 0 kept, 1 unreadable; 5 " \
        "images indexed" in text
    assert len(Searcher(quiet(tiny_run), index=out)) == 5
    query = folder / "sub" / "img3.png"
    hits = search(query, quiet(tiny_run), index=out, layer="6", k=5)
    assert hits[0].path == str(query) and len(hits) == 5 and hits[0].same == "same file"
    update = build_index(folder, quiet(tiny_run))
    assert update.path == RunDir(tiny_run).index("mine") and update.count == 5
    assert len(update.failed) == 1
    shutil.rmtree(update.path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuralCodesError, match="no readable images"):
        build_index(tmp_path / "empty", quiet(tiny_run))


def test_search_says_when_k_is_beyond_the_database_and_shows_all(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "three"
    for i in range(3):
        _save_png(folder / f"img{i}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    index = tmp_path / "three-index"
    assert cli(["index", str(folder), "--run", str(tiny_run), "--out", str(index),
                "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    query = folder / "img0.png"
    base = ["search", str(query), "--run", str(tiny_run), "--device", "cpu"]
    assert cli([*base, "--index", str(index), "-k", "50"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 + 3  # the header and all 3 images
    assert err == ("neuralcodes: note: -k 50 is more than the 3 indexed images; "
                   "showing all 3\n")
    assert cli([*base, "--index", str(index), "--set", "retrieval.k=4"]) == 0  # the run's k
    assert capsys.readouterr().err == ("neuralcodes: note: retrieval.k 4 is more than the 3 "
                                       "indexed images; showing all 3\n")
    assert cli([*base, "-k", "45"]) == 0  # the ood set: 40 images
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 + 40
    assert err == "neuralcodes: note: -k 45 is more than the 40 ood images; showing all 40\n"
    assert cli([*base, "--index", str(index), "-k", "3"]) == 0  # exactly the database: no note
    assert capsys.readouterr().err == ""


def test_non_square_images_are_squeezed_alike_and_the_help_says_so(tiny_run, tmp_path,
                                                                    capsys):
    """Index images and queries are resized to 64x64 without keeping the aspect ratio (as the
    help says): a 120x40 image is stretched, not cropped or padded, and finds itself."""
    from neuralcodes.retrieval import read_image

    rng = np.random.default_rng(2)
    wide = _save_png(tmp_path / "own" / "wide.png",
                     rng.integers(0, 256, (40, 120, 3), dtype=np.uint8))
    _save_png(tmp_path / "own" / "square.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    stretched = Image.open(wide).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(read_image(wide), np.asarray(stretched))
    update = build_index(tmp_path / "own", quiet(tiny_run), out=tmp_path / "own-index")
    path = update.path
    hits = search(wide, quiet(tiny_run), index=path, layer="5", k=1)
    assert update.count == 2 and hits[0].path == str(wide)
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 codes
    for command in ("index", "search"):
        assert cli([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "resized to 64x64" in text and "without keeping its aspect ratio" in text, text
    # the search command says so for a query it squeezed (one note line per fact), not otherwise
    index_args = ["--run", str(tiny_run), "--index", str(path), "-k", "1", "--device", "cpu"]
    assert cli(["search", str(wide), *index_args]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"neuralcodes: note: {wide}: Your image is 120×40: it was squeezed to 64×64 "
                     "(the aspect ratio is not kept), as are the images of an index.",
                     f"neuralcodes: note: {wide}: Its height (40 px) was enlarged to 64, so the "
                     "model sees it blurred vertically."]
    assert cli(["search", str(tmp_path / "own" / "square.png"), *index_args]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("case", ["empty", "unreadable", "search a folder"])
def test_nothing_to_read_is_one_error_line_without_a_progress_bar(tiny_run, tmp_path, capsys,
                                                                  case):
    """With progress bars on: no bar line comes before the one-line error."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    if case == "unreadable":
        (folder / "a.png").write_bytes(b"not a png")
        (folder / "b.jpg").write_bytes(b"")
    argv = (["search", str(folder)] if case == "search a folder" else ["index", str(folder)])
    assert cli([*argv, "--run", str(tiny_run), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    expected = {"empty": f"{folder}: no readable images found (no image files: ",
                "unreadable": f"{folder}: no readable images found (2 unreadable)",
                "search a folder": f"{folder} is a folder; search takes image files"}[case]
    assert err.startswith(f"neuralcodes: error: {expected}"), err
    assert err.count("\n") == 1 and "\r" not in err, repr(err)
    assert out == ""


@pytest.mark.parametrize("flag", ["search --figure", "index --out"])
def test_an_output_path_in_a_missing_folder_is_refused_before_any_work(tiny_run, tmp_path,
                                                                       capsys, flag):
    image = _save_png(tmp_path / "q.png", np.zeros((64, 64, 3), np.uint8))
    target = tmp_path / "no" / "such" / "dir" / "x.png"
    argv = (["search", str(image), "--figure", str(target)] if flag == "search --figure"
            else ["index", str(tmp_path), "--out", str(target), "--no-progress"])
    before = _snapshot(tiny_run)
    assert cli([*argv, "--run", str(tiny_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralcodes: error:") and "\n" not in err, err
    assert f"the folder {target.parent} does not exist" in err, err
    assert not (tmp_path / "no").exists()  # no folder was created
    assert _snapshot(tiny_run) == before  # nothing was computed or written


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("argv, message", [
    (["retrieval", "{run}", "--set", "retrieval.k=0"], "retrieval.k"),
    (["retrieval", "{run}", "--set", "retrieval.pca_dims=[0]"], "pca_dims"),
    (["retrieval", "{run}", "--set", "data.max_per_class=10"],
     "cannot change data.max_per_class"),
    (["retrieval", "{run}", "--pca-images", "1"], "--pca-images"),
    (["codes", "{run}", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["codes", "{run}", "--set", "model.fc_width=8"], "cannot change model.fc_width"),
    (["index", "{run}", "--run", "{run}", "--batch-size", "0"],
     "--batch-size: must be at least 1"),
    (["search", "x.png", "--run", "{run}", "-k", "0"], "-k must be positive"),
    (["search", "x.png", "--run", "{run}", "--set", "retrieval.k=0"], "retrieval.k"),
])
def test_bad_settings_fail_in_one_line_before_any_work(tiny_run, capsys, argv, message):
    before = _snapshot(tiny_run)
    assert cli([a.replace("{run}", str(tiny_run)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralcodes: error:") and message in err and "\n" not in err
    assert _snapshot(tiny_run) == before  # nothing was computed or written


def test_study_of_a_database_smaller_than_10_has_no_precision_at_10(tiny_source, tiny_cache_root,
                                                                    tmp_path, capsys):
    from neuralcodes.training.loop import train

    d = Config().to_dict()
    d["data"].update(source=str(tiny_source), cache_dir=str(tiny_cache_root), ood_classes=2,
                     max_per_class=3)  # 6 ood images: each query ranks 5, 2 of them relevant
    d["model"].update(conv_widths=[4] * 5, fc_width=16)
    d["train"].update(max_epochs=1, batch_size=16, device="cpu")
    d["retrieval"].update(figure_queries=6, pca_dims=[4])
    train(Config.from_dict(d), tmp_path / "small", progress=False)
    assert cli(["retrieval", str(tmp_path / "small"), "--no-progress"]) == 0
    assert "P@10 —" in capsys.readouterr().out
    maps = read_json(RunDir(tmp_path / "small").map_json)
    assert maps["pre"]["6"]["p@10"] is None and maps["chance_p@10"] is None
    assert maps["pre"]["6"]["p@5"] is not None and maps["pre"]["6"]["n_queries"] == 6
    assert maps["chance_map"] == pytest.approx(chance_average_precision(5, 2))


def test_a_run_trained_with_a_relative_data_path_works_from_another_directory(
        tmp_path, tiny_source, monkeypatch, capsys):
    """config.json keeps --data as typed (here relative to where training ran); search from
    elsewhere uses the run's cache; without it, the error names the `prepare` command that
    restores it from the absolute source the run recorded."""
    import shlex
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere" / "deeper"
    work.mkdir()
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(work)
    cache = tmp_path / "cache"
    assert cli(["train", "--data", os.path.relpath(tiny_source, work), "--cache-dir", str(cache),
                "--out", "run", "--no-progress", "--set", "train.max_epochs=1", "--set",
                "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16", "--set",
                "data.ood_classes=2", "--set", "retrieval.k=3", "--device", "cpu"]) == 0
    query = next(tiny_source.rglob("*.JPEG"))
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(work / "run"), "-k", "3"]) == 0
    hits = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [h[0] for h in hits] == ["1", "2", "3"] and all("/images/" in h[2] for h in hits)
    shutil.rmtree(cache)
    # own photos need the checkpoint alone (it rebuilds its network): index and search work
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(query, own / "photo.jpg")
    assert cli(["index", str(own), "--run", str(work / "run"), "--no-progress"]) == 0
    index = work / "run" / "indexes" / "own"
    assert (index / "transform.npz").is_file()  # without the training images: its own
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(work / "run"), "--index", str(index),
                "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == str(own / "photo.jpg")
    assert not cache.exists()
    # the ood set does need the cache: one line naming the command that restores it (search
    with pytest.raises(NeuralCodesError, match="is missing; restore it with") as e:  # prepares
        TrainedRun.open(work / "run").dataset  # noqa: B018                        # nothing)
    assert not cache.exists()
    command = str(e.value).split("`")[1]
    assert command.startswith("neuralcodes prepare --data /")  # the recorded absolute source
    assert cli(shlex.split(command)[1:] + ["--no-progress"]) == 0
    data = TrainedRun.open(work / "run")
    assert len(data.dataset.labels) == 6 * 20 and len(data.splits.ood) == 2 * 20


def test_a_feature_registered_in_one_place_reaches_settings_help_and_codes(tiny_run, capsys):
    """One register() call: retrieval.layers accepts it, `search --help` lists it, and the
    codes stage computes it (beside the paper's codes) from the same forward pass."""
    from neuralcodes import features

    layers = '["5","6","7","conv4-mac"]'
    with pytest.raises(NeuralCodesError, match="retrieval.layers: Input should be"):
        Config.from_dict({"retrieval": {"layers": ["5", "conv4-mac"]}})
    features.register(features.Feature(
        "conv4-mac", "max over ReLU(conv4)'s cells: one value per channel", "code", "conv4",
        reduce=lambda t: t.relu().amax((2, 3)), shape=lambda s: s[:1]))
    try:
        cfg = Config.from_dict({"retrieval": {"layers": ["5", "conv4-mac"]}})
        assert cfg.retrieval.layers == ("5", "conv4-mac")
        assert cli(["search", "--help"]) == 0
        assert "conv4-mac: max over ReLU(conv4)" in capsys.readouterr().out
        assert cli(["codes", str(tiny_run), "--split", "test", "--relu", "pre", "--no-progress",
                    "--set", f"retrieval.layers={layers}"]) == 0
        assert "layer conv4-mac: 4" in capsys.readouterr().out
        codes = load_codes(RunDir(tiny_run).codes("test", False))
        assert codes.made_by["settings"]["layers"] == ["5", "6", "7", "conv4-mac"]
        run = quiet(tiny_run)
        images = run.images(codes.index)
        with torch.no_grad():
            raw = run.model.forward_intermediates(to_input(images), ("conv4",))["conv4"]
        want = torch.relu(raw).amax((2, 3)).numpy()
        np.testing.assert_allclose(codes.layers["conv4-mac"],
                                   want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    finally:
        features.unregister("conv4-mac")
    with pytest.raises(NeuralCodesError, match="retrieval.layers"):
        Config.from_dict({"retrieval": {"layers": ["conv4-mac"]}})


def test_the_checkpoint_rebuilds_its_network_and_older_ones_still_load(tiny_run, tmp_path):
    """best.pt names its network, arguments and classes; a weights-only checkpoint (written
    before) is rebuilt from config.json with fc8's class count; one with neither is refused
    in one line."""
    import shutil

    run = quiet(tiny_run)
    meta = run.meta
    assert meta["name"] == "convnet" and meta["args"]["conv_widths"] == [4, 4, 4, 4, 4]
    in_classes = run.splits.in_classes
    assert meta["classes"] == {"ids": [run.dataset.wnids[c] for c in in_classes],
                               "names": [run.dataset.names[c] for c in in_classes]}
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    shutil.copy(RunDir(tiny_run).config, old / "config.json")
    ckpt = torch.load(RunDir(tiny_run).best_checkpoint, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "meta"}, old / "checkpoints" / "best.pt")
    legacy = TrainedRun.open(old, device="cpu")
    assert legacy.meta["classes"] is None and legacy.meta["num_classes"] == 4
    for a, b in zip(legacy.model.state_dict().values(), run.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    torch.save({"model": {"fc6.weight": torch.zeros(2, 2)}}, old / "checkpoints" / "best.pt")
    with pytest.raises(NeuralCodesError, match="best.pt: not a neuralcodes checkpoint"):
        TrainedRun.open(old).model  # noqa: B018
