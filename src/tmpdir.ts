/**
 * The run's private temporary directory: sockets, overlays and other scratch files live here,
 * and nothing else of vmshift's touches the system's temporary directory.
 *
 * The directory is created mode 0700 with the owner's pid in its name
 * (`vmshift-PID-XXXXXX`), and removed when disposed. A run killed outright (SIGKILL) cannot
 * clean up after itself, so {@linkcode TempDir.create} first removes directories left by
 * vmshift processes that no longer exist.
 *
 * @module
 */

import { join } from "node:path";

const PREFIX = "vmshift-";

/** A private temporary directory, removed with everything in it when disposed. */
export class TempDir implements AsyncDisposable {
  /** Absolute path of the directory. */
  readonly path: string;

  private constructor(path: string) {
    this.path = path;
  }

  /**
   * Creates a new private temporary directory, after removing stale ones of dead runs.
   *
   * @returns The directory; dispose it to remove it.
   * @example
   * ```ts
   * import { TempDir } from "./tmpdir.ts";
   * await using dir = await TempDir.create();
   * await Deno.writeTextFile(dir.join("x"), "data");
   * ```
   */
  static async create(): Promise<TempDir> {
    await removeStale();
    const path = await Deno.makeTempDir({ prefix: `${PREFIX}${Deno.pid}-` });
    await Deno.chmod(path, 0o700);
    return new TempDir(path);
  }

  /**
   * A path inside the directory.
   *
   * @param name File name.
   * @returns The absolute path.
   */
  join(name: string): string {
    return join(this.path, name);
  }

  /** Removes the directory and everything in it. */
  async [Symbol.asyncDispose](): Promise<void> {
    await Deno.remove(this.path, { recursive: true }).catch(() => {});
  }
}

/** The system temporary directory, as Deno.makeTempDir uses it. */
export function systemTempDir(): string {
  return Deno.env.get("TMPDIR") || "/tmp";
}

async function removeStale(): Promise<void> {
  const base = systemTempDir();
  try {
    for await (const entry of Deno.readDir(base)) {
      const m = entry.isDirectory && entry.name.match(/^vmshift-(\d+)-/);
      if (!m || Number(m[1]) === Deno.pid) continue;
      if (await pidAlive(Number(m[1]))) continue;
      await Deno.remove(join(base, entry.name), { recursive: true }).catch(() => {});
    }
  } catch {
    // An unreadable temporary directory is not ours to fix; makeTempDir will say what is wrong.
  }
}

async function pidAlive(pid: number): Promise<boolean> {
  try {
    await Deno.stat(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}
