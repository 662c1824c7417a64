#!/usr/bin/env bash
# The GPU checks of issue 19 as ONE script, under 8 minutes, for the `run` tool's H200 machine: no network,
# its image's python3 with jax 0.11.2 (CUDA 13), flax, optax, orbax-checkpoint; what the image lacks
# (ml-collections, tensorboardX) travels as wheels in .whl/.
#
#   here, once per checkout:   .venv/bin/python -m benchmarks.gpu_env download      # fills .whl/ (~2.5 MB)
#   there (the run tool, carry [".whl"], timeout_s 540):
#       set -o pipefail; bash benchmarks/gpu_kernels.sh "$OUT" 2>&1 | tee "$OUT/log.txt"
#   CPU smoke here (tiny sizes, interpret-mode kernels, ~6 minutes on 2 loaded cores):
#       PYTHON=.venv/bin/python bash benchmarks/gpu_kernels.sh /tmp/gpu_suite --smoke
#
# Usage: bash benchmarks/gpu_kernels.sh [OUTDIR] [benchmarks.gpu_suite options]
#   OUTDIR defaults to $GPU_SUITE_OUT, then $OUT, then ./gpu_suite_out; it receives gpu_suite.json (all
#   figures, stage by stage as they finish) and gpu_suite.md (the table printed at the end).
# Stages (benchmarks/gpu_suite.py, each in its own process under its own cap, most important first):
#   tests (kernel tests compiled on the GPU), flash, train, moe, decode.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${GPU_SUITE_OUT:-${OUT:-gpu_suite_out}}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT_DIR=$1; shift; fi
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# The image's packages where setup.py's ranges accept them, carried wheels for the rest; the project itself
# from this checkout (PYTHONPATH, nothing to build).
SITE=${GPU_SITE:-/tmp/site}
if [ -d .whl ]; then
  "$PY" -m benchmarks.gpu_env install --target "$SITE" || echo "warning: installing the carried wheels failed"
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "note: no .whl/ here (run '.venv/bin/python -m benchmarks.gpu_env download' and carry it); using $PY as is"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())' || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true

# The suite keeps each stage inside its cap and the whole inside --budget (460 s); this timeout only
# guards the 8-minute promise if something hangs outside a stage.
case " $* " in *" --smoke "*) LIMIT=${GPU_SUITE_TIMEOUT:-1800} ;; *) LIMIT=${GPU_SUITE_TIMEOUT:-475} ;; esac
timeout "$LIMIT" "$PY" -m benchmarks.gpu_suite --out "$OUT_DIR" --budget 460 "$@"
