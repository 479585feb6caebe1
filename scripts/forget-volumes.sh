#!/usr/bin/env bash
# forget-volumes.sh DIR: deletes, from this machine's storage pool (POOL, default `minion`), the
# volumes of every miniond whose state dir is DIR or a `state` directory under it (its VMs'
# `minion-<tag>-…` and its snapshots' `minion-snap-<tag>-…`; the tag is the first 12 hex digits of
# the state dir path's sha256). For throwaway daemons (benchmarks) whose state dir is about to go:
# their snapshots would otherwise stay in the pool, owned by nobody.
set -euo pipefail
dir="${1:?usage: forget-volumes.sh DIR}"
pool="${POOL:-minion}"
uri="${LIBVIRT_DEFAULT_URI:-qemu:///system}"
virsh -c "$uri" pool-info "$pool" > /dev/null 2>&1 || exit 0
virsh -c "$uri" pool-refresh "$pool" > /dev/null
vols=$(virsh -c "$uri" vol-list "$pool" | awk 'NR > 2 { print $1 }')
while read -r state; do
    [[ -n "$state" ]] || continue
    tag=$(printf %s "$state" | sha256sum | cut -c1-12)
    for v in $vols; do
        case "$v" in
            "minion-$tag-"* | "minion-snap-$tag-"*) virsh -c "$uri" -q vol-delete "$v" --pool "$pool" > /dev/null ;;
        esac
    done
done < <({ [[ -d "$dir" ]] && echo "$(cd "$dir" && pwd)"; find "$dir" -maxdepth 3 -type d -name state 2>/dev/null; } | sort -u)
