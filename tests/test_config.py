import json

import pytest

import jaxtune as jt
from jaxtune.config import ConfigError, apply_overrides, from_dict, ExperimentConfig


def test_overrides_parse_values_by_field_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\noptim:\n  learning_rate: 1e-4\n  rules:\n    - {pattern: 'embeddings/.*', frozen: true}\n    - {pattern: '.*'}\n")
    cfg = jt.load_config(path, ["optim.learning_rate=3e-5", "train.epochs=2", "optim.layer_decay=0.9",
                                "model.num_labels=null", "train.progress=false", "name=run 7"])
    assert cfg.optim.learning_rate == pytest.approx(3e-5) and isinstance(cfg.optim.learning_rate, float)
    assert cfg.train.epochs == 2.0 and cfg.optim.layer_decay == 0.9 and cfg.model.num_labels is None
    assert cfg.train.progress is False and cfg.name == "run 7"
    assert cfg.optim.rules[0].frozen and cfg.optim.rules[1].pattern == ".*"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        jt.load_config(None, ["optim.learnin_rate=1e-3"])
    msg = str(err.value)
    assert "optim.learnin_rate" in msg and "learning_rate" in msg and "layer_decay" in msg
    with pytest.raises(ConfigError, match="unknown key.*trian"):
        from_dict(ExperimentConfig, {"trian": {}})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected float, got 'abc'"):
        jt.load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected int"):
        jt.load_config(None, ["data.batch_size=3.5"])
    with pytest.raises(ConfigError, match=r"optim\.rules\[0\]\.lr_mult"):
        jt.load_config(None, ["optim.rules=[{pattern: x, lr_mult: fast}]"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.learning_rate"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        jt.load_config("nope.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = jt.load_config(None, ["optim.learning_rate=2e-5", "optim.rules=[{pattern: '.*', weight_decay: false}]"])
    jt.save_config(cfg, tmp_path / "c.yaml")
    jt.save_config(cfg, tmp_path / "c.json")
    assert jt.load_config(tmp_path / "c.yaml") == cfg
    assert jt.load_config(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["optim"]["rules"][0]["weight_decay"] is False
