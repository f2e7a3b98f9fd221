/**
 * SSH file access for inputs that read a VM from a server over SSH (`-it ssh`, as virt-v2v's
 * `-i vmx -it ssh ssh://root@esxi/vmfs/volumes/ds/guest/guest.vmx`): small files (the `.vmx`,
 * VMDK descriptors) are read over SFTP through `npm:ssh2`; disk data is served by nbdkit's ssh
 * plugin (see `ssh_disk.ts`), never copied through this module.
 *
 * Host keys are checked the way OpenSSH checks them, against an OpenSSH known_hosts file
 * (default `~/.ssh/known_hosts`, then `/etc/ssh/ssh_known_hosts`; `[host]:port` and hashed
 * entries; ed25519, ecdsa and rsa keys):
 *
 * - a key the file holds for the server is accepted;
 * - an *unknown* key is refused, with its fingerprint and the two ways to go on: add it to the
 *   file with `ssh-keyscan`, or accept it for one run with
 *   `-io ssh-accept-unknown-host-key=true` ({@linkcode SshOptions.acceptUnknownHostKey});
 * - a *changed* key (the file holds another key of the same type for the server) or a key
 *   marked `@revoked` is refused always, whatever the options: a {@linkcode HostKeyError}.
 *
 * The key the session verified is what nbdkit must see too: {@linkcode SshSession.writeKnownHosts}
 * writes it to a known_hosts file for `nbdkit ssh known-hosts=FILE`, so that the data
 * connections trust exactly the key this session checked (and an accepted unknown key works
 * for them as well).
 *
 * Authentication is tried in the order ssh-agent ({@linkcode SshOptions.agent}), key file
 * ({@linkcode SshOptions.identity}, else the default `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`
 * without passphrase), password read from a file ({@linkcode SshOptions.passwordFile}, `-ip`).
 * Secrets never appear in messages.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { posix } from "node:path";
import { fsReason, UsageError } from "../errors.ts";
import {
  checkHostKey,
  fingerprint,
  type HostKeyCheck,
  keyBlobType,
  keyTypeLabel,
  knownHostsLine,
  knownHostsName,
  knownKeyTypes,
  parseKnownHosts,
} from "./known_hosts.ts";
import type { InputCli } from "./types.ts";

/** The `-io` option that accepts a server's unknown host key for one run. */
export const ACCEPT_UNKNOWN_HOST_KEY = "ssh-accept-unknown-host-key";
/** The `-io` option naming the known_hosts file to check host keys against. */
export const KNOWN_HOSTS_OPTION = "ssh-known-hosts";
/** The `-io` option naming the private key file to log in with. */
export const IDENTITY_OPTION = "ssh-identity";

/** A parsed `ssh://[user@]host[:port]/path` URI. */
export interface SshUri {
  /** The user name; the local user when the URI has none. */
  user: string;
  /** Host name or address (IPv6 without brackets). */
  host: string;
  /** The port. @default 22 */
  port: number;
  /** The path, percent-decoded; absolute, or relative to the user's login directory. */
  path: string;
}

/** Options for {@linkcode openSsh}. */
export interface SshOptions {
  /**
   * A file holding the password (`-ip`). Read as nbdkit reads `password=+FILE`: the first
   * line, without its newline.
   */
  passwordFile?: string;
  /**
   * A private key file without passphrase. When not given, the default keys in `~/.ssh`
   * that exist and have no passphrase are tried, as ssh and nbdkit try them. A key with a
   * passphrase belongs in ssh-agent.
   */
  identity?: string;
  /** The ssh-agent socket (`SSH_AUTH_SOCK`). No agent when not given. */
  agent?: string;
  /**
   * The known_hosts file.
   * @default `~/.ssh/known_hosts`, then `/etc/ssh/ssh_known_hosts`
   */
  knownHosts?: string;
  /**
   * Accept a host key that the known_hosts file does not hold (`-io
   * ssh-accept-unknown-host-key=true`). A changed or revoked key is refused all the same.
   * @default false
   */
  acceptUnknownHostKey?: boolean;
  /** Aborts the connection attempt, and closes the session later, when signalled. */
  signal?: AbortSignal;
  /**
   * How long the connection and login may take, in milliseconds.
   * @default 20000
   */
  timeoutMs?: number;
  /** Prints a debug message (`-v`). */
  debug?: (message: string) => void;
  /** Tells the user something that does not stop the run (an accepted unknown key). */
  warning?: (message: string) => void;
}

/** What {@linkcode SshSession.stat} returns. */
export interface SshStat {
  /** Size in bytes. */
  size: number;
  /** True for a regular file. */
  isFile: boolean;
}

/** The host key a session verified. */
export interface SshHostKey {
  /** Key type, e.g. `ssh-ed25519`. */
  type: string;
  /** `SHA256:...`, as OpenSSH prints it. */
  fingerprint: string;
  /** The key as a known_hosts line for this server (`[host]:port TYPE BASE64`). */
  knownHostsLine: string;
  /** `known`: found in the known_hosts file; `accepted`: unknown, accepted by option. */
  status: "known" | "accepted";
}

/** A host key that vmshift refuses: unknown (without the option), changed, or revoked. */
export class HostKeyError extends Error {
  /** Why the key was refused. */
  readonly status: "unknown" | "changed" | "revoked";
  /** The refused key's fingerprint. */
  readonly fingerprint: string;

  /**
   * @param message The message.
   * @param status Why the key was refused.
   * @param fingerprint The refused key's fingerprint.
   */
  constructor(message: string, status: HostKeyError["status"], fingerprint: string) {
    super(message);
    this.name = "HostKeyError";
    this.status = status;
    this.fingerprint = fingerprint;
  }
}

/**
 * Parses an `ssh://[user@]host[:port]/path` URI.
 *
 * @param uri The URI.
 * @returns User, host, port and path.
 * @throws {UsageError} When it is not such a URI, or holds a password.
 * @example
 * ```ts
 * import { parseSshUri } from "./ssh.ts";
 * const u = parseSshUri("ssh://root@esxi:2222/vmfs/volumes/ds1/g%20x/g.vmx");
 * if (u.port !== 2222 || u.path !== "/vmfs/volumes/ds1/g x/g.vmx") throw new Error();
 * ```
 */
export function parseSshUri(uri: string): SshUri {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new UsageError(`Bad SSH URI "${uri}": expected ssh://USER@HOST[:PORT]/PATH`);
  }
  if (url.protocol !== "ssh:" || !url.hostname) {
    throw new UsageError(`Bad SSH URI "${uri}": expected ssh://USER@HOST[:PORT]/PATH`);
  }
  if (url.password) {
    url.password = "";
    throw new UsageError(
      `Bad SSH URI "${url.href}": give the password in a file (-ip FILE), not in the URI`,
    );
  }
  if (url.search || url.hash) {
    throw new UsageError(`Bad SSH URI "${uri}": the URI takes no query or fragment`);
  }
  let path: string;
  try {
    path = decodeURIComponent(url.pathname);
  } catch {
    throw new UsageError(`Bad SSH URI "${uri}": bad percent-encoding in the path`);
  }
  // ssh://host/~/x and ssh://host/./x name paths relative to the login directory.
  if (path.startsWith("/~/") || path.startsWith("/./")) path = path.slice(3);
  if (path === "" || path === "/") {
    throw new UsageError(`Bad SSH URI "${uri}": no path to read`);
  }
  return {
    user: url.username ? decodeURIComponent(url.username) : localUser(),
    host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: url.port ? Number(url.port) : 22,
    path,
  };
}

/**
 * The URI of a server (and optionally a path), for messages: `ssh://user@host[:port]`; the
 * port is shown when it is not 22.
 *
 * @param server User, host and port.
 * @param path A path on the server.
 * @returns The URI.
 */
export function formatSshUri(
  server: Pick<SshUri, "user" | "host" | "port">,
  path?: string,
): string {
  const host = server.host.includes(":") ? `[${server.host}]` : server.host;
  const port = server.port === 22 ? "" : `:${server.port}`;
  const p = path === undefined ? "" : path.startsWith("/") ? path : `/~/${path}`;
  return `ssh://${encodeURIComponent(server.user)}@${host}${port}${encodeURI(p)}`;
}

/** The SSH options of the input command line, and the `-io` options left for the mode. */
export interface SshInputOptions {
  /** For {@linkcode openSsh} and `serveSshDisk`, without signal, debug and warning. */
  ssh: Omit<SshOptions, "signal" | "debug" | "warning" | "timeoutMs">;
  /** The `-io` options that are not SSH options, in order. */
  rest: Array<[string, string]>;
}

/**
 * Takes the SSH options from the input command line: `-ip` (password file),
 * `-io ssh-accept-unknown-host-key=true`, `-io ssh-known-hosts=FILE`,
 * `-io ssh-identity=FILE`, and `SSH_AUTH_SOCK` from the environment.
 *
 * @param cli The parsed input options.
 * @returns The SSH options and the other `-io` options.
 * @throws {UsageError} For a bad value.
 * @example
 * ```ts
 * import { sshInputOptions } from "./ssh.ts";
 * const { ssh, rest } = sshInputOptions({
 *   mode: "vmx",
 *   args: [],
 *   options: [["ssh-accept-unknown-host-key", "true"], ["other", "1"]],
 * });
 * if (!ssh.acceptUnknownHostKey || rest.length !== 1) throw new Error();
 * ```
 */
export function sshInputOptions(cli: InputCli): SshInputOptions {
  const ssh: SshInputOptions["ssh"] = {};
  const rest: Array<[string, string]> = [];
  for (const [key, value] of cli.options) {
    if (key === ACCEPT_UNKNOWN_HOST_KEY) {
      const v = value.toLowerCase();
      if (["", "true", "yes", "1", "on"].includes(v)) ssh.acceptUnknownHostKey = true;
      else if (["false", "no", "0", "off"].includes(v)) ssh.acceptUnknownHostKey = false;
      else throw new UsageError(`Bad -io ${key}="${value}": expected true or false`);
    } else if (key === KNOWN_HOSTS_OPTION || key === IDENTITY_OPTION) {
      if (!value) throw new UsageError(`Bad -io ${key}: expected ${key}=FILE`);
      if (key === KNOWN_HOSTS_OPTION) ssh.knownHosts = posix.resolve(value);
      else ssh.identity = posix.resolve(value);
    } else rest.push([key, value]);
  }
  if (cli.passwordFile !== undefined) ssh.passwordFile = posix.resolve(cli.passwordFile);
  const agent = Deno.env.get("SSH_AUTH_SOCK");
  if (agent) ssh.agent = agent;
  return { ssh, rest };
}

/** An open SSH connection with an SFTP channel; close it or dispose it. */
export class SshSession implements AsyncDisposable {
  /** The server and path of the URI the session was opened with. */
  readonly target: SshUri;
  /** The host key the session verified. */
  readonly hostKey: SshHostKey;
  /** How the session logged in. */
  readonly authMethod: "none" | "agent" | "publickey" | "password";
  #conn: SshClient;
  #sftp: Sftp;
  #closed: Promise<void>;
  #signal: AbortSignal | undefined;
  #onAbort = () => void this.close();

  /** @internal Use {@linkcode openSsh}. */
  constructor(
    target: SshUri,
    hostKey: SshHostKey,
    authMethod: SshSession["authMethod"],
    conn: SshClient,
    sftp: Sftp,
    closed: Promise<void>,
    signal: AbortSignal | undefined,
  ) {
    this.target = target;
    this.hostKey = hostKey;
    this.authMethod = authMethod;
    this.#conn = conn;
    this.#sftp = sftp;
    this.#closed = closed;
    this.#signal = signal;
    signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /** `ssh://user@host[:port]`, for messages. */
  get server(): string {
    return formatSshUri(this.target);
  }

  /**
   * A path relative to the directory of the URI's path (as a `.vmx` names its disks), or an
   * absolute path unchanged.
   *
   * @param path The path.
   * @returns The path on the server.
   */
  resolve(path: string): string {
    if (path.startsWith("/")) return posix.normalize(path);
    return posix.join(posix.dirname(this.target.path), path);
  }

  /**
   * The `ssh://` URI of a path on this server (for `serveSshDisk`).
   *
   * @param path A path; relative ones are resolved with {@linkcode SshSession.resolve}.
   * @returns The URI.
   */
  uriFor(path: string): string {
    return formatSshUri(this.target, this.resolve(path));
  }

  /**
   * Size and type of a file.
   *
   * @param path The path on the server.
   * @returns Size and whether it is a regular file.
   * @throws {Error} When it does not exist or cannot be read.
   */
  async stat(path: string): Promise<SshStat> {
    const st = await this.#call<SftpStats>(
      `Cannot open "${path}"`,
      (cb) => this.#sftp.stat(path, cb),
    );
    return { size: Number(st.size), isFile: st.isFile() };
  }

  /**
   * Reads a range of a file. The result is shorter than `length` only at the end of the file.
   *
   * @param path The path on the server.
   * @param offset Byte offset.
   * @param length Byte count.
   * @returns The bytes.
   * @throws {Error} When the file cannot be read.
   */
  async read(path: string, offset: number, length: number): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0
    ) {
      throw new RangeError(`Cannot read "${path}": bad range ${offset}+${length}`);
    }
    const handle = await this.#call<Buffer>(
      `Cannot open "${path}"`,
      (cb) => this.#sftp.open(path, "r", cb),
    );
    try {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = await this.#call<number>(
          `Cannot read "${path}"`,
          (cb) => this.#sftp.read(handle, buf, done, length - done, offset + done, cb),
        );
        if (!n) break;
        done += n;
      }
      return new Uint8Array(buf.buffer, buf.byteOffset, done);
    } finally {
      await this.#call<void>(`Cannot close "${path}"`, (cb) => this.#sftp.close(handle, cb))
        .catch(() => {});
    }
  }

  /**
   * Reads a whole small file.
   *
   * @param path The path on the server.
   * @param maxBytes The largest size accepted.
   * @returns The bytes.
   * @throws {Error} When the file cannot be read, is not a regular file, or is larger than
   * `maxBytes`.
   */
  async readFile(path: string, maxBytes: number): Promise<Uint8Array> {
    const st = await this.stat(path);
    if (!st.isFile) throw new Error(`Cannot read "${path}" on ${this.server}: not a file`);
    if (st.size > maxBytes) {
      throw new Error(
        `Cannot read "${path}" on ${this.server}: it is ${st.size} bytes, more than the ` +
          `${maxBytes} expected`,
      );
    }
    const data = await this.read(path, 0, Math.min(st.size, maxBytes) + 1);
    if (data.length > maxBytes) {
      throw new Error(`Cannot read "${path}" on ${this.server}: it grew past ${maxBytes} bytes`);
    }
    return data;
  }

  /**
   * Writes the verified host key to a known_hosts file (mode 0600), for `nbdkit ssh
   * known-hosts=FILE`: the data connections then trust exactly this key.
   *
   * @param file The file to write (in the run's private directory).
   */
  async writeKnownHosts(file: string): Promise<void> {
    await Deno.writeTextFile(file, this.hostKey.knownHostsLine + "\n", { mode: 0o600 });
  }

  /** Closes the SFTP channel and the connection. */
  async close(): Promise<void> {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    try {
      this.#sftp.end();
    } catch {
      // Already closed with the connection.
    }
    this.#conn.end();
    if (!(await settled(this.#closed))) {
      this.#conn.destroy();
      await settled(this.#closed);
    }
  }

  /** Same as {@linkcode SshSession.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #call<T>(what: string, fn: (cb: (err: SftpError | undefined, value: T) => void) => void) {
    return new Promise<T>((resolve, reject) => {
      try {
        fn((err, value) => {
          if (err) {
            reject(new Error(`${what} on ${this.server}: ${sftpReason(err)}`, { cause: err }));
          } else resolve(value);
        });
      } catch (e) {
        reject(new Error(`${what} on ${this.server}: ${(e as Error).message}`, { cause: e }));
      }
    });
  }
}

/**
 * Connects to an SSH server, checks its host key, logs in and opens an SFTP channel.
 *
 * @param uri `ssh://[user@]host[:port]/path`; the path is the session's
 * {@linkcode SshSession.target}, against which relative paths resolve.
 * @param options Credentials, known_hosts, abort signal.
 * @returns The session; dispose it to close the connection.
 * @throws {HostKeyError} When the host key is unknown (without
 * {@linkcode SshOptions.acceptUnknownHostKey}), changed or revoked.
 * @throws {Error} When the server cannot be reached, refuses every credential (`Cannot log in
 * to ssh://user@host:port: authentication failed`) or has no SFTP.
 */
export async function openSsh(uri: string, options: SshOptions = {}): Promise<SshSession> {
  const target = parseSshUri(uri);
  const server = formatSshUri(target);
  const signal = options.signal;
  signal?.throwIfAborted();
  const debug = options.debug ?? (() => {});

  const knownHostsFiles = options.knownHosts
    ? [options.knownHosts]
    : [`${homeDir()}/.ssh/known_hosts`, "/etc/ssh/ssh_known_hosts"];
  const knownHosts = await Promise.all(knownHostsFiles.map(async (file) => {
    try {
      return { file, entries: parseKnownHosts(await Deno.readTextFile(file)) };
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return { file, entries: [] };
      throw new Error(`Cannot read the known hosts file "${file}": ${(e as Error).message}`);
    }
  }));
  const knownTypes = knownHosts.flatMap((k) => knownKeyTypes(k.entries, target.host, target.port));

  const methods = await authMethods(options, debug);
  if (methods.length === 0) {
    throw new UsageError(
      `Cannot log in to ${server}: no credentials; use ssh-agent (SSH_AUTH_SOCK), ` +
        `a key (-io ${IDENTITY_OPTION}=FILE) or a password file (-ip FILE)`,
    );
  }

  const { Client } = await loadSsh2();
  const conn: SshClient = new Client();
  let refused: Error | undefined;
  let hostKey: SshHostKey | undefined;
  const tried: string[] = [];
  const skipped: string[] = [];
  let offered: string[] = [];
  let current: AuthMethod | undefined;
  const closed = new Promise<void>((resolve) => conn.once("close", () => resolve()));

  const hostVerifier = (key: Buffer): boolean => {
    const blob = new Uint8Array(key);
    const type = keyBlobType(blob);
    const fp = fingerprint(blob);
    const label = `${keyTypeLabel(type)} key ${fp}`;
    // Over all files: a revoked key is refused even if another file knows it; a key known in
    // one file is accepted even if another holds an older one.
    const checks = knownHosts.map((k) => ({
      ...checkHostKey(k.entries, target.host, target.port, blob),
      file: k.file,
    }));
    const pick = (status: HostKeyCheck["status"]) => checks.find((c) => c.status === status);
    const check = pick("revoked") ?? pick("known") ?? pick("changed");
    const line = knownHostsLine(target.host, target.port, blob);
    if (check?.status === "known") {
      debug(`${server}: host key ${label} found in "${check.file}" line ${check.line}`);
      hostKey = { type, fingerprint: fp, knownHostsLine: line, status: "known" };
      return true;
    }
    if (check?.status === "changed") {
      refused = new HostKeyError(
        `Cannot connect to ${server}: WARNING: THE SERVER'S HOST KEY HAS CHANGED. ` +
          `Someone could be eavesdropping on you right now (man-in-the-middle attack), or the ` +
          `server's key was replaced. The server sent ${label}; "${check.file}" line ` +
          `${check.line} holds another ${keyTypeLabel(type)} key for this server. vmshift ` +
          `refuses to connect, whatever the options. If the new key is right, remove the old ` +
          `one with: ssh-keygen -R "${knownHostsName(target.host, target.port)}" -f ` +
          `"${check.file}"`,
        "changed",
        fp,
      );
      return false;
    }
    if (check?.status === "revoked") {
      refused = new HostKeyError(
        `Cannot connect to ${server}: the server's host key ${label} is marked @revoked in ` +
          `"${check.file}" line ${check.line}; vmshift refuses to connect`,
        "revoked",
        fp,
      );
      return false;
    }
    if (options.acceptUnknownHostKey) {
      options.warning?.(
        `Accepted the unknown host key ${label} of ${server} (-io ${ACCEPT_UNKNOWN_HOST_KEY}=true)`,
      );
      hostKey = { type, fingerprint: fp, knownHostsLine: line, status: "accepted" };
      return true;
    }
    const file = knownHostsFiles[0]!;
    const others = knownTypes.length
      ? ` (it holds ${knownTypes.map(keyTypeLabel).join(", ")} keys for this server, which ` +
        `the server did not offer)`
      : "";
    const port = target.port === 22 ? "" : `-p ${target.port} `;
    refused = new HostKeyError(
      `Cannot connect to ${server}: the server's host key is not known: ${label} is not in ` +
        `"${file}"${others}. Check the fingerprint with the server's administrator, then add ` +
        `the key: ssh-keyscan ${port}-t ${type.replace(/^ssh-/, "")} ${target.host} >> ` +
        `"${file}", or accept it for this run: -io ${ACCEPT_UNKNOWN_HOST_KEY}=true`,
      "unknown",
      fp,
    );
    return false;
  };

  const queue = [...methods];
  const authHandler = (
    methodsLeft: string[] | null,
    _partial: boolean | null,
    next: (m: Record<string, unknown> | false) => void,
  ) => {
    // Ask first with "none", as OpenSSH does: the answer lists the methods the server takes.
    if (methodsLeft === null) return next({ type: "none", username: target.user });
    offered = methodsLeft;
    while (queue.length) {
      const m = queue.shift()!;
      if (!methodsLeft.includes(m.type === "agent" ? "publickey" : m.type)) {
        debug(`${server}: the server does not take ${m.label}`);
        skipped.push(m.label);
        continue;
      }
      current = m;
      tried.push(m.label);
      debug(`${server}: trying ${m.label}`);
      return next({ username: target.user, ...m.auth });
    }
    return next(false);
  };

  const onAbort = () => conn.destroy();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await new Promise<void>((resolve, reject) => {
      conn.on("error", (err: SshError) => {
        // ssh2 reports a failed agent or key, then goes on with the next method.
        if (
          err.level === "agent" || (err.level === "client-authentication" &&
            !/All configured authentication methods failed/.test(err.message))
        ) {
          debug(`${server}: ${current?.label ?? "authentication"}: ${err.message}`);
          return;
        }
        reject(err);
      });
      conn.once("ready", () => resolve());
      conn.once("close", () => reject(new Error("the connection was closed")));
      conn.connect({
        host: target.host,
        port: target.port,
        username: target.user,
        readyTimeout: options.timeoutMs ?? 20_000,
        hostVerifier,
        authHandler,
        algorithms: { serverHostKey: hostKeyAlgorithms(knownTypes) },
      });
    });
  } catch (e) {
    conn.destroy();
    await settled(closed);
    signal?.throwIfAborted();
    if (refused) throw refused;
    const err = e as SshError;
    if (err.level === "client-authentication") {
      // nbdkit's ssh plugin (libssh) logs in with none, publickey or password only, so
      // keyboard-interactive (which some ESXi hosts use for passwords) is not tried here either.
      const notTaken = skipped.length
        ? `; the server takes only ${offered.join(", ")}, not ${skipped.join(", ")}`
        : "";
      throw new Error(
        `Cannot log in to ${server}: authentication failed (tried ${
          tried.join(", ") || "nothing"
        }${notTaken})`,
      );
    }
    throw new Error(`Cannot connect to ${server}: ${connectReason(err)}`, { cause: e });
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  debug(`${server}: logged in with ${current?.label ?? "no credentials (none)"}`);

  let sftp: Sftp;
  try {
    sftp = await new Promise<Sftp>((resolve, reject) =>
      conn.sftp((err: Error | undefined, s: Sftp) => (err ? reject(err) : resolve(s)))
    );
  } catch (e) {
    conn.end();
    await settled(closed);
    throw new Error(`Cannot open SFTP on ${server}: ${(e as Error).message}`, { cause: e });
  }
  return new SshSession(
    target,
    hostKey!,
    current?.type ?? "none",
    conn,
    sftp,
    closed,
    signal,
  );
}

/**
 * Reads a password file as nbdkit reads `password=+FILE`: the first line, without its
 * newline, so that vmshift and nbdkit log in with the same password.
 *
 * @param file The file (`-ip`).
 * @returns The password.
 * @throws {UsageError} When the file cannot be read or is empty.
 */
export async function readPasswordFile(file: string): Promise<string> {
  let text: string;
  try {
    if ((await Deno.stat(file)).size > 64 * 1024) {
      throw new UsageError(`The password file "${file}" (-ip) is too large`);
    }
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`Cannot read the password file "${file}" (-ip): ${fsReason(e)}`);
  }
  const password = text.split("\n")[0]!;
  if (!password) throw new UsageError(`The password file "${file}" (-ip) is empty`);
  return password;
}

interface AuthMethod {
  type: "agent" | "publickey" | "password";
  label: string;
  auth: Record<string, unknown>;
}

async function authMethods(
  options: SshOptions,
  debug: (m: string) => void,
): Promise<AuthMethod[]> {
  const out: AuthMethod[] = [];
  if (options.agent) {
    out.push({ type: "agent", label: "ssh-agent", auth: { type: "agent", agent: options.agent } });
  }
  const keys = options.identity ? [options.identity] : ["id_ed25519", "id_ecdsa", "id_rsa"].map((
    k,
  ) => `${homeDir()}/.ssh/${k}`);
  for (const file of keys) {
    let data: Uint8Array;
    try {
      data = await Deno.readFile(file);
    } catch (e) {
      if (!options.identity) continue;
      const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
      throw new UsageError(`Cannot read the SSH key "${file}": ${why}`);
    }
    const { utils } = await loadSsh2();
    const parsed = utils.parseKey(Buffer.from(data));
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    if (!key || key instanceof Error || !key.isPrivateKey()) {
      const encrypted = key instanceof Error && /encrypted|passphrase/i.test(key.message);
      const why = encrypted
        ? `it has a passphrase; add it to ssh-agent (ssh-add "${file}") instead`
        : "not a private key ssh2 can read";
      if (!options.identity) {
        debug(`Skipping the SSH key "${file}": ${why}`);
        continue;
      }
      throw new UsageError(`Cannot use the SSH key "${file}": ${why}`);
    }
    out.push({ type: "publickey", label: `key "${file}"`, auth: { type: "publickey", key } });
  }
  if (options.passwordFile) {
    const password = await readPasswordFile(options.passwordFile);
    out.push({
      type: "password",
      label: `password from "${options.passwordFile}"`,
      auth: { type: "password", password },
    });
  }
  return out;
}

/** Host key algorithms, those the known_hosts file can check first, as OpenSSH orders them. */
function hostKeyAlgorithms(knownTypes: readonly string[]): string[] {
  const all = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
  ];
  const algs = (type: string) =>
    type === "ssh-rsa" ? ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] : [type];
  const first = knownTypes.flatMap(algs).filter((a) => all.includes(a));
  return [...new Set([...first, ...all])];
}

/** Waits for a promise, at most 2 s; tells whether it settled. */
async function settled(p: Promise<void>): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 2000))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function connectReason(err: SshError): string {
  const code = (err as { code?: string }).code;
  if (code === "ECONNREFUSED") return "connection refused";
  if (code === "ENOTFOUND" || err.level === "client-dns") return "unknown host";
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH") return "host unreachable";
  if (err.level === "client-timeout") return "timed out";
  return err.message;
}

function sftpReason(err: SftpError): string {
  switch (err.code) {
    case 2:
      return "no such file";
    case 3:
      return "permission denied";
    default:
      return err.message;
  }
}

function homeDir(): string {
  return Deno.env.get("HOME") ?? "/root";
}

function localUser(): string {
  return Deno.env.get("USER") ?? Deno.env.get("LOGNAME") ?? "root";
}

// The parts of npm:ssh2 vmshift uses (it ships no types).
interface SshError extends Error {
  level?: string;
}
interface SftpError extends Error {
  code?: number | string;
}
interface SftpStats {
  size: number | bigint;
  isFile(): boolean;
}
type Cb<T> = (err: SftpError | undefined, value: T) => void;
interface Sftp {
  stat(path: string, cb: Cb<SftpStats>): void;
  open(path: string, flags: string, cb: Cb<Buffer>): void;
  read(handle: Buffer, buf: Buffer, off: number, len: number, pos: number, cb: Cb<number>): void;
  close(handle: Buffer, cb: Cb<void>): void;
  end(): void;
}
/**
 * ssh2, loaded on first use: it is the largest module vmshift imports, and only `-it ssh`
 * needs it (measured: 50 ms of every run's start-up when imported eagerly).
 */
function loadSsh2(): Promise<typeof import("ssh2")> {
  return import("ssh2");
}

interface SshClient {
  on(event: "error", fn: (err: SshError) => void): void;
  once(event: string, fn: () => void): void;
  connect(config: Record<string, unknown>): void;
  sftp(cb: (err: Error | undefined, sftp: Sftp) => void): void;
  end(): void;
  destroy(): void;
}
