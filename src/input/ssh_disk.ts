/**
 * Serves a file on an SSH server (a VMDK flat extent, a raw disk) read-only over NBD, with
 * nbdkit's ssh plugin: the disk data flows from the server's SFTP subsystem through nbdkit to
 * the qcow2 overlay and the copy, and never through vmshift itself.
 *
 *     nbdkit --readonly --filter=rate --filter=retry ssh host= port= user= path=
 *            known-hosts= [identity=] [password=+FILE] verify-remote-host=true
 *            [rate=BITS] [rate-file=FILE]
 *
 * The host key is always verified (`verify-remote-host=true`) against `known-hosts=`; pass the
 * file {@linkcode SshSession.writeKnownHosts} wrote, so that nbdkit trusts exactly the key the
 * session checked. The password goes in as `password=+FILE`, never as a value. nbdkit's
 * libssh also uses `SSH_AUTH_SOCK`, the default keys in `~/.ssh` and `~/.ssh/config`, as ssh
 * does.
 *
 * `--bandwidth` becomes nbdkit's rate filter: `rate=BITS` (bits per second, for the whole
 * server) and, with `--bandwidth-file FILE`, `rate-file=FILE`, which nbdkit re-reads while it
 * runs (about once a second) so that the rate can change in flight; write the file atomically
 * (write another file, rename it over). nbdkit parses the file's rate with its own suffixes
 * (`10M` = 10 × 2²⁰ bits/s). The rate filter lets a client burst for its first 2 seconds'
 * worth of data (`burstiness`, default 2 s) when `rate=` is given.
 *
 * @module
 */

import { posix } from "node:path";
import { Nbdkit } from "../nbdkit.ts";
import { NbdClient } from "../nbd/client.ts";
import type { Server } from "../process.ts";
import { parseSshUri } from "./ssh.ts";

/** Options for {@linkcode serveSshDisk} and {@linkcode sshDiskCommand}. */
export interface SshDiskOptions {
  /** The known_hosts file holding the server's key. @default libssh's, `~/.ssh/known_hosts` */
  knownHosts?: string;
  /** A private key file without passphrase (`identity=`). */
  identity?: string;
  /** A file holding the password (`password=+FILE`), as `-ip`. */
  passwordFile?: string;
  /** The ssh-agent socket, given to nbdkit as `SSH_AUTH_SOCK`. */
  agent?: string;
  /** `--bandwidth`: the read rate limit in bits per second (`rate=`). */
  bandwidth?: number;
  /** `--bandwidth-file`: a file holding the rate, re-read while nbdkit runs (`rate-file=`). */
  bandwidthFile?: string;
}

/** Options for {@linkcode serveSshDisk}. */
export interface ServeSshDiskOptions extends SshDiskOptions {
  /** The unix socket to serve on, in the run's private directory. */
  socket: string;
  /** Name for messages. @default `nbdkit (ssh "URI")` */
  name?: string;
  /** Aborts the start and stops the server later. */
  signal?: AbortSignal;
}

/**
 * The nbdkit command for a remote file, filters in their fixed order.
 *
 * @param uri `ssh://[user@]host[:port]/path` of the file ({@linkcode SshSession.uriFor}).
 * @param options Credentials, known_hosts, bandwidth.
 * @returns The command builder; `.args(socket)` gives the argument list.
 * @throws {UsageError} When the URI is not an ssh URI.
 * @example
 * ```ts
 * import { sshDiskCommand } from "./ssh_disk.ts";
 * const args = sshDiskCommand("ssh://root@esxi/vmfs/volumes/ds/g/g-flat.vmdk", {
 *   knownHosts: "/run/vmshift/known_hosts",
 *   bandwidth: 10_000_000,
 * }).args("/run/vmshift/in-sda.sock");
 * if (!args.includes("rate=10000000") || !args.includes("verify-remote-host=true")) {
 *   throw new Error();
 * }
 * ```
 */
export function sshDiskCommand(uri: string, options: SshDiskOptions = {}): Nbdkit {
  const target = parseSshUri(uri);
  const limited = options.bandwidth !== undefined || options.bandwidthFile !== undefined;
  const cmd = new Nbdkit("ssh").writable(false);
  // Outermost, next to the client: limit what goes over the network, whatever is retried.
  if (limited) cmd.addFilter("rate");
  // Next to the plugin: reopen the SSH connection after a network hiccup and retry the request.
  cmd.addFilter("retry");

  cmd.addArg("host", target.host)
    .addArg("port", String(target.port))
    .addArg("user", target.user)
    .addArg("path", target.path)
    .addArg("verify-remote-host", "true");
  if (options.knownHosts) cmd.addArg("known-hosts", libsshPath(options.knownHosts));
  if (options.identity) cmd.addArg("identity", libsshPath(options.identity));
  if (options.passwordFile) cmd.addArg("password", `+${posix.resolve(options.passwordFile)}`);
  if (options.bandwidth !== undefined) {
    if (!Number.isSafeInteger(options.bandwidth) || options.bandwidth < 1) {
      throw new RangeError(`Bad bandwidth ${options.bandwidth}: expected bits per second`);
    }
    cmd.addArg("rate", String(options.bandwidth));
  }
  if (options.bandwidthFile !== undefined) {
    cmd.addArg("rate-file", posix.resolve(options.bandwidthFile));
  }
  return cmd;
}

/**
 * The nbdkit arguments for a remote file (for tests and `-x`).
 *
 * @param uri `ssh://[user@]host[:port]/path` of the file.
 * @param socket The unix socket.
 * @param options Credentials, known_hosts, bandwidth.
 * @returns The argument list, without the program name.
 */
export function sshDiskArgs(uri: string, socket: string, options: SshDiskOptions = {}): string[] {
  return sshDiskCommand(uri, options).args(socket);
}

/**
 * Starts nbdkit serving a remote file read-only, and opens the export once, so that a refused
 * host key or a failed login shows now, with nbdkit's own words, rather than at the first
 * read (nbdkit's ssh plugin connects when a client opens the export, not when it starts).
 *
 * @param uri `ssh://[user@]host[:port]/path` of the file.
 * @param options Socket, credentials, known_hosts, bandwidth, signal.
 * @returns The server; its `.uri` is the NBD URI; dispose it to stop it.
 * @throws {Error} When nbdkit cannot start or cannot open the remote file; the message quotes
 * nbdkit's stderr.
 */
export async function serveSshDisk(uri: string, options: ServeSshDiskOptions): Promise<Server> {
  const server = await sshDiskCommand(uri, options).serve(options.socket, {
    name: options.name ?? `nbdkit (ssh "${uri}")`,
    ...(options.agent ? { env: { SSH_AUTH_SOCK: options.agent } } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  try {
    const probe = await NbdClient.connect(server.uri, {
      name: server.name,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    await probe.close();
  } catch (e) {
    // Let nbdkit finish writing why before it is stopped.
    await new Promise((r) => setTimeout(r, 50));
    const said = server.stderr.trim().split("\n").filter((l) => l.trim()).slice(-3).join("; ");
    await server.stop();
    options.signal?.throwIfAborted();
    throw new Error(`Cannot open "${uri}" with nbdkit: ${said || (e as Error).message}`, {
      cause: e,
    });
  }
  return server;
}

/** An absolute path with libssh's `%` expansion escaped (`%%`, libssh ≥ 0.9). */
function libsshPath(path: string): string {
  return posix.resolve(path).replaceAll("%", "%%");
}
