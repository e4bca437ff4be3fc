#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer. Builds a
# sanitized, CPU-only extension (STN_CUDA_SANITIZE=1, see setup.py) in a copy of the
# working tree, so the normal in-place build is left alone, then runs the CPU tests
# against it with the sanitizer runtimes preloaded (python itself is not instrumented).
# Fails on a failing test and on any sanitizer report, in the tests or in a process they
# start. Arguments after the command go to pytest (they replace the default selection).
# --emulate-cuda (first): the CUDA kernels instead, built for the CPU against the CUDA
# emulator of tests/host and run on the CPU tests' tensors (STN_CUDA_EMULATE=1): what
# compute-sanitizer's memcheck and synccheck would find in them, without a GPU (not races).
#   bash scripts/sanitize.sh                            # the CPU tests but the slowest
#   bash scripts/sanitize.sh --emulate-cuda             # the same tests, on the CUDA kernels
#   bash scripts/sanitize.sh tests/test_limits.py -q    # a subset
#   SANITIZE_DIR=/tmp/stn-asan bash scripts/sanitize.sh # keep the build there, reuse it
# Needs a compiler with the sanitizer runtimes (gcc: libasan, libubsan) and what
# scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CXX=${CXX:-c++}
emulate=0
if [ "${1:-}" = --emulate-cuda ]; then
  emulate=1
  shift
fi
if [ -n "${SANITIZE_DIR:-}" ]; then
  dir=$SANITIZE_DIR
  mkdir -p "$dir"
else
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
fi
src=$dir/src logs=$dir/logs
rm -rf "$logs"
mkdir -p "$src" "$logs"

runtime() {  # the full path of a sanitizer runtime of the compiler that builds the extension
  local path
  path=$("$CXX" -print-file-name="$1")
  [ -f "$path" ] || { echo "sanitize.sh: $CXX has no $1 (install its sanitizer runtimes)" >&2; exit 2; }
  echo "$path"
}
preload="$(runtime libasan.so) $(runtime libubsan.so)"

# The sources, tests and benchmarks, without build outputs (tar keeps modification
# times, so a kept build recompiles only what changed).
tar -cf - --exclude=./.git --exclude=./build --exclude='*.so' --exclude=./bench-out \
  --exclude=./gpu-out --exclude=./.hypothesis --exclude=__pycache__ . | tar -xf - -C "$src"

start=$SECONDS
echo "sanitize.sh: building the sanitized extension in $src"
(cd "$src" && env -u FORCE_CUDA STN_CUDA_SANITIZE=1 STN_CUDA_EMULATE=$emulate MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py build_ext --inplace > "$dir/build.log" 2>&1) ||
  { tail -n 40 "$dir/build.log"; exit 1; }
echo "sanitize.sh: built in $((SECONDS - start))s"

# detect_leaks=0: CPython and torch keep allocations alive until exit by design.
# protect_shadow_gap=0: the CUDA libraries torch loads map memory where ASan would
# otherwise reserve its shadow gap. Reports go to $logs as well as to stderr.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:halt_on_error=1:abort_on_error=0:log_path=$logs/asan:log_exe_name=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan:log_exe_name=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
# The slowest tests stay out: the MNIST example, DDP and torch.compile (graph capture
# and code generation, none of it stn_cuda's code).
default=(tests -q -p no:cacheprovider -m "not slow" -k "not compile and not ddp and not mnist")
# Emulated, the benchmark suite's own tests too (they time its harness in a subprocess, for
# minutes on the emulator, and test no kernel the others do not).
[ "$emulate" = 0 ] || default+=(--ignore=tests/test_benchmarks.py)
[ $# -gt 0 ] || set -- "${default[@]}"

cd "$src"
LD_PRELOAD="$preload" "$PY" -c 'import stn_cuda._C as c, sys
assert c.__file__.startswith(sys.argv[1]), f"the sanitized build was not loaded: {c.__file__}"
assert not c.built_with_cuda and c.emulates_cuda == int(sys.argv[2])' "$src" "$emulate"

start=$SECONDS
rc=0
LD_PRELOAD="$preload" "$PY" -m pytest "$@" || rc=$?
echo "sanitize.sh: tests ran in $((SECONDS - start))s (pytest exit status $rc)"

# The emulator's threads are fibers (ucontext), whose first switch ASan warns of once per
# process; the emulator tells ASan of every switch, so that warning is no report.
for log in "$logs"/asan.*; do
  [ -f "$log" ] || continue
  grep -v "WARNING: ASan doesn't fully support makecontext/swapcontext" "$log" | grep -q . ||
    rm -f "$log"
done
if compgen -G "$logs/*" > /dev/null; then
  echo "sanitize.sh: sanitizer reports:"
  cat "$logs"/*
  exit 1
fi
exit $rc
