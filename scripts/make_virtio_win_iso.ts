/**
 * Builds a phony virtio-win ISO: the phony tree of `make_virtio_win_tree.ts` (every release,
 * the guest agent) in an ISO 9660 image with Joliet and Rock Ridge names, as the real
 * virtio-win ISO has, made with `xorriso -as mkisofs` (Debian's xorriso package). Written to
 * a temporary file next to OUT and renamed, so that an OUT that exists is complete.
 *
 *     deno run -A scripts/make_virtio_win_iso.ts OUT
 *
 * @module
 */

import { makeVirtioWinTree } from "./make_virtio_win_tree.ts";

/**
 * Writes the ISO.
 *
 * @param out The ISO to write.
 */
export async function makeVirtioWinIso(out: string): Promise<void> {
  const dir = out.slice(0, out.lastIndexOf("/")) || ".";
  const tmp = `${dir}/.${out.slice(out.lastIndexOf("/") + 1)}.partial.${Deno.pid}`;
  const tree = await Deno.makeTempDir({ prefix: "vmshift-virtio-win-tree-" });
  try {
    await makeVirtioWinTree(tree);
    const r = await new Deno.Command("xorriso", {
      args: ["-as", "mkisofs", "-quiet", "-J", "-R", "-V", "virtio-win", "-o", tmp, tree],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!r.success) {
      throw new Error(`xorriso failed: ${new TextDecoder().decode(r.stderr).trim()}`);
    }
    await Deno.rename(tmp, out);
  } finally {
    await Deno.remove(tmp).catch(() => {});
    await Deno.remove(tree, { recursive: true });
  }
}

if (import.meta.main) {
  const [out] = Deno.args;
  if (!out || Deno.args.length !== 1) {
    console.error("usage: make_virtio_win_iso.ts OUT");
    Deno.exit(2);
  }
  await makeVirtioWinIso(out);
}
