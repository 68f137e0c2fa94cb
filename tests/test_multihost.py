"""Multi-process runs on loopback: 2 processes x 2 CPU devices (jax.distributed, gloo collectives)
against 1 process x 4 devices, through the ``jaxtune finetune`` command, on a tiny BERT."""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxtune as jt
from conftest import write_tiny_bert
from jaxtune.experiment import build

pytestmark = pytest.mark.xdist_group("multihost")  # its module fixture is expensive: one worker runs it once


def _gloo_available() -> bool:
    from jax._src.lib import _jax

    return hasattr(_jax, "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(not _gloo_available(), reason="the installed jaxlib has no gloo CPU collectives "
                                                             "(make_gloo_tcp_collectives): no multi-process CPU runs")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of a test launch: runs `jaxtune finetune` on each config given (the first call joins
# the run with the multi-process flags). JT_TEST_FAIL="PID:STEP:NAME:HOW" makes process PID, in run NAME,
# raise an exception right after training step STEP once process 0 has logged step STEP - 1 (HOW=raise),
# or kill itself with SIGKILL once process 0 has logged step STEP (HOW=kill: it never starts step
# STEP + 1, where process 0 then waits for it). Every file a
# process opens for writing is listed in OUT/writes-<pid>.txt (orbax writes through tensorstore, not open()).
WORKER = r"""
import builtins, json, os, signal, sys, time
from jaxtune import cli, experiment
from jaxtune.nonfinite import NonFiniteGuard

out, multihost_flags, configs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
pid = int(multihost_flags[multihost_flags.index("--process-id") + 1]) if multihost_flags else 0
real_open, writes = builtins.open, []
def recording_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        writes.append(os.fspath(file))
    return real_open(file, mode, *args, **kwargs)
builtins.open = recording_open
current = {"name": None}
fail = os.environ.get("JT_TEST_FAIL")
if fail:
    fail_pid, fail_step, fail_name, how = fail.split(":")
    record = NonFiniteGuard.record
    def record_then_fail(self, step, metrics):
        record(self, step, metrics)
        if pid == int(fail_pid) and step == int(fail_step) and current["name"] == fail_name:
            cfg = json.load(open(current["config"]))
            jsonl = os.path.join(cfg["output_dir"], cfg["name"], "metrics.jsonl")
            deadline = time.monotonic() + 600
            logged = step if how == "kill" else step - 1
            while time.monotonic() < deadline and f'"step": {logged}, "split": "train"' not in real_open(jsonl).read():
                time.sleep(0.1)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"test failure after step {step}")
    NonFiniteGuard.record = record_then_fail
status = 0
for i, config in enumerate(configs):
    current.update(name=os.path.splitext(os.path.basename(config))[0], config=config)
    try:
        status = cli.main(["finetune", config] + (multihost_flags if i == 0 else []))
    finally:
        with real_open(os.path.join(out, f"writes-{pid}.txt"), "w") as f:
            f.write("\n".join(writes))
    if status:
        break
sys.exit(status)
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT with the real all-MiniLM-L6-v2 tokenizer (its 30522 x 32 word embeddings are
    the one array FSDP splits over the devices)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32, intermediate_size=37,
                           max_position_embeddings=128)


def _config(model_dir, out, name, parallel, export=False):
    return {
        "name": name, "output_dir": str(out),
        "model": {"path": model_dir},
        "data": {"dataset": "tweet_sentiment", "max_length": 16, "batch_size": 8, "eval_batch_size": 16,
                 "train_limit": 48, "eval_limit": 16, "test_limit": 16},
        "optim": {"learning_rate": 1e-3, "schedule": "constant"},
        "train": {"max_steps": 4, "eval_every": 2, "log_every": 1, "progress": False, "parallel": parallel},
        "early_stopping": {"enabled": False, "monitor": "val_loss"},
        "checkpoint": {"keep_latest": 1, "keep_best": 1, "export_best_hf": export},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, configs, num_processes, devices, env=None, overrides=()):
    """Starts ``num_processes`` worker processes with ``devices`` CPU devices each."""
    os.makedirs(out, exist_ok=True)
    port = _free_port()
    procs = []
    for pid in range(num_processes):
        flags = (f"--coordinator 127.0.0.1:{port} --num-processes {num_processes} --process-id {pid} "
                 f"--heartbeat-timeout 20" if num_processes > 1 else "")
        flags += "".join(f" --set {o}" for o in (overrides[pid] if overrides else ()))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(out), flags, *configs], cwd=ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, f"stderr-{pid}.txt"), "w"),
            env=dict(os.environ, JAX_PLATFORMS="cpu",
                     XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
                     **(env or {}))))
    return out, procs


def _wait(launch, timeout=1500):
    """Waits for a launch's processes; returns, per process, (exit status, seconds until it exited, stderr)."""
    out, procs = launch
    started = time.monotonic()
    ended = [None] * len(procs)
    while None in ended and time.monotonic() - started < timeout:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.monotonic() - started
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return [(p.returncode, t, open(os.path.join(out, f"stderr-{i}.txt")).read()) for i, (p, t) in
            enumerate(zip(procs, ended))]


def _launch(*args, **kwargs):
    return _wait(_start(*args, **kwargs))


def _write_configs(model_dir, out, runs):
    paths = []
    for name, parallel, export in runs:
        path = os.path.join(out, f"{name}.json")
        with open(path, "w") as f:
            json.dump(_config(model_dir, out, name, parallel, export), f)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def launched(tiny_model_dir, tmp_path_factory):
    """Runs on 1 process x 4 devices (dp, fsdp) and on 2 processes x 2 devices: dp with an HF export,
    and fsdp where process 1 is killed (SIGKILL) after step 3 (step 3 is logged, the checkpoint of
    step 2 is on disk); then fsdp relaunched to the end, followed by a run "boom" where process 1 raises in step 2."""
    base = tmp_path_factory.mktemp("multihost")
    single, multi = str(base / "single"), str(base / "multi")
    os.makedirs(single)
    os.makedirs(multi)
    single_configs = _write_configs(tiny_model_dir, single, [("dp", "dp", False), ("fsdp", "fsdp", False)])
    multi_configs = _write_configs(tiny_model_dir, multi, [("dp", "dp", True), ("fsdp", "fsdp", False),
                                                           ("boom", "fsdp", False)])
    reference = _start(single, single_configs, 1, 4)
    first = _wait(_start(multi, multi_configs[:2], 2, 2, env={"JT_TEST_FAIL": "1:3:fsdp:kill"}))
    logged_before_relaunch = jt.read_jsonl(os.path.join(multi, "fsdp", "metrics.jsonl"))
    relaunch = _launch(os.path.join(multi, "relaunch"), multi_configs[1:], 2, 2,
                       env={"JT_TEST_FAIL": "1:2:boom:raise"})
    return {"single": single, "multi": multi, "first": first, "reference": _wait(reference), "relaunch": relaunch,
            "logged_before_relaunch": logged_before_relaunch, "model_dir": tiny_model_dir}


def _train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            if r["split"] == "train"]


@pytest.fixture(scope="module")
def template(launched, tmp_path_factory):
    """A state of the runs' kind on this single-process, single-device pytest process."""
    return build(_config(launched["model_dir"], tmp_path_factory.mktemp("template"), "template", None)).initial_state


def _restored_on_one_process(template, out, name):
    """The latest checkpoint of run ``name``, restored onto this single-process, single-device pytest process."""
    with jt.Checkpointer(os.path.join(out, name, "checkpoints")) as ckpt:
        state, record = ckpt.restore(template=template)
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 1
    return state, record


@needs_gloo
def test_two_processes_equal_one_process_of_four_devices(launched, template):
    assert all(status == 0 for status, _, _ in launched["reference"]), launched["reference"][0][2][-3000:]
    for name in ("dp", "fsdp"):
        multi_run, single_run = os.path.join(launched["multi"], name), os.path.join(launched["single"], name)
        multi_losses, single_losses = _train_losses(multi_run), _train_losses(single_run)
        assert [s for s, _ in multi_losses] == [1, 2, 3, 4]
        np.testing.assert_allclose([l for _, l in multi_losses], [l for _, l in single_losses], rtol=0, atol=1e-5)
        multi_state, record = _restored_on_one_process(template, launched["multi"], name)  # fsdp: relaunched
        single_state, _ = _restored_on_one_process(template, launched["single"], name)
        assert int(multi_state.step) == 4 and record["data_position"] == {"epoch": 0, "batch": 4}
        for a, b in zip(jax.tree.leaves(multi_state.params), jax.tree.leaves(single_state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)  # float32


@needs_gloo
def test_only_process_0_writes_logs_plots_and_exports_and_both_write_the_checkpoint(launched):
    run_dir = os.path.join(launched["multi"], "dp")
    writes = [open(os.path.join(launched["multi"], f"writes-{pid}.txt")).read().split("\n") for pid in (0, 1)]
    written_by_0 = {os.path.relpath(w, run_dir) for w in writes[0] if w.startswith(run_dir)}
    assert {"metrics.jsonl", "curves.png", "test_report.png", "report.txt", "config.yaml"} <= written_by_0
    # Process 1 writes only its part of the checkpoints (orbax: its array metadata; its arrays go through tensorstore).
    assert not [w for w in writes[1] if w.startswith(launched["multi"]) and "/checkpoints/" not in w], writes[1]
    assert any("/checkpoints/" in w for w in writes[1])
    assert os.path.exists(os.path.join(run_dir, "best_hf", "model.safetensors"))
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert result["steps"] == 4 and result["paths"]["export"].endswith("best_hf")
    step_dirs = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert step_dirs == ["4"]  # one checkpoint (best and latest), no leftovers of either process
    state_files = os.listdir(os.path.join(run_dir, "checkpoints", "4", "state"))
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state_files), state_files  # each wrote its part


@needs_gloo
def test_killed_process_stops_the_other_naming_it_and_the_relaunch_resumes_bit_exactly(launched):
    (status0, ended0, err0), (status1, ended1, _) = launched["first"]
    assert status1 == -9  # SIGKILL: no word from it
    assert status0 == 1 and "(process 0/2): stopping: process 1/2 is gone" in err0, err0[-3000:]
    assert ended0 - ended1 < 60  # the heartbeat timeout (20 s) and a poll, not a hang in a collective
    run_dir = os.path.join(launched["multi"], "fsdp")
    assert json.load(open(os.path.join(run_dir, "result.json")))["steps"] == 4  # the relaunch finished it
    before = [r for r in launched["logged_before_relaunch"] if r["split"] == "train"]
    after = [r for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in before] == [1, 2, 3] and [r["step"] for r in after] == [1, 2, 3, 4]
    # Step 3 ran twice: before the kill, and after the relaunch resumed from the checkpoint of step 2.
    for key in ("loss", "grad_norm"):
        assert after[2][key] == before[2][key]  # bit-exact (float32 values, CPU)


@needs_gloo
def test_failed_process_stops_the_other(launched):
    (status0, ended0, err0), (status1, ended1, err1) = launched["relaunch"]
    assert status1 != 0 and "(process 1/2): failed: RuntimeError: test failure after step 2" in err1, err1[-3000:]
    assert status0 != 0 and "stopping: process 1/2 failed: RuntimeError: test failure after step 2" in err0, err0[-3000:]
    assert ended0 - ended1 < 30  # process 0 stopped within seconds, not after a collective's timeout


@needs_gloo
def test_processes_with_different_configs_refuse_to_start_naming_the_key(tiny_model_dir, tmp_path):
    [config] = _write_configs(tiny_model_dir, str(tmp_path), [("mismatch", "dp", False)])
    results = _launch(str(tmp_path), [config], 2, 2, overrides=[[], ["optim.learning_rate=0.002"]])
    for status, _, err in results:
        assert status != 0 and "optim.learning_rate: 0.001 on process 0, 0.002 on process 1" in err, err[-2000:]
    assert not os.path.exists(tmp_path / "mismatch")  # nothing written


def test_single_process_needs_no_coordination_and_bad_settings_name_the_key(tmp_path, capsys):
    from jaxtune import cli, multihost

    assert multihost.process_label() == "" and multihost.is_main_process()
    multihost.agree("config", {"a": 1})  # nothing to agree with
    multihost.barrier("nothing")
    with pytest.raises(jt.config.ConfigError, match="train.parallel"):
        jt.load_config(None, ["train.parallel=tensor"])
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"parallel": "dp"}}))
    assert cli.main(["finetune", str(path), "--process-id", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot join the multi-process run" in err and "--coordinator HOST:PORT" in err, err


def test_data_digest_sees_a_changed_example():
    from jaxtune.multihost import data_digest
    from jaxtune.run_data import PreparedData

    examples = [{"input_ids": np.arange(4, dtype=np.int32), "labels": np.int32(1)}]
    data = PreparedData("sequence_classification", examples, [], [], ("a", "b"), (16,), 0, "")
    changed = PreparedData("sequence_classification", [dict(examples[0], labels=np.int32(0))], [], [], ("a", "b"),
                           (16,), 0, "")
    assert data_digest(data) == data_digest(PreparedData(**vars(data))) != data_digest(changed)


def test_each_process_builds_exactly_its_rows_of_every_batch():
    from jaxtune.data.text import bucket_batches
    from jaxtune.run_data import PreparedData, batch_rows, epoch_batches, epoch_plan

    rng = np.random.default_rng(0)
    text = [{"input_ids": np.arange(2, n + 2, dtype=np.int32), "attention_mask": np.ones(n, np.int32),
             "labels": np.int32(n % 3)} for n in rng.integers(2, 30, 12)]
    images = [{"images": rng.normal(size=(2, 2, 3)).astype(np.float32), "labels": np.int32(i % 2)} for i in range(12)]
    for examples, buckets in ((text, (8, 16, 32)), (images, None)):
        data = PreparedData("task", examples, [], [], ("a", "b"), buckets, 1, "")
        plan, whole = epoch_plan(data, examples, 8, seed=3), epoch_batches(data, examples, 8, seed=3)
        if buckets is not None:  # the same batches as before the plan existed
            for a, b in zip(whole, bucket_batches(examples, 8, buckets, pad_token_id=1, seed=3), strict=True):
                assert all(np.array_equal(a[k], b[k]) for k in b) and a.keys() == b.keys()
        assert any(len(chunk) <= 4 for chunk in plan)  # a second half of padding rows only
        for chunk, batch in zip(plan, whole, strict=True):
            for rows in (slice(0, 4), slice(4, 8)):
                part = batch_rows(data, examples, chunk, 8, rows)
                assert part.keys() == batch.keys()
                for key in batch:
                    assert part[key].dtype == batch[key].dtype
                    np.testing.assert_array_equal(part[key], batch[key][rows])
