/**
 * Benchmarks a whole conversion against virt-v2v: the figures behind issue 4's target
 * ("vmshift's whole run (`-o local`) takes no longer than virt-v2v's, and its output is no
 * bigger").
 *
 *     deno run -A scripts/bench_convert.ts [--runs 1] [--only vmshift,virt-v2v]
 *         [--guest debian12|phony-win10|phony-srv2019|phony-srv2022|phony-win7x86]
 *
 * 1. Gets the test guest (built by our scripts, cached by their hash, as the tests use it): by
 *    default the Debian 12 guest, left as VMware leaves it with about 1 GiB of deleted data
 *    (issue 4's target); a phony Windows guest with a phony virtio-win tree for issue 7's
 *    (virt-v2v then gets phony rhsrvany.exe/pvvxsvc.exe through VIRT_TOOLS_DATA_DIR: the guest
 *    never runs).
 * 2. Converts it `--runs` times with each tool, alternating which goes first, both with
 *    `-i disk GUEST -o local -os DIR` (raw, sparse output), both under TCG here
 *    (`LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg`: KVM hangs on these
 *    machines). virt-v2v (Debian package `virt-v2v`, 2.2) is installed with apt when missing.
 * 3. Prints the median wall time, the output disk's allocated size, and vmshift's ratios to
 *    virt-v2v. Each output is checked to hold a converted guest (Linux: fstab names /dev/vda1;
 *    Windows: viostor.sys in System32\drivers), so a fast run that skipped the conversion fails
 *    the benchmark.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { Guestfs } from "../src/convert/guestfs.ts";
import { formatBytes } from "../src/progress.ts";
import { run } from "../src/process.ts";
import { guestImage, type GuestName } from "../tests/_guests.ts";
import { makeVirtioWinTree } from "./make_virtio_win_tree.ts";
import { median, printRows, runBench } from "./bench.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const ENV: Record<string, string> = {
  LIBGUESTFS_BACKEND: "direct",
  LIBGUESTFS_BACKEND_SETTINGS: "force_tcg",
};
const work: string[] = [];

type Tool = "vmshift" | "virt-v2v";

function argv(tool: Tool, guest: string, out: string): string[] {
  return tool === "vmshift"
    ? [Deno.execPath(), "run", "-A", MAIN, "-i", "disk", guest, "-o", "local", "-os", out, "-q"]
    : ["virt-v2v", "-i", "disk", guest, "-o", "local", "-os", out, "-q"];
}

async function ensureVirtV2v(): Promise<void> {
  if ((await new Deno.Command("sh", { args: ["-c", "command -v virt-v2v"] }).output()).success) {
    return;
  }
  console.log("bench:convert: installing virt-v2v with apt");
  await run("apt-get", ["install", "-y", "--no-install-recommends", "virt-v2v"], {
    env: { DEBIAN_FRONTEND: "noninteractive" },
  });
}

/** Checks that the output holds a converted guest. */
async function checkConverted(disk: string, windows: boolean): Promise<void> {
  await using g = Guestfs.create();
  g.addDrive(disk, { format: "raw", readonly: true });
  await g.launch();
  const [root] = await g.inspectOs();
  if (!root) throw new Error(`${disk}: no operating system in the output`);
  await g.mountRo(root, "/");
  if (windows) {
    const drivers = g.globExpand("/[Ww]indows/[Ss]ystem32/[Dd]rivers/viostor.sys");
    if (!drivers.length) throw new Error(`${disk}: not converted: no viostor.sys`);
    return;
  }
  const fstab = await g.cat("/etc/fstab");
  if (!/^\/dev\/vda1\s/m.test(fstab)) throw new Error(`${disk}: not converted:\n${fstab}`);
}

async function once(
  tool: Tool,
  guest: string,
  windows: boolean,
): Promise<{ seconds: number; bytes: number }> {
  const out = await Deno.makeTempDir({ prefix: `vmshift-bench-convert-${tool}-`, dir: "/var/tmp" });
  work.push(out);
  const start = performance.now();
  const [cmd, ...args] = argv(tool, guest, out);
  const r = await new Deno.Command(cmd!, { args, env: ENV, stdin: "null" }).output();
  const seconds = (performance.now() - start) / 1000;
  if (!r.success) {
    throw new Error(`${tool} failed: ${new TextDecoder().decode(r.stderr).slice(-2000)}`);
  }
  const disk = join(out, `${guest.split("/").pop()}-sda`);
  const bytes = ((await Deno.stat(disk)).blocks ?? 0) * 512;
  await checkConverted(disk, windows);
  await Deno.remove(out, { recursive: true });
  return { seconds, bytes };
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      runs: { type: "string", default: "1" },
      only: { type: "string" },
      guest: { type: "string", default: "debian12" },
    },
  });
  const name = values.guest as GuestName;
  const windows = name.startsWith("phony-win") || name.startsWith("phony-srv");
  const runs = Number(values.runs);
  const tools = (values.only?.split(",") ?? ["vmshift", "virt-v2v"]) as Tool[];
  for (const [k, v] of Object.entries(ENV)) Deno.env.set(k, v);
  if (tools.includes("virt-v2v")) await ensureVirtV2v();
  const source = await guestImage(name);
  // virt-v2v names the output after the input file: give both the same name.
  const dir = await Deno.makeTempDir({ prefix: "vmshift-bench-convert-" });
  work.push(dir);
  if (windows) {
    const tree = join(dir, "virtio-win");
    await makeVirtioWinTree(tree);
    const tools = join(dir, "virt-tools");
    await Deno.mkdir(tools);
    for (const f of ["rhsrvany.exe", "pvvxsvc.exe"]) await Deno.writeTextFile(join(tools, f), "");
    ENV.VIRTIO_WIN = tree;
    ENV.VIRT_TOOLS_DATA_DIR = tools;
  }
  const guest = join(dir, name);
  await Deno.symlink(source, guest);
  const sourceBytes = ((await Deno.stat(source)).blocks ?? 0) * 512;
  console.log(`guest: ${source} (${formatBytes(sourceBytes)} allocated)`);

  const results = new Map<Tool, Array<{ seconds: number; bytes: number }>>();
  for (let round = 0; round < runs; round++) {
    const order = round % 2 === 0 ? tools : [...tools].reverse();
    for (const tool of order) {
      console.log(`round ${round + 1}/${runs}: ${tool}...`);
      const r = await once(tool, guest, windows);
      console.log(`  ${r.seconds.toFixed(1)} s, output ${formatBytes(r.bytes)}`);
      results.set(tool, [...(results.get(tool) ?? []), r]);
    }
  }
  const summary = tools.map((tool) => {
    const rs = results.get(tool)!;
    return {
      tool,
      seconds: median(rs.map((r) => r.seconds)),
      bytes: median(rs.map((r) => r.bytes)),
    };
  });
  const peer = summary.find((s) => s.tool === "virt-v2v");
  const rows = [["tool", "", "seconds", "output", "time ratio", "size ratio"]];
  for (const s of summary) {
    rows.push([
      s.tool,
      "",
      s.seconds.toFixed(1),
      formatBytes(s.bytes),
      peer ? (s.seconds / peer.seconds).toFixed(2) : "-",
      peer ? (s.bytes / peer.bytes).toFixed(2) : "-",
    ]);
  }
  printRows(rows);
  await Deno.writeTextFile(
    join(fileURLToPath(new URL("..", import.meta.url)), ".cache", "bench", "convert.json"),
    JSON.stringify({ date: new Date().toISOString(), runs, summary }, null, 2),
  ).catch(() => {});
  return 0;
}

async function cleanUpAll(): Promise<void> {
  for (const dir of work) await Deno.remove(dir, { recursive: true }).catch(() => {});
}

if (import.meta.main) await runBench("bench:convert", main, cleanUpAll);
