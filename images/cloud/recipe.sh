# Recipe of the "cloud" image (sourced by images/build.sh): shaped like a distribution's cloud
# image (Fedora Cloud Base, Debian genericcloud), to test the import path on a disk that boots the
# way those do: an MBR partition table, a boot loader (syslinux) on a FAT /boot partition that
# loads Debian's cloud kernel and initramfs, an ext4 root, systemd and cloud-init. No Minion agent,
# unit or configuration: the agent rides on the seed and cloud-init's user-data starts it.
# The catalog entry it writes boots from its disk (no kernel in the manifest); `minion image
# import` of its disk.qcow2 is how the tests use it.
AGENT_START=cloud-init
FS_FEATURES=""
DISK_SIZE=4G
CMDLINE=""
RECIPE_FILES="cloud/recipe.sh cloud/packages cloud/syslinux.cfg cloud/initramfs-modules cloud/dhcp.network"
# The FAT /boot partition (MiB) and where it starts (sectors of 512 bytes: 1 MiB, aligned).
BOOT_MIB=160
BOOT_START=2048

recipe_rootfs() {
    local root="$1"
    run_logged "cloud: debootstrap" "$WORK/debootstrap.log" \
        debootstrap --variant=minbase --include="$(pkg_list cloud/packages)" \
        --cache-dir="$DEBS_CACHE" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR"

    echo localhost > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
    echo 'LABEL=cloud-root / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
    install -D -m 0644 "$IMAGES_DIR/cloud/initramfs-modules" "$root/etc/initramfs-tools/modules"
    install -D -m 0644 "$IMAGES_DIR/cloud/dhcp.network" "$root/etc/systemd/network/80-cloud-dhcp.network"
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/sockets.target.wants"
    ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /lib/systemd/system/systemd-networkd.socket "$root/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
    # What a cloud image without a NIC would otherwise wait minutes for at every boot.
    for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    sed -i 's/^MODULES=.*/MODULES=list/; s/^#\?COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
    with_chroot_mounts "$root" chroot "$root" update-initramfs -u -k all >"$WORK/initramfs.log" 2>&1 \
        || { cat "$WORK/initramfs.log" >&2; die "update-initramfs failed"; }
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*
    : > "$root/etc/machine-id"
}

# The kernel and initramfs go on the boot partition (recipe_disk), not beside the manifest.
recipe_boot() {
    local root="$1" vmlinuz
    vmlinuz=$(readlink -f "$root/vmlinuz" 2>/dev/null || true)
    [ -f "$vmlinuz" ] || vmlinuz=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
    [ -f "$vmlinuz" ] && [ -f "$root/boot/initrd.img-${vmlinuz##*/vmlinuz-}" ] \
        || die "no kernel/initrd in $root/boot"
    CLOUD_VMLINUZ="$vmlinuz"
    CLOUD_INITRD="$root/boot/initrd.img-${vmlinuz##*/vmlinuz-}"
    KERNEL=
    INITRD=
}

# A partitioned disk, built in a file (no loop devices): sfdisk writes the table, the FAT /boot
# is made and filled with mtools at its offset, syslinux installs itself into it, its MBR code
# goes into the first 440 bytes, and the root filesystem is copied in at its offset.
recipe_disk() {
    local root="$1" raw="$2" boot_bytes root_start total_sectors fat="$WORK/boot.fat" rootfs="$WORK/root.ext4"
    truncate -s "$DISK_SIZE" "$raw"
    total_sectors=$(( $(stat -c %s "$raw") / 512 ))
    boot_bytes=$((BOOT_MIB * 1024 * 1024))
    root_start=$((BOOT_START + boot_bytes / 512))
    printf 'label: dos\nstart=%s, size=%s, type=c, bootable\nstart=%s, type=83\n' \
        "$BOOT_START" "$((boot_bytes / 512))" "$root_start" | sfdisk -q "$raw"
    truncate -s "$boot_bytes" "$fat"
    mkfs.vfat -F 32 -n BOOT "$fat" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -i "$fat" "$CLOUD_VMLINUZ" ::/vmlinuz
    MTOOLS_SKIP_CHECK=1 mcopy -i "$fat" "$CLOUD_INITRD" ::/initrd.img
    MTOOLS_SKIP_CHECK=1 mcopy -i "$fat" "$IMAGES_DIR/cloud/syslinux.cfg" ::/syslinux.cfg
    syslinux --install "$fat"
    dd if="$fat" of="$raw" bs=1M seek=$((BOOT_START * 512 / 1048576)) conv=notrunc status=none
    rm -f "$fat"
    truncate -s $(( (total_sectors - root_start) * 512 )) "$rootfs"
    mkfs.ext4 -q -F -L cloud-root -E lazy_itable_init=0,lazy_journal_init=0 $FS_FEATURES \
        -d "$root" "$rootfs" >"$WORK/mkfs.log" 2>&1 \
        || { cat "$WORK/mkfs.log" >&2; die "mkfs.ext4 failed"; }
    dd if="$rootfs" of="$raw" bs=1M seek=$((root_start * 512 / 1048576)) conv=notrunc,sparse status=none
    rm -f "$rootfs"
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
}
