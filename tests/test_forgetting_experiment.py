"""experiments/forgetting.py --quick (tiny BERT, tiny data, 3-step runs): the results file's structure,
the per-run cache, and reruns that only add what is missing."""
import importlib.util
import os
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _script():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("forgetting_experiment", EXPERIMENTS / "forgetting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_forgetting_writes_every_table_and_reruns_only_what_is_missing(tiny_model_dir, tmp_path, capsys):
    forgetting = _script()
    out = tmp_path / "forgetting.md"
    common = ["--quick", "--model", tiny_model_dir, "--work", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"),
              "--out", str(out), "--seeds", "0,1", "--learning-rates", "1e-3", "--alphas", "0,0.5,1",
              "--refit-steps", "3", "--refit-examples", "8"]
    forgetting.main([*common, "--variants", "plain,rehearsal5,wiseft"])
    text = out.read_text()
    for heading in ("## Methods (test, mean ± sample std over seeds)", "## Paired differences against plain",
                    "## WiSE-FT: A's encoder interpolated", "## Selection on validation"):
        assert heading in text
    for row in ("| plain | lr0.001 |", "| rehearsal 5% | f0.05 |", "| WiSE-FT, B head | α=", "| WiSE-FT, re-fitted head | α="):
        assert row in text
    assert " ± " in text.split("| plain |")[1].splitlines()[0]          # two seeds: a spread
    assert "| 0.5 |" in text and (tmp_path / "forgetting.png").stat().st_size > 0
    assert sorted(os.listdir(tmp_path / "cache" / "rehearsal5" / "f0.05")) == ["seed0.json", "seed1.json"]
    capsys.readouterr()

    # A later invocation trains only the new variant and rewrites the whole file, earlier methods included.
    forgetting.main([*common, "--variants", "l2sp", "--l2sp", "0.1"])
    printed = capsys.readouterr().out
    assert "strategy (B_l2sp_S0.1_s0)" in printed and "strategy (B_plain" not in printed
    again = out.read_text()
    assert "| L2-SP coupled | S0.1 |" in again and "| rehearsal 5% |" in again and "| WiSE-FT, B head |" in again
    forgetting.main([*common, "--variants", "l2sp", "--l2sp", "0.1"])   # all cached: the same bytes
    assert out.read_text() == again
