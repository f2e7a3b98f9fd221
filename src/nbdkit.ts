/**
 * nbdkit as an abstract data type: a command builder that knows the plugin, its filters (in a
 * fixed order decided by the caller, innermost last) and its parameters, and a
 * {@linkcode Nbdkit.serve} that returns only once the server is ready.
 *
 * Parameters are passed on the command line, which every local user can read: secrets must
 * use nbdkit's own `+FILE` or `-` (stdin) forms, never a literal value.
 *
 * @module
 */

import { run, type Server, startServer } from "./process.ts";
import { nbdReady } from "./nbd/probe.ts";

const probes = new Map<string, Promise<boolean>>();

/**
 * Tells whether nbdkit has a plugin or filter (cached for the run).
 *
 * @param kind `plugin` or `filter`.
 * @param name E.g. `file` or `rate`.
 * @returns True when `nbdkit --dump-plugin` / `--filter` accepts it.
 */
export function nbdkitHas(kind: "plugin" | "filter", name: string): Promise<boolean> {
  const key = `${kind}:${name}`;
  let p = probes.get(key);
  if (!p) {
    const args = kind === "plugin"
      ? ["--dump-plugin", name]
      : [`--filter=${name}`, "--dump-plugin", "null"];
    p = run("nbdkit", args).then(() => true, () => false);
    probes.set(key, p);
  }
  return p;
}

/** An nbdkit command line under construction. */
export class Nbdkit {
  readonly #plugin: string;
  readonly #filters: string[] = [];
  readonly #params: string[] = [];
  #readOnly = true;
  #threads: number | undefined;

  /**
   * @param plugin The plugin, e.g. `file`.
   */
  constructor(plugin: string) {
    this.#plugin = plugin;
  }

  /**
   * Adds a filter. Filters are applied in the order added: the first added is outermost
   * (nearest the client), the last innermost (nearest the plugin).
   *
   * @param name Filter name.
   * @returns this
   */
  addFilter(name: string): this {
    this.#filters.push(name);
    return this;
  }

  /**
   * Adds a `key=value` parameter of the plugin or a filter.
   *
   * @param key Parameter name.
   * @param value Its value; never a secret (use `+FILE`).
   * @returns this
   */
  addArg(key: string, value: string): this {
    this.#params.push(`${key}=${value}`);
    return this;
  }

  /**
   * Whether the export is writable.
   * @param on True to allow writes. Sources stay read-only.
   * @returns this
   */
  writable(on: boolean): this {
    this.#readOnly = !on;
    return this;
  }

  /**
   * Sets the number of threads nbdkit serves with.
   * @param n Thread count.
   * @returns this
   */
  threads(n: number): this {
    this.#threads = n;
    return this;
  }

  /**
   * The arguments that {@linkcode Nbdkit.serve} passes, for a given socket.
   *
   * @param socket Unix socket path.
   * @returns The argument list (without the program name).
   */
  args(socket: string): string[] {
    const args = ["--foreground", "--exit-with-parent", "--unix", socket];
    if (this.#readOnly) args.push("--readonly");
    if (this.#threads !== undefined) args.push(`--threads=${this.#threads}`);
    for (const f of this.#filters) args.push(`--filter=${f}`);
    args.push(this.#plugin, ...this.#params);
    return args;
  }

  /**
   * Starts nbdkit on a unix socket and waits until it answers.
   *
   * @param socket Unix socket path (inside the run's private temporary directory).
   * @param options Name for messages, extra environment (e.g. `SSH_AUTH_SOCK` for the ssh
   * plugin; never a secret's value), an abort signal.
   * @returns The running server.
   */
  serve(
    socket: string,
    options: { name?: string; env?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<Server> {
    return startServer("nbdkit", this.args(socket), {
      socket,
      ready: nbdReady,
      name: options.name ?? `nbdkit (${this.#plugin})`,
      ...(options.env ? { env: options.env } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}
