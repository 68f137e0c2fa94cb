"""The PyTorch peers of the benchmark cases live outside the library, in the source checkout's
``benchmarks/torch_peers.py`` (they need torch and transformers); this loads them when present.

Example::

    peers, reason = load_torch_peers()     # (None, "PyTorch is not installed") without torch
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]     # the checkout holding jaxtune/ and benchmarks/


def load_torch_peers(path: Path | None = None):
    """The PyTorch peer module (``benchmarks/torch_peers.py`` of the checkout) and ``""``, or
    ``(None, reason)`` when torch or transformers is missing or the file is not there."""
    path = path or REPO / "benchmarks" / "torch_peers.py"
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed"
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed"
    if not path.is_file():
        return None, f"{path} not found (run from a source checkout)"
    spec = importlib.util.spec_from_file_location("jaxtune_bench_torch_peers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""

