"""The report states what the saved measurements say: tables and sentences come from the JSON."""

import json
import re

import pytest

from neuralcodes.config import Config, ModelConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import write_json
from neuralcodes.report import collect, render, to_html, write_report


def _fake_run(root, maps, top1=0.41, name="r1", model=None):
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
    write_json(root / "eval.json", {"checkpoint": "best", "epoch": 2, "splits": {
        s: {"loss": 2.0 + i, "top1": top1 - 0.05 * i, "top5": 0.6, "n": 100}
        for i, s in enumerate(["train", "val", "test"])}})
    write_json(root / "retrieval" / "map.json", {
        "pre": {k: {"map": v, "p@5": v + 0.1, "p@10": v + 0.05} for k, v in maps.items()},
        "post": {k: {"map": v - 0.01, "p@5": v, "p@10": v} for k, v in maps.items()}})
    return root


def test_tables_and_verdict_come_from_the_numbers(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.21, "6": 0.333, "7": 0.30})
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert "| layer 6 (fc6) | pre-ReLU | 0.333 | 0.433 | 0.383 |" in md
    assert "Our ranking is layer 6 > layer 7 > layer 5" in md
    assert "This confirms the paper" in md
    assert "40,516,382" in md
    assert "Early stopping fired at epoch 3" in md and "epoch 2" in md
    assert "<table>" in html_path.read_text()


def test_verdict_follows_a_different_ordering(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.287, "6": 0.318, "7": 0.345})
    md = write_report(run)[0].read_text()
    assert "Our ranking is layer 7 > layer 6 > layer 5" in md
    assert "does not confirm" in md
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
    html = to_html(render(collect(run)), "t")
    assert "data:image/png;base64," in html and "src=\"curves.png\"" not in html


def test_missing_evaluation_is_a_clear_error(tmp_path):
    run = _fake_run(tmp_path / "r1", {"5": 0.2, "6": 0.3, "7": 0.25})
    (run / "eval.json").unlink()
    with pytest.raises(NeuralCodesError, match="no eval.json"):
        write_report(run)
