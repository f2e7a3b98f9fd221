/**
 * Runs vmshift the way a user does (a child `deno run main.ts`), in a private TMPDIR, and
 * checks afterwards that nothing was left behind: no files in that TMPDIR, no process whose
 * command line mentions it.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "../_assert.ts";
import { run } from "../../src/process.ts";

/** The repository's main.ts. */
export const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/** What a vmshift run produced. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode Sandbox.run}. */
export interface RunOptions {
  /**
   * Convert the guest. Most tests migrate disks of random data, which hold no operating
   * system, so the harness adds `--no-convert` to a migration unless this is true.
   * @default false
   */
  convert?: boolean;
  /** More environment for vmshift (e.g. `VIRTIO_WIN`). */
  env?: Record<string, string>;
}

function withConvert(args: string[], options: RunOptions): string[] {
  return options.convert || !args.includes("-i") || args.includes("--no-convert")
    ? args
    : [...args, "--no-convert"];
}

/** A private TMPDIR for one test, checked for leftovers when disposed. */
export class Sandbox implements AsyncDisposable {
  /** The TMPDIR given to vmshift. */
  readonly tmp: string;
  /** A scratch directory for the test's own files (sources, outputs). */
  readonly work: string;

  private constructor(tmp: string, work: string) {
    this.tmp = tmp;
    this.work = work;
  }

  /** Makes the sandbox. */
  static async create(): Promise<Sandbox> {
    const tmp = await Deno.makeTempDir({ prefix: "vmshift-test-tmp-" });
    const work = await Deno.makeTempDir({ prefix: "vmshift-test-work-" });
    return new Sandbox(tmp, work);
  }

  /**
   * The environment vmshift runs in: the private TMPDIR, and libguestfs on TCG (KVM hangs on
   * the test machines; vmshift itself never forces TCG) with its usual appliance cache.
   */
  get env(): Record<string, string> {
    return {
      TMPDIR: this.tmp,
      NO_COLOR: "1",
      LIBGUESTFS_BACKEND: "direct",
      LIBGUESTFS_BACKEND_SETTINGS: "force_tcg",
      // libguestfs keeps its appliance cache in $TMPDIR by default: keep it where it lives
      // when TMPDIR is unset, shared between runs, rather than rebuild it in every sandbox.
      LIBGUESTFS_CACHEDIR: "/var/tmp",
    };
  }

  /**
   * Starts vmshift.
   * @param args Its arguments.
   * @param options Whether to convert the guest.
   * @returns The child, with piped stdout and stderr.
   */
  spawn(args: string[], options: RunOptions = {}): Deno.ChildProcess {
    return new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...withConvert(args, options)],
      env: this.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  }

  /**
   * Runs vmshift to completion.
   * @param args Its arguments.
   * @param options Whether to convert the guest.
   * @returns Exit code and output.
   */
  async run(args: string[], options: RunOptions = {}): Promise<RunResult> {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...withConvert(args, options)],
      env: { ...this.env, ...options.env },
      stdin: "null",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  }

  /** Asserts that vmshift left no temporary files and no processes. */
  async assertNothingLeft(): Promise<void> {
    const left: string[] = [];
    for await (const e of Deno.readDir(this.tmp)) left.push(e.name);
    assertEquals(left, [], "temporary files left behind");
    assertEquals(await processesMentioning(this.tmp), [], "processes left behind");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const pid of await processesMentioning(this.tmp)) {
      try {
        Deno.kill(Number(pid.split(" ")[0]), "SIGKILL");
      } catch { /* gone */ }
    }
    await Deno.remove(this.tmp, { recursive: true });
    await Deno.remove(this.work, { recursive: true });
  }
}

/**
 * Processes whose command line mentions a path (sockets and files live under it).
 * @param path The path.
 * @returns "PID ARGS" lines.
 */
export async function processesMentioning(path: string): Promise<string[]> {
  const ps = await run("ps", ["-eo", "pid=,args="]);
  return ps.split("\n").map((l) => l.trim()).filter((l) =>
    l.includes(path) && !l.includes("ps -eo")
  );
}

/**
 * SHA-256 of a file, streamed.
 * @param path The file.
 * @returns Hex digest.
 */
export async function sha256(path: string): Promise<string> {
  const out = await run("sha256sum", [path]);
  return out.split(" ")[0]!;
}

/**
 * Bytes allocated on the host for a file.
 * @param path The file.
 * @returns Allocated bytes.
 */
export async function allocated(path: string): Promise<number> {
  const st = await Deno.stat(path);
  return (st.blocks ?? 0) * 512;
}

/**
 * Asserts that two images hold the same guest data.
 * @param a First image.
 * @param b Second image.
 */
export async function assertSameContent(a: string, b: string): Promise<void> {
  const out = await run("qemu-img", ["compare", "--force-share", a, b]);
  assert(out.includes("Images are identical"), out);
}

/**
 * Reads a child's stdout line by line until a predicate holds.
 * @param child The child process.
 * @param until Returns true for the line awaited.
 * @returns The lines read, and a function that drains the rest.
 */
export async function readUntil(
  child: Deno.ChildProcess,
  until: (line: string) => boolean,
): Promise<{ lines: string[]; rest: Promise<string> }> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const lines: string[] = [];
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    let found = false;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      lines.push(line);
      if (until(line)) found = true;
    }
    if (found) break;
  }
  const rest = (async () => {
    let text = buf;
    while (true) {
      const { value, done } = await reader.read();
      if (done) return text;
      text += value;
    }
  })();
  return { lines, rest };
}
