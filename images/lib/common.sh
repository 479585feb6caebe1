# Shared helpers for images/*.sh (sourced, not executed).
# Progress lines look like "[ 12.3s] minimal: stage" so a slow step is visible as it happens.

: "${MINION_CACHE:=/var/cache/minion}"
IMAGES_CACHE="$MINION_CACHE/images"
KERNEL_CACHE="$MINION_CACHE/kernel"
DEBS_CACHE="$MINION_CACHE/debs"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

_t0=$(date +%s.%N)
elapsed() { awk -v a="$_t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f", b - a }'; }
stage() { printf '[%ss] %s\n' "$(elapsed)" "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

# sha256 of a list of files, content and relative name both, so a rename also changes the hash.
hash_files() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || die "recipe file missing: $f"
        printf '%s %s\n' "$(sha256sum < "$f" | cut -c1-64)" "${f#"$IMAGES_DIR"/}"
    done | sha256sum | cut -c1-16
}

# Run a long command in the background, niced, with its output in a log; print a progress line every
# $POLL seconds (the log's last line) and fail with the log's tail if it fails.
POLL="${POLL:-20}"
run_logged() {
    local label="$1" log="$2"; shift 2
    ( exec nice -n 10 "$@" ) >"$log" 2>&1 &
    local pid=$! n=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
        if [ $((n % POLL)) -eq 0 ]; then
            stage "$label: $(tail -n 1 "$log" | cut -c1-100)"
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$log" >&2
        die "$label failed (full log: $log)"
    fi
}

# Package list file (comments and blank lines ignored) → comma-separated for debootstrap --include.
pkg_list() {
    grep -v '^[[:space:]]*\(#\|$\)' "$IMAGES_DIR/$1" | tr -d ' \t' | paste -sd, -
}

# Run a command with /proc, /sys and /dev mounted in a chroot, always unmounting afterwards.
with_chroot_mounts() {
    local root="$1" rc=0; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    "$@" || rc=$?
    umount "$root/dev" "$root/sys" "$root/proc"
    return "$rc"
}

# The ELF inside a bzImage (the kernel's scripts/extract-vmlinux, same tr trick): find the compressed
# payload by its magic, decompress from there, keep the first result that is an ELF.
_try_decompress() {
    local in="$1" out="$2" magic="$3" marker="$4" tool="$5" pos
    for pos in $(tr "$magic\n$marker" "\n$marker=" < "$in" | grep -abo "^$marker"); do
        pos=${pos%%:*}
        tail -c+"$pos" "$in" | $tool > "$out" 2>/dev/null || true
        [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
    done
    return 1
}
extract_vmlinux() {
    local in="$1" out="$2"
    _try_decompress "$in" "$out" '\3757zXZ\000' abcde 'xz -dc' && return 0
    _try_decompress "$in" "$out" '(\265/\375' xxx 'zstd -dc' && return 0
    _try_decompress "$in" "$out" '\037\213\010' xy 'gzip -dc' && return 0
    # Debian's cloud kernel is LZ4 (legacy frame).
    _try_decompress "$in" "$out" '\002!L\030' xxx 'lz4 -dc' && return 0
    rm -f "$out"
    die "cannot extract an ELF vmlinux from $in"
}
