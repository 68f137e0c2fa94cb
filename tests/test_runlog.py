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


def _events(tb_dir):
    """The events of every TensorBoard file in ``tb_dir`` (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(tb_dir)):
        raw = (tb_dir / name).read_bytes()
        while raw:
            (length,) = struct.unpack("<Q", raw[:8])
            events.append(event_pb2.Event.FromString(raw[12:12 + length]))
            raw = raw[12 + length + 4:]
    return events


def test_resume_drops_rows_past_the_resume_point_and_purges_tensorboard(tmp_path):
    with jt.RunLogger(tmp_path) as log:
        for step in range(1, 5):
            log.log(step, {"loss": 1.0 / step})
        log.flush()  # at a checkpoint: the event file holds everything logged so far, before close
        assert b"train/loss" in b"".join((tmp_path / "tensorboard" / n).read_bytes()
                                        for n in os.listdir(tmp_path / "tensorboard"))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "split": "tr')  # torn by a kill while logging
    with jt.RunLogger(tmp_path, resume_step=2) as log:
        assert [r["step"] for r in jt.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
        log.log(3, {"loss": 0.3})
    assert [(r["step"], r["loss"]) for r in jt.read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 0.5), (3, 0.3)]
    # TensorBoard is told to hide the old run's events from step 3 on (a SessionLog START with that step).
    starts = [e.step for e in _events(tmp_path / "tensorboard") if e.HasField("session_log")]
    assert starts == [3]
    # A run killed before its first checkpoint restarts from step 0: every logged row goes.
    with jt.RunLogger(tmp_path, tensorboard=False, resume_step=0):
        pass
    assert jt.read_jsonl(tmp_path / "metrics.jsonl") == []
    assert [n for n in os.listdir(tmp_path) if ".tmp" in n] == []
