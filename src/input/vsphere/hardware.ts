/**
 * What the vSphere API says of a VM, turned into vmshift's terms: the properties the input
 * reads ({@linkcode VM_PROPERTIES}), and {@linkcode parseVmProperties}, which reads CPUs,
 * memory, firmware, the disks on their controllers (with `[datastore] path/disk.vmdk`), the NICs
 * with MAC and network, the power state and the snapshots.
 *
 * Devices come as `config.hardware.device`: an array of `VirtualDevice` elements whose
 * `xsi:type` says what they are (`VirtualDisk`, `ParaVirtualSCSIController`, `VirtualVmxnet3`,
 * ...). A disk names its controller by key (`controllerKey`), and the controller gives the bus
 * and its number.
 *
 * @module
 */

import type { DiskBus, NicModel } from "../../vm.ts";
import { child, children, childText, type XmlElement } from "../_xml.ts";
import { type Moref, morefOf, xsiType } from "./_soap.ts";

/** The VM properties the input reads, in one call. */
export const VM_PROPERTIES: readonly string[] = [
  "name",
  "parent",
  "runtime.powerState",
  "snapshot",
  "config.template",
  "config.files.vmPathName",
  "config.hardware.numCPU",
  "config.hardware.numCoresPerSocket",
  "config.hardware.memoryMB",
  "config.hardware.device",
  "config.firmware",
  "config.bootOptions",
  "config.guestId",
];

/** A disk as vSphere describes it. */
export interface VsphereDisk {
  /** The device key. */
  key: number;
  /** The bus its controller is. */
  bus: DiskBus;
  /** The controller's type, e.g. `ParaVirtualSCSIController`. */
  controllerType: string;
  /** The controller's bus number. */
  controllerBus: number;
  /** The unit on the controller. */
  unit: number;
  /** `[datastore] path/disk.vmdk`. */
  fileName: string;
  /** The datastore's name, from the file name. */
  datastore: string;
  /** The path in the datastore, from the file name. */
  path: string;
  /** The backing's type, e.g. `VirtualDiskFlatVer2BackingInfo`. */
  backing: string;
  /** The backing has a parent: the disk is a snapshot's delta. */
  hasParent: boolean;
  /** The capacity in bytes vSphere gives (0 when it gives none). */
  capacity: number;
}

/** A NIC as vSphere describes it. */
export interface VsphereNic {
  /** The device type, e.g. `VirtualVmxnet3`. */
  type: string;
  /** The model in vmshift's terms. */
  model: NicModel;
  /** The MAC, lower case. */
  mac?: string;
  /** The network's name (standard port group). */
  network?: string;
  /** A distributed port group's key, to be named by the caller. */
  portgroupKey?: string;
}

/** A snapshot in the VM's tree. */
export interface VsphereSnapshot {
  /** Its name. */
  name: string;
  /** Its managed object reference. */
  moref: Moref;
}

/** A VM as vSphere describes it. */
export interface VsphereVm {
  /** The VM's reference. */
  moref: Moref;
  /** Its name. */
  name: string;
  /** Its parent (a folder), for finding its datacenter. */
  parent?: Moref;
  /** `poweredOn`, `poweredOff` or `suspended`. */
  powerState: string;
  /** Every snapshot, depth first. */
  snapshots: VsphereSnapshot[];
  /** It is a template. */
  template: boolean;
  /** `[datastore] dir/name.vmx`. */
  vmPathName?: string;
  /** vCPUs. */
  cpus: number;
  /** Cores per socket, when set. */
  coresPerSocket?: number;
  /** Memory in MiB. */
  memoryMiB: number;
  /** `bios` or `efi`, when set. */
  firmware?: string;
  /** UEFI secure boot. */
  secureBoot?: boolean;
  /** The guest OS id, e.g. `debian12_64Guest`. */
  guestId?: string;
  /** Hard disks, boot disk first: SCSI, NVMe, SATA, IDE, by controller and unit. */
  disks: VsphereDisk[];
  /** NICs, in device order. */
  nics: VsphereNic[];
  /** CD-ROMs and floppies, which are not copied (their labels). */
  skipped: string[];
}

const SCSI = new Set([
  "VirtualSCSIController",
  "ParaVirtualSCSIController",
  "VirtualLsiLogicController",
  "VirtualLsiLogicSASController",
  "VirtualBusLogicController",
]);

const NIC_MODELS: Record<string, NicModel> = {
  VirtualVmxnet3: "vmxnet3",
  VirtualVmxnet3Vrdma: "vmxnet3",
  VirtualE1000: "e1000",
  VirtualE1000e: "e1000e",
};

const NIC_TYPES = new Set([
  ...Object.keys(NIC_MODELS),
  "VirtualEthernetCard",
  "VirtualPCNet32",
  "VirtualVmxnet",
  "VirtualVmxnet2",
  "VirtualSriovEthernetCard",
]);

const BUS_ORDER: DiskBus[] = ["scsi", "nvme", "sata", "ide"];

function num(el: XmlElement | undefined, name: string): number | undefined {
  const t = el && childText(el, name);
  if (t === undefined) return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * Splits a datastore path `[datastore] dir/file.vmdk`.
 *
 * @param fileName The datastore path.
 * @returns The datastore's name and the path in it.
 * @throws {SyntaxError} When it is not `[NAME] PATH`.
 * @example
 * ```ts
 * import { parseDatastorePath } from "./hardware.ts";
 * const p = parseDatastorePath("[datastore 1] web01/web01.vmdk");
 * if (p.datastore !== "datastore 1" || p.path !== "web01/web01.vmdk") throw new Error();
 * ```
 */
export function parseDatastorePath(fileName: string): { datastore: string; path: string } {
  const m = fileName.match(/^\[([^\]]+)\]\s*(.*)$/);
  if (!m || !m[2]) {
    throw new SyntaxError(`Bad datastore path "${fileName}": expected "[DATASTORE] PATH"`);
  }
  return { datastore: m[1]!, path: m[2]!.replace(/^\/+/, "") };
}

/**
 * Reads a VM's properties ({@linkcode VM_PROPERTIES}).
 *
 * @param moref The VM.
 * @param props Property path → value, as {@linkcode VimClient.retrieve} gives them.
 * @returns The VM.
 * @throws {SyntaxError} When a disk's file name is not a datastore path.
 */
export function parseVmProperties(moref: Moref, props: Map<string, XmlElement>): VsphereVm {
  const text = (p: string) => props.get(p)?.text.trim() || undefined;
  const number = (p: string) => {
    const t = text(p);
    return t === undefined ? undefined : Number(t);
  };
  const parent = props.get("parent");
  const vm: VsphereVm = {
    moref,
    name: text("name") ?? moref.value,
    powerState: text("runtime.powerState") ?? "poweredOff",
    snapshots: [],
    template: text("config.template") === "true",
    cpus: number("config.hardware.numCPU") ?? 1,
    memoryMiB: number("config.hardware.memoryMB") ?? 0,
    disks: [],
    nics: [],
    skipped: [],
  };
  if (parent) vm.parent = morefOf(parent);
  const vmx = text("config.files.vmPathName");
  if (vmx) vm.vmPathName = vmx;
  const cores = number("config.hardware.numCoresPerSocket");
  if (cores !== undefined && cores > 0) vm.coresPerSocket = cores;
  const firmware = text("config.firmware");
  if (firmware) vm.firmware = firmware;
  const boot = props.get("config.bootOptions");
  const secure = boot && childText(boot, "efiSecureBootEnabled");
  if (secure !== undefined) vm.secureBoot = secure === "true";
  const guest = text("config.guestId");
  if (guest) vm.guestId = guest;

  const snapshot = props.get("snapshot");
  if (snapshot) {
    const walk = (list: XmlElement[]) => {
      for (const s of list) {
        const ref = child(s, "snapshot");
        if (ref) vm.snapshots.push({ name: childText(s, "name") ?? "", moref: morefOf(ref) });
        walk(children(s, "childSnapshotList"));
      }
    };
    walk(children(snapshot, "rootSnapshotList"));
  }

  const devices = props.get("config.hardware.device")?.children ?? [];
  Object.assign(vm, parseDevices(devices));
  return vm;
}

/**
 * Reads the disks, NICs and skipped drives from `config.hardware.device` (a VM's, or a
 * snapshot's `config.hardware.device`).
 *
 * @param devices The `VirtualDevice` elements.
 * @returns Disks (boot disk first), NICs, and the labels of drives that are not copied.
 * @throws {SyntaxError} When a disk's file name is not a datastore path.
 */
export function parseDevices(
  devices: readonly XmlElement[],
): Pick<VsphereVm, "disks" | "nics" | "skipped"> {
  const controllers = new Map<number, { type: string; bus: DiskBus; busNumber: number }>();
  for (const d of devices) {
    const type = xsiType(d);
    const bus: DiskBus | undefined = SCSI.has(type)
      ? "scsi"
      : type === "VirtualAHCIController" || type === "VirtualSATAController"
      ? "sata"
      : type === "VirtualIDEController"
      ? "ide"
      : type === "VirtualNVMEController"
      ? "nvme"
      : undefined;
    const key = num(d, "key");
    if (bus && key !== undefined) {
      controllers.set(key, { type, bus, busNumber: num(d, "busNumber") ?? 0 });
    }
  }
  const disks: VsphereDisk[] = [];
  const nics: VsphereNic[] = [];
  const skipped: string[] = [];
  for (const d of devices) {
    const type = xsiType(d);
    const label = (() => {
      const info = child(d, "deviceInfo");
      return (info && childText(info, "label")) ?? type;
    })();
    if (type === "VirtualDisk") {
      const backing = child(d, "backing");
      const fileName = backing && childText(backing, "fileName");
      if (!backing || !fileName) {
        skipped.push(`${label} (no file: a raw device?)`);
        continue;
      }
      const ctl = controllers.get(num(d, "controllerKey") ?? -1);
      const kb = num(d, "capacityInKB") ?? 0;
      disks.push({
        key: num(d, "key") ?? 0,
        bus: ctl?.bus ?? "scsi",
        controllerType: ctl?.type ?? "",
        controllerBus: ctl?.busNumber ?? 0,
        unit: num(d, "unitNumber") ?? 0,
        fileName,
        ...parseDatastorePath(fileName),
        backing: xsiType(backing),
        hasParent: child(backing, "parent") !== undefined,
        capacity: num(d, "capacityInBytes") ?? kb * 1024,
      });
    } else if (NIC_TYPES.has(type)) {
      const nic: VsphereNic = { type, model: NIC_MODELS[type] ?? "unknown" };
      const mac = childText(d, "macAddress");
      if (mac) nic.mac = mac.toLowerCase();
      const backing = child(d, "backing");
      if (backing) {
        const port = child(backing, "port");
        const deviceName = childText(backing, "deviceName");
        const pg = port && childText(port, "portgroupKey");
        if (pg) nic.portgroupKey = pg;
        else if (deviceName) nic.network = deviceName;
        else {
          const opaque = childText(backing, "opaqueNetworkId");
          if (opaque) nic.network = opaque;
        }
      }
      nics.push(nic);
    } else if (type === "VirtualCdrom" || type === "VirtualFloppy") {
      skipped.push(label);
    }
  }
  disks.sort((a, b) =>
    BUS_ORDER.indexOf(a.bus) - BUS_ORDER.indexOf(b.bus) ||
    a.controllerBus - b.controllerBus || a.unit - b.unit
  );
  return { disks, nics, skipped };
}
