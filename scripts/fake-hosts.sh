#!/usr/bin/env bash
# Hypervisor hosts for the many-host tests, on this one machine: each fake host is a network
# namespace (a veth pair, its own address 10.77.N.2, the controller's end 10.77.N.1) and a mount
# namespace with its own /run, /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and
# /var/log/libvirt, running its own virtlogd and libvirtd (under tini), reachable only as
# qemu+tcp://10.77.N.2/system (no TLS, no auth: the link exists only inside this machine), or,
# made with `up-tls`, only as qemu+tls://10.77.N.2/system with client certificates, or, made with
# `up-ssh`, only through ssh (its own sshd, keys only) as qemu+ssh://root@10.77.N.2/system.
# Its storage (/var/lib/minion-host inside it, libvirt storage pool `minion`) is a directory the
# controller's namespace never mounts there, so nothing may assume a shared filesystem.
#
#   scripts/fake-hosts.sh up [N]     N hosts (default 3): mhost1..mhostN; prints their URIs
#   scripts/fake-hosts.sh up-tls K PKI  host K over TLS only: PKI holds cacert.pem,
#                                    servercert.pem (for IP 10.77.K.2), serverkey.pem, and
#                                    client/{cacert,clientcert,clientkey}.pem for this script's own
#                                    calls; a client's certificate must come from that CA with the
#                                    DN CN=minion-controller (tls_allowed_dn_list)
#   scripts/fake-hosts.sh up-ssh K KEYS  host K through ssh only: KEYS holds id_ed25519.pub (the
#                                    only key its sshd lets in, as root); the host's own key is
#                                    made here and written to KEYS/known_hosts, and KEYS/ssh is an
#                                    ssh that trusts only that file (the URI's command=)
#   scripts/fake-hosts.sh down       stops their daemons and VMs, removes namespaces and files
#   scripts/fake-hosts.sh cut K      cuts host K's link (its libvirtd keeps running)
#   scripts/fake-hosts.sh mend K     restores it
#
# Needs root, iproute2, util-linux (unshare), libvirtd, tini (up-ssh: sshd). Idempotent: `up` skips hosts that
# answer, `down` removes whatever is left.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "fake-hosts: must run as root" >&2; exit 1; }
BASE=/var/lib/minion-fakehosts
say() { printf 'fake-hosts: %s\n' "$*"; }
# A host's URI for this script's calls: written at `up` (a TLS host's names the script's PKI).
uri() {
    if [ -f "$BASE/mhost$1/uri" ]; then cat "$BASE/mhost$1/uri"; else echo "qemu+tcp://10.77.$1.2/system"; fi
}
answers() { timeout 5 virsh -c "$(uri "$1")" version >/dev/null 2>&1; }

up_one() {
    local k="$1" pki="${2:-}" keys="${3:-}" ns="mhost$1" dir="$BASE/mhost$1"
    if ip netns list | grep -qw "$ns" && answers "$k"; then
        say "$ns answers at $(uri "$k")"
        return
    fi
    down_one "$k"
    mkdir -p "$dir"/{etc,lib,cache,log,storage}
    cp -a /etc/libvirt/. "$dir/etc/"
    # Its own storage pools only: this machine's (miniond's `minion` on /var/lib/minion/volumes)
    # are not the host's.
    rm -rf "$dir/etc/storage"
    mkdir -p "$dir/etc/storage"
    if [ -n "$pki" ]; then
        for f in cacert.pem servercert.pem serverkey.pem client/cacert.pem client/clientcert.pem client/clientkey.pem; do
            [ -f "$pki/$f" ] || { say "up-tls: $pki/$f is missing"; exit 1; }
        done
        # Inside the host's mount namespace $dir/etc is /etc/libvirt.
        install -d -m 0700 "$dir/etc/pki"
        install -m 0644 "$pki/cacert.pem" "$pki/servercert.pem" "$dir/etc/pki/"
        install -m 0600 "$pki/serverkey.pem" "$dir/etc/pki/"
        echo "qemu+tls://10.77.$k.2/system?pkipath=$pki/client" > "$dir/uri"
        cat > "$dir/etc/libvirtd.conf" <<EOF
listen_tls = 1
listen_tcp = 0
listen_addr = "10.77.$k.2"
ca_file = "/etc/libvirt/pki/cacert.pem"
cert_file = "/etc/libvirt/pki/servercert.pem"
key_file = "/etc/libvirt/pki/serverkey.pem"
tls_allowed_dn_list = ["CN=minion-controller"]
EOF
    elif [ -n "$keys" ]; then
        [ -f "$keys/id_ed25519.pub" ] || { say "up-ssh: $keys/id_ed25519.pub is missing"; exit 1; }
        # Nothing listens but sshd: libvirt's remote command (virt-ssh-helper) reaches the
        # host's own unix socket.
        printf 'listen_tls = 0\nlisten_tcp = 0\n' > "$dir/etc/libvirtd.conf"
        mkdir -p "$dir/ssh"
        ssh-keygen -q -t ed25519 -N '' -C "mhost$k" -f "$dir/ssh/host_key"
        cp "$keys/id_ed25519.pub" "$dir/ssh/authorized_keys"
        cat > "$dir/ssh/sshd_config" <<EOF
ListenAddress 10.77.$k.2
HostKey $dir/ssh/host_key
AuthorizedKeysFile $dir/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/sshd.pid
EOF
        echo "10.77.$k.2 $(cut -d' ' -f1,2 "$dir/ssh/host_key.pub")" > "$keys/known_hosts"
        # libvirt runs `ssh` itself (qemu+ssh://): this one knows only that host key and
        # offers only the key its URI names, whatever root's own ssh config holds.
        cat > "$keys/ssh" <<EOF
#!/bin/sh
exec ssh -F /dev/null -o UserKnownHostsFile=$keys/known_hosts -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "\$@"
EOF
        chmod 755 "$keys/ssh"
        echo "qemu+ssh://root@10.77.$k.2/system?keyfile=$keys/id_ed25519&command=$keys/ssh&no_tty=1" > "$dir/uri"
    else
        cat > "$dir/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "10.77.$k.2"
auth_tcp = "none"
EOF
    fi
    cat >> "$dir/etc/libvirtd.conf" <<EOF
# Shorter than the controller's keepalive (2 s x 3): when a link is cut, this host kills the
# controller's autodestroy domains before the controller gives their jobs to other hosts.
keepalive_interval = 1
keepalive_count = 3
EOF
    ip netns add "$ns"
    ip link add "mh$k-out" type veth peer name "mh$k-in"
    ip link set "mh$k-in" netns "$ns"
    ip addr add "10.77.$k.1/24" dev "mh$k-out"
    ip link set "mh$k-out" up
    ip netns exec "$ns" ip addr add "10.77.$k.2/24" dev "mh$k-in"
    ip netns exec "$ns" ip link set "mh$k-in" up
    ip netns exec "$ns" ip link set lo up
    # The mounts live and die with the namespace's processes: nothing to unmount at `down`.
    ip netns exec "$ns" unshare --mount --propagation private setsid sh -c "
        set -e
        mount --bind '$dir/etc' /etc/libvirt
        mount -t tmpfs -o mode=0755 tmpfs /run
        mkdir -p /run/libvirt /run/lock /var/lib/minion-host
        mount --bind '$dir/lib' /var/lib/libvirt
        mount --bind '$dir/cache' /var/cache/libvirt
        mount --bind '$dir/log' /var/log/libvirt
        mount --bind '$dir/storage' /var/lib/minion-host
        virtlogd -d
        if [ -f '$dir/ssh/sshd_config' ]; then
            mkdir -p /run/sshd
            /usr/sbin/sshd -f '$dir/ssh/sshd_config' -E '$dir/ssh/sshd.log'
            exec tini -s -- libvirtd -f /etc/libvirt/libvirtd.conf
        fi
        exec tini -s -- libvirtd --listen -f /etc/libvirt/libvirtd.conf
    " </dev/null >"$dir/libvirtd.out" 2>&1 &
    local t=$SECONDS
    until answers "$k"; do
        if [ $((SECONDS - t)) -ge 60 ]; then
            say "$ns: libvirtd did not answer within 60 s:"
            tail -5 "$dir/libvirtd.out" >&2
            exit 1
        fi
        sleep 0.5
    done
    # The storage pool Minion keeps the host's VM disks and images in (`storage_pool = "minion"`).
    virsh -q -c "$(uri "$k")" pool-define-as minion dir --target /var/lib/minion-host >/dev/null
    virsh -q -c "$(uri "$k")" pool-start minion >/dev/null
    say "$ns answers at $(uri "$k")"
}

down_one() {
    local k="$1" ns="mhost$1"
    if ip netns list | grep -qw "$ns"; then
        # Every process of the namespace: libvirtd, virtlogd, their qemus.
        local pids
        pids=$(ip netns pids "$ns" || true)
        [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns"
    fi
    ip link del "mh$k-out" 2>/dev/null || true
    rm -rf "${BASE:?}/mhost$k"
}

case "${1:-}" in
    up)
        n="${2:-3}"
        for k in $(seq "$n"); do up_one "$k"; done
        ;;
    up-tls)
        [ $# -eq 3 ] || { sed -n '2,26p' "$0" >&2; exit 2; }
        up_one "$2" "$(realpath "$3")"
        ;;
    up-ssh)
        [ $# -eq 3 ] || { sed -n '2,26p' "$0" >&2; exit 2; }
        up_one "$2" "" "$(realpath "$3")"
        ;;
    down)
        for ns in $(ip netns list | awk '/^mhost[0-9]+/{print $1}'); do down_one "${ns#mhost}"; done
        rm -rf "$BASE"
        say "no fake host left"
        ;;
    # Cut on the host's side of the pair, inside its namespace: the controller's end keeps its
    # route (no carrier), so packets to the host are dropped rather than routed elsewhere.
    cut) ip netns exec "mhost$2" ip link set "mh$2-in" down; say "mhost$2's link cut" ;;
    mend) ip netns exec "mhost$2" ip link set "mh$2-in" up; say "mhost$2's link restored" ;;
    *)
        sed -n '2,26p' "$0" >&2
        exit 2
        ;;
esac
