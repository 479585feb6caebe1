#!/usr/bin/env bash
# Prepare a Debian 12 host (root, no systemd needed) to build and run Minion: Debian packages,
# the unprivileged qemu user, libvirt's qemu.conf, Minion's directories, and a running libvirtd.
# Idempotent: a second run changes nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup-host: must run as root" >&2; exit 1; }
say() { printf 'setup-host: %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------------------
PACKAGES=(
    # libvirt + qemu (TCG here, KVM where /dev/kvm is real)
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
    qemu-block-extra
    # libvirtd started by hand runs under tini as a child subreaper (scripts/libvirt-start.sh);
    # sshd in a fake host's namespaces (and its ssh client) for qemu+ssh:// (scripts/fake-hosts.sh up-ssh)
    tini openssh-server
    # building the Rust workspace
    build-essential pkg-config protobuf-compiler libssl-dev
    # images: debootstrap, mkfs.ext4 -d, seeds, the minimal kernel from Debian's source
    debootstrap e2fsprogs genisoimage busybox-static xz-utils zstd lz4 cpio linux-source-6.1
    bc bison flex libelf-dev libncurses-dev dwarves rsync kmod python3 jq util-linux
    # the `cloud` image's partitioned disk and boot loader, without loop mounts (sfdisk on a file,
    # a FAT /boot made and filled with mtools, syslinux installed into it at its offset)
    fdisk dosfstools mtools syslinux syslinux-common
    ca-certificates curl git
    # the pipeline: the message bus (started by scripts/rabbitmq-start.sh, no systemd needed)
    rabbitmq-server
    # Taskotron tasks on the host (`minion runtask`): createrepo, rpm's python bindings; the test
    # suite builds real RPMs with rpmbuild for the Koji stand-in
    rpm createrepo-c python3-rpm
    # the tests' stock Python gRPC client (grpcio from PyPI, in a venv); promtool (a real
    # Prometheus parser) checks /metrics
    python3-venv prometheus
    # `make bench` runs testcloud as the instance baseline; it sets ACLs on its images (setfacl)
    acl
    # a real browser for the dashboard's end-to-end test (WebDriver through chromedriver);
    # systemd-analyze checks the units `make install` puts in place (no systemd needs to run)
    chromium chromium-driver systemd
    # a test whose miniond crashed prints the backtrace of its core (tests/tests/common)
    gdb
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
# qemu-utils must match qemu-system-x86 from bookworm (a newer qemu-utils on some base images pulls
# in a mismatched qemu-block-extra): pin both to bookworm, allowing the downgrade.
qemu_mismatch=0
if dpkg-query -W qemu-utils qemu-system-x86 >/dev/null 2>&1; then
    [ "$(dpkg-query -W -f '${Version}' qemu-utils)" = "$(dpkg-query -W -f '${Version}' qemu-system-x86)" ] || qemu_mismatch=1
fi
if [ ${#missing[@]} -gt 0 ] || [ "$qemu_mismatch" = 1 ]; then
    say "installing: ${missing[*]:-} (qemu pinned to bookworm)"
    export DEBIAN_FRONTEND=noninteractive
    # Packages must not start their services (prometheus, rabbitmq-server): Minion starts what
    # it needs itself. policy-rc.d says no to every start while apt runs.
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; }
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    apt-get install -y -q --no-install-recommends --allow-downgrades \
        qemu-utils/bookworm qemu-block-extra/bookworm qemu-system-x86
else
    say "Debian packages: all present"
fi

# --- the unprivileged qemu user ------------------------------------------------------------------
# qemu runs as libvirt-qemu:kvm, not root: a guest that escapes qemu lands in an account that owns
# nothing. libvirt's dynamic ownership chowns each domain's disks, kernel and initrd to that user for
# the domain's life (and restores the owner afterwards, remember_owner), so Minion's directories only
# need to be traversable (0755), never world-writable.
# (Debian's libvirt-daemon-system package would create the user, but it also brings init scripts,
# polkit and a default network that cannot start here.)
# libvirtd resolves its compiled-in defaults (user and group libvirt-qemu) before it reads qemu.conf,
# so both names must exist even though qemu.conf picks the kvm group.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
# miniond's socket belongs to this group (socket_group): its members may use the API.
getent group minion >/dev/null || groupadd --system minion
getent passwd libvirt-qemu >/dev/null || \
    useradd --system --gid kvm --home-dir /var/lib/libvirt --no-create-home \
        --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
if [ -c /dev/kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

QEMU_CONF=/etc/libvirt/qemu.conf
want_conf='# Written by Minion scripts/setup-host.sh (see images/README.md, "Host setup").
user = "libvirt-qemu"
group = "kvm"
dynamic_ownership = 1
remember_owner = 1
# virtlogd keeps console logs (serial type=file goes through it as well).
stdio_handler = "logd"
# The default list minus "cpuset": setting up the cpuset cgroup (v1) made every domain start ~1 s
# slower here (images/README.md, "libvirt start-up"). cpu/memory/blkio limits and the device
# allow-list stay.
cgroup_controllers = [ "cpu", "devices", "memory", "blkio", "cpuacct" ]'
mkdir -p /etc/libvirt
conf_changed=0
if [ ! -f "$QEMU_CONF" ] || [ "$(cat "$QEMU_CONF")" != "$want_conf" ]; then
    [ -f "$QEMU_CONF" ] && ! grep -q 'Minion scripts/setup-host.sh' "$QEMU_CONF" \
        && cp "$QEMU_CONF" "$QEMU_CONF.minion-orig"
    printf '%s\n' "$want_conf" > "$QEMU_CONF"
    conf_changed=1
    say "wrote $QEMU_CONF (qemu as libvirt-qemu:kvm, dynamic ownership)"
fi

# --- Minion's directories ----------------------------------------------------------------------
install -d -m 0755 /var/lib/minion /var/cache/minion /var/cache/minion/images \
    /var/cache/minion/kernel /var/cache/minion/debs

# --- the tests' Python gRPC client ----------------------------------------------------------------
# A stock grpcio (PyPI, pinned in tests/python/requirements.txt) in its own venv, rebuilt when the
# pins change.
PYENV=/var/cache/minion/pyenv
want_pins=$(sha256sum tests/python/requirements.txt | cut -c1-16)
if [ "$(cat "$PYENV/.pins" 2>/dev/null)" != "$want_pins" ]; then
    say "installing the Python gRPC client into $PYENV"
    rm -rf "$PYENV"
    python3 -m venv "$PYENV"
    "$PYENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
    echo "$want_pins" > "$PYENV/.pins"
fi

# --- libvirtd ------------------------------------------------------------------------------------
if [ "$conf_changed" = 1 ] && [ -s /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; then
    say "restarting libvirtd for the new qemu.conf"
    pid=$(cat /run/libvirtd.pid)
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
fi
scripts/libvirt-start.sh
scripts/rabbitmq-start.sh
say "done"
