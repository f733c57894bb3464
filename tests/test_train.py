"""Training: the early-stopping rule, an end-to-end tiny run, exact resume, Ctrl-C, NaN, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import LEARNER, TINY_MODEL, tiny_config, torchrun_train, weights
from neuralcodes import cli
from neuralcodes.config import Config, DataConfig, ModelConfig, TrainConfig, resumable_settings
from neuralcodes.errors import NeuralCodesError
from neuralcodes.evaluation import evaluate
from neuralcodes.files import read_json
from neuralcodes.kernels.nnpack import nnpack_layers
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.training import loop
from neuralcodes.training.batches import SplitData, augment_batch, epoch_order
from neuralcodes.training.early_stopping import EarlyStopping
from neuralcodes.training.loop import train
from neuralcodes.training.measure import evaluate_split
from neuralcodes.training.records import is_finished
from neuralcodes.training.step import make_optimizer
from neuralcodes.training.throughput import measure_throughput


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def same_metrics(a: list[dict], b: list[dict]) -> bool:
    timing = {"seconds", "img_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]


# ----------------------------------------------------------------------------- pure parts


def test_early_stopping_stops_at_first_rise_and_remembers_best():
    es = EarlyStopping(patience=0)
    assert [es.update(e, v) for e, v in enumerate([3.0, 2.5, 2.1], start=1)] == [True] * 3
    assert not es.should_stop
    assert es.update(4, 2.2) is False
    assert es.should_stop and es.stopped_epoch == 4
    assert (es.best_epoch, es.best_loss) == (3, 2.1)


def test_early_stopping_patience_and_ties_and_nan():
    es = EarlyStopping(patience=1)
    script = [(1, 3.0, True), (2, 3.1, False), (3, 2.9, True), (4, 2.9, False), (5, 3.5, False)]
    for epoch, loss, improved in script:
        assert not es.should_stop
        assert es.update(epoch, loss) is improved
    # a tie is no improvement: epochs 4 and 5 are two bad epochs in a row -> stop at 5
    assert es.should_stop and es.stopped_epoch == 5 and es.best_epoch == 3
    nan = EarlyStopping(patience=0)
    nan.update(1, 1.0)
    assert nan.update(2, math.nan) is False and nan.should_stop


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    a = epoch_order(42, 1, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(42, 1, 50))
    assert not np.array_equal(a, epoch_order(42, 2, 50))
    assert not np.array_equal(a, epoch_order(7, 1, 50))


def test_augment_batch_flips_and_shifts_each_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    flipped_only = augment_batch(x, pad=0)
    assert flipped_only.shape == x.shape and flipped_only.dtype == torch.uint8
    same = (flipped_only == x).flatten(1).all(1)
    mirrored = (flipped_only == x.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(same.sum()) < 64
    shifted = augment_batch(x, pad=2)
    assert shifted.shape == x.shape
    # every output is a window of the (maybe mirrored) zero-padded input
    for i in range(8):
        found = False
        for img in (x[i], x[i].flip(1)):
            p = torch.nn.functional.pad(img, (0, 0, 2, 2, 2, 2))
            found |= any(torch.equal(p[dy:dy + 8, dx:dx + 8], shifted[i])
                         for dy in range(5) for dx in range(5))
        assert found


@pytest.mark.parametrize("bad, name", [
    ("train.batch_size=0", "train.batch_size"), ("train.max_epochs=0", "train.max_epochs"),
    ("train.lr=-1", "train.lr"), ("train.patience=-1", "train.patience"),
    ("train.precision=fp8", "train.precision"), ("train.cpu_conv=winograd", "train.cpu_conv"),
    ("retrieval.k=0", "retrieval.k"), ("data.max_per_class=0", "data.max_per_class"),
])
def test_bad_settings_fail_before_any_work(tmp_path, tiny_data_config, capsys, bad, name):
    out = tmp_path / "r"
    argv = ["train", "--out", str(out), "--data", tiny_data_config.source, "--cache-dir",
            tiny_data_config.cache_dir, "--set", bad, "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralcodes: error: ") and err.count("\n") == 1 and name in err
    assert not out.exists()  # refused before anything was written


def test_evaluate_needs_a_run_directory(tmp_path):
    with pytest.raises(NeuralCodesError, match="not a run directory"):
        evaluate(TrainedRun.open(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_source, tiny_cache_root, tiny_cache) -> Path:
    """One tiny run trained to early stopping (shared by the tests below)."""
    data = DataConfig(source=str(tiny_source), cache_dir=str(tiny_cache_root), ood_classes=2)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(data, LEARNER, lr=1e-3, batch_size=8), out, progress=False)
    return out


def test_end_to_end_trains_early_stops_and_keeps_best(trained):
    run = RunDir(trained)
    m = rows(trained)
    state = read_json(run.train_state)
    assert state["finished"] and state["stopped_early"]
    val = [r["val_loss"] for r in m]
    best = int(np.argmin(val)) + 1
    # patience 0: it stops at the first epoch that is not a new best, and never before
    assert state["stopped_epoch"] == len(m)
    assert all(val[i] < min(val[:i]) for i in range(1, len(m) - 1))
    assert val[-1] >= min(val[:-1])
    assert state["best_epoch"] == best
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == best
    assert torch.load(run.last_checkpoint, weights_only=True)["epoch"] == len(m)
    assert state["kept"] == "best"
    saved = read_json(run.config)
    assert saved["config"]["train"]["lr"] == 1e-3 and saved["config"]["model"]["batch_norm"]
    assert saved["data"]["num_classes"] == 4 and saved["data"]["sizes"]["train"] == 64
    assert saved["data"]["manifest_hash"] and saved["data"]["splits_hash"]
    assert saved["versions"]["torch"] == torch.__version__
    log = run.log.read_text()
    assert run.curves.stat().st_size > 1000 and log.count("epoch ") >= len(m)
    # cpu_conv=auto: below NNPACK's minimum batch (this run's is 8) only oneDNN applies, and
    # the run's saved facts and log say so
    kernels = saved["kernels"]
    assert kernels["setting"] == "auto" and kernels["mode"] == "train" and kernels["batch"] == 8
    assert kernels["how"] == "one kernel applies"
    assert kernels["layers"] == dict.fromkeys(("conv2", "conv3", "conv4", "conv5"), "onednn")
    assert kernels["cpu"] and kernels["torch"] == torch.__version__
    assert "convolution kernels: conv2, conv3, conv4, conv5 in oneDNN (train, fp32, batch 8" in log


def test_evaluate_writes_table_above_chance(trained, capsys):
    assert cli.main(["evaluate", str(trained), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and all(s in out for s in ("train", "val", "test"))
    run = RunDir(trained)
    result = read_json(run.eval_json)
    assert result["checkpoint"] == "best"
    assert result["epoch"] == read_json(run.train_state)["best_epoch"]
    splits = result["splits"]
    assert [splits[s]["n"] for s in ("train", "val", "test")] == [64, 8, 8]
    chance = 1 / 4
    assert splits["train"]["top1"] >= 2 * chance and splits["test"]["top1"] >= 2 * chance
    assert all(splits[s]["top5"] == 1.0 for s in splits)  # 4 classes: top-5 holds them all
    # eval mode on the best weights reproduces the validation loss logged for the best epoch
    best_row = min(rows(trained), key=lambda r: r["val_loss"])
    assert splits["val"]["loss"] == pytest.approx(best_row["val_loss"], rel=1e-5)
    csv_lines = run.eval_csv.read_text().splitlines()
    assert csv_lines[0] == "split,loss,top1,top5,n" and len(csv_lines) == 4
    assert csv_lines[3].startswith("test,") and csv_lines[3].endswith(",8")


def test_trained_run_loads_the_eval_mode_best_model(trained):
    run = TrainedRun.load(trained, device="cpu")
    model, dataset, splits = run.model, run.dataset, run.splits
    assert not model.training and run.config.model == LEARNER and len(splits.in_classes) == 4
    assert run.epoch == read_json(RunDir(trained).train_state)["best_epoch"]
    # the run's cpu_conv setting (auto) chooses the kernels of the loaded model too, for
    # inference at the codes' batch
    assert nnpack_layers(model) == (["conv2"] if torch.backends.nnpack.is_available()
                                    else [])
    assert model.kernel_choice.mode == "inference" and model.kernel_choice.batch == 250
    data = SplitData.load(dataset, splits, "val", torch.device("cpu"))
    m = evaluate_split(model, data, device=torch.device("cpu"))
    best_row = min(rows(trained), key=lambda r: r["val_loss"])
    assert m["loss"] == pytest.approx(best_row["val_loss"], rel=1e-5)


def test_restore_best_false_keeps_the_last_weights_as_the_course_did(trained, tmp_path,
                                                                     tiny_data_config):
    cfg = tiny_config(tiny_data_config, LEARNER, lr=1e-3, batch_size=8, restore_best=False)
    out = train(cfg, tmp_path / "last", progress=False).root
    state, reference = read_json(RunDir(out).train_state), read_json(RunDir(trained).train_state)
    assert same_metrics(rows(out), rows(trained))  # the same trajectory and early stop
    assert (state["kept"], reference["kept"]) == ("last", "best")
    assert state["best_epoch"] == reference["best_epoch"] < state["stopped_epoch"]
    kept = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert (kept["epoch"], kept["kept"]) == (state["stopped_epoch"], "last")
    assert_same_weights(out / "checkpoints/best.pt", out / "checkpoints/last.pt")
    assert_same_weights(trained / "checkpoints/last.pt", out / "checkpoints/best.pt")
    # evaluation and codes (TrainedRun) use the kept, i.e. last, weights
    assert TrainedRun.load(out, device="cpu").epoch == state["stopped_epoch"]
    result = evaluate(TrainedRun.open(out, device="cpu", progress=False))
    assert result["epoch"] == state["stopped_epoch"]
    assert result["splits"]["val"]["loss"] == pytest.approx(rows(out)[-1]["val_loss"], rel=1e-5)
    assert "the last epoch's weights are kept" in RunDir(out).log.read_text()


def test_adam_uses_keras_epsilon_by_default():
    assert TrainConfig().adam_eps == 1e-7 and ("train", "adam_eps") not in resumable_settings()
    assert ("train", "restore_best") not in resumable_settings()
    model = torch.nn.Linear(3, 2)
    assert make_optimizer(model, TrainConfig()).param_groups[0]["eps"] == 1e-7
    opt = make_optimizer(model, TrainConfig(adam_eps=1e-3, amsgrad=False, lr=0.1))
    assert opt.param_groups[0]["eps"] == 1e-3 and not opt.param_groups[0]["amsgrad"]
    # one step from zero moments: p -= lr * g / (|g| + eps), with g = 1e-3 -> lr / 2
    before = model.weight.detach().clone()
    model.weight.grad = torch.full_like(model.weight, 1e-3)
    model.bias.grad = torch.zeros_like(model.bias)
    opt.step()
    torch.testing.assert_close(model.weight.detach(), before - 0.05)


def test_existing_run_is_not_overwritten_and_resume_checks_config(trained, tiny_data_config):
    cfg = tiny_config(tiny_data_config, LEARNER, lr=1e-3, batch_size=8)
    with pytest.raises(NeuralCodesError, match="already holds a run"):
        train(cfg, trained, progress=False)
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=5e-4))
    with pytest.raises(NeuralCodesError, match="cannot change train.lr"):
        train(changed, trained, resume=True, progress=False)
    assert is_finished(trained)


# ----------------------------------------------------------------------------- resume, Ctrl-C, NaN


@pytest.mark.slow
def test_the_progress_bar_ends_on_the_figures_of_the_epoch_line(tmp_path, tiny_data_config,
                                                                monkeypatch):
    """The bar's last drawn postfix is the epoch's train loss/acc (metrics.jsonl and the log
    line), although the postfix is otherwise refreshed only every 10 steps."""
    from neuralcodes.progress import Bar

    drawn: dict[str, list[str | None]] = {}

    class Recording(Bar):
        def display(self, msg: str | None = None, pos: int | None = None) -> object:
            if msg is None:  # a drawing of the bar (msg "" is the clearing on close)
                drawn.setdefault(self.desc, []).append(self.postfix)
            return super().display(msg, pos)

    monkeypatch.setattr(loop, "progress_bar", Recording)
    cfg = tiny_config(tiny_data_config, max_epochs=2, patience=5,
                      batch_size=3)  # 64 images: 22 steps, the last not a multiple of 10
    train(cfg, tmp_path / "run", progress=True)
    for row in rows(tmp_path / "run"):
        last = drawn[f"epoch {row['epoch']}/2"][-1]
        assert last == f"loss={row['train_loss']:.4f}, acc={row['train_acc']:.4f}", (row, drawn)


def test_interrupted_and_resumed_runs_end_with_identical_weights(tmp_path, tiny_data_config):
    # dropout and augmentation on: the RNG states must be restored too
    model = dataclasses.replace(TINY_MODEL, dropout=0.5)
    cfg = tiny_config(tiny_data_config, model, max_epochs=3, patience=5, augment=True)
    train(cfg, tmp_path / "straight", progress=False)

    # Ctrl-C in the middle of epoch 2 (after its 2nd step), then --resume
    def ctrl_c(epoch: int, step: int) -> None:
        if (epoch, step) == (2, 1):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False, on_step=ctrl_c)
    last = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 2)
    assert not is_finished(tmp_path / "cut")
    train(cfg, tmp_path / "cut", resume=True, progress=False)

    # stopped by the epoch limit after epoch 1, then resumed with a larger limit (the CLI path)
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=1))
    train(short, tmp_path / "short", progress=False)
    assert is_finished(tmp_path / "short")
    assert cli.main(["train", "--resume", str(tmp_path / "short"), "--epochs", "3",
                     "--no-progress"]) == 0

    for other in ("cut", "short"):
        for ckpt in ("last.pt", "best.pt"):
            assert_same_weights(tmp_path / "straight/checkpoints" / ckpt,
                                tmp_path / other / "checkpoints" / ckpt)
        assert same_metrics(rows(tmp_path / "straight"), rows(tmp_path / other))
    assert read_json(tmp_path / "short/config.json")["config"]["train"]["max_epochs"] == 3


def test_ctrl_c_through_the_cli_saves_and_exits_130(tmp_path, tiny_data_config, monkeypatch):
    calls = []
    real_step = loop.train_step

    def step_then_ctrl_c(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "r"
    argv = ["train", "--out", str(run), "--data", tiny_data_config.source, "--cache-dir",
            tiny_data_config.cache_dir, "--set", "data.ood_classes=2", "--set",
            "model.conv_widths=[8,8,8,8,8]", "--set", "model.fc_width=32", "--set",
            "train.batch_size=16", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 130
    last = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (0, 2)
    assert "interrupted" in (run / "train.log").read_text()
    assert signal.getsignal(signal.SIGINT) is handler  # our handler is gone again


def test_nan_loss_stops_at_once_and_says_how_to_continue(tmp_path, tiny_data_config,
                                                         monkeypatch, capsys):
    real_step = loop.train_step
    steps_per_epoch = 4  # 64 training images, batch 16
    calls = []

    def poisoned(net, *args, **kwargs):
        loss, correct = real_step(net, *args, **kwargs)
        calls.append(1)
        if len(calls) > steps_per_epoch and poisoned.lr_high:
            loss = loss * math.nan  # from the first step of epoch 2 (every step is checked)
        return loss, correct

    poisoned.lr_high = True
    monkeypatch.setattr(loop, "train_step", poisoned)
    cfg = tiny_config(tiny_data_config, max_epochs=3, patience=5)
    run = tmp_path / "r"
    with pytest.raises(NeuralCodesError, match="NaN/inf at epoch 2, step 1;") as e:
        train(cfg, run, progress=False)
    assert len(calls) == steps_per_epoch + 1  # stopped at the first bad step
    command = f"neuralcodes train --resume {run} --from best --set train.lr=0.0003"
    assert f"continue from them with a lower learning rate: `{command}`" in str(e.value)
    assert "fp32" not in str(e.value)  # the run is fp32 already
    assert torch.load(run / "checkpoints/best.pt", weights_only=True)["epoch"] == 1

    # the suggested command works: back to epoch 1's weights, lower lr, on to the end
    poisoned.lr_high = False
    argv = command.split()[1:] + ["--no-progress"]
    assert cli.main(argv) == 0
    saved = read_json(run / "config.json")
    assert saved["config"]["train"]["lr"] == 0.0003
    assert saved["changes"][0]["resumed_from"] == "best" and saved["changes"][0]["epoch"] == 1
    assert saved["changes"][0]["changed"] == ["train.lr: 0.003 -> 0.0003"]
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]
    assert "resuming with a changed setting: train.lr: 0.003 -> 0.0003" in (
        run / "train.log").read_text()
    # a plain resume still refuses a new learning rate
    with pytest.raises(NeuralCodesError, match=r"cannot change train\.lr.*--from best"):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e-5,
                                                                  max_epochs=4)),
              run, resume=True, progress=False)


# ----------------------------------------------------------------------------- distributed


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(tmp_path, tiny_data_config):
    """DDP with global batch 32 = 2 x 16 follows the single-process trajectory."""
    # 16 per process: the convolution kernels are the same as at 32 (NNPACK, where it is used,
    # only serves batches of 16 or more; and Adam makes rounding differences visible at 1e-2)
    cfg = tiny_config(tiny_data_config, max_epochs=2, patience=5, batch_size=32)
    train(cfg, tmp_path / "single", progress=False)
    torchrun_train(cfg, tmp_path / "ddp", 2, OMP_NUM_THREADS="1")
    assert read_json(tmp_path / "ddp/config.json")["distributed"] == {"world_size": 2,
                                                                    "backend": "gloo"}
    a = weights(tmp_path / "single/checkpoints/last.pt")
    b = weights(tmp_path / "ddp/checkpoints/last.pt")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"DDP weights differ from one process by up to {worst}"
    ra, rb = rows(tmp_path / "single"), rows(tmp_path / "ddp")
    assert [r["val_loss"] for r in ra] == pytest.approx([r["val_loss"] for r in rb], rel=1e-4)
    assert [r["train_loss"] for r in ra] == pytest.approx([r["train_loss"] for r in rb], rel=1e-4)



# ----------------------------------------------------------------------------- helpers, CLI


def test_cli_settings_override_the_assignment_defaults(tmp_path):
    from neuralcodes.cli.common import config_from_args

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"config": {"train": {"lr": 0.5, "patience": 2}}}))
    argv = ["train", "--data", "x.zip", "--epochs", "5", "--precision", "bf16", "--config",
            str(base), "--set", "data.ood_classes=3", "--set", "data.max_per_class=7",
            "--set", "model.conv_widths=[8,8,8,8,8]", "--set", "model.batch_norm=true",
            "--set", "train.lr=0.001", "--set", "train.cpu_conv=onednn"]
    cfg = config_from_args(cli.build_parser(argv).parse_args(argv))
    assert (cfg.data.source, cfg.data.ood_classes, cfg.data.max_per_class) == ("x.zip", 3, 7)
    assert cfg.model == ModelConfig(conv_widths=(8, 8, 8, 8, 8), batch_norm=True)
    t = cfg.train
    assert (t.max_epochs, t.lr, t.patience, t.precision, t.cpu_conv) == (5, 1e-3, 2, "bf16",
                                                                         "onednn")
    defaults = config_from_args(cli.build_parser(["train"]).parse_args(["train"]))
    assert defaults == Config()  # no flag: exactly the assignment's protocol
    argv = ["train", "--data", "123"]  # a path that looks like a number stays a path
    assert config_from_args(cli.build_parser(argv).parse_args(argv)).data.source == "123"


def test_measure_throughput_runs_real_steps_and_restores_threads():
    before = torch.get_num_threads()
    cfg = Config(model=TINY_MODEL, train=TrainConfig(batch_size=4, device="cpu", threads=1))
    assert measure_throughput(cfg, 3, steps=2, warmup=1) > 0
    assert torch.get_num_threads() == before
