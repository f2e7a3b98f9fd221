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
deno test -A --trace-leaks --doc --parallel "$@" main.ts src/ tests/
