"""``python -m jaxtune.bench [options]``: the same as ``jaxtune bench`` (see :mod:`jaxtune.bench.cli`)."""
import sys

from jaxtune.bench.cli import main

sys.exit(main())
