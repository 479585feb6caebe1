#!/usr/bin/env bash
# `make install`: the release binaries, the static agent, the example tasks, the docs, the
# systemd units and the `minion` group. Starts nothing: with systemd, `systemctl enable --now
# miniond` (and minion-trigger); without it, `scripts/quickstart.sh` starts miniond by hand.
# PREFIX (default /usr/local) is where everything goes but the units' /etc/systemd/system.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
UNITS=${UNITS:-/etc/systemd/system}
[ "$(id -u)" = 0 ] || { echo "install: must run as root" >&2; exit 1; }
say() { printf 'install: %s\n' "$*"; }

agent=$(scripts/build-agent.sh | tail -n 1)
cargo build --release --locked --quiet -p minion-cli -p miniond -p minion-trigger
install -d "$PREFIX/bin" "$PREFIX/lib/minion" "$PREFIX/share/minion" "$PREFIX/share/doc/minion"
install -m 0755 target/release/minion target/release/miniond target/release/minion-trigger "$PREFIX/bin/"
install -m 0755 "$agent" "$PREFIX/lib/minion/minion-agent"
rm -rf "$PREFIX/share/minion/examples"
cp -a examples "$PREFIX/share/minion/examples"
# The image recipes, for `minion image build` (the catalog's images are built from these).
rm -rf "$PREFIX/share/minion/images"
cp -a images "$PREFIX/share/minion/images"
install -m 0644 README.md ARCHITECTURE.md "$PREFIX/share/doc/minion/"
install -m 0644 daemon/README.md "$PREFIX/share/doc/minion/miniond.md"
install -m 0644 daemon/miniond.example.toml trigger/minion-trigger.example.toml "$PREFIX/share/doc/minion/"

# The socket's group (systemd-sysusers where there is systemd, groupadd otherwise).
install -D -m 0644 dist/minion.sysusers "$PREFIX/lib/sysusers.d/minion.conf"
getent group minion >/dev/null || groupadd --system minion
for unit in miniond.service minion-trigger.service; do
    sed "s|/usr/local/|$PREFIX/|g" "dist/$unit" > "$UNITS/$unit.new"
    chmod 0644 "$UNITS/$unit.new"
    mv "$UNITS/$unit.new" "$UNITS/$unit"
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "units installed: systemctl enable --now miniond minion-trigger"
else
    say "units installed in $UNITS (this host runs no systemd: start miniond by hand, see README)"
fi
say "done: $PREFIX/bin/{minion,miniond,minion-trigger}, $PREFIX/lib/minion/minion-agent"
