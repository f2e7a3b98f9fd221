/**
 * Benchmarks vmshift's copy against qemu-img convert and nbdcopy, and measures its memory.
 *
 *     deno task bench [--data 4G] [--size 16G] [--runs 3] [--quick] [--only TOOL]...
 *         [--no-memory] [--no-warmup] [--no-verify] [--steady-memory]
 *
 * 1. Builds (once, cached in `.cache/bench/` by a hash of the image generator and its
 *    parameters) a qcow2 source holding `--data` of pseudo-random data in a `--size` disk.
 * 2. For each target format (raw, qcow2) runs `--runs` paired rounds: each round runs every
 *    tool once, the order rotated from round to round, with outputs deleted and `sync` run
 *    between runs. vmshift is timed as a whole command, start-up included. An untimed warm-up
 *    round comes first (it also fills the page cache with the source). Every vmshift output,
 *    and the first of each peer, is checked against the source with `qemu-img compare`
 *    (untimed): a fast copy that is wrong fails the benchmark.
 * 3. Prints median, min and max seconds, MiB/s of data and, per format, vmshift's median over
 *    the best peer's.
 * 4. Memory: copies a 100 GiB disk holding 2 GiB of data with `-o null` and `-o local -of qcow2`
 *    and reports the peak RSS of vmshift (deno) and of its child processes (qemu-nbd, nbdkit).
 *
 * Results also go to `.cache/bench/last.json`. Every tool runs in its own process group, which
 * is killed on interrupt; outputs are removed whatever happens.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { formatSize, makeTestImage, parseSize } from "./make_test_image.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const CACHE = `${ROOT}/.cache/bench`;
const GENERATOR = `${ROOT}/scripts/make_test_image.ts`;
const MAIN = `${ROOT}/main.ts`;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

type Family = "vmshift" | "qemu-img" | "nbdcopy";
type TargetFormat = "raw" | "qcow2";
const FAMILIES: readonly Family[] = ["vmshift", "qemu-img", "nbdcopy"];
const FORMATS: readonly TargetFormat[] = ["raw", "qcow2"];

/** One way of copying the source to a target file. */
interface Tool {
  name: string;
  family: Family;
  /** Commands to run in order; their total time is measured. */
  steps(src: string, dir: string, format: TargetFormat, virtualSize: number): string[][];
  /** The target file the steps write. */
  output(dir: string, format: TargetFormat): string;
}

const TOOLS: readonly Tool[] = [
  {
    name: "vmshift",
    family: "vmshift",
    steps: (src, dir, format) => [vmshift(src, ["-o", "local", "-os", dir, "-of", format])],
    output: (dir) => `${dir}/bench-sda`,
  },
  {
    name: "qemu-img",
    family: "qemu-img",
    steps: (src, dir, format) => [
      ["qemu-img", "convert", "-f", "qcow2", "-O", format, src, `${dir}/out.${format}`],
    ],
    output: (dir, format) => `${dir}/out.${format}`,
  },
  {
    // Out-of-order writes: not qemu-img's default, but what a careful user would pass.
    name: "qemu-img -W",
    family: "qemu-img",
    steps: (src, dir, format) => [
      ["qemu-img", "convert", "-W", "-f", "qcow2", "-O", format, src, `${dir}/out.${format}`],
    ],
    output: (dir, format) => `${dir}/out.${format}`,
  },
  {
    name: "nbdcopy",
    family: "nbdcopy",
    steps: (src, dir, format, virtualSize) => {
      const source = ["[", "qemu-nbd", "-r", "-f", "qcow2", src, "]"];
      const dst = `${dir}/out.${format}`;
      return format === "raw" ? [["nbdcopy", "--", ...source, dst]] : [
        ["qemu-img", "create", "-q", "-f", "qcow2", dst, `${virtualSize}`],
        ["nbdcopy", "--", ...source, "[", "qemu-nbd", "-f", "qcow2", dst, "]"],
      ];
    },
    output: (dir, format) => `${dir}/out.${format}`,
  },
];

function vmshift(src: string, output: string[]): string[] {
  return [
    Deno.execPath(),
    "run",
    "-A",
    MAIN,
    "-i",
    "disk",
    src,
    ...output,
    "-on",
    "bench",
    "-q",
    "--no-convert",
  ];
}

// --- process groups -------------------------------------------------------------------------

/** Process groups of the tools running now, killed on interrupt. */
const groups = new Set<number>();
/** Directories to remove on exit. */
const scratch = new Set<string>();

/** A command started in its own session, so that it and everything it starts can be killed. */
export interface Started {
  pid: number;
  status: Promise<Deno.CommandStatus>;
  /** stdout and stderr, interleaved by stream (stdout first). */
  output: Promise<string>;
}

export function start(argv: string[]): Started {
  const child = new Deno.Command("setsid", {
    args: argv,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // setsid execs the program (a child is never a group leader), so pid = pgid = the tool.
  groups.add(child.pid);
  const output = Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]).then(([out, err]) => `${out}${err}`);
  const status = child.status.then((s) => {
    killGroup(child.pid, "SIGKILL"); // anything the tool left behind in its group
    groups.delete(child.pid);
    return s;
  });
  return { pid: child.pid, status, output };
}

function killGroup(pgid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(-pgid, signal);
  } catch {
    // The group is gone.
  }
}

async function runTimed(steps: string[][]): Promise<number> {
  const t0 = performance.now();
  for (const argv of steps) {
    const p = start(argv);
    const [status, output] = await Promise.all([p.status, p.output]);
    if (!status.success) {
      throw new Error(
        `Command failed (${status.signal ?? `exit code ${status.code}`}): ` +
          `${argv.join(" ")}\n${output.trim().split("\n").slice(-10).join("\n")}`,
      );
    }
  }
  return (performance.now() - t0) / 1000;
}

export async function sync(): Promise<void> {
  await runTimed([["sync"]]);
}

// --- source images --------------------------------------------------------------------------

async function sha256(text: string | Uint8Array<ArrayBuffer>): Promise<string> {
  const bytes = typeof text === "string" ? new TextEncoder().encode(text) : text;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Returns a cached qcow2 source image, building it first if needed. Images built by another
 * version of the generator are removed.
 */
export async function sourceImage(virtualSize: number, dataBytes: number): Promise<string> {
  await Deno.mkdir(CACHE, { recursive: true });
  const generator = (await sha256(await Deno.readFile(GENERATOR))).slice(0, 12);
  const params = (await sha256(JSON.stringify({ virtualSize, dataBytes, seed: 1 }))).slice(0, 12);
  const path = `${CACHE}/src-${generator}-${params}.qcow2`;
  for await (const e of Deno.readDir(CACHE)) {
    if (/^src-.*\.qcow2$/.test(e.name) && !e.name.startsWith(`src-${generator}-`)) {
      await Deno.remove(`${CACHE}/${e.name}`).catch(() => {});
    }
  }
  try {
    await Deno.stat(path);
    return path;
  } catch {
    // Not built yet.
  }
  const tmp = `${path}.tmp`;
  scratch.add(tmp);
  scratch.add(`${tmp}.data.tmp`);
  const t0 = performance.now();
  log(`Building source image: ${formatSize(dataBytes)} of data in ${formatSize(virtualSize)}`);
  await makeTestImage(tmp, { format: "qcow2", virtualSize, dataBytes, seed: 1 });
  await Deno.rename(tmp, path);
  scratch.delete(tmp);
  log(`Built "${path}" in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return path;
}

// --- throughput -----------------------------------------------------------------------------

interface Result {
  tool: string;
  format: TargetFormat;
  seconds: number[];
  median: number;
  min: number;
  max: number;
  mibPerSecond: number;
  /** How many of the outputs were checked against the source with `qemu-img compare`. */
  verified: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Where outputs are written: see `--dir`. */
let outBase = CACHE;
/** Outputs are on a disk, not in memory: every run ends with `sync`, so all pay for it. */
let onDisk = true;

async function freshDir(name: string): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: outBase, prefix: `vmshift-bench-${name}-` });
  scratch.add(dir);
  return dir;
}

async function removeDir(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  scratch.delete(dir);
}

async function throughput(
  src: string,
  virtualSize: number,
  dataBytes: number,
  tools: readonly Tool[],
  options: { runs: number; warmup: boolean; verify: boolean },
): Promise<Result[]> {
  const results: Result[] = [];
  for (const format of FORMATS) {
    const times = new Map<string, number[]>(tools.map((t) => [t.name, []]));
    const verified = new Map<string, number>(tools.map((t) => [t.name, 0]));
    // One warm-up round, before the first format: it fills the page cache with the source and
    // Deno's cache with vmshift's compiled modules.
    const warmup = options.warmup && format === FORMATS[0];
    const rounds = options.runs + (warmup ? 1 : 0);
    for (let round = 0; round < rounds; round++) {
      const timed = !warmup || round > 0;
      const order = tools.map((_, i) => tools[(i + round) % tools.length]!);
      for (const tool of order) {
        const dir = await freshDir("out");
        try {
          await sync();
          // On a disk, every tool's run ends with sync: vmshift flushes its output (exit 0 means
          // the VM is in place), qemu-img convert and nbdcopy do not by default.
          const steps = tool.steps(src, dir, format, virtualSize);
          const seconds = await runTimed(onDisk ? [...steps, ["sync"]] : steps);
          if (timed) times.get(tool.name)!.push(seconds);
          const label = `${timed ? `round ${round + (warmup ? 0 : 1)}` : "warm-up"}: ` +
            `${tool.name} -> ${format}`;
          log(`${label}: ${seconds.toFixed(2)} s`);
          // Every vmshift output is checked, the peers' once: they are not under test.
          const check = tool.family === "vmshift" || verified.get(tool.name) === 0;
          if (options.verify && check) {
            const output = tool.output(dir, format);
            await runTimed([["qemu-img", "compare", "-f", "qcow2", "-F", format, src, output]])
              .catch((e) => {
                throw new Error(
                  `${label}: the output differs from the source: ${(e as Error).message}`,
                );
              });
            verified.set(tool.name, verified.get(tool.name)! + 1);
          }
        } finally {
          await removeDir(dir);
        }
      }
    }
    for (const tool of tools) {
      const seconds = times.get(tool.name)!;
      const med = median(seconds);
      results.push({
        tool: tool.name,
        format,
        seconds,
        median: med,
        min: Math.min(...seconds),
        max: Math.max(...seconds),
        mibPerSecond: dataBytes / MiB / med,
        verified: verified.get(tool.name)!,
      });
    }
  }
  return results;
}

interface Ratio {
  format: TargetFormat;
  bestPeer: string;
  ratio: number;
  /** vmshift over nbdcopy: the peer that also moves the data through NBD sockets. */
  nbdcopyRatio?: number;
}

function ratios(results: Result[]): Ratio[] {
  const out: Ratio[] = [];
  for (const format of FORMATS) {
    const ours = results.find((r) => r.format === format && r.tool === "vmshift");
    const peers = results.filter((r) => r.format === format && r.tool !== "vmshift");
    if (!ours || peers.length === 0) continue;
    const best = peers.reduce((a, b) => (b.median < a.median ? b : a));
    const nbdcopy = peers.find((p) => p.tool === "nbdcopy");
    out.push({
      format,
      bestPeer: best.tool,
      ratio: ours.median / best.median,
      ...(nbdcopy ? { nbdcopyRatio: ours.median / nbdcopy.median } : {}),
    });
  }
  return out;
}

function printTable(results: Result[], dataBytes: number): void {
  const rows = [
    ["tool", "target", "median s", "min s", "max s", "MiB/s"],
    ...results.map((r) => [
      r.tool,
      r.format,
      r.median.toFixed(2),
      r.min.toFixed(2),
      r.max.toFixed(2),
      r.mibPerSecond.toFixed(0),
    ]),
  ];
  console.log(`\nCopy of ${formatSize(dataBytes)} of data (MiB/s counts data bytes only):\n`);
  printRows(rows);
  for (const r of ratios(results)) {
    console.log(
      `vmshift / best peer (${r.bestPeer}) for ${r.format}: ${r.ratio.toFixed(2)}` +
        (r.ratio <= 1 ? " (vmshift is as fast or faster)" : "") +
        (r.nbdcopyRatio !== undefined && r.bestPeer !== "nbdcopy"
          ? `; vmshift / nbdcopy: ${r.nbdcopyRatio.toFixed(2)}`
          : ""),
    );
  }
}

/**
 * Prints a table, columns aligned: text columns to the left, numbers to the right.
 *
 * @param rows The header row, then the rows.
 * @param leftColumns How many leading columns hold text.
 */
export function printRows(rows: string[][], leftColumns = 2): void {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const row of rows) {
    console.log(
      row.map((cell, c) => c < leftColumns ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))
        .join("  "),
    );
  }
}

// --- memory ---------------------------------------------------------------------------------

export interface MemoryResult {
  run: string;
  seconds: number;
  /** Peak RSS of the vmshift (deno) process, from polling VmHWM. */
  vmshiftMiB: number;
  /** Sum of the peak RSS of each child process seen while polling (qemu-nbd, nbdkit...). */
  childrenMiB: number;
  /** Child processes seen, by name, with how many of each. */
  children: Record<string, number>;
  /** Highest sum of the current RSS (VmRSS) of the whole process tree at one poll. */
  treePeakMiB: number;
  /** Largest maximum RSS of the process tree as /usr/bin/time reports it, when available. */
  timeMaxMiB?: number;
}

interface ProcStatus {
  name: string;
  hwmKiB: number;
  rssKiB: number;
}

async function readStatus(pid: number): Promise<ProcStatus | undefined> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/status`);
    const name = text.match(/^Name:\s*(.*)$/m)?.[1] ?? "?";
    const hwmKiB = Number(text.match(/^VmHWM:\s*(\d+) kB/m)?.[1] ?? 0);
    const rssKiB = Number(text.match(/^VmRSS:\s*(\d+) kB/m)?.[1] ?? 0);
    return { name, hwmKiB, rssKiB };
  } catch {
    return undefined;
  }
}

async function descendants(pid: number): Promise<number[]> {
  const found: number[] = [];
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift()!;
    try {
      for await (const task of Deno.readDir(`/proc/${p}/task`)) {
        const text = await Deno.readTextFile(`/proc/${p}/task/${task.name}/children`)
          .catch(() => "");
        for (const c of text.split(/\s+/).filter(Boolean).map(Number)) {
          found.push(c);
          queue.push(c);
        }
      }
    } catch {
      // Exited meanwhile.
    }
  }
  return found;
}

export async function hasTime(): Promise<boolean> {
  try {
    await Deno.stat("/usr/bin/time");
    return true;
  } catch {
    return false;
  }
}

export async function measureMemory(label: string, argv: string[], useTime: boolean): Promise<
  MemoryResult
> {
  const timeFile = useTime ? await Deno.makeTempFile({ dir: CACHE, suffix: ".time" }) : "";
  if (useTime) scratch.add(timeFile);
  try {
    const full = useTime ? ["/usr/bin/time", "-f", "%M", "-o", timeFile, ...argv] : argv;
    const t0 = performance.now();
    const p = start(full);
    let done = false;
    const ended = p.status.then((s) => {
      done = true;
      return s;
    });
    // Peak per process, keyed by pid; VmHWM only grows, so the last reading is the peak.
    const peaks = new Map<number, { name: string; hwmKiB: number }>();
    let treePeakKiB = 0;
    while (!done) {
      const pids = [p.pid, ...await descendants(p.pid)];
      let treeKiB = 0;
      for (const pid of pids) {
        const s = await readStatus(pid);
        if (s && s.name !== "time") {
          const old = peaks.get(pid);
          peaks.set(pid, { name: s.name, hwmKiB: Math.max(s.hwmKiB, old?.hwmKiB ?? 0) });
          treeKiB += s.rssKiB;
        }
      }
      treePeakKiB = Math.max(treePeakKiB, treeKiB);
      await Promise.race([ended, new Promise((r) => setTimeout(r, 10))]);
    }
    const [status, output] = await Promise.all([ended, p.output]);
    const seconds = (performance.now() - t0) / 1000;
    if (!status.success) {
      throw new Error(`Memory benchmark "${label}" failed: ${output.trim().split("\n").at(-1)}`);
    }
    const all = [...peaks.values()];
    const deno = all.filter((x) => x.name === "deno");
    const others = all.filter((x) => x.name !== "deno");
    const result: MemoryResult = {
      run: label,
      seconds,
      vmshiftMiB: Math.max(0, ...deno.map((x) => x.hwmKiB)) / 1024,
      childrenMiB: others.reduce((n, x) => n + x.hwmKiB, 0) / 1024,
      children: {},
      treePeakMiB: treePeakKiB / 1024,
    };
    for (const x of others) result.children[x.name] = (result.children[x.name] ?? 0) + 1;
    if (useTime) {
      const kib = Number((await Deno.readTextFile(timeFile)).trim().split("\n").at(-1));
      if (Number.isFinite(kib)) result.timeMaxMiB = kib / 1024;
    }
    return result;
  } finally {
    if (useTime) {
      await Deno.remove(timeFile).catch(() => {});
      scratch.delete(timeFile);
    }
  }
}

async function memory(src: string): Promise<MemoryResult[]> {
  const useTime = await hasTime();
  const results: MemoryResult[] = [];
  await sync();
  results.push(await measureMemory("-o null", vmshift(src, ["-o", "null"]), useTime));
  const dir = await freshDir("mem");
  try {
    await sync();
    results.push(
      await measureMemory(
        "-o local -of qcow2",
        vmshift(src, ["-o", "local", "-os", dir, "-of", "qcow2"]),
        useTime,
      ),
    );
  } finally {
    await removeDir(dir);
  }
  return results;
}

function printMemory(results: MemoryResult[], virtualSize: number, dataBytes: number): void {
  console.log(
    `\nMemory, ${formatSize(virtualSize)} disk holding ${formatSize(dataBytes)} of data ` +
      `(peak RSS):\n`,
  );
  const rows = [
    ["run", "vmshift MiB", "children MiB", "tree peak MiB", "time -f %M MiB", "seconds"],
    ...results.map((r) => [
      r.run,
      r.vmshiftMiB.toFixed(0),
      r.childrenMiB.toFixed(0),
      r.treePeakMiB.toFixed(0),
      r.timeMaxMiB === undefined ? "-" : r.timeMaxMiB.toFixed(0),
      r.seconds.toFixed(2),
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const row of rows) {
    console.log(
      row.map((cell, c) => (c < 1 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
        .join("  "),
    );
  }
  for (const r of results) {
    const kids = Object.entries(r.children).map(([name, n]) => `${n} ${name}`).join(", ");
    console.log(`${r.run}: children seen: ${kids || "none"}`);
  }
  console.log(
    "vmshift: peak RSS (VmHWM) of the deno process; children: sum of the peak RSS of every " +
      "child seen, short-lived ones included; tree peak: highest total RSS of the process tree " +
      "at one moment (polled every 10 ms); time -f %M: the largest single process's peak",
  );
}

// --- main -----------------------------------------------------------------------------------

function log(message: string): void {
  console.error(`bench: ${message}`);
}

async function version(argv: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "null" })
      .output();
    return new TextDecoder().decode(out.stdout).split("\n")[0]!.trim();
  } catch {
    return "not installed";
  }
}

const USAGE = `Usage: deno task bench [--data 4G] [--size 16G] [--runs 3] [--quick]
    [--only vmshift|qemu-img|nbdcopy]... [--no-memory] [--no-warmup] [--no-verify] [--dir DIR]
    [--steady-memory]
  --dir DIR    where outputs go (default /dev/shm when it has room, else .cache/bench); on a
               disk every run is timed up to the end of a sync

  --quick      a small image (256 MiB of data in 2 GiB), one run, no warm-up: a smoke test
  --only T     run only these tools (repeat, or comma-separated)
  --no-memory  skip the memory benchmark (100 GiB disk, 2 GiB of data)
  --steady-memory  turn the hypervisor's free page reporting off while the benchmark runs
               (root; restored at the end): without, tmpfs writes swing 2-4x between runs`;

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        data: { type: "string" },
        size: { type: "string" },
        runs: { type: "string" },
        quick: { type: "boolean", default: false },
        only: { type: "string", multiple: true },
        "no-memory": { type: "boolean", default: false },
        "no-warmup": { type: "boolean", default: false },
        "no-verify": { type: "boolean", default: false },
        "steady-memory": { type: "boolean", default: false },
        dir: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const quick = values.quick;
  const only = (values.only ?? []).flatMap((s) => s.split(",")).filter(Boolean);
  const unknown = only.filter((f) => !FAMILIES.includes(f as Family));
  let dataBytes: number, virtualSize: number, runs: number;
  try {
    if (unknown.length) throw new SyntaxError(`Unknown tool "${unknown[0]}" for --only`);
    dataBytes = parseSize(values.data ?? (quick ? "256M" : "4G"));
    virtualSize = parseSize(values.size ?? (quick ? "2G" : "16G"));
    runs = Number(values.runs ?? (quick ? "1" : "3"));
    if (!Number.isInteger(runs) || runs < 1) {
      throw new SyntaxError(`Invalid --runs "${values.runs}": expected a positive integer`);
    }
  } catch (e) {
    console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const tools = TOOLS.filter((t) => only.length === 0 || only.includes(t.family));
  const withVmshift = tools.some((t) => t.family === "vmshift");
  if (withVmshift) {
    try {
      await Deno.stat(MAIN);
    } catch {
      console.error(`bench: "${MAIN}" not found; use --only qemu-img,nbdcopy`);
      return 2;
    }
  }

  const src = await sourceImage(virtualSize, dataBytes);
  // Outputs go to memory (tmpfs) when there is room, so that what is measured is the copy and
  // not this machine's disk write-back, which varies several-fold from one run to the next.
  const shm = "/dev/shm";
  const shmFree = await freeBytes(shm).catch(() => 0);
  if (values.dir) {
    outBase = values.dir;
    onDisk = !(await isTmpfs(values.dir));
  } else if (shmFree > dataBytes * 3) {
    outBase = shm;
    onDisk = false;
  }
  log(`outputs in "${outBase}" (${onDisk ? "on disk: each run ends with sync" : "tmpfs"})`);
  const reporting = await freePageReporting(values["steady-memory"], log);
  const results = await throughput(src, virtualSize, dataBytes, tools, {
    runs,
    warmup: !quick && !values["no-warmup"],
    verify: !values["no-verify"],
  });
  printTable(results, dataBytes);
  console.log(
    `\nNotes: outputs in ${outBase} (${
      onDisk ? "a disk: each run is timed up to the end of a sync" : "tmpfs: no disk write-back"
    }); ` +
      "every run starts with a synced page cache holding the source; vmshift is timed " +
      "as a whole command (Deno start-up included); qemu-img convert runs with and without -W " +
      "(out-of-order writes, not the default); nbdcopy writes qcow2 through qemu-nbd into an " +
      "image made with qemu-img create, which is counted" +
      (reporting ? `; ${reporting}.` : "."),
  );

  let mem: MemoryResult[] = [];
  const memSize = quick ? 8 * GiB : 100 * GiB;
  const memData = quick ? 128 * MiB : 2 * GiB;
  if (withVmshift && !values["no-memory"]) {
    const memSrc = await sourceImage(memSize, memData);
    mem = await memory(memSrc);
    printMemory(mem, memSize, memData);
  }

  const report = {
    date: new Date().toISOString(),
    parameters: {
      dataBytes,
      virtualSize,
      runs,
      quick,
      only: tools.map((t) => t.name),
      outputs: outBase,
      onDisk,
      freePageReporting: reporting ?? "none",
    },
    host: {
      cpus: navigator.hardwareConcurrency,
      deno: Deno.version.deno,
      qemuImg: await version(["qemu-img", "--version"]),
      nbdcopy: await version(["nbdcopy", "--version"]),
    },
    results,
    ratios: ratios(results),
    memory: mem.length ? { virtualSize: memSize, dataBytes: memData, runs: mem } : undefined,
  };
  await Deno.writeTextFile(`${CACHE}/last.json`, JSON.stringify(report, null, 2) + "\n");
  log(`results written to "${CACHE}/last.json"`);
  return 0;
}

export async function cleanUp(): Promise<void> {
  await restoreFreedMemory();
  if (groups.size) {
    for (const pgid of groups) killGroup(pgid, "SIGTERM");
    await new Promise((r) => setTimeout(r, 1000));
    for (const pgid of groups) killGroup(pgid, "SIGKILL");
  }
  for (const path of scratch) await Deno.remove(path, { recursive: true }).catch(() => {});
}

// --- the hypervisor's free page reporting ----------------------------------------------------

const PAGE_REPORTING = "/sys/module/page_reporting/parameters/page_reporting_order";
/** Larger than the largest buddy order (10 on x86-64): no free block is ever reported. */
const NO_REPORTING = "11";
let reportingOrder: string | undefined;

/**
 * Free page reporting (virtio-balloon) hands memory the guest frees back to the hypervisor,
 * and the next write to it faults it in again from the host: on this kind of machine, writing
 * 4 GiB into tmpfs took 1.4 s right after an earlier output was deleted and 6-7 s five seconds
 * later. Every tool writes its output into memory freed by the run before, so times swing 2-4x
 * by chance. With `steady`, reporting is turned off for the benchmark (and restored by
 * {@linkcode cleanUp}); without, a warning says the figures will be noisy.
 *
 * @param steady Turn reporting off until the benchmark ends.
 * @param log Where the warning goes.
 * @returns A note for the results, or undefined when the machine does no reporting.
 */
export async function freePageReporting(
  steady: boolean,
  log: (message: string) => void,
): Promise<string | undefined> {
  const order = await Deno.readTextFile(PAGE_REPORTING).then((t) => t.trim()).catch(() => "");
  if (!order || order === NO_REPORTING) return undefined;
  if (!steady) {
    log(
      "warning: free page reporting is on (freed memory goes back to the hypervisor and " +
        "costs a host fault to use again): times will swing between runs; --steady-memory " +
        "turns it off for the benchmark",
    );
    return "free page reporting on (noisy)";
  }
  try {
    await Deno.writeTextFile(PAGE_REPORTING, NO_REPORTING);
  } catch (e) {
    log(`warning: cannot turn free page reporting off (${(e as Error).message}): needs root`);
    return "free page reporting on (noisy)";
  }
  reportingOrder = order;
  log(`free page reporting turned off for the benchmark (${PAGE_REPORTING} ${order} -> 11)`);
  return "free page reporting off during the benchmark (--steady-memory)";
}

async function restoreFreedMemory(): Promise<void> {
  if (reportingOrder === undefined) return;
  await Deno.writeTextFile(PAGE_REPORTING, reportingOrder).catch(() => {});
  reportingOrder = undefined;
}

/**
 * Runs a benchmark's main with the interrupt handling every benchmark needs: the first SIGINT
 * or SIGTERM stops the tools and cleans up, exit 130; a failure after an interrupt is expected
 * and not reported.
 *
 * @param name Prefix for messages, e.g. `bench:rhv`.
 * @param main The benchmark; returns the exit code.
 * @param cleanUpAll Stops what runs and removes what was made.
 */
export async function runBench(
  name: string,
  main: (args: string[]) => Promise<number>,
  cleanUpAll: () => Promise<void>,
): Promise<never> {
  let interrupted = false;
  const onSignal = (signal: Deno.Signal) => () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`${name}: ${signal}: stopping`);
    cleanUpAll().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal("SIGINT"));
  Deno.addSignalListener("SIGTERM", onSignal("SIGTERM"));
  let code = 1;
  try {
    code = await main(Deno.args);
  } catch (e) {
    if (!interrupted) console.error(`${name}: ${e instanceof Error ? e.stack : e}`);
  } finally {
    await cleanUpAll();
  }
  Deno.exit(interrupted ? 130 : code);
}

if (import.meta.main) await runBench("bench", main, cleanUp);

export async function freeBytes(path: string): Promise<number> {
  const out = await new Deno.Command("df", { args: ["-B1", "--output=avail", path] }).output();
  return Number(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)) || 0;
}

async function isTmpfs(path: string): Promise<boolean> {
  const out = await new Deno.Command("stat", { args: ["-f", "-c", "%T", path] }).output();
  return new TextDecoder().decode(out.stdout).trim() === "tmpfs";
}
