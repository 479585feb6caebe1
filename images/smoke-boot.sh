#!/usr/bin/env bash
# Boot an image's fresh VM under the real libvirtd and measure it, through the real provisioning
# code (overlay, seed, domain XML are what the daemon makes):
#   images/smoke-boot.sh <variant> [runs=3]
# With AGENT=<path> (the static agent, e.g. target/agent/minion-agent): speaks the real guest
# protocol up to the agent's Ready and reports domain start → Ready (tests/examples/smoke_boot.rs).
# Without AGENT: a stub agent prints a marker on the console and powers off; reports create →
# marker and power-off → gone (provisioning/examples/vm_cycle.rs).
# Env: MEMORY_MIB (512), VCPUS (1) for the agent run.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: $0 <variant> [runs]}"
runs="${2:-3}"
if [ -n "${AGENT:-}" ]; then
    exec cargo run --release --quiet --locked -p minion-e2e --example smoke_boot -- "$name" "$runs" "$AGENT"
fi
exec cargo run --release --quiet --locked -p minion-provisioning --example vm_cycle -- "$name" "$runs" poweroff
