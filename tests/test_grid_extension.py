"""experiments/member_trainer.py ``extend_past_edges`` and runs.Cells ``get_extended``: a learning-rate
grid whose choice sits at an edge grows past it (first seed), the choice is made again on validation
and the other seeds rerun only when it moves; a grown cell reuses its base grid's cached runs. A fake
``run`` (validation accuracy a function of the learning rate) stands in for training."""
import json
import math
import os
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

from member_trainer import extend_past_edges, grid_then_seeds, next_rate  # noqa: E402
from runs import EXTEND, Cells  # noqa: E402

SEEDS = (0, 1, 2)


def fake_run(best_lr: float, calls: list):
    """``run(members)``: validation accuracy peaks at ``best_lr`` (falls 0.1 per decade away); a
    seed adds 0.001 x seed; test = validation - 0.05. Every call's members are logged in ``calls``."""
    def run(members):
        calls.append([tuple(m) for m in members])
        val = [round(0.9 - 0.1 * abs(math.log10(lr / best_lr)) + 0.001 * seed, 6) for seed, lr, *_ in members]
        return {"val": val, "test": [v - 0.05 for v in val]}
    return run


@pytest.mark.parametrize("edge, neighbour, expected", [(3e-3, 1e-3, 1e-2), (1e-2, 3e-3, 3e-2), (1e-4, 3e-4, 3e-5),
                                                       (3e-5, 1e-4, 1e-5), (0.03, 0.01, 0.1)])
def test_next_rate_steps_along_the_one_three_ten_sequence(edge, neighbour, expected):
    assert next_rate(edge, neighbour) == pytest.approx(expected, rel=1e-12)


def test_a_top_edge_choice_grows_until_it_is_interior_and_the_other_seeds_run_at_the_new_point():
    calls = []
    run = fake_run(1e-2, calls)
    base = grid_then_seeds(run, [(3e-4, None), (1e-3, None), (3e-3, None)], SEEDS)
    assert base["chosen"] == 2
    out = extend_past_edges(run, base, SEEDS, times=2)
    assert out["points"] == [[3e-4, None], [1e-3, None], [3e-3, None], [0.01, None], [0.03, None]]
    assert out["added"] == 2 and out["chosen"] == 3
    assert calls[2:] == [[(0, 0.01, None)], [(0, 0.03, None)], [(1, 0.01, None), (2, 0.01, None)]]
    assert out["val"] == [0.9, 0.901, 0.902]
    assert out["test"] == pytest.approx([0.85, 0.851, 0.852], abs=1e-12)
    assert out["seed0_val"][:3] == base["seed0_val"]


def test_growth_stops_after_times_and_a_lower_edge_grows_downwards():
    calls = []
    run = fake_run(1e-6, calls)
    out = extend_past_edges(run, grid_then_seeds(run, [(1e-4, None), (3e-4, None)], SEEDS), SEEDS, times=2)
    assert [p[0] for p in out["points"]] == pytest.approx([1e-4, 3e-4, 3e-5, 1e-5], rel=1e-12)
    assert out["chosen"] == 3 and out["added"] == 2   # still at an edge: the results file names it


def test_an_interior_choice_or_a_tied_grid_runs_nothing_more():
    for best, vals in ((1e-3, None), (None, [0.5, 0.5, 0.5])):
        calls = []
        run = fake_run(best or 1.0, calls)
        base = grid_then_seeds(run, [(3e-4, None), (1e-3, None), (3e-3, None)], SEEDS)
        if vals:
            base = {**base, "seed0_val": vals, "chosen": 0}
        assert extend_past_edges(run, base, SEEDS, times=2) == {**base, "added": 0}
        assert len(calls) == 2


def test_a_two_dimensional_grid_grows_along_the_chosen_decay_only():
    calls = []
    run = fake_run(1e-2, calls)
    points = [(lr, decay) for decay in (0.7, 0.9) for lr in (1e-3, 3e-3)]
    base = grid_then_seeds(run, points, SEEDS)
    out = extend_past_edges(run, base, SEEDS, times=1)
    assert out["points"][-1] == [0.01, base["points"][base["chosen"]][1]]
    assert calls[-2:] == [[(0, 0.01, 0.7)], [(1, 0.01, 0.7), (2, 0.01, 0.7)]]


def test_a_grown_cell_reuses_its_cached_base_grid(tmp_path):
    cells = Cells(str(tmp_path))
    paths = cells.extended_paths("m", 100, "full", [[1e-3, 3e-3], list(SEEDS)])
    assert paths[0] != paths[1] and paths[1] == cells.path("m", 100, "full", [[1e-3, 3e-3], list(SEEDS), "extend",
                                                                            EXTEND])
    calls = []
    run = fake_run(1e-2, calls)
    trained = lambda: grid_then_seeds(run, [(1e-3, None), (3e-3, None)], SEEDS)
    grow = lambda base: extend_past_edges(run, base, SEEDS, EXTEND)
    first = cells.get_extended(paths, trained, grow, "m n=100 full")
    assert os.path.exists(paths[0]) and os.path.exists(paths[1]) and cells.trained == 1   # one cell
    with open(paths[0], encoding="utf-8") as f:
        base = json.load(f)
    base["seconds"] = 1000.0
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(base, f)
    os.remove(paths[1])
    calls.clear()
    again = Cells(str(tmp_path)).get_extended(paths, lambda: pytest.fail("the base grid was cached"), grow, "m")
    assert [c[0][1] for c in calls] == [0.01, 0.03, 0.01]     # only the grown points and the new choice's seeds
    with open(paths[1], encoding="utf-8") as f:
        assert json.load(f)["points"] == again["points"] == first["points"]
    assert 1000.0 <= again["seconds"] < 1010.0      # the cell's seconds: its base grid's and its growth's
