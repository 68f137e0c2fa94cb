"""Named random streams derived from one ``train.seed``.

A run uses randomness in four places; each gets its own stream, folded out of ``train.seed`` with
a fixed integer, so changing one use never shifts another and no key is reused:

* ``"init"``: a newly initialised task head, or every weight with ``model.init: random``;
* ``"data_order"``: the order of the training batches (one numpy seed per epoch);
* ``"dropout"``: the key the train step splits for dropout (``TrainState.rng``);
* ``"lora"``: the random factors ``A`` of the rules' LoRA adapters (:func:`jaxtune.init_lora`).

``data.seed`` is not among them: it only picks the data split and the ``train_limit`` /
``eval_limit`` / ``test_limit`` subsets.

Example::

    head_key = jt.seed_stream(cfg.train.seed, "init")
    order = np.random.default_rng(jt.epoch_seed(cfg.train.seed, epoch)).permutation(n)
"""
from __future__ import annotations

import jax
import numpy as np

# The fixed integer of each use; never renumber (it would change every run's randomness).
STREAMS: dict[str, int] = {"init": 1, "data_order": 2, "dropout": 3, "lora": 4, "rehearsal": 5}


def seed_stream(seed: int, name: str) -> jax.Array:
    """The key of stream ``name`` (``"init"``, ``"data_order"``, ``"dropout"``, ``"lora"`` or ``"rehearsal"``: the
    old examples a rehearsing run trains on) of ``seed``.

    Example::

        >>> a, b = seed_stream(0, "init"), seed_stream(0, "dropout")
        >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any())
        True
    """
    if name not in STREAMS:
        raise ValueError(f"unknown seed stream {name!r}; streams: {sorted(STREAMS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"train.seed must be an integer, got {seed!r} ({type(seed).__name__})")
    return jax.random.fold_in(jax.random.key(int(seed)), STREAMS[name])


def epoch_seed(seed: int, epoch: int) -> int:
    """The numpy seed of epoch ``epoch``'s batch order, from the ``"data_order"`` stream of ``seed``.

    Example::

        >>> epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(1, 1)
        True
    """
    key = jax.random.fold_in(seed_stream(seed, "data_order"), epoch)
    return int(np.asarray(jax.random.bits(key, dtype=np.uint32)))
