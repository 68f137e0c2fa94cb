"""Sweeps: point names, skipping finished points, shared data, validation-only selection, statistics."""
import json
import math
import os

import numpy as np
import pytest
import yaml
from scipy import stats

import jaxtune as jt
from jaxtune import cli, experiment
from jaxtune import sweep_report as R
from jaxtune.sweep import point_name, sweep_points


# --------------------------------------------------------------------------------------------- names
def test_point_names_are_readable_safe_and_deterministic():
    points = sweep_points({"optim.learning_rate": [3e-5, 1e-4], "optim.layer_decay": [None, 0.8]}, [0, 1])
    assert [p.name for p in points][:3] == ["optim.learning_rate=3e-05,optim.layer_decay=null,seed=0",
                                            "optim.learning_rate=3e-05,optim.layer_decay=null,seed=1",
                                            "optim.learning_rate=3e-05,optim.layer_decay=0.8,seed=0"]
    assert len(points) == 8 and {p.strategy for p in points} == {"default"}
    assert points[3].overrides == {"optim.learning_rate": 3e-5, "optim.layer_decay": 0.8, "train.seed": 1}
    assert [p.name for p in points] == [p.name for p in sweep_points(
        {"optim.learning_rate": [3e-5, 1e-4], "optim.layer_decay": [None, 0.8]}, [0, 1])]

    by_key = sweep_points({"optim.layer_decay": [0.8, 1.0], "optim.learning_rate": [1e-3]}, [2],
                          strategy_key="optim.layer_decay")
    assert [(p.strategy, p.hparams, p.name) for p in by_key] == [
        ("optim.layer_decay=0.8", {"optim.learning_rate": 1e-3}, "optim.layer_decay=0.8,optim.learning_rate=0.001,seed=2"),
        ("optim.layer_decay=1.0", {"optim.learning_rate": 1e-3}, "optim.layer_decay=1.0,optim.learning_rate=0.001,seed=2")]

    named = sweep_points({"optim.learning_rate": [1e-3]}, [0], strategies={
        "freeze emb/all": {"optim.rules": [{"pattern": "emb.*", "frozen": True}, {"pattern": ".*"}]},
        "llrd": ["optim.layer_decay=0.8"]})
    assert named[0].name == "strategy=freeze_emb_all,optim.learning_rate=0.001,seed=0"
    assert named[1].overrides == {"optim.layer_decay": 0.8, "optim.learning_rate": 1e-3, "train.seed": 0}
    assert point_name([("x", "a b/c:d*")]) == "x=a_b_c_d_"
    long = point_name([("optim.rules", [{"pattern": "p" * 300}])])
    assert len(long) == 200 and long != point_name([("optim.rules", [{"pattern": "p" * 301}])])


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid={"train.seed": [0, 1]}), "seeds=\\[...\\]"),
    (dict(grid={"optim.learning_rate": []}), "have no values"),
    (dict(grid={"a": [1]}, strategy_key="b"), "strategy_key 'b' is not a grid key"),
    (dict(grid={"a": [1]}, strategy_key="a", strategies={"x": {}}), "either strategies"),
    (dict(grid={"a": [1]}, strategies={"x": {"a": 2}}), "strategy 'x' sets \\['a'\\]"),
    (dict(grid={"a": [1]}, seeds=[0, 0]), "distinct"),
    (dict(grid={"a": ["x/y", "x:y"]}), "same directory name"),
])
def test_bad_sweep_specs_are_refused(kwargs, message):
    kwargs = {"seeds": [0], **kwargs}
    with pytest.raises(ValueError, match=message):
        sweep_points(kwargs.pop("grid"), kwargs.pop("seeds"), **kwargs)


def test_sweep_refuses_bad_keys_and_shared_data_that_varies_before_training(tmp_path):
    with pytest.raises(jt.ConfigError, match="sweep point optim.learnig_rate=0.1,seed=0: unknown key.*learnig_rate"):
        jt.sweep({"output_dir": str(tmp_path)}, {"optim.learnig_rate": [0.1]})
    with pytest.raises(ValueError, match="varies \\['data.train_limit'\\]"):
        jt.sweep({"output_dir": str(tmp_path)}, {"data.train_limit": [8, 16]}, data=object())
    assert not os.path.exists(tmp_path / "experiment")


# --------------------------------------------------------------------------------------------- statistics
def _rows(table):
    """Rows from {(strategy, lr): [(seed, val, test), ...]}."""
    return [{"run": f"{s}-{lr}-{seed}", "strategy": s, "hparams": {"optim.learning_rate": lr}, "seed": seed,
             "validation": {"val_accuracy": v}, "test": {"accuracy": t}}
            for (s, lr), runs in table.items() for seed, v, t in runs]


def test_selection_uses_validation_only():
    # lr 1e-4: better on test, worse on validation -> it must not be picked.
    rows = _rows({("full", 1e-5): [(0, 0.80, 0.70), (1, 0.82, 0.71)],
                  ("full", 1e-4): [(0, 0.75, 0.90), (1, 0.77, 0.91)],
                  ("freeze", 1e-5): [(0, 0.60, 0.65), (1, 0.61, 0.64)],
                  ("freeze", 1e-4): [(0, 0.70, 0.60), (1, 0.69, 0.61)]})
    best = R.select_best(R.summarize_points(rows, "accuracy"), "max")
    assert list(best) == ["full", "freeze"]
    assert best["full"].hparams == {"optim.learning_rate": 1e-5}
    assert best["freeze"].hparams == {"optim.learning_rate": 1e-4}
    # As a loss (smaller is better) the other point wins.
    assert R.select_best(R.summarize_points(rows, "val_accuracy"), "min")["full"].hparams == {"optim.learning_rate": 1e-4}
    with pytest.raises(KeyError, match="no validation metric 'val_f1'.*val_accuracy"):
        R.summarize_points(rows, "f1")


def test_mean_std_and_paired_differences_match_numpy_scipy():
    """float64; tolerance 1e-12 against NumPy (ddof=1) and SciPy's t distribution / paired t-test."""
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2, 3, 4]
    test = {s: rng.uniform(0.5, 0.9, size=len(seeds)) for s in ("a", "b", "c")}
    rows = _rows({(s, 1e-3): [(seed, 0.5, float(t)) for seed, t in zip(seeds, test[s])] for s in test})
    rows += _rows({("c", 1e-2): [(0, 0.1, 0.99)]})  # worse on validation, one seed: never selected
    points = R.summarize_points(rows, "accuracy")
    best = R.select_best(points, "max")
    for s in test:
        np.testing.assert_allclose([best[s].test_mean, best[s].test_std],
                                   [test[s].mean(), test[s].std(ddof=1)], rtol=0, atol=1e-12)
    assert math.isnan(points[-1].test_std) and points[-1].seeds == (0,)
    diffs = {(d.a, d.b): d for d in R.paired_differences(rows, best, "accuracy")}
    assert list(diffs) == [("a", "b"), ("a", "c"), ("b", "c")]
    for (a, b), d in diffs.items():
        delta = test[a] - test[b]
        sem = delta.std(ddof=1) / np.sqrt(len(delta))
        low, high = stats.t.interval(0.95, len(delta) - 1, loc=delta.mean(), scale=sem)
        np.testing.assert_allclose([d.mean, d.std, d.low, d.high], [delta.mean(), delta.std(ddof=1), low, high],
                                   rtol=0, atol=1e-12)
        # the interval excludes 0 exactly when the paired t-test rejects at 5%
        assert (d.low > 0 or d.high < 0) == (stats.ttest_rel(test[a], test[b]).pvalue < 0.05)
        assert d.seeds == tuple(seeds)


def test_paired_differences_use_common_seeds_only():
    rows = _rows({("a", 1.0): [(0, 0.5, 0.6), (1, 0.5, 0.7), (2, 0.5, 0.9)],
                  ("b", 1.0): [(1, 0.5, 0.5), (2, 0.5, 0.6), (3, 0.5, 0.0)]})
    (d,) = R.paired_differences(rows, R.select_best(R.summarize_points(rows, "accuracy"), "max"), "accuracy")
    assert d.seeds == (1, 2)
    np.testing.assert_allclose([d.mean, d.std], [0.25, np.std([0.2, 0.3], ddof=1)], atol=1e-12)


def test_report_markdown_and_plot(tmp_path):
    rows = _rows({("full", 1e-5): [(0, 0.80, 0.70), (1, 0.82, 0.71)],
                  ("full", 1e-4): [(0, 0.75, 0.90), (1, 0.77, 0.91)],
                  ("freeze", 1e-5): [(0, 0.60, 0.65), (1, 0.61, 0.64)]})
    points = R.summarize_points(rows, "accuracy")
    best = R.select_best(points, "max")
    text = R.markdown({"name": "s", "command": "jaxtune sweep c.yaml", "seeds": "0, 1"}, points, best,
                      R.paired_differences(rows, best, "accuracy"), "accuracy", "max")
    assert text.startswith("# Sweep s\n") and "- command: jaxtune sweep c.yaml" in text
    assert "| full | optim.learning_rate=1e-05 | 2 | 0.8100 ± 0.0141 | 0.7050 ± 0.0071 |" in text
    assert "| full - freeze | 2 | 0.0600 ± 0.0141 |" in text
    path = R.plot(points, best, "accuracy", str(tmp_path / "sweep.png"))
    assert os.path.getsize(path) > 1000


# --------------------------------------------------------------------------------------------- a real sweep
def _base(model_dir, out):
    return {"name": "lr_sweep", "output_dir": str(out), "model": {"path": model_dir},
            "data": {"max_length": 16, "batch_size": 8, "eval_batch_size": 16, "train_limit": 16, "eval_limit": 16,
                     "test_limit": 16},
            "optim": {"schedule": "constant"},
            "train": {"max_steps": 2, "eval_every": 2, "progress": False},
            "early_stopping": {"enabled": False, "monitor": "val_accuracy", "mode": "max"}}


def test_sweep_names_runs_skips_finished_points_and_shares_data(tiny_model_dir, tmp_path, monkeypatch, capsys):
    calls = []
    prepare = experiment.prepare_data
    monkeypatch.setattr(experiment, "prepare_data", lambda *a: calls.append(a) or prepare(*a))
    base = _base(tiny_model_dir, tmp_path)
    grid = {"optim.learning_rate": [1e-3, 1e-2]}
    first = jt.sweep(base, grid, seeds=[0])
    names = ["optim.learning_rate=0.001,seed=0", "optim.learning_rate=0.01,seed=0"]
    assert sorted(os.listdir(tmp_path / "lr_sweep")) == sorted(names + ["sweep.jsonl", "sweep.md", "sweep.png"])
    assert first.trained == 2 and len(calls) == 1  # data prepared once for both points
    for name in names:
        assert experiment.read_result(tmp_path / "lr_sweep" / name) is not None
    rows = [json.loads(line) for line in open(first.paths["rows"])]
    assert [r["run"] for r in rows] == names and all(not r["skipped"] for r in rows)
    assert all(r["validation"]["val_accuracy"] == first.rows[i]["validation"]["val_accuracy"]
               for i, r in enumerate(rows))

    # Again, from the CLI: everything is finished, nothing trains, nothing is prepared.
    config_path = tmp_path / "base.yaml"
    config_path.write_text(yaml.safe_dump(base))
    capsys.readouterr()
    assert cli.main(["sweep", str(config_path), "--grid", "optim.learning_rate=1e-3,1e-2", "--seeds", "0"]) == 0
    assert len(calls) == 1
    rows = [json.loads(line) for line in open(first.paths["rows"])]
    assert all(r["skipped"] for r in rows) and [r["test"] for r in rows] == [r["test"] for r in first.rows]
    report = open(first.paths["report"]).read()
    assert "- command: jaxtune sweep" in report and "(0 trained, 2 finished before)" in report
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["selected"]) == {"default"} and printed["paths"]["report"] == first.paths["report"]

    # Same directory, different run config: refused before anything trains.
    base["train"]["max_steps"] = 3
    with pytest.raises(ValueError, match="another config.*train.max_steps.*delete that directory"):
        jt.sweep(base, grid, seeds=[0])
