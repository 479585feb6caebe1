#!/usr/bin/env bash
# miniond benchmark on the `minimal` image (real libvirtd, real VMs):
#  1. submit → first formula action running, median of N cold jobs run one after another, split into
#     daemon time (submit handling + queue + provisioning: overlay, seed, XML) and libvirt/qemu/guest
#     time (domain start → agent Ready, Ready → first action running: task hand-over + formula start);
#  2. sustained throughput: M jobs submitted at once to a pool of 2 VMs, jobs/minute.
# MIN_READY=k (default 0 = every VM boots after its job is picked up) keeps k pre-booted VMs parked
# (pool `min_ready`); in part 1 each submit then waits until the pool reports k ready (parked) VMs,
# so every measured job finds one.
# Needs: libvirtd, `make image`, scripts/build-agent.sh. Env: N (20), M (20), MIN_READY (0),
# MINION_AGENT_BINARY.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20}"
M="${M:-20}"
MIN_READY="${MIN_READY:-0}"
AGENT="${MINION_AGENT_BINARY:-$PWD/target/agent/minion-agent}"
[[ -x "$AGENT" ]] || { echo "bench-daemon: $AGENT missing (scripts/build-agent.sh)" >&2; exit 1; }

cargo build --release --quiet -p miniond -p minion-cli
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

mkdir -p /var/lib/minion
WORK="$(mktemp -d /var/lib/minion/bench-XXXX)"
chmod 755 "$WORK"
SOCK="$WORK/miniond.sock"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    scripts/forget-volumes.sh "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/task"
cat > "$WORK/task/runtask.yml" <<'YML'
name: bench
desc: one trivial shell step
maintainer: minion
actions:
  - name: first
    shell:
      - echo bench
YML

cat > "$WORK/miniond.toml" <<TOML
state_dir = "$WORK/state"
agent_binary = "$AGENT"
listen = "$SOCK"
log_format = "json"
[submissions]
local_repo_roots = ["$WORK"]
[pools.minimal]
image = "minimal"
max_vms = 2
min_ready = $MIN_READY
vcpus = 1
memory_mib = 512
default_timeout_seconds = 120
TOML

"$BIN/miniond" --config "$WORK/miniond.toml" 2> "$WORK/miniond.log" &
PID=$!
for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
export MINION_SOCKET="$SOCK"
minion() { "$BIN/minion" "$@"; }

# Until the pool reports at least $1 parked (ready) VMs (at most 5 minutes).
wait_ready() {
    for _ in $(seq 3000); do
        r=$(minion pool list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['ready'])")
        (( r >= $1 )) && return 0
        sleep 0.1
    done
    echo "bench-daemon: the pool never reported $1 ready VMs (see $WORK/miniond.log)" >&2
    exit 1
}

if (( MIN_READY > 0 )); then
    echo "== $N jobs on pre-booted VMs (min_ready = $MIN_READY), one at a time, each submitted once the pool reports $MIN_READY ready (submit → first formula action running)"
else
    echo "== $N cold jobs, one at a time (submit → first formula action running)"
fi
: > "$WORK/submit_ms"
for i in $(seq "$N"); do
    (( MIN_READY > 0 )) && wait_ready "$MIN_READY"
    t0=$(date +%s%N)
    id=$(minion submit "$WORK/task" -i "bench-$i" -t koji_build)
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 )) >> "$WORK/submit_ms"
    minion job logs "$id" --follow > /dev/null 2>&1 || true
done

python3 - "$WORK/miniond.log" "$WORK/submit_ms" <<'PY'
import json, statistics, sys
rows, submit, prov, prebooted = [], [], [], []
for line in open(sys.argv[1]):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    f = ev.get("fields", {})
    if f.get("message") == "first formula action running":
        rows.append(f)
    elif f.get("message") == "provisioned":
        prov.append(f)
    elif f.get("message") == "pre-booted VM ready":
        prebooted.append(f)
    elif f.get("message") == "queued":
        submit.append(float(f["submit_ms"]))
cli = [int(x) for x in open(sys.argv[2]) if x.strip()]
med = lambda k: statistics.median(r[k] for r in rows)
if not rows:
    sys.exit("no job reached its first action: see the daemon log")
q, p, b, a, t = (med(k) for k in ("queued_ms", "provisioning_ms", "booting_ms", "ready_to_action_ms", "total_ms"))
s = statistics.median(submit)
print(f"jobs measured:                {len(rows)}")
print(f"submit handling (daemon):     {s:8.1f} ms   (CLI round trip incl. process start {statistics.median(cli)} ms)")
print(f"queue → picked up (daemon):   {q:8.1f} ms")
print(f"provisioning (daemon):        {p:8.1f} ms   overlay + seed ISO + domain XML (+ image, libvirt connection)")
if prov:
    pm = lambda k: statistics.median(float(r[k]) for r in prov)
    print(f"  of which overlay (template copy): {pm('overlay_ms'):.1f} ms, seed ISO (in-process): {pm('seed_ms'):.1f} ms, XML: {pm('render_ms'):.2f} ms")
print(f"domain start → agent Ready:   {b:8.1f} ms   libvirt + qemu + guest boot (pre-booted VM: already Ready)")
if prebooted:
    bm = lambda k: statistics.median(float(r[k]) for r in prebooted)
    print(f"  pre-booting in the background ({len(prebooted)} VMs): provisioning {bm('provision_ms'):.1f} ms, domain start → Ready {bm('boot_ms'):.1f} ms (median)")
print(f"Ready → first action running: {a:8.1f} ms   task hand-over + formula start in the guest")
print(f"daemon time:                  {s + q + p:8.1f} ms")
print(f"qemu/guest time:              {b + a:8.1f} ms")
print(f"submit → first action:        {s + t:8.1f} ms (median of per-job totals {t:.1f} + submit)")
PY

echo "== $M jobs at once on a pool of 2"
t0=$(date +%s%N)
ids=()
for i in $(seq "$M"); do ids+=("$(minion submit "$WORK/task" -i "burst-$i" -t koji_build)"); done
for id in "${ids[@]}"; do minion job logs "$id" --follow > /dev/null 2>&1 || true; done
t1=$(date +%s%N)
python3 -c "import sys; s=($t1-$t0)/1e9; print(f'{$M} jobs in {s:.1f} s: {$M*60/s:.1f} jobs/minute on $(nproc) cores')"
minion job list --json | python3 -c "import json,sys; from collections import Counter; print('states:', dict(Counter(j['state'] for j in json.load(sys.stdin))))"
