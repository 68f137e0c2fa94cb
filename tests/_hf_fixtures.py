"""Tiny random Hugging Face checkpoints written by transformers (PyTorch) for parity tests.

Nothing here downloads: every checkpoint is built from a small random config and saved with
``save_pretrained`` to a temporary directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def tiny_bert_config(**overrides):
    """A transformers ``BertConfig`` with hidden size 32, 2 layers, vocab 99 (plus ``overrides``)."""
    import transformers

    return transformers.BertConfig(**{**TINY_BERT, **overrides})


def save_torch_model(model_class, config, directory: Path, seed: int = 0, **save_kwargs):
    """Builds ``model_class(config)`` with seeded random weights, saves it, returns it in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config).eval()
    _randomize(model, seed)
    model.save_pretrained(directory, **save_kwargs)
    return model


def _randomize(model, seed: int) -> None:
    """Redraws every parameter larger than transformers' init (std 0.02, zero biases, unit norms),
    so that activations are O(1), attention is far from uniform, and parity tests see every tensor."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "LayerNorm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.2 * noise)


def padded_batch(vocab_size: int, lengths=(10, 7, 4), pair_at: int | None = None, seed: int = 0):
    """(input_ids, attention_mask, token_type_ids) as int64 numpy arrays, right-padded with id 0.

    With ``pair_at``, tokens from that position on are the second sentence (token type 1).
    """
    rng = np.random.default_rng(seed)
    length = max(lengths)
    input_ids = np.zeros((len(lengths), length), np.int64)
    attention_mask = np.zeros_like(input_ids)
    token_type_ids = np.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        input_ids[row, :n] = rng.integers(1, vocab_size, n)
        attention_mask[row, :n] = 1
        if pair_at is not None:
            token_type_ids[row, pair_at:n] = 1
    return input_ids, attention_mask, token_type_ids


def torch_outputs(model, input_ids, attention_mask, token_type_ids) -> dict[str, np.ndarray]:
    """Runs a transformers model without grad; returns its named outputs as float32 numpy arrays."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                    token_type_ids=torch.from_numpy(token_type_ids))
    return {key: value.numpy() for key, value in out.items() if isinstance(value, torch.Tensor)}
