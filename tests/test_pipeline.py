"""`neuralcodes run --preset quick` end to end on a generated dataset: every artifact, report
numbers equal to the saved JSON, and an interrupted run that continues where it stopped."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from neuralcodes import cli, retrieval
from neuralcodes.config import Config, apply_overrides
from neuralcodes.errors import NeuralCodesError
from neuralcodes.presets import preset_config


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
    "retrieval/pca.png", "retrieval/methods.json", "retrieval/methods.png", "report.md",
    "report.html",
]


@pytest.fixture
def argv(tiny_source, tiny_cache_root, tmp_path):
    return ["run", "--preset", "quick", "--data", str(tiny_source), "--cache-dir",
            str(tiny_cache_root), "--out", str(tmp_path / "run"), *TINY]


def _report_numbers_match_json(run):
    md = (run / "report.md").read_text()
    ev = json.loads((run / "eval.json").read_text())
    classes = json.loads((run / "config.json").read_text())["data"]["num_classes"]
    for split, m in ev["splits"].items():
        row = re.search(rf"^\| {split} \| ([0-9.]+) \| ([0-9.]+)% \| ([0-9.]+%|n/a) \|", md,
                        re.M)
        assert row, f"no {split} row in the report"
        loss, top1 = float(row.group(1)), float(row.group(2))
        assert (loss, top1) == pytest.approx((m["loss"], 100 * m["top1"]), abs=6e-2)
        if classes <= 5:  # top-5 of at most 5 classes is always 100%: n/a
            assert row.group(3) == "n/a" and m["top5"] == 1.0
        else:
            assert float(row.group(3)[:-1]) == pytest.approx(100 * m["top5"], abs=6e-2)
    maps = json.loads((run / "retrieval" / "map.json").read_text())
    for variant in ("pre", "post"):
        for layer, m in maps[variant].items():
            row = re.search(rf"^\| layer {layer} \([a-z0-9 ]+\) \| {variant}-ReLU \| "
                            r"([0-9.]+)% \| ([0-9.]+)% \| ([0-9.]+)% \|", md, re.M)
            assert row, f"no mAP row for layer {layer} {variant}"
            assert [float(v) for v in row.groups()] == pytest.approx(
                [100 * m["map"], 100 * m["p@5"], 100 * m["p@10"]], abs=6e-2)
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
    captured = capsys.readouterr()
    log = captured.err  # the stages are logged on stderr
    assert "skipped: " in log.split("== train ==")[1].split("==")[0]
    assert "skipped: " in log.split("== evaluate ==")[1].split("==")[0]
    assert "Report: " in log
    assert captured.out.strip() == str(run / "report.md")  # stdout: just the report's path
    for name in ARTIFACTS:
        assert (run / name).is_file(), name
    _report_numbers_match_json(run)
    methods = json.loads((run / "retrieval" / "methods.json").read_text())
    md = (run / "report.md").read_text()
    assert "### Beyond the paper" in md and methods["verdict"][0] in md
    assert all(f"| {r['method']} |" in md for r in methods["rows"])
    timings = json.loads((run / "timings.json").read_text())
    assert "methods" in timings["actual"] and timings["whole_run"] > 0  # measured, data to report
    assert f"{timings['whole_run'] / 60:.1f} min for the whole run here" in md

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


def test_quick_improved_differs_from_quick_only_by_the_two_techniques():
    quick, improved = build_config("quick", []), build_config("quick-improved", [])
    diffs = quick.differences(improved)
    assert sorted(d.split(":")[0] for d in diffs) == ["model.batch_norm", "train.augment"]


@pytest.mark.parametrize("command", ["run", "train"])
def test_plan_prints_the_plan_and_creates_nothing(command, tiny_source, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = ["--out", "out"] if command == "run" else ["--name", "out", "--runs-dir", "runs"]
    argv = [command, "--plan", "--data", str(tiny_source), "--cache-dir", "cache", *where,
            *[a for a in TINY if a != "--no-progress"], "--set", "train.max_epochs=40"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [], "--plan created something"
    assert "4 in-domain classes: 64 training, 8 validation, 8 test images; 40 out-of-domain" \
        in out
    train = re.search(r"^  train +~ *[0-9.]+ (s|min|h) +\((.*)\)$", out, re.M)
    assert train and "10 epochs, as many as the course's run needed" in train.group(2)
    assert "at most" in train.group(2) and "for all 40" in train.group(2)
    assert (re.search(r"^  retrieval +~", out, re.M) is not None) == (command == "run")
    # the count the report's table will have (3 paper, 12 pooling, 27 whitened, 5 re-ranked)
    assert (re.search(r"^  methods +~ .* 47 methods ranked on 40 ood images", out, re.M)
            is not None) == (command == "run")


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


@pytest.mark.slow
def test_plan_records_each_stage_estimate_beside_its_measured_time(tmp_path, capsys):
    """The plan logs each stage's estimate; timings.json keeps it beside the measured time."""
    from helpers import make_tiny_imagenet

    source = make_tiny_imagenet(tmp_path / "src", 6, 60)  # 192 training images
    argv = ["run", "--preset", "quick", "--data", str(source), "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--no-progress",
            "--set", "model.conv_widths=[16,16,16,16,16]", "--set", "model.fc_width=64",
            "--set", "train.max_epochs=2", "--set", "train.patience=9", "--set",
            "data.ood_classes=2", "--set", "retrieval.pca_dims=[4,8]"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().err  # the plan is logged (stderr); stdout gets the report's path
    assert re.search(r"^  train +~ *[0-9.]+ (s|min|h) +\(.* s per epoch at \d+ img/s", out, re.M)
    assert re.search(r"^  evaluate +~", out, re.M) and re.search(r"^  retrieval +~", out, re.M)
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert set(timings["actual"]) == {"train", "evaluate", "retrieval", "methods"}
    # every stage has a positive estimate beside its measured time; how close they are is a
    # timing, measured by benchmarks/plan.py, not asserted here (it moves with the machine's load)
    assert set(timings["estimate"]) >= {"train", "evaluate", "retrieval", "methods",
                                        "train_epoch"}
    assert all(v > 0 for v in timings["estimate"].values()), timings
    assert all(v > 0 for v in timings["actual"].values()), timings


def test_plan_states_the_measured_bf16_gain_only_where_it_was_measured():
    from neuralcodes.estimate import Speeds, estimate_stages, format_duration, plan_lines

    cfg = Config()
    sizes = {"train": 76_000, "val": 9_500, "test": 9_500, "ood": 5_000}
    fp32 = Speeds(train_ips=40.0, infer_ips=200.0, ranking_s=0.05, checkpoint_s=2.0)
    stages = estimate_stages(cfg, sizes, fp32)
    epoch = 76_000 / 40 + 9_500 / 200 + 1.25 * 2.0
    # expected: the 10 epochs the course's run needed; the upper bound: all 100 allowed
    assert stages[0].seconds == pytest.approx(10 * epoch)
    assert stages[0].upper == pytest.approx(100 * epoch)
    line = plan_lines(cfg, stages, fp32)[0]
    assert "10 epochs, as many as the course's run needed" in line
    assert f"at most {format_duration(100 * epoch)} for all 100" in line
    assert f"~{format_duration(10 * epoch):>9}" in line
    assert stages[1].seconds == pytest.approx(95_000 / 200)
    assert not any("bf16" in line for line in plan_lines(cfg, stages, fp32))
    both = dataclasses.replace(fp32, bf16_train_ips=90.0)
    assert plan_lines(cfg, stages, both)[-1].startswith(
        "This CPU has native bf16: --precision bf16 trains 2.2x as fast here")
    # the methods study: its own stage, grown with the ood set, gone when turned off
    methods = next(e for e in stages if e.name == "methods")
    small = next(e for e in estimate_stages(cfg, {**sizes, "ood": 500}, fp32)
                 if e.name == "methods")
    assert methods.seconds > small.seconds > 0 and "5,000 ood images" in methods.detail
    off = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, methods=False))
    assert [e.name for e in estimate_stages(off, sizes, fp32)] == ["train", "evaluate",
                                                                   "retrieval"]
    assert (format_duration(42), format_duration(750), format_duration(4 * 3600)) == (
        "42 s", "12.5 min", "4.0 h")


def test_the_probe_times_inference_at_the_batch_the_stages_use(tiny_data_config, tmp_path,
                                                              monkeypatch):
    """Evaluation runs batches of EVAL_BATCH (codes: 250, as fast per image); a probe at a
    smaller batch read a slower speed and over-estimated both stages."""
    from helpers import tiny_config
    from neuralcodes import estimate
    from neuralcodes.training.measure import EVAL_BATCH

    batches: list[int] = []
    real_build = estimate.build_model

    def spying_build(*args: object, **kwargs: object) -> object:
        model = real_build(*args, **kwargs)
        codes = model.forward_intermediates
        model.forward_intermediates = lambda x, names: batches.append(len(x)) or codes(x, names)
        return model

    monkeypatch.setattr(estimate, "build_model", spying_build)
    cfg = tiny_config(tiny_data_config)
    cfg.retrieval.pca_dims = (4, 16)
    speeds = estimate.probe_speeds(cfg, 4, tmp_path)
    assert batches == [EVAL_BATCH] * 3  # one warm-up pass, two timed
    assert speeds.code_dims == {"5": 8 * 8 * 8, "6": 32, "7": 32}  # TINY_MODEL's codes
    assert speeds.infer_ips > 0 and speeds.pca_s > 0
    # the probe's models chose their convolution kernels (from the tests' fake timing table):
    # the plan says which, for training and for inference
    nnpack = torch.backends.nnpack.is_available()
    assert set(speeds.kernels) == {"train", "inference"}
    assert ("conv2 in NNPACK; conv3, conv4, conv5 in oneDNN (train, fp32, batch 16"
            in speeds.kernels["train"]) == nnpack
    assert "(inference, fp32, batch 250" in speeds.kernels["inference"]
    sizes = {"train": 64, "val": 8, "test": 8, "ood": 40}
    lines = estimate.plan_lines(cfg, estimate.estimate_stages(cfg, sizes, speeds), speeds)
    assert [line[:35] for line in lines if line.startswith("Convolution")] == [
        "Convolution kernels, train: conv2 i", "Convolution kernels, inference: con"]


def test_the_retrieval_estimate_counts_the_pca_study():
    """The stage computes codes of the ood set and the PCA sample, fits a PCA per layer, ranks
    the ood set for mAP (both variants) and for every PCA size (plain and whitened) next to the
    full code, and draws its figures: each part is in the estimate."""
    from neuralcodes.estimate import FIGURE_S, PROBE_PCA, PROBE_RANKING, Speeds, estimate_stages

    dims = {"5": 16384, "6": 2048, "7": 2048}
    speeds = Speeds(train_ips=40.0, infer_ips=200.0, ranking_s=0.05, checkpoint_s=2.0,
                    pca_s=0.1, code_dims=dims)
    sizes = {"train": 1200, "val": 150, "test": 150, "ood": 500}
    quick = build_config("quick", [])  # PCA to 16, 32, 64 and 128 dims
    stage = {s.name: s for s in estimate_stages(quick, sizes, speeds)}["retrieval"]
    rankings = 2 * 3 + 3 * (1 + 2 * 4)
    pca = 0.1 * (1200 / PROBE_PCA[0]) * sum(dims.values()) / PROBE_PCA[1]
    expected = ((500 + 1200) / 200 + rankings * 0.05 * (500 / PROBE_RANKING) ** 2 + pca
                + 5 * FIGURE_S)
    assert stage.seconds == pytest.approx(expected)
    assert "33 rankings" in stage.detail and "3 PCA fits" in stage.detail
    # a PCA size beyond the code length cannot be fitted, so it is not ranked either
    small = dataclasses.replace(speeds, code_dims={"5": 48, "6": 48, "7": 48})
    fewer = {s.name: s for s in estimate_stages(quick, sizes, small)}["retrieval"]
    assert f"{2 * 3 + 3 * (1 + 2 * 2)} rankings" in fewer.detail  # 16 and 32 only
