"""flat_dot_general: the same values and gradients as lax.dot_general, as 2-D products in the HLO."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.dense import flat_dot_general

DENSE_DIMS = (((2,), (0,)), ((), ()))


def test_values_and_gradients_equal_lax_dot_general():
    """float32, rtol 1e-6: forward and both gradients of a (batch, length, in) x (in, out) Dense."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)

    def loss(dot):
        return lambda x, w: jnp.sum(jnp.sin(dot(x, w, DENSE_DIMS)))

    np.testing.assert_allclose(flat_dot_general(x, w, DENSE_DIMS), jax.lax.dot_general(x, w, DENSE_DIMS), rtol=1e-6)
    ours = jax.grad(loss(flat_dot_general), argnums=(0, 1))(x, w)
    ref = jax.grad(loss(jax.lax.dot_general), argnums=(0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weight_gradient_is_a_2d_product():
    """The backward pass has no dot with more than 2 dimensions (the point of the flattening)."""
    x = jnp.ones((4, 7, 8))
    w = jnp.ones((8, 6))
    grad = jax.grad(lambda w: jnp.sum(flat_dot_general(x, w, DENSE_DIMS) ** 2))
    hlo = jax.jit(grad).lower(w).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert dots, hlo
    assert all("tensor<4x7x8xf32>" not in line.split("->")[0] for line in dots), dots


def test_other_contractions_pass_through_and_dense_accepts_it():
    rng = np.random.RandomState(1)
    a = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, 4, 5)), jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(flat_dot_general(a, b, batched), jax.lax.dot_general(a, b, batched))
    dense = nn.Dense(5, dot_general=flat_dot_general)
    variables = dense.init(jax.random.key(0), a)
    np.testing.assert_allclose(dense.apply(variables, a), nn.Dense(5).apply(variables, a), rtol=1e-6)
