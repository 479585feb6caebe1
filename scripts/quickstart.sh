#!/usr/bin/env bash
# `make quickstart`: from a fresh Debian 12 (root) to an example task run in a fresh VM through miniond.
# Idempotent: packages, images (cached by recipe hash) and builds are reused on the second run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }
die() { echo "quickstart: $*" >&2; exit 1; }

STATE_DIR=${MINION_STATE_DIR:-/var/lib/minion}
export MINION_SOCKET=${MINION_SOCKET:-/run/minion/miniond.sock}
SOCKET=$MINION_SOCKET
CONFIG=${MINION_CONFIG:-/etc/minion/miniond.toml}

step "host setup (Debian packages, libvirtd)"
scripts/setup-host.sh
step "guest images"
images/build.sh all
step "agent, binaries, examples, units (make install)"
scripts/install.sh

if [ ! -f "$CONFIG" ]; then
    step "config $CONFIG"
    install -d "$(dirname "$CONFIG")"
    # The example's defaults are the installed paths; the installed examples are the one place
    # local task repos may come from.
    sed 's|^local_repo_roots = \[\]$|local_repo_roots = ["/usr/local/share/minion/examples"]|' \
        daemon/miniond.example.toml > "$CONFIG.new"
    grep -q '^local_repo_roots = \["/usr/local/share/minion/examples"\]$' "$CONFIG.new" \
        || die "daemon/miniond.example.toml has no 'local_repo_roots = []' line to fill in"
    install -m 0644 "$CONFIG.new" "$CONFIG" && rm -f "$CONFIG.new"
elif ! grep -q '^\[submissions\]' "$CONFIG"; then
    # A config from before submissions were bounded: it would refuse the example's local repo.
    step "config $CONFIG: local task repos from the installed examples"
    printf '\n[submissions]\nlocal_repo_roots = ["/usr/local/share/minion/examples"]\n' >> "$CONFIG"
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
minion submit /usr/local/share/minion/examples/python-check -i xchat-0.5-1.fc20 -t koji_build --pool minimal --follow

step "the pipeline: RabbitMQ, minion-trigger, a koji build message → a job"
scripts/rabbitmq-start.sh
TRIGGER_CONFIG=/etc/minion/minion-trigger.toml
[ -f "$TRIGGER_CONFIG" ] || install -m 0644 trigger/minion-trigger.example.toml "$TRIGGER_CONFIG"
[ -f /etc/minion/trigger_rules.yml ] || install -m 0644 trigger/examples/trigger_rules.yml /etc/minion/trigger_rules.yml
minion-trigger --config "$TRIGGER_CONFIG" check /etc/minion/trigger_rules.yml
if ! pgrep -f "minion-trigger --config $TRIGGER_CONFIG run" >/dev/null; then
    nohup minion-trigger --config "$TRIGGER_CONFIG" run >>"$STATE_DIR/minion-trigger.log" 2>&1 &
    sleep 2
fi
# A fresh message id each time, so a second quick start makes a new job.
msg=$(mktemp)
python3 - "$msg" <<'PY'
import json, sys, uuid
m = json.load(open("trigger/examples/messages/koji-build-complete.json"))
m["id"] = str(uuid.uuid4())
json.dump(m, open(sys.argv[1], "w"))
PY
minion-trigger --config "$TRIGGER_CONFIG" publish "$msg"
rm -f "$msg"
for _ in $(seq 100); do
    id=$(minion job list --item foo-1.0-1.fc40 --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j[-1]["id"] if j else "")')
    [ -n "$id" ] && break
    sleep 0.3
done
[ -n "${id:-}" ] || { echo "quickstart: no job from the message; see $STATE_DIR/minion-trigger.log" >&2; exit 1; }
minion job logs "$id" --follow
minion job show "$id"
