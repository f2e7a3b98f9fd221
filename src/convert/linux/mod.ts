/**
 * Linux conversion: the steps, in the order they depend on each other. Device names and the
 * network pins are written before the initramfs is rebuilt (the initramfs carries copies of
 * fstab-derived resume settings and of the NIC naming rules); the bootloader comes last, so
 * that the regenerated menu lists the rebuilt initramfs images.
 *
 * @module
 */

import type { LinuxGuest } from "./_guest.ts";
import { fixBootloader } from "./bootloader.ts";
import { remapDeviceReferences } from "./devices.ts";
import { addVirtioToInitramfs } from "./initramfs.ts";
import { fixLeftovers } from "./leftovers.ts";
import { fixNetwork } from "./network.ts";
import { removeVmwareTools } from "./vmware_tools.ts";

export { familyOf, type LinuxGuest } from "./_guest.ts";

/**
 * Makes a Linux guest boot on KVM with virtio.
 *
 * @param guest The mounted guest.
 * @throws {Error} When the guest cannot be made bootable (no kernel with virtio, no tool to
 *   rebuild the initramfs). Problems that do not stop the guest from booting go to the report.
 */
export async function convertLinux(guest: LinuxGuest): Promise<void> {
  await removeVmwareTools(guest);
  guest.signal.throwIfAborted();
  await remapDeviceReferences(guest);
  await fixNetwork(guest);
  await fixLeftovers(guest);
  guest.signal.throwIfAborted();
  const kernels = await addVirtioToInitramfs(guest);
  guest.signal.throwIfAborted();
  await fixBootloader(guest, kernels);
}
