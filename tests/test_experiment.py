"""The experiment runner, CLI and demo, on the real tweets with a tiny BERT (real MiniLM tokenizer)."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import cli
from jaxtune.experiment import evaluate_run, finetune, prepare_data
from jaxtune.models import bert

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT with the real all-MiniLM-L6-v2 vocabulary and tokenizer files."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    config = bert.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=37, max_position_embeddings=128)
    model = bert.build(config, None)
    variables = model.init(jax.random.key(0), *bert.example_inputs(config, None))
    jt.save_pretrained(variables, config, directory)
    for name in TOKENIZER_FILES:
        shutil.copy(jt.minilm_path() / name, directory / name)
    return str(directory)


def _config(model_dir, out, name, **optim):
    return {
        "name": name, "output_dir": str(out),
        "model": {"path": model_dir},
        "data": {"dataset": "tweet_sentiment", "max_length": 32, "batch_size": 8, "eval_batch_size": 32,
                 "train_limit": 64, "eval_limit": 32, "test_limit": 32},
        "optim": {"learning_rate": 1e-3, "schedule": "constant", **optim},
        "train": {"max_steps": 4, "eval_every": 2, "log_every": 1, "progress": False},
        "early_stopping": {"enabled": False, "monitor": "val_loss"},
        "checkpoint": {"keep_latest": 1, "keep_best": 1},
    }


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    return prepare_data(jt.load_config(None, ["data.train_limit=64", "data.eval_limit=32", "data.test_limit=32",
                                              "data.max_length=32"]).data,
                        tiny_model_dir)


def _train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "train"]


def _latest_params(run_dir, setup_state):
    with jt.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
        return ckpt.restore(template=setup_state)[0].params


def test_runner_resume_equals_uninterrupted_run(tiny_model_dir, data, tmp_path):
    straight = finetune(_config(tiny_model_dir, tmp_path, "straight"), data=data)
    first = finetune(_config(tiny_model_dir, tmp_path, "resumed"), ["train.max_steps=2"], data=data)
    assert first.steps == 2
    resumed = finetune(_config(tiny_model_dir, tmp_path, "resumed"), data=data)  # same run dir: resumes at step 2
    assert resumed.steps == 4
    assert _train_losses(resumed.paths["run_dir"]) == _train_losses(straight.paths["run_dir"])
    assert resumed.test_metrics == straight.test_metrics
    from jaxtune.experiment import build
    template = build(_config(tiny_model_dir, tmp_path, "template"), data=data).initial_state
    for a, b in zip(jax.tree.leaves(_latest_params(resumed.paths["run_dir"], template)),
                    jax.tree.leaves(_latest_params(straight.paths["run_dir"], template))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for key in ("plot", "report", "metrics", "config", "class_report_plot"):
        assert os.path.exists(straight.paths[key]), key
    assert "negative" in open(straight.paths["report"]).read()  # per-class report


def test_early_stopping_stops_and_restores_best(tiny_model_dir, data, tmp_path):
    # A learning rate far too high: validation loss is best early, then gets worse -> stop, restore best.
    cfg = _config(tiny_model_dir, tmp_path, "diverge", learning_rate=0.5, optimizer="sgd", weight_decay=0.0)
    cfg["train"].update(max_steps=40, eval_every=1)
    cfg["early_stopping"] = {"enabled": True, "monitor": "val_loss", "mode": "min", "patience": 1}
    cfg["checkpoint"]["export_best_hf"] = True
    result = finetune(cfg, data=data)
    assert result.stopped_early and result.steps < 40
    assert result.best_step is not None and result.best_step <= result.steps - 2
    # The final model is the best checkpoint: re-evaluating it gives the recorded best validation loss.
    again = evaluate_run(result.paths["run_dir"], split="validation")
    assert again["step"] == result.best_step
    np.testing.assert_allclose(again["loss"], result.validation_metrics["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(evaluate_run(result.paths["run_dir"])["loss"], result.test_metrics["loss"], rtol=1e-6)
    # The best model is exported in HF format and loads back.
    model, variables = jt.from_pretrained(result.paths["export"], task="sequence_classification")
    assert variables["params"]["classifier"]["kernel"].shape == (32, 3)
    assert model.config.labels == data.label_names  # the data's label names, not LABEL_0...
    # With its tokenizer: the export is a model directory a further fine-tuning can start from.
    small = jt.load_config(None, ["data.train_limit=8", "data.eval_limit=8", "data.test_limit=8"]).data
    exported, original = (prepare_data(small, d).test for d in (result.paths["export"], tiny_model_dir))
    assert [e["input_ids"].tolist() for e in exported] == [e["input_ids"].tolist() for e in original]


def test_structural_gradual_unfreezing_from_config(tiny_model_dir, data, tmp_path):
    """Explicit stage groups and epoch boundaries. Tiny BERT: embeddings 0, layers 1-2, pooler and
    classifier 3; 8 batches per epoch, so epochs [0.25, 0.375] are steps [2, 3]: steps 0-1 train the
    head, step 2 adds the layers, step 3 the embeddings."""
    rules = [{"pattern": "bert/embeddings/.*", "name": "embeddings"},
             {"pattern": "(classifier|bert/pooler)/.*", "name": "head"}, {"pattern": ".*", "name": "layers"}]
    cfg = _config(tiny_model_dir, tmp_path, "unfreeze", rules=rules, layer_decay=0.9, unfreezing="structural",
                  unfreeze_at_epochs=[0.25, 0.375], unfreeze_groups=[[3], [1, 2], [0]])
    result = finetune(cfg, data=data)
    drift = {r["step"]: r for r in jt.read_jsonl(result.paths["metrics"]) if r["split"] == "drift"}
    assert drift[2]["head"] > 0 and drift[2]["layers"] == 0 and drift[2]["embeddings"] == 0
    assert drift[4]["layers"] > 0 and drift[4]["embeddings"] > 0
    assert result.steps == 4 and np.isfinite(result.test_metrics["loss"])


def _drift(run_dir):
    return [r for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "drift"]


def test_l2_sp_and_weight_averaging_from_config(tiny_model_dir, data, tmp_path, capsys):
    rules = [{"pattern": "classifier/.*", "name": "head", "l2_sp": 0.0},
             {"pattern": ".*", "name": "backbone"}]
    plain = finetune(_config(tiny_model_dir, tmp_path, "plain", optimizer="sgd", learning_rate=0.5,
                             weight_decay=0.0, rules=rules), data=data)
    anchored = finetune(_config(tiny_model_dir, tmp_path, "l2sp", optimizer="sgd", learning_rate=0.5,
                                weight_decay=0.0, rules=rules, l2_sp=1.0), data=data)
    table = capsys.readouterr().out
    assert "l2-sp" in table and any(l.split()[0] == "backbone" and l.split()[-1] == "1" for l in table.splitlines())
    # Drift from the pretrained weights is logged at every evaluation, overall and per group.
    plain_drift, anchored_drift = _drift(plain.paths["run_dir"]), _drift(anchored.paths["run_dir"])
    assert [r["step"] for r in plain_drift] == [2, 4] and {"all", "head", "backbone"} <= set(plain_drift[-1])
    assert plain_drift[-1]["backbone"] > 0
    # SGD with lr 0.5 and strength 1 halves the distance to the anchor every step: the backbone stays closer
    # (by how much depends on the draw: 0.82x of the plain drift with train.seed 0's streams).
    assert anchored_drift[-1]["backbone"] < 0.9 * plain_drift[-1]["backbone"]
    # Decoupled L2-SP (after the optimizer) is the same pull for SGD: the same drift, to float rounding.
    decoupled = finetune(_config(tiny_model_dir, tmp_path, "l2sp_decoupled", optimizer="sgd", learning_rate=0.5,
                                 weight_decay=0.0, rules=rules, l2_sp=1.0, l2_sp_decoupled=True), data=data)
    np.testing.assert_allclose(_drift(decoupled.paths["run_dir"])[-1]["backbone"], anchored_drift[-1]["backbone"],
                               rtol=1e-4)

    averaged = finetune(_config(tiny_model_dir, tmp_path, "ema", weight_average="ema", weight_average_decay=0.5),
                        data=data)
    raw = finetune(_config(tiny_model_dir, tmp_path, "raw"), data=data)
    assert _train_losses(averaged.paths["run_dir"]) == _train_losses(raw.paths["run_dir"])  # same training
    assert averaged.test_metrics["loss"] != raw.test_metrics["loss"]  # evaluated on other (averaged) weights
    # evaluate_run reads the same averaged weights from the checkpoint.
    np.testing.assert_allclose(evaluate_run(averaged.paths["run_dir"])["loss"], averaged.test_metrics["loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="optim.weight_average is 'swa'"):
        finetune(_config(tiny_model_dir, tmp_path, "bad", weight_average="swa"), data=data)


def test_weight_averaging_with_structural_unfreezing(tiny_model_dir, data, tmp_path):
    """EMA over a gradually unfrozen run: the structural step passes its stage mask to the average,
    so a frozen group's average stays its pretrained value and the run evaluates as the runtime-mode
    run of the same stages does (float32, rtol 1e-5)."""
    stages = dict(layer_decay=0.9, unfreeze_every=1, unfreeze_stages=2, weight_average="ema",
                  weight_average_decay=0.5)
    structural = finetune(_config(tiny_model_dir, tmp_path, "ema_structural", unfreezing="structural", **stages),
                          data=data)
    runtime = finetune(_config(tiny_model_dir, tmp_path, "ema_runtime", unfreezing="runtime", **stages), data=data)
    plain = finetune(_config(tiny_model_dir, tmp_path, "structural", unfreezing="structural",
                             **{k: v for k, v in stages.items() if not k.startswith("weight_average")}), data=data)
    assert _train_losses(structural.paths["run_dir"]) == _train_losses(plain.paths["run_dir"])  # the same training
    assert structural.test_metrics["loss"] != plain.test_metrics["loss"]  # evaluated on the averaged weights
    np.testing.assert_allclose(structural.test_metrics["loss"], runtime.test_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(evaluate_run(structural.paths["run_dir"])["loss"], structural.test_metrics["loss"],
                               rtol=1e-6)


def test_cli_rules_eval_and_errors(tiny_model_dir, data, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_config(tiny_model_dir, tmp_path, "cli")))
    assert cli.main(["rules", str(path), "--set", "optim.layer_decay=0.5"]) == 0
    out = capsys.readouterr().out
    assert "group" in out and "lr mult" in out and "0.125..1" in out  # 2 layers: 0.5**3 for embeddings
    assert cli.main(["rules", str(path), "--set", "optim.learnin_rate=1"]) == 2
    assert "learnin_rate" in capsys.readouterr().err
    finetune(path, ["train.max_steps=2"], data=data)
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "cli"), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out[out.index("{"):])
    assert scores["step"] == 2 and {"loss", "accuracy", "macro_f1"} <= set(scores)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        evaluate_run(tmp_path / "nowhere")


def test_demo_smoke(tmp_path, capsys):
    from jaxtune.demo import code_fingerprint, main
    assert main(quick=True, output_dir=str(tmp_path)) == 0
    out = capsys.readouterr().out
    for row in ("majority class", "linear probe", "full fine-tuning"):
        assert row in out
    # The results block in the README's format (tests/test_demo_readme.py checks the README's copy).
    assert "| model (test: 64 tweets) | accuracy | macro-F1 | trained parameters | steps | best step | seconds |" in out
    assert "| 1,155 | 3 | 3 |" in out and "| 22,714,371 | 3 | 3 |" in out  # same steps for probe and fine-tuning
    assert f"code fingerprint {code_fingerprint()}): the whole demo took" in out
    # Progress with an ETA through training, and a count through each evaluation (capsys: not a terminal).
    for run in ("linear_probe", "finetune_llrd"):
        assert f"{run}: 3/3 steps, loss " in out and "ETA" in out
        assert f"{run}: validation: 3/3 batches" in out and f"{run}: test: 3/3 batches" in out
    for run in ("linear_probe", "finetune_llrd"):
        assert os.path.exists(tmp_path / run / "curves.png") and os.path.exists(tmp_path / run / "report.txt")
        assert os.listdir(tmp_path / run / "checkpoints")


@pytest.mark.parametrize("config", ["mnist_mobilenet", "mnist_mobilenet_frozen"])
def test_mnist_mobilenet_configs_smoke(config, tmp_path):
    """The real ImageNet MobileNetV2 on real MNIST digits, a few steps (experiments/configs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = finetune(os.path.join(root, "experiments", "configs", f"{config}.yaml"),
                      [f"output_dir={tmp_path}", "data.train_limit=32", "data.eval_limit=16", "data.test_limit=16",
                       "data.image_size=32", "data.batch_size=16", "train.max_steps=2", "train.eval_every=2",
                       "train.progress=false", "checkpoint.export_best_hf=true"])
    assert result.steps == 2 and 0.0 <= result.test_metrics["accuracy"] <= 1.0
    # The export is a torchvision state dict for a 10-way head named by the digits (and no transformers model).
    exported = json.load(open(os.path.join(result.paths["export"], "config.json")))
    assert exported["model_type"] == "torchvision_mobilenet_v2" and exported["num_labels"] == 10
    assert exported["id2label"] == {str(d): str(d) for d in range(10)}
    assert jt.load_torch_state_dict(os.path.join(result.paths["export"], "model.pth"))["classifier.1.weight"].shape \
        == (10, 1280)
    expected = 12_810 if config.endswith("frozen") else 2_236_682  # head only vs the whole network
    assert result.trainable_params == expected


def _snapshot(root):
    """Every file under ``root`` with its bytes and mtime (ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[path] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return out


def test_rerun_checks_the_fingerprint_then_resume_or_overwrite(tiny_model_dir, data, tmp_path, capsys):
    cfg = _config(tiny_model_dir, tmp_path, "fp")
    cfg["train"]["max_steps"] = 2
    first = finetune(cfg, data=data)
    run_dir = first.paths["run_dir"]
    digest = jt.run_fingerprint(jt.config.from_dict(jt.ExperimentConfig, cfg))[0]
    assert json.load(open(os.path.join(run_dir, "fingerprint.json")))["fingerprint"] == digest
    assert json.load(open(first.paths["result"]))["fingerprint"] == digest and jt.read_result(run_dir) == first
    before = _snapshot(tmp_path / "fp")
    changed = _config(tiny_model_dir, tmp_path, "fp", learning_rate=2e-3)
    changed["train"]["max_steps"] = 2
    with pytest.raises(jt.RunDirError, match=r"optim.learning_rate: 0.001 -> 0.002\n.*overwrite=True"):
        finetune(changed, data=data)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    capsys.readouterr()
    assert cli.main(["finetune", str(path)]) == 2  # the command: a user error, in its own words
    assert "optim.learning_rate: 0.001 -> 0.002" in capsys.readouterr().err
    assert _snapshot(tmp_path / "fp") == before  # every file's bytes and mtime
    capsys.readouterr()
    assert finetune(cfg, data=data) == first  # finished: its result, no training, nothing rewritten
    assert f"{run_dir} already finished at step 2" in capsys.readouterr().out
    assert _snapshot(tmp_path / "fp") == before
    # --overwrite (the CLI flag): the old run goes, the changed config runs from scratch.
    assert cli.main(["finetune", str(path), "--overwrite"]) == 0
    assert "resuming" not in capsys.readouterr().out
    changed_digest = jt.run_fingerprint(jt.config.from_dict(jt.ExperimentConfig, changed))[0]
    assert jt.read_result(run_dir).steps == 2 and json.load(open(first.paths["result"]))["fingerprint"] == changed_digest
    # resume=True: continue the 2e-3 run with 1e-3 for two more steps; the run records the change.
    cfg["train"]["max_steps"] = 4
    continued = finetune(cfg, data=data, resume=True)
    out = capsys.readouterr().out
    assert "continuing" in out and f"resuming {run_dir} at step 2" in out and continued.steps == 4
    record = json.load(open(os.path.join(run_dir, "fingerprint.json")))
    assert record["continued"][0]["changed"] == {"optim.learning_rate": [0.002, 0.001]}
    assert json.load(open(continued.paths["result"]))["fingerprint"] == record["fingerprint"]
    assert record["fingerprint"] not in (digest, changed_digest)  # neither config's clean run


@pytest.fixture(scope="module")
def straight6(tiny_model_dir, data, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6) and a template state to restore its kind into."""
    cfg = _config(tiny_model_dir, tmp_path_factory.mktemp("straight6"), "straight6")
    cfg["train"]["max_steps"] = 6
    from jaxtune.experiment import build
    return finetune(cfg, data=data), build(cfg, data=data).initial_state


def _assert_same_run(run_dir, straight6):
    straight, template = straight6
    assert _train_losses(run_dir) == _train_losses(straight.paths["run_dir"])  # no row twice, none missing
    for a, b in zip(jax.tree.leaves(_latest_params(run_dir, template)),
                    jax.tree.leaves(_latest_params(straight.paths["run_dir"], template))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-exact (float32, CPU)


KILLED_RUN = """
import json, os, signal, sys
from jaxtune import experiment
cfg, where, at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if where == "train":  # right after step `at` is logged
    log = experiment.RunLogger.log
    def log_then_die(self, step, metrics, split="train"):
        log(self, step, metrics, split)
        if split == "train" and step == at:
            die()
    experiment.RunLogger.log = log_then_die
else:  # while checkpoint `at` is being written: its arrays are on the way, its record not yet
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
    write = handler.JsonCheckpointHandler._save_fn
    async def die_while_saving(self, item, directory):
        if item.get("step") == at:
            die()
        return await write(self, item, directory)
    handler.JsonCheckpointHandler._save_fn = die_while_saving
experiment.finetune(cfg)
"""


@pytest.mark.parametrize("where, at, resumed_at", [("train", 1, None), ("train", 3, 2), ("save", 4, 2)])
def test_kill_9_then_rerun_resumes_bit_exactly(tiny_model_dir, data, tmp_path, straight6, capsys, where, at,
                                                resumed_at):
    import signal
    import subprocess
    import sys

    cfg = _config(tiny_model_dir, tmp_path, "killed")
    cfg["train"]["max_steps"] = 6
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(cfg), where, str(at)], cwd=root,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    run_dir = str(tmp_path / "killed")
    assert max(s for s, _ in _train_losses(run_dir)) == at and not os.path.exists(os.path.join(run_dir, "result.json"))
    if where == "save":
        assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(os.path.join(run_dir, "checkpoints")))
    capsys.readouterr()
    finetune(cfg, data=data)  # the same command again
    printed = capsys.readouterr().out
    assert (f"resuming {run_dir} at step {resumed_at}" in printed) if resumed_at else "resuming" not in printed
    _assert_same_run(run_dir, straight6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax threads of a failed read/write
def test_broken_latest_checkpoint_resumes_from_the_one_before(tiny_model_dir, data, tmp_path, straight6, capsys):
    cfg = _config(tiny_model_dir, tmp_path, "broken")
    cfg["train"]["max_steps"] = 4
    cfg["checkpoint"]["keep_latest"] = 2
    finetune(cfg, data=data)
    step4 = tmp_path / "broken" / "checkpoints" / "4" / "state" / "d"
    for name in os.listdir(step4):  # truncated data files, as a full disk or a killed copy leaves them
        with open(step4 / name, "r+b") as f:
            f.truncate(7)
    cfg["train"]["max_steps"] = 6
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"checkpoint step 4 in .* is broken \(.*state/d/.*\).*resumed from step 2"):
        finetune(cfg, data=data)
    assert f"resuming {tmp_path / 'broken'} at step 2" in capsys.readouterr().out
    assert os.path.isdir(tmp_path / "broken" / "checkpoints.broken" / "4")
    _assert_same_run(str(tmp_path / "broken"), straight6)
