#!/usr/bin/env bash
# Every benchmark the issues name; each part prints its own numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
for part in formula vm daemon snapshot instances hosts store dashboard trigger fetch; do
    if [[ -x scripts/bench-$part.sh ]]; then
        printf '\n==> bench: %s\n' "$part"
        scripts/bench-$part.sh
    fi
done
