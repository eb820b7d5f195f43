#!/usr/bin/env bash
# Installs the Debian packages nexo needs. Idempotent: checks first, prints nothing and touches
# nothing when all is present, runs `apt-get update` only when something is missing.
#   scripts/install-deps.sh          build + run
#   scripts/install-deps.sh --test   + what the test suite and benchmarks need
#   scripts/install-deps.sh --fuzz   + clang and libFuzzer
set -euo pipefail

# libnats-dev: the NATS bus backend is linked into the binary, so the build needs it
build_pkgs=(gcc make cmake pkg-config libuv1-dev libh2o-dev libcurl4-openssl-dev libjansson-dev
            libyaml-dev libsqlite3-dev libssl-dev libnats-dev)
# gdb: the integration harness prints the stacks of a nexo that does not stop (a hang in CI);
# chromium: the browser that calls the gateway from web pages (test_browser_origin.py)
test_pkgs=(libcmocka-dev python3 curl wrk prometheus nats-server binutils procps gdb strace
           chromium)
fuzz_pkgs=(clang libclang-rt-14-dev)

want=("${build_pkgs[@]}")
for arg in "$@"; do
    case "$arg" in
        --test) want+=("${test_pkgs[@]}") ;;
        --fuzz) want+=("${fuzz_pkgs[@]}") ;;
        *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
    esac
done

# Node.js for the npm test peers: the machine's own node/npm when present (it may come from
# another repository), else Debian's.
if [[ " $* " == *" --test "* ]] && ! command -v npm >/dev/null 2>&1; then
    want+=(nodejs npm)
fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
# Packages such as prometheus and nats-server would start system services on ports nexo and its
# tests use; the tests start their own peers, so keep the package scripts from starting anything.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    made_policy=1
fi
trap '[ $made_policy -eq 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
