#!/usr/bin/env bash
# The dashboard and /metrics with N jobs in the store (default 10,000; issue: the jobs page p99
# and the scrape time), beside the same requests on an empty store in the same run. The jobs are
# made by the store benchmark (all QUEUED on a drained pool: no VM starts, and every one is in
# the "not final" index /metrics reads, its worst case). Each figure: p50/p99 of 200 GETs over
# one keep-alive connection, from Python's http.client (no process start in the timing).
set -euo pipefail
cd "$(dirname "$0")/.."
export N="${N:-10000}"
cargo build --release --quiet -p miniond
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
WORK="$(mktemp -d /tmp/bench-dashboard-XXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    scripts/forget-volumes.sh "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/full/state" "$WORK/empty/state"
BENCH_STORE_DIR="$WORK/full/state" THREADS=2 cargo test --release --quiet -p miniond store_bench \
    -- --ignored --nocapture > /dev/null 2>&1

start() { # NAME PORT
    cat > "$WORK/$1/miniond.toml" <<TOML
state_dir = "$WORK/$1/state"
agent_binary = "/bin/true"
listen = "$WORK/$1/miniond.sock"
listen_http = "127.0.0.1:$2"
[pools.bench]
image = "minimal"
drained = true
TOML
    "$BIN/miniond" --config "$WORK/$1/miniond.toml" 2> "$WORK/$1/miniond.log" &
    PIDS+=($!)
    for _ in $(seq 300); do [[ -S "$WORK/$1/miniond.sock" ]] && break; sleep 0.1; done
    [[ -S "$WORK/$1/miniond.sock" ]] || { cat "$WORK/$1/miniond.log" >&2; exit 1; }
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FULL=$(port); start full "$FULL"
EMPTY=$(port); start empty "$EMPTY"

python3 - "$FULL" "$EMPTY" <<'PY'
import http.client, os, sys, time
full, empty = int(sys.argv[1]), int(sys.argv[2])
n = os.environ["N"]
job = "00000042-0000-4000-8000-000000000000"

def measure(port, path, runs=200):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    us, size = [], 0
    for _ in range(runs + 5):
        t0 = time.perf_counter_ns()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        us.append((time.perf_counter_ns() - t0) // 1000)
        if r.status != 200:
            sys.exit(f"bench-dashboard: GET {path} on {port}: {r.status} {body[:200]!r}")
        size = len(body)
    us = sorted(us[5:])
    p = lambda q: us[min(len(us) - 1, int(len(us) * q))] / 1000
    return p(0.5), p(0.99), size

rows = [
    ("jobs page (/), newest 50", "/", "/"),
    ("jobs page filtered by state+pool (indexed)", "/?state=QUEUED&pool=bench", "/?state=QUEUED&pool=bench"),
    ("jobs page filtered by submitter, no match (scans to the limit)", "/?submitter=nobody", "/?submitter=nobody"),
    ("an item's history", "/items/pkg-42-1.fc40", "/items/pkg-42-1.fc40"),
    ("a job's page", f"/jobs/{job}", None),
    ("/metrics scrape (classic text)", "/metrics", "/metrics"),
]
print(f"dashboard bench: {n} jobs vs an empty store, p50 / p99 ms of 200 GETs")
for name, path, base in rows:
    f50, f99, size = measure(full, path)
    if base:
        e50, e99, _ = measure(empty, base)
        print(f"dashboard bench: {name}: {n} jobs p50 {f50:.2f} p99 {f99:.2f} ms ({size} B); empty p50 {e50:.2f} p99 {e99:.2f} ms")
    else:
        print(f"dashboard bench: {name}: {n} jobs p50 {f50:.2f} p99 {f99:.2f} ms ({size} B)")
PY
