/**
 * Builds VMware VM directories, the way ESXi or Workstation leaves them on a datastore, for the
 * `-i vmx` tests and demos:
 *
 * - each raw image becomes a VMDK of a chosen subformat (`qemu-img convert -O vmdk -o
 *   subformat=monolithicSparse|monolithicFlat|twoGbMaxExtentSparse|twoGbMaxExtentFlat|
 *   streamOptimized`), or ESXi's `vmfs` disk (a flat extent under ESXi's descriptor), named as
 *   VMware names them (`NAME.vmdk`, `NAME_1.vmdk`, ... with their `-flat`, `-sNNN`, `-fNNN`
 *   extents);
 * - optionally a snapshot on top of a disk: a delta disk `NAME-000001.vmdk` whose parent is the
 *   disk, the VMX naming the delta, and a `.vmsd` snapshot list, as VMware leaves them;
 * - a `NAME.vmx` in ESXi's shape (see {@linkcode vmwareVmx}): hardware version, memory, CPUs
 *   and cores per socket, firmware and secure boot, the disks on SCSI (pvscsi), SATA, NVMe or
 *   IDE controllers, a CD-ROM with an ISO, NICs with MAC addresses and port groups, the VM
 *   generation ID, and the many keys vmshift ignores (`sched.*`, `pciBridge*`, `uuid.*`...);
 *   or in Workstation's shape (NAT networking, `ide1:0` CD-ROM, `00:0c:29` MACs).
 *
 * As a command:
 *
 *     deno run -A scripts/make_vmware_fixture.ts DIR --disk RAW[,subformat=S][,bus=B][,snapshot] \
 *         ... [--name N] [--workstation] [--vcpus N] [--cores-per-socket N] [--memory MiB] \
 *         [--efi] [--secure-boot] [--guest-os ID] [--nic NETWORK[,mac=M][,model=M][,static]] \
 *         [--no-cdrom] [--json]
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { run } from "../src/process.ts";

/** VMDK subformats qemu-img writes. */
export const VMDK_SUBFORMATS = [
  "monolithicSparse",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
  "streamOptimized",
] as const;

/** A VMDK subformat. */
export type VmdkSubformat = typeof VMDK_SUBFORMATS[number];

/**
 * How a fixture disk is stored: a subformat qemu-img writes, or `vmfs`, ESXi's own thin or
 * thick disk as it looks on an NFS datastore (a `createType="vmfs"` descriptor with one `VMFS`
 * extent, `NAME-flat.vmdk`), made from monolithicFlat with ESXi's descriptor.
 */
export type FixtureDiskFormat = VmdkSubformat | "vmfs";

/** Buses a fixture disk can be on. */
export type VmxBus = "scsi" | "sata" | "nvme" | "ide";

/** One disk of a fixture. */
export interface VmwareFixtureDisk {
  /** The raw image holding the disk's data (its size is the disk's). */
  image: string;
  /**
   * @default "monolithicSparse"
   */
  subformat?: FixtureDiskFormat;
  /**
   * The controller it is on.
   * @default "scsi"
   */
  bus?: VmxBus;
  /** The device, e.g. `scsi0:1`; by default the next free unit of the bus's controller 0. */
  device?: string;
  /**
   * Take a snapshot: the VMX names a delta disk `BASE-000001.vmdk` over this one.
   * @default false
   */
  snapshot?: boolean;
}

/** One NIC of a fixture. */
export interface VmwareFixtureNic {
  /** The port group (ESXi) or custom vmnet (Workstation) it is on. */
  network: string;
  /** Its MAC address; by default {@linkcode vmwareMac} of its index. */
  mac?: string;
  /**
   * `virtualDev`.
   * @default "vmxnet3"
   */
  model?: string;
  /**
   * `addressType`: `vpx` (assigned by vCenter), `generated` (by the host), `static` (MAC in
   * `address`).
   * @default "vpx" on ESXi, "generated" on Workstation
   */
  addressType?: "vpx" | "generated" | "static";
}

/** Options of {@linkcode makeVmwareFixture}. */
export interface VmwareFixtureOptions {
  /** The disks, boot disk first. */
  disks: VmwareFixtureDisk[];
  /**
   * `displayName`, also the base name of the files.
   * @default "guest"
   */
  name?: string;
  /**
   * Whose VMX to imitate.
   * @default "esxi"
   */
  platform?: "esxi" | "workstation";
  /** @default 2 */
  vcpus?: number;
  /** `cpuid.coresPerSocket`; omitted when undefined. */
  coresPerSocket?: number;
  /** @default 2048 */
  memoryMiB?: number;
  /** @default "bios" */
  firmware?: "bios" | "efi";
  /** `uefi.secureBoot.enabled`. @default false */
  secureBoot?: boolean;
  /** @default "debian12-64" */
  guestOS?: string;
  /** @default one vmxnet3 NIC on "VM Network" */
  nics?: VmwareFixtureNic[];
  /**
   * A CD-ROM with an ISO image (`cdrom-image`); false for none.
   * @default a CD-ROM on sata0 (ESXi) or ide1:0 (Workstation) with "debian-12.iso"
   */
  cdrom?: { device?: string; iso?: string } | false;
  /**
   * Write `vm.genid` and `vm.genidX`.
   * @default true
   */
  genid?: boolean;
  /** Lines added at the end of the VMX as they are. */
  extraLines?: string[];
}

/** A disk as {@linkcode makeVmwareFixture} wrote it. */
export interface VmwareFixtureDiskResult {
  /** The VMX device, e.g. `scsi0:0`. */
  device: string;
  /** The file the VMX names (the delta disk for a snapshot). */
  fileName: string;
  /** The descriptor's path. */
  path: string;
  /** Every file of the disk (descriptor, extents; parent files for a snapshot). */
  files: string[];
  /** The raw image it was made from. */
  image: string;
  /** Its subformat. */
  subformat: FixtureDiskFormat;
  /** Its size in bytes. */
  virtualSize: number;
}

/** What {@linkcode makeVmwareFixture} made. */
export interface VmwareFixture {
  /** The VM's directory. */
  dir: string;
  /** The VMX file. */
  vmx: string;
  /** The VMX text. */
  vmxText: string;
  /** The VM's name. */
  name: string;
  /** The disks, in the order given. */
  disks: VmwareFixtureDiskResult[];
  /** The NICs, with their MACs. */
  nics: Array<Required<Pick<VmwareFixtureNic, "network" | "mac" | "model">>>;
  /** The VM generation ID as vmshift should read it, when written. */
  genid?: string;
  /** Every file in the directory. */
  files: string[];
}

/** The `vm.genid`/`vm.genidX` a fixture writes, and the UUID they stand for. */
export const FIXTURE_GENID = {
  lo: "-8536691797830587195",
  hi: "2627911129287880091",
  uuid: "09512cc5-940a-8987-9bed-7fb23f377824",
} as const;

let subformatsProbe: Promise<string> | undefined;

/**
 * Tells whether qemu-img writes a VMDK subformat.
 *
 * @param subformat The subformat.
 * @returns True when `qemu-img create -f vmdk -o help` lists it.
 */
export async function qemuWritesSubformat(subformat: string): Promise<boolean> {
  subformatsProbe ??= run("qemu-img", ["create", "-f", "vmdk", "-o", "help"]);
  const help = await subformatsProbe;
  const line = help.split("\n").find((l) => l.trim().startsWith("subformat=")) ?? "";
  return new RegExp(`\\b${subformat}\\b`).test(line);
}

/**
 * Builds a VMware VM directory from raw images.
 *
 * @param dir The directory to create; replaced if it exists.
 * @param options Disks, hardware, platform.
 * @returns What was written.
 * @throws {Error} When qemu-img does not write a subformat, or a device is given twice.
 * @example
 * ```ts ignore
 * import { makeVmwareFixture } from "./make_vmware_fixture.ts";
 * const vm = await makeVmwareFixture("/tmp/web", {
 *   disks: [{ image: "/tmp/web.img", subformat: "monolithicFlat" }],
 *   firmware: "efi",
 * });
 * console.log(vm.vmx);
 * ```
 */
export async function makeVmwareFixture(
  dir: string,
  options: VmwareFixtureOptions,
): Promise<VmwareFixture> {
  const name = options.name ?? "guest";
  const platform = options.platform ?? "esxi";
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });

  // Devices: given ones first, then the next free unit of each bus's controller 0 (SCSI unit 7
  // is the controller itself).
  const used = new Set<string>();
  for (const d of options.disks) {
    if (d.device) {
      if (used.has(d.device)) throw new Error(`Device "${d.device}" is given twice`);
      used.add(d.device);
    }
  }
  const cdrom = options.cdrom === false ? undefined : {
    device: options.cdrom?.device ?? (platform === "esxi" ? undefined : "ide1:0"),
    iso: options.cdrom?.iso ?? "debian-12.iso",
  };
  if (cdrom?.device) used.add(cdrom.device);
  const next = (bus: string) => {
    for (let unit = 0;; unit++) {
      if (bus === "scsi" && unit === 7) continue;
      const dev = `${bus}0:${unit}`;
      if (!used.has(dev)) {
        used.add(dev);
        return dev;
      }
    }
  };

  const disks: VmwareFixtureDiskResult[] = [];
  const vmxDisks: VmxDiskLine[] = [];
  for (const [i, d] of options.disks.entries()) {
    const subformat = d.subformat ?? "monolithicSparse";
    const written = subformat === "vmfs" ? "monolithicFlat" : subformat;
    if (!(await qemuWritesSubformat(written))) {
      throw new Error(`qemu-img does not write VMDK subformat "${written}"`);
    }
    const bus = d.bus ?? "scsi";
    const device = d.device ?? next(bus);
    const base = i === 0 ? name : `${name}_${i}`;
    const path = join(dir, `${base}.vmdk`);
    const before = new Set(await list(dir));
    await run("qemu-img", [
      "convert",
      "-q",
      "-f",
      "raw",
      "-O",
      "vmdk",
      "-o",
      `subformat=${written},adapter_type=${bus === "scsi" || bus === "nvme" ? "lsilogic" : "ide"}`,
      d.image,
      path,
    ], { what: `Cannot convert "${d.image}" to ${subformat}` });
    const files = (await list(dir)).filter((f) => !before.has(f)).sort((a, b) =>
      a === `${base}.vmdk` ? -1 : b === `${base}.vmdk` ? 1 : a < b ? -1 : 1
    ).map((f) => join(dir, f));
    const virtualSize = (await Deno.stat(d.image)).size;
    if (subformat === "vmfs") {
      await Deno.writeTextFile(path, esxiDescriptor(`${base}-flat.vmdk`, virtualSize, i));
    }
    let fileName = `${base}.vmdk`;
    if (d.snapshot) {
      fileName = `${base}-000001.vmdk`;
      // The delta names its parent relative to its own directory, as VMware does.
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        `${base}.vmdk`,
        "-F",
        "vmdk",
        join(dir, fileName),
      ], { what: `Cannot create the snapshot of "${base}.vmdk"` });
      files.unshift(join(dir, fileName));
    }
    disks.push({
      device,
      fileName,
      path: join(dir, fileName),
      files,
      image: d.image,
      subformat,
      virtualSize,
    });
    vmxDisks.push({ device, fileName });
  }
  if (cdrom && !cdrom.device) cdrom.device = next("sata");

  const oui = platform === "esxi" ? "00:50:56" : "00:0c:29";
  const nics = (options.nics ?? [{ network: "VM Network" }]).map((n, i) => ({
    network: n.network,
    mac: n.mac ?? vmwareMac(i, oui),
    model: n.model ?? "vmxnet3",
    addressType: n.addressType ?? (platform === "esxi" ? "vpx" : "generated"),
  }));

  const vm: VmxShape = {
    name,
    platform,
    vcpus: options.vcpus ?? 2,
    memoryMiB: options.memoryMiB ?? 2048,
    firmware: options.firmware ?? "bios",
    secureBoot: options.secureBoot ?? false,
    guestOS: options.guestOS ?? "debian12-64",
    disks: vmxDisks,
    nics,
    genid: options.genid ?? true,
    extraLines: options.extraLines ?? [],
  };
  if (options.coresPerSocket !== undefined) vm.coresPerSocket = options.coresPerSocket;
  if (cdrom) vm.cdrom = { device: cdrom.device!, iso: cdrom.iso };
  const vmxText = vmwareVmx(vm);
  const vmx = join(dir, `${name}.vmx`);
  await Deno.writeTextFile(vmx, vmxText);
  if (options.disks.some((d) => d.snapshot)) {
    await Deno.writeTextFile(join(dir, `${name}.vmsd`), vmsd(name, disks));
  }
  const result: VmwareFixture = {
    dir,
    vmx,
    vmxText,
    name,
    disks,
    nics: nics.map(({ network, mac, model }) => ({ network, mac, model })),
    files: (await list(dir)).sort().map((f) => join(dir, f)),
  };
  if (vm.genid) result.genid = FIXTURE_GENID.uuid;
  return result;
}

/**
 * A descriptor as ESXi 8 writes it for a thin disk.
 *
 * @param flat The flat extent's file name.
 * @param size The disk's size in bytes.
 * @param i The disk's position (varies the CID).
 * @returns The descriptor text.
 */
export function esxiDescriptor(flat: string, size: number, i: number): string {
  const sectors = size / 512;
  const cid = (0x7a2f1c30 + i).toString(16);
  return `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=${cid}
parentCID=ffffffff
createType="vmfs"

# Extent description
RW ${sectors} VMFS "${flat}"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "${Math.max(1, Math.floor(sectors / (255 * 63)))}"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "8d2a6f0b9a4a7a3f3e0d0f1e${cid}"
ddb.thinProvisioned = "1"
ddb.toolsInstallType = "4"
ddb.toolsVersion = "12352"
ddb.uuid = "60 00 C2 93 7b 2e 1f 4a-b0 5e 6f 1d 2c 3b 4a ${(0x50 + i).toString(16)}"
ddb.virtualHWVersion = "21"
`;
}

async function list(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
}

/**
 * A MAC address for fixture NIC `i`.
 *
 * @param i NIC index.
 * @param oui The first three bytes: VMware's `00:50:56` (ESXi) or `00:0c:29` (Workstation).
 * @returns The address.
 * @example
 * ```ts
 * import { vmwareMac } from "./make_vmware_fixture.ts";
 * if (vmwareMac(1) !== "00:50:56:9a:3c:01") throw new Error();
 * ```
 */
export function vmwareMac(i: number, oui = "00:50:56"): string {
  return `${oui}:9a:3c:${i.toString(16).padStart(2, "0")}`;
}

/**
 * Quotes a VMX value the way VMware does: `"`, `|`, `#` and control characters as `|XX`.
 *
 * @param value The value.
 * @returns The quoted value, with its quotes.
 * @example
 * ```ts
 * import { vmxQuote } from "./make_vmware_fixture.ts";
 * if (vmxQuote('a "b" | #c') !== '"a |22b|22 |7C |23c"') throw new Error();
 * ```
 */
export function vmxQuote(value: string): string {
  // deno-lint-ignore no-control-regex
  const special = /[|"#\x00-\x1f\x7f]/g;
  const hex = (c: string) => c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0");
  return `"${value.replace(special, (c) => `|${hex(c)}`)}"`;
}

/** A disk line of {@linkcode vmwareVmx}. */
export interface VmxDiskLine {
  /** E.g. `scsi0:0`. */
  device: string;
  /** The VMDK. */
  fileName: string;
}

/** What {@linkcode vmwareVmx} writes. */
export interface VmxShape {
  name: string;
  platform: "esxi" | "workstation";
  vcpus: number;
  coresPerSocket?: number;
  memoryMiB: number;
  firmware: "bios" | "efi";
  secureBoot: boolean;
  guestOS: string;
  disks: VmxDiskLine[];
  cdrom?: { device: string; iso: string };
  nics: Array<{ network: string; mac: string; model: string; addressType: string }>;
  genid: boolean;
  extraLines: string[];
}

/**
 * Writes a VMX file in the shape ESXi 8 (or Workstation 17) writes them: the same keys, in the
 * same order, including the many that vmshift ignores.
 *
 * @param vm The VM.
 * @returns The VMX text.
 * @example
 * ```ts
 * import { vmwareVmx } from "./make_vmware_fixture.ts";
 * const text = vmwareVmx({
 *   name: "web", platform: "esxi", vcpus: 2, memoryMiB: 1024, firmware: "efi",
 *   secureBoot: true, guestOS: "debian12-64", genid: false, extraLines: [],
 *   disks: [{ device: "scsi0:0", fileName: "web.vmdk" }],
 *   nics: [{ network: "VM Network", mac: "00:50:56:9a:3c:00", model: "vmxnet3", addressType: "vpx" }],
 * });
 * if (!text.includes('scsi0:0.fileName = "web.vmdk"') || !text.includes('firmware = "efi"')) {
 *   throw new Error();
 * }
 * ```
 */
export function vmwareVmx(vm: VmxShape): string {
  const q = vmxQuote;
  const lines: string[] = [];
  const set = (key: string, value: string | number) => lines.push(`${key} = ${q(String(value))}`);
  const esxi = vm.platform === "esxi";
  set(".encoding", "UTF-8");
  set("config.version", 8);
  set("virtualHW.version", 21);
  if (!esxi) {
    set("mks.enable3d", "TRUE");
    set("pciBridge0.present", "TRUE");
  }
  set("vmci0.present", "TRUE");
  set("floppy0.present", "FALSE");
  set("svga.vramSize", 8388608);
  set("numvcpus", vm.vcpus);
  set("memSize", vm.memoryMiB);
  if (vm.firmware === "efi") set("firmware", "efi");
  set("tools.upgrade.policy", "manual");
  set("sched.cpu.units", "mhz");
  set("vm.createDate", "1716800000123456");
  set("usb_xhci.present", "TRUE");

  const controllers = [...new Set([...vm.disks.map((d) => d.device), vm.cdrom?.device ?? ""])]
    .filter(Boolean).map((d) => d.split(":")[0]!).filter((c, i, a) => a.indexOf(c) === i);
  for (const c of controllers.sort()) {
    if (c.startsWith("scsi")) set(`${c}.virtualDev`, "pvscsi");
    set(`${c}.present`, "TRUE");
  }
  if (vm.cdrom) {
    const d = vm.cdrom.device;
    set(`${d}.deviceType`, "cdrom-image");
    set(
      `${d}.fileName`,
      esxi ? `/vmfs/volumes/64f1c2a7-1b2c3d4e-5f60-a0b1c2d3e4f5/iso/${vm.cdrom.iso}` : vm.cdrom.iso,
    );
    set(`${d}.present`, "TRUE");
  }
  for (const d of vm.disks) {
    if (d.device.startsWith("scsi")) set(`${d.device}.deviceType`, "scsi-hardDisk");
    set(`${d.device}.fileName`, d.fileName);
    if (esxi) {
      set(`sched.${d.device}.shares`, "normal");
      set(`sched.${d.device}.throughputCap`, "off");
    }
    set(`${d.device}.present`, "TRUE");
  }
  for (const [i, n] of vm.nics.entries()) {
    const e = `ethernet${i}`;
    set(`${e}.virtualDev`, n.model);
    if (esxi) set(`${e}.networkName`, n.network);
    else {
      set(`${e}.connectionType`, "custom");
      set(`${e}.vnet`, n.network);
    }
    set(`${e}.addressType`, n.addressType);
    if (n.addressType === "static") set(`${e}.address`, n.mac);
    else set(`${e}.generatedAddress`, n.mac);
    if (n.addressType === "generated") set(`${e}.generatedAddressOffset`, i * 10);
    if (esxi) set(`${e}.uptCompatibility`, "TRUE");
    set(`${e}.present`, "TRUE");
  }
  set("displayName", vm.name);
  set("guestOS", vm.guestOS);
  if (vm.firmware === "efi" && vm.secureBoot) set("uefi.secureBoot.enabled", "TRUE");
  set("toolScripts.afterPowerOn", "TRUE");
  set("toolScripts.afterResume", "TRUE");
  set("toolScripts.beforeSuspend", "TRUE");
  set("toolScripts.beforePowerOff", "TRUE");
  set("tools.syncTime", "FALSE");
  set("uuid.bios", "42 1a 6e c1 e0 66 93 64-3d d1 36 a0 b7 52 63 dd");
  if (esxi) set("vc.uuid", "50 1a 0f 27 53 8b 50 91-a4 3b a5 0c e9 5f 23 82");
  set("nvram", `${vm.name}.nvram`);
  set("svga.present", "TRUE");
  set("pciBridge0.present", "TRUE");
  for (const b of [4, 5, 6, 7]) {
    set(`pciBridge${b}.present`, "TRUE");
    set(`pciBridge${b}.virtualDev`, "pcieRootPort");
    set(`pciBridge${b}.functions`, 8);
  }
  set("hpet0.present", "TRUE");
  set("RemoteDisplay.maxConnections", -1);
  set("sched.cpu.latencySensitivity", "normal");
  set("disk.EnableUUID", "TRUE");
  set("numa.autosize.cookie", `${vm.vcpus}0012`);
  set("numa.autosize.vcpu.maxPerVirtualNode", vm.vcpus);
  if (vm.coresPerSocket !== undefined) set("cpuid.coresPerSocket", vm.coresPerSocket);
  if (vm.genid) set("vm.genidX", FIXTURE_GENID.hi);
  set("pciBridge0.pciSlotNumber", 17);
  if (controllers.includes("scsi0")) set("scsi0.pciSlotNumber", 160);
  for (const [i] of vm.nics.entries()) set(`ethernet${i}.pciSlotNumber`, 192 + 1024 * i);
  set("usb_xhci.pciSlotNumber", 224);
  set("monitor.phys_bits_used", 45);
  set("softPowerOff", "TRUE");
  if (esxi) {
    set("migrate.hostLog", `${vm.name}-1b240d0d.hlog`);
  }
  set("sched.cpu.min", 0);
  set("sched.cpu.shares", "normal");
  set("sched.mem.min", 0);
  set("sched.mem.minSize", 0);
  set("sched.mem.shares", "normal");
  if (esxi) {
    set(
      "sched.swap.derivedName",
      `/vmfs/volumes/64f1c2a7-1b2c3d4e-5f60-a0b1c2d3e4f5/${vm.name}/${vm.name}-5474484f.vswp`,
    );
  }
  set("uuid.location", "56 4d 73 7b a7 00 67 05-e5 0a b7 00 56 d4 1e 54");
  if (vm.genid) set("vm.genid", FIXTURE_GENID.lo);
  for (const d of vm.disks) set(`${d.device}.redo`, "");
  set("vmci0.id", -1219337251);
  set("cleanShutdown", "TRUE");
  lines.push(...vm.extraLines);
  return lines.join("\n") + "\n";
}

function vmsd(name: string, disks: VmwareFixtureDiskResult[]): string {
  const snap = disks.filter((d) => /-000001\.vmdk$/.test(d.fileName));
  const lines = [
    `.encoding = "UTF-8"`,
    `snapshot.lastUID = "1"`,
    `snapshot.current = "1"`,
    `snapshot0.uid = "1"`,
    `snapshot0.filename = "${name}-Snapshot1.vmsn"`,
    `snapshot0.displayName = "before upgrade"`,
    `snapshot0.createTimeHigh = "398412"`,
    `snapshot0.createTimeLow = "-1201230475"`,
    `snapshot0.numDisks = "${snap.length}"`,
    ...snap.flatMap((d, i) => [
      `snapshot0.disk${i}.fileName = "${d.fileName.replace(/-000001\.vmdk$/, ".vmdk")}"`,
      `snapshot0.disk${i}.node = "${d.device}"`,
    ]),
    `snapshot.numSnapshots = "1"`,
  ];
  return lines.join("\n") + "\n";
}

const USAGE = `Usage: deno run -A scripts/make_vmware_fixture.ts DIR \\
    --disk RAW[,subformat=S][,bus=scsi|sata|nvme|ide][,snapshot] ... \\
    [--name N] [--workstation] [--vcpus N] [--cores-per-socket N] [--memory MiB] \\
    [--efi] [--secure-boot] [--guest-os ID] [--nic NETWORK[,mac=M][,model=M][,static]] ... \\
    [--no-cdrom] [--json]

Subformats: ${VMDK_SUBFORMATS.join(", ")}, vmfs (ESXi's descriptor over a flat extent)`;

/**
 * The command line.
 *
 * @param args The arguments.
 * @returns The exit code.
 */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        disk: { type: "string", multiple: true, default: [] },
        nic: { type: "string", multiple: true, default: [] },
        name: { type: "string" },
        workstation: { type: "boolean", default: false },
        vcpus: { type: "string" },
        "cores-per-socket": { type: "string" },
        memory: { type: "string" },
        efi: { type: "boolean", default: false },
        "secure-boot": { type: "boolean", default: false },
        "guest-os": { type: "string" },
        "no-cdrom": { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    console.error(`make_vmware_fixture: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1 || v.disk.length === 0) {
    console.error(USAGE);
    return 2;
  }
  const bad = (what: string) => {
    console.error(`make_vmware_fixture: ${what}\n\n${USAGE}`);
    return 2;
  };
  const disks: VmwareFixtureDisk[] = [];
  for (const spec of v.disk) {
    const [image, ...flags] = spec.split(",");
    const disk: VmwareFixtureDisk = { image: image! };
    for (const f of flags) {
      const [k, val] = f.split("=");
      if (k === "snapshot" && val === undefined) disk.snapshot = true;
      else if (k === "bus" && ["scsi", "sata", "nvme", "ide"].includes(val ?? "")) {
        disk.bus = val as VmxBus;
      } else if (
        k === "subformat" && [...VMDK_SUBFORMATS, "vmfs"].includes(val as FixtureDiskFormat)
      ) {
        disk.subformat = val as FixtureDiskFormat;
      } else return bad(`unknown disk flag "${f}"`);
    }
    disks.push(disk);
  }
  const nics: VmwareFixtureNic[] = [];
  for (const spec of v.nic) {
    const [network, ...flags] = spec.split(",");
    const nic: VmwareFixtureNic = { network: network! };
    for (const f of flags) {
      const [k, val] = f.split("=");
      if (k === "static" && val === undefined) nic.addressType = "static";
      else if (k === "mac" && val) nic.mac = val;
      else if (k === "model" && val) nic.model = val;
      else return bad(`unknown NIC flag "${f}"`);
    }
    nics.push(nic);
  }
  const options: VmwareFixtureOptions = {
    disks,
    platform: v.workstation ? "workstation" : "esxi",
    firmware: v.efi || v["secure-boot"] ? "efi" : "bios",
    secureBoot: v["secure-boot"],
  };
  if (nics.length) options.nics = nics;
  if (v["no-cdrom"]) options.cdrom = false;
  if (v.name) options.name = v.name;
  if (v.vcpus) options.vcpus = Number(v.vcpus);
  if (v["cores-per-socket"]) options.coresPerSocket = Number(v["cores-per-socket"]);
  if (v.memory) options.memoryMiB = Number(v.memory);
  if (v["guest-os"]) options.guestOS = v["guest-os"];
  const fixture = await makeVmwareFixture(positionals[0]!, options);
  if (v.json) console.log(JSON.stringify(fixture, null, 2));
  else console.error(`Created "${fixture.vmx}": ${fixture.files.join(", ")}`);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
