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


def _numeric_fields(cls=ExperimentConfig, prefix=""):
    """Dotted names and types of every int/float field of the config (nested sections included)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp, name = hints[field.name], f"{prefix}{field.name}"
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{name}.")
            continue
        args = set(typing.get_args(tp)) or {tp}
        if args & {int, float} and bool not in args:
            yield name, float if float in args else int


@pytest.mark.parametrize("key, kind", list(_numeric_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_numeric_field_is_validated(key, kind):
    """A negative number is wrong for every numeric field (and NaN for every float): each must be refused
    at load time with the key named. A new numeric field without a check fails here."""
    overrides = ["optim.unfreezing=runtime"] if key == "optim.unfreeze_every" else []
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', chr(92) + '.')} must be"):
        jt.load_config(None, [*overrides, f"{key}=-1"])
    if kind is float:
        with pytest.raises(ConfigError, match=rf"^{key.replace('.', chr(92) + '.')} must be a finite number"):
            jt.load_config(None, [f"{key}=.nan"])


def test_defaults_and_shipped_configs_are_valid():
    import glob
    import os

    jt.validate_config(ExperimentConfig())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = glob.glob(os.path.join(root, "experiments", "configs", "*.yaml"))
    assert paths
    for path in paths:
        jt.load_config(path)


def test_boundaries_that_are_valid():
    cfg = jt.load_config(None, ["optim.layer_decay=1.0", "optim.warmup_fraction=0", "optim.weight_decay=0",
                                "early_stopping.patience=0", "train.seed=0", "name=sweep/run1",
                                "optim.rules=[{pattern: 'emb.*', frozen: true, name: backbone}, {pattern: '.*', lr_mult: 0}]"])
    assert cfg.optim.layer_decay == 1.0 and cfg.name == "sweep/run1" and cfg.optim.rules[1].lr_mult == 0.0
