#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for FUZZ_SECS seconds each (default 10: the short run in
# `make test`; `make fuzz` runs 300). Built on the stable toolchain with the coverage
# instrumentation cargo-fuzz would add (no sanitizer: that needs nightly). Corpora live under
# target/fuzz-corpus (kept between runs), seeded from the repository's own examples. A crash
# fails the run and leaves its input under target/fuzz-artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECS:-10}"
TARGETS=(${FUZZ_TARGETS:-frame_decoder formula results trigger_message rules h2_rewriter})
export CARGO_TARGET_DIR="$PWD/target/fuzz"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target: the flags go to the targets' code, not to build scripts and proc macros.
cargo build --release --quiet --locked --manifest-path fuzz/Cargo.toml --target "$TRIPLE" --bins
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
CORPUS="$PWD/target/fuzz-corpus"
ARTIFACTS="$PWD/target/fuzz-artifacts"

seed() {
    local t=$1 dir="$CORPUS/$1"
    mkdir -p "$dir"
    case $t in
        formula)
            for f in examples/*/runtask.yml tests/examples/*/runtask.yml; do
                if [[ -f $f ]]; then cp "$f" "$dir/$(echo "$f" | tr / _)"; fi
            done ;;
        results)
            printf 'results:\n  - item: foo-1.0-1.fc40\n    type: koji_build\n    checkname: rpmlint\n    outcome: PASSED\n    note: ok\n    artifact: out.log\n' > "$dir/one"
            printf 'results:\n  - item: a\n    type: koji_build\n    checkname: c\n    outcome: FAILED\n  - item: b\n    type: bodhi_update\n    checkname: d\n    outcome: NEEDS_INSPECTION\n    custom_key: 3\n' > "$dir/two" ;;
        rules)
            cp trigger/examples/trigger_rules.yml "$dir/example" ;;
        trigger_message)
            for m in trigger/examples/messages/*.json; do
                python3 - "$m" "$dir/$(basename "$m")" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
topics = ["org.fedoraproject.prod.buildsys.build.state.change", "org.fedoraproject.prod.buildsys.tag",
          "org.fedoraproject.prod.bodhi.update.request.testing", "org.fedoraproject.prod.bodhi.update.request.stable"]
pick = topics.index(m["topic"]) if m["topic"] in topics else 0
open(sys.argv[2], "wb").write(bytes([pick]) + json.dumps(m["body"]).encode())
PY
            done ;;
        frame_decoder)
            printf '\x00\x00\x00\x02\x0a\x00' > "$dir/small" ;;
        h2_rewriter)
            # What grpcio 1.85 sends for one unary call over a unix socket, after the preface.
            cp fuzz/seeds/h2_rewriter/* "$dir/" ;;
    esac
}

status=0
for t in "${TARGETS[@]}"; do
    seed "$t"
    mkdir -p "$ARTIFACTS/$t"
    log="$(mktemp)"
    if "$BIN/$t" -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$ARTIFACTS/$t/" "$CORPUS/$t" > "$log" 2>&1; then
        runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 execs in \2 s/p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        printf 'fuzz %-16s %s, %s, corpus %s, no crash\n' "$t" "${runs:-?}" "${cov:-cov: ?}" \
            "$(ls "$CORPUS/$t" | wc -l)"
    else
        echo "fuzz $t: FAILED (input under $ARTIFACTS/$t/):" >&2
        tail -40 "$log" >&2
        status=1
    fi
    rm -f "$log"
done
exit $status
