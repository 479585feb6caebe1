#!/usr/bin/env bash
# Fails if any Minion domain, or any VM's volume, is left in this machine's libvirt: a leak is a
# bug. (Snapshots and images' copies in a storage pool are kept on purpose.)
set -euo pipefail
uri=${LIBVIRT_DEFAULT_URI:-qemu:///system}
left=$(virsh -c "$uri" list --all --name | grep '^minion-' || true)
if [[ -n "$left" ]]; then
    echo "leaked domains:" $left >&2
    exit 1
fi
# A VM's volumes: minion-<owner tag>-<vm id>.{overlay.qcow2,seed.iso,memory}.
for pool in minion minion-test; do
    virsh -c "$uri" pool-info "$pool" > /dev/null 2>&1 || continue
    virsh -c "$uri" pool-refresh "$pool" > /dev/null
    vols=$(virsh -c "$uri" vol-list "$pool" | awk 'NR > 2 && $1 ~ /^minion-[0-9a-f]{12}-/ { print $1 }')
    if [[ -n "$vols" ]]; then
        echo "leaked volumes in storage pool $pool:" $vols >&2
        exit 1
    fi
done
echo "no Minion domain or VM volume left on $uri"
