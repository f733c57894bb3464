import json

import pytest

from neuralcodes.config import Config, DataConfig, TrainConfig
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
    with pytest.raises(NeuralCodesError, match="unknown setting.*'train'.*lrr"):
        Config.from_dict({"train": {"lrr": 1}})


def test_overrides_are_typed():
    from neuralcodes.config import apply_override

    cfg = Config()
    apply_override(cfg, "train.lr=3e-4")
    apply_override(cfg, "model.conv_widths=[8,8,8,8,8]")
    apply_override(cfg, "train.max_epochs=2")
    apply_override(cfg, "train.precision=bf16")
    apply_override(cfg, "train.lr=1")  # an int where a float is expected is fine
    assert cfg.train.lr == 1.0 and cfg.train.max_epochs == 2 and cfg.train.precision == "bf16"
    assert cfg.model.conv_widths == (8, 8, 8, 8, 8)
    for bad in ["train.max_epochs=two", "nosuch.x=1", "train.nosuch=1", "train.lr"]:
        with pytest.raises(NeuralCodesError):
            apply_override(cfg, bad)
