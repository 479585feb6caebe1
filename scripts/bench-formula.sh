#!/bin/sh
# Formula engine benchmark (issue #2): parse + validate + substitute a generated 500-action formula.
# Prints the criterion median; the target is under 5 ms.
set -eu
cd "$(dirname "$0")/.."
name=parse_validate_substitute_500_actions
nice -n 10 cargo bench -q -p minion-formula --bench parse -- --noplot "$name" >&2
est="${CARGO_TARGET_DIR:-target}/criterion/$name/new/estimates.json"
[ -f "$est" ] || { echo "bench-formula: no estimates at $est" >&2; exit 1; }
python3 - "$est" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["median"]["point_estimate"] / 1e6
print(f"formula: parse+validate+substitute 500 actions: median {m:.3f} ms (target < 5 ms) {'OK' if m < 5 else 'OVER TARGET'}")
sys.exit(0 if m < 5 else 1)
PY
