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
    collect,
    course_reference,
    render,
    to_html,
    write_report,
)
from neuralcodes.retrieval.metrics import chance_average_precision, chance_map
from neuralcodes.retrieval.scores import labels_of_sizes

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
    assert "| layer 6 (fc6) | pre-ReLU | 33.3% | 43.3% | 38.3% |" in md
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
    ours = re.search(r"\| layer 7 \(fc7\) \| ([0-9.]+)% \| ", md)
    assert ours and float(ours.group(1)) == 34.5


def test_improved_sibling_run_is_measured(tmp_path):
    _fake_run(tmp_path / "base", {"5": 0.2, "6": 0.3, "7": 0.25}, top1=0.40)
    _fake_run(tmp_path / "better", {"5": 0.2, "6": 0.3, "7": 0.25}, top1=0.47,
              model=ModelConfig(batch_norm=True))
    facts = collect(tmp_path / "base")
    assert [r["name"] for r in facts["improved"]] == ["better"]
    md = write_report(tmp_path / "base")[0].read_text()
    assert "measured in run `better`" in md and "+7.0 pp" in md
    assert "not measured" in md  # augmentation has no run here


def test_html_is_self_contained(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(run / "curves.png")
    Image.new("RGB", (8, 8), "blue").save(run / "retrieval" / "top5_layer6.png")
    md = render(collect(run))
    assert "](curves.png)" in md and "](retrieval/top5_layer6.png)" in md
    html = to_html(md + "\n<script src='https://x.example/a.js'></script>\n", "t", run)
    assert "data:image/png;base64," in html and "src=\"curves.png\"" not in html
    sources = _links(html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html  # raw HTML in the text stays text
    # An image that is not a file in the run is left out, never linked.
    assert _links(to_html("![x](https://example.org/a.png) <https://example.org>", "t", run)) == []


def _links(html: str) -> list[str]:
    """Every src and href attribute of the page's real elements (links within the page
    aside)."""
    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and not v.startswith("#"))

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


def _set_data(run, **changes):
    saved = json.loads((run / "config.json").read_text())
    saved["data"].update(changes)
    write_json(run / "config.json", saved)


def test_course_comparison_per_epoch_and_final(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    _set_data(run, ood_classes=[{"wnid": f"n{i}", "name": f"c{i}"} for i in range(10)])
    md = write_report(run)[0].read_text()
    # epoch 2: val loss 2.5 against the course's 3.7511; val top-1 0.1 against 0.1784.
    assert ("| 2 | 3.4000 | 4.1655 | -0.7655 | 2.5000 | 3.7511 | -1.2511 | 20.0% | 11.6% | "
            "+8.4 pp | 10.0% | 17.8% | -7.8 pp |") in md
    assert "| 4 |" not in _section(md, "### Epoch by epoch")  # only epochs both have
    assert "compares the 3 epochs both have" in md
    assert "| test | 4.0000 | 2.8915 | 31.0% | 35.0% | 60.0% | 61.3% |" in md
    assert "| train | 2.0000 | 1.3232 | 41.0% | 68.4% | 60.0% | 88.7% |" in md
    # the same ood set's size and classes as the course's: mAP side by side as it is
    assert "| layer 5 (last pool) | 20.0% | 28.7% |" in md
    assert "| layer 7 (fc7) | 25.0% | 34.5% |" in md


def test_other_class_counts_are_compared_in_normalised_units(tmp_path):
    """15 classes against the course's 190: no raw difference of losses (ln 15 vs ln 190) or
    accuracies; loss / ln C and accuracy / chance instead, and mAP / chance for another ood
    set."""
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    _set_data(run, num_classes=15)
    md = write_report(run)[0].read_text()
    epochs = _section(md, "### Epoch by epoch")
    assert "Δ" not in epochs and "differs from the course's by" not in epochs
    assert "ln 15 = 2.71" in epochs and "ln 190 = 5.25" in epochs
    # epoch 2: val loss 2.5 / ln 15 = 0.92 against 3.7511 / ln 190 = 0.71; val top-1 0.1 x 15
    assert "| 2 | 0.92 | 0.71 | 1.50× | 33.90× |" in epochs
    results = _section(md, "## Results")
    assert "| test | 4.0000 | 2.8915 |" not in results
    assert "| test | 1.48 | 0.55 | 4.65× | 66.50× |" in results  # 4/ln15, 0.31*15, 0.35*190
    comparison = _section(md, "## Comparison")
    assert "÷ chance" in comparison and "not on one scale" in comparison


def test_a_weak_model_is_too_weak_to_test_the_papers_claim(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30}, top1=0.22,
                    extra_map=SIGNIFICANT_6)  # test top-1 12%: far above chance, below 25%
    md = write_report(run)[0].read_text()
    assert "This confirms" not in md and "Yes: layer 6" not in md
    assert "too weak to test the paper's claim" in _section(md, "## Answers")
    assert "**This model is too weak to test the paper's claim:** its test top-1 accuracy is " \
        "12.0%" in md
    assert "below the 25% this report asks" in md.split("## Answers")[0]
    # above the bar but at chance (4 classes, 27% on 100 images): the reason given is chance
    run = _fake_run(tmp_path / "r3", {"5": 0.21, "6": 0.333, "7": 0.30}, top1=0.37,
                    extra_map=SIGNIFICANT_6)
    _set_data(run, num_classes=4)
    md = write_report(run)[0].read_text()
    assert "27.0% (1.1× the\nchance level of 25.0%), within two standard errors of that " \
        "chance level on 100 test images: it has not learnt its classes" in md
    assert "(test top-1 27.0%, no better than chance)" in md and "below the 25%" not in md
    # a model above the bar gets the verdict, qualified by what the intervals cover
    md = write_report(_fake_run(tmp_path / "r2", {"5": 0.21, "6": 0.333, "7": 0.30},
                                extra_map=SIGNIFICANT_6))[0].read_text()
    assert "Yes: layer 6 is significantly better" in md and "This confirms" in md
    assert "variance between training runs was not\nmeasured" in md


def test_a_report_is_written_again_by_other_report_code_only(tmp_path, monkeypatch):
    import neuralcodes.report as report

    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30})
    md = write_report(run)[0]
    md.write_text(md.read_text().replace("## Answers", "## Stale answers"))
    assert "## Stale answers" in write_report(run)[0].read_text()  # same code: kept
    monkeypatch.setattr(report, "code_digest", lambda: "another version")
    assert "## Stale answers" not in write_report(run)[0].read_text()


def test_answers_come_first_numbered_as_the_assignment_with_links_to_their_evidence(tmp_path):
    from PIL import Image

    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30}, extra_map=SIGNIFICANT_6)
    for layer in "567":
        Image.new("RGB", (8, 8), "blue").save(run / "retrieval" / f"top5_layer{layer}.png")
    write_json(run / "retrieval" / "evidence.json", {
        "relu": False, "first_queries": 10,
        "per_layer": {"5": {"colour_similarity": 0.62, "p@5": 0.3},
                      "6": {"colour_similarity": 0.55, "p@5": 0.4}}})
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert md.split("\n## ")[1].startswith("Answers")  # the first section
    answers = _section(md, "## Answers")
    numbers = re.findall(r"^- \*\*([0-9.]+) — ", answers, re.M)
    assert numbers == ["1", "2.1", "2.2", "2.3", "3.1", "3.2", "3.3", "3.4"]
    items = re.split(r"^- ", answers, flags=re.M)[1:]
    assert all(len(re.findall(r"\]\(#[a-z0-9-]+\)", item)) == 1 for item in items), items
    assert "Test top-1 31.0% and top-5 60.0%" in answers
    assert "layer 5 21.0%, layer 6 33.3%, layer 7 30.0%" in answers
    assert "Layer 5's results are the closest to the query in colour" in answers
    # every link of the page leads to a heading of the page
    html = html_path.read_text()
    ids = set(re.findall(r' id="([^"]+)"', html))
    targets = re.findall(r'href="#([^"]+)"', html)
    assert len(targets) == 8 and set(targets) <= ids, set(targets) - ids


def test_html_scroll_areas_are_keyboard_reachable_in_a_main_landmark(tmp_path):
    from neuralcodes.report.render import style_hashes

    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    html = write_report(run)[1].read_text()
    assert html.count("<main>") == 1 and "</main>\n</body>" in html
    tables = html.count("<table>")
    assert tables >= 5
    boxes = re.findall(r'<div aria-label="table: [^"]+" class="scroll" role="region" '
                       r'tabindex="0">\s*<table>', html)
    assert len(boxes) == tables
    assert 'name="viewport"' in html
    (digest,) = style_hashes(html)
    assert digest.startswith("'sha256-") and len(digest) == 53  # 'sha256-' + 44 base64 + "'"


def test_no_paragraph_is_said_twice(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30}, extra_map=SIGNIFICANT_6)
    rows = [{"layer": "6", "dims": "full", "whiten": False, "map": 0.30},
            {"layer": "6", "dims": 64, "whiten": False, "map": 0.298, "diff_vs_full": -0.002,
             "ci95": [-0.006, 0.002]}]
    write_json(run / "retrieval" / "pca.json", {"relu": False, "table": rows})
    md = write_report(run)[0].read_text()
    paragraphs = [p.strip() for p in md.split("\n\n") if len(p.strip()) > 80]
    repeated = {p for p in paragraphs if paragraphs.count(p) > 1}
    assert not repeated, repeated
    assert md.count("compresses to 64 dimensions") == 1


def test_the_command_to_measure_the_techniques_fits_the_run(tmp_path):
    from neuralcodes.presets import preset_config

    run = _fake_run(tmp_path / "quick", {"5": 0.2, "6": 0.3, "7": 0.25})
    saved = json.loads((run / "config.json").read_text())
    saved["config"] = preset_config("quick")
    saved["config"]["data"]["source"] = "data/tiny 40.zip"
    write_json(run / "config.json", saved)
    md = write_report(run)[0].read_text()
    twin = (tmp_path / "quick-improved").as_posix()
    assert (f"`neuralcodes run --preset quick-improved --data 'data/tiny 40.zip' --out {twin}`"
            in md)
    assert "--preset improved" not in md
    md = write_report(_fake_run(tmp_path / "full", {"5": 0.2, "6": 0.3, "7": 0.25}))[0].read_text()
    assert "`neuralcodes run --preset improved --out " in md
    other = _fake_run(tmp_path / "other", {"5": 0.2, "6": 0.3, "7": 0.25})
    saved = json.loads((other / "config.json").read_text())
    saved["config"]["train"]["max_epochs"] = 7
    write_json(other / "config.json", saved)
    md = write_report(other)[0].read_text()
    assert (f"`neuralcodes run --config {other}/config.json --set train.augment=true "
            "--set model.batch_norm=true --out") in md


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
    assert chance_map(labels_of_sizes([3, 2])) == pytest.approx(float(want), abs=1e-12)
    # a singleton class has no relevant item: its query has no AP
    assert chance_map(labels_of_sizes([3, 1])) == pytest.approx(float(_brute_force_ap(3, 2)))


def test_report_states_the_exact_chance_map(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    md = write_report(run)[0].read_text()
    exact = float(chance_average_precision(4999, 2499))  # 5,000 ood images in 2 classes of 2,500
    share = 2499 / 4999  # the share of relevant items: not the expected AP
    assert f"expected mAP of {100 * exact:.2f}%" in md and f"{100 * share:.2f}%" not in md
    assert "assuming the classes are equally large" in md
    run2 = _fake_run(tmp_path / "r2", {"5": 0.2, "6": 0.3, "7": 0.25},
                     extra_map={"chance_map": 0.10127})
    md2 = write_report(run2)[0].read_text()
    assert ("expected mAP of 10.13% here\n(the exact expectation for this ood set, from "
            "`retrieval/map.json`)") in md2


# --------------------------------------------------------------------------- honest wording


def test_layer_differences_significant_or_not(tmp_path):
    maps = {"5": 0.21, "6": 0.333, "7": 0.33}
    md = write_report(_fake_run(tmp_path / "sig", maps, extra_map=SIGNIFICANT_6))[0].read_text()
    assert "- layer 6 − layer 7: +3.3 pp (95% CI +2.0 to +4.6 pp): significant" in md
    assert "Layer 6 is best: its mAP is significantly higher than each other layer's." in md

    flat = {"pairs": [{"a": "6", "b": "7", "diff": 0.003, "ci95": [-0.004, 0.010],
                       "significant": False},
                      {"a": "6", "b": "5", "diff": 0.12, "ci95": [0.10, 0.14],
                       "significant": True}], "best_layer": None}
    md = write_report(_fake_run(tmp_path / "flat", maps, extra_map=flat))[0].read_text()
    assert ("- layer 6 − layer 7: +0.3 pp (95% CI -0.4 to +1.0 pp): no significant difference"
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
    assert "**The classifier is at chance level:** test top-1 accuracy 0.5%" in md
    md = write_report(_fake_run(tmp_path / "r2", {"5": 0.1, "6": 0.1, "7": 0.1}))[0].read_text()
    assert "at chance level" not in md and "Test top-1 accuracy is 31.0%" in md


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
    assert "at 16 dimensions it loses 5.0 pp" in md
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
    assert ('<h2 id="comparison-with-the-paper-and-the-courses-reference">Comparison with the '
            'paper') in html_path.read_text()


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
    assert "Train top-1 exceeds test top-1 by 10.0 pp, less than twice its standard error" in md
    assert "shows how much the model" not in md
    ev = json.loads((run / "eval.json").read_text())
    for m in ev["splits"].values():
        m["n"] = 9500
    write_json(run / "eval.json", ev)
    md = write_report(run)[0].read_text()
    assert ("Train top-1 exceeds test top-1 by 10.0 pp, more than twice its standard error of\n"
            "0.7 pp: the train-test gap shows how much the model overfits.") in md


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
    # A space before the parenthesis after each verdict, said once (the comparison links to it).
    assert len(re.findall(r"without a significant loss\s\(mAP", md)) == 2  # layers 5, 6
    assert len(re.findall(r"with a significant gain\s\(mAP", md)) == 1  # layer 7
    assert not re.search(r"(loss|gain)\(", md)
    # The PCA table: every row has the header's cells and ends in its closing pipe.
    start = md.index("| codes | 16 | 64 | full |")
    table = list(itertools.takewhile(lambda line: line.startswith("|"), md[start:].splitlines()))
    assert len(table) == 2 + 6  # header, rule, 3 layers x (plain, whitened)
    assert all(line.endswith(" |") or line.endswith("---|") for line in table)
    assert not any(line.endswith("| ") for line in table)
    assert {line.count("|") for line in table} == {5}
    assert table[2] == "| layer 5 | 15.0% | 19.8% | 20.0% |"
    # The HTML table has as many cells per row as its header, none of them empty.
    pca_tables = [t for t in _html_tables(html_path.read_text())
                  if t and t[0] == ["codes", "16", "64", "full"]]
    assert len(pca_tables) == 1
    assert [len(r) for r in pca_tables[0]] == [4] * 7 and all(all(r) for r in pca_tables[0])
    assert pca_tables[0][-1] == ["layer 7 (whitened)", "20.0%", "25.4%", "25.0%"]


def test_a_folder_runs_report_says_its_measured_time_and_how_to_train_on(tmp_path):
    """No course heading for a non-course dataset; the whole run's time is the measured one
    (timings.json's whole_run, not the sum of a few stages); "train longer" is a command that
    parses and reruns on the run's own data into the same run."""
    from neuralcodes.cli import build_parser
    from neuralcodes.cli.common import config_from_args

    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30}, top1=0.22)
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["data"].update(source="my photos", dataset="image-folder")
    saved["data"]["dataset"] = "image-folder"
    write_json(run / "config.json", saved)
    write_json(run / "timings.json", {"estimate": {}, "actual": {"train": 600.0, "evaluate": 60.0},
                                      "whole_run": 1014.0})
    md = write_report(run)[0].read_text()
    assert "## Comparison with the paper\n" in md and "and the course's reference" not in md
    assert "(#comparison-with-the-paper)" in md
    assert "16.9 min for the whole run here (`neuralcodes run`, from reading the data" in md
    assert "11 min" not in md
    command = re.search(r"train longer, on the same data into the same run, to test it: "
                        r"`([^`]+)`", md).group(1)
    assert "--out " in command and "`neuralcodes run`)" not in md
    args = build_parser().parse_args(command.split()[1:])
    cfg = config_from_args(args)
    assert cfg.data.source == "my photos" and cfg.data.dataset == "image-folder"
    assert cfg.train.max_epochs == 200 and cfg.train.patience == 1 and args.out == str(run)
    # a run without the whole run's time says what its minutes count
    (run / "timings.json").unlink()
    write_json(run / "timings.json", {"actual": {"train": 600.0, "evaluate": 60.0}})
    md = write_report(run)[0].read_text()
    assert "11.0 min for the timed stages here (training, evaluation, retrieval)" in md


def test_top5_of_at_most_five_classes_is_not_applicable(tmp_path):
    """With 4 in-domain classes top-5 is always 100%: n/a, and said why, never 100.0%."""
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25}, top1=0.7)
    _set_data(run, num_classes=4)
    md = write_report(run)[0].read_text()
    assert "Top-5 is n/a: with 4 classes it is trivially 100%" in md
    assert "top-5 is n/a: with 4 classes it is trivially 100%" in _section(md, "## Results")
    assert "| test | 4.0000 | 60.0% | n/a | 100 |" in md and "100.0%" not in md
    _set_data(run, num_classes=6)  # above 5 classes top-5 says something
    md = write_report(run)[0].read_text()
    assert "n/a" not in _section(md, "## Results") and "| test | 4.0000 | 60.0% | 60.0% |" in md
