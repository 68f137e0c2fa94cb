"""Gradual unfreezing: what each stage holds (equal splits, explicit groups), when it begins (every k
steps, explicit step or epoch boundaries), in the API and the config (the runner: test_experiment.py)."""
import jax
import pytest

import jaxtune as jt
from jaxtune.config import OptimConfig, unfreeze_boundaries, unfreeze_stage_count
from tests._tiny import init_params, layer_ids

PARAMS = init_params()  # TinyNet: embeddings 0, layer_0..2 -> 1..3, head 4


def _trained(stage):
    return {p for p, t in zip(jt.leaf_paths(stage), jax.tree.leaves(stage)) if t}


def _paths_with_ids(ids):
    return {p for p in jt.leaf_paths(PARAMS) if layer_ids(p) in ids}


def test_stage_0_holds_the_top_layers():
    assert _trained(jt.unfreezing_stages(PARAMS, layer_ids)[0]) == _paths_with_ids({4})  # one stage per id
    split = jt.unfreezing_stages(PARAMS, layer_ids, num_stages=2)  # 5 ids: {4, 3, 2}, then {1, 0}
    assert [_trained(s) for s in split] == [_paths_with_ids({4, 3, 2}), _paths_with_ids({4, 3, 2, 1, 0})]


def test_explicit_stage_groups():
    stages = jt.unfreezing_stages(PARAMS, layer_ids, groups=[[4], [3, 1], [2, 0]])
    assert [_trained(s) for s in stages] == [_paths_with_ids({4}), _paths_with_ids({4, 3, 1}),
                                             _paths_with_ids({0, 1, 2, 3, 4})]
    # Ids whose parameters a rule freezes need no group (and never train).
    rules = [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())]
    stages = jt.unfreezing_stages(PARAMS, layer_ids, rules, groups=[[4, 3], [2, 1]])
    assert _trained(stages[-1]) == _paths_with_ids({1, 2, 3, 4})


@pytest.mark.parametrize("kwargs, message", [
    (dict(groups=[[4], [3, 2, 1, 0, 4]]), r"layer ids \[4\] are in more than one group"),
    (dict(groups=[[4, 9], [3, 2, 1, 0]]), r"layer ids \[9\] are not layer ids of this model.*\[0, 1, 2, 3, 4\]"),
    (dict(groups=[[4], [3, 2]]), r"layer ids \[0, 1\] are in no group, so their parameters would never train"),
    (dict(groups=[[4], []]), r"one non-empty list of layer ids per stage"),
    (dict(groups=[[4], [3, 2, 1, 0]], num_stages=3), r"num_stages=3 but groups has 2 stages"),
])
def test_bad_stage_groups_name_the_ids(kwargs, message):
    with pytest.raises(jt.UserError, match=message):
        jt.unfreezing_stages(PARAMS, layer_ids, **kwargs)


def test_unfreezing_stage_boundaries_and_every():
    assert [jt.unfreezing_stage(t, 3, at=[40, 100]) for t in (0, 39, 40, 99, 100, 10 ** 6)] == [0, 0, 1, 1, 2, 2]
    assert [jt.unfreezing_stage(t, 3, every=10) for t in (0, 9, 10, 25, 99)] == [0, 0, 1, 2, 2]
    for bad in ([40], [100, 40], [0, 10], [10, 10]):
        with pytest.raises(jt.UserError, match=r"do not fit 3 stages; give 2 increasing step numbers >= 1"):
            jt.unfreezing_stage(0, 3, at=bad)
    with pytest.raises(jt.UserError, match="give exactly one of every="):
        jt.unfreezing_stage(0, 3, every=10, at=[1, 2])


def test_config_boundaries_in_steps_and_epochs():
    at_steps = OptimConfig(unfreezing="runtime", unfreeze_at=[40, 100])
    at_epochs = OptimConfig(unfreezing="structural", unfreeze_at_epochs=[0.5, 2])
    assert unfreeze_boundaries(at_steps, 30) == [40, 100] and unfreeze_stage_count(at_steps) == 3
    assert unfreeze_boundaries(at_epochs, 30) == [15, 60] and unfreeze_stage_count(at_epochs) == 3
    assert unfreeze_boundaries(OptimConfig(unfreezing="runtime", unfreeze_every=5), 30) is None
    colliding = unfreeze_boundaries(OptimConfig(unfreezing="runtime", unfreeze_at_epochs=[0.1, 0.2]), 4)  # [1, 1]
    with pytest.raises(jt.UserError) as err:
        jt.unfreezing_stage(0, 3, at=colliding)
    assert "epochs that fall on the same step count as one" in err.value.for_config()
    cfg = jt.load_config(None, ["optim.unfreezing=runtime", "optim.unfreeze_at=[40, 100]",
                                "optim.unfreeze_groups=[[7], [5, 6], [0, 1, 2, 3, 4]]"])
    assert cfg.optim.unfreeze_groups == [[7], [5, 6], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("overrides, message", [
    (["optim.unfreeze_at=[40]"], r"optim\.unfreeze_at is set but optim\.unfreezing is null"),
    (["optim.unfreeze_groups=[[1], [0]]"], r"optim\.unfreeze_groups is set but optim\.unfreezing is null"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[40]", "optim.unfreeze_every=5"],
     r"optim\.unfreeze_at and optim\.unfreeze_every both say when stages begin"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[40]", "optim.unfreeze_at_epochs=[1.0]"],
     r"optim\.unfreeze_at and optim\.unfreeze_at_epochs both say"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[100, 40]"], r"optim\.unfreeze_at is \[100, 40\]; .* must increase"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[0, 40]"], r"optim\.unfreeze_at\[0\] must be >= 1, got 0"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[]"], r"optim\.unfreeze_at is an empty list"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at_epochs=[0, 1]"], r"optim\.unfreeze_at_epochs\[0\] must be > 0"),
    (["optim.unfreezing=runtime", "optim.unfreeze_at=[4]", "optim.unfreeze_groups=[[2], [1], [0]]"],
     r"number of unfreezing stages disagrees: len\(optim\.unfreeze_groups\) = 3, len\(optim\.unfreeze_at\) \+ 1 = 2"),
    (["optim.unfreezing=runtime", "optim.unfreeze_every=4", "optim.unfreeze_stages=2",
      "optim.unfreeze_groups=[[2], [1], [0]]"], r"optim\.unfreeze_stages = 2, len\(optim\.unfreeze_groups\) = 3"),
    (["optim.unfreezing=runtime", "optim.unfreeze_every=4", "optim.unfreeze_groups=[[2], [-1]]"],
     r"optim\.unfreeze_groups\[1\]\[0\] must be >= 0, got -1"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(jt.ConfigError, match=message):
        jt.load_config(None, overrides)
