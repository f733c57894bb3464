"""The report states what the saved measurements say: tables and sentences come from the JSON."""

import itertools
import json
import re
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

import pytest

from neuralcodes import figures
from neuralcodes.config import Config, ModelConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import write_json
from neuralcodes.report import (
    chance_map_of_sizes,
    collect,
    course_reference,
    render,
    to_html,
    write_report,
)
from neuralcodes.retrieval.metrics import chance_average_precision

SIGNIFICANT_6 = {"pairs": [
    {"a": "6", "b": "5", "diff": 0.12, "ci95": [0.10, 0.14], "significant": True},
    {"a": "6", "b": "7", "diff": 0.033, "ci95": [0.02, 0.046], "significant": True},
    {"a": "7", "b": "5", "diff": 0.09, "ci95": [0.07, 0.11], "significant": True}],
    "best_layer": "6"}


def _fake_run(root, maps, top1=0.41, name="r1", model=None, state=None, extra_map=None):
    cfg = Config()
    if model:
        cfg.model = model
    root.mkdir(parents=True)
    write_json(root / "config.json", {
        "config": cfg.to_dict(),
        "data": {"num_classes": 190, "splits_hash": "abc", "manifest_hash": "m" * 64,
                 "sizes": {"train": 76000, "val": 9500, "test": 9500, "ood": 5000},
                 "ood_classes": [{"wnid": "n1", "name": "cat"}, {"wnid": "n2", "name": "dog"}]},
    })
    rows = [{"epoch": e, "train_loss": 4 - e * 0.3, "train_acc": 0.1 * e, "val_loss": v,
             "val_acc": 0.1, "val_top5": 0.3, "seconds": 60.0}
            for e, v in [(1, 3.0), (2, 2.5), (3, 2.6)]]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(root / "train_state.json", state if state is not None else {
        "epochs_completed": 3, "best_epoch": 2, "best_val_loss": 2.5, "stopped_epoch": 3,
        "stopped_early": True, "patience": 0, "finished": True, "device": "cpu"})
    write_json(root / "eval.json", {"checkpoint": "best", "epoch": 2, "splits": {
        s: {"loss": 2.0 + i, "top1": top1 - 0.05 * i, "top5": 0.6, "n": 100}
        for i, s in enumerate(["train", "val", "test"])}})
    write_json(root / "retrieval" / "map.json", {
        "pre": {k: {"map": v, "p@5": v + 0.1, "p@10": v + 0.05} for k, v in maps.items()},
        "post": {k: {"map": v - 0.01, "p@5": v, "p@10": v} for k, v in maps.items()},
        **(extra_map or {})})
    return root


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start:] if end < 0 else md[start:end]


def test_tables_and_verdict_come_from_the_numbers(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30}, extra_map=SIGNIFICANT_6)
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert "| layer 6 (fc6) | pre-ReLU | 0.333 | 0.433 | 0.383 |" in md
    assert "Our ranking is layer 6 > layer 7 > layer 5" in md
    assert "This confirms the paper" in md
    assert "40,516,382" in md
    assert "Early stopping fired at epoch 3" in md and "epoch 2" in md
    assert "<table>" in html_path.read_text()


def test_verdict_follows_a_different_ordering(tmp_path):
    pairs = {"pairs": [{"a": "7", "b": "6", "diff": 0.027, "ci95": [0.01, 0.04]},
                       {"a": "7", "b": "5", "diff": 0.058, "ci95": [0.04, 0.07]},
                       {"a": "6", "b": "5", "diff": 0.031, "ci95": [0.02, 0.04]}],
             "best_layer": "7"}
    run = _fake_run(tmp_path / "r1", {"5": 0.287, "6": 0.318, "7": 0.345}, extra_map=pairs)
    md = write_report(run)[0].read_text()
    assert "Our ranking is layer 7 > layer 6 > layer 5" in md
    assert "does not confirm" in md
    assert "layer 7\nis significantly better than layer 6" in md
    ours = re.search(r"\| layer 7 \(fc7\) \| ([0-9.]+) \| ([0-9.]+) \|", md)
    assert ours and float(ours.group(1)) == 0.345


def test_improved_sibling_run_is_measured(tmp_path):
    _fake_run(tmp_path / "base", {"5": 0.2, "6": 0.3, "7": 0.25}, top1=0.40)
    _fake_run(tmp_path / "better", {"5": 0.2, "6": 0.3, "7": 0.25}, top1=0.47,
              model=ModelConfig(batch_norm=True))
    facts = collect(tmp_path / "base")
    assert [r["name"] for r in facts["improved"]] == ["better"]
    md = write_report(tmp_path / "base")[0].read_text()
    assert "measured in run `better`" in md and "+0.070" in md
    assert "not measured" in md  # augmentation has no run here


def test_html_is_self_contained(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(run / "curves.png")
    Image.new("RGB", (8, 8), "blue").save(run / "retrieval" / "top5_layers.png")
    md = render(collect(run))
    assert "](curves.png)" in md and "](retrieval/top5_layers.png)" in md
    html = to_html(md + "\n<script src='https://x.example/a.js'></script>\n", "t", run)
    assert "data:image/png;base64," in html and "src=\"curves.png\"" not in html
    sources = _links(html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html  # raw HTML in the text stays text
    # An image that is not a file in the run is left out, never linked.
    assert _links(to_html("![x](https://example.org/a.png) <https://example.org>", "t", run)) == []


def _links(html: str) -> list[str]:
    """Every src and href attribute of the page's real elements."""
    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href"))

    Parser().feed(html)
    return found


def test_missing_evaluation_is_a_clear_error(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    (run / "eval.json").unlink()
    with pytest.raises(NeuralCodesError, match="no eval.json"):
        write_report(run)


# --------------------------------------------------------------------------- course reference


def test_course_reference_is_the_notebooks_numbers():
    ref = course_reference()
    assert [r["epoch"] for r in ref["epochs"]] == list(range(1, 11))
    assert ref["epochs"][9] == {"epoch": 10, "train_loss": 2.0563, "train_acc": 0.4842,
                                "train_top5": 0.7638, "val_loss": 2.8169, "val_acc": 0.3637,
                                "val_top5": 0.6187}
    assert ref["evaluation"]["test"] == {"loss": 2.8915, "top1": 0.35, "top5": 0.6134}
    assert ref["map"] == {"5": 0.28695, "6": 0.31776, "7": 0.34487}
    assert ref["source"]["notebook"].endswith("2IMM10_Assignment_2_1_answer.ipynb")
    ref["map"]["5"] = 0  # callers get a copy
    assert course_reference()["map"]["5"] == 0.28695


def test_course_comparison_per_epoch_and_final(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    md = write_report(run)[0].read_text()
    # epoch 2: val loss 2.5 against the course's 3.7511; val top-1 0.1 against 0.1784.
    assert ("| 2 | 3.4000 | 4.1655 | -0.7655 | 2.5000 | 3.7511 | -1.2511 | 0.200 | 0.116 | "
            "+0.084 | 0.100 | 0.178 | -0.078 |") in md
    assert "| 4 |" not in _section(md, "### Epoch by epoch")  # only epochs both have
    assert "compares the\n3 epochs both have" in md
    assert "| test | 4.0000 | 2.8915 | 0.310 | 0.350 | 0.600 | 0.613 |" in md
    assert "| train | 2.0000 | 1.3232 | 0.410 | 0.684 | 0.600 | 0.887 |" in md
    assert "| layer 5 (last pool) | 0.200 | 0.287 |" in md
    assert "| layer 7 (fc7) | 0.250 | 0.345 |" in md


def test_learning_curves_draw_the_course_dashed(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig))
    rows = [{"epoch": 1, "train_loss": 4.0, "train_acc": 0.1, "val_loss": 3.9, "val_acc": 0.1}]
    ref = course_reference()["epochs"]
    figures.plot_learning_curves(rows, tmp_path / "c.png", reference=ref)
    loss_ax = saved[0].axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    dashed = lines["validation, course (Keras)"]
    assert dashed.get_linestyle() == "--"
    assert list(dashed.get_ydata()) == [r["val_loss"] for r in ref]
    acc = {line.get_label(): line for line in saved[0].axes[1].get_lines()}
    assert list(acc["train, course (Keras)"].get_ydata()) == [r["train_acc"] for r in ref]
    figures.plot_learning_curves(rows, tmp_path / "c.png")
    assert not any("course" in line.get_label() for line in saved[1].axes[0].get_lines())


# --------------------------------------------------------------------------- statistics


def _brute_force_ap(n: int, r: int) -> Fraction:
    """Mean AP over every placement of r relevant items among n ranks."""
    total, count = Fraction(0), 0
    for ranks in itertools.combinations(range(1, n + 1), r):
        total += sum(Fraction(i + 1, k) for i, k in enumerate(ranks)) / r
        count += 1
    return total / count


@pytest.mark.parametrize("n,r", [(1, 1), (4, 1), (4, 2), (6, 3), (7, 7), (9, 2)])
def test_expected_random_ap_is_exact(n, r):
    assert float(chance_average_precision(n, r)) == pytest.approx(float(_brute_force_ap(n, r)),
                                                                  abs=1e-12)


def test_chance_map_averages_over_queries():
    # Classes of 3 and 2 images: 3 queries with 2 relevant of 4, 2 queries with 1 of 4.
    want = (3 * _brute_force_ap(4, 2) + 2 * _brute_force_ap(4, 1)) / 5
    assert chance_map_of_sizes([3, 2]) == pytest.approx(float(want), abs=1e-12)
    # a singleton class has no relevant item: its query has no AP
    assert chance_map_of_sizes([3, 1]) == pytest.approx(float(_brute_force_ap(3, 2)))


def test_report_states_the_exact_chance_map(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    md = write_report(run)[0].read_text()
    exact = float(chance_average_precision(4999, 2499))  # 5,000 ood images in 2 classes of 2,500
    share = 2499 / 4999  # the share of relevant items: not the expected AP
    assert f"expected mAP of {exact:.4f}" in md and f"{share:.4f}" not in md
    assert "assuming the classes are equally large" in md
    run2 = _fake_run(tmp_path / "r2", {"5": 0.2, "6": 0.3, "7": 0.25},
                     extra_map={"chance_map": 0.10127})
    md2 = write_report(run2)[0].read_text()
    assert ("expected mAP of 0.1013 here\n(the exact expectation for this ood set, from "
            "`retrieval/map.json`)") in md2


# --------------------------------------------------------------------------- honest wording


def test_layer_differences_significant_or_not(tmp_path):
    maps = {"5": 0.21, "6": 0.333, "7": 0.33}
    md = write_report(_fake_run(tmp_path / "sig", maps, extra_map=SIGNIFICANT_6))[0].read_text()
    assert "- layer 6 − layer 7: +0.033 (95% CI +0.020 to +0.046): significant" in md
    assert "Layer 6 is best: its mAP is significantly higher than each other layer's." in md

    flat = {"pairs": [{"a": "6", "b": "7", "diff": 0.003, "ci95": [-0.004, 0.010],
                       "significant": False},
                      {"a": "6", "b": "5", "diff": 0.12, "ci95": [0.10, 0.14],
                       "significant": True}], "best_layer": None}
    md = write_report(_fake_run(tmp_path / "flat", maps, extra_map=flat))[0].read_text()
    assert ("- layer 6 − layer 7: +0.003 (95% CI -0.004 to +0.010): no significant difference"
            in md)
    assert "No layer is significantly better than all the others." in md
    assert "is best: its mAP" not in md and "This confirms" not in md
    assert "neither confirms nor contradicts" in md

    md = write_report(_fake_run(tmp_path / "old", maps))[0].read_text()
    assert "Confidence intervals for the differences between layers are unavailable" in md
    assert "is best: its mAP" not in md and "This confirms" not in md


def test_training_that_did_not_stop_early(tmp_path):
    state = {"epochs_completed": 3, "best_epoch": 2, "stopped_epoch": None,
             "stopped_early": False, "patience": 5, "finished": True, "device": "cpu",
             "kept": "last"}
    md = write_report(_fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25},
                                state=state))[0].read_text()
    training = _section(md, "## Training")
    assert "Training did not stop early" in training
    assert "Early stopping fired" not in training and "overfit" not in training
    assert "The weights kept are those of the last epoch, 3" in training


def test_training_state_missing_is_said(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    (run / "train_state.json").unlink()
    training = _section(write_report(run)[0].read_text(), "## Training")
    assert "Whether early stopping fired is not recorded" in training
    assert "Early stopping fired" not in training
    assert "best epoch, 2" in training  # the default when the run does not say


def test_classifier_at_chance_is_called_so(tmp_path):
    md = write_report(_fake_run(tmp_path / "r1", {"5": 0.1, "6": 0.1, "7": 0.1},
                                top1=0.105))[0].read_text()  # test top-1 0.005 = 1/190
    assert "**The classifier is at chance level:** test top-1 accuracy 0.005" in md
    md = write_report(_fake_run(tmp_path / "r2", {"5": 0.1, "6": 0.1, "7": 0.1}))[0].read_text()
    assert "at chance level" not in md and "Test top-1 accuracy is 0.310" in md


def test_pca_and_evidence_state_their_baselines(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    rows = [{"layer": "6", "dims": "full", "whiten": False, "map": 0.30}]
    for d, diff, ci in ((16, -0.05, [-0.06, -0.04]), (64, -0.002, [-0.006, 0.002]),
                        (128, 0.001, [-0.002, 0.004])):
        rows.append({"layer": "6", "dims": d, "whiten": False, "map": 0.30 + diff,
                     "diff_vs_full": diff, "ci95": ci})
    write_json(run / "retrieval" / "pca.json", {"relu": False, "table": rows})
    write_json(run / "retrieval" / "evidence.json", {
        "relu": False, "first_queries": 10,
        "per_layer": {"5": {"colour_similarity": 0.62, "p@5": 0.3},
                      "6": {"colour_similarity": 0.55, "p@5": 0.4}},
        "colour_similarity_baseline": {"random_pairs": 0.45, "same_class_pairs": 0.58}})
    md = write_report(run)[0].read_text()
    assert "Layer 6 compresses to 64 dimensions without a significant loss" in md
    assert "at 16 dimensions it loses 0.050" in md
    assert "Baselines: random pairs of ood images 0.450, pairs of the same class\n  0.580" in md
    assert "Layer 5 returns results closer in colour than" in md

    (run / "retrieval" / "pca.json").unlink()
    ev = json.loads((run / "retrieval" / "evidence.json").read_text())
    del ev["colour_similarity_baseline"]
    write_json(run / "retrieval" / "evidence.json", ev)
    md = write_report(run)[0].read_text()
    assert "No random-pair or same-class baseline is recorded" in md
    assert "PCA" not in md.split("## Comparison")[0].split("## Image retrieval")[1]


def test_report_without_optional_artifacts(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    for p in ("retrieval/map.json", "train_state.json"):
        (run / p).unlink()
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert md.count("No retrieval measurements yet.") == 2
    assert "### Epoch by epoch" in md and "| test |" in md
    assert "<h2>Comparison with the paper" in html_path.read_text()


def test_templates_and_reference_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["neuralcodes"]
    shipped = {p for pattern in patterns for p in (root / "src" / "neuralcodes").glob(pattern)}
    package = root / "src" / "neuralcodes" / "report"
    assert package / "templates" / "report.md.j2" in shipped
    assert package.parent / "course_reference.json" in shipped


def test_train_test_gap_is_called_overfitting_only_beyond_noise(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})  # 100 images per split
    md = write_report(run)[0].read_text()
    assert "Train top-1 exceeds test top-1 by 0.100, less than twice its standard error" in md
    assert "shows how much the model" not in md
    ev = json.loads((run / "eval.json").read_text())
    for m in ev["splits"].values():
        m["n"] = 9500
    write_json(run / "eval.json", ev)
    md = write_report(run)[0].read_text()
    assert ("Train top-1 exceeds test top-1 by 0.100, more than twice its standard error of\n"
            "0.007: the train-test gap shows how much the model overfits.") in md


def _html_tables(html: str) -> list[list[list[str]]]:
    """Every table of the page as rows of cell texts (header row first)."""
    tables: list[list[list[str]]] = []

    class Parser(HTMLParser):
        cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                tables.append([])
            elif tag == "tr":
                tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                tables[-1][-1].append("".join(self.cell).strip())
                self.cell = None

    Parser().feed(html)
    return tables


def test_pca_sentences_and_table_are_well_formed(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25}, extra_map=SIGNIFICANT_6)
    rows = []
    for layer, full, gain in (("5", 0.2, False), ("6", 0.3, False), ("7", 0.25, True)):
        for whiten in (False, True):
            rows.append({"layer": layer, "dims": "full", "whiten": whiten, "map": full,
                         "diff_vs_full": None, "ci95": None})
            small = (64, 0.004, [0.001, 0.007]) if gain else (64, -0.002, [-0.006, 0.002])
            for d, diff, ci in ((16, -0.05, [-0.06, -0.04]), small):
                rows.append({"layer": layer, "dims": d, "whiten": whiten, "map": full + diff,
                             "diff_vs_full": diff, "ci95": ci})
    write_json(run / "retrieval" / "pca.json", {"relu": False, "table": rows})
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    # A space before the parenthesis after each verdict, in both places it is said.
    assert len(re.findall(r"without a significant loss\s\(mAP", md)) == 4  # layers 5, 6; twice
    assert len(re.findall(r"with a significant gain\s\(mAP", md)) == 2  # layer 7, twice
    assert not re.search(r"(loss|gain)\(", md)
    # The PCA table: every row has the header's cells and ends in its closing pipe.
    start = md.index("| codes | 16 | 64 | full |")
    table = list(itertools.takewhile(lambda line: line.startswith("|"), md[start:].splitlines()))
    assert len(table) == 2 + 6  # header, rule, 3 layers x (plain, whitened)
    assert all(line.endswith(" |") or line.endswith("---|") for line in table)
    assert not any(line.endswith("| ") for line in table)
    assert {line.count("|") for line in table} == {5}
    assert table[2] == "| layer 5 | 0.150 | 0.198 | 0.200 |"
    # The HTML table has as many cells per row as its header, none of them empty.
    pca_tables = [t for t in _html_tables(html_path.read_text())
                  if t and t[0] == ["codes", "16", "64", "full"]]
    assert len(pca_tables) == 1
    assert [len(r) for r in pca_tables[0]] == [4] * 7 and all(all(r) for r in pca_tables[0])
    assert pca_tables[0][-1] == ["layer 7 (whitened)", "0.200", "0.254", "0.250"]
