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
# Telegram: inbound-to-reply latency through the Bot API emulator (needs build/npm-peers).
/usr/bin/python3 -B "$here/telegram_bench.py" "$build"
# WhatsApp: signed webhook to the reply's Graph API request (tests/fakes/fake_graph.py in-process).
/usr/bin/python3 -B "$here/whatsapp_bench.py" "$build"
# Bus: in-process, core NATS, JetStream, disk-queue replay (bench/bus_bench.c; starts its own
# nats-server on free ports).
cmake --build "$build" --target nexo_lib -j "$(nproc)" >/dev/null
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
    -Wmissing-prototypes -Wvla -I"$here/../src" -o "$build/bench_bus_bench" "$here/bus_bench.c" \
    "$build/libnexo_lib.a" $(pkg-config --libs libuv libh2o jansson yaml-0.1 sqlite3 openssl libnats) \
    -lpthread -lm -ldl
"$build/bench_bus_bench" "${BENCH_BUS_EVENTS:-100000}"
