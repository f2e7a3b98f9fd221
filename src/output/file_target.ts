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
import { PosixFile } from "../libc.ts";
import type { Qcow2Writer } from "./qcow2_writer.ts";

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
    connect(): Promise<TargetWriter> {
      // Positional writes through libc (src/libc.ts): they run on Deno's thread pool, several
      // at once, straight from the caller's memory (a buffer, or the page cache of a local
      // source mapped by the copy engine). Deno.FsFile's asynchronous write copied every
      // buffer into a fresh allocation, and its synchronous one ran on the JavaScript thread.
      const file = PosixFile.open(path, "write");
      let dirty = false;
      return Promise.resolve({
        write(offset, data) {
          dirty = true;
          return file.pwrite(data, offset);
        },
        // A new file reads zeroes everywhere it was not written.
        zero: () => Promise.resolve(),
        async flush() {
          if (dirty) await file.sync();
          dirty = false;
        },
        [Symbol.asyncDispose]: () => Promise.resolve(file.close()),
      });
    },
  };
}

/**
 * Wraps a new qcow2 image being written in process as a copy target. Every connection writes
 * through the same writer (its writes are positional and its allocation is atomic); the image
 * becomes valid when its owner closes the writer, after the copy.
 *
 * @param image The writer of the new image.
 * @returns The copy target.
 */
export function qcow2Target(image: Qcow2Writer): CopyTarget {
  return {
    name: image.path,
    readsZeroes: true,
    maxConnections: 4,
    maxZeroSize: Number.MAX_SAFE_INTEGER,
    connect(): Promise<TargetWriter> {
      return Promise.resolve({
        write: (offset, data) => image.write(offset, data),
        zero: (offset, length) => image.zero(offset, length),
        // The data is made durable with the metadata, when the writer closes.
        flush: () => Promise.resolve(),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
  };
}
