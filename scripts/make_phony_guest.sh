#!/usr/bin/env bash
# Builds a "phony" Linux guest for fast tests: not bootable, but libguestfs inspection
# takes it for a Debian 12 or Fedora 38 guest that ran on VMware. One guestfish run (one
# appliance launch, ~15 s under TCG) writes it and checks what inspection sees.
#
#   OUT.img   raw, 1 GiB virtual, MBR:
#             sda1  ext4  /boot  (256 MiB)
#             sda2  ext4  /      (rest)
#
# Both variants carry, as VMware leaves them:
# - /etc/fstab naming /dev/sda2 (/) and /dev/sda1 (/boot);
# - a kernel in /boot (tiny fake vmlinuz and initrd) with /lib/modules/VERSION holding fake
#   virtio_blk, virtio_scsi, virtio_net, virtio_pci and vmxnet3, vmw_pvscsi modules;
# - /etc/default/grub and a GRUB config whose entries say root=/dev/sda2;
# - network configuration for ens192 (a vmxnet3 NIC, MAC 00:50:56:aa:bb:cc);
# - /etc/X11/xorg.conf with Driver "vmware";
# - real /usr/bin/ls and /usr/bin/bash copied from this host so that inspection finds the
#   architecture (x86_64); /bin, /sbin and /lib are symlinks into /usr (merged /usr).
#
# debian: /etc/debian_version 12.5, os-release, /var/lib/dpkg/status listing open-vm-tools,
#         linux-image-6.1.0-18-amd64 and grub-pc; /etc/network/interfaces; /boot/grub.
# fedora: /etc/redhat-release (38), os-release, ifcfg-ens192 with HWADDR=, /boot/grub2 with
#         a BLS entry; an RPM database (sqlite, built with Debian's rpm, installed when
#         missing) listing empty stand-in packages: kernel-core, open-vm-tools, grub2-pc...
# rhel:   the fedora layout as RHEL 9.3 has it (no BLS entry: grub.cfg lists the kernel),
#         /etc/selinux/config enforcing, /usr/lib/systemd/systemd-udevd, PLUS programs, so
#         that a conversion runs end to end: the host's bash with its libraries as /bin/sh,
#         Debian's static busybox (busybox-static) for grep, sed, cat..., and sh scripts
#         standing in for rpm, dracut, lsinitrd, grub2-mkconfig, grub2-probe and grubby (see
#         rhel_standins below). Each stand-in logs its argv to /var/log/vmshift-standins.log.
#         busybox is not /bin/sh: its ash runs its own applets (it has an "rpm") before any
#         program of that name in PATH.
#
# libguestfs runs with LIBGUESTFS_BACKEND=direct and, unless LIBGUESTFS_BACKEND_SETTINGS is
# set (even to empty), force_tcg, because KVM hangs on our build machines.
set -euo pipefail

usage() { echo "usage: $0 OUT.img [debian|fedora|rhel]" >&2; exit 2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
out=$1
variant=${2:-debian}
case $variant in debian | fedora | rhel) ;; *) usage ;; esac

export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}

start=$SECONDS
say() { printf '[make_phony_guest %3ds] %s\n' $((SECONDS - start)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v guestfish >/dev/null || die "guestfish not found (apt-get install libguestfs-tools)"
if [ "$variant" != debian ] && ! command -v rpmbuild >/dev/null; then
  [ "$(id -u)" = 0 ] || die "rpmbuild not found (apt-get install rpm)"
  say "installing rpm (rpmbuild and the rpm database tools)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends rpm >&2
fi

out_dir=$(cd "$(dirname "$out")" && pwd)
out=$out_dir/$(basename "$out")
tmp=$out_dir/.$(basename "$out").partial.$$
work=$(mktemp -d /var/tmp/vmshift-phony-guest.XXXXXX)
ok=false
cleanup() {
  local rc=$?
  rm -rf "$work"
  if ! $ok; then
    rm -f "$tmp"
    say "failed (exit code $rc); partial output removed"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t=$work/tree # the guest's files, /boot included
mkdir -p "$t"/{etc/default,etc/X11,boot,usr/bin,usr/sbin,usr/lib,var/lib,var/log,tmp,root,home}
mkdir -p "$t"/{dev,proc,sys,run,mnt,opt,srv}
ln -s usr/bin "$t/bin"
ln -s usr/sbin "$t/sbin"
ln -s usr/lib "$t/lib"
ln -s usr/lib64 "$t/lib64"
mkdir -p "$t/usr/lib64"
cp /usr/bin/ls /usr/bin/bash "$t/usr/bin/"
ln -s bash "$t/usr/bin/sh"
chmod 1777 "$t/tmp"
chmod 700 "$t/root"
echo vmshift-phony >"$t/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmshift-phony\n' >"$t/etc/hosts"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$t/etc/passwd"
printf 'root:x:0:\n' >"$t/etc/group"

# A kernel and its modules (fake contents).
fake_kernel() { # VERSION INITRD_NAME MODULE_SUFFIX
  local v=$1 initrd=$2 ko=$3 m=$t/usr/lib/modules/$1
  printf 'fake vmlinuz %s\n' "$v" >"$t/boot/vmlinuz-$v"
  printf 'fake initrd %s\n' "$v" >"$t/boot/$initrd"
  printf 'fake System.map %s\n' "$v" >"$t/boot/System.map-$v"
  printf 'CONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_NET=m\nCONFIG_SCSI_VIRTIO=m\n' \
    >"$t/boot/config-$v"
  mkdir -p "$m"/kernel/drivers/{block,virtio,net/vmxnet3,scsi}
  local mod
  for mod in block/virtio_blk virtio/virtio virtio/virtio_ring virtio/virtio_pci \
    net/virtio_net scsi/virtio_scsi net/vmxnet3/vmxnet3 scsi/vmw_pvscsi; do
    printf 'fake module %s\n' "${mod##*/}" >"$m/kernel/drivers/$mod.$ko"
  done
  cat >"$m/modules.dep" <<EOF
kernel/drivers/virtio/virtio.$ko:
kernel/drivers/virtio/virtio_ring.$ko:
kernel/drivers/virtio/virtio_pci.$ko: kernel/drivers/virtio/virtio_ring.$ko kernel/drivers/virtio/virtio.$ko
kernel/drivers/block/virtio_blk.$ko: kernel/drivers/virtio/virtio_ring.$ko kernel/drivers/virtio/virtio.$ko
kernel/drivers/net/virtio_net.$ko: kernel/drivers/virtio/virtio_ring.$ko kernel/drivers/virtio/virtio.$ko
kernel/drivers/scsi/virtio_scsi.$ko: kernel/drivers/virtio/virtio_ring.$ko kernel/drivers/virtio/virtio.$ko
kernel/drivers/net/vmxnet3/vmxnet3.$ko:
kernel/drivers/scsi/vmw_pvscsi.$ko:
EOF
}

grub_default() { # CMDLINE
  cat >"$t/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="$1"
GRUB_DISABLE_LINUX_UUID=true
EOF
}

# The rhel variant's programs: bash (with its libraries) as /bin/sh, busybox for the
# utilities, and stand-ins for the RHEL tools vmshift runs in the guest. Each stand-in logs
# its argv (arguments with spaces in double quotes) to /var/log/vmshift-standins.log and
# behaves, for what vmshift asks of it, as the real tool does; their state lives in
# /var/lib/vmshift-standins (rpm-packages: the installed package names; default-kernel).
rhel_standins() {
  local lib applet
  for lib in $(ldd /usr/bin/bash | grep -o '/[^ ]*'); do
    mkdir -p "$t$(dirname "$lib")"
    cp -L "$lib" "$t$lib"
  done
  cp /bin/busybox "$t/usr/bin/busybox"
  for applet in awk basename cat chmod cp cut dirname echo find grep head ln mkdir mv printf \
    rm sed sleep sort tail touch tr uname wc; do
    ln -s busybox "$t/usr/bin/$applet"
  done
  mkdir -p "$t/etc/selinux" "$t/usr/lib/systemd" "$t/var/lib/vmshift-standins" \
    "$t/usr/lib/vmshift-standins"
  printf 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' >"$t/etc/selinux/config"
  printf 'fake systemd-udevd\n' >"$t/usr/lib/systemd/systemd-udevd"
  chmod 755 "$t/usr/lib/systemd/systemd-udevd"
  printf 'add_drivers+=" vmw_pvscsi "\n' >"$t/etc/dracut.conf"
  printf '%s\n' redhat-release kernel-core kernel-modules grub2-pc grubby dracut open-vm-tools \
    >"$t/var/lib/vmshift-standins/rpm-packages"
  # The default kernel is pinned to the older one, which has virtio too: it must stay.
  printf '/boot/vmlinuz-%s\n' "$kver_old" >"$t/var/lib/vmshift-standins/default-kernel"
  cat >"$t/usr/lib/vmshift-standins/common.sh" <<'EOF'
# Sourced by the stand-ins.
log() {
  { printf '%s' "$1"; shift
    for a in "$@"; do case $a in *' '*) printf ' "%s"' "$a" ;; *) printf ' %s' "$a" ;; esac; done
    printf '\n'; } >>/var/log/vmshift-standins.log
}
state=/var/lib/vmshift-standins
EOF
  cat >"$t/usr/bin/rpm" <<'EOF'
#!/bin/sh
# rpm stand-in: -qa (names, whatever --qf asks), -q NAME..., -e NAME...
. /usr/lib/vmshift-standins/common.sh
log rpm "$@"
db=$state/rpm-packages
case $1 in
-qa) cat "$db" ;;
-q)
  shift; rc=0
  for p in "$@"; do
    if grep -qx "$p" "$db"; then echo "$p"; else echo "package $p is not installed"; rc=1; fi
  done
  exit $rc ;;
-e)
  shift
  for p in "$@"; do
    grep -qx "$p" "$db" || { echo "error: package $p is not installed" >&2; exit 1; }
  done
  for p in "$@"; do
    grep -vx "$p" "$db" >"$db.new"; mv "$db.new" "$db"
  done ;;
*) echo "rpm stand-in: unsupported: $*" >&2; exit 1 ;;
esac
EOF
  cat >"$t/usr/bin/dracut" <<'EOF'
#!/bin/sh
# dracut stand-in: [-f] [--add-drivers "LIST"] [IMAGE [KVER]]. The "initramfs" it writes is
# the list of the modules it holds (drivers of --add-drivers and of add_drivers in
# /etc/dracut.conf{,.d/*.conf}), as lsinitrd prints them; a missing module is an error.
. /usr/lib/vmshift-standins/common.sh
log dracut "$@"
force= drivers= image= kver=
while [ $# -gt 0 ]; do
  case $1 in
  -f | --force) force=1 ;;
  --add-drivers) drivers="$drivers $2"; shift ;;
  --add-drivers=*) drivers="$drivers ${1#*=}" ;;
  -*) echo "dracut stand-in: unsupported option $1" >&2; exit 1 ;;
  *) if [ -z "$image" ]; then image=$1; elif [ -z "$kver" ]; then kver=$1; fi ;;
  esac
  shift
done
[ -n "$kver" ] || { echo "dracut stand-in: no kernel version given" >&2; exit 1; }
[ -n "$image" ] || image=/boot/initramfs-$kver.img
if [ -e "$image" ] && [ -z "$force" ]; then
  echo "dracut: Will not override existing initramfs ($image) without --force" >&2; exit 1
fi
[ -d "/lib/modules/$kver" ] || { echo "dracut: Cannot find module directory /lib/modules/$kver/" >&2; exit 1; }
conf=$(sed -n 's/^[[:space:]]*add_drivers+*=[[:space:]]*"\(.*\)"/\1/p' /etc/dracut.conf /etc/dracut.conf.d/*.conf 2>/dev/null)
: >"$image.new"
for d in $drivers $conf; do
  path=$(find "/lib/modules/$kver/kernel" -name "$d.ko*" | head -n 1)
  if [ -z "$path" ]; then
    echo "dracut-install: Failed to find module '$d'" >&2; rm -f "$image.new"; exit 1
  fi
  echo "usr/lib/modules/$kver/${path#/lib/modules/$kver/}" >>"$image.new"
done
mv "$image.new" "$image"
EOF
  cat >"$t/usr/bin/lsinitrd" <<'EOF'
#!/bin/sh
# lsinitrd stand-in: lists what the dracut stand-in wrote.
. /usr/lib/vmshift-standins/common.sh
log lsinitrd "$@"
[ -f "$1" ] || { echo "$1: No such file or directory" >&2; exit 1; }
echo "Image: $1"
echo "========================================================================"
cat "$1"
EOF
  cat >"$t/usr/sbin/grub2-mkconfig" <<'EOF'
#!/bin/sh
# grub2-mkconfig stand-in: -o FILE. Writes a menu entry per /boot/vmlinuz-*, newest first,
# with root= what grub2-probe finds for / (as the real one asks it) and GRUB_CMDLINE_LINUX of
# /etc/default/grub.
. /usr/lib/vmshift-standins/common.sh
log grub2-mkconfig "$@"
out=/dev/stdout
while [ $# -gt 0 ]; do
  case $1 in
  -o) out=$2; shift ;;
  --output=*) out=${1#*=} ;;
  *) echo "grub2-mkconfig stand-in: unsupported argument $1" >&2; exit 1 ;;
  esac
  shift
done
. /etc/default/grub
dev=$(grub2-probe --target=device /) || exit 1
prefix=/boot
if awk '$2 == "/boot" { found = 1 } END { exit !found }' /proc/self/mounts; then prefix=; fi
echo "Generating grub configuration file ..." >&2
{
  echo "set default=\"${GRUB_DEFAULT:-0}\""
  echo "set timeout=${GRUB_TIMEOUT:-5}"
  for k in $(ls -1 /boot/vmlinuz-* | sort -r); do
    v=${k#/boot/vmlinuz-}
    echo "menuentry 'Red Hat Enterprise Linux ($v) 9.3 (Plow)' --class red --class gnu-linux --class gnu --class os {"
    echo "	insmod part_msdos"
    echo "	insmod ext2"
    echo "	set root='hd0,msdos1'"
    echo "	linux	$prefix/vmlinuz-$v root=$dev ro $GRUB_CMDLINE_LINUX"
    echo "	initrd	$prefix/initramfs-$v.img"
    echo "}"
  done
} >"$out.new" && mv "$out.new" "$out"
echo "done" >&2
EOF
  cat >"$t/usr/sbin/grub2-probe" <<'EOF'
#!/bin/sh
# grub2-probe stand-in: --target=device PATH. The device mounted on PATH as the running kernel
# names it (in the conversion appliance, the appliance kernel's name, which may differ from
# libguestfs's).
. /usr/lib/vmshift-standins/common.sh
log grub2-probe "$@"
[ "$1" = --target=device ] && [ $# -eq 2 ] || { echo "grub2-probe stand-in: unsupported: $*" >&2; exit 1; }
dev=$(awk -v p="$2" '$2 == p { d = $1 } END { print d }' /proc/self/mounts)
case $dev in /dev/*) echo "$dev" ;; *) echo "grub2-probe: error: cannot find a device for $2 (got \"$dev\")" >&2; exit 1 ;; esac
EOF
  cat >"$t/usr/sbin/grubby" <<'EOF'
#!/bin/sh
# grubby stand-in: --default-kernel, --set-default KERNEL.
. /usr/lib/vmshift-standins/common.sh
log grubby "$@"
case $1 in
--default-kernel) cat "$state/default-kernel" ;;
--set-default | --set-default=*)
  k=${1#--set-default}; k=${k#=}; [ -n "$k" ] || k=$2
  [ -f "$k" ] || { echo "grubby: The param $k is incorrect" >&2; exit 1; }
  echo "$k" >"$state/default-kernel"
  echo "The default is /boot/loader/entries/$k.conf with index 0 and kernel $k" ;;
*) echo "grubby stand-in: unsupported: $*" >&2; exit 1 ;;
esac
EOF
  chmod 755 "$t"/usr/bin/{rpm,dracut,lsinitrd} "$t"/usr/sbin/{grub2-mkconfig,grub2-probe,grubby}
  # ls is the host's, which needs more libraries than bash: busybox's instead.
  ln -sf busybox "$t/usr/bin/ls"
}

cat >"$t/etc/X11/xorg.conf" <<'EOF'
Section "Device"
	Identifier  "Card0"
	Driver      "vmware"
EndSection
EOF

case $variant in
debian)
  kver=6.1.0-18-amd64
  echo 12.5 >"$t/etc/debian_version"
  cat >"$t/usr/lib/os-release" <<'EOF'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
EOF
  ln -s ../usr/lib/os-release "$t/etc/os-release"
  cat >"$t/etc/fstab" <<'EOF'
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda2       /               ext4    errors=remount-ro 0       1
/dev/sda1       /boot           ext4    defaults        0       2
EOF
  fake_kernel $kver "initrd.img-$kver" ko
  ln -s "boot/vmlinuz-$kver" "$t/vmlinuz"
  ln -s "boot/initrd.img-$kver" "$t/initrd.img"
  grub_default "root=/dev/sda2 ro"
  mkdir -p "$t/boot/grub"
  printf '(hd0)\t/dev/sda\n' >"$t/boot/grub/device.map"
  cat >"$t/boot/grub/grub.cfg" <<EOF
set default="0"
set timeout=5
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os {
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	linux	/vmlinuz-$kver root=/dev/sda2 ro quiet
	initrd	/initrd.img-$kver
}
EOF
  mkdir -p "$t/etc/network" "$t/etc/udev/rules.d" "$t/etc/initramfs-tools"
  cat >"$t/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto ens192
iface ens192 inet static
	address 10.0.2.15/24
	gateway 10.0.2.2
EOF
  cat >"$t/etc/udev/rules.d/70-persistent-net.rules" <<'EOF'
# PCI device 0x15ad:0x07b0 (vmxnet3)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="vmxnet3", ATTR{address}=="00:50:56:aa:bb:cc", ATTR{dev_id}=="0x0", ATTR{type}=="1", NAME="ens192"
EOF
  printf 'MODULES=dep\nBUSYBOX=auto\nCOMPRESS=zstd\n' >"$t/etc/initramfs-tools/initramfs.conf"
  printf '# List of modules to include in the initramfs\n' >"$t/etc/initramfs-tools/modules"
  mkdir -p "$t/var/lib/dpkg/info"
  pkg() { # NAME VERSION SECTION DESCRIPTION
    cat <<EOF
Package: $1
Status: install ok installed
Priority: optional
Section: $3
Installed-Size: 100
Maintainer: Debian <debian@example.invalid>
Architecture: amd64
Version: $2
Description: $4

EOF
  }
  {
    pkg base-files 12.4+deb12u5 admin "Debian base system miscellaneous files"
    pkg grub-pc 2.06-13+deb12u1 admin "GRand Unified Bootloader, version 2 (PC/BIOS version)"
    pkg initramfs-tools 0.142 utils "generic modular initramfs generator (automation)"
    pkg linux-image-$kver 6.1.76-1 kernel "Linux 6.1 for 64-bit PCs (signed)"
    pkg linux-image-amd64 6.1.76-1 kernel "Linux for 64-bit PCs (meta-package)"
    pkg open-vm-tools 2:12.2.0-1+deb12u2 admin "Open VMware Tools for virtual machines hosted on VMware (CLI)"
  } >"$t/var/lib/dpkg/status"
  for p in base-files grub-pc initramfs-tools "linux-image-$kver" linux-image-amd64 open-vm-tools; do
    : >"$t/var/lib/dpkg/info/$p.list"
  done
  ;;
fedora | rhel)
  if [ "$variant" = rhel ]; then
    kver=5.14.0-362.8.1.el9_3.x86_64
    echo 'Red Hat Enterprise Linux release 9.3 (Plow)' >"$t/etc/redhat-release"
    cat >"$t/usr/lib/os-release" <<'EOF'
NAME="Red Hat Enterprise Linux"
VERSION="9.3 (Plow)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="9.3"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Red Hat Enterprise Linux 9.3 (Plow)"
ANSI_COLOR="0;31"
CPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"
HOME_URL="https://www.redhat.com/"
EOF
  else
  kver=6.2.9-300.fc38.x86_64
  echo 'Fedora release 38 (Thirty Eight)' >"$t/etc/redhat-release"
  ln -s redhat-release "$t/etc/fedora-release"
  cat >"$t/usr/lib/os-release" <<'EOF'
NAME="Fedora Linux"
VERSION="38 (Server Edition)"
ID=fedora
VERSION_ID=38
VERSION_CODENAME=""
PLATFORM_ID="platform:f38"
PRETTY_NAME="Fedora Linux 38 (Server Edition)"
ANSI_COLOR="0;38;2;60;110;180"
CPE_NAME="cpe:/o:fedoraproject:fedora:38"
HOME_URL="https://fedoraproject.org/"
VARIANT="Server Edition"
VARIANT_ID=server
EOF
  fi
  ln -s redhat-release "$t/etc/system-release"
  ln -s ../usr/lib/os-release "$t/etc/os-release"
  cat >"$t/etc/fstab" <<'EOF'
/dev/sda2               /                       ext4    defaults        1 1
/dev/sda1               /boot                   ext4    defaults        1 2
EOF
  fake_kernel $kver "initramfs-$kver.img" ko.xz
  if [ "$variant" = rhel ]; then
    kver_old=5.14.0-284.11.1.el9_2.x86_64
    fake_kernel $kver_old "initramfs-$kver_old.img" ko.xz
  fi
  grub_default "root=/dev/sda2 ro rhgb"
  mkdir -p "$t/boot/grub2" "$t/boot/loader/entries"
  if [ "$variant" = rhel ]; then
    echo GRUB_ENABLE_BLSCFG=false >>"$t/etc/default/grub"
    cat >"$t/boot/grub2/grub.cfg" <<EOF
set default="0"
set timeout=5
menuentry 'Red Hat Enterprise Linux ($kver) 9.3 (Plow)' --class red --class gnu-linux --class gnu --class os {
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	linux	/vmlinuz-$kver root=/dev/sda2 ro rhgb quiet
	initrd	/initramfs-$kver.img
}
EOF
  else
  cat >"$t/boot/grub2/grub.cfg" <<'EOF'
set default="0"
set timeout=5
insmod part_msdos
insmod ext2
set root='hd0,msdos1'
blscfg
EOF
  cat >"$t/boot/loader/entries/0123456789abcdef0123456789abcdef-$kver.conf" <<EOF
title Fedora Linux ($kver) 38 (Server Edition)
version $kver
linux /vmlinuz-$kver
initrd /initramfs-$kver.img
options root=/dev/sda2 ro rhgb
grub_users \$grub_users
grub_arg --unrestricted
grub_class fedora
EOF
  fi
  mkdir -p "$t/etc/sysconfig/network-scripts"
  cat >"$t/etc/sysconfig/network-scripts/ifcfg-ens192" <<'EOF'
TYPE=Ethernet
BOOTPROTO=none
NAME=ens192
DEVICE=ens192
HWADDR=00:50:56:aa:bb:cc
ONBOOT=yes
IPADDR=10.0.2.15
PREFIX=24
GATEWAY=10.0.2.2
EOF
  printf 'add_drivers+=" vmw_pvscsi mptspi "\n' >"$t/etc/dracut.conf"
  mkdir -p "$t/etc/dracut.conf.d"

  # An RPM database (sqlite, where Fedora keeps it) listing empty stand-in packages, so
  # that inspection can list applications. libguestfs runs librpm chrooted into the
  # guest, so the guest also needs the macros that tell librpm where its database is.
  mkdir -p "$t/usr/lib/rpm" "$t/usr/lib/sysimage/rpm" "$t/var/lib"
  cat >"$t/usr/lib/rpm/macros" <<'EOF2'
%_usr			/usr
%_var			/var
%_dbpath		%{_usr}/lib/sysimage/rpm
%_db_backend		sqlite
EOF2
  cp /usr/lib/rpm/rpmrc "$t/usr/lib/rpm/rpmrc" # without it librpm reads no macros at all
  ln -s ../../usr/lib/sysimage/rpm "$t/var/lib/rpm"
  rpms=$work/rpmbuild
  cat >"$work/stand-in.spec" <<'EOF2'
Name: %{p_name}
Version: %{p_version}
Release: %{p_release}
%{?p_epoch:Epoch: %{p_epoch}}
Summary: %{p_summary}
License: GPL-2.0-or-later
URL: https://example.invalid/
%description
Stand-in package for vmshift tests: no files.
%files
EOF2
  stand_in() { # NAME VERSION RELEASE ARCH SUMMARY [EPOCH]
    rpmbuild -bb --quiet --define "_topdir $rpms" --target "$4" \
      --define "p_name $1" --define "p_version $2" --define "p_release $3" \
      --define "p_summary $5" ${6:+--define "p_epoch $6"} "$work/stand-in.spec" \
      >>"$work/rpm.log" 2>&1 || { cat "$work/rpm.log" >&2; die "rpmbuild $1 failed"; }
  }
  if [ "$variant" = rhel ]; then
    stand_in redhat-release 9.3 0.5.el9 x86_64 "Red Hat Enterprise Linux release files"
    stand_in kernel-core 5.14.0 362.8.1.el9_3 x86_64 "The Linux kernel"
    stand_in kernel-modules 5.14.0 362.8.1.el9_3 x86_64 "kernel modules to match the core kernel"
    stand_in grub2-pc 2.06 70.el9_3.1 x86_64 "Bootloader with support for Linux, Multiboot, and more" 1
    stand_in grubby 8.40 64.el9 x86_64 "Command line tool for updating bootloader configs"
    stand_in dracut 057 44.git20230822.el9 x86_64 "Initramfs generator using udev"
    stand_in open-vm-tools 12.2.5 3.el9 x86_64 "Open Virtual Machine Tools for virtual machines hosted on VMware"
  else
  stand_in fedora-release 38 36 noarch "Fedora release files"
  stand_in kernel-core 6.2.9 300.fc38 x86_64 "The Linux kernel"
  stand_in kernel-modules 6.2.9 300.fc38 x86_64 "kernel modules to match the core kernel"
  stand_in grub2-pc 2.06 95.fc38 x86_64 "Bootloader with support for Linux, Multiboot, and more" 1
  stand_in dracut 059 4.fc38 x86_64 "Initramfs generator using udev"
  stand_in open-vm-tools 12.2.0 1.fc38 x86_64 "Open Virtual Machine Tools for virtual machines hosted on VMware"
  fi
  db=$t/usr/lib/sysimage/rpm
  force=()
  rpm --help 2>/dev/null | grep -q -- --force-debian && force=(--force-debian)
  rpm --dbpath "$db" --define '_db_backend sqlite' --initdb
  rpm --dbpath "$db" --define '_db_backend sqlite' -i --justdb --nodeps --noscripts \
    --ignorearch --ignoreos "${force[@]}" "$rpms"/RPMS/*/*.rpm >>"$work/rpm.log" 2>&1 ||
    { cat "$work/rpm.log" >&2; die "rpm -i --justdb failed"; }
  # rpmdb.sqlite is in WAL mode: keep its -shm and -wal files (as Fedora does), without
  # them librpm cannot open it from a read-only mount.
  [ -e "$db/rpmdb.sqlite-shm" ] || die "rpm left no rpmdb.sqlite-shm"
  if [ "$variant" = rhel ]; then
    rhel_standins
  fi
  ;;
esac

say "building $variant guest (kernel $kver) with guestfish"
tar -C "$t" --numeric-owner --owner=0 --group=0 -cf "$work/tree.tar" .
rm -f "$tmp"
guestfish >"$work/inspect.txt" 2>"$work/guestfish.log" <<EOF || {
sparse $tmp 1G
run
part-init /dev/sda mbr
part-add /dev/sda p 2048 526335
part-add /dev/sda p 526336 2095103
part-set-bootable /dev/sda 1 true
mkfs ext4 /dev/sda1 label:boot
mkfs ext4 /dev/sda2 label:root
mount /dev/sda2 /
mkdir /boot
mount /dev/sda1 /boot
tar-in $work/tree.tar /
umount-all
inspect-os
inspect-get-distro /dev/sda2
inspect-get-major-version /dev/sda2
inspect-get-minor-version /dev/sda2
inspect-get-arch /dev/sda2
inspect-get-mountpoints /dev/sda2
mount-ro /dev/sda2 /
mount-ro /dev/sda1 /boot
inspect-list-applications2 /dev/sda2
EOF
  cat "$work/guestfish.log" >&2
  die "guestfish failed"
}
mapfile -t seen <"$work/inspect.txt"
case $variant in debian) want_version="12 5" ;; fedora) want_version="38 0" ;; rhel) want_version="9 3" ;; esac
[ "${seen[0]:-}" = /dev/sda2 ] || die "inspection found no root on /dev/sda2: ${seen[*]}"
[ "${seen[1]:-}" = "$variant" ] || die "inspection says distro \"${seen[1]:-}\", not $variant"
[ "${seen[2]:-} ${seen[3]:-}" = "$want_version" ] ||
  die "inspection says version ${seen[2]:-}.${seen[3]:-}, not ${want_version/ /.}"
[ "${seen[4]:-}" = x86_64 ] || die "inspection says arch \"${seen[4]:-}\", not x86_64"
grep -qx '/boot: /dev/sda1' "$work/inspect.txt" || die "inspection sees no /boot on /dev/sda1"
grep -qE '^ *app2_name: open-vm-tools$' "$work/inspect.txt" ||
  die "inspection lists no open-vm-tools among the applications"

mv -f "$tmp" "$out"
ok=true
say "done: $out ($variant ${want_version/ /.}, kernel $kver)"
