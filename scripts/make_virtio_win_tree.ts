/**
 * Builds a phony virtio-win directory: the layout and file names of the virtio-win ISO
 * (`DRIVER/OS/ARCH/NAME.{inf,cat,sys,pdb}`, `guest-agent/qemu-ga-*.msi`), each file holding
 * one line that names it, so that tests can tell which file went where. The drivers never
 * run: phony guests do not boot.
 *
 *     deno run -A scripts/make_virtio_win_tree.ts DIR [--only w10,2k19]
 *
 * @module
 */

/** Driver directories, with the files each holds besides `NAME.{inf,cat,sys,pdb}`. */
export const TREE_DRIVERS: Record<string, { name: string; extra: string[] }> = {
  viostor: { name: "viostor", extra: [] },
  vioscsi: { name: "vioscsi", extra: [] },
  NetKVM: { name: "netkvm", extra: ["netkvmco.exe", "netkvmp.exe"] },
  Balloon: { name: "balloon", extra: ["blnsvr.exe", "blnsvr.pdb"] },
  vioserial: { name: "vioser", extra: [] },
  viorng: { name: "viorng", extra: ["viorngci.dll", "viorngum.dll"] },
  // Present in virtio-win, not for devices vmshift gives the VM: must not be installed.
  viofs: { name: "viofs", extra: ["virtiofs.exe"] },
  vioinput: { name: "vioinput", extra: ["viohidkmdf.sys"] },
  qxldod: { name: "qxldod", extra: [] },
  pvpanic: { name: "pvpanic", extra: [] },
  fwcfg: { name: "fwcfg", extra: [] },
};

/** Release directories and the architectures virtio-win builds for them. */
export const TREE_OSES: Record<string, string[]> = {
  w7: ["amd64", "x86"],
  "2k8R2": ["amd64"],
  w8: ["amd64", "x86"],
  "2k12": ["amd64"],
  "w8.1": ["amd64", "x86"],
  "2k12R2": ["amd64"],
  w10: ["amd64", "x86", "ARM64"],
  "2k16": ["amd64"],
  "2k19": ["amd64"],
  "2k22": ["amd64"],
  w11: ["amd64", "ARM64"],
  "2k25": ["amd64"],
};

/**
 * Writes the tree.
 *
 * @param dir The directory to fill (created).
 * @param options `only`: release directories to include (default all); `agent`: include the
 *   guest agent installers (default true).
 */
export async function makeVirtioWinTree(
  dir: string,
  options: { only?: readonly string[]; agent?: boolean } = {},
): Promise<void> {
  const write = async (path: string) => {
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(path, `phony virtio-win ${path.slice(dir.length + 1)}\n`);
  };
  for (const [driverDir, { name, extra }] of Object.entries(TREE_DRIVERS)) {
    for (const [os, arches] of Object.entries(TREE_OSES)) {
      if (options.only && !options.only.includes(os)) continue;
      for (const arch of arches) {
        for (const file of [`${name}.inf`, `${name}.cat`, `${name}.sys`, `${name}.pdb`, ...extra]) {
          await write(`${dir}/${driverDir}/${os}/${arch}/${file}`);
        }
      }
    }
  }
  if (options.agent ?? true) {
    for (const msi of ["qemu-ga-x86_64.msi", "qemu-ga-i386.msi"]) {
      await write(`${dir}/guest-agent/${msi}`);
    }
  }
  await write(`${dir}/virtio-win_license.txt`);
}

if (import.meta.main) {
  const [dir, flag, only] = Deno.args;
  if (!dir || (flag !== undefined && (flag !== "--only" || !only))) {
    console.error("usage: make_virtio_win_tree.ts DIR [--only w10,2k19]");
    Deno.exit(2);
  }
  await makeVirtioWinTree(dir, only ? { only: only.split(",") } : {});
}
