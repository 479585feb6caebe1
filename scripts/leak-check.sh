#!/usr/bin/env bash
# Fails if any Minion domain is left in libvirt: a leak is a bug.
set -euo pipefail
uri=${LIBVIRT_DEFAULT_URI:-qemu:///system}
left=$(virsh -c "$uri" list --all --name | grep '^minion-' || true)
if [[ -n "$left" ]]; then
    echo "leaked domains:" $left >&2
    exit 1
fi
echo "no Minion domain left on $uri"
