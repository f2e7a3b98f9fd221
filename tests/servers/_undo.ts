/**
 * The imageio test daemon's model of "writes are safe only once flushed, and flush is per
 * connection".
 *
 * Every write goes to the image at once (so that any connection reads it back at once, as with
 * qemu-nbd behind the real daemon), but before it lands, the connection's {@linkcode UndoLog}
 * keeps what it overwrites (its pre-image): zero ranges as ranges, data in a sparse file at the
 * same offsets. Only the first write to a range since the last flush saves it, so the log holds
 * the image as it was at that connection's last flush.
 *
 * - A flush on the connection makes its writes durable: {@linkcode UndoLog.forget}.
 * - When the connection's writes are lost (a 500 answer, a dropped or timed-out connection, a
 *   connection closed or a ticket removed while writes are still unflushed),
 *   {@linkcode UndoLog.restore} puts the pre-images back: the image looks as if the writes had
 *   never happened.
 *
 * Connections are assumed not to write overlapping ranges (an uploader never does): restoring
 * one connection's pre-image would undo another's later write of the same range.
 *
 * @module
 */

import { NBD_STATE_ZERO, type NbdClient } from "../../src/nbd/client.ts";

const CHUNK = 4 * 1024 * 1024;
const MAX_ZERO = 1024 * 1024 * 1024;

interface Segment {
  offset: number;
  length: number;
  zero: boolean;
}

/** Pre-images of one connection's unflushed writes. */
export class UndoLog implements AsyncDisposable {
  readonly #path: string;
  #file: Deno.FsFile | undefined;
  /** Disjoint, sorted `[start, end)` ranges whose pre-image is saved. */
  #covered: Array<[number, number]> = [];
  #segments: Segment[] = [];

  /**
   * @param path The sparse file that holds saved data (created on first use).
   */
  constructor(path: string) {
    this.#path = path;
  }

  /** Bytes written since the last flush (the size of the saved ranges). */
  get pendingBytes(): number {
    return this.#covered.reduce((n, [s, e]) => n + e - s, 0);
  }

  /**
   * Saves the pre-image of `[offset, offset + length)` unless already saved.
   *
   * @param nbd The connection to the image.
   * @param offset Start of the range about to be written.
   * @param length Its length.
   */
  async save(nbd: NbdClient, offset: number, length: number): Promise<void> {
    for (const [start, end] of this.#uncovered(offset, offset + length)) {
      let pos = start;
      while (pos < end) {
        const extents = await nbd.blockStatus(pos, end - pos);
        for (const extent of extents) {
          const len = Math.min(extent.length, end - pos);
          if (len <= 0) break;
          if (extent.flags & NBD_STATE_ZERO) {
            this.#segments.push({ offset: pos, length: len, zero: true });
          } else {
            await this.#saveData(nbd, pos, len);
          }
          pos += len;
        }
      }
      this.#cover(start, end);
    }
  }

  /** The writes were flushed: they are durable, nothing is left to undo. */
  async forget(): Promise<void> {
    this.#covered = [];
    this.#segments = [];
    if (this.#file) await this.#file.truncate(0);
  }

  /**
   * Puts every saved pre-image back and flushes: the unflushed writes are lost.
   *
   * @param nbd The connection to the image.
   * @param noHole Keep zeroed ranges allocated (preallocated disks).
   * @returns How many bytes were undone.
   */
  async restore(nbd: NbdClient, noHole: boolean): Promise<number> {
    const undone = this.pendingBytes;
    for (const seg of this.#segments) {
      if (seg.zero) {
        for (let at = seg.offset; at < seg.offset + seg.length; at += MAX_ZERO) {
          await nbd.writeZeroes(at, Math.min(MAX_ZERO, seg.offset + seg.length - at), { noHole });
        }
      } else {
        const buf = new Uint8Array(Math.min(CHUNK, seg.length));
        for (let at = seg.offset; at < seg.offset + seg.length; at += CHUNK) {
          const n = Math.min(CHUNK, seg.offset + seg.length - at);
          const view = buf.subarray(0, n);
          await this.#file!.seek(at, Deno.SeekMode.Start);
          let got = 0;
          while (got < n) {
            const r = await this.#file!.read(view.subarray(got));
            if (r === null) {
              view.fill(0, got); // Past the end of a sparse file: zeroes.
              break;
            }
            got += r;
          }
          await nbd.write(at, view);
        }
      }
    }
    if (undone > 0) await nbd.flush();
    await this.forget();
    return undone;
  }

  /** Closes and removes the file of saved data. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#covered = [];
    this.#segments = [];
    if (this.#file) {
      this.#file.close();
      this.#file = undefined;
      await Deno.remove(this.#path).catch(() => {});
    }
  }

  async #saveData(nbd: NbdClient, offset: number, length: number): Promise<void> {
    this.#file ??= await Deno.open(this.#path, {
      read: true,
      write: true,
      create: true,
      truncate: true,
      mode: 0o600,
    });
    for (let at = offset; at < offset + length; at += CHUNK) {
      const data = await nbd.read(at, Math.min(CHUNK, offset + length - at));
      if (isZero(data)) {
        // Allocated zeroes (a preallocated disk): remember the range, not the bytes.
        this.#segments.push({ offset: at, length: data.length, zero: true });
        continue;
      }
      await this.#file.seek(at, Deno.SeekMode.Start);
      let done = 0;
      while (done < data.length) done += await this.#file.write(data.subarray(done));
      this.#segments.push({ offset: at, length: data.length, zero: false });
    }
  }

  /** The parts of `[start, end)` not yet covered. */
  #uncovered(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = start;
    for (const [s, e] of this.#covered) {
      if (e <= pos) continue;
      if (s >= end) break;
      if (s > pos) out.push([pos, s]);
      pos = Math.max(pos, e);
      if (pos >= end) break;
    }
    if (pos < end) out.push([pos, end]);
    return out;
  }

  #cover(start: number, end: number): void {
    const all = [...this.#covered, [start, end] as [number, number]].sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const [s, e] of all) {
      const last = merged[merged.length - 1];
      if (last && s <= last[1]) last[1] = Math.max(last[1], e);
      else merged.push([s, e]);
    }
    this.#covered = merged;
  }
}

function isZero(data: Uint8Array): boolean {
  if (data.byteOffset % 8) return data.every((b) => b === 0);
  const words = data.length >> 3;
  const view = new BigUint64Array(data.buffer, data.byteOffset, words);
  for (let i = 0; i < words; i++) if (view[i] !== 0n) return false;
  for (let i = words << 3; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}
