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


def test_tensorboard_tags_are_the_jsonl_split_and_names(tmp_path):
    """Group names with characters tensorboardX would rewrite ("*", " ") keep them in the tags."""
    with jt.RunLogger(tmp_path) as log:
        log.log(1, {"loss": 0.5}, split="train")
        log.log(2, {"all": 0.01, "head/.*": 0.2, "no decay": 0.0}, split="drift")
    jsonl = {f"{r['split']}/{k}" for r in jt.read_jsonl(tmp_path / "metrics.jsonl") for k in r if k not in ("step", "split")}
    tags = {v.tag for e in _events(tmp_path / "tensorboard") if e.HasField("summary") for v in e.summary.value}
    assert tags == jsonl == {"train/loss", "drift/all", "drift/head/.*", "drift/no decay"}
    values = {(e.step, v.tag): v.simple_value for e in _events(tmp_path / "tensorboard") if e.HasField("summary")
              for v in e.summary.value}
    assert values[(2, "drift/head/.*")] == pytest.approx(0.2)  # float32 in the event file


def test_curve_panels_title_drift_and_leave_out_single_points():
    from jaxtune.runlog import curve_panels

    rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3)]
    rows += [{"step": s, "split": "validation", "loss": 0.9 / s, "accuracy": 0.5} for s in (2, 3)]
    rows += [{"step": s, "split": "drift", "all": 0.1 * s, "head": 0.2 * s} for s in (2, 3)]
    rows += [{"step": 3, "split": "test", "accuracy": 0.6, "macro_f1": 0.5}]   # macro_f1: a single point
    panels = curve_panels(rows)
    assert list(panels) == ["loss", "accuracy", "drift from pretrained: all", "drift from pretrained: head"]
    assert panels["accuracy"]["test"] == ([3], [0.6])  # a single point beside a curve stays
    assert panels["drift from pretrained: head"] == {"drift": ([2, 3], [0.4, 0.6000000000000001])}


def test_plot_curves_of_a_run_with_single_points_says_so(tmp_path):
    with jt.RunLogger(tmp_path, tensorboard=False) as log:
        log.log(3, {"loss": 0.5})
        log.log(3, {"all": 0.01}, split="drift")
    out = jt.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_prints_lines_with_eta_in_a_pipe(capsys):
    from jaxtune.runlog import progress_bar, track

    with progress_bar(4, "run", every_s=0.0) as bar:      # capsys: not a terminal
        for step in range(1, 5):
            bar.update(bar.tasks[0].id, completed=step, loss=0.5, ex_per_s=10.0)
        assert list(track([1, 2], "run: validation", bar=bar)) == [1, 2]
    assert list(track([1, 2, 3], "run: test")) == [1, 2, 3]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run: 1/4 steps, loss 0.5000, 10.0 ex/s, elapsed 0:00, ETA ")
    assert lines[3].startswith("run: 4/4 steps, loss 0.5000") and lines[3].endswith("ETA 0:00")
    assert lines[4].startswith("run: validation: 0/2 batches, elapsed") and "run: validation: 2/2 batches" in lines[6]
    assert lines[7].startswith("run: test: 0/3 batches") and lines[-1].startswith("run: test: 3/3 batches")
    with progress_bar(2, "quiet", disable=True) as bar:
        bar.update(bar.tasks[0].id, completed=2)
    assert capsys.readouterr().out == ""


def test_eta_survives_the_bursts_of_asynchronous_dispatch(capsys, monkeypatch):
    """Steps reach the host in bursts (dispatch runs ahead; a log point waits for the device): the ETA
    averages from the first step on, so a gap longer than any short window still gives one."""
    import rich

    from jaxtune.runlog import progress_bar

    now = [0.0]
    monkeypatch.setattr(rich.get_console(), "get_time", lambda: now[0])  # rich's clock
    with progress_bar(10, "run", every_s=0.0) as bar:
        for t, step in [(10.0, 1), (100.0, 2), (100.0, 3), (100.0, 4), (100.0, 5), (200.0, 6)]:
            now[0] = t
            bar.update(bar.tasks[0].id, completed=step)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "run: 6/10 steps, elapsed 3:20, ETA 2:32"   # 5 steps in 190 s, 4 to go


def test_flush_writes_every_queued_event_before_returning(tmp_path):
    # tensorboardX's own flush writes only what its worker thread has dequeued; RunLogger.flush waits for
    # the queue, so all 300 scalars logged just before it are in the file when it returns. (The race shows
    # only under load, as in a 2-worker CI run; on a quiet machine this passes without the wait too.)
    with jt.RunLogger(tmp_path) as log:
        for step in range(1, 301):
            log.log(step, {"loss": 1.0 / step})
        log.flush()
        steps = sorted(e.step for e in _events(tmp_path / "tensorboard") if e.summary.value)
        assert steps == list(range(1, 301))
        log.log(301, {"loss": 0.5})   # the fresh worker thread keeps writing
    assert max(e.step for e in _events(tmp_path / "tensorboard") if e.summary.value) == 301
