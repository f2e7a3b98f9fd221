/**
 * An in-memory {@linkcode FileAccess}, like the one an SFTP transport gives: each file a size
 * and the bytes it holds at some offsets (zeroes elsewhere, so that multi-GiB flat extents cost
 * nothing), with files that answer "permission denied".
 *
 * @module
 */

import type { FileAccess } from "../../src/input/vmdk.ts";

/** An in-memory file: text, bytes, or a size with the bytes at some offsets. */
export type MemFile = { size: number; parts?: Array<[number, Uint8Array]> } | string | Uint8Array;

/**
 * Files in memory. Paths under `/ds/` are shown as `[ds] ...`, the way a datastore path reads.
 *
 * @param files The files by path.
 * @param denied Paths whose stat and reads fail with "permission denied".
 * @returns The access, counting its reads.
 */
export function memFiles(
  files: Record<string, MemFile>,
  denied: string[] = [],
): FileAccess & { reads: number } {
  const get = (path: string) => {
    if (denied.includes(path)) throw new Deno.errors.PermissionDenied(`EACCES: ${path}`);
    const f = files[path];
    if (f === undefined) throw new Deno.errors.NotFound(`ENOENT: ${path}`);
    if (typeof f === "string") {
      const bytes = new TextEncoder().encode(f);
      return { size: bytes.length, parts: [[0, bytes]] as Array<[number, Uint8Array]> };
    }
    if (f instanceof Uint8Array) {
      return { size: f.length, parts: [[0, f]] as Array<[number, Uint8Array]> };
    }
    return { size: f.size, parts: f.parts ?? [] };
  };
  const access = {
    reads: 0,
    stat: (path: string) => {
      try {
        return Promise.resolve({ size: get(path).size, isFile: true });
      } catch (e) {
        return Promise.reject(e);
      }
    },
    read: (path: string, offset: number, length: number) => {
      access.reads++;
      let f;
      try {
        f = get(path);
      } catch (e) {
        return Promise.reject(e);
      }
      const out = new Uint8Array(Math.max(0, Math.min(length, f.size - offset)));
      for (const [at, bytes] of f.parts) {
        for (let i = 0; i < bytes.length; i++) {
          const o = at + i - offset;
          if (o >= 0 && o < out.length) out[o] = bytes[i]!;
        }
      }
      return Promise.resolve(out);
    },
    display: (path: string) => path.replace(/^\/ds\//, "[ds] "),
  };
  return access;
}
