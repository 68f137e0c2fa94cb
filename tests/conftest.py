import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent compilation cache per test session, shared with the subprocesses tests start: the
# runner tests build the same tiny models many times, and each build would otherwise compile anew.
_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxtune-test-jit-cache-")


def pytest_sessionfinish(session, exitstatus):
    if _JIT_CACHE is not None:
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)
