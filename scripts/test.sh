#!/usr/bin/env bash
# The test command: set up (install what is missing, build the extension),
# then run the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh                 # everything (CUDA tests skip without a GPU)
#   bash scripts/test.sh -k affine -x    # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest tests "$@"
