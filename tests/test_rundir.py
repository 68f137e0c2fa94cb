"""Run fingerprints and run-directory checks, without a model (the runner's own tests are in test_experiment)."""
import json
import os

import pytest

import jaxtune as jt
from jaxtune.config import RESUMABLE_KEYS
from jaxtune.rundir import (RunResult, check_run_dir, finished_result, open_run_dir, read_fingerprint, write_result)


def _cfg(*overrides):
    return jt.load_config(None, ["name=a", "optim.schedule=constant", *overrides])


def _snapshot(root):
    """Every file under ``root`` with its bytes and mtime (ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[path] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return out


def test_fingerprint_is_the_config_minus_resumable_keys():
    digest, keys = jt.run_fingerprint(_cfg())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert keys["optim.learning_rate"] == 5e-5 and keys["train.seed"] == 0 and keys["model.path"] == "minilm"
    assert not set(RESUMABLE_KEYS) & set(keys)  # constant schedule: the run length is resumable too
    same = ["name=b", "output_dir=elsewhere", "train.log_every=3", "train.progress=false", "train.max_steps=9",
            "data.eval_batch_size=7", "checkpoint.keep_latest=4", "checkpoint.export_best_hf=true"]
    assert jt.run_fingerprint(_cfg(*same))[0] == digest
    for key in ("optim.learning_rate=1e-4", "train.seed=1", "data.seed=2", "model.path=other", "train.eval_every=5",
                "early_stopping.patience=9", "data.train_limit=10"):
        assert jt.run_fingerprint(_cfg(key))[0] != digest, key
    rules = [{"pattern": ".*", "lr_mult": 0.5}]
    rule = jt.run_fingerprint(jt.ExperimentConfig(optim=jt.config.from_dict(
        jt.config.OptimConfig, {"rules": rules})))[1]["optim.rules"][0]  # the whole rule table: one value
    assert rule["pattern"] == ".*" and rule["lr_mult"] == 0.5 and rule["frozen"] is False


def test_run_length_is_part_of_the_fingerprint_when_the_schedule_depends_on_it():
    warm = jt.load_config(None, ["optim.schedule=warmup_linear"])
    assert "train.max_steps" in jt.run_fingerprint(warm)[1] and "train.epochs" in jt.run_fingerprint(warm)[1]
    assert jt.run_fingerprint(jt.load_config(None, ["train.max_steps=10"]))[0] != \
        jt.run_fingerprint(jt.load_config(None, ["train.max_steps=20"]))[0]
    averaged = _cfg("optim.weight_average=ema", "optim.weight_average_start=0.5")
    assert "train.max_steps" in jt.run_fingerprint(averaged)[1]
    assert "train.max_steps" not in jt.run_fingerprint(_cfg("optim.weight_average=ema"))[1]


def _written_run(tmp_path, cfg):
    run_dir = str(tmp_path / "a")
    open_run_dir(check_run_dir(run_dir, cfg))
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    return run_dir


def test_other_config_is_an_error_listing_keys_and_writes_nothing(tmp_path):
    run_dir = _written_run(tmp_path, _cfg())
    assert read_fingerprint(run_dir)["fingerprint"] == jt.run_fingerprint(_cfg())[0]
    before = _snapshot(tmp_path)
    with pytest.raises(jt.RunDirError) as error:
        check_run_dir(run_dir, _cfg("optim.learning_rate=1e-4", "train.seed=3"))
    message = str(error.value)
    assert "optim.learning_rate: 5e-05 -> 0.0001" in message and "train.seed: 0 -> 3" in message
    assert "2 key(s) differ" in message and "overwrite=True" in message and "resume=True" in message
    assert "--overwrite" in error.value.for_config() and "--resume" in error.value.for_config()  # the CLI's words
    assert "train.max_steps" in message and "checkpoint.keep_best" in message  # the keys allowed to change
    assert _snapshot(tmp_path) == before
    assert check_run_dir(run_dir, _cfg("train.log_every=1")).action == "resume"  # a resumable key only
    with pytest.raises(ValueError, match="not both"):
        check_run_dir(run_dir, _cfg(), resume=True, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_resume_anyway_records_the_change_and_overwrite_starts_over(tmp_path):
    run_dir = _written_run(tmp_path, _cfg())
    old = read_fingerprint(run_dir)["fingerprint"]
    plan = check_run_dir(run_dir, _cfg("optim.learning_rate=1e-4"), resume=True)
    open_run_dir(plan)
    record = read_fingerprint(run_dir)
    new = jt.run_fingerprint(_cfg("optim.learning_rate=1e-4"))[0]
    # A continued run's fingerprint is neither the old run's nor the new config's: it never passes for a clean run.
    assert record["fingerprint"] not in (old, new)
    assert record["continued"][0]["from"] == old
    assert record["continued"][0]["changed"] == {"optim.learning_rate": [5e-5, 1e-4]}
    assert os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    # The continued run resumes without a flag under the new config; under the first one it is an error again.
    assert check_run_dir(run_dir, _cfg("optim.learning_rate=1e-4")).fingerprint == record["fingerprint"]
    with pytest.raises(jt.RunDirError, match="optim.learning_rate: 0.0001 -> 5e-05"):
        check_run_dir(run_dir, _cfg())
    plan = check_run_dir(run_dir, _cfg(), overwrite=True)
    open_run_dir(plan)
    assert os.listdir(run_dir) == ["fingerprint.json"]
    assert read_fingerprint(run_dir) == {"fingerprint": old, "keys": jt.run_fingerprint(_cfg())[1], "continued": []}


def test_directories_that_are_not_runs(tmp_path):
    (tmp_path / "a").mkdir()
    assert check_run_dir(str(tmp_path / "a"), _cfg()).action == "new"  # empty: fine
    (tmp_path / "a" / "fingerprint.json.tmp-99").write_text("{")  # a run killed while writing its first file
    assert check_run_dir(str(tmp_path / "a"), _cfg()).action == "new"
    os.remove(tmp_path / "a" / "fingerprint.json.tmp-99")
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(jt.RunDirError, match="no fingerprint.json.*overwrite=True"):
        check_run_dir(str(tmp_path / "a"), _cfg())
    with pytest.raises(jt.RunDirError, match="not a jaxtune run directory"):
        check_run_dir(str(tmp_path / "a"), _cfg(), overwrite=True)
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"
    (tmp_path / "a" / "fingerprint.json").write_text("{trunc")
    with pytest.raises(jt.RunDirError, match="fingerprint.json is unreadable"):
        check_run_dir(str(tmp_path / "a"), _cfg())


def test_result_json_and_finished_runs(tmp_path, capsys):
    cfg = _cfg("train.max_steps=4")
    run_dir = _written_run(tmp_path, cfg)
    assert jt.read_result(run_dir) is None
    result = RunResult(test_metrics={"accuracy": 0.5}, validation_metrics={"val_loss": 1.25}, best_step=4, steps=4,
                       trainable_params=10, stopped_early=False, paths={"run_dir": run_dir}, seconds=1.5)
    digest = read_fingerprint(run_dir)["fingerprint"]
    write_result(run_dir, digest, result)
    assert sorted(os.listdir(run_dir)) == ["fingerprint.json", "metrics.jsonl", "result.json"]  # no temporary left
    assert json.load(open(os.path.join(run_dir, "result.json"))) == {"fingerprint": digest, **result.__dict__}
    assert jt.read_result(run_dir) == result
    assert finished_result(check_run_dir(run_dir, cfg), total_steps=4) == result
    assert "already finished at step 4" in capsys.readouterr().out
    # Asked to train further (a resumable key): not finished; the old result.json goes once training resumes.
    plan = check_run_dir(run_dir, _cfg("train.max_steps=6"))
    assert finished_result(plan, total_steps=6) is None
    open_run_dir(plan)
    assert jt.read_result(run_dir) is None and not os.path.exists(os.path.join(run_dir, "result.json"))


def test_cli_flags_resume_and_overwrite():
    from jaxtune import cli

    args = cli._parser().parse_args(["finetune", "c.yaml", "--resume"])
    assert args.resume and not args.overwrite
    assert cli._parser().parse_args(["finetune", "c.yaml", "--overwrite"]).overwrite
    with pytest.raises(SystemExit):  # one explicit choice, not both
        cli._parser().parse_args(["finetune", "c.yaml", "--resume", "--overwrite"])


def test_result_paths_follow_the_run_directory_from_another_cwd_or_place(tmp_path, monkeypatch):
    """A run recorded with relative paths is read back from elsewhere: its paths point into it."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg("train.max_steps=4", "output_dir=runs")
    run_dir = _written_run(tmp_path, cfg)
    relative = os.path.relpath(run_dir, tmp_path)
    paths = {"run_dir": relative, "metrics": os.path.join(relative, "metrics.jsonl"), "data": "/elsewhere/data.csv"}
    result = RunResult(test_metrics={}, validation_metrics={}, best_step=4, steps=4, trainable_params=1,
                       stopped_early=False, paths=paths, seconds=1.0)
    write_result(run_dir, read_fingerprint(run_dir)["fingerprint"], result)
    moved = tmp_path / "moved"
    os.rename(tmp_path / relative, moved)
    monkeypatch.chdir("/")
    read = jt.read_result(moved)
    assert read.paths == {"run_dir": str(moved), "metrics": str(moved / "metrics.jsonl"), "data": "/elsewhere/data.csv"}
    assert os.path.isfile(read.paths["metrics"])
