/**
 * Builds OVA packages the way VMware exports them (ovftool, vSphere "Export OVF Template"), for
 * the `-i ova` tests and demos:
 *
 * - each raw image becomes a streamOptimized VMDK (`qemu-img convert -O vmdk -o
 *   subformat=streamOptimized`), named `NAME-diskN.vmdk` (`.vmdk.gz` when compressed, with
 *   `ovf:compression="gzip"`);
 * - an OVF descriptor in VMware's shape (see {@linkcode vmwareOvf}): References, DiskSection
 *   with capacities in `byte * 2^N` units, NetworkSection, the virtual system with its guest
 *   OS, CPUs with `vmw:CoresPerSocket`, memory, SCSI/SATA/NVMe/IDE controllers, a CD-ROM drive,
 *   the disks, NICs with their MAC and `wakeOnLanEnabled`, and `vmw:Config` keys for firmware
 *   and secure boot;
 * - a manifest `NAME.mf` with one `SHA256(file)= hex` line per file (or SHA1/SHA512);
 * - packed with `tar` in the standard order (OVF first, then the manifest, then the disks), or
 *   left as a directory (an unpacked OVA).
 *
 * Faults for the tests: a corrupt manifest line, a disk left out of the package, an OVF edited
 * after it was written (its manifest line still matches), a certificate file.
 *
 * As a command:
 *
 *     deno run -A scripts/make_ova_fixture.ts OUT.ova --disk RAW[,bus=sata][,gzip] ... \
 *         [--name N] [--vcpus N] [--cores-per-socket N] [--memory MiB] [--efi] [--secure-boot] \
 *         [--directory] [--checksum SHA1|SHA256|SHA512|none] [--corrupt-manifest] \
 *         [--missing-disk N] [--json]
 *
 * @module
 */

import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { run } from "../src/process.ts";

/** Buses a fixture disk can be on. */
export type FixtureBus = "scsi" | "sata" | "ide" | "nvme";

/** One disk of a fixture. */
export interface FixtureDisk {
  /** The raw image holding the disk's data. */
  image: string;
  /**
   * The controller it is on.
   * @default "scsi"
   */
  bus?: FixtureBus;
  /**
   * Store it gzip-compressed (`NAME-diskN.vmdk.gz`, `ovf:compression="gzip"`).
   * @default false
   */
  gzip?: boolean;
}

/** One NIC of a fixture. */
export interface FixtureNic {
  /** The network (port group) it is connected to. */
  network: string;
  /** Its MAC address; none when omitted (as ovftool does without `--exportFlags=mac`). */
  mac?: string;
  /**
   * The VMware model (`ResourceSubType`).
   * @default "VmxNet3"
   */
  model?: string;
}

/** The virtual machine an OVF describes, for {@linkcode vmwareOvf}. */
export interface FixtureVm {
  /** VM name. */
  name: string;
  /**
   * vCPUs.
   * @default 2
   */
  vcpus?: number;
  /** `vmw:CoresPerSocket`; omitted when undefined. */
  coresPerSocket?: number;
  /**
   * Memory in MiB.
   * @default 1024
   */
  memoryMiB?: number;
  /**
   * Firmware.
   * @default "bios"
   */
  firmware?: "bios" | "efi";
  /**
   * Secure boot (with EFI).
   * @default false
   */
  secureBoot?: boolean;
  /**
   * `vmw:osType`.
   * @default "debian11_64Guest"
   */
  osType?: string;
  /** The disks: file name, stored size, capacity, bus, compression. */
  disks: Array<{ href: string; size: number; capacity: number; bus: FixtureBus; gzip: boolean }>;
  /**
   * NICs.
   * @default one VmxNet3 NIC on "VM Network"
   */
  nics?: FixtureNic[];
}

/** Options for {@linkcode makeOvaFixture}. */
export interface OvaFixtureOptions {
  /** The disks, boot disk first. */
  disks: FixtureDisk[];
  /**
   * VM name, also the base name of the OVF and manifest.
   * @default the output's base name without `.ova`
   */
  name?: string;
  /** @default 2 */
  vcpus?: number;
  /** `vmw:CoresPerSocket`. */
  coresPerSocket?: number;
  /** @default 1024 */
  memoryMiB?: number;
  /** @default "bios" */
  firmware?: "bios" | "efi";
  /** @default false */
  secureBoot?: boolean;
  /** @default "debian11_64Guest" */
  osType?: string;
  /** @default one VmxNet3 NIC on "VM Network" */
  nics?: FixtureNic[];
  /**
   * Leave the package as a directory (an unpacked OVA) instead of a tar file.
   * @default false
   */
  directory?: boolean;
  /**
   * The manifest's algorithm; `none` writes no manifest.
   * @default "SHA256"
   */
  checksum?: "SHA1" | "SHA256" | "SHA512" | "none";
  /**
   * Write a wrong checksum for the first disk.
   * @default false
   */
  corruptManifest?: boolean;
  /** Leave the disk at this index out of the package (it stays in the OVF and manifest). */
  missingDisk?: number;
  /**
   * Add a `NAME.cert` file (a placeholder: vmshift does not check signatures).
   * @default false
   */
  cert?: boolean;
  /** Changes the OVF text before the manifest is written (to make a malformed descriptor). */
  editOvf?: (xml: string) => string;
  /**
   * tar format.
   * @default "ustar"
   */
  tarFormat?: "ustar" | "gnu" | "pax";
}

/** What {@linkcode makeOvaFixture} made. */
export interface OvaFixture {
  /** The OVA file or directory. */
  path: string;
  /** The OVF text as written. */
  ovf: string;
  /** The package's files in order (OVF, manifest, certificate, disks). */
  files: string[];
  /** The disks: file name, stored size, capacity. */
  disks: Array<{ href: string; size: number; capacity: number }>;
}

/**
 * Builds an OVA from raw images.
 *
 * @param out The OVA file to write, or the directory to create with `directory`; replaced if it
 * exists.
 * @param options Disks, hardware, layout, faults.
 * @returns What was written.
 * @example
 * ```ts ignore
 * import { makeOvaFixture } from "./make_ova_fixture.ts";
 * await makeOvaFixture("/tmp/web.ova", { disks: [{ image: "/tmp/web.img" }], firmware: "efi" });
 * ```
 */
export async function makeOvaFixture(out: string, options: OvaFixtureOptions): Promise<OvaFixture> {
  const name = options.name ?? basename(out).replace(/\.ova$/i, "");
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const dir = options.directory ? out : `${out}.staging`;
  await Deno.mkdir(dir, { recursive: true });
  try {
    const disks: FixtureVm["disks"] = [];
    for (const [i, d] of options.disks.entries()) {
      const vmdk = `${name}-disk${i + 1}.vmdk`;
      await run("qemu-img", [
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        d.image,
        join(dir, vmdk),
      ], { what: `Cannot convert "${d.image}"` });
      let href = vmdk;
      if (d.gzip) {
        await run("gzip", ["-n", "-f", join(dir, vmdk)], { what: `Cannot compress "${vmdk}"` });
        href = `${vmdk}.gz`;
      }
      disks.push({
        href,
        size: (await Deno.stat(join(dir, href))).size,
        capacity: (await Deno.stat(d.image)).size,
        bus: d.bus ?? "scsi",
        gzip: d.gzip ?? false,
      });
    }
    const vm: FixtureVm = { name, disks };
    for (const k of ["vcpus", "coresPerSocket", "memoryMiB", "firmware", "osType"] as const) {
      if (options[k] !== undefined) (vm as unknown as Record<string, unknown>)[k] = options[k];
    }
    if (options.secureBoot !== undefined) vm.secureBoot = options.secureBoot;
    if (options.nics) vm.nics = options.nics;
    let ovf = vmwareOvf(vm);
    if (options.editOvf) ovf = options.editOvf(ovf);
    await Deno.writeTextFile(join(dir, `${name}.ovf`), ovf);
    const files = [`${name}.ovf`];

    const algorithm = options.checksum ?? "SHA256";
    const hrefs = [`${name}.ovf`, ...disks.map((d) => d.href)];
    if (options.cert) {
      await Deno.writeTextFile(join(dir, `${name}.cert`), CERT_PLACEHOLDER);
    }
    if (algorithm !== "none") {
      const lines: string[] = [];
      for (const href of hrefs) {
        let digest = await digestOf(join(dir, href), algorithm);
        if (options.corruptManifest && href === disks[0]?.href) {
          digest = (digest[0] === "0" ? "1" : "0") + digest.slice(1);
        }
        lines.push(`${algorithm}(${href})= ${digest}\n`);
      }
      await Deno.writeTextFile(join(dir, `${name}.mf`), lines.join(""));
      files.push(`${name}.mf`);
    }
    if (options.cert) files.push(`${name}.cert`);
    for (const [i, d] of disks.entries()) {
      if (i === options.missingDisk) {
        await Deno.remove(join(dir, d.href));
        continue;
      }
      files.push(d.href);
    }
    if (!options.directory) {
      await run("tar", [
        `--format=${options.tarFormat ?? "ustar"}`,
        "-cf",
        out,
        "-C",
        dir,
        ...files,
      ], {
        what: `Cannot pack "${out}"`,
      });
    }
    return {
      path: out,
      ovf,
      files,
      disks: disks.map(({ href, size, capacity }) => ({ href, size, capacity })),
    };
  } finally {
    if (!options.directory) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const CERT_PLACEHOLDER = "-----BEGIN CERTIFICATE-----\nplaceholder\n-----END CERTIFICATE-----\n";

async function digestOf(path: string, algorithm: "SHA1" | "SHA256" | "SHA512"): Promise<string> {
  const hash = createHash(algorithm.toLowerCase());
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/**
 * The MAC address a fixture gives its NIC `i` (VMware's OUI 00:50:56).
 *
 * @param i NIC index.
 * @returns The address.
 * @example
 * ```ts
 * import { fixtureMac } from "./make_ova_fixture.ts";
 * if (fixtureMac(1) !== "00:50:56:a1:b2:01") throw new Error();
 * ```
 */
export function fixtureMac(i: number): string {
  return `00:50:56:a1:b2:${i.toString(16).padStart(2, "0")}`;
}

/**
 * Writes an OVF descriptor the way VMware's ovftool does.
 *
 * @param vm The VM.
 * @returns The OVF text.
 * @example
 * ```ts
 * import { vmwareOvf } from "./make_ova_fixture.ts";
 * const ovf = vmwareOvf({
 *   name: "web",
 *   disks: [{ href: "web-disk1.vmdk", size: 1024, capacity: 2 ** 30, bus: "scsi", gzip: false }],
 * });
 * if (!ovf.includes(`ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"`)) {
 *   throw new Error();
 * }
 * ```
 */
export function vmwareOvf(vm: FixtureVm): string {
  const vcpus = vm.vcpus ?? 2;
  const memory = vm.memoryMiB ?? 1024;
  const nics = vm.nics ?? [{ network: "VM Network", mac: fixtureMac(0) }];
  const x = xmlEscape;
  const out: string[] = [];
  const add = (s: string) => out.push(s);
  add(`<?xml version="1.0" encoding="UTF-8"?>`);
  add(
    `<!--Generated by VMware ovftool 4.4.3 (build-18663434), UTC time: 2024-05-14T09:12:44.471Z-->`,
  );
  add(
    `<Envelope vmw:buildId="build-18663434" xmlns="http://schemas.dmtf.org/ovf/envelope/1" ` +
      `xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" ` +
      `xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" ` +
      `xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" ` +
      `xmlns:vmw="http://www.vmware.com/schema/ovf" ` +
      `xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" ` +
      `xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`,
  );
  add(`  <References>`);
  vm.disks.forEach((d, i) => {
    add(
      `    <File ovf:href="${x(d.href)}" ovf:id="file${i + 1}" ovf:size="${d.size}"${
        d.gzip ? ` ovf:compression="gzip"` : ""
      }/>`,
    );
  });
  add(`  </References>`);
  add(`  <DiskSection>`);
  add(`    <Info>Virtual disk information</Info>`);
  vm.disks.forEach((d, i) => {
    const [n, units] = capacityUnits(d.capacity);
    add(
      `    <Disk ovf:capacity="${n}" ovf:capacityAllocationUnits="${units}" ` +
        `ovf:diskId="vmdisk${i + 1}" ovf:fileRef="file${i + 1}" ` +
        `ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ` +
        `ovf:populatedSize="${d.size}"/>`,
    );
  });
  add(`  </DiskSection>`);
  add(`  <NetworkSection>`);
  add(`    <Info>The list of logical networks</Info>`);
  for (const net of new Set(nics.map((n) => n.network))) {
    add(`    <Network ovf:name="${x(net)}">`);
    add(`      <Description>The ${x(net)} network</Description>`);
    add(`    </Network>`);
  }
  add(`  </NetworkSection>`);
  add(`  <VirtualSystem ovf:id="${x(vm.name)}">`);
  add(`    <Info>A virtual machine</Info>`);
  add(`    <Name>${x(vm.name)}</Name>`);
  add(
    `    <OperatingSystemSection ovf:id="96" vmw:osType="${x(vm.osType ?? "debian11_64Guest")}">`,
  );
  add(`      <Info>The kind of installed guest operating system</Info>`);
  add(`    </OperatingSystemSection>`);
  add(`    <VirtualHardwareSection>`);
  add(`      <Info>Virtual hardware requirements</Info>`);
  add(`      <System>`);
  add(`        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>`);
  add(`        <vssd:InstanceID>0</vssd:InstanceID>`);
  add(`        <vssd:VirtualSystemIdentifier>${x(vm.name)}</vssd:VirtualSystemIdentifier>`);
  add(`        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>`);
  add(`      </System>`);
  let id = 1;
  const item = (lines: string[], attrs = "") => {
    add(`      <Item${attrs}>`);
    for (const l of lines) add(`        ${l}`);
    add(`      </Item>`);
  };
  item([
    `<rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>`,
    `<rasd:Description>Number of Virtual CPUs</rasd:Description>`,
    `<rasd:ElementName>${vcpus} virtual CPU(s)</rasd:ElementName>`,
    `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
    `<rasd:ResourceType>3</rasd:ResourceType>`,
    `<rasd:VirtualQuantity>${vcpus}</rasd:VirtualQuantity>`,
    ...(vm.coresPerSocket !== undefined
      ? [`<vmw:CoresPerSocket ovf:required="false">${vm.coresPerSocket}</vmw:CoresPerSocket>`]
      : []),
  ]);
  item([
    `<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>`,
    `<rasd:Description>Memory Size</rasd:Description>`,
    `<rasd:ElementName>${memory}MB of memory</rasd:ElementName>`,
    `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
    `<rasd:ResourceType>4</rasd:ResourceType>`,
    `<rasd:VirtualQuantity>${memory}</rasd:VirtualQuantity>`,
  ]);
  // Controllers: one of each bus in use, and always the two IDE channels (the CD-ROM's).
  const controller: Partial<Record<FixtureBus | "ide1", number>> = {};
  const buses = new Set(vm.disks.map((d) => d.bus));
  if (buses.has("scsi")) {
    controller.scsi = id;
    item([
      `<rasd:Address>0</rasd:Address>`,
      `<rasd:Description>SCSI Controller</rasd:Description>`,
      `<rasd:ElementName>SCSI controller 0</rasd:ElementName>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>`,
      `<rasd:ResourceType>6</rasd:ResourceType>`,
      `<vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="160"/>`,
    ]);
  }
  if (buses.has("sata")) {
    controller.sata = id;
    item([
      `<rasd:Address>0</rasd:Address>`,
      `<rasd:Description>SATA Controller</rasd:Description>`,
      `<rasd:ElementName>SATA controller 0</rasd:ElementName>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>`,
      `<rasd:ResourceType>20</rasd:ResourceType>`,
      `<vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="33"/>`,
    ]);
  }
  if (buses.has("nvme")) {
    controller.nvme = id;
    item([
      `<rasd:Address>0</rasd:Address>`,
      `<rasd:Description>NVME Controller</rasd:Description>`,
      `<rasd:ElementName>NVME controller 0</rasd:ElementName>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:ResourceSubType>vmware.nvme.controller</rasd:ResourceSubType>`,
      `<rasd:ResourceType>20</rasd:ResourceType>`,
    ]);
  }
  for (const n of [1, 0]) {
    if (n === 1) controller.ide1 = id;
    else controller.ide = id;
    item([
      `<rasd:Address>${n}</rasd:Address>`,
      `<rasd:Description>IDE Controller</rasd:Description>`,
      `<rasd:ElementName>IDE ${n}</rasd:ElementName>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:ResourceType>5</rasd:ResourceType>`,
    ]);
  }
  item([
    `<rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>`,
    `<rasd:ElementName>Video card</rasd:ElementName>`,
    `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
    `<rasd:ResourceType>24</rasd:ResourceType>`,
    `<vmw:Config ovf:required="false" vmw:key="videoRamSizeInKB" vmw:value="4096"/>`,
  ], ` ovf:required="false"`);
  item([
    `<rasd:AddressOnParent>0</rasd:AddressOnParent>`,
    `<rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>`,
    `<rasd:ElementName>CD/DVD drive 1</rasd:ElementName>`,
    `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
    `<rasd:Parent>${controller.ide1}</rasd:Parent>`,
    `<rasd:ResourceSubType>vmware.cdrom.atapi</rasd:ResourceSubType>`,
    `<rasd:ResourceType>15</rasd:ResourceType>`,
  ], ` ovf:required="false"`);
  const units: Record<FixtureBus, number> = { scsi: 0, sata: 0, ide: 0, nvme: 0 };
  vm.disks.forEach((d, i) => {
    let unit = units[d.bus]++;
    if (d.bus === "scsi" && unit >= 7) unit = units.scsi++; // unit 7 is the controller's own
    item([
      `<rasd:AddressOnParent>${unit}</rasd:AddressOnParent>`,
      `<rasd:ElementName>Hard disk ${i + 1}</rasd:ElementName>`,
      `<rasd:HostResource>ovf:/disk/vmdisk${i + 1}</rasd:HostResource>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:Parent>${controller[d.bus]}</rasd:Parent>`,
      `<rasd:ResourceType>17</rasd:ResourceType>`,
      `<vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>`,
    ]);
  });
  nics.forEach((n, i) => {
    const model = n.model ?? "VmxNet3";
    item([
      ...(n.mac !== undefined ? [`<rasd:Address>${x(n.mac)}</rasd:Address>`] : []),
      `<rasd:AddressOnParent>${7 + i}</rasd:AddressOnParent>`,
      `<rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>`,
      `<rasd:Connection>${x(n.network)}</rasd:Connection>`,
      `<rasd:Description>${x(model)} ethernet adapter on &quot;${
        x(n.network)
      }&quot;</rasd:Description>`,
      `<rasd:ElementName>Network adapter ${i + 1}</rasd:ElementName>`,
      `<rasd:InstanceID>${id++}</rasd:InstanceID>`,
      `<rasd:ResourceSubType>${x(model)}</rasd:ResourceSubType>`,
      `<rasd:ResourceType>10</rasd:ResourceType>`,
      `<vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="${192 + i}"/>`,
      `<vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="true"/>`,
    ]);
  });
  const config = (key: string, value: string) =>
    add(`      <vmw:Config ovf:required="false" vmw:key="${key}" vmw:value="${value}"/>`);
  config("cpuHotAddEnabled", "false");
  config("firmware", vm.firmware ?? "bios");
  if (vm.firmware === "efi") {
    config("bootOptions.efiSecureBootEnabled", vm.secureBoot ? "true" : "false");
  }
  config("memoryHotAddEnabled", "false");
  config("powerOpInfo.powerOffType", "soft");
  config("tools.syncTimeWithHost", "false");
  config("tools.toolsUpgradePolicy", "manual");
  add(`    </VirtualHardwareSection>`);
  add(`  </VirtualSystem>`);
  add(`</Envelope>`);
  return out.join("\n") + "\n";
}

/** A capacity in the largest `byte * 2^N` unit that divides it, as ovftool writes it. */
function capacityUnits(bytes: number): [number, string] {
  for (const exp of [30, 20, 10]) {
    if (bytes % 2 ** exp === 0) return [bytes / 2 ** exp, `byte * 2^${exp}`];
  }
  return [bytes, "byte"];
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

const USAGE =
  `Usage: deno run -A scripts/make_ova_fixture.ts OUT.ova --disk RAW[,bus=BUS][,gzip] ...
    [--name N] [--vcpus N] [--cores-per-socket N] [--memory MiB] [--efi] [--secure-boot]
    [--directory] [--checksum SHA1|SHA256|SHA512|none] [--corrupt-manifest]
    [--missing-disk N] [--cert] [--json]

Builds a VMware-style OVA from raw images: streamOptimized VMDKs, an OVF, a manifest, packed
with tar (or left as a directory with --directory). BUS is scsi (default), sata, ide or nvme.`;

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        disk: { type: "string", multiple: true, default: [] },
        name: { type: "string" },
        vcpus: { type: "string" },
        "cores-per-socket": { type: "string" },
        memory: { type: "string" },
        efi: { type: "boolean", default: false },
        "secure-boot": { type: "boolean", default: false },
        directory: { type: "boolean", default: false },
        checksum: { type: "string", default: "SHA256" },
        "corrupt-manifest": { type: "boolean", default: false },
        "missing-disk": { type: "string" },
        cert: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    console.error(`make_ova_fixture: ${(e as Error).message}\n\n${USAGE}`);
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
  const disks: FixtureDisk[] = [];
  for (const spec of v.disk) {
    const [image, ...flags] = spec.split(",");
    const disk: FixtureDisk = { image: image! };
    for (const f of flags) {
      if (f === "gzip") disk.gzip = true;
      else if (/^bus=(scsi|sata|ide|nvme)$/.test(f)) disk.bus = f.slice(4) as FixtureBus;
      else {
        console.error(`make_ova_fixture: unknown disk flag "${f}"\n\n${USAGE}`);
        return 2;
      }
    }
    disks.push(disk);
  }
  if (!["SHA1", "SHA256", "SHA512", "none"].includes(v.checksum)) {
    console.error(`make_ova_fixture: --checksum takes SHA1, SHA256, SHA512 or none`);
    return 2;
  }
  const options: OvaFixtureOptions = {
    disks,
    directory: v.directory,
    checksum: v.checksum as "SHA1" | "SHA256" | "SHA512" | "none",
    corruptManifest: v["corrupt-manifest"],
    cert: v.cert,
    firmware: v.efi || v["secure-boot"] ? "efi" : "bios",
    secureBoot: v["secure-boot"],
  };
  if (v.name) options.name = v.name;
  if (v.vcpus) options.vcpus = Number(v.vcpus);
  if (v["cores-per-socket"]) options.coresPerSocket = Number(v["cores-per-socket"]);
  if (v.memory) options.memoryMiB = Number(v.memory);
  if (v["missing-disk"] !== undefined) options.missingDisk = Number(v["missing-disk"]);
  const fixture = await makeOvaFixture(positionals[0]!, options);
  if (v.json) console.log(JSON.stringify(fixture, null, 2));
  else console.error(`Created "${fixture.path}": ${fixture.files.join(", ")}`);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
