#!/usr/bin/env bash
# Build (or reuse) Minion's guest images: images/build.sh all|minimal|standard|cloud [...]
#
# Each variant is a recipe (images/<name>/recipe.sh + the files it lists). The image lands in
#   /var/cache/minion/images/<name>-<recipehash>/{disk.qcow2,manifest.json,kernel,initrd}
# and /var/cache/minion/images/<name> points at the current one. An unchanged recipe is not rebuilt.
# Built from Debian's packages only (debootstrap; .debs cached in /var/cache/minion/debs), no loop
# mounts (mkfs.ext4 -d + qemu-img convert), so it also works in a container. Needs root.
set -euo pipefail
IMAGES_DIR="$(cd "$(dirname "$0")" && pwd)"
. "$IMAGES_DIR/lib/common.sh"

VARIANTS="minimal standard cloud"
usage() { echo "usage: $0 all|$(echo "$VARIANTS" | tr ' ' '|') [...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
targets=()
for a in "$@"; do
    case "$a" in
        all) targets+=($VARIANTS) ;;
        -h|--help) usage ;;
        *) [[ " $VARIANTS " == *" $a "* ]] || { echo "images: unknown variant '$a' (known: $VARIANTS)" >&2; exit 2; }
           targets+=("$a") ;;
    esac
done
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, file ownership in the image)"
for tool in debootstrap mkfs.ext4 qemu-img sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup-host.sh"
done
mkdir -p "$IMAGES_CACHE" "$DEBS_CACHE" "$KERNEL_CACHE"

# Files every variant's image depends on, besides its own recipe files.
COMMON_RECIPE="build.sh lib/common.sh"

# Summary lines printed at the end: name, result, seconds, sizes.
summary=()

build_variant() {
    local name="$1" t_start hash dir files f
    t_start=$(date +%s.%N)
    # Recipe variables/functions, reset per variant.
    unset -f recipe_rootfs recipe_boot recipe_disk
    AGENT_START= FS_FEATURES= DISK_SIZE= CMDLINE= RECIPE_FILES= KERNEL= INITRD=
    . "$IMAGES_DIR/$name/recipe.sh"
    files=()
    for f in $COMMON_RECIPE $RECIPE_FILES; do files+=("$IMAGES_DIR/$f"); done
    hash=$(hash_files "${files[@]}")
    dir="$IMAGES_CACHE/$name-$hash"

    if [ -f "$dir/manifest.json" ]; then
        ln -sfn "$name-$hash" "$IMAGES_CACHE/$name"
        stage "cached: $name → $dir"
        summary+=("$(printf '%-9s cached   %7s  disk %s (virtual %s)' "$name" "-" \
            "$(du -h "$dir/disk.qcow2" | cut -f1)" "$DISK_SIZE")")
        return 0
    fi

    # One build of a variant at a time (two `make image` runs, or a build and a test): the second one
    # waits, then finds the image cached or builds its own recipe.
    exec {lock_fd}>"$IMAGES_CACHE/.lock-$name"
    flock "$lock_fd"
    if [ -f "$dir/manifest.json" ]; then
        exec {lock_fd}>&-
        build_variant "$name"
        return 0
    fi

    stage "$name: building recipe $hash into $dir"
    WORK="$IMAGES_CACHE/.build-$name-$hash"
    # A half-built tree from an interrupted run may still have chroot mounts: drop them first.
    if [ -d "$WORK" ]; then
        grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l || true
        rm -rf "$WORK"
    fi
    mkdir -p "$WORK/rootfs" "$WORK/out"
    local root="$WORK/rootfs" out="$WORK/out"

    stage "$name: root filesystem (debootstrap $DEBIAN_SUITE; debs cached in $DEBS_CACHE)"
    recipe_rootfs "$root"
    stage "$name: kernel"
    recipe_boot "$root" "$out"
    stage "$name: trimming docs, man pages, locales"
    trim_rootfs "$root"

    if declare -F recipe_disk >/dev/null; then
        stage "$name: partitioned disk ($DISK_SIZE, $(du -sh "$root" | cut -f1) of files)"
        recipe_disk "$root" "$WORK/disk.raw"
    else
        stage "$name: mkfs.ext4 -d ($DISK_SIZE, $(du -sh "$root" | cut -f1) of files)"
        truncate -s "$DISK_SIZE" "$WORK/disk.raw"
        # Inode tables and journal initialised now (zeros, which qemu-img drops), so the guest's
        # kernel has no lazy-init thread writing into the overlay while the job runs.
        mkfs.ext4 -q -F -L minion-root -E lazy_itable_init=0,lazy_journal_init=0 $FS_FEATURES \
            -d "$root" "$WORK/disk.raw" >"$WORK/mkfs.log" 2>&1 \
            || { cat "$WORK/mkfs.log" >&2; die "mkfs.ext4 failed"; }
    fi
    stage "$name: qemu-img convert -O qcow2"
    qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$out/disk.qcow2"
    rm -f "$WORK/disk.raw"

    stage "$name: manifest"
    write_manifest "$name" "$hash" "$out"
    rm -rf "$dir"
    mv "$out" "$dir"
    ln -sfn "$name-$hash" "$IMAGES_CACHE/$name"
    rm -rf "$WORK"
    prune_old "$name" "$hash"
    local secs
    secs=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0fs", b - a }')
    stage "$name: done → $dir ($secs)"
    summary+=("$(printf '%-9s built    %7s  disk %s (virtual %s), files %s' "$name" "$secs" \
        "$(du -h "$dir/disk.qcow2" | cut -f1)" "$DISK_SIZE" "$(du -sh "$dir" | cut -f1)")")
    exec {lock_fd}>&-
}

# After a build: drop the variant's older images except the newest one before this (a job that started
# just before may still use it as its overlay's backing file), and work trees that interrupted builds
# of other recipes left behind. Builds of one variant are serialised (flock), so none of these is in use
# by a build.
prune_old() {
    local name="$1" hash="$2" d n=0
    for d in "$IMAGES_CACHE/.build-$name-"*; do
        [ -d "$d" ] || continue
        grep -o " $d/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l || true
        rm -rf "$d"
    done
    while IFS= read -r d; do
        d=${d%/}
        [ "$d" = "$IMAGES_CACHE/$name-$hash" ] && continue
        n=$((n + 1))
        [ "$n" -le 1 ] && continue
        stage "$name: removing old image $d"
        rm -rf "$d"
    done < <(ls -dt "$IMAGES_CACHE/$name"-*/ 2>/dev/null)
}

# Docs, man pages and translations are never read in a disposable VM; they cost image size and
# qcow2 reads. Keep copyright files (licences) and the C/English locale data.
trim_rootfs() {
    local root="$1"
    find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/lintian" \
        "$root/usr/share/linda" "$root/var/cache/man"
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
        ! -name 'C.*' ! -name 'en' -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$root/var/log/"*.log "$root/var/log/apt" "$root/tmp/"* "$root/var/tmp/"*
    rm -f "$root/var/cache/ldconfig/aux-cache"
}

write_manifest() {
    local name="$1" hash="$2" out="$3" vsize fsize sha
    vsize=$(qemu-img info --output=json "$out/disk.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    fsize=$(stat -c %s "$out/disk.qcow2")
    sha=$(sha256sum "$out/disk.qcow2" | cut -c1-64)
    NAME="$name" HASH="$hash" VSIZE="$vsize" FSIZE="$fsize" SHA="$sha" KERNEL="$KERNEL" \
    INITRD="$INITRD" CMDLINE="$CMDLINE" AGENT_START="$AGENT_START" python3 - "$out/manifest.json" <<'PY'
import datetime, json, os, sys
e = os.environ
m = {
    "name": e["NAME"],
    "arch": "x86_64",
    "format": "qcow2",
    "disk": "disk.qcow2",
    "virtual_size": int(e["VSIZE"]),
    "file_size": int(e["FSIZE"]),
    "sha256": e["SHA"],
    "kernel": e["KERNEL"] or None,
    "initrd": e["INITRD"] or None,
    "cmdline": e["CMDLINE"],
    "recipe_hash": e["HASH"],
    "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "agent_start": e["AGENT_START"],
}
with open(sys.argv[1], "w") as f:
    json.dump(m, f, indent=2)
    f.write("\n")
PY
}

for v in "${targets[@]}"; do
    build_variant "$v"
done
echo
echo "images in $IMAGES_CACHE:"
printf '  %s\n' "${summary[@]}"
