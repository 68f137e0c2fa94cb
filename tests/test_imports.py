"""``import jaxtune`` and the benchmark harness must work on an image without the data-pipeline
packages (the GPU machines that run ``benchmarks/gpu_session.sh`` have no grain,
tensorflow-datasets or tensorboardX and cannot install them); ``import jaxtune`` does not load the
benchmark harness (``jaxtune.bench``)."""
import subprocess
import sys

import pytest

OPTIONAL = ("grain", "array_record", "tensorflow_datasets", "tensorboardX", "gensim")


def test_import_without_data_pipeline_packages():
    code = "\n".join([
        "import sys",
        *(f"sys.modules[{name!r}] = None" for name in OPTIONAL),   # makes `import name` raise ImportError
        "import jaxtune",
        "assert not [m for m in sys.modules if m.startswith('jaxtune.bench')], 'import jaxtune loaded the bench'",
        "import jaxtune.bench, jaxtune.cli",
        "print(sorted(n for n in " + repr(OPTIONAL) + " if sys.modules.get(n) is not None))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_grain_names_resolve_on_first_use():
    import jaxtune.data as data
    from jaxtune.data.loader import Loader
    from jaxtune.data.rehearsal import RehearsalSchedule

    assert data.Loader is Loader
    assert data.RehearsalSchedule is RehearsalSchedule
    with pytest.raises(AttributeError, match="NotAThing"):
        data.NotAThing
