/**
 * The bootloader: the kernel must find its root (and resume) device under its new name, and
 * boot a kernel that has the virtio drivers.
 *
 * 1. GRUB 2's `grub.cfg` is regenerated with the guest's own tool (`grub-mkconfig`,
 *    `grub2-mkconfig`), so that it lists the kernels the initramfs step rebuilt. The tool runs
 *    in the conversion appliance, whose kernel names the disks in the order it probed them;
 *    libguestfs names them in the order they were added, which is the source's order. The two
 *    usually agree, but not always (under TCG the appliance's own disk is now and then `sda`
 *    and the guest's `sdb`), so a root device the tool wrote by name is put back under
 *    libguestfs's name: in `grub.cfg`, and in what RHEL's tool also rewrites (the options of
 *    BootLoaderSpec entries, `/etc/kernel/cmdline`, `kernelopts` in `grubenv`).
 * 2. Device names are then rewritten in every file that holds a kernel command line or a disk
 *    name: the new `grub.cfg`, `/etc/default/grub`, GRUB's `device.map`, BootLoaderSpec
 *    entries, `/etc/kernel/cmdline`, `grubenv`, legacy GRUB's `menu.lst` / `grub.conf`.
 * 3. When the default kernel lacks virtio (or is unknown) and another kernel has it, the newest
 *    such kernel becomes the default (with `grubby` where the guest has it; otherwise the report
 *    says so). A default that has virtio is left alone, even an older, pinned one.
 *
 * @module
 */

import { errorMessage } from "../../errors.ts";
import { remapDevices } from "../_devices.ts";
import { editText, firstFile, type Kernel, type LinuxGuest, readText } from "./_guest.ts";

const CMDLINE_FILES = [
  "/etc/default/grub",
  "/boot/grub/device.map",
  "/boot/grub2/device.map",
  "/etc/kernel/cmdline",
  "/boot/grub/menu.lst",
  "/boot/grub/grub.conf",
  "/etc/grub.conf",
];

const GRUB2_CONFIGS = ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"];

/**
 * Points the bootloader at the new device names and a kernel with virtio.
 *
 * @param guest The mounted guest.
 * @param kernels The installed kernels, newest first, from the initramfs step.
 */
export async function fixBootloader(guest: LinuxGuest, kernels: Kernel[]): Promise<void> {
  const { g, report } = guest;
  // grub.cfg is regenerated first, while device.map still describes the disks as the
  // appliance sees them (with device.map naming /dev/vda, which the appliance lacks, GRUB
  // numbers the disks differently and grub-mkconfig writes the wrong root device).
  const entries = g.isDir("/boot/loader/entries")
    ? g.globExpand("/boot/loader/entries/*.conf")
    : [];
  const envs = grubEnvs(g);
  const config = firstFile(g, GRUB2_CONFIGS);
  if (config) {
    const tool = firstFile(g, [
      "/usr/sbin/grub-mkconfig",
      "/usr/sbin/grub2-mkconfig",
      "/sbin/grub2-mkconfig",
    ]);
    if (tool) await regenerate(guest, tool, config, [...entries, "/etc/kernel/cmdline", ...envs]);
    else report.problem(`${config} was not regenerated: the guest has no grub-mkconfig`);
  } else if (!firstFile(g, ["/boot/grub/menu.lst", "/boot/grub/grub.conf"])) {
    report.problem("No GRUB configuration found: check the bootloader by hand");
  }
  for (const file of [...CMDLINE_FILES, ...entries, ...envs, ...(config ? [config] : [])]) {
    await remapFile(guest, file);
  }
  await chooseDefaultKernel(guest, kernels);
}

/**
 * GRUB's environment blocks: beside grub.cfg, and on the EFI system partition (RHEL 8 keeps
 * `kernelopts`, the kernel command line of every BootLoaderSpec entry, there).
 */
function grubEnvs(g: LinuxGuest["g"]): string[] {
  const efi = g.isDir("/boot/efi/EFI") ? g.globExpand("/boot/efi/EFI/*/grubenv") : [];
  return [...["/boot/grub/grubenv", "/boot/grub2/grubenv"], ...efi].filter((f) => g.isFile(f));
}

/**
 * Runs grub-mkconfig, then puts the root device it wrote by the appliance kernel's name back
 * under libguestfs's name, in grub.cfg and in each of `alsoWritten` that the tool changed.
 *
 * @param guest The mounted guest.
 * @param tool The guest's grub-mkconfig.
 * @param config The grub.cfg it writes.
 * @param alsoWritten Other files the tool may rewrite with the root device (RHEL's does).
 */
async function regenerate(
  guest: LinuxGuest,
  tool: string,
  config: string,
  alsoWritten: string[],
): Promise<void> {
  const { g, report } = guest;
  const before = new Map<string, string | undefined>();
  for (const f of alsoWritten) before.set(f, await readText(g, f));
  const name = tool.split("/").pop()!;
  try {
    await g.command([name, "-o", config]);
    report.changed(`Regenerated ${config} with ${name}`);
  } catch (e) {
    report.problem(`Could not regenerate ${config}: ${errorMessage(e)}`);
  }
  const probed = await probeRoot(guest, tool);
  if (!probed) return;
  await editText(g, config, (text) => renameRoot(text, probed, guest.root));
  for (const [f, old] of before) {
    await editText(
      g,
      f,
      (text) => text === old ? text : fitEdit(f)(text, renameRoot(text, probed, guest.root)),
    );
  }
}

/**
 * The root device as the appliance's kernel names it, which is what grub-mkconfig wrote
 * (`grub-probe --target=device /`, as the tool itself asks).
 *
 * @param guest The mounted guest.
 * @param mkconfig The guest's grub-mkconfig.
 * @returns The device, or undefined when the guest has no grub-probe or it found no one device.
 */
async function probeRoot(guest: LinuxGuest, mkconfig: string): Promise<string | undefined> {
  const probe = mkconfig.replace(/mkconfig$/, "probe");
  if (!guest.g.isFile(probe)) return undefined;
  try {
    const out = (await guest.g.command([probe.split("/").pop()!, "--target=device", "/"])).trim();
    return out && !out.includes("\n") ? out : undefined;
  } catch (e) {
    guest.debug(`grub-probe: ${errorMessage(e)}`);
    return undefined;
  }
}

const DISK_NAME = /^\/dev\/(?:sd|hd|vd|xvd)[a-z]+\d*$/;

/**
 * Puts the root device grub-mkconfig wrote under the appliance kernel's name (`root=/dev/sdb1`)
 * back under libguestfs's name for it (`root=/dev/sda1`). Only disk names change: a root on
 * LVM or named by UUID is the same everywhere.
 *
 * @param text The regenerated grub.cfg.
 * @param probed The root device as the appliance's kernel names it.
 * @param root The same device as libguestfs names it.
 * @returns The text with `root=PROBED` made `root=ROOT`.
 * @example
 * ```ts
 * import { renameRoot } from "./bootloader.ts";
 * const cfg = "linux /vmlinuz root=/dev/sdb1 ro quiet";
 * if (renameRoot(cfg, "/dev/sdb1", "/dev/sda1") !== "linux /vmlinuz root=/dev/sda1 ro quiet") {
 *   throw new Error();
 * }
 * ```
 */
export function renameRoot(text: string, probed: string, root: string): string {
  if (probed === root || !DISK_NAME.test(probed) || !DISK_NAME.test(root)) return text;
  const escaped = probed.replace(/[/]/g, "\\/");
  return text.replace(new RegExp(`(\\broot=)${escaped}(?![\\w])`, "g"), `$1${root}`);
}

/**
 * GRUB's environment block (`grubenv`) is a file of fixed size (1024 bytes): its text, then `#`
 * up to the size. An edit that changed the length of the text is made to fit again.
 *
 * @param before The block as it was.
 * @param after The edited block, its padding not yet adjusted.
 * @returns `after` at the size of `before`; `before` itself when `after` cannot fit (or either
 *   is not an environment block).
 * @example
 * ```ts
 * import { resizeEnvBlock } from "./bootloader.ts";
 * const block = "# GRUB Environment Block\nkernelopts=root=/dev/xvda2\n####";
 * const out = resizeEnvBlock(block, block.replace("/dev/xvda2", "/dev/vda2"));
 * if (out !== "# GRUB Environment Block\nkernelopts=root=/dev/vda2\n#####") throw new Error();
 * ```
 */
export function resizeEnvBlock(before: string, after: string): string {
  const header = "# GRUB Environment Block\n";
  if (!before.startsWith(header) || !after.startsWith(header)) return before;
  const size = new TextEncoder().encode(before).length;
  const text = after.replace(/#*$/, "");
  const length = new TextEncoder().encode(text).length;
  return length > size ? before : text + "#".repeat(size - length);
}

/**
 * How an edit of a file is written: grubenv at its fixed size, any other file as edited.
 *
 * @param file The file.
 * @returns From the text before and after the edit, what to write.
 */
function fitEdit(file: string): (before: string, after: string) => string {
  return file.endsWith("/grubenv") ? resizeEnvBlock : (_, after) => after;
}

async function remapFile(guest: LinuxGuest, file: string): Promise<void> {
  const changes: string[] = [];
  const unknown: string[] = [];
  await editText(guest.g, file, (text) => {
    const r = remapDevices(text, guest.devices);
    const out = fitEdit(file)(text, r.text);
    if (out === text && r.text !== text) {
      guest.report.problem(`${file}: no room for the new device names; not changed`);
      return text;
    }
    changes.push(...r.changes);
    unknown.push(...r.unknown);
    return out;
  });
  if (changes.length) guest.report.changed(`${file}: ${changes.join(", ")}`);
  for (const u of new Set(unknown)) guest.report.problem(`${file}: no disk on the target for ${u}`);
}

async function chooseDefaultKernel(guest: LinuxGuest, kernels: Kernel[]): Promise<void> {
  const { g, report } = guest;
  const best = kernels.find((k) => k.missing.length === 0);
  if (!best) return;
  const grubby = firstFile(g, ["/usr/sbin/grubby", "/sbin/grubby"]);
  if (grubby) {
    try {
      const current = (await g.command(["grubby", "--default-kernel"])).trim();
      // A default that has virtio stays, even when it is not the newest: it may be pinned.
      if (kernels.some((k) => k.image === current && k.missing.length === 0)) return;
      await g.command(["grubby", "--set-default", best.image]);
      report.changed(`Default kernel: ${best.image} (was ${current || "unset"})`);
    } catch (e) {
      report.problem(`Could not set the default kernel with grubby: ${errorMessage(e)}`);
    }
    return;
  }
  // GRUB 2's generated menu lists the newest kernel first; the default is the first entry
  // unless /etc/default/grub says otherwise.
  if (best !== kernels[0]) {
    report.problem(
      `The newest kernel (${kernels[0]!.version}) lacks virtio: choose ${best.version} at boot`,
    );
  }
}
