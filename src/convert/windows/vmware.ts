/**
 * VMware's services and drivers: disabled in the registry so that they do not start on KVM
 * (their devices are gone; some, like vmci or vm3dmp, log errors or slow the boot down when
 * they start without them), and VMware Tools found in the Uninstall key so that the first
 * boot removes it properly, with its own installer.
 *
 * @module
 */

import type { WindowsGuest } from "./_guest.ts";
import { type Hive, withHive } from "./registry.ts";

/**
 * The services and drivers VMware Tools installs (lower case), by what they drive. Boot-start
 * ones (pvscsi, vmci) are disabled too: after conversion the disk is on virtio (or SATA).
 */
export const VMWARE_SERVICES: readonly string[] = [
  // devices
  "vmci", // VMCI bus
  "vmxnet", // vmxnet NIC
  "vmxnet3ndis5",
  "vmxnet3ndis6", // vmxnet3 NIC
  "vmxnet3",
  "pvscsi", // paravirtual SCSI
  "vm3dmp", // SVGA 3D display
  "vm3dmp_loader",
  "vm3dmp-debug",
  "vm3dmp-stats",
  "vm3dservice",
  "vmx_svga",
  "vmmouse", // mouse
  "vmusbmouse",
  "vmkbd",
  "vmmemctl", // balloon
  "vmrawdsk",
  "vmhgfs", // shared folders
  "vmusb",
  "vsock", // vSockets
  "vmvsock",
  "vsepflt", // guest introspection
  "vnetflt",
  "vnetwfp",
  "giappdef",
  // services
  "vmtools",
  "vmvss", // VSS provider
  "vgauthservice",
  "vmwareaudio",
  "vmaudio",
];

/** A service's start type as words. */
function startName(start: number | undefined): string {
  return ["boot", "system", "automatic", "manual", "disabled"][start ?? -1] ?? `${start}`;
}

/** The VMware Tools installation found in the guest. */
export interface VmwareTools {
  /** The Uninstall subkey (the MSI product code). */
  key: string;
  /** The command that removes it, quietly and without a reboot. */
  uninstall: string;
}

/**
 * Sets `Start` to 4 (disabled) on every VMware service present in the boot control set and
 * records each in the report with its former start type.
 *
 * @param guest The mounted guest.
 * @returns The names of the services disabled.
 */
export async function disableVmwareServices(guest: WindowsGuest): Promise<string[]> {
  const services = [guest.controlSet, "Services"];
  return await withHive(guest.g, guest.systemHive, true, (h: Hive) => {
    const disabled: string[] = [];
    for (const name of h.children(services)) {
      if (!VMWARE_SERVICES.includes(name.toLowerCase())) continue;
      const start = h.getDword([...services, name], "Start");
      if (start === 4) continue;
      h.set([...services, name], { Start: { dword: 4 } });
      disabled.push(name);
      guest.report.changed(
        `Disabled the VMware service ${name} (its start type was ${startName(start)})`,
      );
    }
    return disabled;
  });
}

/**
 * Finds VMware Tools in `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall`.
 *
 * @param guest The mounted guest.
 * @returns How to uninstall it, or undefined when it is not installed.
 */
export async function findVmwareTools(guest: WindowsGuest): Promise<VmwareTools | undefined> {
  const uninstall = ["Microsoft", "Windows", "CurrentVersion", "Uninstall"];
  return await withHive(guest.g, guest.softwareHive, false, (h) => {
    for (const key of h.children(uninstall)) {
      const name = h.getString([...uninstall, key], "DisplayName") ?? "";
      if (!/VMware Tools/i.test(name)) continue;
      const command = h.getString([...uninstall, key], "UninstallString");
      if (command === undefined) {
        guest.report.problem(
          `VMware Tools (Uninstall key ${key}) has no UninstallString: remove it by hand`,
        );
        continue;
      }
      // VMware's MSI registers "MsiExec.exe /I{code}" (the repair command) as its
      // UninstallString: remove the product instead.
      const msi = /msiexec(\.exe)?\s+\/[ix]\s*(\{[0-9A-F-]+\})/i.exec(command);
      return {
        key,
        uninstall: msi
          ? `msiexec.exe /x ${msi[2]} /qn /norestart REBOOT=ReallySuppress`
          : `${command} /S`,
      };
    }
    return undefined;
  });
}
