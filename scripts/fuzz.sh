#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, starting from its seed corpus in
# tests/fuzz/corpus/<name>/. The growing corpus and any crash go to fuzz-out/. Fails on a crash.
set -euo pipefail
build=${1:-build-fuzz}
secs=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/fuzz-out
mkdir -p "$out"
status=0
for bin in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin"); name=${name#fuzz_}
    corpus=$out/corpus/$name
    mkdir -p "$corpus" "$out/crashes/$name"
    [ -d "$root/tests/fuzz/corpus/$name" ] && cp -n "$root/tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz: $name for ${secs}s"
    if ! ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$out/crashes/$name/" -print_final_stats=1 "$corpus" \
            >"$out/$name.log" 2>&1; then
        echo "fuzz: $name FAILED, see $out/$name.log and $out/crashes/$name/" >&2
        tail -30 "$out/$name.log" >&2
        status=1
    else
        grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$out/$name.log" | tr '\n' ' '
        echo
    fi
done
exit $status
