#!/usr/bin/env bash
# A real migration on a made-up disk: builds a 2 GiB qcow2 disk holding about 200 MiB of data
# (cached in .cache/demo/ until the generator changes) and migrates it with vmshift.
#
# By default the target is oVirt: the bundled oVirt test servers (an engine and an imageio
# daemon on 127.0.0.1, with TLS from a test CA; tests/servers/) are started, vmshift uploads
# the disk with -o rhv, creates the VM from an OVF, and the stored image is compared with the
# source. The servers stop (and forget everything) when the demo ends.
#
#   deno task demo                              # -o rhv into the bundled oVirt test servers
#   DEMO_TARGET=local deno task demo            # -o local into ./demo-output
#   DEMO_TARGET=local DEMO_OUTPUT=/some/dir deno task demo
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh

cache=.cache/demo
source_disk="$cache/demo-vm.qcow2"
output="${DEMO_OUTPUT:-demo-output}"
stamp="$(sha256sum <scripts/make_test_image.ts | cut -c1-16)"

mkdir -p "$cache"
if [ ! -f "$source_disk" ] || [ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "demo: building the demo disk $source_disk (2 GiB virtual, 200 MiB of data)"
  rm -f "$source_disk" "$cache/stamp"
  deno run -A scripts/make_test_image.ts "$source_disk.tmp" \
    --format qcow2 --size 2G --data 200M --seed 42
  mv "$source_disk.tmp" "$source_disk"
  echo "$stamp" >"$cache/stamp"
fi

target="${DEMO_TARGET:-rhv}"
case "$target" in
  rhv) ;;
  local) ;;
  *) echo "demo: DEMO_TARGET must be rhv or local, not \"$target\"" >&2; exit 2 ;;
esac

if [ "$target" = rhv ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/vmshift-demo-XXXXXX")"
  servers=""
  cleanup() {
    if [ -n "$servers" ]; then kill "$servers" 2>/dev/null || true; wait "$servers" 2>/dev/null || true; fi
    rm -rf "$work"
  }
  trap cleanup EXIT
  echo "demo: starting the bundled oVirt test servers (engine + imageio on 127.0.0.1)"
  deno run -A tests/servers/main.ts --dir "$work" --ready-file "$work/ready.json" >/dev/null &
  servers=$!
  for _ in $(seq 1 600); do
    [ -f "$work/ready.json" ] && break
    kill -0 "$servers" 2>/dev/null || { echo "demo: the test servers did not start" >&2; exit 1; }
    sleep 0.1
  done
  [ -f "$work/ready.json" ] || { echo "demo: the test servers did not start in 60 s" >&2; exit 1; }
  field() { node -e 'console.log(require(process.argv[1])[process.argv[2]])' "$work/ready.json" "$1"; }
  engine="$(field engineUrl)"
  ca="$(field caFile)"
  password_file="$(field passwordFile)"
  args=(-i disk "$source_disk" -o rhv -oc "$engine" -op "$password_file" -os data
    -oo "rhv-cafile=$ca" -oo rhv-cluster=Default -on demo-vm --no-convert)
  echo
  echo "demo: migrating: deno run -A main.ts ${args[*]}"
  echo
  deno run -A main.ts "${args[@]}"
  echo
  stored="$(find "$work" -path '*/images/*' -type f | head -n 1)"
  echo "demo: the disk as the engine stored it: $stored"
  qemu-img info "$stored"
  echo
  echo "demo: comparing the source and the uploaded disk:"
  qemu-img compare -f qcow2 "$source_disk" "$stored"
  echo
  echo "demo: done; the test servers stop now and forget the VM (DEMO_TARGET=local keeps files)"
  exit 0
fi

# Remove a previous demo's output, but never a directory that holds anything else.
if [ -d "$output" ] && ls -A "$output" | grep -qv '^demo-vm'; then
  echo "demo: $output holds files that are not a previous demo's; choose another DEMO_OUTPUT" >&2
  exit 1
fi
rm -rf "$output"
mkdir -p "$output"

echo
echo "demo: migrating: deno run -A main.ts -i disk $source_disk -o local -os $output -of qcow2 -on demo-vm --no-convert"
echo
deno run -A main.ts -i disk "$source_disk" -o local -os "$output" -of qcow2 -on demo-vm --no-convert

echo
echo "demo: what came out:"
ls -l "$output"
echo
qemu-img info "$output/demo-vm-sda"
echo
echo "demo: comparing the source and the migrated disk:"
qemu-img compare -f qcow2 -F qcow2 "$source_disk" "$output/demo-vm-sda"
echo
echo "demo: the migrated disk is $(realpath "$output/demo-vm-sda")"
echo "demo: its libvirt domain is $(realpath "$output/demo-vm.xml")"
echo "demo: define and start it with: virsh define $(realpath "$output/demo-vm.xml")"
