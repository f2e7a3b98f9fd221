import { assertEquals } from "../../_assert.ts";
import { compareVersions, familyOf } from "../../../src/convert/linux/_guest.ts";
import { renameRoot, resizeEnvBlock } from "../../../src/convert/linux/bootloader.ts";
import { replaceXDrivers } from "../../../src/convert/linux/leftovers.ts";
import { dpkgInstalled } from "../../../src/convert/linux/vmware_tools.ts";

Deno.test("familyOf knows the Debian and RHEL families and nothing else", () => {
  for (const d of ["debian", "ubuntu"]) assertEquals(familyOf(d), "debian");
  for (const d of ["rhel", "centos", "fedora", "rocky", "almalinux", "oraclelinux"]) {
    assertEquals(familyOf(d), "rhel");
  }
  for (const d of ["archlinux", "sles", "gentoo", "unknown"]) assertEquals(familyOf(d), undefined);
});

Deno.test("compareVersions sorts kernel versions numerically", () => {
  const v = ["6.1.0-9-amd64", "6.1.0-18-amd64", "5.10.0-28-amd64", "6.1.0-18-rt-amd64"];
  assertEquals(v.sort(compareVersions), [
    "5.10.0-28-amd64",
    "6.1.0-9-amd64",
    "6.1.0-18-amd64",
    "6.1.0-18-rt-amd64",
  ]);
});

Deno.test("dpkgInstalled lists installed packages only", () => {
  const status = [
    "Package: open-vm-tools\nStatus: install ok installed\nVersion: 2:12.2.0",
    "Package: removed-one\nStatus: deinstall ok config-files",
    "Package: half\nStatus: install reinstreq half-installed",
    "Package: libc6\nVersion: 2.36\nStatus: install ok installed",
  ].join("\n\n");
  assertEquals(dpkgInstalled(status), ["open-vm-tools", "libc6"]);
});

Deno.test("replaceXDrivers swaps the VMware display and mouse drivers", () => {
  const conf = 'Section "Device"\n  Identifier "Card0"\n  Driver "vmware"\nEndSection\n' +
    'Section "InputDevice"\n  Driver "vmmouse"\nEndSection\n  Driver "vmwarefoo"\n';
  const out = replaceXDrivers(conf);
  assertEquals(out.includes('Driver "modesetting"'), true);
  assertEquals(out.includes('Driver "evdev"'), true);
  assertEquals(out.includes('Driver "vmwarefoo"'), true);
});

Deno.test("renameRoot puts grub-mkconfig's root device back under libguestfs's name", () => {
  const cfg = "linux /vmlinuz-6.1 root=/dev/sdb1 ro quiet\n" +
    "linux /vmlinuz-6.1 root=/dev/sdb1\nset root='hd0,msdos1'\n# /dev/sdb10 root=/dev/sdb10\n";
  assertEquals(
    renameRoot(cfg, "/dev/sdb1", "/dev/sda1"),
    "linux /vmlinuz-6.1 root=/dev/sda1 ro quiet\n" +
      "linux /vmlinuz-6.1 root=/dev/sda1\nset root='hd0,msdos1'\n# /dev/sdb10 root=/dev/sdb10\n",
  );
  // Names that do not depend on the probe order stay.
  const lvm = "linux /vmlinuz root=/dev/mapper/vg-root ro";
  assertEquals(renameRoot(lvm, "/dev/mapper/vg-root", "/dev/vg/root"), lvm);
  assertEquals(renameRoot(cfg, "/dev/sdb1", "/dev/sdb1"), cfg);
});

Deno.test("resizeEnvBlock keeps grubenv at its size, or leaves it when the text cannot fit", () => {
  const header = "# GRUB Environment Block\n";
  const text = `${header}saved_entry=0\nkernelopts=root=/dev/xvda2 ro\n`;
  const block = text + "#".repeat(1024 - text.length);
  const shorter = resizeEnvBlock(block, block.replace("/dev/xvda2", "/dev/vda2"));
  assertEquals(shorter.length, 1024);
  assertEquals(shorter.startsWith(text.replace("/dev/xvda2", "/dev/vda2") + "#"), true);
  const longer = resizeEnvBlock(shorter, shorter.replace("/dev/vda2", "/dev/xvda2"));
  assertEquals(longer, block);
  // No padding left to take from: unchanged.
  const full = `${header}kernelopts=root=/dev/vda2\n`;
  assertEquals(resizeEnvBlock(full, full.replace("vda2", "xvda2")), full);
  // Not an environment block: unchanged.
  assertEquals(resizeEnvBlock("kernelopts=x\n##", "kernelopts=xy\n##"), "kernelopts=x\n##");
});
