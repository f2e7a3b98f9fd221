/**
 * A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, a new cluster in a
 * temporary directory, listening on 127.0.0.1 only, trust authentication for the local test
 * user, stopped and removed on dispose. As root, the server runs as the `postgres` user
 * (PostgreSQL refuses to run as root).
 *
 * @module
 */

import { run } from "../../src/process.ts";

/** A running test server. */
export class TestPostgres implements AsyncDisposable {
  /** `postgres://postgres@127.0.0.1:PORT/postgres`. */
  readonly url: string;
  readonly #dir: string;
  readonly #bin: string;
  readonly #asPostgres: string[];

  private constructor(url: string, dir: string, bin: string, asPostgres: string[]) {
    this.url = url;
    this.#dir = dir;
    this.#bin = bin;
    this.#asPostgres = asPostgres;
  }

  /**
   * Whether the binaries are installed.
   * @returns The bin directory, or undefined.
   */
  static binDir(): string | undefined {
    try {
      const versions = [...Deno.readDirSync("/usr/lib/postgresql")].map((e) => e.name).sort();
      const dir = `/usr/lib/postgresql/${versions.at(-1)}/bin`;
      Deno.statSync(`${dir}/postgres`);
      return dir;
    } catch {
      return undefined;
    }
  }

  /**
   * Starts a server.
   * @returns It, ready for connections.
   */
  static async start(): Promise<TestPostgres> {
    const bin = TestPostgres.binDir();
    if (!bin) throw new Error("PostgreSQL is not installed: run scripts/setup.sh");
    const root = Deno.uid() === 0;
    const dir = await Deno.makeTempDir({ prefix: "vmshift-test-pg-" });
    const asPostgres = root ? ["runuser", "-u", "postgres", "--"] : [];
    if (root) await run("chown", ["-R", "postgres:postgres", dir]);
    const user = root ? "postgres" : Deno.env.get("USER") ?? "postgres";
    const sh = async (args: string[]) => {
      const [cmd, ...rest] = [...asPostgres, ...args];
      return await run(cmd!, rest);
    };
    await sh([`${bin}/initdb`, "-D", `${dir}/data`, "-U", user, "--auth=trust", "-E", "UTF8"]);
    const port = freePort();
    await sh([
      `${bin}/pg_ctl`,
      "-D",
      `${dir}/data`,
      "-l",
      `${dir}/log`,
      "-w",
      "-o",
      `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off`,
      "start",
    ]);
    return new TestPostgres(`postgres://${user}@127.0.0.1:${port}/postgres`, dir, bin, asPostgres);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    const [cmd, ...rest] = [
      ...this.#asPostgres,
      `${this.#bin}/pg_ctl`,
      "-D",
      `${this.#dir}/data`,
      "-m",
      "immediate",
      "-w",
      "stop",
    ];
    try {
      await run(cmd!, rest);
    } finally {
      await Deno.remove(this.#dir, { recursive: true });
    }
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
