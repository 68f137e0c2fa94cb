"""Members in the runner and in sweeps: one compiled vmapped step for points that differ only in
runtime-array settings, with per-point run directories, early stopping per member and exact resume.

Tolerance: fp32 on CPU, 1e-5 absolute and relative on every logged number between a member and its
separate run (a member's optimizer is the runtime-mode one, its learning rate a multiplier of member
0's; the overshooting learning rate of the early-stopping points drives losses and drifts to ~20).
"""
import json
import os

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.experiment import prepare_data
from jaxtune.member_runs import GROUPS_DIR, group_dir, stack_member_batches
from jaxtune.runlog import read_jsonl
from jaxtune.sweep import member_cap, member_chunks

TOL = 1e-5


def _base(model_dir, out, name="s", **train):
    return {"name": name, "output_dir": str(out), "model": {"path": model_dir},
            "data": {"max_length": 16, "batch_size": 8, "eval_batch_size": 16, "train_limit": 24, "eval_limit": 16,
                     "test_limit": 16},
            "optim": {"schedule": "constant", "learning_rate": 1e-3},
            "train": {"max_steps": 4, "eval_every": 2, "progress": False, **train},
            "early_stopping": {"enabled": False, "monitor": "val_accuracy", "mode": "max"}}


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    return prepare_data(jt.load_config(None, [f"model.path={tiny_model_dir}", "data.max_length=16",
                                              "data.train_limit=24", "data.eval_limit=16",
                                              "data.test_limit=16"]).data, tiny_model_dir)


def _cfg(base, **sections):
    cfg = json.loads(json.dumps(base))
    for key, value in sections.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return jt.load_config(None, [f"{k}={json.dumps(v)}" for k, v in _flat(cfg)])


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _numbers(run_dir):
    """Every logged number of a run (but its speed), by (step, split, metric)."""
    return {(r["step"], r["split"], k): v for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            for k, v in r.items() if k not in ("step", "split", "examples_per_s")}


def _stacked_state(members_dir):
    """The group's latest stacked train state, as saved (nested dicts of numpy arrays)."""
    import orbax.checkpoint as ocp

    checkpoints = os.path.join(members_dir, "checkpoints")
    with jt.Checkpointer(checkpoints) as ckpt:
        step = ckpt.latest_step()
    return ocp.StandardCheckpointer().restore(os.path.join(checkpoints, str(step), "state"))


def _assert_same_numbers(a_dir, b_dir):
    a, b = _numbers(a_dir), _numbers(b_dir)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------------------------- grouping
def test_member_chunks_group_member_settings_and_say_which_key_keeps_points_apart():
    base = jt.load_config(None, ["optim.schedule=constant"])
    cfg = lambda *o: jt.load_config(None, ["optim.schedule=constant", *o])
    configs = [cfg(f"train.seed={s}", f"optim.learning_rate={lr}", f"name=p{s}{lr}")
               for lr in (1e-3, 1e-2) for s in (0, 1)]
    configs += [cfg("optim.l2_sp=0.1", "name=l2"), cfg("optim.layer_decay=0.8", "name=ld"),
                cfg("optim.rules=[{pattern: 'a.*', frozen: true}, {pattern: '.*'}]", "name=fa"),
                cfg("optim.rules=[{pattern: 'a.*', lr_mult: 0.1}, {pattern: '.*'}]", "name=la"),
                cfg("data.train_limit=8", "name=t8"), cfg("data.train_limit=8", "train.seed=3", "name=t8s"),
                cfg("data.train_limit=16", "name=t16"),
                cfg("optim.unfreezing=runtime", "optim.unfreeze_every=5", "name=uf")]
    chunks, notes = member_chunks(configs, "auto")
    assert chunks == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9], [10], [11]]
    assert any("data.train_limit" in n and "cannot differ between members" in n for n in notes)
    assert any("optim.unfreezing" in n and "1 point(s)" in n for n in notes)
    assert any("no other unfinished point" in n and "t16" in n for n in notes)
    assert member_chunks(configs, 4)[0][:2] == [[0, 1, 2, 3], [4, 5]]
    assert member_chunks(configs, "off")[0] == [[i] for i in range(len(configs))]
    assert member_chunks([base], "auto") == ([[0]], ["sweep: 1 point(s) train as separate runs: no other unfinished "
                                                     "point differs from them only in member settings (e.g. experiment)"])
    assert (member_cap("auto"), member_cap("off"), member_cap(3), member_cap("3")) == (8, 1, 3, 3)
    for bad in ("all", 0, -2, "2.5", True):
        with pytest.raises(ValueError, match="members must be 'auto', 'off' or a positive integer"):
            member_cap(bad)


def test_finetune_members_refuses_configs_that_differ_in_more_before_writing(tmp_path):
    configs = [jt.load_config(None, [f"output_dir={tmp_path}", "name=a"]),
               jt.load_config(None, [f"output_dir={tmp_path}", "name=b", "data.batch_size=16"])]
    with pytest.raises(jt.MembersUnsupported, match="differ in \\['data.batch_size'\\]") as info:
        jt.finetune_members(configs)
    assert info.value.key == "data.batch_size" and not os.listdir(tmp_path)


def test_member_batches_of_other_length_buckets_are_padded_to_stack():
    a = {"input_ids": np.ones((2, 4), np.int32), "labels": np.zeros((2, 4), np.int32), "example_mask": np.ones(2, bool)}
    b = {"input_ids": np.ones((2, 8), np.int32), "labels": np.zeros((2, 8), np.int32), "example_mask": np.ones(2, bool)}
    stacked = stack_member_batches([a, b], pad_token_id=7)
    assert stacked["input_ids"].shape == (2, 2, 8) and stacked["example_mask"].shape == (2, 2)
    assert (stacked["input_ids"][0, :, 4:] == 7).all() and (stacked["labels"][0, :, 4:] == -100).all()
    assert (stacked["input_ids"][1] == 1).all()


# --------------------------------------------------------------------------------------------- sweeps
def test_sweep_with_members_equals_separate_runs_early_stopping_and_skipping(tiny_model_dir, data, tmp_path, capsys):
    """3 seeds x 2 learning rates: one group of 6 members (one compiled step) against 6 separate runs.
    Early stopping (patience 0) stops the members of the overshooting rate (3.0) while the others go
    on; each keeps its best weights (its test numbers are its separate run's, which restores them)."""
    grid = {"optim.learning_rate": [1e-3, 3.0]}
    stopping = {"enabled": True, "monitor": "val_loss", "mode": "min", "patience": 0}
    base = lambda name: dict(_base(tiny_model_dir, tmp_path, name, eval_every=1, max_steps=3),
                             early_stopping=stopping)
    off = jt.sweep(base("off"), grid, seeds=[0, 1, 2], data=data)
    capsys.readouterr()
    on = jt.sweep(base("on"), grid, seeds=[0, 1, 2], data=data, members="auto")
    assert "members (6, one compiled step)" in capsys.readouterr().out
    assert on.trained == off.trained == 6
    for a, b in zip(on.rows, off.rows):
        assert a["run"] == b["run"] and (a["best_step"], a["steps"]) == (b["best_step"], b["steps"])
        for split in ("validation", "test"):
            assert a[split].keys() == b[split].keys()
            np.testing.assert_allclose([a[split][k] for k in a[split]], [b[split][k] for k in b[split]], rtol=TOL,
                                       atol=TOL)
        _assert_same_numbers(a["run_dir"], b["run_dir"])
        # The point's directory is a separate run's: its fingerprint and result are the separate run's.
        fingerprint = lambda row: json.load(open(os.path.join(row["run_dir"], "fingerprint.json")))["fingerprint"]
        assert fingerprint(a) == fingerprint(b)
        assert jt.read_result(a["run_dir"]).stopped_early == jt.read_result(b["run_dir"]).stopped_early
    stopped = [jt.read_result(r["run_dir"]).stopped_early for r in on.rows]
    assert not any(stopped[:3]) and any(stopped[3:])
    assert [r["seed"] for r in on.rows] == [0, 1, 2, 0, 1, 2]
    assert sorted(os.listdir(tmp_path / "on")) == sorted([r["run"] for r in on.rows] + [
        GROUPS_DIR, "sweep.jsonl", "sweep.md", "sweep.png"])
    assert on.selected["default"].hparams == off.selected["default"].hparams == {"optim.learning_rate": 1e-3}
    # In the group's last checkpoint a stopped member's slice stands at the step it stopped at.
    members_dir = jt.read_result(on.rows[0]["run_dir"]).paths["members"]
    with jt.Checkpointer(os.path.join(members_dir, "checkpoints")) as ckpt:
        record = ckpt.record(ckpt.latest_step())
    assert record["active"] == [not s for s in stopped] and record["stopped_early"] == stopped
    assert _stacked_state(members_dir)["step"].tolist() == [r["steps"] for r in on.rows]

    # Again: every point finished, nothing trains (fingerprint-checked skipping works on member runs).
    again = jt.sweep(base("on"), grid, seeds=[0, 1, 2], data=data, members="auto")
    assert again.trained == 0 and all(r["skipped"] for r in again.rows)
    assert [r["test"] for r in again.rows] == [r["test"] for r in on.rows]


# --------------------------------------------------------------------------------------------- resume
def test_a_member_group_resumes_exactly(tiny_model_dir, data, tmp_path):
    """A group trained to step 2, then resumed to 4 (constant schedule: the length may change), equals
    a group trained to 4 at once, bit for bit: logs, results and the stacked state. The members differ
    in seed, L2-SP strength and frozen set (member 1 trains its head only)."""
    def group(name, steps):
        base = _base(tiny_model_dir, tmp_path / name, "g", max_steps=steps)
        rules = lambda frozen: [{"pattern": "classifier/.*"}, {"pattern": ".*", "frozen": frozen}]
        return [_cfg(dict(base, name=f"seed{s}"), train__seed=s, optim__l2_sp=l2, optim__rules=rules(frozen))
                for s, l2, frozen in ((0, 0.0, False), (1, 0.5, True))]

    first = jt.finetune_members(group("resumed", 2), data=data)
    assert [r.steps for r in first] == [2, 2]
    resumed = jt.finetune_members(group("resumed", 4), data=data)
    straight = jt.finetune_members(group("straight", 4), data=data)
    for a, b in zip(resumed, straight):
        assert (a.steps, a.best_step, a.test_metrics, a.validation_metrics) == (
            b.steps, b.best_step, b.test_metrics, b.validation_metrics)
        logged, expected = _numbers(a.paths["run_dir"]), _numbers(b.paths["run_dir"])
        # the first invocation's last train and test rows (step 2) stay in the log, as a resumed separate run's do
        assert {k[:2] for k in logged.keys() - expected.keys()} == {(2, "train"), (2, "test")}
        assert {k: logged[k] for k in expected} == expected
    a, b = _stacked_state(resumed[0].paths["members"]), _stacked_state(straight[0].paths["members"])
    assert jax.tree.structure(a) == jax.tree.structure(b) and a["step"].tolist() == [4, 4]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert group_dir(group("resumed", 4)) == resumed[0].paths["members"]
    drift = [_numbers(r.paths["run_dir"])[(4, "drift", ".*")] for r in resumed]
    assert drift[0] > 0 and drift[1] == 0.0  # member 1's frozen backbone never moved
