#!/usr/bin/env bash
# Builds a real, bootable Debian 12 (bookworm) test guest as VMware leaves it:
#
#   OUT.img   raw, 3 GiB virtual, MBR:
#             sda1  ext4  /     (2559 MiB, bootable)
#             sda2  swap        (512 MiB)
#
# - fstab and the kernel command line name devices (/dev/sda1, /dev/sda2), not UUIDs:
#   root=/dev/sda1 ro console=ttyS0,115200 resume=/dev/sda2; /boot/grub/device.map maps
#   (hd0) to /dev/sda; debconf's grub-pc/install_devices is /dev/sda.
# - The initramfs holds VMware's storage drivers only (ata_piix, ahci, mptspi, vmw_pvscsi...),
#   no virtio: it is built with MODULES=list, then initramfs.conf is set to MODULES=dep as
#   the installer leaves it. The guest boots on SATA/IDE/pvscsi, not on virtio-blk.
# - Network as on VMware: ens192 (a vmxnet3 NIC, MAC 00:50:56:aa:bb:cc, pinned by a
#   70-persistent-net.rules line) with the static address 10.0.2.15/24, gateway 10.0.2.2.
# - /etc/X11/xorg.conf with Driver "vmware"; open-vm-tools installed.
# - Serial console on ttyS0 (GRUB and a getty); hostname vmshift-guest;
#   root password "vmshift".
# - vmshift-report.service prints, once the network is online, to /dev/ttyS0:
#     VMSHIFT-REPORT: addr <each line of ip -o -4 addr show>
#     VMSHIFT-REPORT: root <findmnt -n -o SOURCE />
#     VMSHIFT-REPORT: done
# - About 1 GiB of random data was written to the root filesystem and deleted without a
#   trim: the image holds ~1 GiB more allocated data than its files need.
#
# Run as root. Needs debootstrap (installed when missing), sfdisk, losetup, mkfs.ext4,
# guestfish (libguestfs-tools) and http://deb.debian.org/debian. Takes ~7 minutes.
# The output is written to a temporary name and renamed into place; on failure everything
# (mounts, loop devices, partial output) is removed. Running it again rebuilds OUT.img.
#
# libguestfs runs with LIBGUESTFS_BACKEND=direct and, unless LIBGUESTFS_BACKEND_SETTINGS is
# set (even to empty), force_tcg, because KVM hangs on our build machines.
set -euo pipefail

usage() { echo "usage: $0 OUT.img" >&2; exit 2; }
[ $# -eq 1 ] || usage
out=$1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true LC_ALL=C.UTF-8
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

start=$SECONDS
say() { printf '[make_debian_guest %4ds] %s\n' $((SECONDS - start)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, losetup, mount)"

# Layout, in MiB.
disk_mib=3072
p1_start=1
p1_mib=2559
p2_start=$((p1_start + p1_mib))
p2_mib=$((disk_mib - p2_start))
garbage_mib=1024

out_dir=$(cd "$(dirname "$out")" && pwd)
out=$out_dir/$(basename "$out")
tmp=$out_dir/.$(basename "$out").partial.$$
work=
root=
loops=()
mounts=()
ok=false

cleanup() {
  local rc=$?
  set +e
  # Our mounts and any debootstrap left (proc, sys inside the target), innermost first.
  if [ -n "$root" ] && mountpoint -q "$root"; then
    umount -R "$root" 2>/dev/null || umount -R -l "$root"
  fi
  for l in "${loops[@]}"; do losetup -d "$l"; done
  if [ -n "$work" ]; then
    # Never rm -rf through a mount: the chroot has the host's /dev bound into it.
    if grep -qF " $work/" /proc/self/mounts; then
      say "not removing $work: something is still mounted under it"
    else
      rm -rf "$work"
    fi
  fi
  if ! $ok; then
    rm -f "$tmp"
    say "failed (exit code $rc); partial output removed"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mnt() { mount "$@"; mounts+=("${!#}"); }
unmnt() { # unmounts the last mount taken
  umount "${mounts[-1]}"
  unset 'mounts[-1]'
}
loop_at() { # OFFSET_MIB SIZE_MIB -> sets $loop (no $(...): the list must stay in this shell)
  loop=$(losetup -f --show -o $(($1 << 20)) --sizelimit $(($2 << 20)) "$tmp")
  loops+=("$loop")
}
unloop() { # DEV
  losetup -d "$1"
  local keep=()
  for l in "${loops[@]}"; do [ "$l" = "$1" ] || keep+=("$l"); done
  loops=("${keep[@]}")
}

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v guestfish >/dev/null || need+=(libguestfs-tools)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d /var/tmp/vmshift-debian-guest.XXXXXX)
root=$work/root
mkdir -p "$root"

say "creating $disk_mib MiB raw disk with MBR: sda1 ext4 ${p1_mib} MiB, sda2 swap ${p2_mib} MiB"
rm -f "$tmp"
truncate -s "${disk_mib}M" "$tmp"
sfdisk -q "$tmp" <<EOF
label: dos
unit: sectors
start=$((p1_start * 2048)), size=$((p1_mib * 2048)), type=83, bootable
start=$((p2_start * 2048)), size=$((p2_mib * 2048)), type=82
EOF

loop_at $p1_start $p1_mib
rootdev=$loop
mkfs.ext4 -q -L root "$rootdev"
loop_at $p2_start $p2_mib
swapdev=$loop
mkswap -L swap "$swapdev" >/dev/null
unloop "$swapdev"
mnt "$rootdev" "$root"

say "debootstrap $suite (minbase) from $mirror"
include=systemd-sysv,udev,kmod,initramfs-tools,ifupdown,iproute2,isc-dhcp-client,netbase
include+=,open-vm-tools,e2fsprogs,dbus,procps,apt-utils,zstd
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed"
}

say "configuring the guest as VMware leaves it"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mnt --bind /dev "$root/dev"
mnt --bind /dev/pts "$root/dev/pts"
mnt -t proc proc "$root/proc"
mnt -t sysfs sysfs "$root/sys"

echo vmshift-guest >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	vmshift-guest

::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
cat >"$root/etc/fstab" <<'EOF'
# /etc/fstab: static file system information.
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda1       /               ext4    errors=remount-ro 0       1
/dev/sda2       none            swap    sw              0       0
EOF
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://security.debian.org/debian-security $suite-security main
EOF

# The initramfs: VMware's drivers only, listed by name. MODULES=dep would look at the
# build host's devices (virtio here) instead of the guest's.
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
cat >>"$root/etc/initramfs-tools/modules" <<'EOF'
# VMware virtual hardware: IDE/SATA, LSI Logic and PVSCSI disks, e1000 NIC
ata_piix
ahci
sd_mod
mptspi
vmw_pvscsi
ext4
crc32c_generic
e1000
EOF
echo RESUME=/dev/sda2 >"$root/etc/initramfs-tools/conf.d/resume"
# The fsck hook cannot see /dev/sda1 from the chroot; tell it the root filesystem's type
# (removed again once the initramfs is built).
echo FSTYPE=ext4 >"$root/etc/initramfs-tools/conf.d/vmshift-build-fstype"

cat >"$root/etc/default/grub" <<'EOF'
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200 resume=/dev/sda2"
GRUB_DISABLE_LINUX_UUID=true
GRUB_DISABLE_OS_PROBER=true
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
EOF

# grub-pc must not touch any disk while it is installed in the chroot; afterwards it
# remembers /dev/sda, as the Debian installer leaves it on a VMware disk.
chroot "$root" debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF

say "installing linux-image-amd64 and grub-pc"
chroot "$root" apt-get install -y -q --no-install-recommends linux-image-amd64 grub-pc \
  >"$work/apt.log" 2>&1 || {
  tail -n 30 "$work/apt.log" >&2
  die "apt-get install failed"
}
grep -E '^(W|E):' "$work/apt.log" >&2 || true
chroot "$root" debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect /dev/sda
grub-pc grub-pc/install_devices_empty boolean false
EOF

kver=$(basename "$(ls -d "$root"/lib/modules/*)")
say "kernel $kver: $(grep -E '^CONFIG_(VIRTIO|VIRTIO_PCI|VIRTIO_BLK|SCSI_VIRTIO|VIRTIO_NET)=' \
  "$root/boot/config-$kver" | tr '\n' ' ')"
say "checking the initramfs has no virtio drivers"
mods=$(chroot "$root" lsinitramfs "/boot/initrd.img-$kver" | grep '\.ko' || true)
if grep -E '/virtio[^/]*\.ko' <<<"$mods" >&2; then
  die "the initramfs holds virtio drivers"
fi
for m in ata_piix ahci sd_mod mptspi vmw_pvscsi ext4 e1000; do
  grep -q "/$m\.ko" <<<"$mods" || die "the initramfs lacks $m.ko"
done
grep -q '/fsck\.ext4$' < <(chroot "$root" lsinitramfs "/boot/initrd.img-$kver") ||
  die "the initramfs lacks fsck.ext4"
sed -i 's/^MODULES=.*/MODULES=dep/' "$root/etc/initramfs-tools/initramfs.conf"
rm "$root/etc/initramfs-tools/conf.d/vmshift-build-fstype"

printf '(hd0)\t/dev/sda\n' >"$root/boot/grub/device.map"

cat >"$root/etc/network/interfaces" <<'EOF'
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
auto ens192
iface ens192 inet static
	address 10.0.2.15/24
	gateway 10.0.2.2
EOF
mkdir -p "$root/etc/udev/rules.d"
cat >"$root/etc/udev/rules.d/70-persistent-net.rules" <<'EOF'
# This file was automatically generated by the /lib/udev/write_net_rules
# program, run by the persistent-net-generator.rules rules file.

# PCI device 0x15ad:0x07b0 (vmxnet3)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="vmxnet3", ATTR{address}=="00:50:56:aa:bb:cc", ATTR{dev_id}=="0x0", ATTR{type}=="1", NAME="ens192"
EOF

mkdir -p "$root/etc/X11"
cat >"$root/etc/X11/xorg.conf" <<'EOF'
Section "ServerLayout"
	Identifier     "X.org Configured"
	Screen      0  "Screen0" 0 0
EndSection

Section "Device"
	Identifier  "Card0"
	Driver      "vmware"
	BusID       "PCI:0:15:0"
EndSection

Section "Screen"
	Identifier "Screen0"
	Device     "Card0"
EndSection
EOF

cat >"$root/etc/systemd/system/vmshift-report.service" <<'EOF'
[Unit]
Description=Report addresses and root device on the serial console for vmshift tests
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c '{ ip -o -4 addr show | sed "s/^/VMSHIFT-REPORT: addr /"; echo "VMSHIFT-REPORT: root $(findmnt -n -o SOURCE /)"; echo "VMSHIFT-REPORT: done"; } >/dev/ttyS0 2>&1'

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable vmshift-report.service serial-getty@ttyS0.service \
  networking.service >/dev/null 2>&1
echo root:vmshift | chroot "$root" chpasswd

chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/*_Packages "$root"/var/lib/apt/lists/*_Translation-*
for m in "$root/sys" "$root/proc" "$root/dev/pts" "$root/dev"; do
  [ "${mounts[-1]}" = "$m" ] || die "unexpected mount order"
  unmnt
done

say "writing and deleting $garbage_mib MiB of random data (no trim)"
dd if=/dev/urandom of="$root/var/tmp/garbage" bs=1M count=$garbage_mib status=none
sync -f "$root/var/tmp/garbage"
rm "$root/var/tmp/garbage"
sync -f "$root"
unmnt
unloop "$rootdev"

say "installing GRUB to the MBR inside the disk (libguestfs appliance, sda = this disk)"
guestfish --rw -a "$tmp" -m /dev/sda1 >"$work/grub.log" 2>&1 <<'EOF' || {
command "grub-install --target=i386-pc /dev/sda"
command "grub-mkconfig -o /boot/grub/grub.cfg"
EOF
  cat "$work/grub.log" >&2
  die "grub-install or grub-mkconfig failed"
}
guestfish --ro -a "$tmp" -m /dev/sda1 cat /boot/grub/grub.cfg >"$work/grub.cfg"
grep -q 'root=/dev/sda1 ro console=ttyS0,115200 resume=/dev/sda2' "$work/grub.cfg" ||
  die "grub.cfg does not boot root=/dev/sda1"

mv -f "$tmp" "$out"
ok=true
say "done: $out ($(du -h --apparent-size "$out" | cut -f1) virtual, $(du -h "$out" | cut -f1) allocated)"
