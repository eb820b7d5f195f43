#!/usr/bin/env bash
# make bench: prints one JSON line per figure. Usage: bench/run.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
cmake --build "$build" --target bench_baseline_h2o -j "$(nproc)" >/dev/null
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
    -Wmissing-prototypes -Wvla -o "$build/bench_instant_upstream" "$here/instant_upstream.c"
/usr/bin/python3 -B "$here/bench.py" "$build"
/usr/bin/python3 -B "$here/agent_bench.py" "$build"
