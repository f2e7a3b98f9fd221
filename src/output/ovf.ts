/**
 * The OVF that `-o rhv` sends with `POST /vms` (configuration type `ova`), in oVirt's flavour:
 * the document virt-v2v's `lib/create_ovf.ml` writes for its oVirt outputs, with the disks
 * named by the engine's ids.
 *
 * - `References/File` per disk: `ovf:href` is `DISK_ID/IMAGE_ID` (the engine's image group and
 *   volume), `ovf:id` the image id.
 * - `DiskSection/Disk`: `ovf:diskId` is the disk id (the engine attaches the disk of that id,
 *   as with virt-v2v's oVirt flavour), `ovf:fileRef` the href; `ovf:size` and `ovf:actual_size` are
 *   whole GiB rounded up (the engine cannot parse fractions), `ovf:capacity` bytes;
 *   `ovf:volume-format` RAW or COW, `ovf:volume-type` Sparse or Preallocated, `ovf:format` the
 *   URL virt-v2v writes for both formats, `ovf:disk-interface` VirtIO, `ovf:boot` True for the
 *   first disk only.
 * - `VirtualSystem`: name, origin VMware, a BIOS type (see {@linkcode biosType}), the OS (see
 *   {@linkcode ovirtOs}), and `VirtualHardwareSection` with the CPU topology, memory in MiB,
 *   a USB controller (disabled) and a VGA video device as virt-v2v adds them, one item per disk
 *   (`rasd:InstanceId` the image id, `rasd:HostResource` the href, `rasd:StorageId` the storage
 *   domain, `rasd:StoragePoolId` the data center; `rasd:Parent` is the parent *image*, none for
 *   a new disk, so the empty UUID, as virt-v2v writes it) and one per NIC (virtio, type 3,
 *   with its MAC and network).
 *
 * Every value is escaped. The document is deterministic for given inputs and options (ids and
 * dates come from the options), so tests can compare it.
 *
 * @module
 */

import type { Vm } from "../vm.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const NIL = "00000000-0000-0000-0000-000000000000";

/** One uploaded disk, as the engine knows it. */
export interface OvfDisk {
  /** The engine's disk id (the image group). */
  diskId: string;
  /** The image (volume) id. */
  imageId: string;
  /** Virtual size in bytes. */
  virtualSize: number;
  /** Bytes allocated on the storage, when known. */
  actualSize?: number;
  /** The disk's name on the engine, e.g. `guest-000`. */
  alias?: string;
}

/** Options for {@linkcode createOvf}. */
export interface OvfOptions {
  /** The VM's UUID. */
  vmId: string;
  /** The storage domain's id. */
  storageDomainId: string;
  /** The data center's (storage pool's) id. */
  dataCenterId: string;
  /** The disks' format. */
  format: "raw" | "qcow2";
  /** Whether the disks are preallocated. */
  preallocated: boolean;
  /**
   * The cluster's CPU architecture (the BIOS types other than 0 are x86_64 only).
   * @default "x86_64"
   */
  architecture?: string;
  /**
   * The creation time written in the document.
   * @default now
   */
  creationTime?: Date;
  /**
   * Names what wrote the document (description, comment).
   * @default "vmshift"
   */
  generator?: string;
  /**
   * Makes UUIDs for the items that need a fresh one (snapshot, video, NICs).
   * @default crypto.randomUUID
   */
  uuid?: () => string;
}

/** An oVirt OS type: its unique name and, where it is known for sure, its numeric id. */
export interface OvirtOs {
  /** The name in the engine's `osinfo` (e.g. `rhel_8x64`), written as the OS description. */
  name: string;
  /** The numeric id (`ovirt:id`); left out when unknown, the engine then uses the name. */
  id?: number;
}

/**
 * VMware `guestOS` identifiers (by prefix, most specific first) to oVirt OS types. The numeric
 * ids are those of the engine's `osinfo-defaults.properties` that virt-v2v also writes; newer
 * types go by name only. Versions newer than the newest type of a family map to that type, as
 * virt-v2v does (any Debian ≥ 7 is `debian_7`, any Ubuntu ≥ 14.04 is `ubuntu_14_04`).
 */
const VMWARE_OS: Array<[RegExp, OvirtOs]> = [
  [/^(rhel|centos|oraclelinux|rockylinux|almalinux)9_64/i, { name: "rhel_9x64" }],
  [/^(rhel|centos|oraclelinux|rockylinux|almalinux)8_64/i, { name: "rhel_8x64" }],
  [/^(rhel|centos|oraclelinux)7_64/i, { name: "rhel_7x64", id: 24 }],
  [/^(rhel|centos|oraclelinux)6_64/i, { name: "rhel_6x64", id: 19 }],
  [/^(rhel|centos|oraclelinux)6$/i, { name: "rhel_6", id: 18 }],
  [/^(rhel|centos|oraclelinux)5_64/i, { name: "rhel_5x64", id: 13 }],
  [/^(rhel|centos|oraclelinux)5$/i, { name: "rhel_5", id: 7 }],
  [/^sles1[1-9]/i, { name: "sles_11", id: 1193 }],
  [/^debian([7-9]|1\d)/i, { name: "debian_7", id: 1300 }],
  [/^ubuntu/i, { name: "ubuntu_14_04", id: 1256 }],
  [/^windows2019srvNext/i, { name: "windows_2022" }],
  [/^windows2022srvNext/i, { name: "windows_2022" }],
  [/^windows2019srv/i, { name: "windows_2019x64" }],
  [/^windows9Server64/i, { name: "windows_2016x64", id: 29 }],
  [/^windows8Server64/i, { name: "windows_2012x64", id: 23 }],
  [/^windows7Server64/i, { name: "windows_2008R2x64", id: 17 }],
  [/^windows11_64/i, { name: "windows_11" }],
  [/^windows9_64/i, { name: "windows_10x64", id: 27 }],
  [/^windows9$/i, { name: "windows_10", id: 26 }],
  [/^windows8_64/i, { name: "windows_8x64", id: 21 }],
  [/^windows8$/i, { name: "windows_8", id: 20 }],
  [/^windows7_64/i, { name: "windows_7x64", id: 12 }],
  [/^windows7$/i, { name: "windows_7", id: 11 }],
];

/** oVirt names accepted as they are (an input or conversion may already speak oVirt). */
const OVIRT_NAMES: Record<string, number | undefined> = {
  other: 0,
  other_linux: 5,
  rhel_6: 18,
  rhel_6x64: 19,
  rhel_7x64: 24,
  rhel_8x64: undefined,
  rhel_9x64: undefined,
  sles_11: 1193,
  debian_7: 1300,
  ubuntu_14_04: 1256,
  windows_7: 11,
  windows_7x64: 12,
  windows_8: 20,
  windows_8x64: 21,
  windows_10: 26,
  windows_10x64: 27,
  windows_11: undefined,
  windows_2008R2x64: 17,
  windows_2012x64: 23,
  windows_2012R2x64: 25,
  windows_2016x64: 29,
  windows_2019x64: undefined,
  windows_2022: undefined,
};

/**
 * The oVirt OS type for a VM's guest OS.
 *
 * - A VMware `guestOS` id maps through a table (`rhel8_64Guest` → `rhel_8x64`,
 *   `windows2019srv_64Guest` → `windows_2019x64`, ...); an oVirt name is kept as it is.
 * - Another Windows id becomes `windows_2016x64` for a server (`...Server...`/`...srv...`) and
 *   `windows_10x64` otherwise: oVirt then turns on the Hyper-V enlightenments Windows wants.
 * - Anything else, or nothing, is `other_linux`: vmshift converts Linux and Windows guests, and
 *   an unknown id is far more often some Linux than anything else.
 *
 * @param guestOs The source's guest OS identifier, when known.
 * @returns The oVirt OS type.
 * @example
 * ```ts
 * import { ovirtOs } from "./ovf.ts";
 * if (ovirtOs("rhel8_64Guest").name !== "rhel_8x64") throw new Error();
 * if (ovirtOs(undefined).name !== "other_linux") throw new Error();
 * ```
 */
export function ovirtOs(guestOs: string | undefined): OvirtOs {
  const g = (guestOs ?? "").trim();
  if (Object.hasOwn(OVIRT_NAMES, g)) {
    const id = OVIRT_NAMES[g];
    return id === undefined ? { name: g } : { name: g, id };
  }
  for (const [re, os] of VMWARE_OS) if (re.test(g)) return os;
  if (/^win/i.test(g)) {
    return /server|srv/i.test(g)
      ? { name: "windows_2016x64", id: 29 }
      : { name: "windows_10x64", id: 27 };
  }
  return { name: "other_linux", id: 5 };
}

/**
 * The OVF `BiosType`, as virt-v2v writes it (the engine's `BiosType` plus one):
 * 0 = i440fx + SeaBIOS (every architecture other than x86_64), 1 = q35 + SeaBIOS
 * (`q35_sea_bios`), 2 = q35 + UEFI (`q35_ovmf`), 3 = q35 + UEFI + secure boot
 * (`q35_secure_boot`). A VM whose firmware is unknown gets BIOS: that is what a VMware VM
 * without `firmware = "efi"` boots with.
 *
 * @param vm The VM.
 * @param architecture The cluster's architecture.
 * @returns The number for `<BiosType>`.
 * @example
 * ```ts
 * import { biosType } from "./ovf.ts";
 * const vm = { firmware: "uefi" as const };
 * if (biosType(vm, "x86_64") !== 2) throw new Error();
 * ```
 */
export function biosType(vm: Pick<Vm, "firmware" | "secureBoot">, architecture = "x86_64"): number {
  if (architecture !== "x86_64") return 0;
  if (vm.firmware === "uefi") return vm.secureBoot ? 3 : 2;
  return 1;
}

/**
 * Writes the OVF for `POST /vms`.
 *
 * @param vm The VM (its name is the target name).
 * @param disks The uploaded disks, in the VM's order.
 * @param options Ids, format, allocation.
 * @returns The OVF document.
 * @throws {RangeError} When the disks do not match the VM's.
 * @example
 * ```ts
 * import { createOvf } from "./ovf.ts";
 * const ovf = createOvf(
 *   { name: "web1", memory: 2 ** 31, vcpus: 2, disks: [{ index: 0, source: "a", virtualSize: 2 ** 30 }], nics: [] },
 *   [{ diskId: "d1", imageId: "i1", virtualSize: 2 ** 30 }],
 *   { vmId: "v1", storageDomainId: "s1", dataCenterId: "p1", format: "raw", preallocated: false },
 * );
 * if (!ovf.includes('ovf:href="d1/i1"')) throw new Error();
 * ```
 */
export function createOvf(vm: Vm, disks: OvfDisk[], options: OvfOptions): string {
  if (disks.length !== vm.disks.length) {
    throw new RangeError(`The VM has ${vm.disks.length} disks but ${disks.length} were uploaded`);
  }
  const uuid = options.uuid ?? (() => crypto.randomUUID());
  const generator = options.generator ?? "vmshift";
  const date = ovfDate(options.creationTime ?? new Date());
  const memMb = Math.max(1, Math.floor(vm.memory / MiB));
  const os = ovirtOs(vm.guestOs);
  const volumeFormat = options.format === "qcow2" ? "COW" : "RAW";
  const volumeType = options.preallocated ? "Preallocated" : "Sparse";
  const sockets = vm.cpuTopology?.sockets ?? 1;
  const cores = vm.cpuTopology?.cores ?? vm.vcpus;
  const threads = vm.cpuTopology?.threads;

  const x = new Xml();
  x.raw('<?xml version="1.0" encoding="UTF-8"?>');
  x.open("ovf:Envelope", {
    "xmlns:rasd":
      "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "xmlns:vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xmlns:ovf": "http://schemas.dmtf.org/ovf/envelope/1/",
    "xmlns:ovirt": "http://www.ovirt.org/ovf",
    "ovf:version": "0.9",
  });
  x.comment(`generated by ${generator}`);

  x.open("References");
  for (const d of disks) {
    x.leaf("File", {
      "ovf:href": `${d.diskId}/${d.imageId}`,
      "ovf:id": d.imageId,
      "ovf:description": `generated by ${generator}`,
    });
  }
  x.close();

  x.open("NetworkSection");
  x.text("Info", "List of networks");
  const networks = [...new Set(vm.nics.map(networkOf))];
  for (const n of networks) x.leaf("Network", { "ovf:name": n });
  x.close();

  x.open("DiskSection");
  x.text("Info", "List of Virtual Disks");
  for (const [i, d] of disks.entries()) {
    x.leaf("Disk", {
      "ovf:diskId": d.diskId,
      "ovf:size": String(gib(d.virtualSize)),
      "ovf:capacity": String(d.virtualSize),
      // The engine reads this attribute whether known or not: empty when unknown.
      "ovf:actual_size": d.actualSize !== undefined ? String(gib(d.actualSize)) : "",
      "ovf:fileRef": `${d.diskId}/${d.imageId}`,
      "ovf:parentRef": "",
      "ovf:vm_snapshot_id": uuid(),
      "ovf:volume-format": volumeFormat,
      "ovf:volume-type": volumeType,
      "ovf:format": "http://en.wikipedia.org/wiki/Byte",
      // SATA for a guest conversion left without virtio drivers (oVirt 4.3+).
      "ovf:disk-interface": vm.targetDevices?.disk === "sata" ? "SATA" : "VirtIO",
      "ovf:disk-type": "System",
      "ovf:boot": i === 0 ? "True" : "False",
      ...(d.alias ? { "ovf:disk-alias": d.alias } : {}),
    });
  }
  x.close();

  x.open("VirtualSystem", { "ovf:id": options.vmId });
  x.text("Name", vm.name);
  x.text("TemplateId", NIL);
  x.text("TemplateName", "Blank");
  x.text("Description", `generated by ${generator}`);
  x.leaf("Domain");
  x.text("CreationDate", date);
  x.text("IsInitilized", "True"); // sic: the engine's spelling
  x.text("IsAutoSuspend", "False");
  x.leaf("TimeZone");
  x.text("IsStateless", "False");
  x.text("VmType", "1"); // server
  x.text("DefaultDisplayType", "2"); // VNC with a VGA device, as virt-v2v
  x.text("BiosType", String(biosType(vm, options.architecture)));
  x.text("Origin", "1"); // VMware

  x.open("OperatingSystemSection", {
    "ovf:id": options.vmId,
    "ovf:required": "false",
    ...(os.id !== undefined ? { "ovirt:id": String(os.id) } : {}),
  });
  x.text("Info", vm.guestOs ?? "Guest operating system");
  x.text("Description", os.name);
  x.close();

  x.open("VirtualHardwareSection");
  x.text("Info", `${vm.vcpus} CPU, ${memMb} Memory`);
  x.item([
    ["rasd:Caption", `${vm.vcpus} virtual cpu`],
    ["rasd:Description", "Number of virtual CPU"],
    ["rasd:InstanceId", "1"],
    ["rasd:ResourceType", "3"],
    ["rasd:num_of_sockets", String(sockets)],
    ["rasd:cpu_per_socket", String(cores)],
    ...(threads !== undefined ? [["rasd:threads_per_cpu", String(threads)] as const] : []),
  ]);
  x.item([
    ["rasd:Caption", `${memMb} MB of memory`],
    ["rasd:Description", "Memory Size"],
    ["rasd:InstanceId", "2"],
    ["rasd:ResourceType", "4"],
    ["rasd:AllocationUnits", "MegaBytes"],
    ["rasd:VirtualQuantity", String(memMb)],
  ]);
  x.item([
    ["rasd:Caption", "USB Controller"],
    ["rasd:InstanceId", "3"],
    ["rasd:ResourceType", "23"],
    ["rasd:UsbPolicy", "Disabled"],
  ]);
  x.item([
    ["rasd:Caption", "Graphical Controller"],
    ["rasd:InstanceId", uuid()],
    ["rasd:ResourceType", "32768"],
    ["Type", "video"],
    ["rasd:VirtualQuantity", "1"],
    ["Device", "vga"],
  ]);
  for (const [i, d] of disks.entries()) {
    x.item([
      // The engine wants this caption to start with "Drive ".
      ["rasd:Caption", `Drive ${i + 1}`],
      ["rasd:InstanceId", d.imageId],
      ["rasd:ResourceType", "17"],
      ["Type", "disk"],
      ["rasd:HostResource", `${d.diskId}/${d.imageId}`],
      ["rasd:Parent", NIL],
      ["rasd:Template", NIL],
      ["rasd:ApplicationList", ""],
      ["rasd:StorageId", options.storageDomainId],
      ["rasd:StoragePoolId", options.dataCenterId],
      ["rasd:CreationDate", date],
      ["rasd:LastModified", date],
      ["rasd:last_modified_date", date],
      ...(i === 0 ? [["BootOrder", "1"] as const] : []),
    ]);
  }
  for (const [i, nic] of vm.nics.entries()) {
    const network = networkOf(nic);
    x.item([
      ["rasd:InstanceId", uuid()],
      ["rasd:Caption", `Ethernet adapter on ${network}`],
      ["rasd:ResourceType", "10"],
      // oVirt's interface types: 3 is virtio (conversion installs the drivers), 2 is e1000,
      // for a guest conversion left without virtio drivers.
      ["rasd:ResourceSubType", vm.targetDevices?.nic === "e1000" ? "2" : "3"],
      ["Type", "interface"],
      ["rasd:Connection", network],
      ["rasd:Name", `eth${i}`],
      ...(nic.mac ? [["rasd:MACAddress", nic.mac] as const] : []),
    ]);
  }
  x.close();
  x.close();
  x.close();
  return x.toString();
}

/** The network a NIC is connected to on oVirt: the source's, else oVirt's default network. */
function networkOf(nic: Vm["nics"][number]): string {
  return nic.network || "ovirtmgmt";
}

/** Whole GiB, rounded up: the engine cannot parse fractions. */
function gib(bytes: number): number {
  return Math.ceil(bytes / GiB);
}

function ovfDate(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}/${p(d.getUTCMonth() + 1)}/${p(d.getUTCDate())} ` +
    `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}

/**
 * Escapes text for XML content and attribute values.
 *
 * @param s The text.
 * @returns The escaped text.
 * @example
 * ```ts
 * import { escapeXml } from "./ovf.ts";
 * if (escapeXml(`a<b & "c"`) !== "a&lt;b &amp; &quot;c&quot;") throw new Error();
 * ```
 */
export function escapeXml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!,
  )
    // Characters XML 1.0 cannot hold at all.
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, "");
}

/** A minimal indenting XML writer. */
class Xml {
  #lines: string[] = [];
  #stack: string[] = [];

  #indent(): string {
    return "  ".repeat(this.#stack.length);
  }

  raw(line: string): void {
    this.#lines.push(line);
  }

  comment(text: string): void {
    this.#lines.push(`${this.#indent()}<!-- ${escapeXml(text).replaceAll("--", "- -")} -->`);
  }

  open(name: string, attrs: Record<string, string> = {}): void {
    this.#lines.push(`${this.#indent()}<${name}${attributes(attrs)}>`);
    this.#stack.push(name);
  }

  close(): void {
    const name = this.#stack.pop()!;
    this.#lines.push(`${this.#indent()}</${name}>`);
  }

  leaf(name: string, attrs: Record<string, string> = {}): void {
    this.#lines.push(`${this.#indent()}<${name}${attributes(attrs)}/>`);
  }

  text(name: string, value: string): void {
    this.#lines.push(
      value === ""
        ? `${this.#indent()}<${name}/>`
        : `${this.#indent()}<${name}>${escapeXml(value)}</${name}>`,
    );
  }

  item(children: ReadonlyArray<readonly [string, string]>): void {
    this.open("Item");
    for (const [k, v] of children) this.text(k, v);
    this.close();
  }

  toString(): string {
    return this.#lines.join("\n") + "\n";
  }
}

function attributes(attrs: Record<string, string>): string {
  return Object.entries(attrs).map(([k, v]) => ` ${k}="${escapeXml(v)}"`).join("");
}
