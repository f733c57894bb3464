"""cpu_conv=auto: the measured per-layer kernel choice, its cache, and the forced settings.

A fake ``measure`` (a timing table) drives the choice, so nothing here depends on this CPU's
speed; one test runs the real measurement on a tiny model with a tiny budget.
"""

from __future__ import annotations

import json

import pytest
import torch

from neuralcodes.config import Config, DataConfig, ModelConfig, TrainConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json
from neuralcodes.kernels import choice
from neuralcodes.kernels.nnpack import NNPACK_MIN_BATCH, nnpack_layers
from neuralcodes.model import ConvNet
from neuralcodes.model.build import build_model

CPU = torch.device("cpu")
SMALL = ModelConfig(conv_widths=(8, 8, 8, 8, 8), fc_width=16)
needs_nnpack = pytest.mark.skipif(not torch.backends.nnpack.is_available(),
                                  reason="this torch build has no NNPACK")


@pytest.fixture(autouse=True)
def _measure_for_real(monkeypatch):
    """These tests drive the choice themselves: no table from conftest."""
    monkeypatch.delenv(choice.TIMINGS_ENV, raising=False)


class FakeMeasure:
    """A timing table in place of the measurement; counts its calls and what they asked."""

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        self.table, self.calls = table, []

    def __call__(self, model, options, batch, train, channels_last, budget_s):
        self.calls.append((batch, train))
        return {n: {k: self.table[n][k] for k in kernels} for n, kernels in options.items()}, batch


TABLE = {"conv2": {"onednn": 3.0, "nnpack": 2.0}, "conv3": {"onednn": 1.0, "nnpack": 1.5},
         "conv4": {"onednn": 0.9, "nnpack": 0.6}, "conv5": {"onednn": 0.5, "nnpack": 0.5}}


def _choose(tmp_path, measure, **kw):
    args = {"setting": "auto", "device": CPU, "precision": "fp32", "batch": 100, "train": True,
            "cache_dir": tmp_path, "measure": measure} | kw
    return choice.choose(ConvNet(5, SMALL), **args)


@needs_nnpack
def test_a_timing_table_chooses_the_faster_kernel_per_layer(tmp_path):
    measure = FakeMeasure(TABLE)
    made = _choose(tmp_path, measure)
    # conv5 is a tie: torch's default kernel keeps it
    assert made.layers == {"conv2": "nnpack", "conv3": "onednn", "conv4": "nnpack",
                           "conv5": "onednn"}
    assert made.how == "measured" and made.nnpack == ["conv2", "conv4"]
    assert made.timings_ms["conv2"] == {"onednn": 3000.0, "nnpack": 2000.0}
    assert measure.calls == [(100, True)]
    assert "conv2, conv4 in NNPACK; conv3, conv5 in oneDNN" in made.describe()
    inverted = FakeMeasure({n: {"onednn": v["nnpack"], "nnpack": v["onednn"]}
                            for n, v in TABLE.items()})
    assert _choose(tmp_path / "other", inverted).nnpack == ["conv3"]


@needs_nnpack
def test_the_choice_is_cached_and_reused_per_batch_and_mode(tmp_path):
    measure = FakeMeasure(TABLE)
    first = _choose(tmp_path, measure)
    again = _choose(tmp_path, measure)
    assert measure.calls == [(100, True)]  # measured once
    assert again.how == "cached" and again.layers == first.layers
    assert again.timings_ms == first.timings_ms
    saved = read_json(choice.cache_file(tmp_path))
    assert saved["torch"] == torch.__version__ and saved["cpu"] == choice.cpu_identity()
    (entry,) = saved["entries"].values()
    assert entry["choice"] == first.layers and entry["batch"] == 100 and entry["mode"] == "train"
    # another batch, inference, or another model shape is another measurement
    _choose(tmp_path, measure, batch=250, train=False)
    _choose(tmp_path, measure, batch=64)
    assert measure.calls == [(100, True), (250, False), (64, True)]
    assert len(read_json(choice.cache_file(tmp_path))["entries"]) == 3
    wider = ConvNet(5, ModelConfig(conv_widths=(8, 16, 8, 8, 8), fc_width=16))
    choice.choose(wider, setting="auto", device=CPU, precision="fp32", batch=100, train=True,
                  cache_dir=tmp_path, measure=measure)
    assert len(measure.calls) == 4


@needs_nnpack
def test_a_new_torch_version_or_cpu_invalidates_the_cache(tmp_path, monkeypatch):
    measure = FakeMeasure(TABLE)
    _choose(tmp_path, measure)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert _choose(tmp_path, measure).how == "measured"
    assert len(measure.calls) == 2
    saved = read_json(choice.cache_file(tmp_path))
    assert saved["torch"] == "9.9.9" and len(saved["entries"]) == 1  # the old ones are dropped
    assert _choose(tmp_path, measure).how == "cached"
    # the same file name but another CPU model in it (e.g. a copied cache): measured again
    data = read_json(choice.cache_file(tmp_path))
    data["cpu"] = {**data["cpu"], "model": "999"}
    choice.cache_file(tmp_path).write_text(json.dumps(data))
    assert _choose(tmp_path, measure).how == "measured" and len(measure.calls) == 3
    choice.cache_file(tmp_path).write_text("{not json")  # a damaged cache: measured again
    assert _choose(tmp_path, measure).how == "measured" and len(measure.calls) == 4


def test_forced_settings_and_single_kernels_measure_nothing(tmp_path):
    measure = FakeMeasure(TABLE)
    forced = _choose(tmp_path, measure, setting="onednn")
    assert forced.how == "forced" and forced.nnpack == []
    for kw in ({"precision": "bf16"}, {"compile": True}, {"batch": NNPACK_MIN_BATCH - 1}):
        made = _choose(tmp_path, measure, **kw)
        assert made.how == "one kernel applies" and made.nnpack == [], kw
    assert measure.calls == [] and not choice.cache_file(tmp_path).exists()
    with pytest.raises(NeuralCodesError, match="unknown cpu_conv 'winograd'"):
        _choose(tmp_path, measure, setting="winograd")


@needs_nnpack
def test_nnpack_forced_runs_every_eligible_layer_in_nnpack(tmp_path):
    made = _choose(tmp_path, FakeMeasure(TABLE), setting="nnpack")
    assert made.how == "forced" and made.nnpack == ["conv2", "conv3", "conv4", "conv5"]


def test_nnpack_forced_without_nnpack_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)
    with pytest.raises(NeuralCodesError, match="no NNPACK"):
        _choose(tmp_path, FakeMeasure(TABLE), setting="nnpack")
    assert _choose(tmp_path, FakeMeasure(TABLE)).nnpack == []  # auto: oneDNN only


@needs_nnpack
def test_the_environment_table_replaces_measuring_and_a_bad_one_is_refused(tmp_path,
                                                                           monkeypatch):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"conv3": {"onednn": 2, "nnpack": 1},
                                 "*": {"onednn": 1, "nnpack": 2}}))
    monkeypatch.setenv(choice.TIMINGS_ENV, str(table))
    measure = FakeMeasure(TABLE)
    made = _choose(tmp_path, measure)
    assert made.how == "table" and made.nnpack == ["conv3"] and measure.calls == []
    table.write_text(json.dumps({"conv3": {"onednn": 2}}))
    with pytest.raises(NeuralCodesError, match="not a kernel timing table"):
        _choose(tmp_path, measure)


@needs_nnpack
def test_build_model_applies_and_records_the_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(choice, "measure_layers", FakeMeasure(TABLE))
    cfg = Config(data=DataConfig(cache_dir=str(tmp_path)), model=SMALL,
                 train=TrainConfig(device="cpu", batch_size=32))
    model = build_model(cfg, 5, CPU)
    assert nnpack_layers(model) == ["conv2", "conv4"]
    assert model.kernel_choice.batch == 32 and model.kernel_choice.mode == "train"
    inference = build_model(cfg, 5, CPU, inference=True, batch_size=64)
    assert inference.kernel_choice.batch == 64 and inference.kernel_choice.mode == "inference"
    record = model.kernel_choice.to_dict()
    assert record["layers"]["conv2"] == "nnpack" and "family" in record["cpu"]
    assert choice.cache_file(tmp_path).is_file()  # in the configured cache dir


@needs_nnpack
@pytest.mark.parametrize("train", [True, False])
def test_the_real_measurement_times_both_kernels_within_its_budget(train):
    model = ConvNet(5, SMALL).to(memory_format=torch.channels_last)
    options = {n: list(choice.KERNELS) for n in ("conv2", "conv3", "conv4", "conv5")}
    timings, timed = choice.measure_layers(model, options, 32, train, True, budget_s=2.0)
    assert NNPACK_MIN_BATCH <= timed <= 32
    assert set(timings) == set(options)
    assert all(0 < s < float("inf") for v in timings.values() for s in v.values())
    assert all(p.grad is None for p in model.parameters())  # the model itself is untouched


@needs_nnpack
def test_measuring_leaves_the_seeded_random_stream_alone(tmp_path):
    def noisy(*args):
        torch.rand(1000)  # the real measurement draws random inputs
        return FakeMeasure(TABLE)(*args)

    model = ConvNet(5, SMALL)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    made = choice.choose(model, setting="auto", device=CPU, precision="fp32", batch=100,
                         train=True, cache_dir=tmp_path, measure=noisy)
    assert made.how == "measured"
    assert torch.equal(torch.rand(3), expected)
