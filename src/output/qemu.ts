/**
 * `-o qemu -os DIR`: the disks as files in DIR (`NAME-sda`, ...) and a shell script
 * (`NAME.sh`) that boots the VM with qemu-system-x86_64 and virtio devices.
 *
 * @module
 */

import { directoryOutput } from "./_disk_files.ts";
import { qemuScript } from "./qemu_script.ts";

/** The `-o qemu` output. */
export const qemuOutput = directoryOutput("qemu", {
  suffix: ".sh",
  mode: 0o755,
  render: (vm, disks) =>
    qemuScript(vm, disks, {
      virtio: (vm.targetDevices?.disk ?? "virtio-blk") === "virtio-blk",
      ...(vm.targetDevices ? { nic: vm.targetDevices.nic } : {}),
    }),
});
