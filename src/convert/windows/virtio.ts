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

/** Where the virtio-win drivers are: a directory (the ISO's tree) or the ISO itself. */
export type VirtioWin = { kind: "dir"; path: string } | { kind: "iso"; path: string };

/** Where virtio-win is installed when `VIRTIO_WIN` is not set (the virtio-win package's path). */
export const VIRTIO_WIN_INSTALL_DIR = "/usr/share/virtio-win";

/** Byte offset of the ISO 9660 standard identifier `CD001` in the first volume descriptor. */
const ISO9660_MAGIC_OFFSET = 16 * 2048 + 1;

/**
 * Where the virtio-win drivers are, as virt-v2v looks: `VIRTIO_WIN`, its old name
 * `VIRTIO_WIN_DIR`, then `virtio-win.iso` in the install directory when it is there, then the
 * install directory itself. Each may be a directory or an ISO 9660 image.
 *
 * An ISO is checked here (a regular file, readable, not empty, with an ISO 9660 volume
 * descriptor), so that a wrong one is refused before the appliance starts and before any
 * change to the guest; the conversion then reads it through the appliance (see
 * {@linkcode copyFromIso}).
 *
 * @param env Environment lookup. @default Deno.env.get
 * @param installDir Where virtio-win is installed. @default VIRTIO_WIN_INSTALL_DIR
 * @returns The directory or ISO, or undefined when there is none (then say so and fall back).
 * @throws {Error} Naming the path, when it is given but is neither a usable directory nor a
 *   readable ISO 9660 image.
 */
export function locateVirtioWin(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
  installDir: string = VIRTIO_WIN_INSTALL_DIR,
): VirtioWin | undefined {
  const given = env("VIRTIO_WIN") ?? env("VIRTIO_WIN_DIR");
  let path = given ?? installDir;
  if (given === undefined) {
    // virt-v2v prefers the installed ISO: the virtio-win package ships its drivers there.
    const iso = `${installDir}/virtio-win.iso`;
    try {
      if (Deno.statSync(iso).isFile) path = iso;
    } catch {
      // No ISO: the directory.
    }
  }
  const what = given === undefined ? "virtio-win" : "VIRTIO_WIN";
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    if (given === undefined && e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`Cannot use ${what} "${path}": ${errorMessage(e)}`);
  }
  if (info.isDirectory) return { kind: "dir", path };
  const refuse = (why: string) =>
    new Error(
      `Cannot use ${what} "${path}": ${why}; it must be the virtio-win directory or the ` +
        "virtio-win ISO (virtio-win.iso)",
    );
  if (!info.isFile) throw refuse("not a directory nor a regular file");
  if (info.size === 0) throw refuse("the file is empty");
  const magic = new Uint8Array(5);
  let read = 0;
  try {
    using file = Deno.openSync(path, { read: true });
    file.seekSync(ISO9660_MAGIC_OFFSET, Deno.SeekMode.Start);
    while (read < magic.length) {
      const n = file.readSync(magic.subarray(read));
      if (n === null) break;
      read += n;
    }
  } catch (e) {
    throw refuse(`cannot read it (${errorMessage(e)})`);
  }
  if (read < magic.length || new TextDecoder().decode(magic) !== "CD001") {
    throw refuse("not an ISO 9660 image (no CD001 volume descriptor)");
  }
  return { kind: "iso", path };
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

/** Lists a directory's entry names; throws when it is not a directory. */
type Lister = (dir: string) => string[];

/** Lists a host directory. */
const hostList: Lister = (dir) => [...Deno.readDirSync(dir)].map((e) => e.name);

/** Finds an entry of a directory without regard to case. */
function entryNoCase(dir: string, name: string, list: Lister = hostList): string | undefined {
  try {
    const found = list(dir).find((e) => e.toLowerCase() === name.toLowerCase());
    return found === undefined ? undefined : `${dir === "/" ? "" : dir}/${found}`;
  } catch {
    // Not a directory.
  }
  return undefined;
}

/** The directory holding one driver for the guest, or undefined. */
function driverDir(
  root: string,
  driver: Driver,
  osDirs: string[],
  arch: string,
  list: Lister = hostList,
): string | undefined {
  const base = entryNoCase(root, driver.dir, list);
  if (base === undefined) return undefined;
  for (const os of osDirs) {
    const osDir = entryNoCase(base, os, list);
    const dir = osDir && entryNoCase(osDir, arch === "x86_64" ? "amd64" : "x86", list);
    if (
      dir && entryNoCase(dir, `${driver.name}.inf`, list) &&
      entryNoCase(dir, `${driver.name}.sys`, list)
    ) {
      return dir;
    }
  }
  return undefined;
}

/** The guest agent installer names for an architecture, best first. */
function agentNames(arch: string): string[] {
  return arch === "x86_64"
    ? ["qemu-ga-x86_64.msi", "qemu-ga-x64.msi"]
    : ["qemu-ga-i386.msi", "qemu-ga-x86.msi"];
}

/**
 * Copies from the virtio-win ISO the files {@linkcode installVirtioDrivers} would take for
 * this guest (each driver's directory for its release and architecture, the guest agent
 * installer) into a host directory, in the ISO's layout, so that the installation then reads
 * a virtio-win tree as from a directory. A few megabytes, never the whole ISO.
 *
 * Why this way: the ISO is an extra read-only drive of the conversion's own appliance (no
 * second launch, no loop mount, no root on the host). libguestfs mounts every filesystem
 * under the one tree rooted at the guest's `/`, and `mkmountpoint` only works before the
 * first mount (its mount points are hidden once the guest is mounted at `/`), so the ISO
 * cannot be mounted beside the mounted guest without creating a directory in the guest. It
 * is mounted at `/` instead, with the guest unmounted, for as long as the copy takes.
 *
 * @param g The handle, with nothing mounted; nothing is mounted when it returns.
 * @param device The ISO's device in the appliance, e.g. `/dev/sdb`.
 * @param dest The host directory to fill (created; the run's private directory).
 * @param guest Release and architecture, which choose the drivers.
 */
export async function copyFromIso(
  g: WindowsGuest["g"],
  device: string,
  dest: string,
  guest: Pick<WindowsGuest, "major" | "minor" | "build" | "variant" | "arch">,
): Promise<void> {
  await Deno.mkdir(dest, { recursive: true });
  await g.mountRo(device, "/");
  try {
    const list: Lister = (dir) => {
      if (!g.isDir(dir)) throw new Error(`${dir}: not a directory`);
      return g.ls(dir);
    };
    const copy = async (dir: string, name: string) => {
      await Deno.mkdir(`${dest}${dir}`, { recursive: true });
      await g.download(`${dir}/${name}`, `${dest}${dir}/${name}`);
    };
    const osDirs = osDirNames(guest);
    for (const driver of DRIVERS) {
      const dir = driverDir("/", driver, osDirs, guest.arch, list);
      if (dir === undefined) continue;
      for (const name of g.ls(dir)) {
        if (/\.pdb$/i.test(name) || !g.isFile(`${dir}/${name}`)) continue;
        await copy(dir, name);
      }
    }
    const agentDir = entryNoCase("/", "guest-agent", list);
    const msi = agentDir &&
      agentNames(guest.arch).map((n) => entryNoCase(agentDir, n, list)).find((p) => p);
    if (msi) await copy(agentDir, msi.slice(agentDir.length + 1));
  } finally {
    await g.umount("/");
  }
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
      `No virtio-win drivers found (set VIRTIO_WIN to the virtio-win directory or ISO, or install ` +
        `them in /usr/share/virtio-win): ${describe} will use slower emulated devices, SATA ` +
        "disks and e1000 NICs",
    );
    return fallback;
  }
  const root = guest.virtioWin;
  // Paths as the user knows them: in the ISO, not in the copy of its part we read.
  const shown = (path: string) =>
    guest.virtioWinIso === undefined
      ? path
      : `${guest.virtioWinIso}:${path.slice(root.length) || "/"}`;
  const osDirs = osDirNames(guest);
  const found = DRIVERS.map((d) => ({
    driver: d,
    dir: driverDir(root, d, osDirs, guest.arch),
  }));
  const missing = found.filter((f) => f.dir === undefined).map((f) => f.driver.name);
  const have = found.filter((f): f is { driver: Driver; dir: string } => f.dir !== undefined);
  if (!have.length) {
    report.problem(
      `virtio-win in ${shown(root)} has no drivers for ${describe} (looked in ` +
        `${osDirs.join(", ") || "no directory"}): the guest will use slower emulated devices, ` +
        "SATA disks and e1000 NICs",
    );
    return fallback;
  }
  if (missing.length) {
    report.problem(
      `virtio-win in ${shown(root)} lacks ${missing.join(", ")} for ${describe}`,
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
      `Installed the ${driver.name} driver (${driver.what}) from ${shown(dir)} into ` +
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
  const msi = agentDir &&
    agentNames(guest.arch).map((n) => entryNoCase(agentDir, n)).find((p) => p);
  if (msi) {
    result.agentMsi = `${staged}/qemu-ga.msi`;
    await g.upload(msi, result.agentMsi);
    report.changed(`Copied the QEMU guest agent installer ${shown(msi)} for the first boot`);
  } else {
    report.problem(
      `virtio-win in ${shown(root)} has no QEMU guest agent installer for ${guest.arch}: ` +
        "install the agent by hand",
    );
  }
  return result;
}
