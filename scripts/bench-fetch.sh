#!/usr/bin/env bash
# Fetching an item into the guest: a 50 MiB build from the Koji stand-in, placed in a fresh VM by a
# koji step through miniond, cold (host downloads) and cached (host cache), beside the baselines
# measured in the same run (curl of the file; `minion runtask` on the host, cold and cached).
# Needs: libvirtd, `make image`, scripts/build-agent.sh, rpmbuild.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace --bins
MINION_REQUIRE_VM_TESTS=1 cargo test --quiet -p minion-e2e --test real_tasks -- \
    --ignored --nocapture bench_fetch_50mib_build_into_the_guest 2>&1 | grep -E '^(bench-fetch|  )'
