/**
 * Process supervision: every external program vmshift starts goes through this module.
 *
 * - {@linkcode run} runs a short command (qemu-img, nbdinfo) to completion, reading stdout and
 *   stderr while it runs, and throws a {@linkcode CommandError} naming the program and quoting
 *   its stderr when it fails.
 * - {@linkcode startServer} starts a long-running server (nbdkit, qemu-nbd) on a unix socket and
 *   returns only once a readiness probe succeeds (never after a fixed sleep). The returned
 *   {@linkcode Server} keeps the tail of the program's stderr for error messages and stops the
 *   program when disposed (`await using`).
 *
 * Every child is registered in one set, so that {@linkcode killAll} can stop whatever is still
 * running when vmshift is interrupted. Servers also die with vmshift if it is killed outright:
 * callers pass `--exit-with-parent` to nbdkit, and other programs are started under
 * `setpriv --pdeathsig` (see {@linkcode ServerOptions.dieWithParent}).
 *
 * @module
 */

const live = new Set<Deno.ChildProcess>();
const STDERR_KEEP = 16 * 1024;
const died = new Set<Server>();
let tracer: ((argv: readonly string[]) => void) | undefined;

/**
 * Shows every command line before it runs (`-x`). Command lines never hold secrets, so they
 * are safe to print.
 *
 * @param fn Called with the program and its arguments; undefined turns tracing off.
 */
export function traceCommands(fn: ((argv: readonly string[]) => void) | undefined): void {
  tracer = fn;
}

/** Thrown when an external program fails: exit code, program name and its stderr. */
export class CommandError extends Error {
  /** The program, e.g. `qemu-img`. */
  readonly program: string;
  /** Exit code, or `null` when the program was killed by a signal. */
  readonly code: number | null;
  /** The end of what the program wrote to stderr. */
  readonly stderr: string;

  /**
   * @param program The program name.
   * @param code Its exit code, or null when it died of a signal.
   * @param stderr What it printed on stderr (tail).
   * @param what A short description of what was being done.
   */
  constructor(program: string, code: number | null, stderr: string, what?: string) {
    const detail = stderr.trim().split("\n").slice(-5).join("\n").trim();
    const how = code === null ? "was killed" : `failed with exit code ${code}`;
    super(
      `${what ? `${what}: ` : ""}${program} ${how}${detail ? `: ${detail}` : ""}`,
    );
    this.name = "CommandError";
    this.program = program;
    this.code = code;
    this.stderr = stderr;
  }
}

/** Options for {@linkcode run}. */
export interface RunOptions {
  /** Aborts the command (SIGTERM) when signalled. */
  signal?: AbortSignal;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** What is being done, for the error message, e.g. `Cannot read "disk.img"`. */
  what?: string;
}

/**
 * Runs a command to completion and returns its stdout.
 *
 * @param program The program to run (looked up in PATH).
 * @param args Its arguments. Never put a secret here: command lines are visible to every user.
 * @param options Signal, environment, description for errors.
 * @returns What the program printed on stdout.
 * @throws {CommandError} When the program exits non-zero or is killed.
 *
 * @example
 * ```ts
 * import { run } from "./process.ts";
 * const out = await run("echo", ["hello"]);
 * if (out !== "hello\n") throw new Error("unexpected");
 * ```
 */
export async function run(
  program: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<string> {
  options.signal?.throwIfAborted();
  const child = spawn(program, args, { stdout: "piped", env: options.env });
  const onAbort = () => terminate(child);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const [stdout, stderr, status] = await Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
      child.status,
    ]);
    options.signal?.throwIfAborted();
    if (!status.success) {
      throw new CommandError(
        program,
        status.signal ? null : status.code,
        stderr,
        options.what,
      );
    }
    return stdout;
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    live.delete(child);
  }
}

/** A running command whose stdout is read line by line: see {@linkcode streamLines}. */
export interface LineStream extends AsyncDisposable {
  /** The lines of stdout, without their newline; throws {@linkcode CommandError} at the end if
   * the program failed. */
  readonly lines: AsyncIterableIterator<string>;
}

/**
 * Runs a command and reads its stdout as lines while it runs, so that a long output (an image
 * map of a large disk) never has to fit in memory: the program blocks on a full pipe until the
 * caller asks for more.
 *
 * @param program The program to run (looked up in PATH).
 * @param args Its arguments. Never put a secret here.
 * @param options Signal, environment, description for errors.
 * @returns The lines; dispose it to stop the program if its output is not read to the end.
 * @example
 * ```ts
 * import { streamLines } from "./process.ts";
 * await using out = streamLines("printf", ["a\\nb\\n"]);
 * const lines = [];
 * for await (const line of out.lines) lines.push(line);
 * if (lines.join() !== "a,b") throw new Error(lines.join());
 * ```
 */
export function streamLines(
  program: string,
  args: readonly string[],
  options: RunOptions = {},
): LineStream {
  options.signal?.throwIfAborted();
  const child = spawn(program, args, { stdout: "piped", env: options.env });
  const onAbort = () => terminate(child);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const stderr = new Response(child.stderr).text();
  let finished = false;
  async function* read(): AsyncGenerator<string> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of child.stdout) {
      pending += decoder.decode(chunk, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop()!;
      yield* lines;
    }
    pending += decoder.decode();
    if (pending) yield pending;
    const status = await child.status;
    finished = true;
    options.signal?.throwIfAborted();
    if (!status.success) {
      throw new CommandError(
        program,
        status.signal ? null : status.code,
        await stderr,
        options.what,
      );
    }
  }
  return {
    lines: read(),
    async [Symbol.asyncDispose]() {
      options.signal?.removeEventListener("abort", onAbort);
      if (!finished) {
        terminate(child);
        await child.stdout.cancel().catch(() => {});
        await child.status;
      }
      await stderr.catch(() => {});
      live.delete(child);
    },
  };
}

/** Options for {@linkcode startServer}. */
export interface ServerOptions {
  /** The unix socket the server listens on; the probe connects to it. */
  socket: string;
  /**
   * Resolves to true once the server is ready. Called repeatedly until it says so, the server
   * exits, or the start times out. Defaults to "the socket accepts a connection".
   */
  ready?: (socket: string) => Promise<boolean>;
  /** Aborts the start, and stops the server later, when signalled. */
  signal?: AbortSignal;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** The working directory; vmshift's own by default. */
  cwd?: string;
  /**
   * Start the program under `setpriv --pdeathsig SIGKILL`, so the kernel kills it if vmshift
   * dies without cleaning up. Use for programs with no `--exit-with-parent` of their own.
   * @default false
   */
  dieWithParent?: boolean;
  /**
   * How long the server may take to become ready, in milliseconds.
   * @default 30000
   */
  timeoutMs?: number;
  /** Short name for messages, e.g. `qemu-nbd (overlay sda)`. Defaults to the program. */
  name?: string;
}

/** A running server process, stopped when disposed. */
export class Server implements AsyncDisposable {
  /** Name used in messages. */
  readonly name: string;
  /** The unix socket the server listens on. */
  readonly socket: string;
  #child: Deno.ChildProcess;
  #stderr = "";
  #stderrDone: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;
  #stopping = false;

  /** @internal Use {@linkcode startServer}. */
  constructor(name: string, socket: string, child: Deno.ChildProcess) {
    this.name = name;
    this.socket = socket;
    this.#child = child;
    this.#status = child.status.then((s) => {
      this.#exited = true;
      live.delete(child);
      if (!this.#stopping) died.add(this);
      return s;
    });
    this.#stderrDone = (async () => {
      const decoder = new TextDecoder();
      try {
        for await (const chunk of child.stderr) {
          this.#stderr = (this.#stderr + decoder.decode(chunk, { stream: true })).slice(
            -STDERR_KEEP,
          );
        }
      } catch {
        // The pipe closes when the process dies; nothing to report.
      }
    })();
  }

  /** The NBD URI of the server's default export. */
  get uri(): string {
    return `nbd+unix:///?socket=${this.socket}`;
  }

  /** The process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The end of what the server has printed on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Resolves when the process exits, with its status. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /** True if the process exited without being asked to (it crashed or was killed). */
  get died(): boolean {
    return this.#exited && !this.#stopping;
  }

  /** A description of how the server ended, for error messages; empty while it runs. */
  async describeExit(): Promise<string> {
    if (!this.#exited) return "";
    const status = await this.#status;
    await this.#stderrDone;
    const how = status.signal
      ? `was killed by ${status.signal}`
      : `exited with code ${status.code}`;
    const tail = this.#stderr.trim().split("\n").slice(-5).join("\n").trim();
    return `${this.name} ${how}${tail ? `: ${tail}` : ""}`;
  }

  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its socket. */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (!this.#exited) {
      terminate(this.#child);
      const timer = setTimeout(() => kill(this.#child, "SIGKILL"), 5000);
      try {
        await this.#status;
      } finally {
        clearTimeout(timer);
      }
    }
    await this.#stderrDone;
    await Deno.remove(this.socket).catch(() => {});
  }

  /** Same as {@linkcode Server.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/**
 * Starts a server on a unix socket and waits until it is ready.
 *
 * @param program The program, e.g. `nbdkit`.
 * @param args Its arguments. Never put a secret here.
 * @param options Socket, readiness probe, signal.
 * @returns The running server; dispose it to stop it.
 * @throws {Error} When the server exits or times out before it is ready; the message quotes its
 * stderr.
 */
export async function startServer(
  program: string,
  args: readonly string[],
  options: ServerOptions,
): Promise<Server> {
  options.signal?.throwIfAborted();
  const name = options.name ?? program;
  const argv = options.dieWithParent
    ? ["setpriv", "--pdeathsig", "SIGKILL", "--", program, ...args]
    : [program, ...args];
  const child = spawn(argv[0]!, argv.slice(1), {
    stdout: "null",
    env: options.env,
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
  });
  const server = new Server(name, options.socket, child);
  const ready = options.ready ?? socketAccepts;
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  try {
    let wait = 2;
    while (true) {
      options.signal?.throwIfAborted();
      if (server.exited) {
        throw new Error(`Cannot start ${await server.describeExit()}`);
      }
      if (await ready(options.socket).catch(() => false)) return server;
      if (Date.now() > deadline) {
        throw new Error(`Cannot start ${name}: not ready after ${options.timeoutMs ?? 30_000} ms`);
      }
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 100);
    }
  } catch (e) {
    await server.stop();
    died.delete(server); // already described in the error
    throw e;
  }
}

/** Default readiness probe: the unix socket accepts a connection. */
async function socketAccepts(socket: string): Promise<boolean> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  conn.close();
  return true;
}

/**
 * Describes the servers that exited without being asked to since the last call, so that an
 * error such as "connection lost" can say which server died and what it printed.
 *
 * @returns One description per server, e.g. `qemu-nbd (target "x") was killed by SIGKILL`.
 */
export async function takeDeadServers(): Promise<string[]> {
  const out: string[] = [];
  for (const s of died) out.push(await s.describeExit());
  died.clear();
  return out;
}

/** Stops every child process that is still running (used on interrupt). */
export function killAll(): void {
  for (const child of live) terminate(child);
}

/** How many child processes are running now (for tests). */
export function liveCount(): number {
  return live.size;
}

function spawn(
  program: string,
  args: readonly string[],
  opts: { stdout: "piped" | "null"; env: Record<string, string> | undefined; cwd?: string },
): Deno.ChildProcess {
  tracer?.([program, ...args]);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(program, {
      args: [...args],
      stdin: "null",
      stdout: opts.stdout,
      stderr: "piped",
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `Cannot run "${program}": not installed (run scripts/setup.sh)`,
      );
    }
    throw e;
  }
  live.add(child);
  return child;
}

function terminate(child: Deno.ChildProcess): void {
  kill(child, "SIGTERM");
}

function kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Already exited.
  }
}
