"""Runs of one fine-tuning strategy (seeds, learning rates, layer decays) as members of one vmapped step.

The runner (``jt.finetune``) pays a model load, a compilation, checkpoints and plots per run; an
experiment of a hundred short runs on two CPU cores cannot afford that. :class:`MemberTrainer`
trains the runs of a strategy together (``jt.make_member_step``), built from the
same pieces as the runner: ``load_model`` (a new head from ``jt.seed_stream(seed, "init")``), the
task's loss and evaluation, ``jt.make_optimizer`` in runtime mode (each member's learning rate,
times its layer-decay factors, as multipliers), structural trainable masks (frozen leaves get no
gradient and are stored once), frozen batch norm for frozen layers (``jt.frozen_batch_norm``) and
stage-fresh gradual unfreezing (``jt.unfreezing_stages``: a structural step per stage), and the
runner's compile settings (``train.compilation_cache``: a step compiled by an earlier cell or run is
read from JAX's persistent cache; it computes the same). Each
member has its own data order (``jt.epoch_seed``), dropout key and evaluation; it keeps its best
validation-accuracy point, where the test split is evaluated once. With ``recompute_bn`` (CNNs),
every evaluation first re-estimates each member's batch-norm statistics over its training examples
(``jt.batch_statistics``, vmapped; frozen layers keep theirs), as PyTorch's ``update_bn`` does:
after a few dozen steps the running statistics still lag far behind the weights
(``results/bn_statistics.md``).

Example::

    trainer = MemberTrainer(cfg, data, seeds=(0, 1, 2), max_length=48)     # images: max_length=None, recompute_bn=True
    rows = subset(len(data.train), 200, cfg.data.seed)     # data: train_limit=1600 (the largest n); n=200
    out = trainer.run(rules, rows, [(0, 1e-4, None), (0, 3e-4, None)], steps=60, evals=4)   # full: 2 lrs
    out = trainer.run(rules, rows, [(1, 3e-4, 0.8), (2, 3e-4, 0.8)], 60, 4, name="full")     # LLRD 0.8
    out["val"], out["test"]          # one value per member
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
import protocol
from jaxtune import metrics
from jaxtune.experiment import with_frozen_bn
from jaxtune.models.batch_norm import average_batch_statistics
from jaxtune.rules import frozen_batch_norm
from jaxtune.run_model import load_model
from jaxtune.tasks import get_task
from runs import EXTEND, batch_order

SCHEDULES = {"warmup_linear": jt.warmup_linear, "warmup_cosine": jt.warmup_cosine}


def pad_rows(examples: Sequence[dict], rows: np.ndarray, max_length: int | None, pad_token_id: int) -> dict:
    """The examples ``rows`` as one batch: sequence fields padded to ``max_length`` (``input_ids``
    with ``pad_token_id``, the others with 0), fixed-size fields stacked.

    Example::

        batch = pad_rows(data.train, np.arange(16), 48, data.pad_token_id)   # input_ids [16, 48]
    """
    batch = {}
    for key, first in examples[rows[0]].items():
        if np.ndim(first) == 1 and max_length is not None:
            out = np.full((len(rows), max_length), pad_token_id if key == "input_ids" else 0, np.asarray(first).dtype)
            for i, r in enumerate(rows):
                value = examples[r][key][:max_length]
                out[i, :len(value)] = value
            batch[key] = out
        else:
            batch[key] = np.stack([examples[r][key] for r in rows])
    return batch


def subset(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` of ``total`` training rows, sorted, as ``data.train_limit=n`` with ``data.seed=seed`` picks
    them; nested: a larger n keeps a smaller one's rows.

    Example::

        >>> subset(10, 3, 0).tolist(), set(subset(10, 3, 0)) <= set(subset(10, 6, 0))
        ([2, 4, 6], True)
    """
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


@jax.jit
def _keep_improved(improved: jax.Array, best, new):
    """Stacked trees: member ``m``'s from ``new`` where ``improved[m]``, else from ``best`` (a shared
    leaf, leading axis 1, is the same in both)."""
    def pick(b, p):
        if p.shape[0] != improved.shape[0]:
            return p + 0   # a new buffer: the step donates its input
        return jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
    return jax.tree_util.tree_map(pick, best, new)


class MemberTrainer:
    """Trains the runs (members: seed, learning rate, layer decay) of one strategy on a prepared data set.

    Args:
      cfg: the run config (``model``: path, dtype and ``init`` (``random``: every weight of each seed
        fresh from ``train.seed``), ``data``, ``optim``: optimizer adamw, schedule, warm-up,
        weight decay); its ``optim.rules`` and unfreezing are ignored (strategies are given to
        :meth:`run`).
      data: ``prepare_data(cfg.data, ...)`` with every training example any run takes (:meth:`run`
        takes the rows: :func:`subset`).
      seeds: ``train.seed`` values: head init, data order and dropout of each member.
      max_length: pad text to this length (one compiled shape); None for images.
      recompute_bn: re-estimate batch-norm statistics over the training examples before every
        evaluation (a CNN's); the evaluated statistics are what a member's best point keeps.
    """

    def __init__(self, cfg, data, seeds: Sequence[int], max_length: int | None, recompute_bn: bool = False):
        jt.use_run_compile_settings(cfg.train)   # as the runner: compiled steps from the persistent cache
        self.cfg, self.data, self.seeds, self.max_length = cfg, data, tuple(seeds), max_length
        self.recompute_bn = recompute_bn
        self.task = get_task(data.task)
        self.variables = {}
        for seed in self.seeds:
            self.model, self.variables[seed] = load_model(cfg.model.path, self.task.head, len(data.label_names),
                                                          cfg.model.dtype, init=cfg.model.init,
                                                          rng=jt.seed_stream(seed, "init"))
        self.layer_ids = self.model.layer_ids
        self._compiled: dict = {}
        pad = data.pad_token_id
        self.val = pad_rows(data.validation, np.arange(len(data.validation)), max_length, pad)
        self.test = pad_rows(data.test, np.arange(len(data.test)), max_length, pad)

    @property
    def params(self) -> Any:
        """The first seed's parameters (the layout every seed shares)."""
        return self.variables[self.seeds[0]]["params"]

    def _optimizer(self, rules, steps: int):
        optim = self.cfg.optim
        schedule = SCHEDULES[optim.schedule](1.0, int(steps * optim.warmup_fraction), steps)  # x each member's lr
        return jt.make_optimizer(self.params, rules, optax.adamw, schedule, weight_decay=optim.weight_decay,
                                 runtime=True)

    def _frozen_model(self, rules, mask):
        """The model with frozen batch norm where ``mask`` freezes."""
        return with_frozen_bn(self.model, frozen_batch_norm(self.variables[self.seeds[0]], rules, trainable=mask))

    def _step(self, rules, key: tuple, tx, mask, members: int):
        """The member step of ``mask`` (cached by ``key``)."""
        if key not in self._compiled:
            loss_fn = self.task.loss_fn(self._frozen_model(rules, mask))
            self._compiled[key] = jt.make_member_step(loss_fn, tx, members=members, per_member_batch=True,
                                                      trainable=mask)
        return self._compiled[key]

    def with_recomputed_bn(self, state, rules, key: tuple, mask, images: np.ndarray, members: int):
        """``state`` with each member's batch-norm statistics re-estimated over ``images`` (the same for
        every member; layers ``mask`` freezes keep theirs); the statistics pass is cached by ``key``."""
        key = ("bn", *key)
        if key not in self._compiled:
            stats = jt.batch_statistics(self._frozen_model(rules, mask))
            self._compiled[key] = jt.make_member_eval_step(
                lambda member, batch: stats({"params": member.params, **member.model_state}, batch), members=members)
        chunk = self.cfg.data.eval_batch_size
        batch_stats = average_batch_statistics(lambda a, b: self._compiled[key](state, images[a:b]), len(images), chunk)
        return state.replace(model_state={**state.model_state, "batch_stats": batch_stats})

    def _evaluator(self, members: int):
        key = ("eval", members)
        if key not in self._compiled:
            eval_fn = self.task.eval_fn(self.model)
            step = lambda state, batch: eval_fn(state.params, batch, model_state=state.model_state)["predictions"]
            self._compiled[key] = jt.make_member_eval_step(step, members=members)
        return self._compiled[key]

    def accuracy(self, state, split: dict, members: int, chunk: int | None = None) -> np.ndarray:
        """``[members]`` accuracy on a padded ``split`` (fixed-size chunks: one compilation)."""
        chunk = chunk or self.cfg.data.eval_batch_size
        labels, n = split["labels"], len(split["labels"])
        preds = []
        for start in range(0, n, chunk):
            rows = np.minimum(np.arange(start, start + chunk), n - 1)   # the last chunk repeats its last row
            batch = {k: v[rows] for k, v in split.items()}
            preds.append(np.asarray(self._evaluator(members)(state, batch))[:, :min(chunk, n - start)])
        return np.array([metrics.accuracy(labels, p) for p in np.concatenate(preds, axis=1)])

    def run(self, rules, train_rows: np.ndarray, members: Sequence[tuple[int, float, float | None]], steps: int,
            evals: int, *, unfreeze_at: Sequence[int] | None = None, name: str = "") -> dict:
        """Trains ``members`` ``(seed, learning rate, layer decay or None)`` with ``rules`` on the
        training examples ``train_rows`` for ``steps`` steps (batch ``cfg.data.batch_size``),
        validating ``evals`` times. ``unfreeze_at``: structural gradual unfreezing, one more stage of
        layer ids (top first) than boundaries, stage k from step ``unfreeze_at[k-1]``. ``name`` keys
        the compiled steps: runs of one name and step count must have the same ``rules``.
        Returns ``{"val", "test"}``, one value per member: its best validation accuracy and its test
        accuracy there."""
        count, batch_size = len(members), self.cfg.data.batch_size
        tx = self._optimizer(rules, steps)
        rule_mask = jt.trainable_mask(self.params, rules)
        factors = {decay: jt.lr_multipliers(self.params, rules, self.layer_ids, decay) for _, _, decay in members}
        masks = [rule_mask] if unfreeze_at is None else jt.unfreezing_stages(self.params, self.layer_ids, rules,
                                                                              len(unfreeze_at) + 1)
        states, orders = [], []
        for seed, lr, decay in members:
            variables = self.variables[seed]
            state = jt.TrainState.create(variables["params"], tx, model_state={k: v for k, v in variables.items()
                                                                               if k != "params"},
                                         rng=jt.seed_stream(seed, "dropout"))
            multipliers = jax.tree_util.tree_map(lambda f: lr * f, factors[decay])
            states.append(state.replace(opt_state=jt.set_lr_multipliers(state.opt_state, multipliers)))
            orders.append(train_rows[batch_order(len(train_rows), batch_size, steps, seed)])
        share = jax.tree_util.tree_map(lambda t: not t, rule_mask) if unfreeze_at is None else None
        state, orders = jt.stack_members(states, share=share), np.stack(orders, axis=1)   # [steps, members, batch]
        every = max(1, steps // evals)
        best_val = np.full(count, -1.0)
        bn_images = pad_rows(self.data.train, train_rows, None, 0)["images"] if self.recompute_bn else None
        best = jax.tree_util.tree_map(jnp.copy, (state.params, state.model_state))   # the step donates its input
        for t in range(steps):
            stage = 0 if unfreeze_at is None else jt.unfreezing_stage(t, len(masks), at=unfreeze_at)
            step = self._step(rules, (name, steps, count, stage), tx, masks[stage], count)
            rows = [pad_rows(self.data.train, orders[t, m], self.max_length, self.data.pad_token_id)
                    for m in range(count)]
            state, _ = step(state, {k: np.stack([r[k] for r in rows]) for k in rows[0]})
            if (t + 1) % every and t + 1 != steps:
                continue
            evaluated = state if bn_images is None else self.with_recomputed_bn(
                state, rules, (name, steps, count, stage), masks[stage], bn_images, count)
            val = self.accuracy(evaluated, self.val, count)
            improved = val > best_val
            best_val = np.where(improved, val, best_val)
            best = _keep_improved(jnp.asarray(improved), best, (evaluated.params, evaluated.model_state))
        params, model_state = best
        test = self.accuracy(state.replace(params=params, model_state=model_state), self.test, count)
        return {"val": best_val.tolist(), "test": test.tolist()}


def grid_then_seeds(run: Callable[[list], dict], points: Sequence[tuple], seeds: Sequence[int]) -> dict:
    """Every grid point with the first seed, the point with the best validation accuracy chosen,
    then the other seeds at it (``protocol.select_on_validation`` over the first seed, which the
    protocol allows; it halves the runs of a grid x seeds). ``run(members)`` trains members
    ``(seed, *point)`` (e.g. :meth:`MemberTrainer.run` with the rest bound) and returns ``{"val",
    "test"}``. Returns ``{"points", "seed0_val", "chosen", "val", "test"}`` (``val`` / ``test``: the
    chosen point's, one per seed).

    Example::

        run = lambda members: trainer.run(rules, rows, members, steps=60, evals=4)
        out = grid_then_seeds(run, [(1e-4, None), (3e-4, None)], seeds=(0, 1, 2))
        out["points"][out["chosen"]], out["test"]        # e.g. [0.0003, None], [0.71, 0.69, 0.72]
    """
    first = run([(seeds[0], *p) for p in points])
    chosen = protocol.select_on_validation({i: {seeds[0]: v} for i, v in enumerate(first["val"])},
                                           {i: {seeds[0]: t} for i, t in enumerate(first["test"])}).point
    rest = run([(seed, *points[chosen]) for seed in seeds[1:]]) if len(seeds) > 1 else {"val": [], "test": []}
    return {"points": [list(p) for p in points], "seed0_val": first["val"], "chosen": chosen,
            "val": [first["val"][chosen], *rest["val"]], "test": [first["test"][chosen], *rest["test"]]}


def next_rate(edge: float, neighbour: float) -> float:
    """The learning rate one step past ``edge``, away from ``neighbour`` (its grid neighbour): the value
    of the 1-3-10 sequence nearest the mirror image of ``neighbour`` in log space, and never ``edge``.

    Example::

        >>> next_rate(3e-3, 1e-3), next_rate(1e-4, 3e-4), next_rate(0.03, 0.01)
        (0.01, 3e-05, 0.1)
    """
    mirrored = math.log10(edge) * 2 - math.log10(neighbour)
    up = mirrored > math.log10(edge)
    ladder = [m * 10.0 ** k for k in range(math.floor(mirrored) - 1, math.floor(mirrored) + 2) for m in (1, 3)]
    beyond = [v for v in ladder if (v > edge * 1.0001 if up else v < edge / 1.0001)]
    return float(f"{min(beyond, key=lambda v: abs(math.log10(v) - mirrored)):.1g}")


def extend_past_edges(run: Callable[[list], dict], base: dict, seeds: Sequence[int], times: int) -> dict:
    """``base`` (a :func:`grid_then_seeds` result over points ``(learning rate, *rest)``) with its grid
    grown past an edge while the choice sits there: the next rate (:func:`next_rate`) along the chosen
    point's line (the same ``rest``, e.g. layer decay) runs with the first seed, the best validation
    accuracy is chosen again (ties: the earlier point), at most ``times`` times. A grid whose points
    all tie on validation (every rate stuck at chance) stays. When the choice moves, the other seeds
    run at the new point. Returns ``base``'s keys with the added points after the others, and
    ``"added"``: how many.

    Example::

        out = extend_past_edges(run, grid_then_seeds(run, [(1e-4, None), (3e-4, None)], seeds), seeds, times=2)
        out["points"]         # e.g. [[0.0001, None], [0.0003, None], [0.001, None]]: 3e-4 won, then 1e-3 did not
    """
    points, vals, chosen = [list(p) for p in base["points"]], list(base["seed0_val"]), base["chosen"]
    first_test = {chosen: base["test"][0]}
    for _ in range(times):
        lr, *rest = points[chosen]
        line = sorted(p[0] for p in points if p[1:] == rest)
        if len(line) < 2 or len(set(vals)) == 1 or line[0] < lr < line[-1]:
            break
        new = [next_rate(lr, line[-2] if lr == line[-1] else line[1]), *rest]
        out = run([(seeds[0], *new)])
        points.append(new)
        vals.append(out["val"][0])
        first_test[len(points) - 1] = out["test"][0]
        chosen = int(np.argmax(vals))
    added = len(points) - len(base["points"])
    if chosen == base["chosen"]:
        return {**base, "points": points, "seed0_val": vals, "added": added}
    others = run([(seed, *points[chosen]) for seed in seeds[1:]]) if len(seeds) > 1 else {"val": [], "test": []}
    return {"points": points, "seed0_val": vals, "chosen": chosen, "val": [vals[chosen], *others["val"]],
            "test": [first_test[chosen], *others["test"]], "added": added}


def grown_cell(cells, paths: tuple[str, str], make_run: Callable[[], Callable[[list], dict]], points: Sequence[tuple],
               seeds: Sequence[int], label: str) -> dict:
    """The cell at ``paths`` (``cells.extended_paths``, a :class:`runs.Cells`): :func:`grid_then_seeds`
    over ``points``, then :func:`extend_past_edges` up to ``runs.EXTEND`` times, each read from the
    cache when there. ``make_run()`` builds ``run(members)``, only when something trains.

    Example::

        raw = grown_cell(cells, cells.extended_paths("minilm", 100, "full", key), lambda: run, points, seeds,
                         "minilm n=100 full")
    """
    return cells.get_extended(paths, lambda: grid_then_seeds(make_run(), points, seeds),
                              lambda base: extend_past_edges(make_run(), base, seeds, EXTEND), label)
