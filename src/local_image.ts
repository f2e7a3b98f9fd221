/**
 * A source disk that is a local image file, read in place: the copy engine takes its bytes
 * from a read-only memory map of the file (the page cache itself) instead of asking the input's
 * NBD server for them, and hands them to the target without copying them into a buffer.
 *
 * Why: an NBD read moves every byte through the server's buffer, a unix socket and the copy
 * engine's buffer before the target write copies it once more; on the 2-CPU machines this
 * project measures on, that made a local `-i disk -o local` copy 2.5x slower than
 * `qemu-img convert`, which reads the image in-process. With the map, a byte is copied once
 * (by the target's `pwrite`). The NBD server stays the source of truth for everything else:
 * conversion reads through it, and ranges the map cannot place (compressed clusters) are still
 * read through it. The file is opened read-only and mapped `PROT_READ`: it cannot be written.
 *
 * Where the bytes are comes from `qemu-img map`, read as it is printed, in step with the copy,
 * which walks the disk in increasing order.
 *
 * @module
 */

import { MappedFile } from "./libc.ts";
import { type MapEntry, mapImage } from "./qemu_img.ts";

/** Formats whose map gives offsets in the image file itself. */
const IN_PLACE_FORMATS = new Set(["raw", "qcow2"]);

/** A part of a requested range, and how to get its bytes. */
export interface Piece {
  /** Guest offset. */
  offset: number;
  /** Byte count. */
  length: number;
  /** The bytes, mapped from the file; valid until the image is disposed. */
  view?: Uint8Array;
  /** True when the range reads as zeroes. */
  zero?: boolean;
  // Neither: the bytes must be read through the NBD server.
}

/** A local image file, mapped, with a forward cursor over its `qemu-img map`. */
export class LocalImage implements AsyncDisposable {
  readonly #map: MappedFile;
  readonly #entries: AsyncDisposable & { entries: AsyncIterableIterator<MapEntry> };
  #current: MapEntry | undefined;
  #ended = false;

  private constructor(
    map: MappedFile,
    entries: AsyncDisposable & { entries: AsyncIterableIterator<MapEntry> },
  ) {
    this.#map = map;
    this.#entries = entries;
  }

  /**
   * Whether an image of this format can be read in place.
   *
   * @param format The image format.
   * @returns True for raw and qcow2.
   */
  static canRead(format: string): boolean {
    return IN_PLACE_FORMATS.has(format);
  }

  /**
   * Maps an image read-only and starts reading its allocation map.
   *
   * @param path The image file.
   * @param format Its format (raw or qcow2).
   * @param options Abort signal.
   * @returns The image; dispose it after every view of it is done with.
   */
  static open(path: string, format: string, options: { signal?: AbortSignal } = {}): LocalImage {
    if (!LocalImage.canRead(format)) {
      throw new TypeError(`Cannot read "${path}" in place: format "${format}"`);
    }
    const map = MappedFile.open(path);
    return new LocalImage(map, mapImage(path, format, options));
  }

  /**
   * Splits a guest range by where its bytes are. Calls must come in increasing order of
   * `start` (the cursor only moves forward); a range behind the cursor comes back as one
   * piece to read through NBD.
   *
   * @param start Guest offset.
   * @param end Guest offset past the range.
   * @param maxLength Largest piece with a view.
   * @returns The pieces, in order, covering the range.
   */
  async *pieces(start: number, end: number, maxLength: number): AsyncGenerator<Piece> {
    let pos = start;
    while (pos < end) {
      while (!this.#ended && (!this.#current || entryEnd(this.#current) <= pos)) {
        const next = await this.#entries.entries.next();
        if (next.done) this.#ended = true;
        else this.#current = next.value;
      }
      const e = this.#current;
      if (!e || e.start > pos || entryEnd(e) <= pos) {
        yield { offset: pos, length: end - pos };
        return;
      }
      const stop = Math.min(end, entryEnd(e));
      const host = e.offset === undefined ? undefined : e.offset + (pos - e.start);
      if (e.data && host !== undefined && host + (stop - pos) <= this.#map.size) {
        for (let o = pos; o < stop; o += maxLength) {
          const length = Math.min(maxLength, stop - o);
          yield { offset: o, length, view: this.#map.view(host + (o - pos), length) };
        }
      } else if (e.zero && !e.data) {
        yield { offset: pos, length: stop - pos, zero: true };
      } else {
        yield { offset: pos, length: stop - pos };
      }
      pos = stop;
    }
  }

  /**
   * Says a piece's view is done with, so that its pages leave the process's memory.
   *
   * @param view The view of a {@linkcode Piece}.
   */
  release(view: Uint8Array): void {
    this.#map.release(view);
  }

  /** Stops qemu-img and unmaps the file. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.#entries[Symbol.asyncDispose]();
    } finally {
      this.#map[Symbol.dispose]();
    }
  }
}

function entryEnd(e: MapEntry): number {
  return e.start + e.length;
}
