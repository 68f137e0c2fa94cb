"""Runs that differ only in runtime-array settings, trained together as members of one compiled step.

:func:`finetune_members` trains N configs as N members of one runner invocation: their states
stacked on a leading axis (:func:`jaxtune.stack_members`), one ``jax.vmap``-ped, jitted train step
and one vmapped evaluation for all. The configs may differ only in what is an array of a runtime-mode
state (:data:`MEMBER_KEYS`, and in ``optim.rules`` only in :data:`RULE_MEMBER_FIELDS`):

* ``train.seed``: the member's new-head init, dropout key and batch order (each member gets its own
  batches, stacked on a leading axis; text batches of different length buckets are padded to the
  longest, so they stack);
* ``optim.learning_rate`` (the schedule is linear in its peak, so a member's rate is a multiplier
  ``lr / lr_0`` of member 0's), ``optim.layer_decay`` and rule ``lr_mult`` / ``layer_decay``
  (:func:`jaxtune.set_lr_multipliers`); rule ``frozen`` (:func:`jaxtune.set_trainable`);
  ``optim.weight_decay`` and rule ``weight_decay`` (:func:`jaxtune.set_weight_decay`);
  ``optim.l2_sp`` and rule ``l2_sp`` (:func:`jaxtune.set_l2_sp`).

Each member writes its own run directory ``output_dir/name`` as a separate run of its config would
(``fingerprint.json``, ``config.yaml``, ``metrics.jsonl``, TensorBoard, ``curves.png``,
``report.txt``, ``result.json``), so :func:`jaxtune.sweep` reads, skips and reports it unchanged; its
best weights are checkpointed there under ``member_checkpoints/`` (a runtime-mode single state, best
``checkpoint.keep_best`` by ``early_stopping.monitor``). The stacked state of the group, its data
position, early stoppers and which members still train are checkpointed in
``output_dir/_members/<group>/checkpoints``, so an interrupted group resumes exactly. A member that
early-stops keeps its weights (its slice of the stacked state no longer changes: the step keeps the
old values where a member is inactive), is evaluated on test with its best checkpoint, and the
others go on.

Memory: every member holds its own parameters, optimizer state (moments, multipliers, trainable
flags, weight decays, L2-SP strengths and anchors), model state and RNG key, stacked once. A
parameter that every member's rules freeze (so the step computes no gradient for it) and that all
members hold identically (pretrained weights) is stored once, not N times. Frozen leaves of only
some members are per member (the step writes them). Peak memory is about N times one run's.

Example::

    configs = [jt.load_config("experiments/configs/tweets_minilm.yaml", [f"train.seed={s}", f"name=seed{s}"])
               for s in range(3)]
    results = jt.finetune_members(configs)          # one compiled step for the 3 seeds
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.checkpoint import Checkpointer
from jaxtune.compile_cache import FirstCallWatch, describe, use_run_compile_settings
from jaxtune.config import ExperimentConfig, save_config
from jaxtune.data.text import DEFAULT_PAD_VALUES
from jaxtune.early_stopping import EarlyStopping
from jaxtune.errors import UserError
from jaxtune.forgetting import param_drift
from jaxtune.members import make_member_eval_step, make_member_step, stack_members
from jaxtune.nonfinite import FLAG, NonFiniteGuard, check_finite_metrics
from jaxtune.optim import (_default_weight_decay, _weight_decay_of, lr_multipliers, set_l2_sp, set_lr_multipliers,
                           set_trainable, set_weight_decay)
from jaxtune.run_optim import optax_constructor, run_optimizer, uses_layer_decay
from jaxtune.rules import Rule, _resolve, frozen_batch_norm, l2_sp_strength, label_params, leaf_paths, trainable_mask
from jaxtune.xla_options import step_compiler_options
from jaxtune.rundir import RunResult, check_run_dir, finished_result, open_run_dir, run_fingerprint
from jaxtune.runlog import RunLogger
from jaxtune.seeds import epoch_seed
from jaxtune.tasks import IGNORE_INDEX
from jaxtune.train import TrainState

MEMBER_KEYS = ("train.seed", "optim.learning_rate", "optim.layer_decay", "optim.weight_decay", "optim.l2_sp")
"""Config keys that members of one group may differ in (arrays of a runtime-mode state)."""
RULE_MEMBER_FIELDS = ("frozen", "lr_mult", "weight_decay", "layer_decay", "l2_sp")
"""Fields of ``optim.rules`` entries that members may differ in (the patterns must be the same)."""
GROUPS_DIR = "_members"


class MembersUnsupported(UserError):
    """These configs cannot train as members of one step; ``key`` names the setting that prevents it."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def member_blocker(cfg: ExperimentConfig) -> str | None:
    """Why ``cfg`` cannot train as a member (the config key, and the reason), or ``None``.

    Example::

        >>> member_blocker(load_config(None, ["optim.unfreezing=runtime", "optim.unfreeze_every=10"]))[:16]
        'optim.unfreezing'
    """
    if cfg.optim.unfreezing is not None:
        return "optim.unfreezing (gradual unfreezing changes the frozen set during the run)"
    if cfg.rehearsal is not None:
        return "rehearsal (the members' step does not take the old task's rows)"
    if cfg.train.recompute_batch_stats is not None:
        return "train.recompute_batch_stats (the members' evaluation keeps the running statistics)"
    return None


def group_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """The run's fingerprint keys minus what members may differ in: configs with equal group keys
    (and no :func:`member_blocker`) can be members of one group.

    Example::

        >>> group_key(load_config(None, ["train.seed=1"])) == group_key(load_config(None, ["train.seed=2"]))
        True
    """
    flat = {k: v for k, v in run_fingerprint(cfg)[1].items() if k not in MEMBER_KEYS}
    if flat.get("optim.rules") is not None:
        flat["optim.rules"] = [{k: v for k, v in r.items() if k not in RULE_MEMBER_FIELDS} for r in flat["optim.rules"]]
    return flat


def differing_keys(keys: Sequence[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every dict of ``keys``."""
    names = sorted(set().union(*keys)) if keys else []
    return [k for k in names if any(d.get(k) != keys[0].get(k) for d in keys[1:])]


def check_member_group(configs: Sequence[ExperimentConfig]) -> None:
    """Raises :class:`MembersUnsupported` naming the key unless ``configs`` can be members of one step."""
    for cfg in configs:
        why = member_blocker(cfg)
        if why is not None:
            raise MembersUnsupported(f"{cfg.name} cannot train as a member: {why}", why.split(" ", 1)[0])
    differ = differing_keys([group_key(c) for c in configs])
    if differ:
        raise MembersUnsupported(f"members may differ only in {', '.join(MEMBER_KEYS)} and optim.rules "
                                 f"{'/'.join(RULE_MEMBER_FIELDS)}, but these configs differ in {differ}; "
                                 "train them as separate runs", differ[0])
    names = [os.path.join(c.output_dir, c.name) for c in configs]
    if len(set(names)) != len(names):
        raise UserError(f"two members share a run directory ({names}); give every config its own name")


def group_dir(configs: Sequence[ExperimentConfig]) -> str:
    """Where a group keeps its stacked checkpoints: ``output_dir/_members/<hash>``, the hash of the
    members' run directories and fingerprints (the same group resumes, another starts afresh)."""
    ids = [[os.path.join(c.output_dir, c.name), run_fingerprint(c)[0]] for c in configs]
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return os.path.join(configs[0].output_dir, GROUPS_DIR, f"{len(configs)}-members-{digest}")


def stack_member_batches(batches: Sequence[dict], pad_token_id: int) -> dict[str, np.ndarray]:
    """One batch per member stacked on a leading axis; sequence fields of different lengths (other
    length buckets) are padded to the longest, ``input_ids`` with ``pad_token_id``, ``labels`` with
    the ignore index, masks and type ids with 0.

    Example::

        >>> a, b = {"input_ids": np.ones((2, 4), int)}, {"input_ids": np.ones((2, 8), int)}
        >>> stack_member_batches([a, b], pad_token_id=0)["input_ids"].shape
        (2, 2, 8)
    """
    out = {}
    for field in batches[0]:
        arrays = [np.asarray(b[field]) for b in batches]
        if arrays[0].ndim >= 2 and len({a.shape for a in arrays}) > 1:
            width = max(a.shape[1] for a in arrays)
            pad = pad_token_id if field == "input_ids" else DEFAULT_PAD_VALUES.get(field, 0)
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=pad)
                      for a in arrays]
        out[field] = np.stack(arrays)
    return out


def _union_rules(member_rules: Sequence[list[Rule]], l2_defaults: Sequence[float]) -> list[Rule]:
    """The group optimizer's rules: a rule frozen for every member stays frozen (no state, no
    gradient), any other trains, anchored (L2-SP) with the largest strength of a member that trains it."""
    union = []
    for rows in zip(*member_rules):
        pattern, first = rows[0]
        live = [(s, d) for (_, s), d in zip(rows, l2_defaults) if not s.frozen]
        if not live:
            union.append((pattern, first))
            continue
        strength = max(l2_sp_strength(s, d) for s, d in live)
        union.append((pattern, dataclasses.replace(live[0][0], l2_sp=strength)))
    return union


def _member_opt_state(opt_state: Any, params: Any, setup, layer_ids, lr_0: float, anchored: bool) -> Any:
    """The group optimizer's state with the member's strategy arrays: multipliers (its learning rate
    relative to member 0's, layer decay, rule multipliers), trainable flags, weight decay, L2-SP."""
    optim, rules = setup.config.optim, setup.rules
    ratio = optim.learning_rate / lr_0
    mults = lr_multipliers(params, rules, layer_ids, optim.layer_decay)
    opt_state = set_lr_multipliers(opt_state, jax.tree.map(lambda m: np.asarray(m) * ratio if ratio != 1.0 else m,
                                                           mults))
    opt_state = set_trainable(opt_state, trainable_mask(params, rules))
    _, found, treedef = _resolve(params, rules)
    default_wd = _default_weight_decay(optax_constructor(optim.optimizer), {"weight_decay": optim.weight_decay})[1]
    opt_state = set_weight_decay(opt_state, jax.tree_util.tree_unflatten(
        treedef, [_weight_decay_of(s, default_wd) for s in found]))
    if anchored:
        opt_state = set_l2_sp(opt_state, jax.tree_util.tree_unflatten(
            treedef, [0.0 if s.frozen else l2_sp_strength(s, optim.l2_sp) for s in found]))
    return opt_state


@dataclasses.dataclass
class MemberGroup:
    """A built group: the members' setups, the stacked initial state, the steps, what is shared."""

    setups: list
    state: TrainState
    train_step: Any
    eval_step: Any
    share: Any
    directory: str


def build_member_group(setups: Sequence) -> MemberGroup:
    """One runtime-mode optimizer for all members, each member's strategy in its state's arrays,
    the states stacked (frozen identical parameters shared), the masked vmapped train step and the
    vmapped eval step. ``setups``: :func:`jaxtune.experiment.build` of each member's config."""
    from jaxtune.experiment import with_frozen_bn

    ref, cfgs = setups[0], [s.config for s in setups]
    params = ref.initial_state.params
    frozen_bn = {frozen_batch_norm({"params": params, **s.initial_state.model_state}, s.rules) for s in setups}
    if len(frozen_bn) > 1:
        raise MembersUnsupported("the members freeze different batch-norm layers, so their models differ; "
                                 "train them as separate runs", "optim.rules")
    rules = _union_rules([s.rules for s in setups], [c.optim.l2_sp for c in cfgs])
    masks = [jax.tree.leaves(trainable_mask(params, s.rules)) for s in setups]
    if ref.config.optim.weight_average is not None and any(m != masks[0] for m in masks):
        raise MembersUnsupported("optim.weight_average averages each member's trainable leaves, and the members "
                                 "train different sets; train them as separate runs", "optim.weight_average")
    uses_ids = any(uses_layer_decay(c.optim, s.rules) for c, s in zip(cfgs, setups))
    layer_ids = ref.layer_ids if uses_ids else None
    optim = ref.config.optim
    tx = run_optimizer(optim, params, rules, ref.total_steps, layer_ids=layer_ids, runtime=True)
    anchored = any(l2_sp_strength(s, 0.0) > 0 for _, s in rules if not s.frozen)
    states = []
    for s in setups:
        init = s.initial_state
        state = TrainState.create(init.params, tx, model_state=init.model_state, rng=init.rng)
        states.append(state.replace(opt_state=_member_opt_state(state.opt_state, init.params, s, layer_ids,
                                                                optim.learning_rate, anchored)))
    rule_mask = trainable_mask(params, rules)
    share = _identical_frozen(rule_mask, [s.params for s in states])
    stacked = stack_members(states, share=share)
    n = len(setups)
    loss_fn = ref.task.loss_fn(with_frozen_bn(ref.model, frozen_bn.pop()))
    # no compiler options on the member step: it runs inside _masked's jit, which has them
    member_step = make_member_step(loss_fn, tx, members=n, per_member_batch=True, donate=False,
                                   trainable=rule_mask, accumulate=ref.config.train.accumulate,
                                   compute_dtype=ref.config.train.compute_dtype, compiler_options=None)
    return MemberGroup(list(setups), stacked, _masked(member_step), make_member_eval_step(ref.eval_step, members=n),
                       share, group_dir(cfgs))


def _identical_frozen(rule_mask: Any, member_params: Sequence[Any]) -> Any:
    """True for the leaves no member trains and every member holds identically (stored once)."""
    flags = []
    leaves = [jax.tree.leaves(p) for p in member_params]
    for j, trains in enumerate(jax.tree.leaves(rule_mask)):
        first = np.asarray(leaves[0][j])
        flags.append(not trains and all(np.array_equal(first, np.asarray(p[j])) for p in leaves[1:]))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(rule_mask), flags)


def _masked(member_step):
    """``step(state, batch, active)``: the member step, keeping the old values of inactive members
    (an early-stopped member's slice never changes again)."""

    def keep(active, new, old):
        if np.ndim(new) == 0 or new.shape[0] != active.shape[0]:
            return new  # a parameter shared by all members: never trained
        return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)

    def step(state: TrainState, batch: Any, active: jax.Array):
        new, metrics = member_step(state, batch)
        raw = lambda s: s.replace(rng=jax.random.key_data(s.rng))
        merged = jax.tree.map(lambda a, b: keep(active, a, b), raw(new), raw(state))
        return merged.replace(rng=jax.random.wrap_key_data(merged.rng)), metrics

    return jax.jit(step, donate_argnums=(0,), compiler_options=step_compiler_options())


def host_members(state: TrainState, n: int) -> list[TrainState]:
    """The members of a stacked state as plain train states with host (numpy) leaves and their RNG
    keys: one transfer, and no compiled slice per leaf shape (what :func:`jaxtune.unstack_members`
    of each member would cost). A shared parameter (leading axis 1) goes to every member.

    Example::

        member_2 = jax.device_put(host_members(state, 4)[2])
    """
    host = jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))
    rngs = jax.random.wrap_key_data(host.rng)
    members = []
    for i in range(n):
        take = lambda x: x[i]
        params = jax.tree.map(lambda x: x[0] if n > 1 and x.shape[0] == 1 else x[i], host.params)
        members.append(TrainState(step=host.step[i], params=params, opt_state=jax.tree.map(take, host.opt_state),
                                  model_state=jax.tree.map(take, host.model_state), rng=rngs[i]))
    return members


def evaluate_members(task, eval_step, state: TrainState, batches: Sequence[dict], label_names, n: int):
    """Per member: (loss and task metrics over ``batches``, predictions, references), from one
    vmapped evaluation per batch."""
    from jaxtune.experiment import _stack_rows

    loss_sum, weight = np.zeros(n), np.zeros(n)
    preds: list[list] = [[] for _ in range(n)]
    refs: list = []
    for batch in batches:
        out = jax.device_get(eval_step(state, batch))
        keep = np.flatnonzero(np.asarray(batch.get("example_mask", np.ones(len(next(iter(batch.values()))), bool))))
        r = task.references(batch)
        refs += [r[i] for i in keep]
        for m in range(n):
            loss_sum[m] += float(out["loss_sum"][m])
            weight[m] += float(out["weight"][m])
            preds[m] += [np.asarray(out["predictions"][m])[i] for i in keep]
    if not refs:
        raise ValueError("evaluation got no examples")
    references = _stack_rows(refs, IGNORE_INDEX)
    results = []
    for m in range(n):
        predictions = _stack_rows(preds[m], 0)
        scores = task.score(predictions, references, label_names)
        results.append(({"loss": float(loss_sum[m] / max(weight[m], 1.0)), **scores}, predictions, references))
    return results


def _record(step: int, epoch: int, batch_index: int, stoppers: list, active: list[bool], stopped: list[bool],
            names: list[str]) -> dict:
    return {"step": step, "members": names, "data_position": {"epoch": epoch, "batch": batch_index},
            "early_stopping": [None if s is None else dataclasses.asdict(s) for s in stoppers],
            "active": active, "stopped_early": stopped}


def _member_checkpointer(cfg: ExperimentConfig, run_dir: str) -> Checkpointer:
    return Checkpointer(os.path.join(run_dir, "member_checkpoints"), monitor=cfg.early_stopping.monitor,
                        mode=cfg.early_stopping.mode, keep_best=cfg.checkpoint.keep_best, keep_latest=1)


def _stopper(cfg: ExperimentConfig) -> EarlyStopping | None:
    s = cfg.early_stopping
    return EarlyStopping(s.monitor, s.mode, s.patience, s.min_delta) if s.enabled else None


def finetune_members(configs: Sequence[ExperimentConfig | str | os.PathLike | dict], data=None) -> list:
    """Trains ``configs`` as members of one compiled step (see the module docstring); returns their
    :class:`jaxtune.RunResult` s, in order, as :func:`jaxtune.finetune` of each would.

    Raises :class:`MembersUnsupported` (naming the key) before anything is written when the configs
    differ in more than :data:`MEMBER_KEYS` and the runtime fields of ``optim.rules``. When every
    member finished before, returns their results without training.

    Example::

        results = jt.finetune_members([cfg_seed0, cfg_seed1, cfg_seed2], data=prepared)
    """
    from jaxtune.experiment import _as_config, build, prepare_data

    start = time.time()
    cfgs = [_as_config(c, ()) for c in configs]
    check_member_group(cfgs)
    use_run_compile_settings(cfgs[0].train)
    plans = [check_run_dir(os.path.join(c.output_dir, c.name), c) for c in cfgs]
    data = data if data is not None else prepare_data(cfgs[0].data, cfgs[0].model.path, cfgs[0].model.num_labels,
                                                      cfgs[0].model.task)
    setups = [build(c, data=data) for c in cfgs]
    done = [finished_result(p, s.total_steps) for p, s in zip(plans, setups)]
    if all(d is not None for d in done):
        return done
    if any(d is not None for d in done):
        finished = [c.name for c, d in zip(cfgs, done) if d is not None]
        raise UserError(f"members {finished} finished before but the others did not; train the unfinished "
                        "ones as a group of their own (jt.sweep skips finished points)")
    group = build_member_group(setups)
    for plan, setup in zip(plans, setups):
        open_run_dir(plan)
        save_config(setup.config, os.path.join(setup.run_dir, "config.yaml"))
    print(f"members ({len(cfgs)}, one compiled step): {', '.join(c.name for c in cfgs)}; group checkpoints in "
          f"{group.directory}")
    return _train_group(group, plans, start)


def _train_group(group: MemberGroup, plans, start: float) -> list:
    from jaxtune.experiment import epoch_batches, evaluation_state, write_outputs

    setups, n = group.setups, len(group.setups)
    ref = setups[0]
    cfg, data, task, total_steps = ref.config, ref.data, ref.task, ref.total_steps
    names = [s.config.name for s in setups]
    pretrained = [jax.device_get(s.initial_state.params) for s in setups]
    groups = [label_params(p, s.rules) for p, s in zip(pretrained, setups)]
    stoppers = [_stopper(s.config) for s in setups]
    active, stopped = [True] * n, [False] * n
    gckpt = Checkpointer(os.path.join(group.directory, "checkpoints"), keep_latest=cfg.checkpoint.keep_latest)
    mckpts = [_member_checkpointer(s.config, s.run_dir) for s in setups]
    logs: list[RunLogger] = []
    try:
        state, epoch, batch_index, step = group.state, 0, 0, 0
        restored = gckpt.restore_latest_intact(template=group.state)
        if restored is not None:
            state, record = restored
            step, position = record["step"], record["data_position"]
            epoch, batch_index = position["epoch"], position["batch"]
            active, stopped = list(record["active"]), list(record["stopped_early"])
            stoppers = [None if r is None else EarlyStopping(**r) for r in record["early_stopping"]]
            print(f"resuming members {names} at step {step}")
        for m in mckpts:
            m.delete_after(step)
        logs = [RunLogger(s.run_dir, resume_step=step) for s in setups]
        guard = NonFiniteGuard(leaf_paths(ref.initial_state.params))
        val_batches = epoch_batches(data, data.validation, cfg.data.eval_batch_size, seed=None)
        last_val: list[dict] = [{} for _ in range(n)]
        examples_seen, t_last = np.zeros(n), time.time()
        train_step = FirstCallWatch(group.train_step)
        while step < total_steps and any(active):
            per_member = [epoch_batches(data, data.train, cfg.data.batch_size, seed=epoch_seed(s.config.train.seed,
                                                                                               epoch))
                          for s in setups]
            if len({len(b) for b in per_member}) > 1:
                raise UserError(f"the members' epochs have different numbers of batches {[len(b) for b in per_member]}")
            while batch_index < len(per_member[0]) and step < total_steps and any(active):
                batches = [b[batch_index] for b in per_member]
                batch = stack_member_batches(batches, data.pad_token_id)
                state, train_metrics = train_step(state, batch, jnp.asarray(active))
                step += 1
                batch_index += 1
                guard.record(step, train_metrics)
                examples_seen += [float(np.sum(b.get("example_mask", 1))) for b in batches]
                if step % cfg.train.log_every == 0 or step == total_steps:
                    guard.check(last_checkpoint=gckpt.latest_step())
                    values = jax.device_get({k: v for k, v in train_metrics.items() if k != FLAG})
                    now = time.time()
                    for i in np.flatnonzero(active):
                        row = {k: float(np.asarray(v)[i]) for k, v in values.items()}
                        logs[i].log(step, {**row, "examples_per_s": examples_seen[i] / max(now - t_last, 1e-9)})
                    examples_seen, t_last = np.zeros(n), now
                if step % cfg.train.eval_every == 0 or step == total_steps:
                    guard.check(last_checkpoint=gckpt.latest_step())
                    evaluated = evaluation_state(cfg, state)
                    scores = evaluate_members(task, group.eval_step, evaluated, val_batches, data.label_names, n)
                    next_position = (epoch, batch_index) if batch_index < len(per_member[0]) else (epoch + 1, 0)
                    evaluated_params = [m.params for m in host_members(evaluated, n)] if evaluated is not state \
                        else None
                    members = host_members(state, n)
                    for i in np.flatnonzero(active):
                        last_val[i] = {f"val_{k}": v for k, v in scores[i][0].items()}
                        check_finite_metrics(last_val[i], step, last_checkpoint=gckpt.latest_step())
                        logs[i].log(step, scores[i][0], "validation")
                        params = members[i].params if evaluated_params is None else evaluated_params[i]
                        logs[i].log(step, param_drift(params, pretrained[i], groups[i]), "drift")
                        if stoppers[i] is not None and stoppers[i].update(step, last_val[i]):
                            active[i], stopped[i] = False, True
                        mckpts[i].save(step, members[i], metrics=last_val[i],
                                       record={"group": group.directory, "member": int(i)})
                    gckpt.save(step, state, record=_record(step, *next_position, stoppers, active, stopped, names))
                    for log in logs:
                        log.flush()
            if batch_index >= len(per_member[0]):
                epoch, batch_index = epoch + 1, 0
        guard.check(last_checkpoint=gckpt.latest_step())
        member_steps = [int(x) for x in jax.device_get(state.step)]
        best = []
        for i, (m, member) in enumerate(zip(mckpts, host_members(state, n))):
            best_step, member = m.best_step(), jax.device_put(member)
            if best_step is not None and best_step != member_steps[i]:
                member, _ = m.restore(best_step, template=member)
            best.append((best_step, member, m.record(best_step)["metrics"] if best_step is not None else last_val[i]))
        evaluated = evaluation_state(cfg, stack_members([b[1] for b in best], share=group.share))
        test_batches = epoch_batches(data, data.test, cfg.data.eval_batch_size, seed=None)
        tests = evaluate_members(task, group.eval_step, evaluated, test_batches, data.label_names, n)
        for i, log in enumerate(logs):
            log.log(member_steps[i], tests[i][0], "test")
    finally:
        for log in logs:
            log.close()
        gckpt.close()
        for m in mckpts:
            m.close()
    print(f"members {names}: {describe(train_step.report)}")
    evaluated_members = host_members(evaluated, n) if cfg.checkpoint.export_best_hf else [None] * n
    results = []
    for i, (setup, plan) in enumerate(zip(setups, plans)):
        best_step, _, best_val = best[i]
        result = RunResult(test_metrics=tests[i][0], validation_metrics=best_val, best_step=best_step,
                           steps=member_steps[i],
                           trainable_params=setup.trainable_params, stopped_early=stopped[i],
                           paths={"checkpoints": mckpts[i].directory, "metrics": logs[i].jsonl_path,
                                  "members": group.directory}, seconds=0.0, compile=train_step.report)
        results.append(write_outputs(setup, plan, evaluated_members[i], result, tests[i][1], tests[i][2], start))
    return results
