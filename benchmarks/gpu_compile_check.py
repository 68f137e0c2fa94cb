"""Compiles every gpu-suite step for an H100 (or H200) that is not there: XLA:GPU's memory plan,
attention kernel and compile errors, without a device. See jaxtune/bench/aot.py.

Usage::

    python benchmarks/gpu_compile_check.py                  # all gpu cases and modes, for an H100
    python benchmarks/gpu_compile_check.py --target h200 --cases t5-small-s256-t64-bs64 --modes full,frozen_backbone
"""
import sys
from pathlib import Path

# Check the checkout this script lives in, whichever jaxtune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxtune.bench.aot import main

if __name__ == "__main__":
    sys.exit(main())
