#!/usr/bin/env bash
# Installs the pinned npm peers the integration tests drive (official SDK clients, MCP servers,
# emulators) into build/npm-peers, from tests/npm/package.json + package-lock.json. Idempotent:
# does nothing when the installed lock matches. Needs node and npm (Debian: nodejs, npm).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${NEXO_NPM_PEERS:-$root/build/npm-peers}
src=$root/tests/npm

if ! command -v npm >/dev/null 2>&1; then
    echo "install-npm-peers: npm not found (apt-get install nodejs npm)" >&2
    exit 1
fi
mkdir -p "$dest"
if [ -d "$dest/node_modules" ] && cmp -s "$src/package-lock.json" "$dest/.installed-lock"; then
    exit 0
fi
cp "$src/package.json" "$src/package-lock.json" "$dest/"
echo "install-npm-peers: installing into $dest" >&2
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
cp "$src/package-lock.json" "$dest/.installed-lock"
