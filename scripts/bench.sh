#!/usr/bin/env bash
# The benchmark command (the main job): set up (install what is missing, build the
# extension), then run the benchmark suite, on the GPU when there is one, else on
# the CPU. Results go to bench-out/ (results.json, results.md, speedup.png).
# Extra arguments go to the suite:
#   bash scripts/bench.sh --quick              # a small subset, under a minute on a CPU
#   bash scripts/bench.sh --workload mnist --dtype float16 --out /tmp/b
#   bash scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m benchmarks "$@"
