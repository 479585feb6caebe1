# Recipe of the "standard" image (sourced by images/build.sh).
# Debian 12 with systemd, cloud-init, python3, git and Debian's cloud kernel; the agent is started by
# minion-agent.service from the seed volume.
AGENT_START=systemd
FS_FEATURES=""
DISK_SIZE=4G
CMDLINE="console=ttyS0 root=/dev/vda rw panic=-1 quiet"
RECIPE_FILES="standard/recipe.sh standard/packages standard/minion-agent.service standard/minion-agent-start standard/cloud.cfg standard/initramfs-modules"

recipe_rootfs() {
    local root="$1"
    run_logged "standard: debootstrap" "$WORK/debootstrap.log" \
        debootstrap --variant=minbase --include="$(pkg_list standard/packages)" \
        --cache-dir="$DEBS_CACHE" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR"

    echo minion > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 minion\n' > "$root/etc/hosts"
    # fsck pass 0: a fresh overlay of a just-built fs needs no check, and it costs seconds under TCG.
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' > "$root/etc/fstab"
    install -D -m 0755 "$IMAGES_DIR/standard/minion-agent-start" "$root/usr/libexec/minion/minion-agent-start"
    install -D -m 0644 "$IMAGES_DIR/standard/minion-agent.service" "$root/etc/systemd/system/minion-agent.service"
    install -D -m 0644 "$IMAGES_DIR/standard/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90-minion.cfg"
    install -D -m 0644 "$IMAGES_DIR/standard/initramfs-modules" "$root/etc/initramfs-tools/modules"
    mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
    ln -sf /etc/systemd/system/minion-agent.service "$root/etc/systemd/system/sysinit.target.wants/minion-agent.service"
    # Generators for what this image never has (encrypted, integrity or verity volumes, a GPT
    # root to discover, hibernation, offline updates, rc.local, SysV scripts): each is a process
    # systemd runs before it starts any unit, ~0.1 s apiece under TCG.
    mkdir -p "$root/etc/systemd/system-generators"
    for gen in systemd-cryptsetup-generator systemd-integritysetup-generator \
               systemd-veritysetup-generator systemd-gpt-auto-generator \
               systemd-hibernate-resume-generator systemd-system-update-generator \
               systemd-rc-local-generator systemd-sysv-generator; do
        ln -sf /dev/null "$root/etc/systemd/system-generators/$gen"
    done
    # No network is attached: nothing may wait for it.
    for unit in systemd-networkd-wait-online.service systemd-networkd.service apt-daily.timer \
                apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # Console login without a password (no network, no ssh: the console is the only way in).
    chroot "$root" passwd -d root >/dev/null
    sed -i 's/^MODULES=.*/MODULES=list/; s/^#\?COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
    with_chroot_mounts "$root" chroot "$root" update-initramfs -u -k all >"$WORK/initramfs.log" 2>&1 \
        || { cat "$WORK/initramfs.log" >&2; die "update-initramfs failed"; }
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*
    # A fresh machine-id per boot (systemd creates one when the file is empty).
    : > "$root/etc/machine-id"
}

recipe_boot() {
    local root="$1" out="$2" vmlinuz initrd
    vmlinuz=$(readlink -f "$root/vmlinuz" 2>/dev/null || true)
    [ -f "$vmlinuz" ] || vmlinuz=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
    initrd="$root/boot/initrd.img-${vmlinuz##*/vmlinuz-}"
    [ -f "$vmlinuz" ] && [ -f "$initrd" ] || die "no kernel/initrd in $root/boot"
    cp "$initrd" "$out/initrd.img"
    # The bzImage's payload as an ELF with its PVH note: qemu boots it directly and skips the
    # in-guest decompressor (about 3 s under TCG). The bzImage itself stays inside the disk only.
    extract_vmlinux "$vmlinuz" "$out/vmlinux"
    KERNEL=vmlinux
    INITRD=initrd.img
}
