/**
 * The `-ic` URI of a vSphere server, as virt-v2v and libvirt spell it:
 *
 *     vpx://USER@VCENTER[:PORT]/[FOLDER/...]DATACENTER[/CLUSTER]/HOST[?no_verify=1]
 *     esx://USER@ESXI[:PORT][?no_verify=1]
 *
 * The user may be percent-encoded (`administrator%40vsphere.local@vcenter`). The path of a
 * `vpx://` URI names the datacenter (and where in it the host is); vmshift uses it to look for
 * the VM in that datacenter only, and otherwise finds the datacenter from the VM itself.
 *
 * @module
 */

import { UsageError } from "../../errors.ts";

/** A parsed `-ic` URI. */
export interface VsphereUri {
  /** `vpx` (vCenter) or `esx` (an ESXi host). */
  scheme: "vpx" | "esx";
  /** The server's name or address (IPv6 without brackets). */
  host: string;
  /** The HTTPS port. @default 443 */
  port: number;
  /** The user, decoded. */
  user?: string;
  /** The path's components, decoded (vpx: datacenter, cluster, host). */
  path: string[];
  /** `?no_verify=1`: do not check the server's TLS certificate. */
  noVerify: boolean;
}

/**
 * Parses an `-ic` URI.
 *
 * @param uri The URI.
 * @returns The parts.
 * @throws {UsageError} For another scheme, a missing host, a password in the URI, a bad port.
 * @example
 * ```ts
 * import { parseVsphereUri } from "./uri.ts";
 * const u = parseVsphereUri("vpx://administrator%40vsphere.local@vc.example/DC/Cluster/esx1?no_verify=1");
 * if (u.user !== "administrator@vsphere.local" || u.path[0] !== "DC" || !u.noVerify) {
 *   throw new Error();
 * }
 * ```
 */
export function parseVsphereUri(uri: string): VsphereUri {
  const m = uri.match(/^([a-z]+):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?$/i);
  const scheme = m?.[1]?.toLowerCase();
  if (!m || (scheme !== "vpx" && scheme !== "esx")) {
    throw new UsageError(
      `Bad -ic "${redact(uri)}": expected vpx://USER@VCENTER/DATACENTER/CLUSTER/HOST or ` +
        "esx://USER@ESXI",
    );
  }
  let authority = m[2]!;
  let user: string | undefined;
  const at = authority.lastIndexOf("@");
  if (at >= 0) {
    const info = authority.slice(0, at);
    authority = authority.slice(at + 1);
    if (info.includes(":")) {
      throw new UsageError(
        `Bad -ic "${redact(uri)}": do not put the password in the URI; give it in a file with -ip`,
      );
    }
    user = decode(info, uri);
  }
  let host = authority;
  let port = 443;
  const hp = authority.match(/^(\[[^\]]+\]|[^:]*)(?::(\d*))?$/);
  if (hp) {
    host = hp[1]!.replace(/^\[|\]$/g, "");
    if (hp[2] !== undefined && hp[2] !== "") {
      port = Number(hp[2]);
      if (!(port >= 1 && port <= 65535)) {
        throw new UsageError(`Bad -ic "${redact(uri)}": invalid port "${hp[2]}"`);
      }
    }
  }
  if (!host) throw new UsageError(`Bad -ic "${redact(uri)}": it names no server`);
  const path = m[3]!.split("/").filter((s) => s !== "").map((s) => decode(s, uri));
  let noVerify = false;
  for (const kv of (m[4] ?? "").split("&").filter((s) => s)) {
    const [k, v = ""] = kv.split("=");
    if (k === "no_verify") noVerify = v === "1" || v === "true" || v === "";
  }
  const out: VsphereUri = { scheme, host, port, path, noVerify };
  if (user !== undefined && user !== "") out.user = user;
  return out;
}

function decode(s: string, uri: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new UsageError(`Bad -ic "${redact(uri)}": bad percent-encoding in "${s}"`);
  }
}

/**
 * A URI for messages, with any password in it replaced by `***`.
 *
 * @param uri The URI as given.
 * @returns The URI without its password.
 * @example
 * ```ts
 * import { redact } from "./uri.ts";
 * if (redact("vpx://root:secret@vc/DC") !== "vpx://root:***@vc/DC") throw new Error();
 * ```
 */
export function redact(uri: string): string {
  return uri.replace(/^([a-z]+:\/\/[^:/@]*):[^@/]*@/i, "$1:***@");
}
