#!/usr/bin/env bash
# Builds the in-guest agent as one static binary (glibc, crt-static) so it runs in any Linux guest,
# copies it to target/agent/minion-agent, checks it really is static, and prints its path.
# Its own target dir: the crt-static RUSTFLAGS must not invalidate everyone else's build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-gnu
out_dir=target/agent
export CARGO_TARGET_DIR="${MINION_AGENT_TARGET_DIR:-target/agent-build}"
# relocation-model=static: a non-PIE static executable, which ldd reports as "not a dynamic
# executable" (a static-pie would say "statically linked").
export RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"

nice -n 10 cargo build --release --locked -p minion-agent --target "$triple" >&2
mkdir -p "$out_dir"
install -m 0755 "$CARGO_TARGET_DIR/$triple/release/minion-agent" "$out_dir/minion-agent.tmp"
mv "$out_dir/minion-agent.tmp" "$out_dir/minion-agent"

# ldd exits non-zero on a static binary: capture its words rather than trust its status.
ldd_says="$(ldd "$out_dir/minion-agent" 2>&1 || true)"
if [[ "$ldd_says" != *"not a dynamic executable"* ]]; then
    echo "build-agent: $out_dir/minion-agent is not static: $ldd_says" >&2
    exit 1
fi
echo "build-agent: static, $(stat -c %s "$out_dir/minion-agent") bytes" >&2
realpath "$out_dir/minion-agent"
