#!/usr/bin/env bash
# Installs everything vmshift and its tests need on a fresh Debian 12 machine that has
# only node and npm. Idempotent: when everything is present it only checks and exits.
set -euo pipefail

packages=(
  nbdkit             # NBD servers for the input side (file, ssh, curl plugins; filters)
  qemu-utils         # qemu-img and qemu-nbd: overlays, format probing, serving overlays
  libnbd-bin         # nbdcopy and nbdinfo: benchmark peer and diagnostics
  qemu-system-x86    # libguestfs appliance and test guest boots
  libguestfs0        # guest conversion through FFI
  libguestfs-tools   # guestfish/virt-* for building test guests
  supermin           # builds the libguestfs appliance
  linux-image-amd64  # the appliance kernel: a fresh machine has none in /boot
  openssh-server     # SSH input test peer on 127.0.0.1
  debootstrap        # test guest builder
  libxml2-utils      # xmllint: tests validate domain XML against libvirt's schema
  ovmf               # UEFI firmware for -o qemu boot scripts of UEFI guests
  openssl            # the oVirt test servers make their test CA and certificates with it
  time               # /usr/bin/time: peak memory in the benchmarks
  procps             # ps: the tests check that no process outlives a run
  rpm                # the phony Fedora test guest carries a real (empty-package) RPM database
  busybox-static     # the phony RHEL test guest's utilities (grep, sed...) for its stand-in rpm, dracut...
  golang-go          # builds tests/vcsim, the vCenter simulator the -i vsphere tests use
  golang-github-vmware-govmomi-dev # govmomi's simulator library (vcsim's engine) for it
  postgresql         # the multi-host scheduler tests start a PostgreSQL server on 127.0.0.1
  chromium           # the status page test drives a headless Chromium (npm:playwright-core)
  libwin-hivex-perl  # hivexregedit: the phony Windows guests' hives are filled and read with it
  virt-v2v           # the Windows conversion test compares its registry changes with virt-v2v's
  xorriso            # xorriso -as mkisofs: the phony virtio-win ISO for VIRTIO_WIN=*.iso tests
)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo_ apt-get update -q
  sudo_ apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v deno >/dev/null 2>&1; then
  echo "setup: installing Deno from npm" >&2
  sudo_ npm install -g deno >&2
fi
deno --version >/dev/null
