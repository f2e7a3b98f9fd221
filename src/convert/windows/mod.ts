/**
 * Windows conversion: the steps, in the order they depend on each other. Every check that
 * can refuse the guest runs before the first change; the first-boot script comes last, since
 * it acts on what the other steps installed and found.
 *
 * @module
 */

import type { WindowsGuest } from "./_guest.ts";
import { checkWindows } from "./checks.ts";
import { installFirstboot, staticIpsFromGuest } from "./firstboot.ts";
import { withHive } from "./registry.ts";
import { type InstalledDrivers, installVirtioDrivers } from "./virtio.ts";
import { disableVmwareServices, findVmwareTools } from "./vmware.ts";

export { realPath, type StaticIp, type WindowsGuest } from "./_guest.ts";
export { parseMacIp } from "./firstboot.ts";
export { copyFromIso, locateVirtioWin, type VirtioWin } from "./virtio.ts";

/**
 * Makes a Windows guest boot on KVM: virtio drivers (or emulated devices when there are
 * none), VMware services disabled, and a first-boot script for what only Windows can do.
 *
 * @param guest The mounted guest.
 * @returns The devices the output must give the VM.
 * @throws {Error} When the guest must not be converted (hibernated, Fast Startup, an
 *   unsupported release); nothing has been changed then.
 */
export async function convertWindows(guest: WindowsGuest): Promise<InstalledDrivers> {
  await checkWindows(guest);
  guest.signal.throwIfAborted();
  const vmwareTools = await findVmwareTools(guest);
  const staticIps = guest.staticIps.length ? guest.staticIps : await staticIpsFromGuest(guest);
  const drivers = await installVirtioDrivers(guest);
  if (drivers.block === "sata") await enableInboxSata(guest);
  guest.signal.throwIfAborted();
  await disableVmwareServices(guest);
  await installFirstboot(guest, { drivers, vmwareTools, staticIps });
  return drivers;
}

/**
 * Without viostor, the outputs put the disks on the q35 machine's SATA (AHCI) controller,
 * which has no IDE: Windows' own AHCI driver must then start at boot, which it does not
 * where Windows was installed on another controller.
 */
async function enableInboxSata(guest: WindowsGuest): Promise<void> {
  await withHive(guest.g, guest.systemHive, true, (h) => {
    for (const name of ["storahci", "msahci"]) {
      const key = [guest.controlSet, "Services", name];
      if (h.node(key) === undefined) continue;
      const start = h.getDword(key, "Start");
      if (start === 0) continue;
      h.set(key, { Start: { dword: 0 } });
      guest.report.changed(
        `Set Windows' AHCI driver ${name} to start at boot (it was ${start ?? "unset"}), for ` +
          "the emulated SATA disk",
      );
    }
  });
}
