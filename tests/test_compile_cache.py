"""The runner's persistent compilation cache: where it points, that it stays out of the fingerprint,
and that a second identical run reports its step as served from the cache."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

import jaxtune as jt
from jaxtune import compile_cache
from jaxtune.experiment import finetune, prepare_data


@pytest.fixture
def jax_cache_settings():
    """Restores JAX's persistent-cache directory and write threshold after the test (both are process-wide);
    the test writes every program, however fast it compiles."""
    directory = jax.config.jax_compilation_cache_dir
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    if jax.config.jax_compilation_cache_dir != directory:
        compile_cache._jax_cache.set_cache_dir(directory)
        compile_cache._jax_cache.reset_cache()


def test_cache_dir_setting_env_and_default(monkeypatch):
    assert compile_cache.cache_dir(False) is None
    assert compile_cache.cache_dir("~/jit") == os.path.expanduser("~/jit")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/jit")
    assert compile_cache.cache_dir(True) == "/somewhere/jit"  # the environment overrides the default
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    configured = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # nothing compiles until it is restored
    try:
        assert compile_cache.cache_dir(True) == os.path.expanduser("~/.cache/jaxtune/jit")
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
    with pytest.raises(jt.ConfigError, match="train.compilation_cache is empty"):
        jt.load_config(None, ["train.compilation_cache=' '"])
    assert jt.load_config(None, ["train.compilation_cache=false"]).train.compilation_cache is False
    assert jt.load_config(None, ["train.compilation_cache=/tmp/jit"]).train.compilation_cache == "/tmp/jit"


def test_false_leaves_jax_alone_and_the_key_is_not_part_of_the_fingerprint():
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.use_compilation_cache(False) is None and jax.config.jax_compilation_cache_dir == before
    base = jt.run_fingerprint(jt.load_config(None, []))[0]
    for setting in ("false", "/elsewhere/jit"):
        assert jt.run_fingerprint(jt.load_config(None, [f"train.compilation_cache={setting}"]))[0] == base


def _adder():
    return jax.jit(lambda x: jnp.sin(x) * 2 + 1)  # a new function each time: traced and compiled anew


def test_first_call_watch_counts_compiles_and_cache_hits(tmp_path, jax_cache_settings):
    assert compile_cache.use_compilation_cache(str(tmp_path / "jit")) == str(tmp_path / "jit")
    first, second = compile_cache.FirstCallWatch(_adder()), compile_cache.FirstCallWatch(_adder())
    assert first.report is None
    first(jnp.ones(3))
    second(jnp.ones(3))
    second(jnp.zeros(3))  # later calls are not watched
    assert first.report["programs"] == 1 and first.report["cache_hits"] == 0 and not first.report["from_cache"]
    assert second.report["programs"] == 1 and second.report["cache_hits"] == 1 and second.report["from_cache"]
    assert second.report["cache_dir"] == str(tmp_path / "jit") and os.listdir(tmp_path / "jit")
    assert "from the persistent cache" in compile_cache.describe(second.report)


def test_second_identical_run_compiles_from_the_persistent_cache(tiny_model_dir, tmp_path, jax_cache_settings,
                                                                  capsys):
    """Two runs of one config (in two run directories) with a fresh cache directory: the first compiles
    its step and writes it, the second reads it back, and says so in result.json and its output."""
    cache = str(tmp_path / "jit")
    overrides = [f"output_dir={tmp_path}", f"model.path={tiny_model_dir}", "data.max_length=16", "data.batch_size=8",
                 "data.eval_batch_size=16", "data.train_limit=8", "data.eval_limit=8", "data.test_limit=8",
                 "optim.schedule=constant", "train.max_steps=1", "train.eval_every=1", "train.progress=false",
                 "early_stopping.enabled=false", f"train.compilation_cache={cache}"]
    data = prepare_data(jt.load_config(None, overrides).data, tiny_model_dir)
    first = finetune(jt.load_config(None, ["name=first", *overrides]), data=data)
    second = finetune(jt.load_config(None, ["name=second", *overrides]), data=data)
    assert first.compile["programs"] >= 1 and not first.compile["from_cache"] and first.compile["cache_dir"] == cache
    assert second.compile["from_cache"] and second.compile["cache_hits"] == second.compile["programs"] >= 1
    assert json.load(open(second.paths["result"]))["compile"] == second.compile
    assert jt.read_result(second.paths["run_dir"]) == second
    assert "second: first step compiled in" in capsys.readouterr().out
