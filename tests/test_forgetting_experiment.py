"""experiments/forgetting.py --quick (tiny BERT, tiny data, 3-step runs): the results file's structure,
the per-run cache, reruns that only add what is missing; experiments/protocol.py's statistics."""
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_protocol_mean_std_and_paired_interval_match_scipy():
    protocol = _script("protocol")
    a, b = [0.61, 0.64, 0.58, 0.66], [0.50, 0.52, 0.55, 0.49]
    assert protocol.mean_std(a) == pytest.approx((np.mean(a), np.std(a, ddof=1)), rel=1e-12)
    mean, low, high = protocol.paired_interval(a, b)
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-9)
    assert np.isnan(protocol.paired_interval([0.5], [0.4])[1]) and protocol.format_mean_std([0.5]) == "0.5000"
    with pytest.raises(ValueError, match="same non-zero length"):
        protocol.paired_interval([0.5, 0.6], [0.4])


def test_quick_forgetting_writes_every_table_and_reruns_only_what_is_missing(tiny_model_dir, tmp_path, capsys):
    forgetting = _script("forgetting")
    out = tmp_path / "forgetting.md"
    common = ["--quick", "--model", tiny_model_dir, "--work", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"),
              "--out", str(out), "--seeds", "0", "--learning-rates", "1e-3", "--alphas", "0,0.5,1",
              "--refit-steps", "3", "--refit-examples", "8"]
    forgetting.main([*common, "--variants", "plain,rehearsal5"])
    text = out.read_text()
    for heading in ("## Methods (test, mean ± sample std over seeds)", "## Paired differences against plain",
                    "## Selection on validation"):
        assert heading in text
    assert "| plain | lr0.001 |" in text and "| rehearsal 5% | f0.05 |" in text and "| WiSE-FT" not in text
    assert sorted(os.listdir(tmp_path / "cache" / "rehearsal5" / "f0.05")) == ["seed0.json"]
    capsys.readouterr()

    # A later invocation computes only what is missing (WiSE-FT from the cached plain run: no training)
    # and rewrites the whole file, the earlier methods included.
    forgetting.main([*common, "--variants", "wiseft"])
    assert "strategy (" not in capsys.readouterr().out
    again = out.read_text()
    from protocol import cpu_description
    assert re.search(r"from the cached results in `.*` \(\d+ results, computed in \d+\.\d min on "
                     + re.escape(cpu_description()) + r"\)\.", again)   # and the processor that computed them
    assert "| rehearsal 5% | f0.05 |" in again and "## WiSE-FT: A's encoder interpolated" in again
    assert "| WiSE-FT, B head | α=" in again and "| WiSE-FT, re-fitted head | α=" in again and "| 0.5 |" in again
    # the file names the command that writes all of it: every variant, not the last invocation's
    assert "--variants" not in again and "python experiments/forgetting.py --quick --model" in again
    assert (tmp_path / "forgetting.png").stat().st_size > 0
    chosen = set(forgetting.chosen_alphas(forgetting.wiseft_curves(str(tmp_path / "cache"), [0])).values())
    assert sorted(os.listdir(tmp_path / "cache" / "wiseft")) == sorted(["seed0.json", *(f"a{a:g}" for a in chosen)])
    forgetting.main([*common, "--variants", "wiseft"])   # everything cached: the same bytes
    assert out.read_text() == again

    # A cache without its run directories (committed, read on another machine): WiSE-FT trains plain's run
    # again for its weights, and gets the same numbers.
    wiseft_cells = sorted((tmp_path / "cache" / "wiseft").rglob("*.json"))
    numbers = lambda: [{k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"} for p in wiseft_cells]
    before = numbers()
    shutil.rmtree(tmp_path / "runs" / "B_plain_lr0.001_s0")
    for p in wiseft_cells:
        p.unlink()
    capsys.readouterr()
    forgetting.main([*common, "--variants", "wiseft"])
    assert capsys.readouterr().out.count("strategy (B_plain_lr0.001_s0)") == 1 and numbers() == before
    rewritten = out.read_text()   # the same tables; only the run line's training time (the new cells' seconds)
    moved = [old for old, new in zip(again.splitlines(), rewritten.splitlines()) if old != new]
    assert len(again.splitlines()) == len(rewritten.splitlines()) and all(m.startswith("Written by") for m in moved)
    again = rewritten

    # --verify: A and plain's run are trained again from step 0 (their run directories started over)
    # and must give the cached numbers exactly; the file stays the same.
    capsys.readouterr()
    forgetting.main([*common, "--variants", "plain", "--verify", "^(A/before|plain/lr0.001/seed0)$"])
    printed = capsys.readouterr().out
    assert printed.count("strategy (") == 2 and "resuming" not in printed
    assert "2 of them trained again to the same numbers (plain/lr0.001/seed0: " in printed and "A/before: " in printed
    assert out.read_text() == again
    plain = tmp_path / "cache" / "plain" / "lr0.001" / "seed0.json"
    record = json.loads(plain.read_text())
    plain.write_text(json.dumps({**record, "b_test": record["b_test"] + 1e-9}))
    from runs import CellMismatch
    with pytest.raises(CellMismatch, match=r"cell 'plain/lr0.001/seed0' .* differs from its file in b_test"):
        forgetting.main([*common, "--variants", "plain", "--verify", "plain/"])
    plain.write_text(json.dumps(record))

    # LoRA alone: its own learning-rate grid, no need for plain's rate; the file keeps every method.
    forgetting.main([*common, "--variants", "lora", "--lora-learning-rates", "1e-3"])
    with_lora = out.read_text()
    assert "| LoRA | lr0.001 |" in with_lora and "| plain | lr0.001 |" in with_lora


def test_claims_pair_each_method_with_plain_on_common_seeds():
    forgetting = _script("forgetting")
    seeds = lambda a, b: {s: {"a_test": a[s], "b_test": b[s]} for s in range(len(a))}
    rows = {"plain": {"setting": "lr0.0005", "seeds": seeds([0.50, 0.52, 0.51], [0.50, 0.53, 0.57])},
            "LoRA": {"setting": "lr0.002", "seeds": seeds([0.66, 0.69, 0.67], [0.27, 0.30, 0.33])},
            "EMA": {"setting": "D0.99", "seeds": seeds([0.60], [0.40])}}          # one seed: no claim
    found = forgetting.claims(rows)
    assert [c["claim"] for c in found] == ["LoRA forgets less of A (tweet sentiment) than plain fine-tuning on B",
                                           "LoRA learns B (WNUT-16 entity F1) less well than plain fine-tuning"]
    assert [c["verdict"] for c in found] == ["shown", "shown"]
    assert "LoRA at lr0.002, plain at lr0.0005, seeds 0, 1, 2" in found[0]["summary"]
    rows["LoRA"]["seeds"] = seeds([0.40, 0.60, 0.45], [0.60, 0.40, 0.70])     # mixed: no verdict either way
    assert [c["verdict"] for c in forgetting.claims(rows)] == ["not shown", "not shown"]
    assert forgetting.claims({"LoRA": rows["LoRA"]}) == []                    # nothing to pair with
