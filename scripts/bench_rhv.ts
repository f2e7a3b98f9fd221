/**
 * Benchmarks vmshift's `-o rhv` upload against the oVirt test servers (tests/servers/) on this
 * machine, next to a naive single-connection uploader and nbdcopy, and measures its memory.
 *
 *     deno task bench:rhv [--data 2G] [--size 8G] [--runs 3] [--quick]
 *         [--no-memory] [--no-warmup] [--no-verify] [--dir DIR] [--steady-memory]
 *
 * 1. Source: the cached qcow2 of scripts/bench.ts (`.cache/bench/`, `--data` of pseudo-random
 *    data in a `--size` disk, plus zero regions and holes).
 * 2. `--runs` paired rounds (after one untimed warm-up round), the order rotated from round to
 *    round, `sync` before every run. The CPUs are shared: each run waits for the rest of the
 *    machine to be quiet (under 10% busy), and a run during which other work used more than 10%
 *    of the CPUs is redone (twice at most; the table says how many were). Each HTTP run gets
 *    fresh servers (`startOvirt`), so that their counters are the run's own; they are disposed
 *    after it, with the uploaded disk.
 *    - vmshift: `main.ts -i disk SRC -o rhv ... --machine-readable`, timed as a whole command;
 *      its upload phase is the time from its first progress event to its last (the first comes
 *      once the source and every imageio connection are open, the last after the final flush).
 *    - 1-conn: {@linkcode baselineUpload}, run as a child process of this script: creates the
 *      disk and the transfer through the engine API, reads the source through qemu-nbd with
 *      NbdClient in 4 MiB requests, one at a time, and PUTs every data extent (holes and zero
 *      extents skipped, data sent as it is, zero bytes included) over ONE keep-alive connection
 *      (Http1Connection) with `flush=n`, flushes once, finalizes. Its upload phase runs from the
 *      open connection to the end of the flush.
 *    - vmshift-local, 1-conn-local: the same, with the imageio daemon also serving its local
 *      unix socket (`unix_socket` in OPTIONS), which both use instead of HTTPS, as a client on
 *      the daemon's own host does (virt-v2v on an oVirt host): no TLS.
 *    - nbdcopy: `qemu-img create -f raw DST SIZE` then `nbdcopy -- [ qemu-nbd -r -f qcow2 SRC ]
 *      [ qemu-nbd -f raw DST ]`: the same image into a qemu-nbd target, no HTTP. Its whole run is
 *      also its upload phase.
 *    Every vmshift upload, and the first of each peer, is checked against the source with
 *    `qemu-img compare` (untimed).
 * 3. Wire: the imageio server's counters (PUT body bytes, PUT/zero/flush requests, TLS
 *    connections); for nbdcopy, whose NBD unix sockets count nothing, the bytes allocated in
 *    its output. CPU: user+sys of the tool's process tree (`/usr/bin/time`), of the test
 *    servers (this process, where engine and imageio run, plus its reaped children: the target
 *    qemu-nbd, qemu-img), and of the rest of the machine (other work: noise).
 * 4. Memory: vmshift `-o rhv -q` of a 100 GiB disk holding 2 GiB of data; peak RSS (VmHWM,
 *    polled every 10 ms) of the vmshift deno process and of its children.
 *
 * Results go to `.cache/bench/rhv-last.json`. Tools run in their own process groups, killed on
 * interrupt; servers are disposed and outputs removed whatever happens.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  cleanUp,
  freeBytes,
  freePageReporting,
  hasTime,
  measureMemory,
  median,
  type MemoryResult,
  printRows,
  runBench,
  sourceImage,
  start,
  sync,
} from "./bench.ts";
import { formatSize, parseSize } from "./make_test_image.ts";
import { type Ovirt, type OvirtStats, startOvirt } from "../tests/servers/mod.ts";
import { Http1Connection } from "../src/output/_http1.ts";
import { OvirtApi } from "../src/output/ovirt_api.ts";
import { NBD_STATE_ZERO, NbdClient } from "../src/nbd/client.ts";
import { serveQemuNbd } from "../src/qemu_nbd.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const CACHE = `${ROOT}/.cache/bench`;
const MAIN = `${ROOT}/main.ts`;
const SELF = new URL(import.meta.url).pathname;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The baseline's request size, vmshift's default too. */
const REQUEST = 4 * MiB;

type ToolName = "vmshift" | "1-conn" | "vmshift-local" | "1-conn-local" | "nbdcopy";
const TOOLS: readonly ToolName[] = [
  "vmshift",
  "1-conn",
  "vmshift-local",
  "1-conn-local",
  "nbdcopy",
];

/** The tools that upload over imageio's local socket (servers with `unixSocket`). */
function isLocal(tool: ToolName): boolean {
  return tool.endsWith("-local");
}

function log(message: string): void {
  console.error(`bench:rhv: ${message}`);
}

// --- state cleaned up on exit ----------------------------------------------------------------

/** The test servers running now. */
let servers: Ovirt | undefined;
/** Directories of ours to remove on exit (after the servers are disposed). */
const dirs = new Set<string>();

async function disposeServers(): Promise<void> {
  const s = servers;
  servers = undefined;
  try {
    await s?.[Symbol.asyncDispose]();
  } catch (e) {
    log(`cannot stop the test servers: ${e}`);
  }
}

/** The direct children of a process (over all its threads). */
async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  try {
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const text = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/children`)
        .catch(() => "");
      out.push(...text.split(/\s+/).filter(Boolean).map(Number));
    }
  } catch {
    // Gone.
  }
  return out;
}

async function comm(pid: number): Promise<string> {
  return (await Deno.readTextFile(`/proc/${pid}/comm`).catch(() => "")).trim();
}

/**
 * Asks the tools running under `/usr/bin/time` to stop (SIGTERM to the tool itself: time would
 * die of it and leave the tool to be killed with its group) and gives them time to clean up:
 * vmshift cancels its transfer and removes its disk and its temporary directory.
 */
async function stopTools(): Promise<void> {
  const timed = async () => {
    const out: number[] = [];
    for (const pid of await childrenOf(Deno.pid)) if (await comm(pid) === "time") out.push(pid);
    return out;
  };
  for (const pid of await timed()) {
    for (const child of await childrenOf(pid)) {
      try {
        Deno.kill(child, "SIGTERM");
      } catch {
        // Gone.
      }
    }
  }
  const deadline = Date.now() + 15_000;
  while ((await timed()).length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function cleanUpAll(): Promise<void> {
  await stopTools();
  await cleanUp(); // kills what is left of the tools' process groups, removes scratch files
  await disposeServers();
  for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  dirs.clear();
}

async function withServers<T>(
  base: string,
  local: boolean,
  fn: (ovirt: Ovirt) => Promise<T>,
): Promise<T> {
  servers = await startOvirt({ dir: base, unixSocket: local });
  try {
    return await fn(servers);
  } finally {
    await disposeServers();
  }
}

// --- CPU accounting --------------------------------------------------------------------------

let clockTicks = 100;

/** This process's CPU seconds: its own (user+sys) and its reaped children's. */
async function selfCpu(): Promise<{ own: number; children: number }> {
  const stat = await Deno.readTextFile("/proc/self/stat");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
  // After the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
  return { own: (f[11]! + f[12]!) / clockTicks, children: (f[13]! + f[14]!) / clockTicks };
}

/** CPU seconds spent by the whole machine (all CPUs, all processes) since boot. */
async function machineCpu(): Promise<number> {
  const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0]!;
  // cpu user nice system idle iowait irq softirq steal ...
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = [0, 1, 2, 5, 6, 7].reduce((n, i) => n + (f[i] ?? 0), 0);
  return busy / clockTicks;
}

interface Measured {
  /** Wall-clock seconds of all steps. */
  seconds: number;
  /** stdout then stderr of the last step. */
  output: string;
  /** user+sys of the steps' process trees. */
  toolCpu: number;
  /** user+sys of this process (the test servers) and of its other reaped children. */
  serverCpu: number;
  /** The part of serverCpu spent in this process (engine, imageio, TLS: one JS thread). */
  serverOwnCpu: number;
  /** CPU the rest of the machine used meanwhile (other users' work: noise). */
  otherCpu: number;
}

let useTime = false;

/**
 * Runs commands in order in their own process groups, timed as a whole, each under
 * `/usr/bin/time` for its CPU.
 */
async function measure(steps: string[][]): Promise<Measured> {
  const before = await selfCpu();
  const machineBefore = await machineCpu();
  const t0 = performance.now();
  let toolCpu = 0;
  let output = "";
  for (const argv of steps) {
    const timeFile = useTime ? await Deno.makeTempFile({ dir: CACHE, suffix: ".time" }) : "";
    if (useTime) dirs.add(timeFile);
    try {
      const p = start(useTime ? ["/usr/bin/time", "-f", "%U %S", "-o", timeFile, ...argv] : argv);
      const [status, out] = await Promise.all([p.status, p.output]);
      output = out;
      if (!status.success) {
        throw new Error(
          `Command failed (${status.signal ?? `exit code ${status.code}`}): ` +
            `${argv.join(" ")}\n${out.trim().split("\n").slice(-10).join("\n")}`,
        );
      }
      if (useTime) {
        const [u, s] = (await Deno.readTextFile(timeFile)).trim().split("\n").at(-1)!.split(" ")
          .map(Number);
        toolCpu += (u ?? 0) + (s ?? 0);
      }
    } finally {
      if (useTime) {
        await Deno.remove(timeFile).catch(() => {});
        dirs.delete(timeFile);
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const after = await selfCpu();
  const serverCpu = after.own - before.own +
    Math.max(0, after.children - before.children - toolCpu);
  const otherCpu = Math.max(0, (await machineCpu()) - machineBefore - toolCpu - serverCpu);
  const serverOwnCpu = after.own - before.own;
  return { seconds, output, toolCpu, serverCpu, serverOwnCpu, otherCpu };
}

// --- the tools -------------------------------------------------------------------------------

function rhvArgs(ovirt: Ovirt): string[] {
  return [
    "--no-convert",
    "-o",
    "rhv",
    "-oc",
    ovirt.engineUrl,
    "-op",
    ovirt.passwordFile,
    "-os",
    "data",
    "-oo",
    `rhv-cafile=${ovirt.caFile}`,
    "-oo",
    "rhv-cluster=Default",
  ];
}

function vmshiftArgv(src: string, ovirt: Ovirt, name: string, voice: string): string[] {
  return [
    Deno.execPath(),
    "run",
    "-A",
    MAIN,
    "-i",
    "disk",
    src,
    ...rhvArgs(ovirt),
    "-on",
    name,
    voice,
  ];
}

/** One timed run of one tool. */
interface Run {
  tool: ToolName;
  round: number;
  seconds: number;
  /** The upload phase (see the module doc). */
  uploadSeconds: number;
  /** Bytes on the wire: PUT bodies for HTTP; for nbdcopy, the bytes allocated in its output. */
  wireBytes?: number;
  stats?: OvirtStats;
  toolCpu: number;
  serverCpu: number;
  /** The part of serverCpu spent in the servers' deno process (the rest: qemu-nbd, qemu-img). */
  serverOwnCpu: number;
  /** CPU seconds used by other processes on the machine during the run. */
  otherCpu: number;
  verified: boolean;
  /** Times the run was redone because other work disturbed it. */
  redone?: number;
  /** Other work still disturbed the last attempt. */
  noisy?: boolean;
}

interface Context {
  src: string;
  virtualSize: number;
  /** Where the servers' disks and nbdcopy's output go. */
  base: string;
  verify: boolean;
  verified: Map<ToolName, number>;
  counter: number;
}

async function compare(src: string, output: string, label: string): Promise<void> {
  const p = start(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, output]);
  const [status, out] = await Promise.all([p.status, p.output]);
  if (!status.success) {
    throw new Error(`${label}: the upload differs from the source: ${out.trim()}`);
  }
}

function shouldVerify(ctx: Context, tool: ToolName): boolean {
  return ctx.verify && (tool.startsWith("vmshift") || (ctx.verified.get(tool) ?? 0) === 0);
}

async function verifyDisk(ctx: Context, ovirt: Ovirt, tool: ToolName, label: string) {
  const disks = ovirt.disks();
  if (disks.length !== 1 || disks[0]!.status !== "ok") {
    throw new Error(`${label}: expected one disk "ok" on the engine, found ${disks.length}`);
  }
  await compare(ctx.src, disks[0]!.path, label);
  ctx.verified.set(tool, (ctx.verified.get(tool) ?? 0) + 1);
}

/** The time between the first and the last progress event of `--machine-readable` output. */
function uploadPhase(output: string): number {
  const stamps = output.split("\n").filter((l) => l.startsWith("{")).map((l) => {
    try {
      return JSON.parse(l) as { type?: string; timestamp?: string };
    } catch {
      return {};
    }
  }).filter((e) => e.type === "progress" && e.timestamp).map((e) => Date.parse(e.timestamp!));
  if (stamps.length < 2) throw new Error(`vmshift printed ${stamps.length} progress event(s)`);
  return (stamps.at(-1)! - stamps[0]!) / 1000;
}

/** Share of the machine's CPUs that other work may use during a run before it is redone. */
const NOISE = 0.1;
/** Times a disturbed run is redone. */
const REDO = 2;

/**
 * Waits (up to a minute) until the rest of the machine is quiet: less than {@linkcode NOISE}
 * of its CPUs busy over 2 s. Nothing of ours runs between runs, so all that is others' work.
 */
async function waitQuiet(): Promise<void> {
  const cpus = navigator.hardwareConcurrency;
  const deadline = Date.now() + 60_000;
  let said = false;
  while (true) {
    const before = await machineCpu();
    await new Promise((r) => setTimeout(r, 2000));
    const busy = ((await machineCpu()) - before) / 2 / cpus;
    if (busy < NOISE) return;
    if (Date.now() > deadline) {
      log(`the machine is still ${(busy * 100).toFixed(0)}% busy with other work: going on`);
      return;
    }
    if (!said) log(`the machine is ${(busy * 100).toFixed(0)}% busy with other work: waiting`);
    said = true;
  }
}

/** Runs a tool once; a run disturbed by other work (see {@linkcode NOISE}) is redone. */
async function runQuietly(ctx: Context, tool: ToolName, round: number): Promise<Run> {
  for (let attempt = 0;; attempt++) {
    await waitQuiet();
    const run = await runTool(ctx, tool, round);
    const noisy = run.otherCpu > NOISE * run.seconds * navigator.hardwareConcurrency;
    if (!noisy || attempt >= REDO) return { ...run, redone: attempt, noisy };
    log(`other work used ${run.otherCpu.toFixed(1)} CPU-s during that run: redoing it`);
  }
}

async function runTool(ctx: Context, tool: ToolName, round: number): Promise<Run> {
  const label = `${round === 0 ? "warm-up" : `round ${round}`}: ${tool}`;
  const name = `bench${++ctx.counter}`;
  const verify = shouldVerify(ctx, tool);
  let run: Run;
  await sync();
  if (tool === "nbdcopy") {
    const dir = await Deno.makeTempDir({ dir: ctx.base, prefix: "vmshift-bench-rhv-" });
    dirs.add(dir);
    try {
      const dst = join(dir, "out.raw");
      const m = await measure([
        ["qemu-img", "create", "-q", "-f", "raw", dst, `${ctx.virtualSize}`],
        [
          "nbdcopy",
          "--",
          "[",
          "qemu-nbd",
          "-r",
          "-f",
          "qcow2",
          ctx.src,
          "]",
          "[",
          "qemu-nbd",
          "-f",
          "raw",
          dst,
          "]",
        ],
      ]);
      if (verify) {
        await compare(ctx.src, dst, label);
        ctx.verified.set(tool, (ctx.verified.get(tool) ?? 0) + 1);
      }
      run = {
        tool,
        round,
        seconds: m.seconds,
        uploadSeconds: m.seconds,
        // NBD over a unix socket has no byte counter: what landed in the output instead.
        wireBytes: (await Deno.stat(dst)).blocks! * 512,
        toolCpu: m.toolCpu,
        serverCpu: m.serverCpu,
        serverOwnCpu: m.serverOwnCpu,
        otherCpu: m.otherCpu,
        verified: verify,
      };
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      dirs.delete(dir);
    }
  } else {
    run = await withServers(ctx.base, isLocal(tool), async (ovirt) => {
      let m: Measured;
      let upload: number;
      if (tool.startsWith("vmshift")) {
        m = await measure([vmshiftArgv(ctx.src, ovirt, name, "--machine-readable")]);
        upload = uploadPhase(m.output);
      } else {
        const work = await Deno.makeTempDir({ prefix: "vmshift-bench-rhv-" });
        dirs.add(work);
        try {
          const params: BaselineParams = {
            engineUrl: ovirt.engineUrl,
            caFile: ovirt.caFile,
            passwordFile: ovirt.passwordFile,
            src: ctx.src,
            name,
            work,
            local: isLocal(tool),
          };
          m = await measure([[
            Deno.execPath(),
            "run",
            "-A",
            SELF,
            "--baseline-child",
            JSON.stringify(params),
          ]]);
        } finally {
          await Deno.remove(work, { recursive: true }).catch(() => {});
          dirs.delete(work);
        }
        const line = m.output.split("\n").find((l) => l.startsWith("{"));
        upload = (JSON.parse(line ?? "{}") as Partial<BaselineResult>).uploadSeconds ?? NaN;
      }
      const stats = ovirt.stats();
      if (verify) await verifyDisk(ctx, ovirt, tool, label);
      return {
        tool,
        round,
        seconds: m.seconds,
        uploadSeconds: upload,
        wireBytes: stats.putBytes,
        stats,
        toolCpu: m.toolCpu,
        serverCpu: m.serverCpu,
        serverOwnCpu: m.serverOwnCpu,
        otherCpu: m.otherCpu,
        verified: verify,
      };
    });
  }
  log(
    `${label}: ${run.seconds.toFixed(2)} s, upload ${run.uploadSeconds.toFixed(2)} s` +
      (run.wireBytes !== undefined ? `, ${(run.wireBytes / MiB).toFixed(1)} MiB on the wire` : "") +
      (run.stats ? `, ${run.stats.connections} connection(s)` : "") +
      `, CPU tool ${run.toolCpu.toFixed(1)} s, servers ${run.serverCpu.toFixed(1)} s ` +
      `(deno ${run.serverOwnCpu.toFixed(1)} s), ` +
      `others ${run.otherCpu.toFixed(1)} s` +
      (run.verified ? ", verified" : ""),
  );
  return run;
}

// --- the single-connection baseline (runs in a child process) --------------------------------

interface BaselineParams {
  engineUrl: string;
  caFile: string;
  passwordFile: string;
  src: string;
  /** Names the disk. */
  name: string;
  /** Where the source's qemu-nbd socket goes. */
  work: string;
  /** Upload over the daemon's local socket (named in OPTIONS), not HTTPS. */
  local: boolean;
}

interface BaselineResult {
  uploadSeconds: number;
  sentBytes: number;
  putRequests: number;
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 120_000;
  while (true) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * What a naive client does: one connection, one request at a time, sequential reads.
 *
 * @param p Where the engine is, the source, a name and a scratch directory.
 * @returns The upload phase's seconds and what was sent.
 */
async function baselineUpload(p: BaselineParams): Promise<BaselineResult> {
  const caCerts = [await Deno.readTextFile(p.caFile)];
  await using engine = await OvirtApi.login({
    url: p.engineUrl,
    username: "admin@internal",
    password: (await Deno.readTextFile(p.passwordFile)).trim(),
    caCerts,
  });
  await using source = await serveQemuNbd(p.src, {
    socket: join(p.work, "src.sock"),
    format: "qcow2",
    readOnly: true,
    name: "qemu-nbd (source)",
  });
  await using nbd = await NbdClient.connect(source.uri);
  const size = nbd.size;
  const sd = await engine.storageDomain("data");
  if (!sd) throw new Error(`No storage domain "data"`);
  const disk = await engine.addDisk({
    name: `${p.name}-000`,
    provisionedSize: size,
    format: "raw",
    sparse: true,
    storageDomainId: sd.id,
  });
  await waitFor("the disk", async () => (await engine.disk(disk.id))?.status === "ok" || undefined);
  const started = await engine.addUpload(disk.id, 3600);
  const transfer = await waitFor("the transfer", async () => {
    const t = await engine.transfer(started.id);
    if (t?.phase === "transferring") return t;
    if (t?.phase !== "initializing") throw new Error(`Transfer phase ${t?.phase}`);
    return undefined;
  });
  const url = new URL(transfer.transferUrl!);
  using tls = new Http1Connection(url, { caCerts });
  const options = await tls.request({ method: "OPTIONS", path: url.pathname });
  if (options.status !== 200) throw new Error(`OPTIONS: ${options.status}`);
  const socket = (JSON.parse(new TextDecoder().decode(options.body)) as { unix_socket?: string })
    .unix_socket;
  if (p.local && !socket) throw new Error("The daemon has no local socket");
  using local = p.local ? new Http1Connection(url, { unixSocket: socket! }) : undefined;
  const http = local ?? tls;

  const t0 = performance.now();
  const buffer = new Uint8Array(REQUEST);
  let sentBytes = 0;
  let putRequests = 0;
  for (let offset = 0; offset < size;) {
    const extents = await nbd.blockStatus(offset, Math.min(GiB, size - offset));
    const before = offset;
    for (const e of extents) {
      const end = Math.min(e.offset + e.length, size);
      if (end <= offset) continue;
      // A new sparse disk on file storage reads zeroes: zero extents are skipped.
      if (!(e.flags & NBD_STATE_ZERO)) {
        for (let at = offset; at < end; at += REQUEST) {
          const view = buffer.subarray(0, Math.min(REQUEST, end - at));
          await nbd.readInto(at, view);
          const res = await http.request({
            method: "PUT",
            path: `${url.pathname}?flush=n`,
            headers: {
              "Content-Range": `bytes ${at}-${at + view.length - 1}/*`,
              "Content-Type": "application/octet-stream",
            },
            body: view,
          });
          if (res.status !== 200) throw new Error(`PUT at ${at}: ${res.status}`);
          sentBytes += view.length;
          putRequests++;
        }
      }
      offset = end;
    }
    if (offset === before) throw new Error(`No progress in block status at ${offset}`);
  }
  const flush = await http.request({
    method: "PATCH",
    path: url.pathname,
    headers: { "Content-Type": "application/json" },
    body: new TextEncoder().encode(JSON.stringify({ op: "flush" })),
  });
  if (flush.status !== 200) throw new Error(`PATCH flush: ${flush.status}`);
  const uploadSeconds = (performance.now() - t0) / 1000;
  http.close();

  await engine.finalizeTransfer(started.id);
  await waitFor("the finalization", async () => {
    const t = await engine.transfer(started.id);
    if (t?.phase === "finished_success") return true;
    if (t?.phase === "finished_failure") throw new Error("Finalize failed");
    return undefined;
  });
  return { uploadSeconds, sentBytes, putRequests };
}

// --- results ---------------------------------------------------------------------------------

interface Summary {
  tool: ToolName;
  phase: "whole" | "upload";
  seconds: number[];
  median: number;
  min: number;
  max: number;
  mibPerSecond: number;
}

interface ToolSummary {
  tool: ToolName;
  whole: Summary;
  upload: Summary;
  /** Medians over the timed runs. */
  wireBytes?: number;
  putRequests?: number;
  zeroRequests?: number;
  flushRequests?: number;
  connections?: number;
  maxConcurrentConnections?: number;
  toolCpu: number;
  serverCpu: number;
  serverOwnCpu: number;
  otherCpu: number;
  verified: number;
  /** Timed runs redone because other work disturbed them, and runs still disturbed. */
  redone: number;
  noisy: number;
}

function summarize(runs: Run[], dataBytes: number, verified: Map<ToolName, number>) {
  const out: ToolSummary[] = [];
  for (const tool of TOOLS) {
    const mine = runs.filter((r) => r.tool === tool && r.round > 0);
    if (!mine.length) continue;
    const phase = (p: "whole" | "upload", xs: number[]): Summary => {
      const med = median(xs);
      return {
        tool,
        phase: p,
        seconds: xs,
        median: med,
        min: Math.min(...xs),
        max: Math.max(...xs),
        mibPerSecond: dataBytes / MiB / med,
      };
    };
    const med = (f: (r: Run) => number | undefined) => {
      const xs = mine.map(f).filter((x): x is number => x !== undefined);
      return xs.length ? median(xs) : undefined;
    };
    const s: ToolSummary = {
      tool,
      whole: phase("whole", mine.map((r) => r.seconds)),
      upload: phase("upload", mine.map((r) => r.uploadSeconds)),
      toolCpu: med((r) => r.toolCpu)!,
      serverCpu: med((r) => r.serverCpu)!,
      serverOwnCpu: med((r) => r.serverOwnCpu)!,
      otherCpu: med((r) => r.otherCpu)!,
      redone: mine.reduce((n, r) => n + (r.redone ?? 0), 0),
      noisy: mine.filter((r) => r.noisy).length,
      verified: verified.get(tool) ?? 0,
    };
    const fields = {
      wireBytes: med((r) => r.wireBytes),
      putRequests: med((r) => r.stats?.putRequests),
      zeroRequests: med((r) => r.stats?.zeroRequests),
      flushRequests: med((r) => r.stats?.flushRequests),
      connections: med((r) => r.stats?.connections),
      maxConcurrentConnections: med((r) => r.stats?.maxConcurrentConnections),
    };
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined) (s as unknown as Record<string, number>)[k] = v;
    }
    out.push(s);
  }
  return out;
}

interface Ratio {
  name: string;
  /** vmshift's throughput over the peer's, upload phase (nbdcopy: its whole run). */
  upload: number;
  /** The same over whole runs. */
  whole: number;
  target: number;
  met: boolean;
}

function ratios(sums: ToolSummary[]): Ratio[] {
  const get = (t: ToolName) => sums.find((s) => s.tool === t);
  const out: Ratio[] = [];
  const add = (tool: ToolName, peerTool: ToolName, target: number) => {
    const ours = get(tool);
    const peer = get(peerTool);
    if (!peer || !ours) return;
    const upload = peer.upload.median / ours.upload.median;
    out.push({
      name: `${tool} / ${peerTool}${peerTool.startsWith("1-conn") ? " baseline" : ""}`,
      upload,
      whole: peer.whole.median / ours.whole.median,
      target,
      met: upload >= target,
    });
  };
  add("vmshift", "1-conn", 1.5);
  add("vmshift-local", "1-conn-local", 1.5);
  add("vmshift", "nbdcopy", 0.8);
  add("vmshift-local", "nbdcopy", 0.8);
  return out;
}

function fmt(x: number | undefined, digits = 0): string {
  return x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits);
}

function printResults(sums: ToolSummary[], dataBytes: number, virtualSize: number, runs: number) {
  console.log(
    `\n-o rhv upload of ${formatSize(dataBytes)} of data in a ${formatSize(virtualSize)} disk, ` +
      `${runs} paired round(s); MiB/s counts data bytes only:\n`,
  );
  const rows = [["tool", "phase", "median s", "min s", "max s", "MiB/s"]];
  for (const s of sums) {
    for (const p of s.tool === "nbdcopy" ? [s.whole] : [s.whole, s.upload]) {
      rows.push([
        s.tool,
        p.phase,
        p.median.toFixed(2),
        p.min.toFixed(2),
        p.max.toFixed(2),
        p.mibPerSecond.toFixed(0),
      ]);
    }
  }
  printRows(rows);
  console.log("\nOn the wire and CPU (medians per run):\n");
  const wire = [[
    "tool",
    "transport",
    "wire MiB",
    "PUTs",
    "zero reqs",
    "flushes",
    "conns",
    "max open",
    "tool CPU s",
    "servers CPU s (deno)",
    "others CPU s",
    "redone",
    "noisy",
    "verified",
  ]];
  for (const s of sums) {
    wire.push([
      s.tool,
      s.tool === "nbdcopy" ? "NBD (unix)" : isLocal(s.tool) ? "HTTP (unix)" : "HTTPS",
      fmt(s.wireBytes === undefined ? undefined : s.wireBytes / MiB, 1),
      fmt(s.putRequests),
      fmt(s.zeroRequests),
      fmt(s.flushRequests),
      fmt(s.connections),
      fmt(s.maxConcurrentConnections),
      fmt(s.toolCpu, 1),
      `${fmt(s.serverCpu, 1)} (${fmt(s.serverOwnCpu, 1)})`,
      fmt(s.otherCpu, 1),
      String(s.redone),
      String(s.noisy),
      String(s.verified),
    ]);
  }
  printRows(wire);
  console.log("");
  for (const r of ratios(sums)) {
    console.log(
      `${r.name}: ${r.upload.toFixed(2)}x the throughput (upload phase; whole run ` +
        `${r.whole.toFixed(2)}x), target >= ${r.target}: ${r.met ? "met" : "NOT met"}`,
    );
  }
}

function printMemory(m: MemoryRun): void {
  const r = m.result;
  console.log(
    `\nMemory, vmshift -o rhv -q of a ${formatSize(m.virtualSize)} disk holding ` +
      `${formatSize(m.dataBytes)} of data: peak RSS (VmHWM) of the vmshift deno process ` +
      `${r.vmshiftMiB.toFixed(0)} MiB (target < 300: ${r.vmshiftMiB < 300 ? "met" : "NOT met"}); ` +
      `children ${r.childrenMiB.toFixed(0)} MiB (${
        Object.entries(r.children).map(([n, c]) => `${c} ${n}`).join(", ") || "none"
      }); tree peak ${r.treePeakMiB.toFixed(0)} MiB; ${r.seconds.toFixed(2)} s; ` +
      `${(m.stats.putBytes / MiB).toFixed(1)} MiB PUT, ${m.stats.zeroRequests} zero requests, ` +
      `${m.stats.connections} connections${m.verified ? "; verified" : ""}`,
  );
}

interface MemoryRun {
  virtualSize: number;
  dataBytes: number;
  result: MemoryResult;
  stats: OvirtStats;
  verified: boolean;
}

async function memoryRun(
  base: string,
  virtualSize: number,
  dataBytes: number,
  verify: boolean,
): Promise<MemoryRun> {
  const src = await sourceImage(virtualSize, dataBytes);
  await waitQuiet();
  return await withServers(base, false, async (ovirt) => {
    await sync();
    const result = await measureMemory(
      "-o rhv",
      vmshiftArgv(src, ovirt, "benchmem", "-q"),
      await hasTime(),
    );
    const stats = ovirt.stats();
    if (verify) {
      const disk = ovirt.disks()[0];
      if (!disk) throw new Error("memory run: no disk on the engine");
      await compare(src, disk.path, "memory run");
    }
    return { virtualSize, dataBytes, result, stats, verified: verify };
  });
}

// --- main ------------------------------------------------------------------------------------

const USAGE = `Usage: deno task bench:rhv [--data 2G] [--size 8G] [--runs 3] [--quick]
    [--no-memory] [--no-warmup] [--no-verify] [--dir DIR] [--steady-memory]
  --quick      256 MiB of data in 2 GiB, one run, no warm-up, memory on 128 MiB in 8 GiB
  --dir DIR    where the servers' disks and nbdcopy's output go (default /dev/shm when it has
               room, else .cache/bench)
  --no-memory  skip the memory run (100 GiB disk holding 2 GiB of data)
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
        "no-memory": { type: "boolean", default: false },
        "no-warmup": { type: "boolean", default: false },
        "no-verify": { type: "boolean", default: false },
        "steady-memory": { type: "boolean", default: false },
        dir: { type: "string" },
        "baseline-child": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    console.error(`bench:rhv: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values["baseline-child"]) {
    const result = await baselineUpload(JSON.parse(values["baseline-child"]) as BaselineParams);
    console.log(JSON.stringify(result));
    return 0;
  }
  const quick = values.quick;
  let dataBytes: number, virtualSize: number, runs: number;
  try {
    dataBytes = parseSize(values.data ?? (quick ? "256M" : "2G"));
    virtualSize = parseSize(values.size ?? (quick ? "2G" : "8G"));
    runs = Number(values.runs ?? (quick ? "1" : "3"));
    if (!Number.isInteger(runs) || runs < 1) {
      throw new SyntaxError(`Invalid --runs "${values.runs}": expected a positive integer`);
    }
  } catch (e) {
    console.error(`bench:rhv: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  useTime = await hasTime();
  const ticks = await new Deno.Command("getconf", { args: ["CLK_TCK"] }).output()
    .then((o) => Number(new TextDecoder().decode(o.stdout).trim())).catch(() => 100);
  if (Number.isFinite(ticks) && ticks > 0) clockTicks = ticks;

  const src = await sourceImage(virtualSize, dataBytes);
  let base = values.dir ?? CACHE;
  if (!values.dir && (await freeBytes("/dev/shm").catch(() => 0)) > dataBytes * 3) {
    base = "/dev/shm";
  }
  log(`servers' disks and outputs in "${base}"`);
  const reporting = await freePageReporting(values["steady-memory"], log);
  const ctx: Context = {
    src,
    virtualSize,
    base,
    verify: !values["no-verify"],
    verified: new Map(),
    counter: 0,
  };
  const warmup = !quick && !values["no-warmup"];
  const all: Run[] = [];
  for (let round = warmup ? 0 : 1; round <= runs; round++) {
    const order = TOOLS.map((_, i) => TOOLS[(i + round) % TOOLS.length]!);
    for (const tool of order) all.push(await runQuietly(ctx, tool, round));
  }
  const sums = summarize(all, dataBytes, ctx.verified);
  printResults(sums, dataBytes, virtualSize, runs);

  let memory: MemoryRun | undefined;
  if (!values["no-memory"]) {
    const memSize = quick ? 8 * GiB : 100 * GiB;
    const memData = quick ? 128 * MiB : 2 * GiB;
    memory = await memoryRun(base, memSize, memData, !values["no-verify"]);
    printMemory(memory);
  }
  console.log(
    "\nNotes: each HTTP run has fresh test servers (engine and imageio) running in this " +
      "process, a single JS thread, with the disk served by qemu-nbd; whole runs include Deno " +
      "start-up, login, disk and transfer creation (200 ms engine delays), finalize, and for " +
      "vmshift the overlay and the VM; -local: the daemon also serves its local unix socket " +
      "(named in OPTIONS, plain HTTP) and the tool uploads over it, as on the daemon's own " +
      "host; upload = first to last progress event (vmshift), open " +
      "connection to flushed (1-conn); nbdcopy's upload is its whole run (qemu-img create " +
      "included); wire MiB: PUT bodies, for nbdcopy the bytes allocated in its output; " +
      "tool CPU: user+sys of the tool's process tree; servers CPU: this process (in brackets: engine, imageio and " +
      "TLS, one JS thread) and the target qemu-nbd; others CPU: the rest of the machine meanwhile (noise from other " +
      `work; a run where it exceeds ${NOISE * 100}% of the CPUs is redone, up to ${REDO} ` +
      `times: redone counts those, noisy the runs still disturbed); ` +
      `${navigator.hardwareConcurrency} CPUs` + (reporting ? `; ${reporting}.` : "."),
  );

  const report = {
    date: new Date().toISOString(),
    parameters: {
      dataBytes,
      virtualSize,
      runs,
      quick,
      warmup,
      outputs: base,
      source: src,
      freePageReporting: reporting ?? "none",
    },
    host: {
      cpus: navigator.hardwareConcurrency,
      deno: Deno.version.deno,
      nbdcopy: await new Deno.Command("nbdcopy", { args: ["--version"] }).output()
        .then((o) => new TextDecoder().decode(o.stdout).split("\n")[0]!.trim())
        .catch(() => "not installed"),
    },
    runs: all,
    results: sums,
    ratios: ratios(sums),
    memory,
  };
  await Deno.writeTextFile(`${CACHE}/rhv-last.json`, JSON.stringify(report, null, 2) + "\n");
  log(`results written to "${CACHE}/rhv-last.json"`);
  return 0;
}

if (import.meta.main) await runBench("bench:rhv", main, cleanUpAll);
