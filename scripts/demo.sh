#!/usr/bin/env bash
# A real migration on a made-up disk: builds a 2 GiB qcow2 disk holding about 200 MiB of data
# (cached in .cache/demo/ until the generator changes), runs vmshift on it with -o local, and
# shows what came out.
#
#   deno task demo                      # output in ./demo-output
#   DEMO_OUTPUT=/some/dir deno task demo
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

# Remove a previous demo's output, but never a directory that holds anything else.
if [ -d "$output" ] && ls -A "$output" | grep -qv '^demo-vm'; then
  echo "demo: $output holds files that are not a previous demo's; choose another DEMO_OUTPUT" >&2
  exit 1
fi
rm -rf "$output"
mkdir -p "$output"

echo
echo "demo: migrating: deno run -A main.ts -i disk $source_disk -o local -os $output -of qcow2 -on demo-vm"
echo
deno run -A main.ts -i disk "$source_disk" -o local -os "$output" -of qcow2 -on demo-vm

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
