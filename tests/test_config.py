import json

import pytest

from neuralcodes.config import (
    Config,
    DataConfig,
    TrainConfig,
    apply_override,
    apply_overrides,
    resumable_settings,
)
from neuralcodes.errors import NeuralCodesError


def test_defaults_are_the_assignment_protocol():
    cfg = Config()
    assert (cfg.train.lr, cfg.train.amsgrad, cfg.train.batch_size) == (1e-4, True, 100)
    assert (cfg.train.max_epochs, cfg.train.patience) == (100, 0)
    assert cfg.data.ood_classes == 10 and cfg.data.fractions == (0.8, 0.1, 0.1)
    assert cfg.model.fc_width == 2048 and cfg.model.dropout == 0.5
    assert cfg.retrieval.layers == ("5", "6", "7") and cfg.retrieval.k == 5


def test_round_trip_through_json():
    cfg = Config(data=DataConfig(seed=7, ood_wnids=["n1", "n2"]), train=TrainConfig(lr=3e-4))
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.model.conv_widths, tuple)


def test_unknown_setting_is_a_clear_error():
    with pytest.raises(NeuralCodesError, match=r"train\.lrr: unknown setting"):
        Config.from_dict({"train": {"lrr": 1}})
    with pytest.raises(NeuralCodesError, match=r"nosuch: unknown setting"):
        Config.from_dict({"nosuch": {}})


def test_overrides_are_typed():
    cfg = Config()
    for item in ["train.lr=3e-4", "model.conv_widths=[8,8,8,8,8]", "train.max_epochs=2",
                 "train.precision=bf16", "train.lr=1"]:  # an int where a float is expected: fine
        cfg = apply_override(cfg, item)
    assert cfg.train.lr == 1.0 and cfg.train.max_epochs == 2 and cfg.train.precision == "bf16"
    assert isinstance(cfg.train.lr, float)
    assert cfg.model.conv_widths == (8, 8, 8, 8, 8)


@pytest.mark.parametrize("bad, match", [
    ("train.max_epochs=two", r"train\.max_epochs: .*integer"),
    ("train.max_epochs=2.5", r"train\.max_epochs: .*integer"),
    ("train.batch_size=true", r"train\.batch_size: .*integer"),
    ("nosuch.x=1", r"SECTION one of"),
    ("train.nosuch=1", r"'train' has no setting 'nosuch'"),
    ("train.lr", r"expected SECTION\.KEY=VALUE"),
    ("train.lr=-1", r"train\.lr: .*greater than 0"),
    ("data.ood_wnids=n1", r"data\.ood_wnids: .*valid list"),  # not the wnids 'n' and '1'
    ("retrieval.k=0", r"retrieval\.k: .*greater than or equal to 1"),
    ("retrieval.k=5000", r"retrieval\.k \(5000\) exceeds the ood database \(4999 images\)"),
    ('retrieval.layers=["9"]', r"retrieval\.layers: .*'5', '6' or '7'"),
    ('retrieval.layers=["6","6"]', r"retrieval\.layers: .*distinct"),
    ("train.precision=fp8", r"train\.precision: .*'fp32', 'bf16' or 'fp16'"),
    ("train.device=gpu", r"train\.device: "),
    ("train.cpu_conv=fast", r"train\.cpu_conv: "),
    ("model.conv_widths=[8,8]", r"model\.conv_widths: "),
    ("model.dropout=1", r"model\.dropout: .*less than 1"),
    ("data.fractions=[0.5,0.1,0.1]", r"data\.fractions: .*sum to 1"),
    ("data.max_classes=10", r"max_classes \(10\) must leave in-domain classes"),
    # one ood class: every retrieved image would be relevant, mAP 100% whatever the codes
    ("data.ood_classes=1", r"data\.ood_classes: .*greater than or equal to 2"),
    ('data.ood_wnids=["n1","n1"]', r"ood_wnids must name at least 2 classes"),
])
def test_each_bad_setting_fails_with_one_line_naming_it(bad, match):
    with pytest.raises(NeuralCodesError, match=match) as e:
        apply_override(Config(), bad)
    assert "\n" not in str(e.value)


def test_overrides_are_validated_together_not_one_by_one():
    # fewer images per class first would make k too large on its own; together they are valid
    d = apply_overrides(Config().to_dict(), ["retrieval.k=20", "data.max_per_class=5",
                                             "data.ood_classes=10"])
    assert Config.from_dict(d).retrieval.k == 20
    with pytest.raises(NeuralCodesError, match="exceeds the ood database"):
        Config.from_dict(apply_overrides(d, ["data.ood_classes=2"]))


def test_resumable_settings_are_marked_on_the_fields():
    marked = resumable_settings()
    assert {("train", "device"), ("train", "max_epochs"), ("data", "source")} <= marked
    assert ("train", "lr") not in marked and ("model", "fc_width") not in marked
    changed = apply_override(apply_override(Config(), "train.device=cpu"), "train.lr=0.5")
    assert Config().differences(changed) == ["train.lr: 0.0001 -> 0.5"]
    assert len(Config().differences(changed, ignore_resumable=False)) == 2
