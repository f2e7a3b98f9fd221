/**
 * The nbdkit commands that serve a vSphere VM's disks, read-only:
 *
 * - `-it https` (default): nbdkit's curl plugin on the datastore's
 *   `https://SERVER/folder/PATH?dcPath=DC&dsName=DS` URL, with the session cookie
 *   ({@linkcode curlDiskCommand});
 * - `-it vddk`: nbdkit's vddk plugin, VMware's VDDK library reading the disk through the host
 *   ({@linkcode vddkDiskCommand}).
 *
 * Secrets never go on the command line, which every local user can read: the session cookie is
 * `cookie=+FILE` and the password `password=+FILE` (files in the run's private directory, or the
 * user's `-ip` file), so that `-x` can print every argument as it is.
 *
 * `--bandwidth` becomes nbdkit's rate filter, always the outermost filter (nearest the client):
 * it limits what crosses the network, and nothing nbdkit does inside (retries, copy-on-write)
 * is counted twice. `--bandwidth-file` becomes `rate-file=`, which nbdkit re-reads while it runs.
 *
 * @module
 */

import { posix } from "node:path";
import { Nbdkit } from "../../nbdkit.ts";

/** The rate limit of `--bandwidth` / `--bandwidth-file`. */
export interface RateLimit {
  /** `--bandwidth`: bits per second (`rate=`). */
  bandwidth?: number;
  /** `--bandwidth-file`: a file holding the rate, re-read while running (`rate-file=`). */
  bandwidthFile?: string;
}

/** Options of {@linkcode curlDiskCommand}. */
export interface CurlDiskOptions extends RateLimit {
  /** A file holding the session cookie (`vmware_soap_session="..."`), in a private directory. */
  cookieFile: string;
  /** The CA certificates to verify the server with (`cainfo=`); the system's by default. */
  caFile?: string;
  /**
   * Do not verify the server's certificate (`sslverify=false`), as `?no_verify=1` asks.
   * @default false
   */
  noVerify?: boolean;
}

/**
 * The nbdkit command serving a file of a datastore over HTTPS:
 *
 *     nbdkit --readonly [--filter=rate] --filter=retry curl url=URL cookie=+FILE
 *            protocols=https [cainfo=CA | sslverify=false] [rate=BITS] [rate-file=FILE]
 *
 * @param url `https://SERVER/folder/PATH?dcPath=DC&dsName=DS`.
 * @param options The cookie file, TLS, rate limit.
 * @returns The command; `.args(socket)` gives its arguments.
 * @throws {RangeError} For a bandwidth that is not a positive whole number.
 * @example
 * ```ts
 * import { curlDiskCommand } from "./disk_servers.ts";
 * const args = curlDiskCommand("https://vc/folder/web/web-flat.vmdk?dcPath=DC&dsName=ds1", {
 *   cookieFile: "/run/vmshift/cookie",
 *   bandwidth: 20 * 2 ** 20,
 * }).args("/run/vmshift/in-sda.sock");
 * if (!args.includes("cookie=+/run/vmshift/cookie") || args.indexOf("--filter=rate") > args.indexOf("--filter=retry")) {
 *   throw new Error();
 * }
 * ```
 */
export function curlDiskCommand(url: string, options: CurlDiskOptions): Nbdkit {
  const cmd = new Nbdkit("curl").writable(false);
  addRate(cmd, options);
  // Next to the plugin: a dropped HTTPS connection is reopened and the request retried.
  cmd.addFilter("retry");
  cmd.addArg("url", url)
    .addArg("cookie", `+${posix.resolve(options.cookieFile)}`)
    .addArg("protocols", "https");
  if (options.noVerify) cmd.addArg("sslverify", "false");
  else if (options.caFile) cmd.addArg("cainfo", posix.resolve(options.caFile));
  addRateArgs(cmd, options);
  return cmd;
}

/** What `-io vddk-*` options say, and what vmshift found out. */
export interface VddkDiskOptions extends RateLimit {
  /** vCenter or ESXi (`server=`). */
  server: string;
  /** The user (`user=`). */
  user: string;
  /** The password file (`password=+FILE`), the user's `-ip`. */
  passwordFile: string;
  /** The server's SHA-1 thumbprint (`thumbprint=`), `-io vddk-thumbprint=` or computed. */
  thumbprint: string;
  /** The VM's moref (`vm=moref=`). */
  moref: string;
  /** The disk, `[datastore] path/disk.vmdk` (`file=`). */
  file: string;
  /** `-io vddk-libdir=`: where VDDK is (`libdir=`). */
  libdir?: string;
  /** `-io vddk-transports=`: e.g. `nbdssl:nbd` (`transports=`). */
  transports?: string;
  /** `-io vddk-config=`: a VDDK configuration file (`config=`). */
  config?: string;
  /** `-io vddk-cookie=`: a vCenter session cookie (`cookie=`); shows on nbdkit's command line. */
  cookie?: string;
  /** `-io vddk-nfchostport=`: the NFC port (`nfchostport=`). */
  nfchostport?: string;
  /** `-io vddk-port=`: the server's port (`port=`). */
  port?: string;
  /** `-io vddk-snapshot=`: read this snapshot's moref (`snapshot=`). */
  snapshot?: string;
}

/**
 * The nbdkit command serving a disk through VDDK. The filters, from the client inwards:
 *
 *     rate       outermost, so only what crosses the network is limited (with --bandwidth);
 *     cow        nothing is ever written to VDDK, even by mistake: writes would stay in
 *                nbdkit's memory (the server is read-only as well);
 *     blocksize  requests cut and aligned to what VDDK reads well (whole 512-byte sectors,
 *                at most 64 MiB);
 *     retry      next to the plugin: a dropped VDDK connection is reopened and the request
 *                retried, underneath everything else.
 *
 * @param options The server, credentials, disk and `-io vddk-*` options.
 * @returns The command.
 * @throws {RangeError} For a bandwidth that is not a positive whole number.
 * @example
 * ```ts
 * import { vddkDiskCommand } from "./disk_servers.ts";
 * const args = vddkDiskCommand({
 *   server: "vc.example", user: "administrator@vsphere.local", passwordFile: "/root/pw",
 *   thumbprint: "AA:BB", moref: "vm-42", file: "[ds1] web/web.vmdk",
 * }).args("/run/s.sock");
 * if (!args.includes("vm=moref=vm-42") || !args.includes("password=+/root/pw")) throw new Error();
 * ```
 */
export function vddkDiskCommand(options: VddkDiskOptions): Nbdkit {
  const cmd = new Nbdkit("vddk").writable(false);
  addRate(cmd, options);
  cmd.addFilter("cow");
  cmd.addFilter("blocksize");
  cmd.addFilter("retry");
  cmd.addArg("server", options.server)
    .addArg("user", options.user)
    .addArg("password", `+${posix.resolve(options.passwordFile)}`)
    .addArg("thumbprint", options.thumbprint)
    .addArg("vm", `moref=${options.moref}`)
    .addArg("file", options.file);
  const passthrough: Array<[keyof VddkDiskOptions, string]> = [
    ["libdir", "libdir"],
    ["transports", "transports"],
    ["config", "config"],
    ["cookie", "cookie"],
    ["nfchostport", "nfchostport"],
    ["port", "port"],
    ["snapshot", "snapshot"],
  ];
  for (const [key, param] of passthrough) {
    const v = options[key];
    if (typeof v === "string") cmd.addArg(param, v);
  }
  addRateArgs(cmd, options);
  return cmd;
}

function addRate(cmd: Nbdkit, limit: RateLimit): void {
  // Outermost, next to the client: limit what goes over the network, whatever is retried.
  if (limit.bandwidth !== undefined || limit.bandwidthFile !== undefined) cmd.addFilter("rate");
}

function addRateArgs(cmd: Nbdkit, limit: RateLimit): void {
  if (limit.bandwidth !== undefined) {
    if (!Number.isSafeInteger(limit.bandwidth) || limit.bandwidth < 1) {
      throw new RangeError(`Bad bandwidth ${limit.bandwidth}: expected bits per second`);
    }
    cmd.addArg("rate", String(limit.bandwidth));
  }
  if (limit.bandwidthFile !== undefined) {
    cmd.addArg("rate-file", posix.resolve(limit.bandwidthFile));
  }
}
