"""train.seed drives head init, batch order and dropout; data.seed only the data; model.init=random.

What ``data.seed`` alone changes (documented here, asserted below): the split and the
train/eval/test subsets, hence the examples. Given the same ``train.seed``, the new head's initial
weights, the dropout key and the per-epoch batch-order seed are identical (the order permutation is
the same, applied to different examples).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.experiment import build, epoch_batches, finetune, load_model, prepare_data
from jaxtune.models import bert, resnet, t5, vgg
from jaxtune.models.family import flatten_paths

LIMITS = ["data.train_limit=32", "data.eval_limit=16", "data.test_limit=16", "data.max_length=16"]


def _cfg(model_dir, out, name, *overrides):
    return jt.load_config(None, [f"name={name}", f"output_dir={out}", f"model.path={model_dir}", *LIMITS,
                                 "data.batch_size=8", "data.eval_batch_size=16", "optim.learning_rate=1e-3",
                                 "optim.schedule=constant", "train.max_steps=3", "train.eval_every=3",
                                 "train.progress=false", "early_stopping.enabled=false", *overrides])


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    return prepare_data(_cfg(tiny_model_dir, "unused", "x").data, tiny_model_dir)


def _key_bits(key):
    return np.asarray(jax.random.key_data(key))


def _head(setup):
    return {p: np.asarray(v) for p, v in flatten_paths(setup.initial_state.params).items() if "classifier" in p}


def _dropout_loss(setup, batch, params=None):
    """The training loss (dropout on) under the initial state's dropout key (of ``params``, default its own)."""
    state = setup.initial_state
    params = state.params if params is None else params
    return float(setup.task.loss_fn(setup.model)(params, batch, rng=state.rng, model_state=state.model_state)[0])


def test_streams_are_distinct_fixed_and_reject_bad_input():
    keys = {name: _key_bits(jt.seed_stream(3, name)) for name in ("init", "data_order", "dropout")}
    assert len({k.tobytes() for k in keys.values()}) == 3
    np.testing.assert_array_equal(keys["init"], _key_bits(jt.seed_stream(3, "init")))
    assert jt.epoch_seed(3, 0) == jt.epoch_seed(3, 0)
    assert len({jt.epoch_seed(3, 0), jt.epoch_seed(3, 1), jt.epoch_seed(4, 0)}) == 3
    with pytest.raises(ValueError, match="unknown seed stream 'head'.*dropout"):
        jt.seed_stream(0, "head")
    with pytest.raises(TypeError, match="train.seed must be an integer"):
        jt.seed_stream(1.5, "init")


def test_train_seed_drives_head_init_batch_order_and_dropout(tiny_model_dir, data, tmp_path):
    s0, s0_again, s1 = (build(_cfg(tiny_model_dir, tmp_path, "r", f"train.seed={seed}"), data=data)
                        for seed in (0, 0, 1))
    head0, head1 = _head(s0), _head(s1)
    assert head0 and all(not np.array_equal(head0[p], head1[p]) for p in head0 if p.endswith("kernel"))
    for p in head0:
        np.testing.assert_array_equal(head0[p], _head(s0_again)[p])
    # The loaded backbone is the checkpoint's whatever the seed.
    np.testing.assert_array_equal(s0.initial_state.params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  s1.initial_state.params["bert"]["embeddings"]["word_embeddings"]["embedding"])

    def order(seed):
        batches = epoch_batches(data, data.train, 8, seed=jt.epoch_seed(seed, 0))
        return [b["input_ids"][:, :4].tolist() for b in batches]
    assert order(0) == order(0) != order(1)

    batch = epoch_batches(data, data.train, 8, seed=None)[0]
    assert _dropout_loss(s0, batch) == _dropout_loss(s0_again, batch)
    # Same params and batch: only the dropout key differs.
    assert _dropout_loss(s0, batch) != _dropout_loss(s1, batch, params=s0.initial_state.params)


def test_same_train_seed_gives_bit_identical_params(tiny_model_dir, data, tmp_path):
    def final_params(name, seed):
        cfg = _cfg(tiny_model_dir, tmp_path, name, f"train.seed={seed}")
        finetune(cfg, data=data)
        with jt.Checkpointer(os.path.join(tmp_path, name, "checkpoints")) as ckpt:
            state, _ = ckpt.restore(template=build(cfg, data=data).initial_state)
        return jax.tree.leaves(jax.device_get(state.params))

    a, b = final_params("a", 0), final_params("b", 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    pretrained = jax.tree.leaves(build(_cfg(tiny_model_dir, tmp_path, "a"), data=data).initial_state.params)
    assert not all(np.array_equal(x, p) for x, p in zip(a, pretrained))  # it trained


def test_data_seed_changes_the_split_only(tiny_model_dir, data, tmp_path):
    other_cfg = _cfg(tiny_model_dir, tmp_path, "d", "data.seed=1")
    other = prepare_data(other_cfg.data, tiny_model_dir)
    assert [e["input_ids"].tolist() for e in other.train] != [e["input_ids"].tolist() for e in data.train]
    s_data0 = build(_cfg(tiny_model_dir, tmp_path, "d"), data=data)
    s_data1 = build(other_cfg, data=other)
    for p, v in _head(s_data0).items():
        np.testing.assert_array_equal(v, _head(s_data1)[p])
    np.testing.assert_array_equal(_key_bits(s_data0.initial_state.rng), _key_bits(s_data1.initial_state.rng))


# --------------------------------------------------------------------------------------------- model.init
def _save(directory, family_module, config, task, num_labels=None):
    model = family_module.FAMILY.build(config, task, num_labels)
    variables = model.init(jax.random.key(123), *family_module.FAMILY.example_inputs(config, task))
    jt.save_pretrained(variables, config, directory, task=task, num_labels=num_labels)
    return str(directory)


TINY = {
    "bert": lambda d: (_save(d, bert, bert.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=12,
                                                     max_position_embeddings=16), "sequence_classification", 3),
                       "sequence_classification"),
    "t5": lambda d: (_save(d, t5, t5.T5Config(vocab_size=40, d_model=8, d_kv=4, d_ff=12, num_layers=1,
                                              num_decoder_layers=1, num_heads=2), "text_to_text"), "text_to_text"),
    "resnet": lambda d: (_save(d, resnet, resnet.ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1),
                                                              layer_type="basic", num_labels=3),
                               "image_classification", 3), "image_classification"),
    "vgg": lambda d: (_save(d, vgg, vgg.VGGConfig(layers=(8, "M", 16, "M"), batch_norm=True, hidden_size=16,
                                                  pool_size=1, num_labels=3), "image_classification", 3),
                      "image_classification"),
}


def _assert_random_differs(pretrained, random0, random1=None):
    """Same tree as the pretrained weights, every non-constant leaf different; another seed differs."""
    flat_p, flat_r = flatten_paths(pretrained["params"]), flatten_paths(random0["params"])
    assert flat_p.keys() == flat_r.keys()
    varied = [p for p, v in flat_r.items() if np.ptp(np.asarray(v)) > 0]  # not a constant init (zeros, ones)
    assert varied
    for p in varied:
        assert flat_p[p].shape == flat_r[p].shape and not np.array_equal(flat_p[p], flat_r[p]), p
    if random1 is not None:
        assert all(not np.array_equal(flat_r[p], flatten_paths(random1["params"])[p]) for p in varied)


@pytest.mark.parametrize("family", sorted(TINY))
def test_random_init_differs_from_pretrained_hub_families(family, tmp_path):
    path, task = TINY[family](tmp_path)
    num_labels = None if family == "t5" else 3

    def load(init, seed):
        return load_model(path, task, num_labels, "float32", init=init, rng=jt.seed_stream(seed, "init"))[1]
    _assert_random_differs(load("pretrained", 0), load("random", 0), load("random", 1))


@pytest.mark.parametrize("alias", ["mobilenet_v2_imagenet", "efficientnet_lite0_imagenet"])
def test_random_init_differs_from_pretrained_shipped_cnns(alias):
    """The real ImageNet networks (the seed dependence of random init is tested on the tiny families)."""
    def load(init):
        return load_model(alias, "image_classification", 10, "float32", init=init,
                          rng=jt.seed_stream(0, "init"))[1]
    _assert_random_differs(load("pretrained"), load("random"))


def test_model_init_is_validated_at_config_load():
    assert jt.load_config(None, ["model.init=random"]).model.init == "random"
    with pytest.raises(jt.ConfigError, match="model.init: expected one of pretrained, random, got 'scratch'"):
        jt.load_config(None, ["model.init=scratch"])
