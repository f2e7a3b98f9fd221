/**
 * `-o local -os DIR`: the disks as files in DIR (`NAME-sda`, ...) and a libvirt domain XML
 * (`NAME.xml`) with virtio devices, ready for `virsh define`.
 *
 * @module
 */

import { directoryOutput } from "./_disk_files.ts";
import { libvirtXml } from "./libvirt_xml.ts";

/** The `-o local` output. */
export const localOutput = directoryOutput("local", {
  suffix: ".xml",
  mode: 0o644,
  render: (vm, disks) =>
    libvirtXml(vm, disks, {
      virtio: (vm.targetDevices?.disk ?? "virtio-blk") === "virtio-blk",
      ...(vm.targetDevices ? { nic: vm.targetDevices.nic } : {}),
    }),
});
