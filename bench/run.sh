#!/usr/bin/env bash
# make bench: prints one JSON line per figure. Usage: bench/run.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
cmake --build "$build" --target bench_baseline_h2o -j "$(nproc)" >/dev/null
exec /usr/bin/python3 -B "$here/bench.py" "$build"
