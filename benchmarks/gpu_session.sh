#!/usr/bin/env bash
# The one command a GPU session runs, from the repository root on the device machine (one device call,
# timeout_s about 560; see "GPU session in one device call" in benchmarks/README.md):
#
#   bash benchmarks/gpu_session.sh [extra harness options]
#
# Runs the gpu suite with a time budget and leaves under $OUT (5 files, at most 2 folders down; NAME is
# gpu, or gpu-members for the members session below):
#   session.log          everything printed (GPU, versions, the harness's progress)
#   results/NAME.jsonl   environment record, then each case's records as soon as the case finishes
#   results/NAME.md      the table so far (rewritten after each case), then the final one
#   results/NAME.png     the chart (written at the end of the run)
#   RESULTS.md           benchmarks/RESULTS.md with its gpu section rewritten (end of the run)
#
# BENCH_TIME_BUDGET_S (default 480) bounds the cases started; it leaves the call's remaining ~80 s for
# start-up, the final outputs and an estimate that falls short.
#
# The suite ends with the members cases (8 variants in one vmapped step against 8 sequential runs,
# MiniLM and BERT-base, bs 32, seq 128); the budget usually skips them after the five others. The
# members session runs them alone, modes members,sequential, under the name gpu-members (its own
# RESULTS.md section, results/gpu-members.*); BENCH_MEMBERS_N (default 8) sets N. Target: MiniLM
# members >= 4x the throughput of N sequential runs (one MiniLM run leaves an H100 mostly idle).
#
#   BENCH_SESSION=members bash benchmarks/gpu_session.sh
set -uo pipefail
: "${OUT:?OUT must name the folder whose files the device call returns}"
budget=${BENCH_TIME_BUDGET_S:-480}
log="$OUT/session.log"
mkdir -p "$OUT/results"
name=gpu
session=()
if [ "${BENCH_SESSION:-main}" = members ]; then
  name=gpu-members
  session=(--cases minilm-l6-s128-bs32-n8,bert-base-s128-bs32-n8 --modes members,sequential
           --members-n "${BENCH_MEMBERS_N:-8}")
fi
# The repository is not installed there; python3 is the interpreter that has both torch and jax.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  echo "== gpu session ${name} $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${budget} s =="
  nvidia-smi -L
  python3 - <<'EOF'
import importlib.metadata as md
import platform

print("python", platform.python_version())
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "torch", "transformers", "numpy", "matplotlib"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
EOF
  # the runner's GPU threefry kernel (train.gpu_threefry_kernel) must draw the bits of JAX's default lowering
  python3 - <<'EOF'
import jax
import numpy as np

key, draws = jax.random.key(3), []
for enabled in (False, True):
    jax.config.update("jax_threefry_gpu_kernel_lowering", enabled)
    draws.append(np.asarray(jax.jit(lambda k: jax.random.bits(k, (4096, 257)))(key)))
print("threefry kernel draws the same bits as XLA ops:", bool(np.array_equal(*draws)))
EOF
} 2>&1 | tee "$log"

python3 benchmarks/step_throughput.py --suite gpu --out "$OUT/results" --name "$name" --time-budget-s "$budget" \
  --profile-steps 3 "${session[@]}" "$@" 2>&1 \
  | tee -a "$log"
status=${PIPESTATUS[0]}
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
echo "== harness exit status $status ==" | tee -a "$log"
exit "$status"
