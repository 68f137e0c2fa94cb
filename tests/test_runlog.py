import os

import jax.numpy as jnp
import pytest

import jaxtune as jt


def test_jsonl_tensorboard_and_plot(tmp_path):
    with jt.RunLogger(tmp_path) as log:
        for step in range(1, 6):
            log.log(step, {"loss": jnp.asarray(1.0 / step), "accuracy": 0.1 * step}, split="train")
        log.log(5, {"loss": 0.5, "accuracy": 0.4}, split="validation")
    records = jt.read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == 6 and records[0] == {"step": 1, "split": "train", "loss": 1.0, "accuracy": 0.1}
    events = [n for n in os.listdir(tmp_path / "tensorboard") if n.startswith("events.out.tfevents")]
    assert len(events) == 1
    raw = (tmp_path / "tensorboard" / events[0]).read_bytes()
    assert b"train/loss" in raw and b"validation/accuracy" in raw  # scalar summaries by tag


def test_plot_curves_writes_png(tmp_path):
    with jt.RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(3):
            log.log(step, {"loss": 1.0 - 0.1 * step})
    out = jt.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png", title="t")
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metrics"):
        jt.plot_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_classification_report_plot(tmp_path):
    import numpy as np

    from jaxtune import metrics
    from jaxtune.runlog import plot_classification_report

    report = metrics.classification_report(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), ("a", "b", "c"))
    out = plot_classification_report(report, tmp_path / "r.png")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
