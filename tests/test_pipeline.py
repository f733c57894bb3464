"""`neuralcodes run --preset quick` end to end on a generated dataset: every artifact, report
numbers equal to the saved JSON, and an interrupted run that continues where it stopped."""

from __future__ import annotations

import json
import re

import pytest

from neuralcodes import cli, retrieval
from neuralcodes.config import Config, apply_overrides
from neuralcodes.errors import NeuralCodesError
from neuralcodes.pipeline import preset_config


def build_config(preset: str, overrides: list[str]) -> Config:
    return Config.from_dict(apply_overrides(preset_config(preset), overrides))

TINY = ["--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
        "--set", "train.lr=0.01", "--set", "train.max_epochs=2", "--set", "data.ood_classes=2",
        "--set", "retrieval.pca_dims=[4,8]", "--no-progress"]

ARTIFACTS = [
    "config.json", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.jsonl", "curves.png",
    "train_state.json", "eval.json", "eval.csv", "codes/ood-prerelu.npz", "retrieval/map.json",
    "retrieval/top5_layer5.png", "retrieval/top5_layer6.png", "retrieval/top5_layer7.png",
    "retrieval/top5_layers.png", "retrieval/evidence.json", "retrieval/pca.json",
    "retrieval/pca.png", "report.md", "report.html",
]


@pytest.fixture
def argv(tiny_source, tiny_cache_root, tmp_path):
    return ["run", "--preset", "quick", "--data", str(tiny_source), "--cache-dir",
            str(tiny_cache_root), "--out", str(tmp_path / "run"), *TINY]


def _report_numbers_match_json(run):
    md = (run / "report.md").read_text()
    ev = json.loads((run / "eval.json").read_text())
    for split, m in ev["splits"].items():
        row = re.search(rf"^\| {split} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", md, re.M)
        assert row, f"no {split} row in the report"
        assert [float(v) for v in row.groups()] == pytest.approx(
            [m["loss"], m["top1"], m["top5"]], abs=6e-4)
    maps = json.loads((run / "retrieval" / "map.json").read_text())
    for variant in ("pre", "post"):
        for layer, m in maps[variant].items():
            row = re.search(rf"^\| layer {layer} \([a-z0-9 ]+\) \| {variant}-ReLU \| "
                            r"([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", md, re.M)
            assert row, f"no mAP row for layer {layer} {variant}"
            assert [float(v) for v in row.groups()] == pytest.approx(
                [m["map"], m["p@5"], m["p@10"]], abs=6e-4)
    data = json.loads((run / "config.json").read_text())["data"]
    assert len(data["ood_classes"]) == 2
    for c in data["ood_classes"]:
        assert f"{c['name']} (`{c['wnid']}`)" in md
    assert f"checksum `{data['source_checksum']}`" in md
    best = max(maps["pre"], key=lambda k: (maps["pre"][k]["map"], -int(k)))
    assert re.search(rf"Our ranking is layer {best} >", md)


@pytest.mark.slow
def test_quick_run_end_to_end_then_resume(argv, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    # Interrupted in the retrieval stage: exit 130, training and evaluation are kept.
    real = retrieval.run_study

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrieval, "run_study", interrupted)
    assert cli.main(argv) == 130
    assert (run / "eval.json").is_file() and not (run / "report.md").exists()
    capsys.readouterr()

    monkeypatch.setattr(retrieval, "run_study", real)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped: " in out.split("== train ==")[1].split("==")[0]
    assert "skipped: " in out.split("== evaluate ==")[1].split("==")[0]
    assert "Report: " in out
    for name in ARTIFACTS:
        assert (run / name).is_file(), name
    _report_numbers_match_json(run)

    # Running again redoes nothing but the report.
    mtime = (run / "retrieval" / "map.json").stat().st_mtime
    assert cli.main(argv) == 0
    assert (run / "retrieval" / "map.json").stat().st_mtime == mtime


def test_other_configuration_in_the_same_directory_is_refused(argv, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    saved = build_config("quick", [])
    (run / "config.json").write_text(json.dumps({"config": saved.to_dict()}))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "model.fc_width" in err


def test_presets_and_differences():
    quick = build_config("quick", ["train.max_epochs=1", "data.source=x.zip"])
    assert quick.data.max_classes == 20 and quick.train.max_epochs == 1
    improved = build_config("improved", [])
    assert improved.train.augment and improved.model.batch_norm
    assert build_config("assignment", []) == Config()
    diffs = Config().differences(improved)
    assert sorted(d.split(":")[0] for d in diffs) == ["model.batch_norm", "train.augment"]
    runtime_only = build_config("assignment", ["train.device=cpu", "train.threads=2",
                                               "data.source=a", "data.cache_dir=b"])
    assert Config().differences(runtime_only) == []
    with pytest.raises(NeuralCodesError, match="unknown preset"):
        build_config("fast", [])
