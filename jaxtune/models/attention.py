"""Multi-head attention for the transformer families, on the fastest kernel the inputs allow.

One function, :func:`attention`, serves BERT (scaled, padding mask) and T5 (unscaled, relative
position bias, padding/causal mask). It picks the implementation of ``jax.nn.dot_product_attention``:

* ``"cudnn"``: cuDNN's fused flash attention on NVIDIA GPUs, for bf16/fp16 inputs, a head dimension
  that is a multiple of 8 (at most 128; 256 from Hopper on) and no attention dropout. jax's own
  default (``implementation=None``) is always the XLA path, so without this a GPU never reaches the
  fused kernel.
* ``"xla"``: everything else (CPU, fp32, odd head sizes).
* explicit einsums + softmax + dropout when attention dropout is active, since
  ``jax.nn.dot_product_attention`` has no dropout on the probabilities.

``implementation="auto"`` (the default of the model configs) chooses by :func:`choose_implementation`
and falls back to XLA where cuDNN refuses the inputs while tracing; ``"xla"`` / ``"cudnn"`` force
one (``"cudnn"`` raises where cuDNN cannot run).

Example::

    out = attention(q, k, v, mask=mask)                              # BERT: (batch, len, heads, dim)
    out = attention(q, k, v, bias=position_bias, mask=mask, scale=1.0,
                    dropout_rate=0.1, dropout_rng=rng)               # T5 in training
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_implementation(name: str, owner: str) -> None:
    """Raises a ValueError naming ``owner`` (a config field) when ``name`` is not an implementation."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{owner}={name!r} is not an attention implementation; use one of {IMPLEMENTATIONS}")


def choose_implementation(*, platform: str, dtype, head_dim: int, dropout: bool,
                          max_head_dim: int = 128) -> str:
    """The implementation ``"auto"`` picks: ``"cudnn"`` or ``"xla"``.

    ``platform`` is ``"cuda"`` for an NVIDIA GPU (anything else means XLA), ``dropout`` whether
    attention dropout is active in this call.

    Example::

        choose_implementation(platform="cuda", dtype=jnp.bfloat16, head_dim=64, dropout=False)  # "cudnn"
        choose_implementation(platform="cpu", dtype=jnp.bfloat16, head_dim=64, dropout=False)   # "xla"
    """
    fused = (platform == "cuda" and jnp.dtype(dtype) in _FUSED_DTYPES and head_dim % 8 == 0
             and head_dim <= max_head_dim and not dropout)
    return "cudnn" if fused else "xla"


def fused_bias_and_mask(query, key, bias, mask):
    """``bias`` and ``mask`` in the form cuDNN takes: query-axis broadcast to ``(…, T, S)`` (cuDNN
    refuses a bias with one query row, e.g. BERT's ``(batch, 1, 1, S)`` padding mask) and the bias
    in the query's dtype."""
    t, s = query.shape[1], key.shape[1]

    def full_rows(x):
        x = jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)
        return jnp.broadcast_to(x, (*x.shape[:2], t, s))

    return (None if bias is None else full_rows(bias.astype(query.dtype)),
            None if mask is None else full_rows(mask))


def _cudnn(query, key, value, bias, mask, scale):
    bias, mask = fused_bias_and_mask(query, key, bias, mask)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                        implementation="cudnn")


def _explicit_with_dropout(query, key, value, bias, mask, scale, dropout_rate, dropout_rng):
    logits = jnp.einsum("btnh,bsnh->bnts", query, key).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, value)


def attention(query, key, value, *, bias=None, mask=None, scale: float | None = None,
              dropout_rate: float = 0.0, dropout_rng=None, implementation: str = "auto"):
    """Attention over ``(batch, length, heads, head_dim)`` arrays.

    Args:
      bias: additive logits bias broadcastable to ``(batch, heads, queries, keys)`` (T5's position bias).
      mask: boolean, ``True`` where a query may attend to a key; broadcastable like ``bias``.
      scale: logits scale; ``None`` is ``head_dim ** -0.5`` (BERT), T5 passes ``1.0``.
      dropout_rate, dropout_rng: attention-probability dropout, active when ``dropout_rng`` is
        given and the rate is positive (training).
      implementation: ``"auto"``, ``"xla"`` or ``"cudnn"`` (see the module docstring).
    """
    check_implementation(implementation, "implementation")
    head_dim = query.shape[-1]
    scale = head_dim ** -0.5 if scale is None else scale
    dropout = dropout_rng is not None and dropout_rate > 0.0
    if implementation == "cudnn" and dropout:
        raise ValueError("attention: cuDNN fused attention has no attention dropout; set the attention "
                         "dropout rate to 0 or use implementation='auto'/'xla'")
    if dropout:
        return _explicit_with_dropout(query, key, value, bias, mask, scale, dropout_rate, dropout_rng)
    if implementation == "cudnn":
        return _cudnn(query, key, value, bias, mask, scale)
    platform = current_platform()
    if implementation == "auto" and platform == "cuda" and choose_implementation(
            platform=platform, dtype=query.dtype, head_dim=head_dim, dropout=False,
            max_head_dim=256 if _hopper_or_later() else 128) == "cudnn":
        try:
            return _cudnn(query, key, value, bias, mask, scale)
        except (ValueError, NotImplementedError, RuntimeError):
            pass   # shapes cuDNN refuses while tracing (e.g. odd lengths with a bias): the XLA path
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                        implementation="xla")


def current_platform() -> str:
    """``"cuda"`` on an NVIDIA GPU backend, else JAX's default backend name (``"cpu"``, ``"tpu"``,
    ``"gpu"`` for ROCm)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    device = jax.devices()[0]
    names = f"{getattr(device, 'device_kind', '')} {getattr(getattr(device, 'client', None), 'platform_version', '')}"
    return "gpu" if "rocm" in names.lower() or "amd" in names.lower() else "cuda"


def _hopper_or_later() -> bool:
    return float(getattr(jax.devices()[0], "compute_capability", "0")) >= 9.0
