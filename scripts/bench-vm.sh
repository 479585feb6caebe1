#!/usr/bin/env bash
# Guest channel benchmarks under the real libvirtd (TCG here), through the same code the daemon uses
# (minion-provisioning prepare/teardown, minion-channel run_session; see tests/tests/vm_agent.rs,
# test `vm_agent_bench`):
#   1. domain start → agent Ready, median of RUNS (default 10) fresh VMs, per image variant, and
#      Result → domain gone (the agent powering the guest off);
#   2. artifact throughput: the guest writes a SIZE_MB (default 200) MiB file into ${artifactsdir};
#      the host times first ArtifactChunk → ArtifactEnd (tar + framing + confined unpacking).
#   scripts/bench-vm.sh [variant,variant...]      (default: minimal,standard)
# Env: RUNS, SIZE_MB, AGENT (a prebuilt static agent; default: scripts/build-agent.sh builds it).
# For scale: a raw virtio-serial port here moves ~355 MB/s guest→host (issue #3).
set -euo pipefail
cd "$(dirname "$0")/.."
agent=${AGENT:-$(scripts/build-agent.sh)}
MINION_AGENT_BINARY="$(realpath "$agent")" \
MINION_BENCH_RUNS="${RUNS:-10}" \
MINION_BENCH_SIZE_MB="${SIZE_MB:-200}" \
MINION_BENCH_VARIANTS="${1:-minimal,standard}" \
    cargo test --release --locked -p minion-e2e --test vm_agent -- \
        --ignored --exact vm_agent_bench --nocapture
