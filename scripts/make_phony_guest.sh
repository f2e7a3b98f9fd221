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
#
# libguestfs runs with LIBGUESTFS_BACKEND=direct and, unless LIBGUESTFS_BACKEND_SETTINGS is
# set (even to empty), force_tcg, because KVM hangs on our build machines.
set -euo pipefail

usage() { echo "usage: $0 OUT.img [debian|fedora]" >&2; exit 2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
out=$1
variant=${2:-debian}
case $variant in debian | fedora) ;; *) usage ;; esac

export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}

start=$SECONDS
say() { printf '[make_phony_guest %3ds] %s\n' $((SECONDS - start)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v guestfish >/dev/null || die "guestfish not found (apt-get install libguestfs-tools)"
if [ "$variant" = fedora ] && ! command -v rpmbuild >/dev/null; then
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
fedora)
  kver=6.2.9-300.fc38.x86_64
  echo 'Fedora release 38 (Thirty Eight)' >"$t/etc/redhat-release"
  ln -s redhat-release "$t/etc/fedora-release"
  ln -s redhat-release "$t/etc/system-release"
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
  ln -s ../usr/lib/os-release "$t/etc/os-release"
  cat >"$t/etc/fstab" <<'EOF'
/dev/sda2               /                       ext4    defaults        1 1
/dev/sda1               /boot                   ext4    defaults        1 2
EOF
  fake_kernel $kver "initramfs-$kver.img" ko.xz
  grub_default "root=/dev/sda2 ro rhgb"
  mkdir -p "$t/boot/grub2" "$t/boot/loader/entries"
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
  stand_in fedora-release 38 36 noarch "Fedora release files"
  stand_in kernel-core 6.2.9 300.fc38 x86_64 "The Linux kernel"
  stand_in kernel-modules 6.2.9 300.fc38 x86_64 "kernel modules to match the core kernel"
  stand_in grub2-pc 2.06 95.fc38 x86_64 "Bootloader with support for Linux, Multiboot, and more" 1
  stand_in dracut 059 4.fc38 x86_64 "Initramfs generator using udev"
  stand_in open-vm-tools 12.2.0 1.fc38 x86_64 "Open Virtual Machine Tools for virtual machines hosted on VMware"
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
want_version=$([ "$variant" = debian ] && echo "12 5" || echo "38 0")
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
