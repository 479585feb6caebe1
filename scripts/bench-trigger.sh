#!/usr/bin/env bash
# The pipeline's front, measured (release builds, real RabbitMQ, real miniond):
#  1. messages/s from the broker into durably queued jobs: N koji build COMPLETE messages matching
#     one rule with one task are published first (publisher confirms), then `minion-trigger run`
#     starts and the clock runs until the queue is drained (a message is acked only after its job
#     is durably queued in miniond, so drained = every job queued). The pool is drained: jobs are
#     not run.
#  2. discover per repo: a dist-git repo with 5 nested tasks, cold (new mirror cache) and warm,
#     median of R runs each (`minion-trigger dry-run`, which is what `run` does per message).
# Needs: rabbitmq-server (scripts/rabbitmq-start.sh). Env: N (2000), R (10).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2000}"
R="${R:-10}"
scripts/rabbitmq-start.sh >/dev/null
cargo build --release --quiet -p miniond -p minion-cli -p minion-trigger
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

mkdir -p /var/lib/minion
WORK="$(mktemp -d /var/lib/minion/bench-trigger-XXXX)"
QUEUE="minion-bench-$$"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rabbitmqctl -q delete_queue "$QUEUE" >/dev/null 2>&1 || true
    scripts/forget-volumes.sh "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ms() { date +%s%3N; }

mkdir -p "$WORK/task"
printf 'name: bench\ninput:\n  args: [koji_build]\nactions:\n  - dummy: {result: PASSED}\n' > "$WORK/task/runtask.yml"
cat > "$WORK/miniond.toml" <<TOML
state_dir = "$WORK/state"
listen = "$WORK/miniond.sock"
log_format = "json"
[submissions]
local_repo_roots = ["$WORK"]
[pools.bench]
image = "minimal"
drained = true
TOML
"$BIN/miniond" --config "$WORK/miniond.toml" 2> "$WORK/miniond.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -S "$WORK/miniond.sock" ]] && break; sleep 0.1; done

PREFIX="org.minion-bench$$"
cat > "$WORK/rules.yml" <<'YML'
- when: {message_type: KojiBuildPackageCompleted}
  do: [{tasks: [bench]}]
YML
cat > "$WORK/trigger.toml" <<TOML
topic_prefix = "$PREFIX"
rules = "$WORK/rules.yml"
cache_dir = "$WORK/cache"
[amqp]
queue = "$QUEUE"
routing_keys = ["$PREFIX.prod.buildsys.build.state.change"]
[miniond]
socket = "$WORK/miniond.sock"
[tasks]
bench = "$WORK/task"
TOML
sed "s/org.fedoraproject.prod/$PREFIX.prod/" trigger/examples/messages/koji-build-complete.json > "$WORK/msg.json"

# The queue and its binding exist before anything is published: a first run declares them.
"$BIN/minion-trigger" --config "$WORK/trigger.toml" run 2> "$WORK/trigger-setup.log" &
TP=$!
for _ in $(seq 100); do rabbitmqctl -q list_queues name | grep -qx "$QUEUE" && break; sleep 0.1; done
kill "$TP"; wait "$TP" 2>/dev/null || true

"$BIN/minion-trigger" publish --url "amqp://127.0.0.1:5672/%2f" --count "$N" "$WORK/msg.json"
t0=$(ms)
"$BIN/minion-trigger" --config "$WORK/trigger.toml" run 2> "$WORK/trigger.log" &
PIDS+=($!)
while :; do
    read -r ready unacked < <(rabbitmqctl -q list_queues name messages_ready messages_unacknowledged | awk -v q="$QUEUE" '$1 == q { print $2, $3 }')
    [[ "$ready" == 0 && "$unacked" == 0 ]] && break
    sleep 0.05
done
t1=$(ms)
jobs=$(MINION_SOCKET="$WORK/miniond.sock" "$BIN/minion" job list --limit 1000000 --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
python3 - "$N" "$jobs" "$t0" "$t1" <<'PY'
import sys
n, jobs, t0, t1 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
secs = (t1 - t0) / 1000
print(f"broker → durably queued jobs: {n} messages, {jobs} jobs queued in {secs:.2f} s = {n / secs:.0f} messages/s (target ≥ 500/s)")
PY
python3 - "$WORK/miniond.log" <<'PY'
import json, statistics, sys
ms = [float(json.loads(l)["fields"]["submit_ms"]) for l in open(sys.argv[1]) if '"submit_ms"' in l]
print(f"  of which miniond's SubmitJob (fetch + validate + durable write): median {statistics.median(ms):.2f} ms, p99 {sorted(ms)[int(len(ms) * 0.99) - 1]:.2f} ms")
PY
[[ "$jobs" == "$N" ]] || { echo "bench-trigger: $jobs jobs for $N messages" >&2; exit 1; }

# 2. discover.
DG="$WORK/distgit/rpms/foo.git"
mkdir -p "$DG"
git -C "$DG" init -q -b main
echo "Name: foo" > "$DG/foo.spec"
for i in 1 2 3 4 5; do
    mkdir -p "$DG/tests/t$i"
    printf 'name: t%s\ninput:\n  args: [koji_build]\nactions:\n  - dummy: {result: PASSED}\n' "$i" > "$DG/tests/t$i/runtask.yml"
done
git -C "$DG" add . && git -C "$DG" -c user.name=b -c user.email=b@b commit -qm tasks
cat > "$WORK/discover.yml" <<YML
- when: {message_type: KojiBuildPackageCompleted}
  do: [{discover: {repo: 'file://$WORK/distgit/rpms/\${name}.git', branch: '\${distgit_branch}', fallback_branch: main, recursive: true}}]
YML
run_dry() { "$BIN/minion-trigger" dry-run trigger/examples/messages/koji-build-complete.json --rules "$WORK/discover.yml" --cache-dir "$1" > "$WORK/dry.out" 2>/dev/null; }
cold=(); warm=()
for i in $(seq "$R"); do
    c="$WORK/dcache-$i"
    a=$(ms); run_dry "$c"; b=$(ms); cold+=($((b - a)))
    a=$(ms); run_dry "$c"; b=$(ms); warm+=($((b - a)))
done
grep -q "5 jobs" "$WORK/dry.out" || { echo "bench-trigger: discover found: $(cat "$WORK/dry.out")" >&2; exit 1; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "discover (5 tasks, file:// repo, whole dry-run process): cold $(median "${cold[@]}") ms, warm mirror $(median "${warm[@]}") ms (medians of $R)"
