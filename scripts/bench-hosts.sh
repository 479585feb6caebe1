#!/usr/bin/env bash
# A pool over a [hosts] libvirt host (a fake host: scripts/fake-hosts.sh, reached only as
# qemu+tcp through its own network namespace) vs a pool on this machine's libvirtd, side by side
# in one run, same image, VMs booted:
#  1. per-job controller overhead: submit → first action (queued, provisioning, boot) and first
#     action → final state, medians of N one-at-a-time jobs;
#  2. throughput: M trivial jobs at once on 2 VM slots, jobs/minute;
#  3. the guest channel: a job writes a 200 MiB artifact (urandom); COLLECTING → final state is
#     its transfer over virDomainOpenChannel (remote) vs the local unix socket, MiB/s, median of A.
# remote-snapshot: the same at start = snapshot (the host's snapshot as volumes there). Local
# pools run on this machine as host `local`, through the same storage-volume backend.
# With OLD_BIN (a directory holding an older build's miniond and minion), the local pool is also
# measured with it, in the same run, at its default start (snapshot) and with start = boot: the
# single-host setup's numbers before and after.
# Needs root, libvirtd, `make image`, scripts/build-agent.sh, iproute2, tini. Env: IMAGE
# (minimal), N (10), M (20), A (3), OLD_BIN, MODES (a subset of the mode names below), KEEP=1
# (keep the work dir with every daemon's log), REPEAT (1: rounds, every other one in MODES's
# reverse order; the report gives each number's mean and standard deviation over the rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-minimal}"
N="${N:-10}"
M="${M:-20}"
A="${A:-3}"
AGENT="${MINION_AGENT_BINARY:-$PWD/target/agent/minion-agent}"
[[ -x "$AGENT" ]] || { echo "bench-hosts: $AGENT missing (scripts/build-agent.sh)" >&2; exit 1; }

cargo build --release --quiet -p miniond -p minion-cli
NEW_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

mkdir -p /var/lib/minion
WORK="$(mktemp -d /var/lib/minion/bh-XXXX)"
chmod 755 "$WORK"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    scripts/fake-hosts.sh down > /dev/null 2>&1 || true
    scripts/forget-volumes.sh "$WORK" || true
    if [[ -n "${KEEP:-}" ]]; then echo "bench-hosts: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
scripts/fake-hosts.sh down > /dev/null
scripts/fake-hosts.sh up 1 > /dev/null

mkdir -p "$WORK/task" "$WORK/big"
cat > "$WORK/task/runtask.yml" <<'YML'
name: bench
desc: one trivial shell step
maintainer: minion
actions:
  - name: first
    shell:
      - echo bench
YML
cat > "$WORK/big/runtask.yml" <<'YML'
name: big-artifact
desc: a 200 MiB artifact through the guest channel
maintainer: minion
actions:
  - name: write
    shell:
      - head -c 209715200 /dev/urandom > ${artifactsdir}/big.bin
YML

# CPU seconds ×100 (clock ticks) spent so far, as "miniond libvirtd qemu virtlogd": miniond's and
# this machine's libvirtd's and virtlogd's own, and the qemus' (orphaned to libvirtd's tini, a
# subreaper, and counted there once reaped). A fake host's processes are not counted.
cpu_ticks() {
    local lv vl tini
    lv=$(cat /run/libvirtd.pid); vl=$(cat /run/virtlogd.pid)
    tini=$(awk '{print $4}' "/proc/$lv/stat")
    echo "$(awk '{print $14+$15}' "/proc/$PID/stat") $(awk '{print $14+$15+$16+$17}' "/proc/$lv/stat") $(awk '{print $16+$17}' "/proc/$tini/stat") $(awk '{print $14+$15}' "/proc/$vl/stat")"
}

# run_mode NAME BIN POOL_TOML: one daemon; writes $WORK/NAME.json.
run_mode() {
    # Short: the VMs' channel sockets live under it (107 bytes at most).
    RUN=$((RUN + 1))
    local name="$1" bin="$2" pool="$3" dir="$WORK/$RUN"
    mkdir -p "$dir"
    local sock="$dir/miniond.sock"
    cat > "$dir/miniond.toml" <<TOML
state_dir = "$dir/state"
agent_binary = "$AGENT"
listen = "$sock"
log_format = "json"
keep_free_mib = 64
[submissions]
local_repo_roots = ["$WORK"]
[pools.bench]
image = "$IMAGE"
vcpus = 1
memory_mib = 512
default_timeout_seconds = 600
$pool
TOML
    "$bin/miniond" --config "$dir/miniond.toml" 2> "$dir/miniond.log" &
    PID=$!
    for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
    export MINION_SOCKET="$sock"
    if grep -q '^hosts' "$dir/miniond.toml"; then
        "$bin/minion" image push "$IMAGE" --all > /dev/null
    fi
    # The first VM start validates the image or makes a snapshot: not part of what is measured.
    local warm; warm=$("$bin/minion" submit "$WORK/task" -i warm -t koji_build)
    "$bin/minion" job logs "$warm" --follow > /dev/null 2>&1 || true
    if ! grep -q 'start = "boot"' "$dir/miniond.toml"; then
        # Local or on a host: the daemon says when the snapshot is whole.
        for _ in $(seq 600); do grep -q 'snapshot ready' "$dir/miniond.log" && break; sleep 0.1; done
    fi
    echo "== $name: $N jobs one at a time" >&2
    : > "$dir/ids"
    for i in $(seq "$N"); do
        id=$("$bin/minion" submit "$WORK/task" -i "seq-$i" -t koji_build)
        echo "$id" >> "$dir/ids"
        "$bin/minion" job logs "$id" --follow > /dev/null 2>&1 || true
    done
    echo "== $name: $M jobs at once" >&2
    local t0 t1 ids=() cpu0 cpu1
    cpu0=$(cpu_ticks)
    t0=$(date +%s%N)
    for i in $(seq "$M"); do ids+=("$("$bin/minion" submit "$WORK/task" -i "burst-$i" -t koji_build)"); done
    for id in "${ids[@]}"; do "$bin/minion" job logs "$id" --follow > /dev/null 2>&1 || true; done
    t1=$(date +%s%N)
    # The last VMs' teardown (and spares) finish after their jobs' end.
    sleep 2
    cpu1=$(cpu_ticks)
    : > "$dir/big-ids"
    if [[ "$name" != old-* ]]; then
        echo "== $name: $A jobs with a 200 MiB artifact" >&2
        for i in $(seq "$A"); do
            id=$("$bin/minion" submit "$WORK/big" -i "big-$i" -t koji_build)
            echo "$id" >> "$dir/big-ids"
            "$bin/minion" job logs "$id" --follow > /dev/null 2>&1 || true
            rm -rf "$dir/state/artifacts/$id"
        done
    fi
    sleep 3
    for id in $(cat "$dir/ids" "$dir/big-ids"); do
        "$bin/minion" job show "$id" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'
    done > "$dir/jobs.jsonl"
    local states; states=$("$bin/minion" job list --json | python3 -c "import json,sys; from collections import Counter; print(json.dumps(dict(Counter(j['state'] for j in json.load(sys.stdin)))))")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    python3 - "$dir" "$name" "$M" "$(( t1 - t0 ))" "$states" "$cpu0" "$cpu1" > "$WORK/$name.json" <<'PY'
import json, statistics, sys
d, name, m, wall_ns, states, cpu0, cpu1 = sys.argv[1:]
cpu = {k: (b - a) * 10 / int(m) for k, a, b in zip(
    ["miniond", "libvirtd", "qemu", "virtlogd"], map(int, cpu0.split()), map(int, cpu1.split()))}
ids = [l.strip() for l in open(f"{d}/ids") if l.strip()]
big = [l.strip() for l in open(f"{d}/big-ids") if l.strip()]
first, submit = {}, {}
for line in open(f"{d}/miniond.log"):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    f = ev.get("fields", {})
    if f.get("message") == "first formula action running":
        first[f["job"]] = f
    elif f.get("message") == "queued":
        submit[f["job"]] = float(f["submit_ms"])
jobs = {}
for line in open(f"{d}/jobs.jsonl"):
    if line.strip():
        j = json.loads(line)
        jobs[j["id"]] = j
def at(j, state):
    ev = [e for e in j["events"] if e["state"] == state]
    return ev[-1]["at_unix_ms"] if ev else None
to_action, final_after, boot = [], [], []
for i in ids:
    if i in first:
        to_action.append(submit.get(i, 0.0) + first[i]["total_ms"])
        boot.append(first[i]["booting_ms"])
        fin = at(jobs[i], "FINISHED")
        if fin:
            final_after.append(fin - first[i]["at_unix_ms"])
transfer = []
for i in big:
    j = jobs[i]
    c, f = at(j, "COLLECTING"), at(j, "FINISHED")
    if j["state"] == "FINISHED" and c and f:
        transfer.append(200 / ((f - c) / 1000))
med = lambda v: statistics.median(v) if v else None
print(json.dumps({
    "name": name, "n": len(to_action),
    "submit_to_action_ms": med(to_action), "booting_ms": med(boot),
    "final_after_action_ms": med(final_after),
    "jobs_per_min": int(m) * 60 / (int(wall_ns) / 1e9),
    "artifact_mib_s": med(transfer), "artifact_runs": len(transfer),
    "cpu_ms_per_burst_job": cpu,
    "states": json.loads(states),
}))
PY
}

LOCAL_BOOT='libvirt_uri = "qemu:///system"
max_vms = 2
start = "boot"'
LOCAL_SNAP='libvirt_uri = "qemu:///system"
max_vms = 2'
REMOTE='max_vms = 2
start = "boot"
hosts = ["mhost1"]
[hosts.mhost1]
uri = "qemu+tcp://10.77.1.2/system"
max_vms = 2'

REMOTE_SNAP='max_vms = 2
hosts = ["mhost1"]
[hosts.mhost1]
uri = "qemu+tcp://10.77.1.2/system"
max_vms = 2'

modes=()
RUN=0
# The modes, in MODES's order when given (so a second run can swap old and new).
ALL="local-snapshot local-boot remote-boot remote-snapshot"
[[ -n "${OLD_BIN:-}" ]] && ALL="old-local-snapshot local-snapshot old-local-boot local-boot remote-boot remote-snapshot"
ORDER=(${MODES:-$ALL})
# REPEAT rounds, every other one in the reverse order: on this machine whichever build runs
# second tends to do better, and one run's difference is within its noise.
for round in $(seq "${REPEAT:-1}"); do
    this=("${ORDER[@]}")
    if (( round % 2 == 0 )); then
        this=(); for (( i=${#ORDER[@]}-1; i>=0; i-- )); do this+=("${ORDER[i]}"); done
    fi
    for m in "${this[@]}"; do
        case "$m" in
            old-local-snapshot) run_mode "$m" "${OLD_BIN:?old-* modes need OLD_BIN}" "$LOCAL_SNAP" ;;
            old-local-boot) run_mode "$m" "${OLD_BIN:?old-* modes need OLD_BIN}" "$LOCAL_BOOT" ;;
            local-snapshot) run_mode "$m" "$NEW_BIN" "$LOCAL_SNAP" ;;
            local-boot) run_mode "$m" "$NEW_BIN" "$LOCAL_BOOT" ;;
            remote-boot) run_mode "$m" "$NEW_BIN" "$REMOTE" ;;
            remote-snapshot) run_mode "$m" "$NEW_BIN" "$REMOTE_SNAP" ;;
            *) echo "bench-hosts: no mode $m (modes: $ALL)" >&2; exit 2 ;;
        esac
        mv "$WORK/$m.json" "$WORK/$m.$round.json"
        modes+=("$m.$round")
    done
done

python3 - "${ORDER[@]}" -- "${modes[@]/#/$WORK/}" <<'PY'
import json, statistics, sys
args = sys.argv[1:]
order, paths = args[:args.index("--")], args[args.index("--") + 1:]
runs = [json.load(open(p + ".json")) for p in paths]
for r in runs:
    for k, v in r["cpu_ms_per_burst_job"].items():
        r[f"cpu_{k}"] = v
rounds = len(runs) // len(order)
print(f"\n== {max(r['n'] for r in runs)} sequential jobs, then a burst, then 200 MiB artifacts "
      f"(image and VM shape alike); {rounds} round(s), {'alternating order, ' if rounds > 1 else ''}"
      "mean (± standard deviation) over the rounds")
def agg(name, k):
    v = [r[k] for r in runs if r["name"] == name and r.get(k) is not None]
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else None)
print(f"{'':40s}" + "".join(f"{c:>22s}" for c in order))
def row(label, k, fmt):
    cells = []
    for name in order:
        m, sd = agg(name, k)
        cell = "-" if m is None else fmt.format(m) + ("" if sd is None else " ±" + fmt.format(sd))
        cells.append(cell.rjust(22))
    print(f"{label:40s}" + "".join(cells))
row("submit → first action, median (ms)", "submit_to_action_ms", "{:.1f}")
row("  of which booting, median (ms)", "booting_ms", "{:.1f}")
row("first action → final state, median (ms)", "final_after_action_ms", "{:.1f}")
row("throughput, 2 VM slots (jobs/min)", "jobs_per_min", "{:.1f}")
for k in ["miniond", "libvirtd", "qemu", "virtlogd"]:
    row(f"  CPU per burst job, {k} (ms)", f"cpu_{k}", "{:.0f}")
row("200 MiB artifact (MiB/s, median)", "artifact_mib_s", "{:.1f}")
if rounds > 1:
    print("jobs/min per round: " + "; ".join(
        f"{name} " + ", ".join(f"{r['jobs_per_min']:.1f}" for r in runs if r["name"] == name)
        for name in order))
bad = [f"{r['name']}: {r['states']}" for r in runs if set(r["states"]) != {"FINISHED"}]
if bad:
    print("jobs not FINISHED: " + "; ".join(bad))
PY
