"""Greedy and beam-search generation for encoder-decoder models, jitted, with a key/value cache.

The whole search is one ``jax.jit``-compiled function: the encoder runs once, the decoder runs one
token per step inside ``lax.while_loop`` over a cache of fixed size ``max_length``, for the whole
batch at once, and the loop exits as soon as every sequence has finished (EOS) or ``max_length``
is reached. Results match transformers' ``generate(do_sample=False)`` token for token: greedy
picks the arg-max, beam search follows transformers' vectorised beam search (``length_penalty``,
``early_stopping`` True / False / "never"). Two differences in layout only: the result always has
``max_length`` columns, and every position after a sequence's EOS holds ``pad_token_id``
(transformers' beam search fills them with the EOS token when ``pad_token_id`` is 0).

Model contract (any Flax linen module that provides these methods can be generated from; see
:class:`jaxtune.models.t5.T5Model` for an implementation)::

    encoded = model.apply(variables, input_ids, attention_mask, method="encode")
        # encoder output, batch-leading pytree, e.g. (batch, src_len, d_model)
    memory, cache = model.apply(variables, encoded, attention_mask, max_length, method="init_cache")
        # memory: what every step reads but never changes (cross-attention keys/values, masks);
        # cache: per-hypothesis decoder state (self-attention keys/values for max_length positions).
        # Every leaf of both has the batch as its leading axis.
    logits, cache = model.apply(variables, tokens, position, memory, cache, method="decode")
        # tokens (batch, 1) int32 at decoder position `position` (int32 scalar) ->
        # logits (batch, 1, vocab) and the updated cache.

``model.config`` (optional) supplies defaults for ``decoder_start_token_id``, ``eos_token_id`` and
``pad_token_id``. For beam search the encoder output and mask are repeated per beam before
``init_cache``; the cache is re-ordered along its leading axis when beams swap.

Example::

    tokens = jaxtune.generate(model, variables, input_ids, attention_mask, max_length=32, num_beams=4)
    # tokens: (batch, 32) int32, starting with the decoder start token, padded after EOS
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_NEG = -1.0e9  # transformers' "impossible" score in beam search


def generate(model, variables: Any, input_ids, attention_mask=None, max_length: int = 20, num_beams: int = 1,
             eos_token_id: int | None = None, pad_token_id: int | None = None,
             decoder_start_token_id: int | None = None, length_penalty: float = 1.0,
             early_stopping: bool | str = False) -> jax.Array:
    """Generates decoder token ids with greedy search (``num_beams=1``) or beam search.

    Args:
      model: Flax module with ``encode`` / ``init_cache`` / ``decode`` (see the module docstring).
      variables: the model's variables (``{"params": ...}``).
      input_ids: ``(batch, src_len)`` int encoder input.
      attention_mask: ``(batch, src_len)`` 1 for tokens, 0 for padding; ``None`` = no padding.
      max_length: length of the returned sequences, decoder start token included (as transformers).
      num_beams: 1 for greedy search, more for beam search.
      eos_token_id, pad_token_id, decoder_start_token_id: default to ``model.config``'s.
        ``eos_token_id=None`` with no config value disables stopping at EOS.
      length_penalty: beam scores are divided by ``generated_length ** length_penalty``.
      early_stopping: beam search stop rule, as transformers: ``True`` stops once ``num_beams``
        hypotheses are finished, ``False`` uses a heuristic, ``"never"`` the canonical rule.

    Returns:
      ``(batch, max_length)`` int32 token ids; position 0 is the decoder start token, positions
      after a sequence's EOS hold ``pad_token_id``.

    Example::

        out = generate(model, variables, ids, mask, max_length=16)              # greedy
        out = generate(model, variables, ids, mask, max_length=16, num_beams=4)  # beam search
    """
    config = getattr(model, "config", None)
    eos = _token(eos_token_id, config, "eos_token_id", required=False)
    pad = _token(pad_token_id, config, "pad_token_id", required=True)
    start = _token(decoder_start_token_id, config, "decoder_start_token_id", required=True)
    if max_length < 2:
        raise ValueError(f"generate: max_length must be >= 2 (start token + one generated token), got {max_length}")
    if num_beams < 1:
        raise ValueError(f"generate: num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise ValueError(f"generate: input_ids must be (batch, length), got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"generate: attention_mask shape {attention_mask.shape} differs from input_ids shape "
                         f"{input_ids.shape}")
    tokens = jnp.array([-1 if eos is None else eos, pad, start], jnp.int32)  # traced: no recompiles
    return _generate(model, variables, input_ids, attention_mask, tokens, jnp.float32(length_penalty),
                     max_length=int(max_length), num_beams=int(num_beams), early_stopping=early_stopping)


def _token(value, config, name: str, required: bool) -> int | None:
    if value is None:
        value = getattr(config, name, None)
    if value is None and required:
        raise ValueError(f"generate: {name} is not set; pass {name}=... or give the model a config with it")
    return None if value is None else int(value)


@functools.partial(jax.jit, static_argnames=("model", "max_length", "num_beams", "early_stopping"))
def _generate(model, variables, input_ids, attention_mask, tokens, length_penalty, *, max_length, num_beams,
              early_stopping):
    eos, pad, start = tokens  # eos -1: never stops early (token ids are >= 0)
    encoded = model.apply(variables, input_ids, attention_mask, method="encode")
    if num_beams > 1:
        encoded, attention_mask = jax.tree_util.tree_map(
            lambda x: jnp.repeat(x, num_beams, axis=0), (encoded, attention_mask))
    memory, cache = model.apply(variables, encoded, attention_mask, max_length, method="init_cache")

    def step(tokens, position, cache):
        logits, cache = model.apply(variables, tokens, position, memory, cache, method="decode")
        return logits[:, -1].astype(jnp.float32), cache

    batch = input_ids.shape[0]
    if num_beams == 1:
        return _greedy(step, cache, batch, max_length, eos, pad, start)
    return _beam_search(step, cache, batch, max_length, num_beams, eos, pad, start, length_penalty,
                        early_stopping)


def _greedy(step, cache, batch, max_length, eos, pad, start):
    sequences = jnp.full((batch, max_length), pad, jnp.int32).at[:, 0].set(start)
    state = (jnp.int32(1), sequences, jnp.ones((batch,), bool), cache)

    def cond(state):
        cur_len, _, unfinished, _ = state
        return (cur_len < max_length) & jnp.any(unfinished)

    def body(state):
        cur_len, sequences, unfinished, cache = state
        tokens = jax.lax.dynamic_slice_in_dim(sequences, cur_len - 1, 1, axis=1)
        logits, cache = step(tokens, cur_len - 1, cache)
        next_tokens = jnp.where(unfinished, jnp.argmax(logits, axis=-1).astype(jnp.int32), pad)
        sequences = jax.lax.dynamic_update_slice_in_dim(sequences, next_tokens[:, None], cur_len, axis=1)
        unfinished = unfinished & (next_tokens != eos)
        return cur_len + 1, sequences, unfinished, cache

    return jax.lax.while_loop(cond, body, state)[1]


def _gather(x, indices):
    """x (batch, k, ...), indices (batch, m) -> (batch, m, ...)."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(step, cache, batch, max_length, num_beams, eos, pad, start, length_penalty, early_stopping):
    """transformers' vectorised beam search (``GenerationMixin._beam_search``) in one while loop.

    State per batch item: ``num_beams`` running hypotheses with accumulated log-probabilities and
    the best ``num_beams`` finished hypotheses with length-normalised scores.
    """
    keep = 2 * num_beams  # top-k candidates per step: enough live ones even if num_beams end in EOS
    top_mask = jnp.arange(keep) < num_beams
    sequences = jnp.full((batch, num_beams, max_length), pad, jnp.int32).at[:, :, 0].set(start)
    state = {
        "cur_len": jnp.int32(1),
        "running": sequences,
        "running_scores": jnp.zeros((batch, num_beams), jnp.float32).at[:, 1:].set(_NEG),
        "finished": sequences,
        "finished_scores": jnp.full((batch, num_beams), _NEG, jnp.float32),
        "is_finished": jnp.zeros((batch, num_beams), bool),
        "improvable": jnp.ones((batch, 1), bool),
        "done": jnp.bool_(False),
        "cache": cache,
    }

    def body(s):
        cur_len = s["cur_len"]
        tokens = jax.lax.dynamic_slice_in_dim(s["running"], cur_len - 1, 1, axis=2).reshape(-1, 1)
        logits, cache = step(tokens, cur_len - 1, s["cache"])
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits).reshape(batch, num_beams, vocab)
        log_probs = (log_probs + s["running_scores"][:, :, None]).reshape(batch, num_beams * vocab)

        # Top-k continuations over all beams of each batch item.
        topk_scores, topk_indices = jax.lax.top_k(log_probs, keep)
        topk_beams, topk_tokens = topk_indices // vocab, (topk_indices % vocab).astype(jnp.int32)
        topk_sequences = jax.lax.dynamic_update_slice_in_dim(
            _gather(s["running"], topk_beams), topk_tokens[:, :, None], cur_len, axis=2)
        hits = (topk_tokens == eos) | (cur_len + 1 >= max_length)

        # Running beams for the next step: the best candidates that did not just finish.
        running_candidates = topk_scores + hits.astype(jnp.float32) * _NEG
        next_indices = jax.lax.top_k(running_candidates, num_beams)[1]
        running = _gather(topk_sequences, next_indices)
        running_scores = _gather(running_candidates, next_indices)
        source = _gather(topk_beams, next_indices) + jnp.arange(batch)[:, None] * num_beams
        cache = jax.tree_util.tree_map(lambda x: jnp.take(x, source.reshape(-1), axis=0), cache)

        # Finished hypotheses: merge the candidates that just ended (among the top num_beams) in.
        just_finished = hits & top_mask[None, :]
        scores = topk_scores / (cur_len.astype(jnp.float32) ** length_penalty)
        if early_stopping is True:
            scores = scores + jnp.all(s["is_finished"], axis=-1, keepdims=True).astype(jnp.float32) * _NEG
        scores = scores + (~s["improvable"]).astype(jnp.float32) * _NEG
        scores = scores + (~just_finished).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([s["finished_scores"], scores], axis=1)
        best = jax.lax.top_k(merged_scores, num_beams)[1]
        finished = _gather(jnp.concatenate([s["finished"], topk_sequences], axis=1), best)
        finished_scores = _gather(merged_scores, best)
        is_finished = _gather(jnp.concatenate([s["is_finished"], just_finished], axis=1), best)

        # Can a running beam still beat the worst finished one?
        cur_len = cur_len + 1
        best_length = (cur_len - 1).astype(jnp.float32)
        if early_stopping == "never":  # a positive length penalty favours the longest possible hypothesis
            best_length = jnp.where(length_penalty > 0.0, jnp.float32(max_length - 1), best_length)
        best_running = running_scores[:, :1] / best_length ** length_penalty
        worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG)
        improvable = s["improvable"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        keep_going = jnp.any(improvable) & ~jnp.all(hits)
        if early_stopping is True:
            keep_going = keep_going & ~jnp.all(is_finished)
        return {"cur_len": cur_len, "running": running, "running_scores": running_scores, "finished": finished,
                "finished_scores": finished_scores, "is_finished": is_finished, "improvable": improvable,
                "done": ~keep_going, "cache": cache}

    state = jax.lax.while_loop(lambda s: ~s["done"] & (s["cur_len"] < max_length), body, state)
    return state["finished"][:, 0]
