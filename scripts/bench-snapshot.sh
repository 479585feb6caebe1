#!/usr/bin/env bash
# Booted vs snapshot-restored VMs, side by side in one run (real libvirtd, real VMs), per image:
#  1. submit → first formula action running, median of N jobs run one after another on a pool with
#     no pre-booted VMs (every VM is booted, or restored, after its job is picked up);
#  2. submit → final state of the same one-`echo` jobs, above their first action (the teardown's
#     share of the critical path);
#  3. sustained throughput: M trivial jobs submitted at once to a pool of 2, jobs/minute, host
#     CPU-seconds per job (all of the host: qemu, libvirtd, miniond), and VMs left afterwards;
#  4. disk used by the snapshot, and the time to make it.
# Needs: libvirtd, `make image`, scripts/build-agent.sh. Env: IMAGES ("minimal"), N (20), M (40),
# MINION_AGENT_BINARY, IMAGES_DIR (the catalog; miniond's default when unset: an older build of an
# image can be measured against the current one through a directory that links it by name).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES="${IMAGES:-minimal}"
N="${N:-20}"
M="${M:-40}"
AGENT="${MINION_AGENT_BINARY:-$PWD/target/agent/minion-agent}"
[[ -x "$AGENT" ]] || { echo "bench-snapshot: $AGENT missing (scripts/build-agent.sh)" >&2; exit 1; }

cargo build --release --quiet -p miniond -p minion-cli
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

mkdir -p /var/lib/minion
WORK="$(mktemp -d /var/lib/minion/bench-XXXX)"
chmod 755 "$WORK"
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

# Non-idle jiffies of the whole host so far.
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# run_mode IMAGE START: one daemon, parts 1-4; writes $WORK/<image>-<start>.json.
run_mode() {
    local image="$1" start="$2" dir="$WORK/$1-$2"
    mkdir -p "$dir"
    local sock="$dir/miniond.sock"
    cat > "$dir/miniond.toml" <<TOML
state_dir = "$dir/state"
agent_binary = "$AGENT"
listen = "$sock"
log_format = "json"
${IMAGES_DIR:+images_dir = \"$IMAGES_DIR\"}
[submissions]
local_repo_roots = ["$WORK"]
[pools.bench]
image = "$image"
max_vms = 2
vcpus = 1
memory_mib = 512
default_timeout_seconds = 300
start = "$start"
TOML
    "$BIN/miniond" --config "$dir/miniond.toml" 2> "$dir/miniond.log" &
    PID=$!
    for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
    export MINION_SOCKET="$sock"
    local t_snap=0
    if [[ "$start" == snapshot ]]; then
        local t0; t0=$(date +%s%N)
        for _ in $(seq 3000); do
            compgen -G "$dir/state/snapshots/*/snapshot.json" > /dev/null && break
            if grep -q "making a snapshot failed" "$dir/miniond.log"; then
                echo "bench-snapshot: $(grep "making a snapshot failed" "$dir/miniond.log")" >&2
                exit 1
            fi
            sleep 0.1
        done
        compgen -G "$dir/state/snapshots/*/snapshot.json" > /dev/null \
            || { echo "bench-snapshot: no snapshot of $image after 5 minutes (see $dir/miniond.log)" >&2; exit 1; }
        t_snap=$(( ($(date +%s%N) - t0) / 1000000 ))
    fi
    echo "== $image, start = $start: $N jobs one at a time" >&2
    : > "$dir/ids"
    for i in $(seq "$N"); do
        id=$("$BIN/minion" submit "$WORK/task" -i "seq-$i" -t koji_build)
        echo "$id" >> "$dir/ids"
        "$BIN/minion" job logs "$id" --follow > /dev/null 2>&1 || true
    done
    # Each job's final state is written before its VM is gone: let the last teardown finish.
    sleep 3
    for id in $(cat "$dir/ids"); do
        "$BIN/minion" job show "$id" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'
    done > "$dir/jobs.jsonl"

    local cpu0 cpu1 t0 t1
    echo "== $image, start = $start: $M jobs at once on a pool of 2" >&2
    cpu0=$(busy_jiffies); t0=$(date +%s%N)
    local ids=()
    for i in $(seq "$M"); do ids+=("$("$BIN/minion" submit "$WORK/task" -i "burst-$i" -t koji_build)"); done
    for id in "${ids[@]}"; do "$BIN/minion" job logs "$id" --follow > /dev/null 2>&1 || true; done
    t1=$(date +%s%N); cpu1=$(busy_jiffies)
    sleep 3
    local states; states=$("$BIN/minion" job list --json | python3 -c "import json,sys; from collections import Counter; print(json.dumps(dict(Counter(j['state'] for j in json.load(sys.stdin)))))")
    # Leaks: this daemon's domains still in libvirt, VM directories still on disk.
    local leaked_domains=0 leaked_dirs=0
    if [[ -d "$dir/state/vms" ]]; then
        leaked_dirs=$(find "$dir/state/vms" -mindepth 1 -maxdepth 1 | wc -l)
    fi
    leaked_domains=$(virsh -q list --all --name | grep -c . || true)
    local snap_apparent=0 snap_alloc=0
    if [[ "$start" == snapshot ]]; then
        snap_apparent=$(du -sb --apparent-size "$dir/state/snapshots" | cut -f1)
        snap_alloc=$(( $(du -sk "$dir/state/snapshots" | cut -f1) * 1024 ))
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    python3 - "$dir" "$image" "$start" "$M" "$(( t1 - t0 ))" "$(( cpu1 - cpu0 ))" "$(getconf CLK_TCK)" \
        "$states" "$leaked_domains" "$leaked_dirs" "$snap_apparent" "$snap_alloc" "$t_snap" > "$WORK/$image-$start.json" <<'PY'
import json, statistics, sys
d, image, start, m, wall_ns, jiffies, tck, states, ldom, ldir, sapp, salloc, tsnap = sys.argv[1:]
ids = [l.strip() for l in open(f"{d}/ids") if l.strip()]
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
    line = line.strip()
    if line:
        j = json.loads(line)
        jobs[j["id"]] = j
to_action, final_after, restored = [], [], 0
for i in ids:
    if i not in first:
        continue
    to_action.append(submit.get(i, 0.0) + first[i]["total_ms"])
    ev = [e for e in jobs[i]["events"] if e["state"] == "FINISHED"]
    if ev:
        final_after.append(ev[-1]["at_unix_ms"] - first[i]["at_unix_ms"])
    restored += any(e.get("message") == "restored from a snapshot" for e in jobs[i]["events"])
wall = int(wall_ns) / 1e9
print(json.dumps({
    "image": image, "start": start, "n": len(to_action), "restored": restored,
    "submit_to_action_ms": statistics.median(to_action) if to_action else None,
    "final_after_action_ms": statistics.median(final_after) if final_after else None,
    "burst_jobs": int(m), "burst_s": wall, "jobs_per_min": int(m) * 60 / wall,
    "cpu_s_per_job": int(jiffies) / int(tck) / int(m),
    "states": json.loads(states), "leaked_domains": int(ldom), "leaked_dirs": int(ldir),
    "snapshot_apparent_bytes": int(sapp), "snapshot_alloc_bytes": int(salloc), "snapshot_ready_ms": int(tsnap),
}))
PY
}

for image in $IMAGES; do
    for start in boot snapshot; do
        run_mode "$image" "$start"
    done
    python3 - "$WORK/$image-boot.json" "$WORK/$image-snapshot.json" <<'PY'
import json, sys
b, s = (json.load(open(p)) for p in sys.argv[1:])
print(f"\n== {b['image']}: booted vs snapshot-restored VMs ({b['n']} sequential jobs each, then {b['burst_jobs']} at once on a pool of 2; {s['restored']} of {s['n']} sequential jobs restored)")
# The factor is how much better restored VMs do: less time or CPU, more jobs per minute.
def row(name, k, fmt="{:10.1f}", more_is_better=False):
    better = (s[k] / b[k] if b[k] else 0) if more_is_better else (b[k] / s[k] if s[k] else 0)
    print(f"{name:38s}" + fmt.format(b[k]) + fmt.format(s[k]) + f"   ×{better:.2f}")
print(f"{'':38s}{'boot':>10s}{'snapshot':>10s}")
row("submit → first action, median (ms)", "submit_to_action_ms")
row("first action → final state, median (ms)", "final_after_action_ms")
row("throughput (jobs/min)", "jobs_per_min", more_is_better=True)
row("host CPU-seconds per job", "cpu_s_per_job", "{:10.2f}")
print(f"{'states after the burst':38s}{json.dumps(b['states'])}  {json.dumps(s['states'])}")
print(f"{'VMs left (domains, dirs)':38s}{b['leaked_domains']}, {b['leaked_dirs']}  /  {s['leaked_domains']}, {s['leaked_dirs']}")
print(f"snapshot: {s['snapshot_alloc_bytes'] / 1048576:.1f} MiB on disk ({s['snapshot_apparent_bytes'] / 1048576:.1f} MiB apparent), ready {s['snapshot_ready_ms'] / 1000:.1f} s after the daemon started")
PY
done
