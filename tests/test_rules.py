import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict

import jaxtune as jt
from tests._tiny import HIDDEN, LABELS, VOCAB, init_params, layer_ids

RULES = [
    (r"embeddings/.*", jt.freeze()),
    (r".*(bias|LayerNorm/scale)", jt.settings(weight_decay=False)),
    (r".*", jt.settings()),
]


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(HIDDEN, rngs=rngs)


class NnxTinyNet(nnx.Module):
    """The same architecture and names as tests._tiny.TinyNet, in NNX."""

    def __init__(self, rngs):
        self.embeddings = nnx.Embed(VOCAB, HIDDEN, rngs=rngs)
        self.layer_0 = NnxBlock(rngs)
        self.layer_1 = NnxBlock(rngs)
        self.layer_2 = NnxBlock(rngs)
        self.head = nnx.Linear(HIDDEN, LABELS, rngs=rngs)


def test_param_paths_dict_list_namedtuple():
    NT = collections.namedtuple("NT", "kernel bias")
    tree = {"encoder": {"layer_3": {"attention": {"query": NT(jnp.zeros(2), jnp.zeros(1))}}}, "stack": [jnp.zeros(1), (jnp.zeros(1),)]}
    paths = jt.leaf_paths(tree)
    assert paths == ["encoder/layer_3/attention/query/kernel", "encoder/layer_3/attention/query/bias", "stack/0", "stack/1/0"]
    assert jt.param_paths(tree)["stack"][1][0] == "stack/1/0"


def test_param_paths_nnx_state_has_no_value_suffix():
    _, state = nnx.split(NnxTinyNet(nnx.Rngs(0)), nnx.Param)
    paths = jt.leaf_paths(state)
    assert "layer_1/dense/kernel" in paths and "embeddings/embedding" in paths
    assert not any(p.endswith("value") for p in paths)


@pytest.mark.parametrize("kind", ["dict", "frozendict", "nnx"])
def test_masks_and_labels_on_every_container(kind):
    params = init_params()
    if kind == "frozendict":
        params = FrozenDict(params)
    elif kind == "nnx":
        _, params = nnx.split(NnxTinyNet(nnx.Rngs(0)), nnx.Param)
    mask = jt.trainable_mask(params, RULES)
    labels = jt.label_params(params, RULES)
    # Over an nnx.State, the trees jaxtune builds drop the Variable wrappers (they fit the state and its arrays).
    assert jax.tree.structure(mask) == jax.tree.structure(nnx.as_pure(params) if kind == "nnx" else params)
    by_path = dict(zip(jt.leaf_paths(params), jax.tree.leaves(mask)))
    assert by_path["embeddings/embedding"] is False
    assert by_path["layer_2/dense/kernel"] is True
    label_by_path = dict(zip(jt.leaf_paths(params), jax.tree.leaves(labels)))
    assert label_by_path["head/bias"] == r".*(bias|LayerNorm/scale)"
    assert label_by_path["head/kernel"] == ".*"
    wd = dict(zip(jt.leaf_paths(params), jax.tree.leaves(jt.weight_decay_mask(params, RULES))))
    assert wd["head/kernel"] and not wd["head/bias"] and not wd["embeddings/embedding"]
    # The masks drive optax directly and the compiled optimizer, on the same container.
    masked = optax.masked(optax.sgd(1.0), mask)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = masked.update(grads, masked.init(params), params)
    assert dict(zip(jt.leaf_paths(params), jax.tree.leaves(updates)))["head/kernel"].sum() != 0
    tx = jt.make_optimizer(params, RULES, optax.adamw, 1e-2, weight_decay=0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    upd = dict(zip(jt.leaf_paths(params), jax.tree.leaves(updates)))
    assert float(jnp.abs(upd["embeddings/embedding"]).max()) == 0.0
    assert float(jnp.abs(upd["head/kernel"]).min()) > 0.0


def test_uncovered_parameter_error_names_paths():
    params = init_params()
    with pytest.raises(jt.RuleError) as err:
        jt.trainable_mask(params, [(r"layer_.*", jt.settings())])
    msg = str(err.value)
    assert "embeddings/embedding" in msg and "head/kernel" in msg and "match no rule" in msg


def test_uncovered_error_lists_at_most_ten():
    params = {f"p{i}": jnp.zeros(1) for i in range(15)}
    with pytest.raises(jt.RuleError, match=r"15 parameter\(s\) match no rule[\s\S]*and 5 more"):
        jt.label_params(params, [(r"nothing", jt.settings())], allow_unused=True)


def test_unused_rule_error_names_rule():
    params = init_params()
    rules = [(r"embedding/.*", jt.freeze()), (r".*", jt.settings())]  # typo: embedding vs embeddings
    with pytest.raises(jt.RuleError, match=r"embedding/\.\*"):
        jt.trainable_mask(params, rules)
    assert jt.trainable_mask(params, rules, allow_unused=True)["embeddings"]["embedding"] is True


def test_shadowed_rule_is_reported_as_such():
    params = init_params()
    with pytest.raises(jt.RuleError, match="earlier rule"):
        jt.trainable_mask(params, [(r".*", jt.settings()), (r"head/.*", jt.freeze())])


def test_bad_rules_are_clear_errors():
    with pytest.raises(jt.RuleError, match="not a valid regex"):
        jt.trainable_mask(init_params(), [(r"(", jt.settings())])
    with pytest.raises(jt.RuleError, match="rule 0"):
        jt.trainable_mask(init_params(), [(r".*", {"lr": 1})])
    with pytest.raises(ValueError, match="layer_decay"):
        jt.settings(layer_decay=1.5)


def test_first_full_match_wins():
    params = {"head": {"bias": jnp.zeros(2), "kernel": jnp.zeros((2, 2))}}
    labels = jt.label_params(params, [(r"head/bias", jt.settings(name="a")), (r"head/.*", jt.settings(name="b"))])
    assert labels == {"head": {"bias": "a", "kernel": "b"}}
    # fullmatch, not search: "bias" alone does not match "head/bias"
    with pytest.raises(jt.RuleError):
        jt.label_params(params, [(r"bias", jt.settings()), (r"head/kernel", jt.settings())])


def test_summary_table():
    params = init_params()
    text = jt.summary(params, RULES, layer_ids=layer_ids, layer_decay=0.5)
    lines = text.splitlines()
    assert lines[0].split() == ["group", "tensors", "params", "lr", "mult", "weight", "decay", "frozen"]
    emb = next(l for l in lines if l.startswith("embeddings/.*"))
    assert emb.split()[1:3] == ["1", f"{VOCAB * HIDDEN:,}"] and emb.split()[-1] == "yes"
    bias = next(l for l in lines if l.startswith(".*(bias"))
    assert "off" in bias and "0.125..1" in bias  # layer_0 ids=1 -> 0.5**3; head -> 1
    n_total = sum(np.size(x) for x in jax.tree.leaves(params))
    assert lines[-1].startswith(f"trainable {n_total - VOCAB * HIDDEN:,} of {n_total:,}")


def test_failing_layer_ids_names_the_path():
    with pytest.raises(jt.RuleError, match=r"layer_ids\('embeddings/embedding'\) failed: KeyError"):
        jt.summary(init_params(), RULES, layer_ids=lambda p: {"head": 1}[p.split("/")[0]], layer_decay=0.9)


def test_config_rules_and_settings_share_one_check():
    """jt.settings, Settings(...) and a config rule go through validate_settings: same checks, same words."""
    from jaxtune.config import ConfigError, RuleConfig

    with pytest.raises(jt.RuleError, match=r"^lr_mult must be >= 0, got -2"):
        jt.settings(lr_mult=-2)
    with pytest.raises(ConfigError, match=r"^optim\.rules\[0\]\.lr_mult must be >= 0, got -2"):
        jt.load_config(None, ["optim.rules=[{pattern: '.*', lr_mult: -2}]"])
    with pytest.raises(jt.RuleError, match=r"^optim\.rules\[3\]\.lr_mult must be >= 0, got -2"):
        jt.validate_settings(RuleConfig(lr_mult=-2.0), "optim.rules[3]")
    with pytest.raises(jt.RuleError, match="frozen but also sets lr_mult, l2_sp"):
        jt.Settings(frozen=True, lr_mult=2.0, l2_sp=0.1)


def test_layer_decay_zero_is_an_error_not_off():
    params = {"a": np.zeros(2), "b": np.zeros(2)}
    ids = {"a": 0, "b": 1}.__getitem__
    for call in (lambda: jt.settings(layer_decay=0.0),
                 lambda: jt.layer_factors(params, [(".*", jt.settings())], ids, layer_decay=0.0),
                 lambda: jt.make_optimizer(params, [(".*", jt.settings())], layer_ids=ids, layer_decay=0.0)):
        with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\], got 0\.0"):
            call()
    factors = jt.layer_factors(params, [(".*", jt.settings())], ids, layer_decay=None)
    assert [float(f) for f in factors] == [1.0, 1.0]
