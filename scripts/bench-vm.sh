#!/usr/bin/env bash
# Guest channel benchmarks under the real libvirtd (TCG here):
#   1. domain start → agent Ready, median of RUNS (default 10), per image variant;
#   2. artifact throughput over the channel: the guest writes a SIZE_MB (default 200) MB file into
#      ${artifactsdir}; the host times first ArtifactChunk → ArtifactEnd (tar + framing + unpacking).
#   scripts/bench-vm.sh [variants...]   (default: minimal standard)
# Env: RUNS, SIZE_MB, MEMORY_MIB (1024), VCPUS (1), AGENT (prebuilt static agent; default: build it).
# For scale: a raw virtio-serial port here moves ~355 MB/s guest→host (issue #3).
set -euo pipefail
cd "$(dirname "$0")/.."
URI=qemu:///system
RUNS=${RUNS:-10}
SIZE_MB=${SIZE_MB:-200}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(minimal standard)

agent=${AGENT:-$(scripts/build-agent.sh)}
cargo build --release --locked -p minion-channel --example guest_session >&2
client=target/release/examples/guest_session

mkdir -p /var/lib/minion
work=$(mktemp -d /var/lib/minion/bench-vm.XXXXXX)
chmod 0755 "$work"
dom="minion-bench-$$"
cleanup() {
    virsh -c "$URI" destroy "$dom" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Seed volume: the agent binary plus NoCloud metadata, as provisioning writes it.
mkdir "$work/seed"
cp "$agent" "$work/seed/minion-agent"
printf 'instance-id: bench-%s\nlocal-hostname: minion\n' "$$" > "$work/seed/meta-data"
printf '#cloud-config\n{}\n' > "$work/seed/user-data"
genisoimage -quiet -V cidata -J -r -o "$work/seed.iso" "$work/seed"

# Tasks: a one-step formula for Ready timing, and one that writes the big artifact.
mkdir -p "$work/task-ready" "$work/task-big"
cat > "$work/task-ready/runtask.yml" <<'YAML'
name: bench-ready
desc: the smallest job
maintainer: minion
actions:
  - name: hello
    shell:
      - echo ready-bench
YAML
cat > "$work/task-big/runtask.yml" <<YAML
name: bench-artifact
desc: one big artifact
maintainer: minion
actions:
  - name: write artifact
    shell:
      - dd if=/dev/zero of=\${artifactsdir}/big.bin bs=1M count=$SIZE_MB status=none
YAML

mf() { python3 -c "import json,sys; v=json.load(open('$1/manifest.json'))['$2']; print('' if v is None else v)"; }

domain_xml() {
    local img=$1 kernel initrd cmdline
    kernel=$(mf "$img" kernel); initrd=$(mf "$img" initrd); cmdline=$(mf "$img" cmdline)
    cat <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>${MEMORY_MIB:-1024}</memory>
  <vcpu>${VCPUS:-1}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$img/$kernel</kernel>
$( [ -n "$initrd" ] && echo "    <initrd>$img/$initrd</initrd>" )
    <cmdline>$cmdline</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='$work/overlay.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/seed.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='$work/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='$work/channel.sock'/>
      <target type='virtio' name='org.minion.agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}

# One job in a fresh VM; leaves the client's key=value output in $work/out.
run_job() {
    local img=$1 task=$2 t0 deadline
    virsh -c "$URI" destroy "$dom" >/dev/null 2>&1 || true
    rm -rf "$work/overlay.qcow2" "$work/console.log" "$work/channel.sock" "$work/artifacts"
    qemu-img create -q -f qcow2 -b "$img/disk.qcow2" -F qcow2 "$work/overlay.qcow2"
    domain_xml "$img" > "$work/domain.xml"
    "$client" "$work/channel.sock" "$task" "$work/artifacts" > "$work/out" 2> "$work/client.log" &
    local client_pid=$!
    t0=$(date +%s.%N)
    virsh -c "$URI" create "$work/domain.xml" >/dev/null
    if ! wait "$client_pid"; then
        echo "bench-vm: session failed; client log and console tail:" >&2
        tail -n 20 "$work/client.log" >&2
        tail -n 30 "$work/console.log" >&2
        return 1
    fi
    echo "t0=$t0" >> "$work/out"
    # The guest powers itself off; wait for libvirt to reap it (bounded), then make sure.
    deadline=$(( $(date +%s) + 60 ))
    while virsh -c "$URI" domstate "$dom" >/dev/null 2>&1 && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.1
    done
    virsh -c "$URI" destroy "$dom" >/dev/null 2>&1 || true
}

val() { sed -n "s/^$1=//p" "$work/out"; }

for v in "${variants[@]}"; do
    img=/var/cache/minion/images/$v
    [ -f "$img/manifest.json" ] || { echo "bench-vm: no image $img (make image)" >&2; exit 1; }
    times=()
    for i in $(seq "$RUNS"); do
        run_job "$img" "$work/task-ready"
        t=$(awk -v a="$(val t0)" -v b="$(val ready_unix)" 'BEGIN { printf "%.3f", b - a }')
        echo "$v run $i: domain start → Ready ${t}s" >&2
        times+=("$t")
    done
    median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    echo "ready $v: median ${median}s of $RUNS (min $(printf '%s\n' "${times[@]}" | sort -n | head -1)s, max $(printf '%s\n' "${times[@]}" | sort -n | tail -1)s)"
done

img=/var/cache/minion/images/${variants[0]}
run_job "$img" "$work/task-big"
bytes=$(val artifact_bytes); secs=$(val artifact_secs); mbs=$(val artifact_mb_s)
got=$(stat -c %s "$work/artifacts/task_output/big.bin")
[ "$got" -eq $(( SIZE_MB * 1024 * 1024 )) ] || { echo "bench-vm: artifact has $got bytes" >&2; exit 1; }
echo "artifact ${variants[0]}: ${SIZE_MB} MiB file, ${bytes} tar bytes in ${secs}s = ${mbs} MB/s ($(awk -v m="$mbs" 'BEGIN { printf "%.0f", m / 355 * 100 }')% of the 355 MB/s raw port)"
