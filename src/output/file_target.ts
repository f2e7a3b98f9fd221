/**
 * A copy target that is a new raw file on the local file system, written directly with
 * positional writes: one hop less than serving it through qemu-nbd, which is what made local
 * raw output measurably faster (see the README's benchmark section).
 *
 * The file must be new (created by vmshift just before): every range not written reads as
 * zeroes already, and for a preallocated file is already allocated, so zero requests need no
 * work at all.
 *
 * @module
 */

import type { CopyTarget, TargetWriter } from "../copy.ts";

/**
 * Wraps a newly created raw file as a copy target.
 *
 * @param path The file (it exists, with its final size).
 * @param options How many connections (file handles) the copy may open.
 * @returns The copy target.
 */
export function fileTarget(path: string, options: { maxConnections?: number } = {}): CopyTarget {
  return {
    name: path,
    readsZeroes: true,
    maxConnections: options.maxConnections ?? 4,
    maxZeroSize: Number.MAX_SAFE_INTEGER,
    async connect(): Promise<TargetWriter> {
      // Writes are synchronous: Deno's asynchronous file write copies the buffer into a fresh
      // allocation on every call, which cost more system time (page faults) than the copy
      // itself; a synchronous write passes the buffer straight to the kernel. A seek and its
      // write then also run as one step, never split by another request on this handle.
      const file = await Deno.open(path, { write: true });
      let dirty = false;
      return {
        write(offset, data) {
          dirty = true;
          file.seekSync(offset, Deno.SeekMode.Start);
          let done = 0;
          while (done < data.length) {
            const n = file.writeSync(done ? data.subarray(done) : data);
            if (n === 0) throw new Error(`Cannot write "${path}": no progress at ${offset + done}`);
            done += n;
          }
          return Promise.resolve();
        },
        // A new file reads zeroes everywhere it was not written.
        zero: () => Promise.resolve(),
        async flush() {
          if (dirty) await file.syncData();
          dirty = false;
        },
        [Symbol.asyncDispose]: () => Promise.resolve(file.close()),
      };
    },
  };
}
