/**
 * Conversion: makes the guest in the overlays boot on KVM with virtio. Every write lands in the
 * qcow2 overlays (the source behind them is never written).
 *
 * 1. libguestfs opens the overlays (qcow2, discard passed through so that fstrim reaches
 *    them) and inspects them for operating systems; `--root` chooses among several. When
 *    virtio-win is an ISO, it is one more drive, read-only and after the overlays, which
 *    inspection, `--root` and fstrim leave out (see `windows/virtio.ts`, `copyFromIso`).
 * 2. The guest's filesystems are mounted as the guest mounts them, and the conversion for its
 *    type runs (Linux: see `linux/mod.ts`; Windows: see `windows/mod.ts`, which also says which
 *    devices the output must give the VM, in {@linkcode ConversionReport.devices}).
 * 3. Every filesystem is trimmed (unless `--no-fstrim`): deleted data becomes zero clusters in
 *    the overlay, so the copy skips it.
 * 4. The appliance is shut down cleanly, so that every write is in the overlays before they
 *    are copied.
 *
 * Errors that make the guest unbootable stop the run; the rest go to the
 * {@linkcode ConversionReport}.
 *
 * @module
 */

import { errorMessage } from "../errors.ts";
import type { RunContext } from "../input/types.ts";
import type { Vm } from "../vm.ts";
import { deviceMap } from "./_devices.ts";
import { Guestfs } from "./guestfs.ts";
import { convertLinux, familyOf } from "./linux/mod.ts";
import { ConversionReport } from "./report.ts";
import {
  convertWindows,
  copyFromIso,
  locateVirtioWin,
  realPath,
  type StaticIp,
  type VirtioWin,
} from "./windows/mod.ts";
import { withHive } from "./windows/registry.ts";

export { ConversionReport } from "./report.ts";
export { parseMacIp, type StaticIp } from "./windows/mod.ts";

/** How `--root` chooses among several operating systems. */
export type RootChoice = "ask" | "single" | "first" | `/dev/${string}`;

/** Options of {@linkcode convert}. */
export interface ConvertOptions {
  /**
   * `--root`: which operating system to convert when the disks hold several.
   * @default "ask"
   */
  root?: RootChoice;
  /**
   * Trim every filesystem after conversion (`--no-fstrim` turns it off).
   * @default true
   */
  fstrim?: boolean;
  /** Stage messages ("Inspecting the overlay"). */
  message?: (text: string) => void;
  /** libguestfs debug output (`-v`). */
  verbose?: boolean;
  /** libguestfs call trace (`-x`). */
  trace?: boolean;
  /** `--mac MAC:ip:...`: static IPv4 settings for the new NICs (Windows guests). */
  staticIps?: StaticIp[];
  /**
   * Environment lookup for `VIRTIO_WIN` (tests pass their own).
   * @default Deno.env.get
   */
  env?: (name: string) => string | undefined;
  /** Asks the user to choose a root (for `--root ask` on a terminal); returns the answer. */
  ask?: (question: string) => string | null;
}

/**
 * Converts the guest in the overlays.
 *
 * @param vm The VM (its disks give the device names, its NICs the MACs).
 * @param overlays The qcow2 overlays, one per disk, in order.
 * @param ctx The run context (private directory, signal, messages).
 * @param options `--root`, `--no-fstrim`, verbosity.
 * @returns What was changed and what could not be.
 * @throws {Error} When there is no operating system, several and no way to choose, an
 *   encrypted root, an unsupported guest, or a guest that cannot be made to boot on KVM.
 */
export async function convert(
  vm: Vm,
  overlays: readonly string[],
  ctx: RunContext,
  options: ConvertOptions = {},
): Promise<ConversionReport> {
  const say = options.message ?? (() => {});
  const report = new ConversionReport(ctx.debug);
  const { signal } = ctx;
  await using g = Guestfs.create({
    verbose: options.verbose ?? false,
    trace: options.trace ?? false,
    tmpdir: ctx.dir.path,
    onLog: ctx.debug,
  });
  for (const overlay of overlays) {
    g.addDrive(overlay, { format: "qcow2", discard: "besteffort", cachemode: "unsafe" });
  }
  // virtio-win, for a Windows guest; which guest it is, only the appliance can tell, and a
  // drive cannot be added after launch. A wrong VIRTIO_WIN is an error for Windows guests only.
  let virtioWin: VirtioWin | undefined;
  let virtioWinError: unknown;
  try {
    virtioWin = locateVirtioWin(options.env);
  } catch (e) {
    virtioWinError = e;
  }
  if (virtioWin?.kind === "iso") {
    // After the overlays, so that they keep their device names (sda, sdb... in VM order, which
    // _devices.ts and --root rely on); read-only, so the ISO is never written.
    g.addDrive(virtioWin.path, { format: "raw", readonly: true });
  }
  say("Opening the overlay");
  const kill = () => g.kill();
  signal.addEventListener("abort", kill, { once: true });
  try {
    await g.launch(signal);
    // The ISO's device, which inspection, --root and fstrim must leave alone.
    const iso = virtioWin?.kind === "iso" ? g.listDevices()[overlays.length] : undefined;
    if (virtioWin?.kind === "iso" && iso === undefined) {
      throw new Error(`virtio-win ISO ${virtioWin.path}: no device for it in the appliance`);
    }
    const onIso = (device: string) => iso !== undefined && onDisk(device, iso);
    say("Inspecting the overlay");
    const root = await chooseRoot(g, options, onIso);
    const type = g.inspectGetType(root);
    const distro = g.inspectGetDistro(root);
    const major = g.inspectGetMajorVersion(root);
    report.guest = {
      root,
      type,
      distro,
      version: `${major}.${g.inspectGetMinorVersion(root)}`,
      product: productName(g.inspectGetProductName(root), distro),
      arch: g.inspectGetArch(root),
    };
    // Listed now, before conversion: after it, probing takes a minute and more under TCG
    // (list_filesystems measured 5 s before, 71 s after), and the conversion creates none.
    const filesystems = options.fstrim ?? true ? trimmable(g, onIso) : [];
    if (type === "windows") {
      // Before anything is changed: a bad VIRTIO_WIN is an error, not a silent fallback.
      if (virtioWinError !== undefined) throw virtioWinError;
      const drivers = virtioWin?.kind === "iso"
        ? { iso: virtioWin.path, device: iso! }
        : virtioWin?.path;
      await convertWindowsGuest(g, root, vm, report, ctx, options, drivers);
      await finish(g, filesystems, report, options, say, ctx);
      return report;
    }
    const family = type === "linux" ? familyOf(distro) : undefined;
    if (type !== "linux" || !family) {
      throw new Error(
        `Unsupported guest: ${report.guest.product} (${type}, distribution "${distro}"); ` +
          "vmshift converts Windows, and Linux of the Debian/Ubuntu and RHEL/Fedora families",
      );
    }
    await mountGuest(g, root, report);
    say(`Converting ${report.guest.product} to run on KVM`);
    await convertLinux({
      g,
      root,
      distro,
      family,
      major,
      vm,
      devices: deviceMap(vm),
      report,
      signal,
      debug: ctx.debug,
    });
    await finish(g, filesystems, report, options, say, ctx);
  } catch (e) {
    signal.throwIfAborted();
    throw e;
  } finally {
    signal.removeEventListener("abort", kill);
  }
  return report;
}

/** Unmounts, trims and shuts the appliance down, so that every write is in the overlays. */
async function finish(
  g: Guestfs,
  filesystems: Array<[device: string, type: string]>,
  report: ConversionReport,
  options: ConvertOptions,
  say: (text: string) => void,
  ctx: RunContext,
): Promise<void> {
  await g.umountAll();
  if (options.fstrim ?? true) {
    say("Mapping filesystem data to avoid copying unused and blank areas");
    await trimAll(g, filesystems, report, ctx.debug);
  }
  ctx.signal.throwIfAborted();
  const t = performance.now();
  await g.shutdown();
  ctx.debug(`appliance shut down in ${seconds(t)} s`);
}

async function convertWindowsGuest(
  g: Guestfs,
  root: string,
  vm: Vm,
  report: ConversionReport,
  ctx: RunContext,
  options: ConvertOptions,
  drivers: string | { iso: string; device: string } | undefined,
): Promise<void> {
  const product = report.guest?.product ?? "Windows";
  await g.mount(root, "/");
  const systemroot = realPath(g, g.inspectGetWindowsSystemroot(root));
  if (systemroot === undefined) throw new Error(`${product}: cannot find its Windows directory`);
  const software = g.inspectGetWindowsSoftwareHive(root);
  let variant = "Client";
  try {
    variant = g.inspectGetProductVariant(root);
  } catch {
    // Unknown: treat it as a desktop release.
  }
  const build = await withHive(
    g,
    software,
    false,
    (h) =>
      Number(h.getString(["Microsoft", "Windows NT", "CurrentVersion"], "CurrentBuildNumber") ?? 0),
  );
  const major = g.inspectGetMajorVersion(root);
  const minor = g.inspectGetMinorVersion(root);
  const arch = g.inspectGetArch(root);
  variant = variant === "unknown" ? "Client" : variant;
  let virtioWin = typeof drivers === "string" ? drivers : undefined;
  if (typeof drivers === "object") {
    // Only what this guest needs, into the run's private directory (removed with it).
    options.message?.(`Reading the virtio-win drivers from ${drivers.iso}`);
    virtioWin = ctx.dir.join("virtio-win");
    await g.umountAll();
    await copyFromIso(g, drivers.device, virtioWin, { major, minor, build, variant, arch });
    await g.mount(root, "/");
  }
  options.message?.(`Converting ${product} to run on KVM`);
  const devices = await convertWindows({
    g,
    root,
    vm,
    report,
    signal: ctx.signal,
    debug: ctx.debug,
    systemroot,
    systemHive: g.inspectGetWindowsSystemHive(root),
    softwareHive: software,
    controlSet: g.inspectGetWindowsCurrentControlSet(root),
    major,
    minor,
    build,
    variant,
    arch,
    product,
    virtioWin,
    virtioWinIso: typeof drivers === "object" ? drivers.iso : undefined,
    staticIps: options.staticIps ?? [],
  });
  report.devices = { disk: devices.block, nic: devices.nic };
}

/** libguestfs's product name, with the distribution when it is only a version ("12.5"). */
function productName(product: string, distro: string): string {
  if (/[a-z]/i.test(product) && product !== "unknown") return product;
  const name = distro.charAt(0).toUpperCase() + distro.slice(1);
  return product === "unknown" ? name : `${name} ${product}`;
}

/** Whether a device is a disk or one of its partitions (`/dev/sdb`, `/dev/sdb1`). */
function onDisk(device: string, disk: string): boolean {
  return device === disk || (device.startsWith(disk) && /^\d+$/.test(device.slice(disk.length)));
}

async function chooseRoot(
  g: Guestfs,
  options: ConvertOptions,
  skip: (device: string) => boolean,
): Promise<string> {
  const roots = (await g.inspectOs()).filter((r) => !skip(r));
  if (!roots.length) {
    // list_filesystems leaves LUKS containers out: look at every partition and device.
    const luks = [...g.listPartitions(), ...g.listDevices()].filter((dev) => {
      try {
        return g.vfsType(dev) === "crypto_LUKS";
      } catch {
        return false;
      }
    });
    const bitlocker = [...g.listPartitions(), ...g.listDevices()].filter((dev) => {
      try {
        return g.vfsType(dev) === "BitLocker";
      } catch {
        return false;
      }
    });
    if (bitlocker.length) {
      throw new Error(
        `No operating system found: the system volume is probably encrypted with BitLocker ` +
          `(on ${bitlocker.join(", ")}); vmshift cannot open it. On the VMware guest, turn ` +
          `BitLocker off ("manage-bde -off C:") and wait for decryption to finish, or suspend ` +
          `it is not enough: the disk stays encrypted. Then migrate it again`,
      );
    }
    if (luks.length) {
      throw new Error(
        `No operating system found: the root filesystem is probably encrypted (LUKS on ${
          luks.join(", ")
        }); vmshift cannot open encrypted guests, decrypt the disk first`,
      );
    }
    throw new Error(
      "No operating system found on the disks: if they hold only data, migrate them with " +
        "--no-convert",
    );
  }
  const choice = options.root ?? "ask";
  const describe = (r: string) =>
    `${r} (${productName(g.inspectGetProductName(r), g.inspectGetDistro(r))})`;
  if (choice.startsWith("/dev/")) {
    if (!roots.includes(choice)) {
      throw new Error(
        `--root ${choice}: no operating system there; the disks hold: ${
          roots.map(describe).join(", ")
        }`,
      );
    }
    return choice;
  }
  if (roots.length === 1 || choice === "first") return roots[0]!;
  const list = roots.map(describe).join(", ");
  const ask = choice === "ask" ? options.ask : undefined;
  if (ask) {
    const answer = ask(
      `The disks hold several operating systems:\n${
        roots.map((r, i) => `  ${i + 1}. ${describe(r)}`).join("\n")
      }\nWhich one should be converted? (1-${roots.length}) `,
    );
    const n = Number(answer?.trim());
    if (Number.isInteger(n) && n >= 1 && n <= roots.length) return roots[n - 1]!;
    throw new Error(
      `No operating system chosen (answer "${answer ?? ""}"): the disks hold ${list}`,
    );
  }
  throw new Error(
    `The disks hold several operating systems (${list}): choose one with --root first or --root DEVICE`,
  );
}

async function mountGuest(g: Guestfs, root: string, report: ConversionReport): Promise<void> {
  const mounts = g.inspectGetMountpoints(root).sort((a, b) => a[0].length - b[0].length);
  for (const [mountpoint, device] of mounts) {
    try {
      await g.mount(device, mountpoint);
    } catch (e) {
      if (mountpoint === "/") throw e;
      report.problem(`Could not mount ${device} on ${mountpoint}: ${errorMessage(e)}`);
    }
  }
}

/**
 * The filesystems to trim: every device, partition, RAID device, LV and LDM volume whose
 * blkid type is a filesystem, as `[device, type]` pairs.
 *
 * Not `list_filesystems`: it asks parted and sfdisk about every device and partition first
 * (whether a device is partitioned, whether a partition's MBR id can hold a filesystem),
 * a process each, which made it 2-3 s under TCG for a one-partition Windows disk, more than
 * the gap to virt-v2v. blkid alone answers both questions: a partitioned device, an extended
 * partition or an empty one has no type. Btrfs subvolumes need no entry of their own: trimming
 * the filesystem trims them all.
 */
function trimmable(
  g: Guestfs,
  skip: (device: string) => boolean,
): Array<[device: string, type: string]> {
  const candidates = [...g.listDevices(), ...g.listPartitions(), ...g.listMdDevices()];
  if (g.available(["lvm2"])) candidates.push(...g.lvs());
  if (g.available(["ldm"])) candidates.push(...g.listLdmVolumes());
  const found: Array<[string, string]> = [];
  for (const device of candidates) {
    if (skip(device)) continue;
    let type: string;
    try {
      type = g.vfsType(device);
    } catch {
      continue; // nothing blkid recognises
    }
    if (type && !UNTRIMMABLE.has(type)) found.push([device, type]);
  }
  return found;
}

/** Filesystem types that cannot be trimmed (or mounted). */
const UNTRIMMABLE = new Set(["swap", "unknown", "crypto_LUKS", "LVM2_member", "linux_raid_member"]);

function seconds(since: number): string {
  return ((performance.now() - since) / 1000).toFixed(1);
}

async function trimAll(
  g: Guestfs,
  filesystems: Array<[device: string, type: string]>,
  report: ConversionReport,
  debug: (m: string) => void,
): Promise<void> {
  for (const [device, type] of filesystems) {
    if (UNTRIMMABLE.has(type)) continue;
    try {
      await g.mount(device, "/");
    } catch (e) {
      report.trimmed.push(`${device} (${type}): not mounted, not trimmed (${errorMessage(e)})`);
      continue;
    }
    try {
      const t = performance.now();
      await g.fstrim("/");
      debug(`${device} trimmed in ${seconds(t)} s`);
      report.trimmed.push(`${device} (${type})`);
    } catch (e) {
      report.trimmed.push(`${device} (${type}): not trimmed (${errorMessage(e)})`);
    } finally {
      await g.umountAll();
    }
  }
}
