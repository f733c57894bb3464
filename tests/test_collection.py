"""A labelled collection measured (issue 20 point 4: `neuralcodes retrieval RUN --index NAME`)
and the example notebook (docs/example.ipynb) executed on a generated run."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image_folder
from neuralcodes import lineage
from neuralcodes.cli import main as cli
from neuralcodes.retrieval.labelled import REPORT_HTML, REPORT_MD, RESULT, chance_per_query
from neuralcodes.retrieval.metrics import (
    chance_average_precision,
    chance_map,
    ranking_metrics_from_scores,
    self_retrieval_metrics,
)
from neuralcodes.runs import RunDir

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "example.ipynb"


@pytest.fixture(scope="module")
def run(web_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny trained run (this module writes indexes into it)."""
    out = tmp_path_factory.mktemp("collection-run") / "run"
    shutil.copytree(web_run, out)
    return out


def _ap_at_k_oracle(relevant: list[bool], r: int, k: int) -> float:
    """AP@k written out from its definition: (1/min(R, k)) sum_{i<=k} P@i rel(i)."""
    hits, total = 0, 0.0
    for i, rel in enumerate(relevant[:k], 1):
        if rel:
            hits += 1
            total += hits / i
    return total / min(r, k)


def test_map_at_k_and_recall_at_k_on_a_toy_ranking():
    # One query; database labels in score order: relevant at ranks 1 and 3 (R = 2).
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    m = ranking_metrics_from_scores(scores, np.array([1]), np.array([1, 0, 1, 0, 0]),
                                    ks=(1, 3, 5))
    assert m.ap_at[1][0] == pytest.approx(1.0)  # 1/min(2, 1) * 1/1
    assert m.ap_at[3][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m.ap_at[5][0] == pytest.approx(m.ap[0])  # k = N: AP
    assert [m.recall[k][0] for k in (1, 3, 5)] == [0.5, 1.0, 1.0]
    rng = np.random.default_rng(0)  # random rankings against the written-out definition
    codes = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    m = self_retrieval_metrics(codes, labels, ks=(4, 10))
    sims = codes @ codes.T
    for q in range(30):
        order = [j for j in np.lexsort((np.arange(30), -sims[q])) if j != q]
        rel = [bool(labels[j] == labels[q]) for j in order]
        if sum(rel):
            for k in (4, 10):
                assert m.ap_at[k][q] == pytest.approx(_ap_at_k_oracle(rel, sum(rel), k))
                assert m.recall[k][q] == pytest.approx(sum(rel[:k]) / sum(rel))


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_chance_ap_at_k_is_the_mean_over_every_ranking(n):
    for r, k in itertools.product(range(1, n + 1), range(1, n + 1)):
        aps = [_ap_at_k_oracle([i < r for i in p], r, k)
               for p in itertools.permutations(range(n))]
        assert chance_average_precision(n, r, k) == pytest.approx(np.mean(aps))
    assert chance_average_precision(n, 1, n) == pytest.approx(chance_average_precision(n, 1))


def test_a_labelled_collection_is_measured_reported_and_recomputed_when_it_changes(
        run, tmp_path, capsys):
    folder = make_image_folder(tmp_path, n_classes=3, per_class=4)
    (folder / "loose.png").write_bytes((folder / "a-ants" / "img001.PNG").read_bytes())
    assert cli(["index", str(folder), "--run", str(run), "--name", "pets", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["retrieval", str(run), "--index", "pets", "--no-progress"]) == 0
    out = capsys.readouterr().out
    where = RunDir(run).index("pets")
    assert "pets: 12 images, 3 classes" in out
    assert f"report: {where / REPORT_MD} and {where / REPORT_HTML}" in out
    result = json.loads((where / RESULT).read_text())
    labels = np.repeat(np.arange(3), 4)
    assert result["unlabelled"] == 1 and result["ks"] == [5, 10]
    assert result["chance"]["map"] == pytest.approx(chance_map(labels))
    assert result["chance"]["map@5"] == pytest.approx(chance_map(labels, k=5))
    assert result["chance"]["p@5"] == pytest.approx(3 / 11)  # R/N
    assert result["chance"]["r@10"] == pytest.approx(10 / 11)  # k/N
    assert np.nanmean(chance_per_query(labels, "r@5")) == pytest.approx(5 / 11)
    assert set(result["layers"]) == {"5", "6", "7"}
    for row in result["layers"].values():
        assert all(0 <= row[k] <= 1 for k in result["names"])
        lo, hi = row["above_chance"]["map"]["ci95"]
        assert lo - 1e-12 <= row["map"] - result["chance"]["map"] <= hi + 1e-12  # float sums
        assert f"{row['map']:.4f}" in out
    md = (where / REPORT_MD).read_text()
    assert "AP@k = (1/min(R, k))" in md and "| chance |" in md
    assert lineage.recorded(where / REPORT_HTML) == lineage.recorded(where / RESULT)
    assert "<img" in (where / REPORT_HTML).read_text()
    before = (where / RESULT).stat().st_mtime_ns
    assert cli(["retrieval", str(run), "--index", "pets", "--no-progress"]) == 0
    assert (where / RESULT).stat().st_mtime_ns == before  # up to date: read, not recomputed
    shutil.copy(folder / "b-bees" / "img000.jpg", folder / "b-bees" / "extra.jpg")
    assert cli(["index", str(folder), "--run", str(run), "--name", "pets", "--no-progress"]) == 0
    assert cli(["retrieval", str(run), "--index", "pets", "--no-progress"]) == 0
    assert "13 images, 3 classes" in capsys.readouterr().out


def test_an_index_without_classes_is_refused_in_one_line(run, tmp_path, capsys):
    flat = make_image_folder(tmp_path, n_classes=1, per_class=3) / "a-ants"
    assert cli(["index", str(flat), "--run", str(run), "--name", "flat", "--no-progress"]) == 0
    one = make_image_folder(tmp_path / "one", n_classes=1, per_class=3)
    assert cli(["index", str(one), "--run", str(run), "--name", "one", "--no-progress"]) == 0
    capsys.readouterr()
    for name, found in (("flat", "no class subfolder"), ("one", "one class (a-ants)")):
        assert cli(["retrieval", str(run), "--index", name, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and found in err and "two class subfolders" in err


def test_the_example_notebook_runs_on_a_generated_run(run, tmp_path):
    folder = make_image_folder(tmp_path, n_classes=2, per_class=3)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"]["tags"]  # replaced by the test's values
    ns = {"RUN": str(run), "FOLDER": str(folder), "QUERY": str(folder / "b-bees" / "img000.jpg")}
    for i, c in enumerate(code[1:], 1):
        exec(compile("".join(c["source"]), f"example.ipynb cell {i}", "exec"), ns)
    assert ns["update"].count == 6
    result = ns["result"]
    assert result.hits[0].path == ns["QUERY"] and result.hits[0].same == "same file"
    assert result._repr_html_().count("<img") == 1 + 5
    assert ns["ood"]._repr_html_().count("<img") == 1 + 5
    assert ns["codes"].shape[0] == 1
    np.testing.assert_allclose(np.linalg.norm(ns["codes"], axis=1), 1, atol=1e-5)
