# Recipe of the "minimal" image (sourced by images/build.sh).
# Own kernel (images/kernel/), Debian minbase + python3, no init system: minion-init execs the agent.
AGENT_START=init
FS_FEATURES="-O ^has_journal"   # disposable root: no journal, fewer writes under TCG
DISK_SIZE=2G
# quiet: the 8250 console at TCG speed costs ~10 ms per line; panic=-1: a dead PID 1 resets the guest
# (on_reboot=destroy ends the domain) instead of hanging until the job timeout; noapictimer: skips the
# ~0.15 s local APIC timer calibration (the HPET is the clock event device then); 8250.nr_uarts=1: only
# ttyS0 exists, don't probe three more ports (images/README.md, "Boot tuning").
CMDLINE="console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/usr/sbin/minion-init panic=-1 quiet noapictimer 8250.nr_uarts=1"
RECIPE_FILES="minimal/recipe.sh minimal/packages minimal/minion-init kernel/minimal.config kernel/build-kernel.sh"

recipe_rootfs() {
    local root="$1"
    run_logged "minimal: debootstrap" "$WORK/debootstrap.log" \
        debootstrap --variant=minbase --include="$(pkg_list minimal/packages)" \
        --cache-dir="$DEBS_CACHE" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR"
    install -m 0755 "$IMAGES_DIR/minimal/minion-init" "$root/usr/sbin/minion-init"
    echo minion > "$root/etc/hostname"
    # minion-init mounts everything itself; fstab documents the root for humans.
    echo '/dev/vda / ext4 rw 0 0' > "$root/etc/fstab"
    # No init system, no package management at run time: apt's state is dead weight.
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"* "$root/var/cache/debconf/"*-old
}

recipe_boot() {
    local root="$1" out="$2" vmlinux
    # One kernel build at a time (two image builds may want the same kernel).
    # Its progress goes to our stdout (through fd 2: /dev/stderr would reopen, and truncate, a log file).
    flock "$KERNEL_CACHE/.lock" "$IMAGES_DIR/kernel/build-kernel.sh" | tee "$WORK/kernel.out" >&2
    vmlinux=$(tail -n 1 "$WORK/kernel.out")
    cp "$vmlinux" "$out/vmlinux"
    KERNEL=vmlinux
    INITRD=
}
