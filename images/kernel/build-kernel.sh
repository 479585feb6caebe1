#!/usr/bin/env bash
# Build (or reuse) the "minimal" guest kernel from Debian's linux-source-6.1 package.
# tinyconfig + images/kernel/minimal.config, everything built in, uncompressed vmlinux (PVH entry).
# Cached by the hash of the fragment, this script and the source package version:
#   $MINION_CACHE/kernel/<hash>/vmlinux  (+ config, build.log)
# Prints the vmlinux path on the last line of stdout.
set -euo pipefail
IMAGES_DIR="$(cd "$(dirname "$0")/.." && pwd)"
. "$IMAGES_DIR/lib/common.sh"

TARBALL=/usr/src/linux-source-6.1.tar.xz
FRAGMENT="$IMAGES_DIR/kernel/minimal.config"
[ -f "$TARBALL" ] || die "$TARBALL not found: install linux-source-6.1 (scripts/setup-host.sh)"
SRC_VERSION=$(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$TARBALL")
HASH=$( { hash_files "$FRAGMENT" "$IMAGES_DIR/kernel/build-kernel.sh"; echo "$SRC_VERSION"; } | sha256sum | cut -c1-16)
OUT="$KERNEL_CACHE/$HASH"

if [ -f "$OUT/vmlinux" ]; then
    stage "kernel: cached: $OUT/vmlinux"
    echo "$OUT/vmlinux"
    exit 0
fi

# One extracted tree per source version, shared by every config; builds go out of tree (O=).
SRC="$KERNEL_CACHE/src-$SRC_VERSION"
if [ ! -f "$SRC/.extracted" ]; then
    stage "kernel: extracting $TARBALL"
    rm -rf "$SRC" && mkdir -p "$SRC"
    run_logged "kernel: extract" "$KERNEL_CACHE/extract.log" \
        tar -C "$SRC" --strip-components=1 -xf "$TARBALL"
    touch "$SRC/.extracted"
fi

BUILD="$OUT.build"
rm -rf "$BUILD" && mkdir -p "$BUILD"
stage "kernel: configuring (tinyconfig + $(basename "$FRAGMENT"))"
make -s -C "$SRC" O="$BUILD" tinyconfig >"$BUILD/config.log" 2>&1
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$FRAGMENT" >>"$BUILD/config.log" 2>&1
make -s -C "$SRC" O="$BUILD" olddefconfig >>"$BUILD/config.log" 2>&1

# Kconfig drops symbols whose dependencies are unmet without a word: check every requested line.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$BUILD/.config" || { echo "kernel config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$BUILD/.config" || echo unset)" >&2; missing=1; } ;;
        "# CONFIG_"*" is not set")
            sym=${line#"# "}; sym=${sym%% *}
            ! grep -q "^$sym=" "$BUILD/.config" || { echo "kernel config: wanted $sym unset" >&2; missing=1; } ;;
    esac
done < "$FRAGMENT"
[ "$missing" = 0 ] || die "kernel config fragment not satisfied (see above; $BUILD/.config)"

stage "kernel: make -j$(nproc) vmlinux (niced, log: $BUILD/build.log)"
run_logged "kernel: make" "$BUILD/build.log" make -C "$SRC" O="$BUILD" -j"$(nproc)" vmlinux
# The PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY = 18) is what lets qemu -kernel boot the ELF directly.
readelf -n "$BUILD/vmlinux" | grep -q 'Unknown note type: (0x00000012)\|PHYS32_ENTRY' \
    || die "built vmlinux has no PVH entry note (CONFIG_PVH missing?)"

mkdir -p "$OUT"
cp "$BUILD/.config" "$OUT/config"
cp "$BUILD/build.log" "$OUT/build.log"
strip --strip-debug -o "$OUT/vmlinux.tmp" "$BUILD/vmlinux" 2>/dev/null || cp "$BUILD/vmlinux" "$OUT/vmlinux.tmp"
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
rm -rf "$BUILD"
stage "kernel: built $OUT/vmlinux ($(du -h "$OUT/vmlinux" | cut -f1))"
echo "$OUT/vmlinux"
