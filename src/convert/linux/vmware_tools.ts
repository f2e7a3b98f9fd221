/**
 * Removes VMware Tools: the distribution's packages (open-vm-tools and friends, VMware's own
 * `vmware-tools` RPMs) with the guest's own package manager run inside the guest, and a tarball
 * installation with its uninstaller where `vmware-uninstall-tools.pl` is present. On KVM the
 * tools are useless at best, and their services fail at every boot.
 *
 * @module
 */

import { errorMessage } from "../../errors.ts";
import { type LinuxGuest, readText } from "./_guest.ts";

/** Packages that belong to VMware Tools, in removal order (dependents first). */
export const VMWARE_PACKAGES = [
  "open-vm-tools-desktop",
  "open-vm-tools-sdmp",
  "open-vm-tools-salt-minion",
  "open-vm-tools-containerinfo",
  "open-vm-tools-devel",
  "open-vm-tools",
  "vmware-tools-foundation",
  "vmware-tools-core",
  "vmware-tools-libraries-nox",
  "vmware-tools-libraries-x",
  "vmware-tools",
  "VMwareTools",
] as const;

const UNINSTALLERS = [
  "/usr/bin/vmware-uninstall-tools.pl",
  "/usr/local/bin/vmware-uninstall-tools.pl",
];

/**
 * Names of the installed packages, from dpkg's status file.
 *
 * @param status The text of `/var/lib/dpkg/status`.
 * @returns Installed package names.
 * @example
 * ```ts
 * import { dpkgInstalled } from "./vmware_tools.ts";
 * const s = "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n";
 * if (dpkgInstalled(s).join() !== "a") throw new Error();
 * ```
 */
export function dpkgInstalled(status: string): string[] {
  const names: string[] = [];
  for (const stanza of status.split(/\n\s*\n/)) {
    const name = /^Package:\s*(\S+)/m.exec(stanza)?.[1];
    const state = /^Status:\s*(.*)$/m.exec(stanza)?.[1];
    // "install ok installed", "hold ok installed": the third word is the package's state.
    if (name && state?.trim().split(/\s+/)[2] === "installed") {
      names.push(name);
    }
  }
  return names;
}

/**
 * Removes VMware Tools from the guest.
 *
 * @param guest The mounted guest.
 */
export async function removeVmwareTools(guest: LinuxGuest): Promise<void> {
  const { g, report } = guest;
  const installed = await installedPackages(guest);
  const remove = VMWARE_PACKAGES.filter((p) => installed.has(p));
  if (remove.length) {
    const cmd = guest.family === "debian"
      ? `DEBIAN_FRONTEND=noninteractive dpkg --purge ${remove.join(" ")}`
      : `rpm -e ${remove.join(" ")}`;
    try {
      await g.sh(`${cmd} </dev/null 2>&1`);
      report.changed(`Removed VMware Tools packages: ${remove.join(", ")}`);
    } catch (e) {
      report.problem(`Could not remove ${remove.join(", ")} (${cmd}): ${errorMessage(e)}`);
    }
  }
  const uninstaller = UNINSTALLERS.find((p) => g.isFile(p));
  if (uninstaller) {
    try {
      await g.sh(`${uninstaller} </dev/null 2>&1`);
      report.changed(`Uninstalled the VMware Tools tarball installation (${uninstaller})`);
    } catch (e) {
      report.problem(`Could not run ${uninstaller}: ${errorMessage(e)}`);
    }
  }
  if (!remove.length && !uninstaller) guest.debug("VMware Tools are not installed");
}

async function installedPackages(guest: LinuxGuest): Promise<Set<string>> {
  if (guest.family === "debian") {
    return new Set(dpkgInstalled((await readText(guest.g, "/var/lib/dpkg/status")) ?? ""));
  }
  try {
    const out = await guest.g.sh("rpm -qa --qf '%{NAME}\\n' 2>/dev/null");
    return new Set(out.split("\n").map((l) => l.trim()).filter(Boolean));
  } catch (e) {
    guest.report.problem(`Could not list the installed packages with rpm: ${errorMessage(e)}`);
    return new Set();
  }
}
