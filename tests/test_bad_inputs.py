"""The bad-input table (issue #13): every case feeds one wrong value, file or call and asserts that the
error names the offending thing (key, path, file, value) before any work is done.

Most cases need no model; weights cases use a 2-layer BERT (hidden size 8) written by
``jt.save_pretrained`` into a temporary directory once per module. The CLI cases at the end check
status 2, one line on stderr without a traceback, and ``--debug``.
"""
from __future__ import annotations

import json
import math
import pickle
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import cli, experiment
from jaxtune.checkpoint import Checkpointer
from jaxtune.config import ConfigError
from jaxtune.data import image as I
from jaxtune.data import loader as L
from jaxtune.data import text as T
from jaxtune.errors import UserError
from jaxtune.models import bert
from jaxtune.optim import unfreezing_stages
from jaxtune.rules import RuleError

PARAMS = {"embeddings": {"embedding": np.zeros((4, 2))},
          "layer_0": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)},
          "head": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}
RULES = [(r".*", jt.settings())]


def _layer_ids(path: str) -> int:
    return {"embeddings": 0, "layer_0": 1, "head": 2}[path.split("/")[0]]


# ---------------------------------------------------------------------------------------------
# Config values: `jt.load_config(None, overrides)` must raise ConfigError naming the key.

CONFIG_CASES = [
    ("lr_zero", ["optim.learning_rate=0"], r"optim\.learning_rate must be > 0, got 0"),
    ("lr_negative", ["optim.learning_rate=-1e-3"], r"optim\.learning_rate must be > 0, got -0\.001"),
    ("lr_nan", ["optim.learning_rate=.nan"], r"optim\.learning_rate must be a finite number, got nan"),
    ("lr_inf", ["optim.learning_rate=.inf"], r"optim\.learning_rate must be a finite number, got inf"),
    ("weight_decay_negative", ["optim.weight_decay=-0.1"], r"optim\.weight_decay must be >= 0, got -0\.1"),
    ("layer_decay_zero_is_not_off", ["optim.layer_decay=0.0"], r"optim\.layer_decay must be in \(0, 1\], got 0\.0"),
    ("layer_decay_above_one", ["optim.layer_decay=1.5"], r"optim\.layer_decay must be in \(0, 1\], got 1\.5"),
    ("warmup_fraction_one", ["optim.warmup_fraction=1.0"], r"optim\.warmup_fraction must be in \[0, 1\)"),
    ("warmup_fraction_negative", ["optim.warmup_fraction=-0.1"], r"optim\.warmup_fraction must be in \[0, 1\)"),
    ("schedule_unknown", ["optim.schedule=cosine"], r"optim\.schedule is 'cosine'; choose one of .*warmup_cosine"),
    ("optimizer_unknown", ["optim.optimizer=adamx"], r"optim\.optimizer 'adamx' is not an optax optimizer"),
    ("unfreezing_unknown", ["optim.unfreezing=gradual"], r"optim\.unfreezing is 'gradual'; choose one of null"),
    ("unfreeze_every_zero_with_unfreezing", ["optim.unfreezing=runtime"], r"optim\.unfreeze_every must be >= 1, got 0"),
    ("unfreeze_every_negative", ["optim.unfreeze_every=-2"], r"optim\.unfreeze_every must be >= 0, got -2"),
    ("unfreeze_stages_zero", ["optim.unfreeze_stages=0"], r"optim\.unfreeze_stages must be >= 1, got 0"),
    ("l2_sp_negative", ["optim.l2_sp=-1"], r"optim\.l2_sp must be >= 0, got -1"),
    ("weight_average_unknown", ["optim.weight_average=swa"], r"optim\.weight_average is 'swa'"),
    ("weight_average_decay_one", ["optim.weight_average_decay=1.0"], r"optim\.weight_average_decay must be in \[0, 1\)"),
    ("weight_average_start_one", ["optim.weight_average_start=1.0"], r"optim\.weight_average_start must be in \[0, 1\)"),
    ("rules_empty_list", ["optim.rules=[]"], r"optim\.rules is an empty list"),
    ("rule_frozen_with_lr_mult", ["optim.rules=[{pattern: 'emb.*', frozen: true, lr_mult: 2}, {pattern: '.*'}]"],
     r"optim\.rules\[0\] is frozen but also sets lr_mult"),
    ("rule_frozen_with_weight_decay", ["optim.rules=[{pattern: '.*', frozen: true, weight_decay: false}]"],
     r"optim\.rules\[0\] is frozen but also sets weight_decay"),
    ("rule_frozen_with_l2_sp", ["optim.rules=[{pattern: '.*', frozen: true, l2_sp: 0.1}]"],
     r"optim\.rules\[0\] is frozen but also sets l2_sp"),
    ("rule_lr_mult_negative", ["optim.rules=[{pattern: 'a'}, {pattern: '.*', lr_mult: -1}]"],
     r"optim\.rules\[1\]\.lr_mult must be >= 0, got -1"),
    ("rule_layer_decay_zero", ["optim.rules=[{pattern: '.*', layer_decay: 0}]"],
     r"optim\.rules\[0\]\.layer_decay must be in \(0, 1\], got 0"),
    ("rule_weight_decay_negative", ["optim.rules=[{pattern: '.*', weight_decay: -0.5}]"],
     r"optim\.rules\[0\]\.weight_decay must be >= 0, got -0\.5"),
    ("rule_l2_sp_nan", ["optim.rules=[{pattern: '.*', l2_sp: .nan}]"], r"optim\.rules\[0\]\.l2_sp must be a finite"),
    ("rule_name_empty", ["optim.rules=[{pattern: '.*', name: ''}]"], r"optim\.rules\[0\]\.name must be a non-empty"),
    ("rule_unknown_key", ["optim.rules=[{pattern: '.*', lr: 2}]"], r"unknown key\(s\) optim\.rules\[0\]\.lr"),
    ("rule_wrong_type", ["optim.rules=[{pattern: '.*', frozen: maybe}]"], r"optim\.rules\[0\]\.frozen: expected bool"),
    ("eval_every_zero", ["train.eval_every=0"], r"train\.eval_every must be >= 1, got 0"),
    ("log_every_zero", ["train.log_every=0"], r"train\.log_every must be >= 1, got 0"),
    ("epochs_zero", ["train.epochs=0"], r"train\.epochs must be > 0, got 0\.0"),
    ("epochs_negative", ["train.epochs=-1"], r"train\.epochs must be > 0, got -1\.0"),
    ("max_steps_zero", ["train.max_steps=0"], r"train\.max_steps must be >= 1, got 0"),
    ("accumulate_zero", ["train.accumulate=0"], r"train\.accumulate must be >= 1, got 0"),
    ("train_seed_negative", ["train.seed=-1"], r"train\.seed must be >= 0, got -1"),
    ("compute_dtype_unknown", ["train.compute_dtype=float8"], r"train\.compute_dtype is 'float8'"),
    ("batch_size_zero", ["data.batch_size=0"], r"data\.batch_size must be >= 1, got 0"),
    ("eval_batch_size_zero", ["data.eval_batch_size=0"], r"data\.eval_batch_size must be >= 1, got 0"),
    ("max_length_zero", ["data.max_length=0"], r"data\.max_length must be >= 1, got 0"),
    ("image_size_zero", ["data.image_size=0"], r"data\.image_size must be >= 1, got 0"),
    ("train_limit_zero", ["data.train_limit=0"], r"data\.train_limit must be >= 1, got 0"),
    ("eval_limit_negative", ["data.eval_limit=-5"], r"data\.eval_limit must be >= 1, got -5"),
    ("test_limit_zero", ["data.test_limit=0"], r"data\.test_limit must be >= 1, got 0"),
    ("data_seed_negative", ["data.seed=-1"], r"data\.seed must be >= 0, got -1"),
    ("patience_negative", ["early_stopping.patience=-1"], r"early_stopping\.patience must be >= 0, got -1"),
    ("min_delta_negative", ["early_stopping.min_delta=-0.01"], r"early_stopping\.min_delta must be >= 0"),
    ("stopping_mode_unknown", ["early_stopping.mode=maximum"], r"early_stopping\.mode is 'maximum'"),
    ("monitor_without_val_prefix", ["early_stopping.monitor=accuracy"], r"early_stopping\.monitor is 'accuracy'"),
    ("keep_best_zero", ["checkpoint.keep_best=0"], r"checkpoint\.keep_best must be >= 1, got 0"),
    ("keep_latest_zero", ["checkpoint.keep_latest=0"], r"checkpoint\.keep_latest must be >= 1, got 0"),
    ("num_labels_zero", ["model.num_labels=0"], r"model\.num_labels must be >= 1, got 0"),
    ("model_dtype_unknown", ["model.dtype=int8"], r"model\.dtype is 'int8'"),
    ("model_task_unknown", ["model.task=sentiment"], r"model\.task is 'sentiment'; choose one of 'auto'"),
    ("model_path_empty", ["model.path="], r"model\.path is empty"),
    ("name_parent_dir", ["name=../x"], r"name '\.\./x' leaves output_dir \('runs'\)"),
    ("name_nested_escape", ["name=a/../../x"], r"name 'a/\.\./\.\./x' leaves output_dir"),
    ("name_dot", ["name=."], r"name '\.' leaves output_dir"),
    ("name_absolute", ["name=/tmp/x"], r"name '/tmp/x' is an absolute path"),
    ("name_home", ["name=~/x"], r"name '~/x' is an absolute path"),
    ("name_empty", ["name="], r"name is empty"),
    ("output_dir_empty", ["output_dir="], r"output_dir is empty"),
    ("int_field_given_float", ["train.eval_every=1.5"], r"train\.eval_every: expected int, got 1\.5"),
    ("float_field_given_word", ["optim.learning_rate=fast"], r"optim\.learning_rate: expected float, got 'fast'"),
    ("unknown_key", ["train.evl_every=5"], r"unknown key\(s\) train\.evl_every; valid keys of train: .*eval_every"),
    ("override_without_equals", ["train.eval_every"], r"override 'train\.eval_every' is not key=value"),
    ("override_into_scalar", ["name=a", "name.x=1"], r"override 'name\.x=1': 'name' is not a section"),
    ("override_section_into_scalar_key", ["name.x=1"], r"^name: expected str, got \{'x': 1\}"),
]


@pytest.mark.parametrize("overrides, match", [pytest.param(o, m, id=i) for i, o, m in CONFIG_CASES])
def test_config_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        jt.load_config(None, overrides)


# ---------------------------------------------------------------------------------------------
# Config files.

def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


FILE_CASES = [
    ("empty_file", lambda d: _write(d, "empty.yaml", ""), ConfigError, r"config file .*empty\.yaml is empty"),
    ("comments_only_file", lambda d: _write(d, "c.yaml", "# nothing\n"), ConfigError, r"c\.yaml is empty"),
    ("missing_file", lambda d: d / "nope.yaml", FileNotFoundError, r"config file .*nope\.yaml not found"),
    ("directory_as_file", lambda d: d, ConfigError, r"is a directory; pass a YAML or JSON file"),
    ("top_level_list", lambda d: _write(d, "l.yaml", "- a\n- b\n"), ConfigError, r"l\.yaml holds a list, not a mapping"),
    ("invalid_yaml", lambda d: _write(d, "bad.yaml", "name: [unclosed\n"), ConfigError, r"bad\.yaml is not valid YAML"),
    ("bad_value_names_file_and_key", lambda d: _write(d, "v.yaml", "train:\n  eval_every: 0\n"), ConfigError,
     r"v\.yaml: train\.eval_every must be >= 1, got 0"),
    ("bad_json_value", lambda d: _write(d, "v.json", '{"optim": {"layer_decay": 0}}'), ConfigError,
     r"v\.json: optim\.layer_decay must be in \(0, 1\]"),
    ("section_not_mapping", lambda d: _write(d, "s.yaml", "optim: 3\n"), ConfigError, r"optim: expected a mapping, got 3"),
]


@pytest.mark.parametrize("make, error, match", [pytest.param(f, e, m, id=i) for i, f, e, m in FILE_CASES])
def test_config_file(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        jt.load_config(make(tmp_path))


def test_api_config_dict_is_validated_before_any_work(monkeypatch):
    monkeypatch.setattr(experiment, "prepare_data", lambda *a: pytest.fail("data were prepared"))
    with pytest.raises(ConfigError, match=r"train\.eval_every must be >= 1"):
        jt.finetune({"train": {"eval_every": 0}})
    with pytest.raises(ConfigError, match=r"optim\.rules\[0\] is frozen but also sets lr_mult"):
        jt.finetune(jt.ExperimentConfig(), ["optim.rules=[{pattern: '.*', frozen: true, lr_mult: 2}]"])


# ---------------------------------------------------------------------------------------------
# API arguments: rules, optimizer, schedules.

def _make_opt(**kwargs):
    args = dict(params=PARAMS, rules=RULES, optimizer=optax.adamw, learning_rate=1e-3)
    args.update(kwargs)
    return jt.make_optimizer(**args)


API_CASES = [
    ("settings_lr_mult_negative", lambda: jt.settings(lr_mult=-1.0), RuleError, r"^lr_mult must be >= 0, got -1\.0"),
    ("settings_lr_mult_nan", lambda: jt.settings(lr_mult=math.nan), RuleError, r"lr_mult must be a finite number"),
    ("settings_lr_mult_string", lambda: jt.settings(lr_mult="fast"), RuleError, r"lr_mult must be a number, got 'fast'"),
    ("settings_layer_decay_zero", lambda: jt.settings(layer_decay=0.0), RuleError, r"layer_decay must be in \(0, 1\], got 0\.0"),
    ("settings_layer_decay_above_one", lambda: jt.settings(layer_decay=1.01), RuleError, r"layer_decay must be in \(0, 1\]"),
    ("settings_weight_decay_negative", lambda: jt.settings(weight_decay=-1e-4), RuleError, r"weight_decay must be >= 0"),
    ("settings_weight_decay_inf", lambda: jt.settings(weight_decay=math.inf), RuleError, r"weight_decay must be a finite"),
    ("settings_l2_sp_negative", lambda: jt.settings(l2_sp=-0.1), RuleError, r"l2_sp must be >= 0, got -0\.1"),
    ("settings_name_empty", lambda: jt.settings(name=""), RuleError, r"name must be a non-empty string"),
    ("frozen_settings_with_lr_mult", lambda: jt.Settings(frozen=True, lr_mult=2.0), RuleError,
     r"a frozen rule is frozen but also sets lr_mult"),
    ("rule_not_a_pair", lambda: jt.match_rules(PARAMS, [".*"]), RuleError, r"rule 0 is '\.\*'; a rule is a \(regex"),
    ("rule_bad_regex", lambda: jt.match_rules(PARAMS, [("(", jt.settings())]), RuleError, r"rule 0 '\(' is not a valid regex"),
    ("rule_uncovered_parameter", lambda: jt.match_rules(PARAMS, [(r"(embeddings|layer_0)/.*", jt.settings())]), RuleError,
     r"2 parameter\(s\) match no rule:\n  head/bias\n  head/kernel"),
    ("rule_matches_nothing", lambda: jt.match_rules(PARAMS, [(r"encoder/.*", jt.freeze()), *RULES]), RuleError,
     r"rule\(s\) \['encoder/\.\*'\] match no parameter\. .*allow_unused=True"),
    ("rule_shadowed", lambda: jt.match_rules(PARAMS, [*RULES, (r"head/.*", jt.freeze())]), RuleError,
     r"only match paths an earlier rule already took: \['head/\.\*'\]"),
    ("layer_factors_layer_decay_zero", lambda: jt.layer_factors(PARAMS, RULES, _layer_ids, 0.0), RuleError,
     r"layer_decay must be in \(0, 1\], got 0\.0"),
    ("rule_layer_decay_without_layer_ids", lambda: jt.layer_factors(PARAMS, [(".*", jt.settings(layer_decay=0.5))]),
     RuleError, r"layer_decay is set but no layer_ids function"),
    ("layer_ids_raises", lambda: jt.layer_factors(PARAMS, RULES, lambda p: {"head/bias": 1}[p], 0.9), RuleError,
     r"layer_ids\('embeddings/embedding'\) failed: KeyError"),
    ("make_optimizer_lr_zero", lambda: _make_opt(learning_rate=0.0), UserError, r"^learning_rate must be > 0, got 0\.0"),
    ("make_optimizer_lr_negative", lambda: _make_opt(learning_rate=-1e-3), UserError, r"learning_rate must be > 0"),
    ("make_optimizer_lr_nan", lambda: _make_opt(learning_rate=math.nan), UserError, r"learning_rate must be a finite"),
    ("make_optimizer_lr_string", lambda: _make_opt(learning_rate="1e-3"), UserError, r"learning_rate must be a number, got '1e-3'"),
    ("make_optimizer_layer_decay_zero_is_not_off", lambda: _make_opt(layer_decay=0.0, layer_ids=_layer_ids), UserError,
     r"layer_decay must be in \(0, 1\], got 0\.0"),
    ("make_optimizer_layer_decay_two", lambda: _make_opt(layer_decay=2.0, layer_ids=_layer_ids), UserError,
     r"layer_decay must be in \(0, 1\], got 2\.0"),
    ("make_optimizer_weight_decay_negative", lambda: _make_opt(weight_decay=-0.01), UserError, r"weight_decay must be >= 0"),
    ("make_optimizer_l2_sp_negative", lambda: _make_opt(l2_sp=-1.0), UserError, r"l2_sp must be >= 0, got -1\.0"),
    ("make_optimizer_layer_decay_without_ids", lambda: _make_opt(layer_decay=0.9), RuleError,
     r"layer_decay is set but no layer_ids"),
    ("make_optimizer_unused_rule", lambda: _make_opt(rules=[("nothing", jt.freeze()), *RULES]), RuleError,
     r"\['nothing'\] match no parameter"),
    ("warmup_longer_than_total", lambda: jt.warmup_cosine(1e-3, 20, 10), UserError,
     r"warmup_steps \(20\) <= total_steps \(10\)"),
    ("warmup_peak_zero", lambda: jt.warmup_linear(0.0, 1, 10), UserError, r"peak_value must be > 0, got 0\.0"),
    ("warmup_total_zero", lambda: jt.warmup_linear(1e-3, 0, 0), UserError, r"total_steps must be >= 1, got 0"),
    ("warmup_steps_negative", lambda: jt.warmup_cosine(1e-3, -1, 10), UserError, r"warmup_steps must be >= 0, got -1"),
    ("warmup_steps_fraction", lambda: jt.warmup_cosine(1e-3, 2.5, 10), UserError, r"warmup_steps must be an integer, got 2\.5"),
    ("warmup_end_value_negative", lambda: jt.warmup_linear(1e-3, 1, 10, end_value=-1.0), UserError, r"end_value must be >= 0"),
    ("set_trainable_on_static_state", lambda: jt.set_trainable(_make_opt().init(PARAMS), PARAMS), ValueError,
     r"runtime=True"),
    ("set_lr_multipliers_wrong_structure",
     lambda: jt.set_lr_multipliers(_make_opt(runtime=True).init(PARAMS), {"a": 1.0}), ValueError,
     r"multipliers has 1 leaves but the parameters have 5"),
    ("unfreezing_too_many_stages", lambda: unfreezing_stages(PARAMS, _layer_ids, num_stages=9), ValueError,
     r"num_stages=9 but the model has 3 distinct layer ids"),
]


@pytest.mark.parametrize("call, error, match", [pytest.param(c, e, m, id=i) for i, c, e, m in API_CASES])
def test_api_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_layer_decay_one_is_accepted_and_none_means_off():
    """The bounds are inclusive where they should be: layer_decay=1.0 and lr_mult=0 are valid."""
    jt.settings(layer_decay=1.0, lr_mult=0.0, weight_decay=0.0, l2_sp=0.0)
    factors = jt.layer_factors(PARAMS, RULES, _layer_ids, 1.0)
    assert all(float(np.max(f)) == 1.0 for f in factors)


# ---------------------------------------------------------------------------------------------
# Weights: a tiny BERT checkpoint written by jaxtune itself (no torch, no download).

_TINY = dict(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8,
             max_position_embeddings=16)
TASK = "sequence_classification"


@pytest.fixture(scope="module")
def bert_source(tmp_path_factory):
    config = jt.BertConfig(**_TINY)
    model = bert.build(config, TASK, 2)
    variables = model.init(jax.random.key(0), *bert.example_inputs(config, TASK))
    return jt.save_pretrained(variables, model.config, tmp_path_factory.mktemp("tiny_bert"), task=TASK)


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return directory


def _shard(directory, weight_map):
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def _only_pickle(directory):
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    return directory


WEIGHT_CASES = [
    ("config_more_layers_than_weights", lambda d: _edit_config(d, num_hidden_layers=4), {}, UserError,
     r"the model has 2 layer\(s\) the checkpoint lacks: \['params/bert/encoder/layer_2', 'params/bert/encoder/layer_3'\]"),
    ("config_fewer_layers_than_weights", lambda d: _edit_config(d, num_hidden_layers=1), {}, UserError,
     r"the checkpoint has 1 layer\(s\) the model lacks: \['params/bert/encoder/layer_1'\].*allow_new_layers=True"),
    ("config_hidden_size_differs", lambda d: _edit_config(d, intermediate_size=12), {}, UserError,
     r"(?s)6 tensor\(s\) in .* do not fit the model's shapes .*intermediate/dense/kernel: checkpoint \(8, 8\) vs model \(8, 12\)"),
    ("no_config_json", lambda d: (d / "config.json").unlink() or d, {}, FileNotFoundError, r"no config\.json in .*found: model\.safetensors"),
    ("config_json_not_json", lambda d: (d / "config.json").write_text("{'model_type': bert") and d, {}, UserError,
     r"config\.json: not valid JSON \(.* at line 1, column"),
    ("safetensors_truncated", lambda d: (d / "model.safetensors").write_bytes(b"\x08\x00\x00") and d, {}, UserError,
     r"model\.safetensors: truncated safetensors file of 3 bytes"),
    ("no_weights", lambda d: (d / "model.safetensors").unlink() or d, {}, FileNotFoundError,
     r"no weights in .*looked for model\.safetensors"),
    ("only_pickle_weights", _only_pickle, {}, UserError, r"holds only pickle checkpoint\(s\) \['pytorch_model\.bin'\].*allow_pickle=True"),
    ("unknown_model_type", lambda d: _edit_config(d, model_type="gpt2"), {}, UserError,
     r"config\.json has model_type 'gpt2', which jaxtune cannot load; supported model types: bert"),
    ("unsupported_task", lambda d: d, {"task": "text_to_text"}, UserError, r"the bert family has no task 'text_to_text'"),
    ("path_is_a_file", lambda d: d / "config.json", {}, NotADirectoryError, r"config\.json is a file; from_pretrained takes the directory"),
    ("not_a_dir_nor_repo_id", lambda d: d / "a" / "b" / "c", {}, FileNotFoundError, r"is not a directory, nor a valid Hugging Face"),
    ("index_without_weight_map", lambda d: _shard(d, {}), {}, UserError, r"model\.safetensors\.index\.json has no 'weight_map'"),
    ("heads_do_not_divide_hidden_size", lambda d: _edit_config(d, num_attention_heads=3), {}, UserError,
     r"config\.json does not describe a bert model jaxtune can build: .*hidden_size=8 is not a multiple of "
     r"num_attention_heads=3"),
    ("unsupported_position_embeddings", lambda d: _edit_config(d, position_embedding_type="relative_key"), {},
     UserError, r"config\.json does not describe a bert model .*position_embedding_type='relative_key'"),
    ("index_lists_missing_shard", lambda d: _shard(d, {"bert.pooler.dense.bias": "part-2.safetensors"}), {},
     FileNotFoundError, r"lists shards missing from .*\['part-2\.safetensors'\]"),
]


@pytest.mark.parametrize("edit, kwargs, error, match", [pytest.param(e, k, x, m, id=i) for i, e, k, x, m in WEIGHT_CASES])
def test_weights(bert_source, tmp_path, edit, kwargs, error, match):
    directory = tmp_path / "ckpt"
    shutil.copytree(bert_source, directory)
    with pytest.raises(error, match=match):
        jt.from_pretrained(edit(directory), **{"task": TASK, **kwargs})


def test_allow_new_layers_initialises_missing_and_ignores_extra_layers(bert_source, tmp_path):
    more = _edit_config(shutil.copytree(bert_source, tmp_path / "more"), num_hidden_layers=3)
    _, variables, report = jt.from_pretrained(more, task=TASK, allow_new_layers=True, return_report=True)
    assert "layer_2" in variables["params"]["bert"]["encoder"]
    assert {p.split("/")[3] for p in report.initialized} == {"layer_2"}
    fewer = _edit_config(shutil.copytree(bert_source, tmp_path / "fewer"), num_hidden_layers=1)
    _, variables, report = jt.from_pretrained(fewer, task=TASK, allow_new_layers=True, return_report=True)
    assert set(variables["params"]["bert"]["encoder"]) == {"layer_0"}
    assert report.ignored and all("/layer_1/" in p for p in report.ignored)


# ---------------------------------------------------------------------------------------------
# Checkpoints, data, training.

def _state():
    return jt.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1))


def _garbage(tmp_path, name, data=b"not a checkpoint at all"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _train_step(**kwargs):
    def loss_fn(params, batch, *, rng, model_state):
        return jnp.sum(params["w"] * batch["x"].mean()), ({}, model_state)
    return jt.make_train_step(loss_fn, optax.sgd(0.1), **kwargs)


class _Tokenizer:
    """Stands in for a fast tokenizer: the checks run before any tokenisation."""

    model_max_length = 512


def _stopper(**kwargs):
    return jt.EarlyStopping(**{"monitor": "val_loss", "mode": "min", "patience": 1, **kwargs})


FAULT_CASES = [
    ("checkpointer_mode_unknown", lambda d: Checkpointer(d / "c", monitor="val_loss", mode="best"), ValueError,
     r"mode must be 'min' or 'max', got 'best'"),
    ("restore_from_empty_directory", lambda d: Checkpointer(d / "c").restore(template=_state()), FileNotFoundError,
     r"no checkpoint in .*c"),
    ("save_without_monitored_metric",
     lambda d: Checkpointer(d / "c", monitor="val_f1", mode="max").save(1, _state(), metrics={"val_loss": 1.0}),
     KeyError, r"checkpoint at step 1 needs the monitored metric 'val_f1'"),
    ("evaluate_run_not_a_run_dir", lambda d: jt.evaluate_run(d), FileNotFoundError, r"is not a run directory: no config\.yaml"),
    ("evaluate_run_unknown_split", lambda d: jt.evaluate_run(d, split="dev"), UserError, r"split must be one of .*got 'dev'"),
    ("torch_checkpoint_garbage", lambda d: jt.load_torch_state_dict(_garbage(d, "m.pt")), UserError, r"m\.pt"),
    ("word_vectors_bad_row", lambda d: jt.load_glove(_garbage(d, "v.txt", b"the 0.1 0.2\ncat 0.3\n")), UserError, r"v\.txt"),
    ("unknown_dataset", lambda d: experiment._dataset("imagenet"), UserError,
     r"unknown dataset 'imagenet'; available offline"),
    ("loader_batch_size_zero", lambda d: L.Loader(list(range(4)), batch_size=0), ValueError,
     r"batch_size must be a positive integer, got 0"),
    ("loader_seed_negative", lambda d: L.check_seed(-1), ValueError, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("bucket_batches_batch_size_zero", lambda d: list(T.bucket_batches([{"input_ids": np.zeros(3, np.int32)}], 0, (8,),
                                                                       pad_token_id=0)), ValueError, r"batch_size must be positive, got 0"),
    ("max_length_over_the_tokenizer_maximum", lambda d: T.tokenize_texts(_Tokenizer(), ["a cat"], max_length=1000),
     UserError, r"max_length=1000 exceeds the model maximum 512 \(tokenizer\.model_max_length\)"),
    ("labels_do_not_match_texts", lambda d: T.tokenize_texts(_Tokenizer(), ["a", "b"], labels=[0]), ValueError,
     r"2 texts but 1 labels"),
    ("texts_given_as_one_string", lambda d: T.tokenize_texts(_Tokenizer(), "a cat"), TypeError,
     r"texts must be a sequence of strings, not a single string"),
    ("resize_method_unknown", lambda d: I.resize(np.zeros((4, 4, 3), np.uint8), 2, method="cubicx"), ValueError,
     r"unknown resize method 'cubicx'"),
    ("normalize_std_zero", lambda d: I.normalize(np.zeros((2, 2, 3), np.uint8), std=(0.0, 1.0, 1.0)), ValueError,
     r"std must be positive"),
    ("train_step_accumulate_zero", lambda d: _train_step(accumulate=0), ValueError, r"accumulate must be >= 1, got 0"),
    ("train_step_mask_wrong_structure", lambda d: _train_step(trainable={"w": True, "v": False})(_state(), {"x": jnp.ones(2)}),
     ValueError, r"trainable mask has 2 leaves but the parameters have 1"),
    ("train_step_batch_not_divisible", lambda d: _train_step(accumulate=2)(_state(), {"x": jnp.ones(3)}), ValueError,
     r"batch field \['x'\] has leading size 3, not divisible by accumulate=2"),
    ("early_stopping_mode_unknown", lambda d: _stopper(mode="up"), ValueError, r"mode must be 'min' or 'max', got 'up'"),
    ("early_stopping_patience_negative", lambda d: _stopper(patience=-1), ValueError, r"patience \(-1\) .* must be >= 0"),
    ("early_stopping_monitor_missing", lambda d: _stopper(monitor="val_f1").update(1, {"val_loss": 1.0}), KeyError,
     r"early stopping monitors 'val_f1' but the evaluation gave \['val_loss'\]"),
    ("early_stopping_nan_metric", lambda d: _stopper().update(3, {"val_loss": math.nan}), FloatingPointError,
     r"monitored metric 'val_loss' is NaN at step 3"),
]


@pytest.mark.parametrize("call, error, match", [pytest.param(c, e, m, id=i) for i, c, e, m in FAULT_CASES])
def test_fault(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)


def _image_data(n=4):
    examples = [{"images": np.zeros((4, 4, 3), np.float32), "labels": np.int32(i % 3)} for i in range(n)]
    return experiment.PreparedData("image_classification", examples, examples, examples, ("a", "b", "c"), None, 0,
                                   "four blank images")


def _token_data():
    examples = [{"input_ids": np.arange(1, n + 1, dtype=np.int32), "attention_mask": np.ones(n, np.int32),
                 "token_type_ids": np.zeros(n, np.int32), "labels": np.full(n, 1, np.int32)} for n in (5, 9)]
    return experiment.PreparedData("token_classification", examples, examples, examples, ("O", "B-x", "I-x"),
                                   (8, 16), 0, "two sentences")


@pytest.mark.parametrize("data, monitor, match", [
    pytest.param(_image_data, "val_f1", r"early_stopping\.monitor is 'val_f1'; image_classification validation gives "
                 r"val_loss, val_accuracy, val_macro_f1, val_mcc", id="monitor_not_an_image_metric"),
    pytest.param(_token_data, "val_accuracy", r"early_stopping\.monitor is 'val_accuracy'; token_classification "
                 r"validation gives .*val_token_accuracy, val_entity_f1", id="monitor_not_a_token_metric"),
])
def test_monitor_is_checked_before_the_model_loads(monkeypatch, data, monitor, match):
    monkeypatch.setattr(experiment, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=match):
        experiment.build({"early_stopping": {"monitor": monitor}}, data=data())


def test_library_errors_for_user_input_are_user_errors():
    assert issubclass(ConfigError, UserError) and issubclass(RuleError, UserError)
    assert issubclass(jt.VectorFileError, UserError) and issubclass(jt.CheckpointFormatError, UserError)
    assert issubclass(jt.UnsafeCheckpointError, UserError) and issubclass(jt.UnsafeCheckpointError, pickle.UnpicklingError)
    assert issubclass(UserError, ValueError)


# ---------------------------------------------------------------------------------------------
# The command line: user errors are one line on stderr with status 2; --debug adds the traceback.

CLI_CASES = [
    ("name_escapes_output_dir", "name: ../outside\n", [], r"name '\.\./outside' leaves output_dir"),
    ("override_eval_every_zero", "name: ok\n", ["--set", "train.eval_every=0"], r"train\.eval_every must be >= 1, got 0"),
    ("frozen_rule_with_settings", "optim:\n  rules:\n    - {pattern: '.*', frozen: true, lr_mult: 2}\n", [],
     r"optim\.rules\[0\] is frozen but also sets lr_mult"),
    ("empty_config_file", "", [], r"c\.yaml is empty"),
    ("unknown_key", "trian: {}\n", [], r"unknown key\(s\) trian"),
]


@pytest.mark.parametrize("command", ["finetune", "rules"])
@pytest.mark.parametrize("text, extra, match", [pytest.param(t, e, m, id=i) for i, t, e, m in CLI_CASES])
def test_cli_user_error_is_one_line_with_status_2(tmp_path, capsys, command, text, extra, match):
    path = _write(tmp_path, "c.yaml", text)
    assert cli.main([command, str(path), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"jaxtune {command}: error: ")
    assert re.search(match, err), err


def test_cli_missing_files_are_user_errors(tmp_path, capsys):
    assert cli.main(["finetune", str(tmp_path / "nope.yaml")]) == 2
    assert cli.main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml not found" in err and "is not a run directory" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--debug", "rules"], ["rules", "--debug"]], ids=["debug_before", "debug_after"])
def test_cli_debug_shows_the_traceback(tmp_path, capsys, argv):
    path = _write(tmp_path, "c.yaml", "train: {log_every: 0}\n")
    assert cli.main([*argv, str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("jaxtune rules: error: ")


def test_cli_run_stopped_on_non_finite_values_exits_2(tmp_path, capsys, monkeypatch):
    """jaxtune.NonFiniteError (a run stopped on NaN/inf) is reported like a user error."""
    class NonFiniteError(ValueError):
        pass

    def diverges(*args, **kwargs):
        raise NonFiniteError("loss is nan at step 3; lower optim.learning_rate")

    monkeypatch.setattr(jt, "NonFiniteError", NonFiniteError, raising=False)
    monkeypatch.setattr(experiment, "finetune", diverges)
    assert cli.main(["finetune", str(_write(tmp_path, "c.yaml", "name: ok\n"))]) == 2
    err = capsys.readouterr().err
    assert err == "jaxtune finetune: error: loss is nan at step 3; lower optim.learning_rate\n"


def test_cli_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """An exception that is not a user error (a bug in jaxtune) is not swallowed."""
    def broken(*args):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(experiment, "strategy_table", broken)
    with pytest.raises(RuntimeError, match="internal bug"):
        cli.main(["rules", str(_write(tmp_path, "c.yaml", "name: ok\n"))])


def test_unfreeze_stages_error_gives_the_config_key():
    with pytest.raises(UserError, match=r"num_stages=9 but the model has 3 distinct layer ids") as err:
        unfreezing_stages(PARAMS, _layer_ids, num_stages=9)
    assert cli.error_message(err.value).endswith("(optim.unfreeze_stages: at most 3 for this model)")


def test_cli_shows_config_advice_instead_of_python_advice():
    with pytest.raises(RuleError) as err:
        jt.match_rules(PARAMS, [(r"encoder/.*", jt.freeze()), *RULES])
    assert "allow_unused=True" in str(err.value)
    shown = cli.error_message(err.value)
    assert "allow_unused" not in shown and "optim.rules" in shown and "encoder/.*" in shown
