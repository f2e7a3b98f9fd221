#!/usr/bin/env bash
# The test command (README, .ci/run): set up a fresh machine, then format, lint and type
# checks, then every test. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
echo "== deno fmt --check"
deno fmt --check
echo "== deno lint"
deno lint
echo "== deno check"
deno task -q check
echo "== deno test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
NO_COLOR=1 deno test -A --trace-leaks --doc --parallel "$@" main.ts src/ tests/ 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# A plain closing line, the same whatever the runner prints: "N passed, N failed, N skipped".
summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -n 1)
if [ -n "$summary" ]; then
  passed=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$summary")
  failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$summary")
  ignored=$(grep -oE '[0-9]+ ignored' <<<"$summary" | cut -d' ' -f1)
  echo "tests: $passed passed, $failed failed, ${ignored:-0} skipped"
fi
exit "$rc"
