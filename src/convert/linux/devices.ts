/**
 * Device references: every place a Linux guest names a disk by its bus-dependent name
 * (`/dev/sda1`, `/dev/hdb`) is rewritten to the name the disk will have on the target
 * (`/dev/vda1`). `UUID=`, `LABEL=`, `/dev/mapper/...` and LVM names do not depend on the bus
 * and stay as they are.
 *
 * - `/etc/fstab` and `/etc/crypttab`, through Augeas (the files keep their layout and
 *   comments);
 * - where the resume (hibernation) device is configured for the initramfs;
 * - LVM's device filters in `/etc/lvm/lvm.conf`.
 *
 * The kernel command line and the bootloader's files are the bootloader step's.
 *
 * @module
 */

import { errorMessage } from "../../errors.ts";
import { remapDevices } from "../_devices.ts";
import { AUG_FLAGS } from "../guestfs.ts";
import { editText, type LinuxGuest } from "./_guest.ts";

/** Files remapped as text: [path, which lines]. */
const TEXT_FILES: ReadonlyArray<[string, RegExp]> = [
  ["/etc/initramfs-tools/conf.d/resume", /^\s*RESUME=/],
  ["/etc/uswsusp.conf", /^\s*resume device/],
  ["/etc/lvm/lvm.conf", /^\s*(global_)?filter\s*=/],
];

/**
 * Rewrites device names in fstab, crypttab, resume and LVM configuration.
 *
 * @param guest The mounted guest.
 */
export async function remapDeviceReferences(guest: LinuxGuest): Promise<void> {
  const { g, report } = guest;
  try {
    // Only the two files: loading every lens on every file of /etc takes seconds under TCG.
    await g.augInit("/", AUG_FLAGS.noLoad);
    g.augTransform("Fstab", "/etc/fstab");
    g.augTransform("Crypttab", "/etc/crypttab");
    await g.augLoad();
    try {
      let changed = false;
      for (
        const [file, expr] of [
          ["/etc/fstab", "/files/etc/fstab/*/spec"],
          ["/etc/crypttab", "/files/etc/crypttab/*/device"],
        ] as const
      ) {
        for (const path of g.augMatch(expr)) {
          const value = g.augGet(path);
          const r = remapDevices(value, guest.devices);
          for (const u of r.unknown) report.problem(`${file}: no disk on the target for ${u}`);
          if (r.text === value) continue;
          g.augSet(path, r.text);
          changed = true;
          report.changed(`${file}: ${r.changes.join(", ")}`);
        }
      }
      if (changed) g.augSave();
    } finally {
      g.augClose();
    }
  } catch (e) {
    report.problem(`Could not update /etc/fstab and /etc/crypttab: ${errorMessage(e)}`);
  }
  for (const [file, lines] of TEXT_FILES) {
    await editText(g, file, (text) =>
      text.split("\n").map((line) => {
        if (!lines.test(line)) return line;
        const r = remapDevices(line, guest.devices);
        if (r.changes.length) report.changed(`${file}: ${r.changes.join(", ")}`);
        return r.text;
      }).join("\n"));
  }
}
