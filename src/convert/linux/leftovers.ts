/**
 * VMware leftovers that are not drivers: the X server configured for VMware's display and mouse
 * drivers, which do not exist on KVM (X would not start), and SELinux labels, which the
 * conversion's file changes do not set: an SELinux guest is asked to relabel itself at its
 * next boot.
 *
 * @module
 */

import { editText, type LinuxGuest, readText } from "./_guest.ts";

/**
 * Replaces VMware's X drivers: `vmware` by `modesetting` (which works with every KVM display:
 * QXL, virtio-gpu, bochs), and the `vmmouse` input driver by `evdev`.
 *
 * @param text An X configuration file.
 * @returns The new text.
 * @example
 * ```ts
 * import { replaceXDrivers } from "./leftovers.ts";
 * if (replaceXDrivers('  Driver "vmware"\n') !== '  Driver "modesetting"\n') throw new Error();
 * ```
 */
export function replaceXDrivers(text: string): string {
  return text
    .replace(/^(\s*Driver\s+)"vmware"/gim, '$1"modesetting"')
    .replace(/^(\s*Driver\s+)"vmmouse"/gim, '$1"evdev"');
}

/**
 * Fixes the X configuration and asks for an SELinux relabel.
 *
 * @param guest The mounted guest.
 */
export async function fixLeftovers(guest: LinuxGuest): Promise<void> {
  const { g, report } = guest;
  const xfiles = [
    "/etc/X11/xorg.conf",
    ...(g.isDir("/etc/X11/xorg.conf.d") ? g.globExpand("/etc/X11/xorg.conf.d/*.conf") : []),
  ];
  for (const file of xfiles) {
    if (await editText(g, file, replaceXDrivers)) {
      report.changed(`${file}: the VMware X drivers replaced by modesetting and evdev`);
    }
  }
  const selinux = (await readText(g, "/etc/selinux/config")) ?? "";
  if (/^\s*SELINUX\s*=\s*(enforcing|permissive)\b/m.test(selinux)) {
    g.touch("/.autorelabel");
    report.changed("SELinux is enabled: /.autorelabel asks for a relabel at the first boot");
  }
}
