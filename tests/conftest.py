import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent compilation cache per test session, shared with the xdist workers and the subprocesses
# tests start (they inherit this environment): the runner tests build the same tiny models many times,
# and each build would otherwise compile anew. Every program is written, however fast it compiled
# (JAX's default threshold, 1 s, lets no tiny test program in).
_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxtune-test-jit-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests check results, not speed: they compile with the bench smoke's XLA flags (SMOKE_XLA_FLAGS, each
# with its reason), set as the smoke suite sets them: XLA:CPU skips LLVM's optimisation passes (a tiny
# model's step compiles about 3x faster) and uses its older fusion emitter (the freezing experiment's quick
# test: 63 -> 46 s of XLA compilation, 2026-12-02). Compiling is most of the suite's time. Importing the
# module starts no JAX backend, which reads XLA_FLAGS when it starts. Subprocesses inherit these; tests that
# set XLA_FLAGS for a subprocess add theirs to them (tests/test_multihost.py, test_train.py,
# test_checkpoint.py). A flag already set wins.
from jaxtune.bench.xla_flags import apply_environment  # noqa: E402

apply_environment("smoke", threads=None)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def pytest_sessionfinish(session, exitstatus):
    if _JIT_CACHE is not None:
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)


TINY_BERT = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                 max_position_embeddings=64)


def write_tiny_bert(directory, **config) -> str:
    """Writes a random BERT (``BertConfig(**{**TINY_BERT, **config})``, initialised from key 0) with the
    real all-MiniLM-L6-v2 tokenizer files into ``directory``; returns the directory as a string.

    Example::

        write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32, max_position_embeddings=128)
    """
    import jax

    import jaxtune as jt
    from jaxtune.models import bert

    config = bert.BertConfig(**{**TINY_BERT, **config})
    model = bert.build(config, None)
    jt.save_pretrained(model.init(jax.random.key(0), *bert.example_inputs(config, None)), config, directory)
    for name in TOKENIZER_FILES:
        shutil.copy(jt.minilm_path() / name, os.path.join(directory, name))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT (:data:`TINY_BERT`: 1 layer, hidden 16, hidden dropout 0.1) with the real
    all-MiniLM-L6-v2 tokenizer files, shared by the runner tests of members, seeds and sweeps
    (test_experiment defines its own, wider one; test_multihost writes a wider one with :func:`write_tiny_bert`)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_experiment_models(tmp_path_factory):
    """(text, cnn) checkpoints for the experiment scripts' ``--quick`` tests: a random 2-layer BERT
    with MiniLM's tokenizer, a random 3-block MobileNetV2 (10 labels)."""
    import jax

    import jaxtune as jt
    from jaxtune.models import mobilenet

    text = write_tiny_bert(tmp_path_factory.mktemp("tiny_bert2"), num_hidden_layers=2)
    config = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 2, 2)), stem_channels=8,
                                         last_channels=16, dropout=0.0)
    model = mobilenet.mobilenet_v2(config, 10)
    cnn = tmp_path_factory.mktemp("tiny_mobilenet")
    jt.save_pretrained(model.init(jax.random.key(0), jax.numpy.zeros((1, 16, 16, 3))), model.config, cnn,
                       task="image_classification")
    return text, str(cnn)


def rerun_bit_for_bit(main, argv, out, cache=None, retrain=("*.json", "*.json")) -> str:
    """Runs an experiment script's ``main(argv)`` twice, first deleting the files of ``cache`` that
    match ``retrain[i]`` (what run i trains again; the rest it reads), and asserts that the two runs
    write the same ``out`` PNG bytes, the same sidecar but its training minutes, and the same results
    file but its run line. Returns the results text.

    Example::

        text = rerun_bit_for_bit(freezing.main, ["--quick", "--out", str(out)], out, cache, ("*.json", "*_probe_*"))
    """
    import protocol   # experiments/, on sys.path in the experiment tests

    written = []
    for pattern in retrain:
        for path in (cache.glob(pattern) if cache is not None else ()):
            path.unlink()
        assert main(argv) == 0
        written.append({suffix: out.with_suffix(suffix).read_bytes() for suffix in (".md", ".png", ".json")})
    first, second = written
    assert first[".png"] == second[".png"]
    assert protocol.strip_training_time(first[".json"]) == protocol.strip_training_time(second[".json"])
    text = first[".md"].decode("utf-8")
    assert protocol.strip_run_line(text) == protocol.strip_run_line(second[".md"].decode("utf-8"))
    return text


@pytest.fixture
def restore_threefry_lowering():
    """Puts JAX's GPU threefry lowering setting back after a test that changes it (the runner, the gpu suite)."""
    import jax

    before = jax.config.jax_threefry_gpu_kernel_lowering
    yield
    jax.config.update("jax_threefry_gpu_kernel_lowering", before)
