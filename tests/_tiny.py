"""A tiny transformer-shaped Flax model for the foundation tests: embeddings, L blocks, a head."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

VOCAB, HIDDEN, LAYERS, LABELS = 16, 8, 3, 3


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(HIDDEN, name="dense")(x)
        return nn.LayerNorm(name="LayerNorm")(x + jnp.tanh(h))


class TinyNet(nn.Module):
    num_layers: int = LAYERS

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(VOCAB, HIDDEN, name="embeddings")(ids).mean(axis=1)
        for i in range(self.num_layers):
            x = Block(name=f"layer_{i}")(x)
        return nn.Dense(LABELS, name="head")(x)


def layer_ids(path: str) -> int:
    """embeddings 0, layer_i -> i+1, head L+1."""
    top = path.split("/")[0]
    if top == "embeddings":
        return 0
    if top.startswith("layer_"):
        return int(top.split("_")[1]) + 1
    if top == "head":
        return LAYERS + 1
    raise KeyError(path)


def init_params(seed: int = 0):
    return TinyNet().init(jax.random.key(seed), jnp.zeros((2, 5), jnp.int32))["params"]


def make_batch(n: int = 8, seed: int = 1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"ids": jax.random.randint(k1, (n, 5), 0, VOCAB), "labels": jax.random.randint(k2, (n,), 0, LABELS)}


def loss_fn(params, batch, *, rng, model_state):
    del rng
    logits = TinyNet().apply({"params": params}, batch["ids"]).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, ({"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}, model_state)


