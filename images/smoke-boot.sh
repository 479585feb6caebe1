#!/usr/bin/env bash
# Boot an image under the real libvirtd with a throwaway seed whose `minion-agent` is a stub that
# prints a marker on the console and powers off; measure domain start → marker and power-off → gone.
#   images/smoke-boot.sh <variant> [runs=3] [machine=q35]
# Env: MEMORY_MIB (512), VCPUS (1), CMDLINE_EXTRA (appended to the manifest's cmdline),
#      AGENT=<path> (boot a real agent binary instead of the stub: the script then speaks guest.proto
#      on the channel up to the agent's Ready, measures domain start → Ready, and destroys the domain).
# Uses the same domain shape provisioning renders (see images/README.md "Domain XML that works").
set -euo pipefail
IMAGES_DIR="$(cd "$(dirname "$0")" && pwd)"
name="${1:?usage: $0 <variant> [runs] [machine]}"
runs="${2:-3}"
machine="${3:-q35}"
URI=qemu:///system
IMG=/var/cache/minion/images/$name
[ -f "$IMG/manifest.json" ] || { echo "smoke-boot: no image $IMG (make image)" >&2; exit 1; }
mf() { python3 -c "import json,sys; v=json.load(open('$IMG/manifest.json'))['$1']; print('' if v is None else v)"; }
kernel=$(mf kernel); initrd=$(mf initrd); cmdline="$(mf cmdline) ${CMDLINE_EXTRA:-}"
MARKER="MINION-SMOKE-MARKER-$$"

work=$(mktemp -d /var/lib/minion/smoke.XXXXXX)
chmod 0755 "$work"
dom="minion-smoke-$$"
cleanup() {
    virsh -c "$URI" destroy "$dom" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/seed"
cat > "$work/seed/minion-agent" <<STUB
#!/bin/sh
echo "$MARKER" > /dev/console
if [ \$\$ = 1 ]; then
    [ -x /bin/busybox ] && /bin/busybox poweroff -f
    python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'
else
    systemctl poweroff --no-block
fi
sleep 60
STUB
chmod 0755 "$work/seed/minion-agent"
printf 'instance-id: smoke-%s\nlocal-hostname: minion\n' "$$" > "$work/seed/meta-data"
printf '#cloud-config\n{}\n' > "$work/seed/user-data"
genisoimage -quiet -V cidata -J -r -o "$work/seed.iso" "$work/seed"
[ -z "${AGENT:-}" ] || { cp "$AGENT" "$work/seed/minion-agent"; genisoimage -quiet -V cidata -J -r -o "$work/seed.iso" "$work/seed"; }

xml() {
    cat <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>${MEMORY_MIB:-512}</memory>
  <vcpu>${VCPUS:-1}</vcpu>
  <os>
    <type arch='x86_64' machine='$machine'>hvm</type>
    <kernel>$IMG/$kernel</kernel>
$( [ -n "$initrd" ] && echo "    <initrd>$IMG/$initrd</initrd>" )
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
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/seed.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <serial type='file'>
      <source path='$work/console.log'/>
      <target port='0'/>
    </serial>
    <controller type='virtio-serial' index='0'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </controller>
    <channel type='unix'>
      <source mode='bind' path='$work/channel.sock'/>
      <target type='virtio' name='org.minion.agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </rng>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}

# Timing in Python: a tight poll of the console file (5 ms) and of libvirt's pid file, so no virsh
# process start sits inside a measured interval.
time_one_boot() {
    python3 - "$URI" "$dom" "$work/domain.xml" "$work/console.log" "$MARKER" "${AGENT:+agent}" <<'PY'
import os, subprocess, sys, time
uri, dom, xml, console, marker, agent = sys.argv[1:7]
pidfile = f"/run/libvirt/qemu/{dom}.pid"
channel = os.path.join(os.path.dirname(console), "channel.sock")


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def await_ready(t0):
    """The host's side of guest.proto up to Ready: send Hello, read the first GuestFrame.
    Returns seconds since t0 at Ready, or raises."""
    import socket
    host = b"smoke-boot"
    hello = (b"\x08" + varint(1) + b"\x10" + varint(1000) + b"\x18" + varint(60000)
             + b"\x22" + varint(len(host)) + host)
    frame = b"\x0a" + varint(len(hello)) + hello
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(channel)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() - t0 > 120:
                raise
            time.sleep(0.005)
    s.sendall(varint(len(frame)) + frame)
    s.settimeout(120)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("channel closed before Ready")
        buf += chunk
        n = shift = i = 0
        while i < len(buf):
            n |= (buf[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not buf[i - 1] & 0x80:
                break
        else:
            continue
        if len(buf) >= i + n:
            body = buf[i:i + n]
            if not body.startswith(b"\x0a"):
                raise RuntimeError(f"first guest frame is not Ready: {body[:16]!r}")
            return time.monotonic() - t0


t0 = time.monotonic()
subprocess.run(["virsh", "-q", "-c", uri, "create", xml], check=True, stdout=subprocess.DEVNULL)
t_created = time.monotonic()
if agent:
    try:
        t_ready = await_ready(t0)
    except Exception as e:  # noqa: BLE001 - reported, then the domain is destroyed by the caller
        print(f"NO-READY {e}")
        sys.exit(0)
    # Gone already is fine: the agent may power off by itself once the host goes quiet.
    subprocess.run(["virsh", "-q", "-c", uri, "destroy", dom], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    print(f"{t_created - t0:.2f} {t_ready:.2f} {t_ready - (t_created - t0):.2f} 0")
    sys.exit(0)
t_marker = None
deadline = t0 + 120
while time.monotonic() < deadline:
    if t_marker is None:
        try:
            with open(console, "rb") as f:
                if marker.encode() in f.read():
                    t_marker = time.monotonic()
        except FileNotFoundError:
            pass
    if not os.path.exists(pidfile):
        break
    time.sleep(0.005)
t_gone = time.monotonic()
if os.path.exists(pidfile):
    print("STILL-RUNNING")
    sys.exit(0)
if t_marker is None and not agent:
    print("NO-MARKER")
    sys.exit(0)
end = t_marker if t_marker is not None else t_gone
print(f"{t_created - t0:.2f} {end - t0:.2f} {end - t_created:.2f} {t_gone - end:.2f}")
PY
}

results=()
for i in $(seq "$runs"); do
    rm -f "$work/overlay.qcow2" "$work/console.log"
    qemu-img create -q -f qcow2 -b "$IMG/disk.qcow2" -F qcow2 "$work/overlay.qcow2"
    xml > "$work/domain.xml"
    out=$(time_one_boot)
    case "$out" in
        STILL-RUNNING)
            echo "smoke-boot: run $i: domain still running after 120 s; console tail:" >&2
            tail -n 30 "$work/console.log" >&2
            exit 1 ;;
        NO-READY*)
            echo "smoke-boot: run $i: no Ready from the agent ($out); console:" >&2
            cat "$work/console.log" >&2
            exit 1 ;;
        NO-MARKER)
            echo "smoke-boot: run $i: the domain ended without the marker; console:" >&2
            cat "$work/console.log" >&2
            exit 1 ;;
    esac
    read -r t_create t_marker t_after_create t_gone <<<"$out"
    if [ -n "${AGENT:-}" ]; then
        echo "run $i: create ${t_create}s, start→Ready ${t_marker}s (after create returned ${t_after_create}s)"
    else
        echo "run $i: create ${t_create}s, start→marker ${t_marker}s (after create returned ${t_after_create}s), marker→gone ${t_gone}s"
    fi
    results+=("$t_marker")
done
[ -n "${KEEP_CONSOLE:-}" ] && cp "$work/console.log" "$KEEP_CONSOLE"
what=marker; [ -z "${AGENT:-}" ] || what=Ready
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "$name ($machine, ${MEMORY_MIB:-512} MiB, ${VCPUS:-1} vCPU, load $(cut -d' ' -f1 /proc/loadavg)): start→${what} median ${median}s of $runs"
