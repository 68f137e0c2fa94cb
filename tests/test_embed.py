"""jaxtune.models.embed: both lookup paths equal jnp.take (values exactly, gradients to fp32 rounding)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.models.embed import Embed, embedding_lookup


def _table_and_ids(rows=5, features=3, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.standard_normal((rows, features)), dtype)
    ids = jnp.asarray([[0, 0, 0, 4], [2, 0, 1, 4]], jnp.int32)   # repeats: the contended case
    return table, ids


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lookup_values_equal_take_exactly(one_hot, dtype):
    table, ids = _table_and_ids(dtype=dtype)
    out = embedding_lookup(table, ids, one_hot=one_hot)
    assert out.dtype == dtype and out.shape == (2, 4, 3)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(jnp.take(table, ids, axis=0), np.float32))


@pytest.mark.parametrize("one_hot", [True, False])
def test_lookup_gradient_sums_repeated_rows_like_take(one_hot):
    table, ids = _table_and_ids()
    weights = jnp.arange(24, dtype=jnp.float32).reshape(2, 4, 3)
    grad = jax.grad(lambda t: jnp.sum(embedding_lookup(t, ids, one_hot=one_hot) * weights))(table)
    expected = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * weights))(table)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=0)     # float32
    assert float(grad[3].sum()) == 0.0 and float(grad[0, 0]) == 0 + 3 + 6 + 15   # row 3 unused, row 0 thrice


@pytest.mark.parametrize("one_hot", [True, False])
def test_lookup_out_of_range_ids_follow_take(one_hot):
    table, _ = _table_and_ids()
    ids = jnp.asarray([-1, 5, -6, 2], jnp.int32)
    out = np.asarray(embedding_lookup(table, ids, one_hot=one_hot))
    np.testing.assert_array_equal(out[0], np.asarray(table[4]))     # -1 counts from the end
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()      # outside [-rows, rows): NaN rows
    np.testing.assert_array_equal(out[3], np.asarray(table[2]))


def test_lookup_in_bfloat16_returns_requested_dtype_from_float32_table():
    table, ids = _table_and_ids()
    out = embedding_lookup(table, ids, jnp.bfloat16, one_hot=False)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, jnp.take(table, ids, axis=0).astype(jnp.bfloat16))


def test_lookup_rejects_float_ids_naming_the_dtype():
    table, _ = _table_and_ids()
    with pytest.raises(ValueError, match="float32"):
        embedding_lookup(table, jnp.zeros((2,), jnp.float32))


def test_default_path_on_cpu_is_a_gather_and_one_hot_has_no_scatter_in_its_gradient():
    table, ids = _table_and_ids(rows=2)
    ids = jnp.minimum(ids, 1)
    auto = str(jax.make_jaxpr(jax.grad(lambda t: embedding_lookup(t, ids).sum()))(table))
    hot = str(jax.make_jaxpr(jax.grad(lambda t: embedding_lookup(t, ids, one_hot=True).sum()))(table))
    assert jax.default_backend() == "cpu" and "gather" in auto and "scatter-add" in auto
    assert "scatter" not in hot and "dot_general" in hot


def test_embed_keeps_flax_embed_parameters_and_attend():
    ids = jnp.asarray([[1, 2]], jnp.int32)
    ours, flax_embed = Embed(7, 4), nn.Embed(7, 4)
    params = flax_embed.init(jax.random.key(0), ids)
    assert jax.tree.structure(ours.init(jax.random.key(0), ids)) == jax.tree.structure(params)
    np.testing.assert_array_equal(ours.apply(params, ids), flax_embed.apply(params, ids))
    query = jnp.ones((1, 4))
    np.testing.assert_allclose(ours.apply(params, query, method="attend"),
                               flax_embed.apply(params, query, method="attend"), rtol=1e-6)
