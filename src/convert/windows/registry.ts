/**
 * Windows registry values and hives on top of libguestfs' `hivex_*` calls: typed values with
 * their on-disk encodings, key paths as string arrays, and {@linkcode withHive}, which opens a
 * hive, runs a function on it, and commits only when the function succeeds.
 *
 * The same value model writes `.reg` files ({@linkcode regFile}), which the test-guest builder
 * feeds to `hivexregedit --merge`.
 *
 * @module
 */

import type { Guestfs } from "../guestfs.ts";

/** `REG_*` type numbers. */
export const REG = {
  SZ: 1,
  EXPAND_SZ: 2,
  BINARY: 3,
  DWORD: 4,
  MULTI_SZ: 7,
  QWORD: 11,
} as const;

/** A registry value with its type. */
export type RegValue =
  | { readonly sz: string }
  | { readonly expandSz: string }
  | { readonly multiSz: readonly string[] }
  | { readonly dword: number }
  | { readonly qword: bigint }
  | { readonly binary: Uint8Array };

function utf16(s: string): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < s.length; i++) view.setUint16(i * 2, s.charCodeAt(i), true);
  return out;
}

/**
 * The type number and bytes of a value, as the registry stores them: strings in UTF-16LE with
 * a terminating NUL, `REG_MULTI_SZ` with an extra NUL after the last string, numbers
 * little-endian.
 *
 * @param value The value.
 * @returns `[type, bytes]`.
 *
 * @example
 * ```ts
 * import { encodeValue } from "./registry.ts";
 * const [type, bytes] = encodeValue({ dword: 4 });
 * if (type !== 4 || bytes.join() !== "4,0,0,0") throw new Error("bad encoding");
 * ```
 */
export function encodeValue(value: RegValue): [type: number, bytes: Uint8Array] {
  if ("sz" in value) return [REG.SZ, utf16(`${value.sz}\0`)];
  if ("expandSz" in value) return [REG.EXPAND_SZ, utf16(`${value.expandSz}\0`)];
  if ("multiSz" in value) {
    return [REG.MULTI_SZ, utf16(value.multiSz.map((s) => `${s}\0`).join("") + "\0")];
  }
  if ("dword" in value) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value.dword >>> 0, true);
    return [REG.DWORD, b];
  }
  if ("qword" in value) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value.qword, true);
    return [REG.QWORD, b];
  }
  return [REG.BINARY, value.binary];
}

/**
 * Reads stored bytes back into a value.
 *
 * @param type The `REG_*` type number.
 * @param bytes The stored bytes.
 * @returns The value; unknown types come back as `binary`.
 */
export function decodeValue(type: number, bytes: Uint8Array): RegValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = () => {
    let s = "";
    for (let i = 0; i + 1 < bytes.length; i += 2) s += String.fromCharCode(view.getUint16(i, true));
    return s;
  };
  switch (type) {
    case REG.SZ:
      return { sz: text().replace(/\0.*$/s, "") };
    case REG.EXPAND_SZ:
      return { expandSz: text().replace(/\0.*$/s, "") };
    case REG.MULTI_SZ:
      return { multiSz: text().split("\0").filter((s) => s !== "") };
    case REG.DWORD:
      if (bytes.length >= 4) return { dword: view.getUint32(0, true) };
      break;
    case REG.QWORD:
      if (bytes.length >= 8) return { qword: view.getBigUint64(0, true) };
      break;
  }
  return { binary: bytes };
}

/**
 * One registry hive opened through libguestfs. Paths are arrays of key names from the hive's
 * root, compared without case as Windows does: `["ControlSet001", "Services", "vmci"]`.
 */
export class Hive {
  readonly #g: Guestfs;
  /** The hive file in the guest. */
  readonly path: string;

  /**
   * @param g A handle on which this hive is the open one.
   * @param path The hive file, for messages.
   */
  constructor(g: Guestfs, path: string) {
    this.#g = g;
    this.path = path;
  }

  /**
   * Finds a key.
   *
   * @param path Key names from the root.
   * @returns Its node handle, or `undefined` when it or a parent is missing.
   */
  node(path: readonly string[]): number | undefined {
    let node: number | undefined = this.#g.hivexRoot();
    for (const name of path) {
      node = this.#g.hivexNodeGetChild(node, name);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /**
   * Finds a key, creating it and its missing parents.
   *
   * @param path Key names from the root.
   * @returns Its node handle.
   */
  ensure(path: readonly string[]): number {
    let node = this.#g.hivexRoot();
    for (const name of path) {
      node = this.#g.hivexNodeGetChild(node, name) ?? this.#g.hivexNodeAddChild(node, name);
    }
    return node;
  }

  /**
   * The names of a key's subkeys.
   *
   * @param path Key names from the root.
   * @returns Their names as stored; empty when the key is missing.
   */
  children(path: readonly string[]): string[] {
    const node = this.node(path);
    if (node === undefined) return [];
    return this.#g.hivexNodeChildren(node).map((c) => this.#g.hivexNodeName(c));
  }

  /**
   * Reads one value.
   *
   * @param path Key names from the root.
   * @param name The value's name (`""` for the default value).
   * @returns The value, or `undefined` when the key or the value is missing.
   */
  get(path: readonly string[], name: string): RegValue | undefined {
    const node = this.node(path);
    if (node === undefined) return undefined;
    const value = this.#g.hivexNodeGetValue(node, name);
    if (value === undefined) return undefined;
    return decodeValue(this.#g.hivexValueType(value), this.#g.hivexValueValue(value));
  }

  /**
   * Reads a string value (`REG_SZ` or `REG_EXPAND_SZ`).
   *
   * @param path Key names from the root.
   * @param name The value's name.
   * @returns The string, or `undefined` when missing or of another type.
   */
  getString(path: readonly string[], name: string): string | undefined {
    const v = this.get(path, name);
    if (v && "sz" in v) return v.sz;
    if (v && "expandSz" in v) return v.expandSz;
    return undefined;
  }

  /**
   * Reads a `REG_DWORD` value.
   *
   * @param path Key names from the root.
   * @param name The value's name.
   * @returns The number, or `undefined` when missing or of another type.
   */
  getDword(path: readonly string[], name: string): number | undefined {
    const v = this.get(path, name);
    return v && "dword" in v ? v.dword : undefined;
  }

  /**
   * Writes values into a key, creating the key and its parents when missing; other values of
   * the key are kept.
   *
   * @param path Key names from the root.
   * @param values Value names and values.
   */
  set(path: readonly string[], values: Readonly<Record<string, RegValue>>): void {
    const node = this.ensure(path);
    for (const [name, value] of Object.entries(values)) {
      const [type, bytes] = encodeValue(value);
      this.#g.hivexNodeSetValue(node, name, type, bytes);
    }
  }
}

/**
 * Opens a hive of the mounted guest, runs `fn` on it, commits the changes when `write` and
 * `fn` succeeded, and always closes it (dropping the changes of a failed `fn`).
 *
 * @param g The handle, with the guest mounted.
 * @param path The hive file, e.g. `/Windows/System32/config/SYSTEM`.
 * @param write Open for changes.
 * @param fn What to do with the hive.
 * @returns What `fn` returns.
 */
export async function withHive<T>(
  g: Guestfs,
  path: string,
  write: boolean,
  fn: (hive: Hive) => T | Promise<T>,
): Promise<T> {
  await g.hivexOpen(path, { write });
  let result: T;
  try {
    result = await fn(new Hive(g, path));
    if (write) await g.hivexCommit();
  } catch (e) {
    // Drop the changes; the first error is the one to report.
    await g.hivexClose().catch(() => {});
    throw e;
  }
  await g.hivexClose();
  return result;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(",");
}

/**
 * Writes keys as a `.reg` file (`Windows Registry Editor Version 5.00`), the format
 * `hivexregedit --merge` and `regedit` read. Every parent key is listed before its children,
 * since `hivexregedit` creates only the last element of each key path.
 *
 * @param prefix The root the paths hang from, e.g. `HKEY_LOCAL_MACHINE\SYSTEM`.
 * @param keys Key paths (`\`-separated, from the hive's root) and their values.
 * @returns The file's text.
 *
 * @example
 * ```ts
 * import { regFile } from "./registry.ts";
 * const text = regFile("HKEY_LOCAL_MACHINE\\SYSTEM", { "Select": { Current: { dword: 1 } } });
 * if (!text.includes('"Current"=dword:00000001')) throw new Error(text);
 * ```
 */
export function regFile(
  prefix: string,
  keys: Readonly<Record<string, Readonly<Record<string, RegValue>>>>,
): string {
  const seen = new Set<string>();
  const lines = ["Windows Registry Editor Version 5.00", ""];
  for (const [path, values] of Object.entries(keys)) {
    const parts = path.split("\\");
    for (let i = 1; i <= parts.length; i++) {
      const key = parts.slice(0, i).join("\\");
      if (seen.has(key.toLowerCase()) && i < parts.length) continue;
      seen.add(key.toLowerCase());
      lines.push(`[${prefix}\\${key}]`);
      if (i === parts.length) {
        for (const [name, value] of Object.entries(values)) {
          const quoted = `"${name.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
          const label = name === "" ? "@" : quoted;
          if ("dword" in value) {
            lines.push(`${label}=dword:${(value.dword >>> 0).toString(16).padStart(8, "0")}`);
          } else {
            const [type, bytes] = encodeValue(value);
            lines.push(`${label}=hex(${type.toString(16)}):${hex(bytes)}`);
          }
        }
      }
      lines.push("");
    }
  }
  return lines.join("\r\n");
}
