#!/usr/bin/env bash
# `minion instance create` to the agent's Ready versus `testcloud create` to its "Successfully
# booted", side by side in one run, on the same image and accelerator: the `cloud` recipe's disk
# (an MBR, syslinux, Debian's cloud kernel, systemd, cloud-init, DHCP on any NIC: booted like a
# distribution's cloud image), N runs each, medians and ratios.
#  - Minion, booted (`[instances] start = "boot"`) and restored from the shape's snapshot
#    (`start = "snapshot"`; one create first builds it, not counted).
#  - testcloud 0.12 from PyPI (a venv in /opt/testcloud-venv), with what it needs here: libvirt's
#    `qemu:///session` (no `default` network on this machine), its /dev/kvm check answering
#    "absent" where KVM does not work (vmx/svm missing: it would write type='kvm'), and one more
#    runcmd in its user-data taking the address off the NIC libvirt adds (both of its user-mode
#    NICs get 10.0.2.15, and its probe is forwarded to the other one). One create first (copying
#    the image into its store), not counted.
# Needs: libvirtd, `make image` (cloud), scripts/build-agent.sh, python3-venv, acl, genisoimage.
# Env: IMAGE ("cloud"), N (5), MEMORY_MIB (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-cloud}"
N="${N:-5}"
MEMORY_MIB="${MEMORY_MIB:-1024}"
AGENT="${MINION_AGENT_BINARY:-$PWD/target/agent/minion-agent}"
IMAGES_DIR="${MINION_IMAGES_DIR:-/var/cache/minion/images}"
DISK="$IMAGES_DIR/$IMAGE/disk.qcow2"
[[ -x "$AGENT" ]] || { echo "bench-instances: $AGENT missing (scripts/build-agent.sh)" >&2; exit 1; }
[[ -f "$DISK" ]] || { echo "bench-instances: $DISK missing (make image)" >&2; exit 1; }

cargo build --release --quiet -p miniond -p minion-cli
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

VENV=/opt/testcloud-venv
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import testcloud, libvirt' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q testcloud==0.12.0 libvirt-python
fi

mkdir -p /var/lib/minion
WORK="$(mktemp -d /var/lib/minion/bench-inst-XXXX)"
chmod 755 "$WORK"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    for d in $(virsh -c qemu:///session list --all --name 2>/dev/null | grep '^tc-bench-' || true); do
        virsh -c qemu:///session destroy "$d" >/dev/null 2>&1 || true
        virsh -c qemu:///session undefine "$d" >/dev/null 2>&1 || true
    done
    scripts/forget-volumes.sh "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# minion_runs START: N creates (after a warm-up one with snapshots); prints "client_ms ready_ms" lines.
minion_runs() {
    local start="$1" dir="$WORK/minion-$1"
    mkdir -p "$dir"
    local sock="$dir/miniond.sock"
    cat > "$dir/miniond.toml" <<TOML
state_dir = "$dir/state"
images_dir = "$IMAGES_DIR"
agent_binary = "$AGENT"
listen = "$sock"
log_format = "json"
[pools.unused]
image = "$IMAGE"
max_vms = 1
start = "boot"
[instances]
max = 2
per_owner = 2
memory_mib = $MEMORY_MIB
start = "$start"
TOML
    "$BIN/miniond" --config "$dir/miniond.toml" 2> "$dir/miniond.log" &
    PID=$!
    for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
    export MINION_SOCKET="$sock"
    if [[ "$start" == snapshot ]]; then
        "$BIN/minion" instance create "$IMAGE" --name warm >/dev/null
        for _ in $(seq 3000); do
            compgen -G "$dir/state/snapshots/*/snapshot.json" >/dev/null && break
            sleep 0.1
        done
        compgen -G "$dir/state/snapshots/*/snapshot.json" >/dev/null \
            || { echo "bench-instances: no snapshot: $(tail -3 "$dir/miniond.log")" >&2; exit 1; }
        "$BIN/minion" instance remove warm >/dev/null
    fi
    for i in $(seq "$N"); do
        local t0 t1 out
        t0=$(ms)
        out=$("$BIN/minion" instance create "$IMAGE" --name "bench-$i" --json)
        t1=$(ms)
        echo "$((t1 - t0)) $(jq -r .ready_ms <<<"$out") $(jq -r .restored <<<"$out")"
        "$BIN/minion" instance remove "bench-$i" >/dev/null
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

# testcloud_runs: N creates after a warm-up one; prints "ms" lines (create → "Successfully booted").
testcloud_runs() {
    local home="$WORK/tc-home" data="$WORK/tc-data"
    mkdir -p "$home/.config/testcloud" "$data/instances" "$data/backingstores"
    cat > "$home/.config/testcloud/settings.py" <<PY
DATA_DIR = "$data"
STORE_DIR = "$data/backingstores"
CONSOLE_LOG_DIR = "$data"
RAM = $MEMORY_MIB
USER_DATA = """#cloud-config
ssh_pwauth: true
password: \${password}
chpasswd:
  expire: false
users:
  - default
  - name: cloud-user
    plain_text_passwd: \${password}
    sudo: ALL=(ALL) NOPASSWD:ALL
    lock_passwd: false
runcmd:
\${runcommands}
- ['sh', '-c', 'ip addr flush dev enp1s0 || :']
"""
PY
    cat > "$WORK/tc.py" <<'PY'
import os, sys
if os.environ.get("TC_NO_KVM") == "1":
    _exists = os.path.exists
    os.path.exists = lambda p: False if p == "/dev/kvm" else _exists(p)
sys.argv[0] = "testcloud"
from testcloud.cli import main
main()
PY
    local no_kvm=0
    grep -qE 'vmx|svm' /proc/cpuinfo || no_kvm=1
    tc() { HOME="$home" TC_NO_KVM="$no_kvm" "$VENV/bin/python" "$WORK/tc.py" -c qemu:///session "$@"; }
    for i in $(seq 0 "$N"); do
        local t0 t1
        t0=$(ms)
        tc create --name "tc-bench-$i" --ram "$MEMORY_MIB" --timeout 600 --no-graphic "file://$DISK" \
            > "$WORK/tc-$i.log" 2>&1 || true
        t1=$(ms)
        grep -q "Successfully booted" "$WORK/tc-$i.log" \
            || { echo "bench-instances: testcloud did not boot: $(tail -3 "$WORK/tc-$i.log")" >&2; exit 1; }
        [[ "$i" == 0 ]] || echo "$((t1 - t0))"
        tc remove --force "tc-bench-$i" >/dev/null 2>&1 || true
    done
}

echo "image $IMAGE ($DISK), N=$N, ${MEMORY_MIB} MiB, 1 vCPU; accelerator: $(grep -qE 'vmx|svm' /proc/cpuinfo && echo KVM || echo TCG)"
minion_runs boot > "$WORK/minion-boot.txt"
minion_runs snapshot > "$WORK/minion-snapshot.txt"
testcloud_runs > "$WORK/testcloud.txt"

mb=$(cut -d' ' -f1 "$WORK/minion-boot.txt" | median)
ms_=$(cut -d' ' -f1 "$WORK/minion-snapshot.txt" | median)
tcm=$(median < "$WORK/testcloud.txt")
restored=$(grep -c ' true$' "$WORK/minion-snapshot.txt" || true)
echo
echo "runs (ms): minion boot: $(cut -d' ' -f1 "$WORK/minion-boot.txt" | tr '\n' ' ')"
echo "           minion snapshot: $(cut -d' ' -f1 "$WORK/minion-snapshot.txt" | tr '\n' ' ') ($restored of $N restored)"
echo "           testcloud: $(tr '\n' ' ' < "$WORK/testcloud.txt")"
printf '%-34s %12s\n' "" "median"
printf '%-34s %10s ms\n' "testcloud create → booted" "$tcm"
printf '%-34s %10s ms   (%.1f× faster)\n' "minion instance create (boot)" "$mb" "$(awk -v a="$tcm" -v b="$mb" 'BEGIN{print a/b}')"
printf '%-34s %10s ms   (%.1f× faster)\n' "minion instance create (snapshot)" "$ms_" "$(awk -v a="$tcm" -v b="$ms_" 'BEGIN{print a/b}')"
