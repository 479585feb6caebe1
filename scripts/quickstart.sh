#!/usr/bin/env bash
# `make quickstart`: from a fresh Debian 12 (root) to an example task run in a fresh VM through miniond.
# Idempotent: packages, images (cached by recipe hash) and builds are reused on the second run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }

STATE_DIR=${MINION_STATE_DIR:-/var/lib/minion}
export MINION_SOCKET=${MINION_SOCKET:-/run/minion/miniond.sock}
SOCKET=$MINION_SOCKET
CONFIG=${MINION_CONFIG:-/etc/minion/miniond.toml}

step "host setup (Debian packages, libvirtd)"
scripts/setup-host.sh
step "guest images"
images/build.sh all
step "static agent"
agent=$(scripts/build-agent.sh | tail -n 1)
step "binaries"
cargo build --release --locked -p minion-cli -p miniond
install -m 0755 target/release/minion target/release/miniond /usr/local/bin/
install -D -m 0755 "$agent" /usr/local/lib/minion/minion-agent

if [ ! -f "$CONFIG" ]; then
    step "config $CONFIG"
    install -d "$(dirname "$CONFIG")"
    # The example's defaults are the installed paths.
    install -m 0644 daemon/miniond.example.toml "$CONFIG"
fi

if ! minion pool list >/dev/null 2>&1; then
    step "starting miniond (log: $STATE_DIR/miniond.log)"
    install -d "$STATE_DIR" "$(dirname "$SOCKET")"
    nohup miniond --config "$CONFIG" >>"$STATE_DIR/miniond.log" 2>&1 &
    for _ in $(seq 50); do
        minion pool list >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
minion pool list

step "example task in a fresh VM"
minion submit "$PWD/examples/python-check" -i xchat-0.5-1.fc20 -t koji_build --pool minimal --follow
