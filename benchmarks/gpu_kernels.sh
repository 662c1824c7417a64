#!/usr/bin/env bash
# GPU checks for the Pallas kernels (issue 9), meant to finish in under 5 minutes on one H100/H200:
#   1. a virtual environment with JAX for CUDA 12 at the version the project pins (skipped when the
#      current python already sees a GPU through jax);
#   2. the kernel tests compiled for the GPU (Triton), not in interpret mode;
#   3. the flash-attention forward+backward benchmark in bf16 at n = 2K, 8K, 16K against
#      jax.nn.dot_product_attention(implementation="cudnn" and "xla").
# Usage, from anywhere in the repository:  bash benchmarks/gpu_kernels.sh [extra benchmark args]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' 2>/dev/null; then
  # The pin in setup.py ("jax>=X,<Y") decides the version: the CUDA wheels must match it exactly.
  JAX_VERSION=$(sed -n 's/.*"jax>=\([0-9.]*\),.*/\1/p' setup.py | head -1)
  "$PY" -m venv .venv-gpu
  PY=.venv-gpu/bin/python
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "jax[cuda12]==${JAX_VERSION}" -e ".[dev]"
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

echo "== kernel tests on the GPU (compiled, not interpreted)"
# float32 oracles at 1e-5 need full-precision XLA matmuls (not TF32); JAX_PLATFORMS overrides the CPU default
# of tests/conftest.py.
JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 \
  "$PY" -m pytest -q -x tests/test_flash_attention.py tests/test_gmm.py tests/test_attention_dispatch.py || status=$?

echo "== flash attention fwd+bwd, bf16, B*n = 32K tokens, 16 heads of 128"
timeout 300 "$PY" -m benchmarks.flash_attention --lengths 2048,8192,16384 --repeats 5 "$@"
exit "${status:-0}"
