#!/usr/bin/env bash
# Start virtlogd and libvirtd by hand (no systemd on our machines) if they are not running, and wait
# until the qemu:///system driver answers. Idempotent; safe to call from tests. Needs root.
# The first API call after a cold start takes ~8 s (capability probing of the qemu binary).
set -euo pipefail
URI="${LIBVIRT_DEFAULT_URI:-qemu:///system}"
TIMEOUT="${LIBVIRT_START_TIMEOUT:-60}"

running() { # pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

[ "$(id -u)" = 0 ] || { echo "libvirt-start: must run as root" >&2; exit 1; }
mkdir -p /run/libvirt /var/log/libvirt

if ! running /run/virtlogd.pid; then
    echo "libvirt-start: starting virtlogd"
    virtlogd -d
fi
if ! running /run/libvirtd.pid; then
    echo "libvirt-start: starting libvirtd"
    # Under tini as a child subreaper: libvirtd double-forks qemu, and its destroy waits until the
    # killed qemu is reaped. Orphans otherwise go to PID 1, and an init that reaps them slowly (this
    # machine kind's PID 1 takes ~1.6 s) makes every destroy that slow; tini reaps at once.
    # Its stderr goes to a log: D-Bus/dnsmasq/DMI complaints are harmless here and only noise.
    if command -v tini >/dev/null; then
        setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd-start.log 2>&1 &
        for _ in $(seq 100); do running /run/libvirtd.pid && break; sleep 0.1; done
    else
        libvirtd -d >>/var/log/libvirt/libvirtd-start.log 2>&1
    fi
fi

start=$SECONDS
until virsh -c "$URI" version >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
        echo "libvirt-start: $URI did not answer within ${TIMEOUT}s; last error:" >&2
        virsh -c "$URI" version >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "libvirt-start: $URI answers ($(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/.*: *//'))"
