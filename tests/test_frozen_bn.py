"""Frozen groups keep their batch norm frozen: eval-mode normalisation and bit-identical running
statistics after a training step (issue #13), per layer, through the Python API and the runner.

Tiny random CNNs of every batch-norm family, float32 on CPU; "identical" means bit-identical arrays,
forward-pass comparisons use atol 1e-6 (the same ops in two jitted programs).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.config import ConfigError
from jaxtune.experiment import PreparedData, build
from jaxtune import tasks
from jaxtune.models import efficientnet, mobilenet, resnet, vgg

F32 = jnp.float32
LABELS = 4


def _resnet():
    cfg = resnet.ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic",
                              num_labels=LABELS)
    return resnet.build(cfg, "image_classification"), r"classifier/.*"


def _mobilenet():
    cfg = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 2, 2)), stem_channels=8,
                                      last_channels=16, dropout=0.0)
    return mobilenet.mobilenet_v2(cfg, LABELS), r"classifier_1/.*"


def _efficientnet():
    cfg = efficientnet.EfficientNetLiteConfig(stages=((1, 3, 1, 1, 8, 8), (1, 3, 2, 2, 8, 16)), stem_channels=8,
                                              head_channels=16, dropout=0.0)
    return efficientnet.efficientnet_lite(cfg, LABELS), r"fc/.*"


def _vgg_bn():
    cfg = vgg.VGGConfig(layers=(8, "M", 16), batch_norm=True, hidden_size=16, pool_size=1, dropout=0.0)
    return vgg.vgg(cfg, LABELS), r"classifier_.*"


FAMILIES = {"resnet": _resnet, "mobilenet_v2": _mobilenet, "efficientnet_lite": _efficientnet, "vgg16_bn": _vgg_bn}


def _images(n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(0.5, 1.0, (n, 16, 16, 3)), F32)


def _init(model):
    return model.init(jax.random.key(0), _images(1))


def _batch():
    return {"images": _images(), "labels": jnp.arange(4, dtype=jnp.int32) % LABELS}


def _train_once(model, variables, rules):
    """One SGD step through the image task's loss (the runner's path) -> new state."""
    task = tasks.get_task("image_classification")
    params = variables["params"]
    tx = jt.make_optimizer(params, rules, optax.sgd, 0.1)
    state = jt.TrainState.create(params, tx, model_state={"batch_stats": variables["batch_stats"]})
    step = jt.make_train_step(task.loss_fn(model), tx, trainable=jt.trainable_mask(params, rules),
                              compute_dtype=F32, donate=False)
    return step(state, _batch())[0]


def _bn_layers(variables):
    return {p.rpartition("/")[0] for p in jt.leaf_paths(variables["batch_stats"])}


def _changed_layers(before, after):
    flat_before = dict(zip(jt.leaf_paths(before), jax.tree.leaves(before)))
    flat_after = dict(zip(jt.leaf_paths(after), jax.tree.leaves(after)))
    return {p.rpartition("/")[0] for p in flat_before if not np.array_equal(flat_before[p], flat_after[p])}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_frozen_backbone_step_keeps_batch_stats_and_uses_running_statistics(family):
    model, head = FAMILIES[family]()
    variables = _init(model)
    rules = [(head, jt.settings()), (r".*", jt.freeze())]
    frozen = jt.frozen_batch_norm(variables, rules)
    assert frozen == _bn_layers(variables) and frozen
    model = model.clone(frozen_bn=frozen)

    state = _train_once(model, variables, rules)
    for a, b in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(state.model_state["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                        jax.tree.leaves(variables["params"])))  # the head trained

    x = _images(seed=3)
    eval_out = model.apply(variables, x)
    train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(np.asarray(train_out), np.asarray(eval_out), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2"])
def test_batch_stats_train_keeps_the_old_behaviour(family):
    model, head = FAMILIES[family]()
    variables = _init(model)
    rules = [(head, jt.settings()), (r".*", jt.freeze(batch_stats="train"))]
    assert jt.frozen_batch_norm(variables, rules) == frozenset()
    model = model.clone(frozen_bn=jt.frozen_batch_norm(variables, rules))
    state = _train_once(model, variables, rules)
    assert _changed_layers(variables["batch_stats"], state.model_state["batch_stats"]) == _bn_layers(variables)
    x = _images(seed=3)
    train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.abs(np.asarray(train_out) - np.asarray(model.apply(variables, x))).max() > 1e-3


def test_partly_frozen_resnet_freezes_exactly_the_frozen_layers():
    model, _ = _resnet()
    variables = _init(model)
    rules = [(r"resnet/(embedder|encoder/stages_0)/.*", jt.freeze()), (r".*", jt.settings())]
    frozen = jt.frozen_batch_norm(variables, rules)
    assert frozen and all(p.startswith(("resnet/embedder/", "resnet/encoder/stages_0/")) for p in frozen)
    assert any(p.startswith("resnet/encoder/stages_1/") for p in _bn_layers(variables) - frozen)
    state = _train_once(model.clone(frozen_bn=frozen), variables, rules)
    assert _changed_layers(variables["batch_stats"], state.model_state["batch_stats"]) == _bn_layers(variables) - frozen


def test_rule_settings_decide_per_layer():
    model, _ = _mobilenet()
    variables = _init(model)
    every = _bn_layers(variables)
    # A trainable group may keep its statistics (scale/bias train, running stats stay).
    assert jt.frozen_batch_norm(variables, [(r".*", jt.settings(batch_stats="frozen"))]) == every
    assert jt.frozen_batch_norm(variables, [(r".*", jt.settings())]) == frozenset()
    # A layer is frozen only when all its parameters say so: a trained bias keeps it training.
    rules = [(r"features_0/bn/bias", jt.settings()), (r"classifier_1/.*", jt.settings()), (r".*", jt.freeze())]
    assert jt.frozen_batch_norm(variables, rules) == every - {"features_0/bn"}
    # A stage mask (gradual unfreezing) replaces the rules' frozen flags.
    stages = jt.unfreezing_stages(variables["params"], model.layer_ids)
    assert jt.frozen_batch_norm(variables, [(r".*", jt.settings())], trainable=stages[0]) == every
    assert jt.frozen_batch_norm(variables, [(r".*", jt.settings())], trainable=stages[-1]) == frozenset()
    # No batch_stats (a text model): nothing to freeze.
    assert jt.frozen_batch_norm({"params": variables["params"]}, [(r".*", jt.freeze())]) == frozenset()
    with pytest.raises(jt.RuleError, match="same path"):
        jt.frozen_batch_norm({"params": variables["params"]["features_1"], "batch_stats": variables["batch_stats"]},
                             [(r".*", jt.freeze())])


def test_bad_batch_stats_values_are_named():
    with pytest.raises(jt.RuleError, match="batch_stats is 'eval'; choose 'frozen'"):
        jt.freeze(batch_stats="eval")
    with pytest.raises(jt.RuleError, match="batch_stats is True"):
        jt.settings(batch_stats=True)
    with pytest.raises(ConfigError, match=r"optim.rules\[1\].batch_stats is 'fixed'"):
        jt.load_config(None, ['optim.rules=[{pattern: "x"}, {pattern: ".*", frozen: true, batch_stats: fixed}]'])
    model, _ = _resnet()
    variables = _init(model)
    typo = model.clone(frozen_bn=frozenset({"resnet/embedder/normalisation"}))
    with pytest.raises(jt.UserError, match="frozen_bn names 1 module.*resnet/embedder/normalisation"):
        tasks.get_task("image_classification").loss_fn(typo)(
            variables["params"], _batch(), rng=None, model_state={"batch_stats": variables["batch_stats"]})
    with pytest.raises(jt.UserError, match="frozen_bn='all'"):
        model.clone(frozen_bn="all").apply(variables, _images(), train=True, mutable=["batch_stats"])
    with pytest.raises(jt.UserError, match="frozen_bn='all'"):
        tasks.get_task("image_classification").eval_fn(model.clone(frozen_bn="all"))(
            variables["params"], _batch(), model_state={"batch_stats": variables["batch_stats"]})


def test_summary_shows_which_batch_norm_layers_are_frozen():
    model, _ = _resnet()
    variables = _init(model)
    n = len(_bn_layers(variables))
    rules = [(r"classifier/.*", jt.settings(name="head")), (r"resnet/encoder/stages_1/.*", jt.settings(name="top")),
             (r".*", jt.freeze(name="backbone"))]
    table = jt.summary(variables["params"], rules, batch_stats=variables["batch_stats"])
    lines = table.splitlines()
    assert "batch norm" in lines[0]
    n_top = sum(p.startswith("resnet/encoder/stages_1/") for p in _bn_layers(variables))
    assert next(l for l in lines if l.startswith("backbone")).endswith(f"{n - n_top} frozen")
    assert next(l for l in lines if l.startswith("top")).endswith(f"{n_top} train")
    assert next(l for l in lines if l.startswith("head")).endswith("-")
    assert lines[-1] == (f"batch norm: {n} layers, {n - n_top} frozen (running statistics, no update), "
                         f"{n_top} train (batch statistics)")
    assert "batch norm" not in jt.summary(variables["params"], rules)  # without batch_stats: as before


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_resnet")
    model, _ = _resnet()
    jt.save_pretrained(_init(model), model.config, directory, task="image_classification")
    return str(directory)


def _image_data():
    rng = np.random.default_rng(0)
    examples = [{"images": rng.normal(0.5, 1.0, (16, 16, 3)).astype(np.float32), "labels": np.int32(i % LABELS)}
                for i in range(8)]
    return PreparedData("image_classification", examples, examples, examples, tuple("abcd"), None, 0, "random")


def _runner_config(model_dir, tmp_path, **optim):
    return {"name": "frozen_bn", "output_dir": str(tmp_path), "model": {"path": model_dir},
            "data": {"dataset": "mnist_digits", "batch_size": 4, "eval_batch_size": 8},
            "optim": {"learning_rate": 0.1, "optimizer": "sgd", "schedule": "constant",
                      "rules": [{"pattern": "classifier/.*"}, {"pattern": ".*", "frozen": True}], **optim},
            "train": {"max_steps": 2, "progress": False}}


def _runner_step_changes(setup, stage):
    """The batch-norm layers whose statistics one runner step at ``stage`` changed."""
    from jaxtune.optim import set_trainable

    state = jax.tree.map(lambda x: x.copy(), setup.initial_state)  # the step donates its input
    if setup.stages is not None and setup.config.optim.unfreezing == "runtime":
        state = state.replace(opt_state=set_trainable(state.opt_state, setup.stages[stage]))
    before = jax.device_get(state.model_state["batch_stats"])
    batch = {"images": _images(), "labels": np.arange(4, dtype=np.int32) % LABELS}
    after = setup.train_step(state, batch, stage)[0].model_state["batch_stats"]
    return _changed_layers(before, jax.device_get(after))


def test_runner_frozen_backbone_keeps_batch_stats(resnet_dir, tmp_path):
    setup = build(_runner_config(resnet_dir, tmp_path), data=_image_data())
    assert _runner_step_changes(setup, 0) == set()
    assert "batch norm" in setup.strategy_table and "frozen (running statistics" in setup.strategy_table
    trained = _runner_config(resnet_dir, tmp_path)
    trained["optim"]["rules"][1]["batch_stats"] = "train"
    setup = build(trained, data=_image_data())
    assert _runner_step_changes(setup, 0) == {p.rpartition("/")[0]
                                               for p in jt.leaf_paths(setup.initial_state.model_state["batch_stats"])}


@pytest.mark.parametrize("mode", ["structural", "runtime"])
def test_runner_unfreezing_follows_the_stage(resnet_dir, tmp_path, mode):
    config = _runner_config(resnet_dir, tmp_path, unfreezing=mode, unfreeze_every=1, unfreeze_stages=2)
    config["optim"]["rules"] = [{"pattern": ".*"}]
    setup = build(config, data=_image_data())
    layers = {p.rpartition("/")[0] for p in jt.leaf_paths(setup.initial_state.model_state["batch_stats"])}
    assert len(setup.stages) == 2  # head + stages_1, then everything
    assert _runner_step_changes(setup, 0) == {p for p in layers if p.startswith("resnet/encoder/stages_1/")}
    assert _runner_step_changes(setup, 1) == layers


def _tiny_mobilenet():
    from jaxtune.models import mobilenet

    config = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 2, 2)), stem_channels=8,
                                         last_channels=16, dropout=0.0, bn_momentum=0.01)
    model = mobilenet.mobilenet_v2(config, 10)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_recomputed_statistics_make_evaluation_match_batch_norm_over_the_same_images():
    # float32; 64 images of 16x16: the stale init statistics (mean 0, var 1) put evaluation far from
    # train-mode batch norm over the same images; re-estimated in one batch, the two agree up to the
    # unbiased variance the running statistics keep (n / (n - 1), n >= 64 values per channel).
    model, variables = _tiny_mobilenet()
    images = jax.random.normal(jax.random.key(1), (64, 16, 16, 3)) * 2.0 + 1.0
    batch_mode, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    stale_gap = float(jnp.max(jnp.abs(model.apply(variables, images) - batch_mode)))
    fixed = jt.recompute_batch_stats(model, variables, images, batch_size=64)
    fixed_gap = float(jnp.max(jnp.abs(model.apply(fixed, images) - batch_mode)))
    assert stale_gap > 1e-2 and fixed_gap < 0.05 * stale_gap, (stale_gap, fixed_gap)   # measured 0.040, 0.0002
    assert jax.tree.structure(fixed) == jax.tree.structure(variables)
    np.testing.assert_array_equal(fixed["params"]["classifier_1"]["kernel"], variables["params"]["classifier_1"]["kernel"])


def test_recomputed_statistics_average_the_batches_by_size():
    # float32, exact to rounding: batches of 5, 5 and 2 images weigh 5:5:2, as one pass over each would.
    model, variables = _tiny_mobilenet()
    images = jax.random.normal(jax.random.key(2), (12, 16, 16, 3))
    whole = jt.recompute_batch_stats(model, variables, images, batch_size=5)["batch_stats"]
    parts = [jt.recompute_batch_stats(model, variables, images[a:b], batch_size=8)["batch_stats"]
             for a, b in ((0, 5), (5, 10), (10, 12))]
    expected = jax.tree.map(lambda a, b, c: (5 * a + 5 * b + 2 * c) / 12, *parts)
    for got, want in zip(jax.tree.leaves(whole), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_recomputed_statistics_keep_the_frozen_layers_and_re_estimate_the_others():
    # float32: a frozen layer's statistics come back bit-identical; every other layer's change.
    model, variables = _tiny_mobilenet()
    layers = sorted(_bn_layers(variables))
    frozen = frozenset(layers[:2])
    images = jax.random.normal(jax.random.key(3), (8, 16, 16, 3)) * 2.0 + 1.0
    fixed = jt.recompute_batch_stats(model.clone(frozen_bn=frozen), variables, images)
    assert _changed_layers(variables["batch_stats"], fixed["batch_stats"]) == set(layers) - frozen
    everything = jt.recompute_batch_stats(model.clone(frozen_bn=False), variables, images)
    assert _changed_layers(variables["batch_stats"], everything["batch_stats"]) == set(layers)


def test_recompute_batch_stats_refuses_models_without_batch_norm_and_empty_images():
    model, variables = _tiny_mobilenet()
    with pytest.raises(jt.UserError, match="recompute_batch_stats needs a jaxtune CNN with batch norm"):
        jt.recompute_batch_stats(model, {"params": variables["params"]}, jnp.zeros((2, 16, 16, 3)))
    with pytest.raises(jt.UserError, match="got 0 images"):
        jt.recompute_batch_stats(model, variables, jnp.zeros((0, 16, 16, 3)))
