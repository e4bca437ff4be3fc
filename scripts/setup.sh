#!/usr/bin/env bash
# Set-up shared by scripts/test.sh and scripts/bench.sh: installs what is missing
# into the current Python environment and builds stn_cuda's extension (CUDA
# kernels too when nvcc and a CUDA build of torch are present).
#   PYTHON=python3.12 ...     the interpreter to use (default: python3)
#   TORCH_SPEC="torch==2.13.0" the torch to install when none is installed
#   TORCH_CUDA_ARCH_LIST=9.0  GPU architectures to build (see setup.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first, only when it is missing: never replace a torch that is already
# there (a GPU box's CUDA build, say). The pinned CUDA 13.0 build is the one
# this project is developed and tested with; TORCH_SPEC=... picks another.
"$PY" -c "import torch" 2>/dev/null || pip_install "${TORCH_SPEC:-torch==2.14.1}"
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"ninja": "ninja", "pybind11": "pybind11", "pytest": "pytest", "setuptools": "setuptools",
        "tqdm": "tqdm", "matplotlib": "matplotlib", "numpy": "numpy", "mlxtend": "mlxtend",
        "hypothesis": "hypothesis"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
[ -z "$missing" ] || pip_install $missing

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "stn_cuda setup: building the extension (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
"$PY" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
