/**
 * OpenSSH `known_hosts` files: which host keys vmshift trusts for an SSH server.
 *
 * The format is OpenSSH's (`sshd(8)`, "SSH_KNOWN_HOSTS FILE FORMAT"): one key a line,
 * `[MARKER] HOSTPATTERNS KEYTYPE BASE64KEY [COMMENT]`, where
 *
 * - HOSTPATTERNS is a comma-separated list of names with `*` and `?` wildcards and `!`
 *   negations; a server on a port other than 22 is named `[host]:port`, on port 22 plain
 *   `host`;
 * - a hashed entry (`ssh-keygen -H`, `HashKnownHosts yes`) is `|1|SALT|HASH`, the base64
 *   HMAC-SHA1 of that name keyed with SALT;
 * - MARKER `@revoked` marks a key that must never be accepted; `@cert-authority` lines
 *   (host certificates) are not used by vmshift and ignored.
 *
 * {@linkcode checkHostKey} decides, as OpenSSH does, whether a key the server offered is known,
 * unknown, or *changed* (the file holds another key of the same type for this host: a
 * possible man-in-the-middle, always refused).
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, createHmac } from "node:crypto";

/** One key line of a known_hosts file. */
export interface KnownHostsEntry {
  /** Line number in the file, from 1, for messages. */
  line: number;
  /** `@revoked`, `@cert-authority`, or undefined for a plain entry. */
  marker?: "@revoked" | "@cert-authority";
  /** The host patterns field, as written (hashed or not). */
  hosts: string;
  /** The key type field, e.g. `ssh-ed25519`. */
  keyType: string;
  /** The key, base64 as written. */
  key: string;
}

/** The outcome of {@linkcode checkHostKey}. */
export type HostKeyCheck =
  /** The key is in the file for this host. */
  | { status: "known"; line: number }
  /** The host has no key of this type in the file (`knownTypes`: the types it does have). */
  | { status: "unknown"; knownTypes: string[] }
  /** The file holds a different key of the same type for this host. */
  | { status: "changed"; line: number }
  /** The key is marked `@revoked`. */
  | { status: "revoked"; line: number };

/**
 * Parses a known_hosts file. Comments, blank lines and lines that are not key lines are
 * skipped, as OpenSSH skips them.
 *
 * @param text The file's contents.
 * @returns The key lines.
 * @example
 * ```ts
 * import { parseKnownHosts } from "./known_hosts.ts";
 * const [e] = parseKnownHosts("# c\n[10.0.0.1]:2222 ssh-ed25519 AAAAC3Nza x@y\n");
 * if (e?.hosts !== "[10.0.0.1]:2222" || e.line !== 2) throw new Error();
 * ```
 */
export function parseKnownHosts(text: string): KnownHostsEntry[] {
  const out: KnownHostsEntry[] = [];
  text.split("\n").forEach((raw, i) => {
    const fields = raw.trim().split(/\s+/);
    if (!fields[0] || fields[0].startsWith("#")) return;
    let marker: KnownHostsEntry["marker"];
    if (fields[0].startsWith("@")) {
      if (fields[0] !== "@revoked" && fields[0] !== "@cert-authority") return;
      marker = fields.shift() as KnownHostsEntry["marker"];
    }
    const [hosts, keyType, key] = fields;
    if (!hosts || !keyType || !key || !/^[A-Za-z0-9+/]+=*$/.test(key)) return;
    out.push({ line: i + 1, ...(marker ? { marker } : {}), hosts, keyType, key });
  });
  return out;
}

/**
 * The name OpenSSH looks up for a server: `host` on port 22, `[host]:port` otherwise.
 *
 * @param host Host name or address, as the user gave it.
 * @param port The port.
 * @returns The known_hosts name.
 * @example
 * ```ts
 * import { knownHostsName } from "./known_hosts.ts";
 * if (knownHostsName("Esxi.Lab", 2222) !== "[esxi.lab]:2222") throw new Error();
 * ```
 */
export function knownHostsName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/**
 * Tells whether an entry's host patterns match a server. A negated pattern that matches wins
 * over any other, as in OpenSSH.
 *
 * @param entry The known_hosts entry.
 * @param host Host name or address.
 * @param port The port.
 * @returns True when the entry applies to the server.
 */
export function entryMatches(entry: KnownHostsEntry, host: string, port: number): boolean {
  const name = knownHostsName(host, port);
  if (entry.hosts.startsWith("|1|")) return hashedMatches(entry.hosts, name);
  let matched = false;
  for (const raw of entry.hosts.split(",")) {
    const negated = raw.startsWith("!");
    const pattern = (negated ? raw.slice(1) : raw).toLowerCase();
    if (!wildcardMatch(pattern, name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/**
 * Checks a host key the server offered against a known_hosts file's entries.
 *
 * @param entries The file's entries ({@linkcode parseKnownHosts}).
 * @param host Host name or address, as the user gave it.
 * @param port The port.
 * @param key The key blob the server sent (SSH wire format).
 * @returns Known, unknown, changed, or revoked, with the line that decided it.
 */
export function checkHostKey(
  entries: readonly KnownHostsEntry[],
  host: string,
  port: number,
  key: Uint8Array,
): HostKeyCheck {
  const type = keyBlobType(key);
  const b64 = Buffer.from(key).toString("base64");
  const same = (e: KnownHostsEntry) => e.key.replace(/=+$/, "") === b64.replace(/=+$/, "");
  // A revoked key is refused for every host, whatever the patterns say.
  const revoked = entries.find((e) => e.marker === "@revoked" && same(e));
  if (revoked) return { status: "revoked", line: revoked.line };
  const mine = entries.filter((e) => e.marker === undefined && entryMatches(e, host, port));
  const known = mine.find(same);
  if (known) return { status: "known", line: known.line };
  const other = mine.find((e) => e.keyType === type);
  if (other) return { status: "changed", line: other.line };
  return { status: "unknown", knownTypes: [...new Set(mine.map((e) => e.keyType))] };
}

/**
 * The key types a known_hosts file holds for a server, in file order, so that the SSH client
 * can ask the server for a key of a type it can check (as OpenSSH orders its host key
 * algorithms).
 *
 * @param entries The file's entries.
 * @param host Host name or address.
 * @param port The port.
 * @returns Key types, e.g. `["ssh-ed25519", "ssh-rsa"]`.
 */
export function knownKeyTypes(
  entries: readonly KnownHostsEntry[],
  host: string,
  port: number,
): string[] {
  return [
    ...new Set(
      entries.filter((e) => e.marker === undefined && entryMatches(e, host, port)).map((e) =>
        e.keyType
      ),
    ),
  ];
}

/**
 * The type named inside a key blob, e.g. `ssh-ed25519`.
 *
 * @param key The key blob (SSH wire format: a length-prefixed type string first).
 * @returns The key type, or `""` for a blob too short to hold one.
 */
export function keyBlobType(key: Uint8Array): string {
  if (key.length < 4) return "";
  const len = new DataView(key.buffer, key.byteOffset, key.byteLength).getUint32(0);
  if (len > key.length - 4) return "";
  return new TextDecoder().decode(key.subarray(4, 4 + len));
}

/**
 * The key's fingerprint as OpenSSH prints it (`ssh-keygen -l`, `ssh -v`).
 *
 * @param key The key blob.
 * @returns `SHA256:` and the unpadded base64 SHA-256 of the blob.
 * @example
 * ```ts
 * import { fingerprint } from "./known_hosts.ts";
 * if (!fingerprint(new Uint8Array([0, 0, 0, 0])).startsWith("SHA256:")) throw new Error();
 * ```
 */
export function fingerprint(key: Uint8Array): string {
  return `SHA256:${createHash("sha256").update(key).digest("base64").replace(/=+$/, "")}`;
}

/**
 * A known_hosts line for a server and key, as `ssh-keyscan` writes it.
 *
 * @param host Host name or address.
 * @param port The port.
 * @param key The key blob.
 * @returns The line, without a newline.
 */
export function knownHostsLine(host: string, port: number, key: Uint8Array): string {
  return `${knownHostsName(host, port)} ${keyBlobType(key)} ${Buffer.from(key).toString("base64")}`;
}

/** A short name for a key type in messages, as OpenSSH prints it (`ED25519`, `RSA`). */
export function keyTypeLabel(type: string): string {
  if (type === "ssh-ed25519") return "ED25519";
  if (type.startsWith("ecdsa-sha2-")) return "ECDSA";
  if (type === "ssh-rsa") return "RSA";
  if (type === "ssh-dss") return "DSA";
  return type;
}

function hashedMatches(field: string, name: string): boolean {
  const [, , salt, hash] = field.split("|");
  if (!salt || !hash) return false;
  try {
    const mac = createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64");
    return mac === hash;
  } catch {
    return false;
  }
}

function wildcardMatch(pattern: string, name: string): boolean {
  if (!pattern.includes("*") && !pattern.includes("?")) return pattern === name;
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(
    /\?/g,
    ".",
  );
  return new RegExp(`^${re}$`).test(name);
}
