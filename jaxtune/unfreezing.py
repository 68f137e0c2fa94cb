"""Gradual unfreezing (ULMFiT): which leaves train at each stage, and when each stage begins.

:func:`unfreezing_stages` turns layer ids into one trainable mask per stage (equal splits of the
layer ids, or groups you give); :func:`unfreezing_stage` says which stage a step is in (a stage
every k steps, or explicit boundaries). The masks drive a runtime-mode optimizer
(:func:`jaxtune.set_trainable`, no recompilation) or a structural step (:class:`jaxtune.StagedTrainStep`).
:func:`freeze_below` is the mask that freezes the bottom layers; :func:`with_frozen_layers` gives a
scanned model (stacked layers) the split that spares a structural step their weight gradients.

Example::

    stages = jt.unfreezing_stages(params, model.layer_ids, groups=[[7], [5, 6], [0, 1, 2, 3, 4]])
    for step in range(total_steps):
        stage = jt.unfreezing_stage(step, len(stages), at=[40, 100])
        ...   # opt_state = jt.set_trainable(opt_state, stages[stage]) when the stage changes
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxtune.errors import UserError, check_number
from jaxtune.rules import Rule, _layer_id, _resolve, leaf_paths, tree_structure


def _stage_groups(distinct: list[int], num_stages: int | None, groups: Sequence[Sequence[int]] | None,
                  trainable_ids: set[int]) -> list[list[int]]:
    """The layer ids each stage adds, top first: ``groups`` checked, or ``distinct`` (descending) split
    into ``num_stages`` near-equal contiguous groups, larger ones first."""
    hint = "(optim.unfreeze_groups / optim.unfreeze_stages in the config)"
    if groups is None:
        n = len(distinct) if num_stages is None else num_stages
        if not 1 <= n <= len(distinct):
            raise UserError(f"num_stages={num_stages} but the model has {len(distinct)} distinct layer ids",
                            config_hint=f"(optim.unfreeze_stages: at most {len(distinct)} for this model)")
        return [g.tolist() for g in np.array_split(np.asarray(distinct), n)]
    if not groups or any(isinstance(g, (str, int)) or not len(g) for g in groups):
        raise UserError(f"groups is {groups!r}; give one non-empty list of layer ids per stage, top first, "
                        f"e.g. {[distinct[:1], distinct[1:3]]}", config_hint=hint)
    if num_stages is not None and num_stages != len(groups):
        raise UserError(f"num_stages={num_stages} but groups has {len(groups)} stages; give one of them",
                        config_hint="(optim.unfreeze_stages must equal len(optim.unfreeze_groups), or be null)")
    listed = [i for g in groups for i in g]
    bad = [i for i in listed if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
    if bad:
        raise UserError(f"groups lists {bad}, which are not layer ids (integers)", config_hint=hint)
    repeated = sorted({i for i in listed if listed.count(i) > 1})
    unknown = sorted(set(listed) - set(distinct))
    missing = sorted(trainable_ids - set(listed))
    for problem, ids in (("are in more than one group", repeated), ("are not layer ids of this model", unknown),
                         ("are in no group, so their parameters would never train", missing)):
        if ids:
            raise UserError(f"layer ids {ids} {problem}; the model's layer ids are {sorted(distinct)} (head "
                            f"{max(distinct)}); the rules leave {sorted(trainable_ids)} trainable",
                            hint="Hint: list each trainable layer id in exactly one group, or freeze its "
                                 "parameters with a rule.", config_hint=hint)
    return [[int(i) for i in g] for g in groups]


def unfreezing_stages(params: Any, layer_ids: Callable[[str], Any], rules: Sequence[Rule] | None = None,
                      num_stages: int | None = None, *, groups: Sequence[Sequence[int]] | None = None) -> list[Any]:
    """Trainable masks of a gradual-unfreezing schedule (ULMFiT): stage 0 trains the top group of
    layers, each later stage adds a group below, and the last trains every leaf the rules let train
    (rule-frozen leaves never train).

    What stage 0 holds: the leaves with the highest layer ids. By default (neither ``num_stages``
    nor ``groups``) one stage per distinct id, so stage 0 is the head alone (id L+1 in the jaxtune
    models). With ``num_stages=n`` the distinct ids, from the top, are split into ``n`` contiguous
    groups of near-equal size, larger ones first (8 ids 0..7 in 3 stages: stage 0 trains ids
    {7, 6, 5}, stage 1 adds {4, 3, 2}, stage 2 adds {1, 0}). With ``groups`` you choose them:
    ``groups[k]`` lists the layer ids stage ``k`` adds; every id a rule leaves trainable must be in
    exactly one group. A stacked leaf gets a per-layer bool array. When each stage starts is
    :func:`unfreezing_stage`'s business.

    Example::

        stages = jt.unfreezing_stages(params, model.layer_ids, num_stages=3)
        opt_state = jt.set_trainable(opt_state, stages[0])   # the top third of the layers
        stages = jt.unfreezing_stages(params, model.layer_ids, groups=[[7], [5, 6], [0, 1, 2, 3, 4]])
    """
    paths = leaf_paths(params)
    ids = [_layer_id(layer_ids, p) for p in paths]
    distinct = sorted({int(i) for a in ids for i in np.ravel(a)}, reverse=True)
    allowed = [True] * len(paths)
    if rules is not None:
        allowed = [not s.frozen for s in _resolve(params, rules)[1]]
    trainable_ids = {int(i) for a, ok in zip(ids, allowed) if ok for i in np.ravel(a)}
    stage_groups = _stage_groups(distinct, num_stages, groups, trainable_ids)
    treedef = tree_structure(params)
    stages, unfrozen = [], set()
    for group in stage_groups:
        unfrozen |= set(group)
        in_stage = np.vectorize(lambda i: int(i) in unfrozen, otypes=[bool])
        masks = [in_stage(a) & ok if a.ndim else bool(in_stage(a)) and ok for a, ok in zip(ids, allowed)]
        stages.append(jax.tree_util.tree_unflatten(treedef, masks))
    return stages


def unfreezing_stage(step: int, num_stages: int, *, every: int | None = None,
                     at: Sequence[int] | None = None) -> int:
    """The gradual-unfreezing stage that training step ``step`` (0-based: the steps done before it)
    runs in: with ``every=k``, stage ``s`` from step ``s * k`` on; with ``at=[b_1, ..., b_{n-1}]``
    (explicit boundaries, increasing), stage ``s`` from step ``b_s`` on. The last stage lasts.

    Example::

        >>> [unfreezing_stage(t, 3, at=[40, 100]) for t in (0, 39, 40, 99, 100, 500)]
        [0, 0, 1, 1, 2, 2]
        >>> unfreezing_stage(250, 3, every=100)
        2
    """
    if (every is None) == (at is None):
        raise UserError(f"give exactly one of every= (a stage every k steps) or at= (the steps where stages 1.. "
                        f"begin); got every={every!r}, at={at!r}",
                        config_hint="(one of optim.unfreeze_every, optim.unfreeze_at, optim.unfreeze_at_epochs)")
    if every is not None:
        check_number("every", every, low=1, integer=True)
        return min(step // every, num_stages - 1)
    at = list(at)
    if len(at) != num_stages - 1 or any(not isinstance(b, (int, np.integer)) for b in at) or \
            any(b < 1 for b in at) or any(b >= c for b, c in zip(at, at[1:])):
        raise UserError(f"stage boundaries {at} do not fit {num_stages} stages; give {num_stages - 1} increasing "
                        "step numbers >= 1, where stages 1, 2, ... begin",
                        config_hint="(optim.unfreeze_at / optim.unfreeze_at_epochs: one boundary fewer than "
                                    "stages; epochs that fall on the same step count as one)")
    return sum(step >= b for b in at)


def freeze_below(params: Any, layer_ids: Callable[[str], Any], layer_id: int,
                 rules: Sequence[Rule] | None = None) -> Any:
    """Trainable mask that freezes every layer id below ``layer_id`` (and what ``rules`` freeze):
    with the jaxtune models' ids (embeddings 0, block i -> i+1, head L+1), ``layer_id=k+1`` freezes
    the embeddings and the bottom k blocks. A stacked (scanned) leaf gets a per-layer bool array.
    Use it as a structural step's ``trainable=`` (with :func:`with_frozen_layers` on a scanned
    model, so that the frozen layers cost no weight gradient) or with :func:`jaxtune.set_trainable`.

    Example::

        mask = jt.freeze_below(params, model.layer_ids, 5)        # embeddings + layers 0..3 frozen
        step = jt.make_train_step(task.loss_fn(jt.with_frozen_layers(model, mask)), tx, trainable=mask)
    """
    check_number("layer_id", layer_id, integer=True)
    paths = leaf_paths(params)
    allowed = [True] * len(paths) if rules is None else [not s.frozen for s in _resolve(params, rules)[1]]
    masks = []
    for path, ok in zip(paths, allowed):
        trains = (_layer_id(layer_ids, path) >= layer_id) & ok
        masks.append(trains if trains.ndim else bool(trains))
    return jax.tree_util.tree_unflatten(tree_structure(params), masks)


def frozen_bottom_layers(trainable: Any, layer_ids: Callable[[str], Any]) -> int:
    """How many bottom stacked layers ``trainable`` keeps frozen in every stacked leaf (one whose
    ``layer_ids`` are an array): the stacked layer ids, over all stacked leaves, below the lowest id
    that any stacked leaf trains; 0 when there is no stacked leaf. With one stack (BERT) these are
    the leading False entries of each per-layer mask; with two (T5's encoder, then decoder, ids
    contiguous) a count past the encoder's blocks reaches into the decoder's.

    Example::

        >>> frozen_bottom_layers({"layer": {"w": np.array([False, False, True])}, "head": True},
        ...                      lambda p: np.arange(1, 4) if p.startswith("layer/") else 4)
        2
    """
    stacked_ids: set[int] = set()
    lowest_trained = np.inf
    for path, flag in zip(leaf_paths(trainable), jax.tree_util.tree_leaves(trainable)):
        ids = _layer_id(layer_ids, path)
        if ids.ndim != 1:
            continue
        flags = np.broadcast_to(np.asarray(flag, bool), ids.shape)
        stacked_ids.update(int(i) for i in ids)
        if flags.any():
            lowest_trained = min(lowest_trained, int(ids[flags].min()))
    return sum(i < lowest_trained for i in stacked_ids)


def with_frozen_layers(model: Any, trainable: Any, layer_ids: Callable[[str], Any] | None = None) -> Any:
    """``model`` whose frozen bottom layers (:func:`frozen_bottom_layers` of ``trainable``) run
    under ``stop_gradient`` in a scan of their own, for a structural step with that mask: a scanned
    model (``scan_layers=True``) then computes no weight gradient for them; masking a stacked
    gradient alone would still compute it. ``model`` itself for a model without stacked layers or
    a ``frozen_layers`` field, or when the count is unchanged. ``layer_ids`` defaults to
    ``model.layer_ids``.

    Example::

        model = jt.with_frozen_layers(model, stages[k])     # one per structural unfreezing stage
        step = jt.make_train_step(task.loss_fn(model), tx, trainable=stages[k])
    """
    layer_ids = layer_ids if layer_ids is not None else getattr(model, "layer_ids", None)
    if layer_ids is None or not hasattr(model, "frozen_layers"):
        return model
    count = frozen_bottom_layers(trainable, layer_ids)
    return model if count == model.frozen_layers else model.clone(frozen_layers=count)
