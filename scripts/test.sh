#!/usr/bin/env bash
# The whole test suite: what the README's `make test` and .ci/run run.
# Sets the host up (idempotent), builds or reuses the cached guest images, builds the static agent,
# checks format and lints, then runs every unit, integration and end-to-end (real VM) test.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }

step "host setup"
scripts/setup-host.sh
step "guest images"
images/build.sh all
step "static agent"
scripts/build-agent.sh
step "format"
cargo fmt --all --check
step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "binaries"
# The end-to-end tests run these (they never build them themselves).
cargo build --workspace --bins --locked
step "tests"
# This suite has the machine it needs: a test that would skip for want of root, libvirtd, an
# image or the agent fails instead (minion-testenv).
export MINION_REQUIRE_VM_TESTS=1
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
step "fuzz (short run of every target)"
FUZZ_SECS="${FUZZ_SECS:-10}" scripts/fuzz.sh
step "leak check"
scripts/leak-check.sh
step "done"
