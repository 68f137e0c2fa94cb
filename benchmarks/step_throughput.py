"""Step-throughput benchmark of jaxtune against PyTorch (same as ``jaxtune bench``).

Usage::

    python benchmarks/step_throughput.py            # gpu suite: BERT-base, T5-small, ResNet-50
    python benchmarks/step_throughput.py --cpu      # all-MiniLM-L6-v2 against PyTorch CPU
    python benchmarks/step_throughput.py --smoke    # tiny configs, seconds
    python benchmarks/step_throughput.py --help

See benchmarks/README.md for what is measured and how.
"""
import sys
from pathlib import Path

# Benchmark the checkout this script lives in, whichever jaxtune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxtune.bench import main

if __name__ == "__main__":
    sys.exit(main())
