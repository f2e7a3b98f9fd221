/**
 * The OVF descriptor of an OVA, in the shape VMware writes it (ovftool, vSphere "Export OVF
 * Template"), turned into what vmshift needs to know about the VM:
 *
 * | OVF | VM |
 * | --- | --- |
 * | `References/File` (`href`, `id`, `size`, `compression`, `chunkSize`) | the files holding the disks |
 * | `DiskSection/Disk` (`diskId`, `fileRef`, `capacity` × `capacityAllocationUnits`, `format`) | each disk's file and size |
 * | `VirtualSystem/Name` (else its `id`) | name |
 * | `OperatingSystemSection/@vmw:osType` | guest OS |
 * | `Item` type 3: `VirtualQuantity`, `vmw:CoresPerSocket` | vCPUs and topology |
 * | `Item` type 4: `VirtualQuantity` × `AllocationUnits` | memory |
 * | `Item` type 17: `HostResource` (`ovf:/disk/ID`), `Parent`, `AddressOnParent` | disks, on their controller |
 * | `Item` types 5 (IDE), 6 (SCSI), 20 (SATA/NVMe by `ResourceSubType`) | the disks' buses |
 * | `Item` type 10: `Connection`, `Address`, `ResourceSubType` | NICs: network, MAC, model |
 * | `vmw:Config` `firmware` = `efi`, `bootOptions.efiSecureBootEnabled` | firmware, secure boot |
 *
 * CD-ROM and floppy drives (types 14, 15, 16) and other devices are not migrated. Disks are
 * listed in the order of their controllers (SCSI, NVMe, SATA, IDE, as virt-v2v orders VMX
 * disks), then by the controller's number and the disk's unit.
 *
 * Elements and attributes are matched by local name, so the namespace prefixes a tool chose do
 * not matter. The parser only reads: it names what is wrong in a `SyntaxError` and leaves it to
 * the caller to say which OVA the descriptor came from.
 *
 * @module
 */

import type { DiskBus, Firmware, NicModel } from "../vm.ts";
import { child, children, childText, parseXml, type XmlElement } from "./_xml.ts";

/** A file of the package (`References/File`). */
export interface OvfFile {
  /** `ovf:id`, referred to by disks. */
  id: string;
  /** `ovf:href`: the file's path relative to the OVF. */
  href: string;
  /** `ovf:size`: bytes as stored in the package, when given. */
  size?: number;
  /** `ovf:compression`: the file is stored gzip-compressed. */
  compression?: "gzip";
  /** `ovf:chunkSize`: the file is split into pieces of this many bytes. */
  chunkSize?: number;
}

/** A hard disk of the VM, attached to a controller. */
export interface OvfDisk {
  /** `DiskSection/Disk/@ovf:diskId`; undefined when the item names a file directly. */
  diskId?: string;
  /** The file holding the disk's data; undefined for an empty disk to be created. */
  file?: OvfFile;
  /** The size the guest sees, in bytes, when the OVF says. */
  capacity?: number;
  /** `ovf:format`, e.g. `http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized`. */
  format?: string;
  /** The controller's bus, when it is known. */
  bus?: DiskBus;
  /** The controller's model (`ResourceSubType`, e.g. `lsilogic`, `VirtualSCSI`). */
  controllerModel?: string;
  /** The controller's number among those of its kind (`Address`). */
  controllerNumber?: number;
  /** The disk's unit on its controller (`AddressOnParent`). */
  unit?: number;
  /** `ElementName`, e.g. `Hard disk 1`. */
  label?: string;
}

/** A network interface of the VM. */
export interface OvfNic {
  /** `Connection`: the network it is connected to. */
  network?: string;
  /** `Address`: the MAC address, lower case, colon separated. */
  mac?: string;
  /** The model, from `ResourceSubType`. */
  model: NicModel;
  /** `ResourceSubType` as written, e.g. `VmxNet3`. */
  modelName?: string;
  /** `vmw:Config wakeOnLanEnabled`. */
  wakeOnLan?: boolean;
}

/** What an OVF descriptor says about its VM. */
export interface Ovf {
  /** `VirtualSystem/Name`, or the virtual system's `ovf:id`. */
  name?: string;
  /** Memory in bytes. */
  memory?: number;
  /** Virtual CPUs. */
  vcpus?: number;
  /** CPU topology, from `vmw:CoresPerSocket`. */
  cpuTopology?: { sockets: number; cores: number; threads: number };
  /** Firmware, from `vmw:Config firmware`; undefined when the OVF does not say. */
  firmware?: Firmware;
  /** Secure boot, from `vmw:Config bootOptions.efiSecureBootEnabled`. */
  secureBoot?: boolean;
  /** `vmw:osType`, e.g. `debian11_64Guest`. */
  guestOs?: string;
  /** Hard disks, in controller order. */
  disks: OvfDisk[];
  /** Network interfaces, in OVF order. */
  nics: OvfNic[];
  /** Every file of `References`. */
  files: OvfFile[];
  /** Networks of `NetworkSection`. */
  networks: string[];
  /** Things that are odd but not fatal, for the debug log. */
  warnings: string[];
}

const BUS_ORDER: Record<DiskBus, number> = {
  scsi: 0,
  "virtio-scsi": 0,
  nvme: 1,
  sata: 2,
  ide: 3,
  "virtio-blk": 4,
};

const NIC_MODELS: Record<string, NicModel> = {
  e1000: "e1000",
  e1000e: "e1000e",
  vmxnet3: "vmxnet3",
  virtio: "virtio",
  rtl8139: "rtl8139",
};

/**
 * Parses an OVF descriptor.
 *
 * @param xml The descriptor's text.
 * @returns The VM it describes.
 * @throws {SyntaxError} When it is not well-formed XML, not an OVF envelope, describes no VM or
 * several, or has a disk or value vmshift cannot make sense of. The message says what and
 * where, without naming the file.
 * @example
 * ```ts
 * import { parseOvf } from "./ovf_parser.ts";
 * const ovf = parseOvf(`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 *     xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 *     xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
 *   <References><File ovf:href="vm-disk1.vmdk" ovf:id="file1"/></References>
 *   <DiskSection><Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="16"
 *     ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>
 *   <VirtualSystem ovf:id="vm"><Name>web</Name><VirtualHardwareSection>
 *     <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
 *       <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
 *     <Item><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
 *       <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
 *       <rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
 *     <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType>
 *       <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource></Item>
 *   </VirtualHardwareSection></VirtualSystem>
 * </Envelope>`);
 * if (ovf.name !== "web" || ovf.vcpus !== 2 || ovf.memory !== 2 ** 31) throw new Error();
 * if (ovf.disks[0]?.capacity !== 16 * 2 ** 30 || ovf.disks[0].file?.href !== "vm-disk1.vmdk") {
 *   throw new Error();
 * }
 * ```
 */
export function parseOvf(xml: string): Ovf {
  const root = parseXml(xml);
  if (root.name !== "Envelope") {
    throw new SyntaxError(`the root element is "<${root.qname}>", not an OVF "<Envelope>"`);
  }
  const warnings: string[] = [];

  // References: the files.
  const files = new Map<string, OvfFile>();
  for (const el of children(child(root, "References") ?? root, "File")) {
    const id = attr(el, "id");
    const href = attr(el, "href");
    if (!id || !href) {
      throw new SyntaxError(`line ${el.line}: a <File> without ${id ? "ovf:href" : "ovf:id"}`);
    }
    const file: OvfFile = { id, href };
    const size = attr(el, "size");
    if (size !== undefined) file.size = integer(size, `ovf:size of file "${href}"`);
    const compression = attr(el, "compression");
    if (compression === "gzip") file.compression = "gzip";
    else if (compression !== undefined && compression !== "identity") {
      throw new SyntaxError(
        `file "${href}" has compression "${compression}"; OVF packages use "gzip" or none`,
      );
    }
    const chunkSize = attr(el, "chunkSize");
    if (chunkSize !== undefined) {
      file.chunkSize = integer(chunkSize, `ovf:chunkSize of file "${href}"`);
    }
    if (files.has(id)) throw new SyntaxError(`two files have the ovf:id "${id}"`);
    files.set(id, file);
  }

  // DiskSection: the virtual disks and their files.
  const diskSections = [...children(root, "DiskSection"), ...children(root, "VirtualDiskSection")];
  const diskDefs = new Map<string, XmlElement>();
  for (const section of diskSections) {
    for (const el of children(section, "Disk")) {
      const id = attr(el, "diskId");
      if (!id) throw new SyntaxError(`line ${el.line}: a <Disk> without ovf:diskId`);
      diskDefs.set(id, el);
    }
  }

  const networks = children(child(root, "NetworkSection") ?? root, "Network")
    .map((n) => attr(n, "name"))
    .filter((n): n is string => !!n);

  // The virtual system: exactly one.
  let systems = children(root, "VirtualSystem");
  const collection = child(root, "VirtualSystemCollection");
  if (!systems.length && collection) systems = findAll(collection, "VirtualSystem");
  if (systems.length === 0) throw new SyntaxError("it describes no virtual machine");
  if (systems.length > 1) {
    throw new SyntaxError(
      `it describes ${systems.length} virtual machines (a vApp); vmshift migrates one VM at a ` +
        "time: export each VM of the vApp on its own",
    );
  }
  const system = systems[0]!;
  const name = childText(system, "Name") ?? attr(system, "id");
  const os = child(system, "OperatingSystemSection");
  const guestOs = os ? attr(os, "osType") : undefined;

  const hardware = child(system, "VirtualHardwareSection");
  if (!hardware) throw new SyntaxError("the virtual system has no <VirtualHardwareSection>");
  const items = hardware.children.filter((c) =>
    c.name === "Item" || c.name === "StorageItem" || c.name === "EthernetPortItem"
  );
  const byInstance = new Map<string, XmlElement>();
  for (const item of items) {
    const id = childText(item, "InstanceID");
    if (id !== undefined) byInstance.set(id, item);
  }

  const ovf: Ovf = { disks: [], nics: [], files: [...files.values()], networks, warnings };
  if (name) ovf.name = name;
  if (guestOs) ovf.guestOs = guestOs;

  const positioned: Array<{ disk: OvfDisk; order: number }> = [];
  for (const item of items) {
    const type = resourceType(item);
    switch (type) {
      case 3: { // CPU
        const n = quantity(item, "the number of virtual CPUs");
        if (n < 1) throw new SyntaxError(`line ${item.line}: ${n} virtual CPUs`);
        ovf.vcpus = n;
        const cps = childText(item, "CoresPerSocket");
        if (cps !== undefined) {
          const cores = Number(cps);
          if (!Number.isSafeInteger(cores) || cores < 1 || n % cores !== 0) {
            warnings.push(`vmw:CoresPerSocket "${cps}" does not divide ${n} vCPUs: ignored`);
          } else {
            ovf.cpuTopology = { sockets: n / cores, cores, threads: 1 };
          }
        }
        break;
      }
      case 4: { // memory
        const n = quantity(item, "the memory size");
        const units = childText(item, "AllocationUnits") ?? "byte * 2^20";
        ovf.memory = n * allocationUnits(units, `memory AllocationUnits`);
        if (!Number.isSafeInteger(ovf.memory) || ovf.memory <= 0) {
          throw new SyntaxError(`line ${item.line}: impossible memory size ${n} × "${units}"`);
        }
        break;
      }
      case 17: { // hard disk
        const disk = hardDisk(item, diskDefs, files, byInstance, warnings);
        positioned.push({ disk, order: positioned.length });
        break;
      }
      case 10: // NIC
        ovf.nics.push(nic(item));
        break;
      default:
        // Controllers are read through the disks; CD-ROMs, floppies, video cards, ... are not
        // migrated.
        break;
    }
  }
  // Disks on unknown controllers keep their OVF order, after the others.
  const position = (n: number | undefined) => n ?? Number.MAX_SAFE_INTEGER;
  positioned.sort((a, b) =>
    rank(a.disk.bus) - rank(b.disk.bus) ||
    (a.disk.bus === undefined ? 0 : (
      position(a.disk.controllerNumber) - position(b.disk.controllerNumber) ||
      position(a.disk.unit) - position(b.disk.unit)
    )) ||
    a.order - b.order
  );
  ovf.disks = positioned.map((p) => p.disk);

  // vmw:Config and vmw:ExtraConfig keys of the hardware section.
  const config = new Map<string, string>();
  for (const el of hardware.children) {
    if (el.name !== "Config" && el.name !== "ExtraConfig") continue;
    const key = attr(el, "key");
    const value = attr(el, "value");
    if (key !== undefined && value !== undefined && !config.has(key)) config.set(key, value);
  }
  const firmware = config.get("firmware");
  if (firmware !== undefined) {
    const f = firmware.toLowerCase();
    if (f === "efi") ovf.firmware = "uefi";
    else if (f === "bios") ovf.firmware = "bios";
    else {
      throw new SyntaxError(`unknown firmware "${firmware}" (expected "bios" or "efi")`);
    }
  }
  const secure = config.get("bootOptions.efiSecureBootEnabled") ??
    config.get("uefi.secureBoot.enabled");
  if (secure !== undefined) ovf.secureBoot = secure.toLowerCase() === "true";
  return ovf;
}

/**
 * The multiplier of a DMTF allocation unit: `byte`, `byte * 2^20`, `byte * 10^9`, `byte * 512`,
 * or the old names `KiloBytes`, `MegaBytes`, `GigaBytes` (binary, as the tools that write them
 * mean them).
 *
 * @param text The units.
 * @param what What they are the units of, for the error.
 * @returns Bytes per unit.
 * @throws {SyntaxError} For units that are not a number of bytes.
 * @example
 * ```ts
 * import { allocationUnits } from "./ovf_parser.ts";
 * if (allocationUnits("byte * 2^30", "capacity") !== 2 ** 30) throw new Error();
 * if (allocationUnits("MegaBytes", "memory") !== 2 ** 20) throw new Error();
 * ```
 */
export function allocationUnits(text: string, what: string): number {
  const t = text.trim().toLowerCase().replace(/\s+/g, " ");
  const named: Record<string, number> = {
    "byte": 1,
    "bytes": 1,
    "kilobytes": 2 ** 10,
    "kb": 2 ** 10,
    "megabytes": 2 ** 20,
    "mb": 2 ** 20,
    "gigabytes": 2 ** 30,
    "gb": 2 ** 30,
    "terabytes": 2 ** 40,
    "tb": 2 ** 40,
  };
  if (t in named) return named[t]!;
  let m = t.match(/^bytes? ?\* ?(\d+) ?\^ ?(\d+)$/);
  if (m) {
    const n = Number(m[1]) ** Number(m[2]);
    if (Number.isSafeInteger(n) && n > 0) return n;
  }
  m = t.match(/^bytes? ?\* ?(\d+)$/);
  if (m && Number(m[1]) > 0) return Number(m[1]);
  throw new SyntaxError(`unknown ${what} "${text}" (expected e.g. "byte * 2^20")`);
}

function hardDisk(
  item: XmlElement,
  diskDefs: Map<string, XmlElement>,
  files: Map<string, OvfFile>,
  byInstance: Map<string, XmlElement>,
  warnings: string[],
): OvfDisk {
  const label = childText(item, "ElementName");
  const instance = childText(item, "InstanceID");
  const what = label
    ? `"${label}"`
    : instance !== undefined
    ? `the disk with InstanceID ${instance}`
    : `the disk at line ${item.line}`;
  const host = childText(item, "HostResource");
  const m = host?.match(/^(?:ovf:)?\/(disk|file)\/(.+)$/);
  if (!m) {
    throw new SyntaxError(
      host === undefined
        ? `${what} has no rasd:HostResource`
        : `${what} has rasd:HostResource "${host}" (expected "ovf:/disk/ID")`,
    );
  }
  const disk: OvfDisk = {};
  if (label) disk.label = label;
  if (m[1] === "file") {
    const file = files.get(m[2]!);
    if (!file) {
      throw new SyntaxError(`${what} refers to file "${m[2]}", which is not in References`);
    }
    disk.file = file;
  } else {
    const def = diskDefs.get(m[2]!);
    if (!def) {
      throw new SyntaxError(`${what} refers to disk "${m[2]}", which is not in the DiskSection`);
    }
    disk.diskId = m[2]!;
    const fileRef = attr(def, "fileRef");
    if (fileRef !== undefined) {
      const file = files.get(fileRef);
      if (!file) {
        throw new SyntaxError(
          `disk "${m[2]}" refers to file "${fileRef}", which is not in References`,
        );
      }
      disk.file = file;
    }
    const capacity = attr(def, "capacity");
    if (capacity !== undefined) {
      const n = integer(capacity, `ovf:capacity of disk "${m[2]}"`);
      const units = attr(def, "capacityAllocationUnits") ?? "byte";
      disk.capacity = n * allocationUnits(units, `ovf:capacityAllocationUnits of disk "${m[2]}"`);
      if (!Number.isSafeInteger(disk.capacity)) {
        throw new SyntaxError(`disk "${m[2]}" has an impossible capacity ${n} × "${units}"`);
      }
    }
    const format = attr(def, "format");
    if (format) disk.format = format;
  }
  const unit = childText(item, "AddressOnParent");
  if (unit !== undefined) disk.unit = integer(unit, `rasd:AddressOnParent of ${what}`);

  const parentId = childText(item, "Parent");
  const parent = parentId === undefined ? undefined : byInstance.get(parentId);
  if (!parent) {
    warnings.push(
      parentId === undefined
        ? `${what} has no controller (rasd:Parent)`
        : `${what} is on controller ${parentId}, which is not in the OVF`,
    );
    return disk;
  }
  const type = resourceType(parent);
  const subtype = childText(parent, "ResourceSubType");
  if (subtype) disk.controllerModel = subtype;
  const number = childText(parent, "Address");
  if (number !== undefined && /^\d+$/.test(number)) disk.controllerNumber = Number(number);
  const sub = (subtype ?? "").toLowerCase();
  if (type === 5) disk.bus = "ide";
  else if (type === 6) disk.bus = "scsi";
  else if (type === 20 && /sata|ahci/.test(sub)) disk.bus = "sata";
  else if (type === 20 && /nvme/.test(sub)) disk.bus = "nvme";
  else {
    warnings.push(
      `${what} is on a controller vmshift does not know (type ${type}${
        subtype ? `, "${subtype}"` : ""
      })`,
    );
  }
  return disk;
}

function nic(item: XmlElement): OvfNic {
  const subtype = childText(item, "ResourceSubType");
  const out: OvfNic = { model: NIC_MODELS[(subtype ?? "").toLowerCase()] ?? "unknown" };
  if (subtype) out.modelName = subtype;
  const network = childText(item, "Connection");
  if (network) out.network = network;
  const address = childText(item, "Address");
  if (address) {
    const mac = address.toLowerCase().replace(/-/g, ":");
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) {
      throw new SyntaxError(`line ${item.line}: the NIC's MAC address "${address}" is malformed`);
    }
    out.mac = mac;
  }
  for (const c of children(item, "Config")) {
    if (attr(c, "key") === "wakeOnLanEnabled") {
      out.wakeOnLan = attr(c, "value")?.toLowerCase() === "true";
    }
  }
  return out;
}

function rank(bus: DiskBus | undefined): number {
  return bus === undefined ? 9 : BUS_ORDER[bus];
}

function resourceType(item: XmlElement): number | undefined {
  const t = childText(item, "ResourceType");
  return t === undefined || !/^\d+$/.test(t) ? undefined : Number(t);
}

function quantity(item: XmlElement, what: string): number {
  const q = childText(item, "VirtualQuantity");
  if (q === undefined) {
    throw new SyntaxError(`line ${item.line}: no rasd:VirtualQuantity for ${what}`);
  }
  return integer(q, what);
}

function integer(text: string, what: string): number {
  const t = text.trim();
  if (!/^\d+$/.test(t) || !Number.isSafeInteger(Number(t))) {
    throw new SyntaxError(`${what} is "${text}", not a whole number`);
  }
  return Number(t);
}

function attr(el: XmlElement, name: string): string | undefined {
  return el.attrs.get(name);
}

function findAll(el: XmlElement, name: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (const c of el.children) {
    if (c.name === name) out.push(c);
    else out.push(...findAll(c, name));
  }
  return out;
}
