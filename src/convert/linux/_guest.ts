/**
 * What every Linux conversion step gets: the libguestfs handle with the guest's filesystems
 * mounted, what inspection found, the VM, the device map and the report. Plus the few helpers
 * the steps share: reading and editing guest files, and listing the installed kernels.
 *
 * @module
 */

import type { Vm } from "../../vm.ts";
import type { DeviceMap } from "../_devices.ts";
import type { Guestfs } from "../guestfs.ts";
import type { ConversionReport } from "../report.ts";

/** Distribution families whose conversion vmshift knows. */
export type Family = "debian" | "rhel";

/** A mounted Linux guest, ready to change. */
export interface LinuxGuest {
  /** The handle; the guest's filesystems are mounted at `/`. */
  g: Guestfs;
  /** The root filesystem's device (libguestfs naming). */
  root: string;
  /** Distribution, as libguestfs names it (`debian`, `rhel`, ...). */
  distro: string;
  /** Its family. */
  family: Family;
  /** Major version. */
  major: number;
  /** The VM being migrated. */
  vm: Vm;
  /** Source device names → target device names. */
  devices: DeviceMap;
  /** Where changes and problems go. */
  report: ConversionReport;
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal;
  /** Debug messages (`-v`). */
  debug: (message: string) => void;
}

/** A conversion step: changes the guest, records what it did in the report. */
export type Step = (guest: LinuxGuest) => Promise<void>;

/**
 * The family of a distribution, or undefined when vmshift cannot convert it.
 *
 * @param distro libguestfs's distro name.
 * @returns The family.
 * @example
 * ```ts
 * import { familyOf } from "./_guest.ts";
 * if (familyOf("ubuntu") !== "debian" || familyOf("archlinux") !== undefined) throw new Error();
 * ```
 */
export function familyOf(distro: string): Family | undefined {
  switch (distro) {
    case "debian":
    case "ubuntu":
    case "linuxmint":
    case "kalilinux":
      return "debian";
    case "rhel":
    case "centos":
    case "fedora":
    case "rocky":
    case "almalinux":
    case "oraclelinux":
    case "scientificlinux":
    case "redhat-based":
    case "circle":
      return "rhel";
    default:
      return undefined;
  }
}

/**
 * Reads a text file of the guest.
 *
 * @param g The handle.
 * @param path Path in the guest.
 * @returns The text, or undefined when it is not a regular file.
 */
export async function readText(g: Guestfs, path: string): Promise<string | undefined> {
  if (!g.isFile(path)) return undefined;
  return await g.cat(path);
}

/**
 * Edits a text file of the guest, writing it back only when the edit changed it.
 *
 * @param g The handle.
 * @param path Path in the guest.
 * @param edit Returns the new text.
 * @returns True when the file changed.
 */
export async function editText(
  g: Guestfs,
  path: string,
  edit: (text: string) => string,
): Promise<boolean> {
  const before = await readText(g, path);
  if (before === undefined) return false;
  const after = edit(before);
  if (after === before) return false;
  await g.write(path, after);
  return true;
}

/** An installed kernel. */
export interface Kernel {
  /** The version, as in `/lib/modules/VERSION`. */
  version: string;
  /** Its image, e.g. `/boot/vmlinuz-6.1.0-18-amd64`. */
  image: string;
  /** The virtio drivers it lacks (neither built in nor a module); empty when it has them all. */
  missing: string[];
}

/** The drivers a guest needs on KVM: disk (blk, scsi), network, and the PCI transport. */
export const VIRTIO_DRIVERS = ["virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net"] as const;

const DRIVER_DIR: Record<(typeof VIRTIO_DRIVERS)[number], string> = {
  virtio_pci: "virtio",
  virtio_blk: "block",
  virtio_scsi: "scsi",
  virtio_net: "net",
};

/**
 * The kernels installed in the guest (an image in `/boot` and modules in `/lib/modules`), newest
 * first, each with the virtio drivers it lacks.
 *
 * @param g The handle, guest mounted.
 * @returns The kernels.
 */
export async function installedKernels(g: Guestfs): Promise<Kernel[]> {
  const modulesDir = g.isDir("/lib/modules") ? "/lib/modules" : "/usr/lib/modules";
  if (!g.isDir(modulesDir)) return [];
  const kernels: Kernel[] = [];
  for (const version of g.ls(modulesDir)) {
    const image = ["/boot/vmlinuz-", "/boot/vmlinux-", `${modulesDir}/${version}/vmlinuz`]
      .map((p) => p.endsWith("/vmlinuz") ? p : p + version)
      .find((p) => g.isFile(p));
    if (!image) continue;
    const builtin = (await readText(g, `${modulesDir}/${version}/modules.builtin`)) ?? "";
    const missing = VIRTIO_DRIVERS.filter((d) =>
      !builtin.split("\n").some((l) => l.endsWith(`/${d}.ko`)) &&
      g.globExpand(`${modulesDir}/${version}/kernel/drivers/${DRIVER_DIR[d]}/${d}.ko*`).length === 0
    );
    kernels.push({ version, image, missing });
  }
  return kernels.sort((a, b) => compareVersions(b.version, a.version));
}

/**
 * Compares kernel versions the way `sort -V` does, enough for `6.1.0-18-amd64`.
 *
 * @param a A version.
 * @param b Another.
 * @returns Negative, zero or positive.
 * @example
 * ```ts
 * import { compareVersions } from "./_guest.ts";
 * if (compareVersions("6.1.0-9-amd64", "6.1.0-18-amd64") >= 0) throw new Error();
 * ```
 */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? "";
    const y = pb[i] ?? "";
    if (x === y) continue;
    const nx = Number(x);
    const ny = Number(y);
    if (i % 2 === 1 && !Number.isNaN(nx) && !Number.isNaN(ny)) return nx - ny;
    return x < y ? -1 : 1;
  }
  return 0;
}

/**
 * The first of some paths that is a file in the guest.
 *
 * @param g The handle.
 * @param paths Candidates.
 * @returns The first that exists, or undefined.
 */
export function firstFile(g: Guestfs, paths: readonly string[]): string | undefined {
  return paths.find((p) => g.isFile(p));
}
