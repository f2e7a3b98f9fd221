/**
 * Block device names, from the source hypervisor's to the target's. On VMware a Linux guest sees
 * its disks as `/dev/sdX` (SCSI, SATA, and IDE under libata) or `/dev/hdX` (IDE with the old
 * driver); on the target every disk is virtio-blk, `/dev/vdX`, in the same order. Names that
 * do not depend on the bus (`UUID=`, `LABEL=`, `/dev/mapper/…`, LVM names) need no change.
 *
 * @module
 */

import { diskName, type Vm } from "../vm.ts";

/** Old whole-disk name (`sda`, `hdc`) → new whole-disk name (`vda`). */
export type DeviceMap = ReadonlyMap<string, string>;

/**
 * The device names the guest used on the source, mapped to the names it will have with
 * virtio-blk. Every disk is `sdX` in VM order (libata names IDE disks `sdX` too); IDE disks are
 * also `hdX`, counted among the IDE disks in order (as the old IDE driver named them); Xen's
 * `xvdX` maps the same way, for guests that came to VMware from Xen.
 *
 * @param vm The VM, with its disks in order.
 * @returns The map.
 * @example
 * ```ts
 * import { deviceMap } from "./_devices.ts";
 * const map = deviceMap({ disks: [{ index: 0, source: "a", virtualSize: 1, bus: "ide" }] } as never);
 * if (map.get("sda") !== "vda" || map.get("hda") !== "vda") throw new Error();
 * ```
 */
export function deviceMap(vm: Pick<Vm, "disks">): DeviceMap {
  const map = new Map<string, string>();
  let ide = 0;
  for (const [i, disk] of vm.disks.entries()) {
    const target = diskName(i, "vd");
    map.set(diskName(i, "sd"), target);
    map.set(`xv${diskName(i, "vd").slice(1)}`, target);
    if (disk.bus === "ide") map.set(diskName(ide++, "hd"), target);
  }
  // A disk whose bus is unknown (-i disk) may have been IDE: hdX maps by position.
  if (!vm.disks.some((d) => d.bus === "ide")) {
    for (const i of vm.disks.keys()) map.set(diskName(i, "hd"), diskName(i, "vd"));
  }
  return map;
}

/** What {@linkcode remapDevices} did. */
export interface Remapped {
  /** The text with device names replaced. */
  text: string;
  /** Each replacement, as `"/dev/sda1 → /dev/vda1"`, once per distinct name. */
  changes: string[];
  /** Device names that looked like a source disk but have no disk on the target. */
  unknown: string[];
}

const DEVICE = /\/dev\/((?:sd|hd|xvd)[a-z]+)(\d*)(?![a-z])/g;

/**
 * Replaces source device names (`/dev/sda1`, `/dev/hdb`) in a text with target names.
 *
 * @param text A configuration file, a kernel command line.
 * @param map From {@linkcode deviceMap}.
 * @returns The new text and what changed.
 * @example
 * ```ts
 * import { remapDevices } from "./_devices.ts";
 * const r = remapDevices("root=/dev/sda1 ro", new Map([["sda", "vda"]]));
 * if (r.text !== "root=/dev/vda1 ro") throw new Error();
 * ```
 */
export function remapDevices(text: string, map: DeviceMap): Remapped {
  const changes = new Set<string>();
  const unknown = new Set<string>();
  const out = text.replace(DEVICE, (all, disk: string, part: string) => {
    const to = map.get(disk);
    if (!to) {
      unknown.add(all);
      return all;
    }
    changes.add(`${all} → /dev/${to}${part}`);
    return `/dev/${to}${part}`;
  });
  return { text: out, changes: [...changes], unknown: [...unknown] };
}
