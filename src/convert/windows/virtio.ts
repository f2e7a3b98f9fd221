/**
 * virtio-win drivers: found where virt-v2v looks (`VIRTIO_WIN`, its old name `VIRTIO_WIN_DIR`,
 * then `/usr/share/virtio-win`), chosen for the guest's Windows release and architecture,
 * and installed three ways:
 *
 * 1. each driver's `.sys` into `System32\drivers`;
 * 2. each driver's package (`.inf`, `.cat`, `.sys` and helpers, not the `.pdb` debug files) into
 *    `%SystemRoot%\Drivers\VirtIO`, which is added to `DevicePath` so that Plug and Play finds
 *    them, and which the first boot installs with pnputil;
 * 3. the boot disk driver (viostor) registered as a boot-start service with the PCI IDs of the
 *    virtio-blk device (legacy and modern) bound to it: in `CriticalDeviceDatabase` for
 *    Windows 7 / 2008 R2, in the `DriverDatabase` for Windows 8 and later. Without this
 *    Windows cannot read its disk before Plug and Play runs, and stops with
 *    INACCESSIBLE_BOOT_DEVICE (0x7B).
 *
 * Only the drivers for devices the converted VM has are installed: viostor, vioscsi, netkvm,
 * balloon, vioser (the guest agent's channel) and viorng. The virtio-win tree also holds
 * drivers for devices the target may not have (viofs, vioinput, qxl, pvpanic, fwcfg...):
 * one bad optional driver can leave Windows in a reboot loop, so they are left out.
 *
 * @module
 */

import { errorMessage } from "../../errors.ts";
import { type WindowsGuest, windowsPath } from "./_guest.ts";
import { type Hive, withHive } from "./registry.ts";

/** One driver vmshift installs. */
interface Driver {
  /** The file name (`NAME.sys`, `NAME.inf`). */
  name: string;
  /** Its directory in the virtio-win tree. */
  dir: string;
  /** What it drives, for the report. */
  what: string;
}

const DRIVERS: readonly Driver[] = [
  { name: "viostor", dir: "viostor", what: "virtio-blk disks" },
  { name: "vioscsi", dir: "vioscsi", what: "virtio-scsi disks" },
  { name: "netkvm", dir: "NetKVM", what: "virtio network" },
  { name: "balloon", dir: "Balloon", what: "memory balloon" },
  { name: "vioser", dir: "vioserial", what: "virtio serial, the guest agent's channel" },
  { name: "viorng", dir: "viorng", what: "virtio random number generator" },
];

/** The SCSI adapter device class, which the boot disk driver belongs to. */
const SCSI_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}";

/** PCI IDs of the virtio-blk device: transitional (legacy) and virtio 1.0 (modern). */
const VIOSTOR_PCI_IDS = [
  "VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00",
  "VEN_1AF4&DEV_1042&SUBSYS_11001AF4&REV_01",
];

/** What the guest can use after driver installation. */
export interface InstalledDrivers {
  /** The disk bus the output must use. */
  block: "virtio-blk" | "sata";
  /** The NIC model the output must use. */
  nic: "virtio" | "e1000";
  /** The drivers installed (names). */
  drivers: string[];
  /** The staged package directory in the guest, e.g. `/Windows/Drivers/VirtIO`. */
  staged?: string;
  /** The guest agent's MSI, copied into the guest, when virtio-win has one. */
  agentMsi?: string;
}

/**
 * Where the virtio-win drivers are.
 *
 * @param env Environment lookup. @default Deno.env.get
 * @returns The directory, or undefined when there is none (then say so and fall back).
 * @throws {Error} When `VIRTIO_WIN` names something that is not a usable directory.
 */
export function locateVirtioWin(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): string | undefined {
  const given = env("VIRTIO_WIN") ?? env("VIRTIO_WIN_DIR");
  const path = given ?? "/usr/share/virtio-win";
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    if (given === undefined && e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`Cannot use VIRTIO_WIN "${path}": ${errorMessage(e)}`);
  }
  if (info.isDirectory) return path;
  throw new Error(
    `Cannot use virtio-win "${path}": vmshift reads a directory, not an ISO yet; mount the ` +
      `ISO (mount -o loop,ro ${path} /mnt/virtio-win) and set VIRTIO_WIN=/mnt/virtio-win`,
  );
}

/**
 * The virtio-win directory names for a Windows release, best first.
 *
 * @param guest Version, build and variant of the guest.
 * @returns e.g. `["w11", "w10"]`, `["2k22", "2k19"]`, `["w7"]`.
 */
export function osDirNames(
  guest: Pick<WindowsGuest, "major" | "minor" | "build" | "variant">,
): string[] {
  const server = guest.variant !== "Client";
  const v = `${guest.major}.${guest.minor}`;
  if (v === "6.1") return [server ? "2k8R2" : "w7"];
  if (v === "6.2") return [server ? "2k12" : "w8"];
  if (v === "6.3") return [server ? "2k12R2" : "w8.1"];
  if (guest.major !== 10) return [];
  if (!server) return guest.build >= 22000 ? ["w11", "w10"] : ["w10"];
  // Each server release runs the drivers built for the release before it.
  const servers: [number, string][] = [[26100, "2k25"], [20348, "2k22"], [17763, "2k19"], [
    14393,
    "2k16",
  ]];
  const first = servers.findIndex(([build]) => guest.build >= build);
  return servers.slice(first < 0 ? servers.length - 1 : first).map(([, dir]) => dir);
}

/** Finds an entry of a host directory without regard to case. */
function entryNoCase(dir: string, name: string): string | undefined {
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (e.name.toLowerCase() === name.toLowerCase()) return `${dir}/${e.name}`;
    }
  } catch {
    // Not a directory.
  }
  return undefined;
}

/** The host directory holding one driver for the guest, or undefined. */
function driverDir(
  root: string,
  driver: Driver,
  osDirs: string[],
  arch: string,
): string | undefined {
  const base = entryNoCase(root, driver.dir);
  if (base === undefined) return undefined;
  for (const os of osDirs) {
    const osDir = entryNoCase(base, os);
    const dir = osDir && entryNoCase(osDir, arch === "x86_64" ? "amd64" : "x86");
    if (dir && entryNoCase(dir, `${driver.name}.inf`) && entryNoCase(dir, `${driver.name}.sys`)) {
      return dir;
    }
  }
  return undefined;
}

/** Bytes of a GUID as Windows stores it: the first three fields little-endian. */
function guidBytes(guid: string): Uint8Array {
  const hex = guid.replace(/[{}-]/g, "");
  const b = Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
  return Uint8Array.from([b[3]!, b[2]!, b[1]!, b[0]!, b[5]!, b[4]!, b[7]!, b[6]!, ...b.slice(8)]);
}

/**
 * Registers the boot disk driver so that Windows loads it at boot and binds it to the
 * virtio-blk PCI IDs before Plug and Play runs.
 */
function registerBootDriver(guest: WindowsGuest, h: Hive, name: string): void {
  const services = [guest.controlSet, "Services", name];
  h.set(services, {
    Type: { dword: 1 }, // kernel driver
    Start: { dword: 0 }, // boot
    ErrorControl: { dword: 1 },
    Group: { sz: "SCSI miniport" },
    ImagePath: { expandSz: `system32\\drivers\\${name}.sys` },
  });
  guest.report.changed(`Registered ${name} as a boot-start service (Services\\${name}, Start=0)`);
  if (h.node(["DriverDatabase"]) === undefined) {
    // Windows 7 / 2008 R2: the critical device database binds PCI IDs to services at boot.
    for (const id of VIOSTOR_PCI_IDS) {
      h.set([guest.controlSet, "Control", "CriticalDeviceDatabase", `PCI#${id}`], {
        Service: { sz: name },
        ClassGUID: { sz: SCSI_CLASS },
      });
    }
    guest.report.changed(
      `Bound the virtio-blk PCI IDs to ${name} in the CriticalDeviceDatabase`,
    );
    return;
  }
  // Windows 8 and later: the driver database, as if a package for these IDs were installed.
  const inf = `vmshift_${name}.inf`;
  const pkg = `${inf}_boot`;
  const config = `vmshift_${name}_boot`;
  h.set(["DriverDatabase", "DriverInfFiles", inf], {
    "": { multiSz: [pkg] },
    Active: { sz: pkg },
    Configurations: { multiSz: [config] },
  });
  // The package version: a header, the device class, no date and no version number; the
  // kernel's Plug and Play manager on Windows 10 / 2016 rejects a package without it.
  const version = new Uint8Array(8 + 16 + 24);
  version.set([0x00, 0xff, 0x09, 0x00], 0);
  version.set(guidBytes(SCSI_CLASS), 8);
  h.set(["DriverDatabase", "DriverPackages", pkg], { Version: { binary: version } });
  h.set(["DriverDatabase", "DriverPackages", pkg, "Configurations", config], {
    ConfigFlags: { dword: 0 },
    Service: { sz: name },
  });
  for (const id of VIOSTOR_PCI_IDS) {
    h.set(["DriverDatabase", "DeviceIds", "PCI", id], {
      [inf]: { binary: Uint8Array.from([0x01, 0xff, 0x00, 0x00]) },
    });
    h.set(["DriverDatabase", "DriverPackages", pkg, "Descriptors", "PCI", id], {
      Configuration: { sz: config },
    });
  }
  guest.report.changed(`Bound the virtio-blk PCI IDs to ${name} in the DriverDatabase`);
}

/**
 * Installs the virtio-win drivers the guest needs, or records why not and chooses emulated
 * devices (SATA disks, e1000 NICs) for the output.
 *
 * @param guest The mounted guest.
 * @returns The devices the output must give the guest, and what was installed.
 */
export async function installVirtioDrivers(guest: WindowsGuest): Promise<InstalledDrivers> {
  const { g, report } = guest;
  const fallback: InstalledDrivers = { block: "sata", nic: "e1000", drivers: [] };
  const describe = `${guest.product} (${guest.major}.${guest.minor} build ${guest.build}, ` +
    `${guest.variant}, ${guest.arch})`;
  if (guest.virtioWin === undefined) {
    report.problem(
      `No virtio-win drivers found (set VIRTIO_WIN to the virtio-win directory, or install ` +
        `them in /usr/share/virtio-win): ${describe} will use slower emulated devices, SATA ` +
        "disks and e1000 NICs",
    );
    return fallback;
  }
  const osDirs = osDirNames(guest);
  const found = DRIVERS.map((d) => ({
    driver: d,
    dir: driverDir(guest.virtioWin!, d, osDirs, guest.arch),
  }));
  const missing = found.filter((f) => f.dir === undefined).map((f) => f.driver.name);
  const have = found.filter((f): f is { driver: Driver; dir: string } => f.dir !== undefined);
  if (!have.length) {
    report.problem(
      `virtio-win in ${guest.virtioWin} has no drivers for ${describe} (looked in ` +
        `${osDirs.join(", ") || "no directory"}): the guest will use slower emulated devices, ` +
        "SATA disks and e1000 NICs",
    );
    return fallback;
  }
  if (missing.length) {
    report.problem(
      `virtio-win in ${guest.virtioWin} lacks ${missing.join(", ")} for ${describe}`,
    );
  }

  const staged = `${guest.systemroot}/Drivers/VirtIO`;
  g.mkdirP(staged);
  const drivers = `${guest.systemroot}/System32/drivers`;
  for (const { driver, dir } of have) {
    for (const entry of Deno.readDirSync(dir)) {
      if (!entry.isFile || /\.pdb$/i.test(entry.name)) continue;
      await g.upload(`${dir}/${entry.name}`, `${staged}/${entry.name.toLowerCase()}`);
    }
    g.cp(`${staged}/${driver.name}.sys`, `${drivers}/${driver.name}.sys`);
    report.changed(
      `Installed the ${driver.name} driver (${driver.what}) from ${dir} into ` +
        `${windowsPath(drivers)} and staged its package in ${windowsPath(staged)}`,
    );
  }
  const installed = have.map((f) => f.driver.name);
  const block = installed.includes("viostor") ? "virtio-blk" : "sata";
  await withHive(g, guest.systemHive, true, (h) => {
    if (block === "virtio-blk") registerBootDriver(guest, h, "viostor");
  });
  await withHive(g, guest.softwareHive, true, (h) => {
    const key = ["Microsoft", "Windows", "CurrentVersion"];
    const current = h.getString(key, "DevicePath") ?? "%SystemRoot%\\inf";
    const add = "%SystemRoot%\\Drivers\\VirtIO";
    if (!current.toLowerCase().split(";").includes(add.toLowerCase())) {
      h.set(key, { DevicePath: { expandSz: `${current};${add}` } });
      report.changed(`Added ${add} to DevicePath, where Plug and Play looks for drivers`);
    }
  });
  if (block === "sata") {
    report.problem(`No viostor for ${describe}: the disks will be on emulated SATA`);
  }
  const nic = installed.includes("netkvm") ? "virtio" : "e1000";
  if (nic === "e1000") {
    report.problem(`No netkvm for ${describe}: the NICs will be emulated e1000`);
  }

  const result: InstalledDrivers = { block, nic, drivers: installed, staged };
  const agentDir = entryNoCase(guest.virtioWin, "guest-agent");
  const names = guest.arch === "x86_64"
    ? ["qemu-ga-x86_64.msi", "qemu-ga-x64.msi"]
    : ["qemu-ga-i386.msi", "qemu-ga-x86.msi"];
  const msi = agentDir && names.map((n) => entryNoCase(agentDir, n)).find((p) => p);
  if (msi) {
    result.agentMsi = `${staged}/qemu-ga.msi`;
    await g.upload(msi, result.agentMsi);
    report.changed(`Copied the QEMU guest agent installer ${msi} for the first boot`);
  } else {
    report.problem(
      `virtio-win in ${guest.virtioWin} has no QEMU guest agent installer for ${guest.arch}: ` +
        "install the agent by hand",
    );
  }
  return result;
}
