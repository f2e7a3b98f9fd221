/**
 * Virtio drivers in the initramfs. A guest installed on VMware boots from a pvscsi, LSI or
 * SATA controller; its initramfs holds those drivers and not virtio's, so on KVM the kernel
 * cannot find its root filesystem. For every installed kernel that has the virtio drivers, the
 * drivers are added to the guest's own initramfs configuration (so that later rebuilds keep
 * them), the initramfs is rebuilt with the guest's tool (`update-initramfs`, `dracut` or
 * `mkinitrd`), and the new initramfs is listed to check that they are in.
 *
 * @module
 */

import { errorMessage } from "../../errors.ts";
import {
  editText,
  firstFile,
  installedKernels,
  type Kernel,
  type LinuxGuest,
  readText,
  VIRTIO_DRIVERS,
} from "./_guest.ts";

/** The initramfs tools vmshift knows, in the order they are looked for. */
type Tool = "update-initramfs" | "dracut" | "mkinitrd";

const TOOLS: ReadonlyArray<[Tool, string[]]> = [
  ["update-initramfs", ["/usr/sbin/update-initramfs", "/sbin/update-initramfs"]],
  ["dracut", ["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"]],
  ["mkinitrd", ["/sbin/mkinitrd", "/usr/sbin/mkinitrd"]],
];

const DRACUT_CONF = "/etc/dracut.conf.d/90-vmshift-virtio.conf";

/**
 * Adds the virtio drivers to every kernel's initramfs.
 *
 * @param guest The mounted guest.
 * @returns The kernels, newest first, as found.
 * @throws {Error} When no kernel has virtio drivers, or the guest has no tool to rebuild its
 *   initramfs: the guest would not boot on KVM.
 */
export async function addVirtioToInitramfs(guest: LinuxGuest): Promise<Kernel[]> {
  const { g, report } = guest;
  const kernels = await installedKernels(g);
  if (!kernels.length) throw new Error("The guest has no kernel in /boot and /lib/modules");
  const usable = kernels.filter((k) => k.missing.length === 0);
  for (const k of kernels) {
    if (k.missing.length) {
      report.problem(`Kernel ${k.version} lacks ${k.missing.join(", ")}: it cannot boot on KVM`);
    }
  }
  if (!usable.length) {
    throw new Error(
      `No kernel of the guest has the virtio drivers (${
        kernels.map((k) => k.version).join(", ")
      }): install a kernel with virtio support in the guest before migrating it`,
    );
  }
  const found = TOOLS.map(([tool, paths]) => [tool, firstFile(g, paths)] as const)
    .find(([, path]) => path !== undefined);
  if (!found) {
    throw new Error(
      "Cannot rebuild the initramfs: the guest has none of update-initramfs, dracut or mkinitrd",
    );
  }
  const [tool] = found;
  await persistDrivers(guest, tool);
  for (const k of usable) {
    try {
      await rebuild(guest, tool, k);
    } catch (e) {
      report.problem(
        `Could not rebuild the initramfs of ${k.version} with ${tool}: ${errorMessage(e)}`,
      );
      continue;
    }
    await check(guest, tool, k);
  }
  return kernels;
}

/** Makes the drivers part of the guest's own configuration, so later rebuilds keep them. */
async function persistDrivers(guest: LinuxGuest, tool: Tool): Promise<void> {
  const { g, report } = guest;
  if (tool === "update-initramfs") {
    const file = "/etc/initramfs-tools/modules";
    if (!g.isFile(file)) await g.write(file, "");
    let added: string[] = [];
    await editText(g, file, (text) => {
      const have = new Set(text.split("\n").map((l) => l.trim().split(/\s+/)[0]));
      added = VIRTIO_DRIVERS.filter((d) => !have.has(d));
      if (!added.length) return text;
      const sep = text === "" || text.endsWith("\n") ? "" : "\n";
      return `${text}${sep}# Added by vmshift: the drivers needed to boot on KVM\n${
        added.join("\n")
      }\n`;
    });
    if (added.length) report.changed(`${file}: added ${added.join(", ")}`);
  } else if (tool === "dracut") {
    g.mkdirP("/etc/dracut.conf.d");
    await g.write(
      DRACUT_CONF,
      `# Added by vmshift: the drivers needed to boot on KVM\nadd_drivers+=" ${
        VIRTIO_DRIVERS.join(" ")
      } "\n`,
    );
    report.changed(`${DRACUT_CONF}: added ${VIRTIO_DRIVERS.join(", ")}`);
  }
}

/** The initramfs image of a kernel, where the tool puts it. */
function imageOf(tool: Tool, k: Kernel): string {
  return tool === "update-initramfs"
    ? `/boot/initrd.img-${k.version}`
    : tool === "dracut"
    ? `/boot/initramfs-${k.version}.img`
    : `/boot/initrd-${k.version}.img`;
}

async function rebuild(guest: LinuxGuest, tool: Tool, k: Kernel): Promise<void> {
  const { g, report } = guest;
  const image = imageOf(tool, k);
  const argv = tool === "update-initramfs"
    ? ["update-initramfs", g.isFile(image) ? "-u" : "-c", "-k", k.version]
    : tool === "dracut"
    ? ["dracut", "-f", "--add-drivers", VIRTIO_DRIVERS.join(" "), image, k.version]
    : ["mkinitrd", "-f", ...VIRTIO_DRIVERS.map((d) => `--with=${d}`), image, k.version];
  guest.debug(`rebuilding the initramfs: ${argv.join(" ")}`);
  await g.command(argv);
  report.changed(`Rebuilt ${image} with ${tool}`);
}

/** Lists the new initramfs and checks that the drivers are in it (or built into the kernel). */
async function check(guest: LinuxGuest, tool: Tool, k: Kernel): Promise<void> {
  const { g, report } = guest;
  const image = imageOf(tool, k);
  const lister = tool === "update-initramfs" ? "lsinitramfs" : "lsinitrd";
  let listing: string;
  try {
    // Only the virtio lines: a whole listing can be megabytes.
    listing = await g.sh(
      `out=$(${lister} '${image}') || exit 1; printf '%s\\n' "$out" | grep virtio || true`,
    );
  } catch (e) {
    report.problem(`Could not list ${image} with ${lister} to check it: ${errorMessage(e)}`);
    return;
  }
  const builtin = (await readText(g, `/lib/modules/${k.version}/modules.builtin`)) ?? "";
  const absent = VIRTIO_DRIVERS.filter((d) =>
    !new RegExp(`/${d}\\.ko(\\.[a-z]+)?$`, "m").test(listing) &&
    !builtin.split("\n").some((l) => l.endsWith(`/${d}.ko`))
  );
  if (absent.length) report.problem(`${image} still lacks ${absent.join(", ")}`);
  else guest.debug(`${image} has ${VIRTIO_DRIVERS.join(", ")}`);
}
