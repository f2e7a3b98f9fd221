/**
 * The copy engine: moves one disk from an NBD source (the overlay, served by qemu-nbd) to a
 * {@linkcode CopyTarget}, copying only what matters.
 *
 * - The source's extents (base:allocation) are read ahead of the copy. Data extents are read
 *   and written; extents that read as zero are sent as zero requests, never as bytes; holes are
 *   skipped when the target already reads as zero.
 * - Data that turns out to be all zeroes once read (a zero-filled block the guest wrote) is also
 *   sent as a zero request, so deleted-then-zeroed space costs no bytes on the target.
 * - When the overlay's server offers `qemu:allocation-depth` and the caller names the overlay's
 *   backing source, data the overlay does not hold itself (everything conversion left alone) is
 *   read straight from the source server, not through the overlay: the same bytes, one hop
 *   fewer. qemu's NBD client reads a backing file over a single connection, and going around it
 *   halves the time a large copy takes.
 * - When the backing source is also a local image file (`-i disk`), that data is not read over
 *   NBD at all: it is taken from a read-only memory map of the file where `qemu-img map` says
 *   it lies (`src/local_image.ts`) and handed to the target as it is, one memory copy per byte
 *   as in qemu-img convert. Ranges the map cannot place (compressed clusters) still come over NBD.
 * - Work is spread over several connections, each with a few requests in flight. Every worker
 *   owns one buffer of `requestSize` bytes, so memory is bounded by
 *   `connections × depth × requestSize` whatever the disk size.
 *
 * @module
 */

import { LocalImage } from "./local_image.ts";
import { NBD_STATE_HOLE, NBD_STATE_ZERO, NbdClient } from "./nbd/client.ts";

/** One connection to a target, able to write data and zeroes. */
export interface TargetWriter extends AsyncDisposable {
  /**
   * Writes data at an offset.
   * @param offset Byte offset.
   * @param data The bytes; the buffer may be reused once the promise settles.
   */
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Makes a range read as zeroes, without sending zero bytes.
   * @param offset Byte offset.
   * @param length Byte count.
   */
  zero(offset: number, length: number): Promise<void>;
  /** Makes everything written on this connection durable. */
  flush(): Promise<void>;
}

/**
 * Reads the source again: a target that loses writes it had acknowledged (an imageio server
 * answers 500 after losing what it held since the last flush) resends them from here instead
 * of keeping copies, so memory stays bounded.
 */
export interface SourceReader {
  /**
   * Fills `buffer` with the source's bytes at `offset`.
   * @param offset Byte offset.
   * @param buffer Where the bytes go.
   */
  readInto(offset: number, buffer: Uint8Array): Promise<void>;
}

/** Where a disk is copied to. */
export interface CopyTarget {
  /** A name for messages (a path, a disk id). */
  readonly name: string;
  /** True when ranges never written read as zeroes (a new sparse or preallocated disk). */
  readonly readsZeroes: boolean;
  /** How many writers the target wants at most. */
  readonly maxConnections: number;
  /**
   * How many connections to use when the caller does not say. A remote target whose time goes
   * in round trips (imageio over HTTPS) wants all it allows, whatever the local CPU count.
   * @default 4, or the number of local CPUs when fewer
   */
  readonly connections?: number;
  /** Largest zero request the target accepts in one go. */
  readonly maxZeroSize: number;
  /**
   * The smallest run of zeroes, inside data that was read, worth a zero request (or a hole)
   * of its own instead of being written as bytes. Small for local files, where a zero request
   * is a cheap hole punch; large for targets where each request is a round trip.
   * @default 4096 (a filesystem block: zeroed blocks inside a guest's data become holes)
   */
  readonly zeroGranule?: number;
  /**
   * Opens one more connection to the target.
   * @param signal Aborts the connection attempt.
   * @param source Reads the source again, for targets that must resend lost writes.
   * @returns The writer; dispose it to close it.
   */
  connect(signal: AbortSignal, source: SourceReader): Promise<TargetWriter>;
  /** For local targets served over NBD: the URI, so that nbdcopy can write it directly. */
  readonly nbdUri?: string;
}

/** Progress of one disk, reported while copying. */
export interface CopyProgress {
  /** Bytes of the virtual disk dealt with (data, zeroes and holes). */
  done: number;
  /** The virtual size. */
  total: number;
  /** Bytes of data actually sent. */
  dataBytes: number;
}

/** Options for {@linkcode copyDisk}. */
export interface CopyOptions {
  /**
   * Connections to the source and to the target. More connections than CPUs only add
   * contention (measured: 2 beat 4 on a 2-CPU machine).
   * @default 4, or the number of CPUs when fewer
   */
  connections?: number;
  /**
   * Requests in flight per connection.
   * @default 2, or 4 when reading in place (`backingFile`): those requests need no buffer,
   *   and the writes they wait on are the whole cost
   */
  depth?: number;
  /**
   * Size of a data request in bytes.
   * @default 4 MiB
   */
  requestSize?: number;
  /** Called with progress, at most every few milliseconds. */
  onProgress?: (p: CopyProgress) => void;
  /** Aborts the copy. */
  signal?: AbortSignal;
  /**
   * The NBD URI of the overlay's backing source, to read untouched data from directly. Used
   * only when the source offers `qemu:allocation-depth`.
   */
  backingUri?: string;
  /**
   * The local image file the backing source serves, to read untouched data from in place
   * (a memory map: no NBD read, no buffer copy): raw or qcow2 (see `LocalImage.canRead`). Used
   * only with `backingUri`, when it is used.
   */
  backingFile?: { path: string; format: string };
}

/** What a copy did, for the report and tests. */
export interface CopyResult {
  /** The virtual size. */
  size: number;
  /** Bytes sent as data. */
  dataBytes: number;
  /** Bytes sent as zero requests. */
  zeroBytes: number;
  /** Bytes skipped (holes, onto a target that reads zeroes). */
  skippedBytes: number;
  /** Seconds spent copying, up to the final flush. */
  copySeconds: number;
  /** Seconds the final flush of every connection took. */
  flushSeconds: number;
  /** Bytes of data read in place from the local source file (part of `dataBytes` and the
   * zeroes found in data), not through NBD. */
  localBytes: number;
}

const MiB = 1024 * 1024;
/** How much of the disk one block-status request asks about. */
const STATUS_WINDOW = 1024 * MiB;

type Work = {
  offset: number;
  length: number;
  kind: "data" | "zero";
  /** Read from the backing source's server, not the overlay's. */
  backing?: boolean;
  /** The bytes, mapped from the local source file: nothing to read. */
  view?: Uint8Array;
};

const ALLOCATION_DEPTH = "qemu:allocation-depth";

/**
 * Copies one disk.
 *
 * @param sourceUri The NBD URI of the source (read-only is enough).
 * @param target Where to write.
 * @param options Parallelism, request size, progress, signal.
 * @returns What was copied.
 * @throws {Error} When reading or writing fails; the message names the disk and the server.
 */
export async function copyDisk(
  sourceUri: string,
  target: CopyTarget,
  options: CopyOptions = {},
): Promise<CopyResult> {
  const signal = options.signal ?? new AbortController().signal;
  const requestSize = options.requestSize ?? 4 * MiB;
  const wanted = Math.max(
    1,
    Math.min(
      options.connections ?? target.connections ??
        Math.min(4, navigator.hardwareConcurrency),
      target.maxConnections,
    ),
  );

  await using stack = new AsyncDisposableStack();
  const first = stack.use(
    await NbdClient.connect(sourceUri, { signal, metaContexts: [ALLOCATION_DEPTH] }),
  );
  const size = first.size;
  const connections = first.canMultiConn ? wanted : 1;
  const sources = [first];
  const writers: TargetWriter[] = [];
  for (let i = 1; i < connections; i++) {
    sources.push(stack.use(await NbdClient.connect(sourceUri, { signal })));
  }
  const backings: NbdClient[] = [];
  if (options.backingUri && first.metaContexts.includes(ALLOCATION_DEPTH)) {
    for (let i = 0; i < connections; i++) {
      backings.push(stack.use(await NbdClient.connect(options.backingUri, { signal })));
    }
    if (backings[0]!.size < size) {
      throw new Error(
        `The backing source ${options.backingUri} is smaller than the overlay ${sourceUri}`,
      );
    }
  }
  // Declared after the connections, so disposed before them: after every worker is done.
  const local = backings.length && options.backingFile
    ? stack.use(LocalImage.open(options.backingFile.path, options.backingFile.format, { signal }))
    : undefined;
  // Lost writes are re-read through the overlay: it serves the converted disk as a whole.
  for (let i = 0; i < connections; i++) {
    writers.push(stack.use(await target.connect(signal, sources[i]!)));
  }

  const chunk = Math.min(requestSize, first.maxBlockSize);
  const granule = target.zeroGranule ?? 4096;
  const result: CopyResult = {
    size,
    dataBytes: 0,
    zeroBytes: 0,
    skippedBytes: 0,
    copySeconds: 0,
    flushSeconds: 0,
    localBytes: 0,
  };
  const started = performance.now();
  let done = 0;
  let lastReport = 0;
  const report = (force = false) => {
    const now = performance.now();
    if (!options.onProgress || (!force && now - lastReport < 100)) return;
    lastReport = now;
    options.onProgress({ done, total: size, dataBytes: result.dataBytes });
  };
  report(true);

  const work = plan(first, size, chunk, target, result, backings.length > 0, local, (n) => {
    done += n;
    report();
  });

  // Workers pull from one shared iterator; an iterator can only be advanced by one caller at a
  // time, so pulls are chained through a promise.
  let pulling: Promise<unknown> = Promise.resolve();
  const next = (): Promise<IteratorResult<Work>> => {
    const p = pulling.then(() => work.next());
    pulling = p.catch(() => {});
    return p;
  };

  const depth = Math.max(1, options.depth ?? (local ? 4 : 2));
  const workers: Promise<void>[] = [];
  const failure = new AbortController();
  for (let w = 0; w < connections * depth; w++) {
    const source = sources[w % connections]!;
    const backing = backings[w % connections];
    const writer = writers[w % connections]!;
    workers.push(
      (async () => {
        // Allocated on the first read over NBD: data read in place needs no buffer.
        let buffer: Uint8Array | undefined;
        while (true) {
          signal.throwIfAborted();
          if (failure.signal.aborted) return;
          const item = await next();
          if (item.done) return;
          const { offset, length, kind } = item.value;
          const from = item.value.backing && backing ? backing : source;
          if (kind === "zero") {
            await writer.zero(offset, length);
            result.zeroBytes += length;
          } else {
            let view = item.value.view;
            if (view) {
              result.localBytes += length;
            } else {
              buffer ??= new Uint8Array(chunk);
              view = buffer.subarray(0, length);
              await from.readInto(offset, view);
            }
            for (const [start, end, zero] of zeroRuns(view, offset, granule)) {
              if (!zero) {
                await writer.write(offset + start, view.subarray(start, end));
                result.dataBytes += end - start;
              } else if (!target.readsZeroes) {
                await writer.zero(offset + start, end - start);
                result.zeroBytes += end - start;
              } else {
                result.skippedBytes += end - start;
              }
            }
          }
          if (item.value.view) local!.release(item.value.view);
          done += length;
          report();
        }
      })().catch((e) => {
        failure.abort();
        throw e;
      }),
    );
  }
  const settled = await Promise.allSettled(workers);
  const rejected = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (rejected) throw rejected.reason;
  signal.throwIfAborted();
  // Flush is per connection: flush every connection we wrote on.
  const flushing = performance.now();
  result.copySeconds = (flushing - started) / 1000;
  await Promise.all(writers.map((w) => w.flush()));
  result.flushSeconds = (performance.now() - flushing) / 1000;
  report(true);
  return result;
}

/**
 * Turns the source's extents into work: data in chunks of at most `chunk` bytes, zero extents
 * as zero requests (or nothing, for holes on a target that reads zeroes).
 */
async function* plan(
  source: NbdClient,
  size: number,
  chunk: number,
  target: CopyTarget,
  result: CopyResult,
  splitByDepth: boolean,
  local: LocalImage | undefined,
  skipped: (n: number) => void,
): AsyncGenerator<Work> {
  const skip = (length: number) => {
    result.skippedBytes += length;
    skipped(length);
  };
  let offset = 0;
  while (offset < size) {
    const window = Math.min(STATUS_WINDOW, size - offset);
    const extents = await source.blockStatus(offset, window);
    for (const e of extents) {
      const end = Math.min(e.offset + e.length, size);
      if (end <= offset) continue;
      const start = Math.max(e.offset, offset);
      const length = end - start;
      if (e.flags & NBD_STATE_ZERO) {
        const hole = (e.flags & NBD_STATE_HOLE) !== 0;
        if (target.readsZeroes && hole) {
          skip(length);
        } else {
          // Allocated zeroes on the source are sent as zero requests even onto a target that
          // reads zeroes: a preallocated target keeps them allocated, a sparse one drops them.
          for (let o = start; o < end; o += target.maxZeroSize) {
            yield { offset: o, length: Math.min(target.maxZeroSize, end - o), kind: "zero" };
          }
        }
      } else if (!splitByDepth) {
        for (let o = start; o < end; o += chunk) {
          yield { offset: o, length: Math.min(chunk, end - o), kind: "data" };
        }
      } else {
        // Depth 1: the overlay holds the data (conversion wrote it). Anything else lives in the
        // backing source and is read from there.
        for (let at = start; at < end;) {
          for (const d of await source.blockStatus(at, end - at, ALLOCATION_DEPTH)) {
            const backing = d.flags !== 1;
            const dEnd = d.offset + d.length;
            if (backing && local) {
              yield* inPlace(local, d.offset, dEnd, chunk, target, skip);
            } else {
              for (let o = d.offset; o < dEnd; o += chunk) {
                yield { offset: o, length: Math.min(chunk, dEnd - o), kind: "data", backing };
              }
            }
            at = dEnd;
          }
        }
      }
      offset = end;
    }
  }
}

/**
 * Work for a range of the backing source read in place from its local file: mapped data,
 * zeroes the map knows of (skipped or zeroed like zero extents), and what the map cannot place
 * (compressed clusters), read from the backing source's server.
 */
async function* inPlace(
  local: LocalImage,
  start: number,
  end: number,
  chunk: number,
  target: CopyTarget,
  skip: (n: number) => void,
): AsyncGenerator<Work> {
  for await (const p of local.pieces(start, end, chunk)) {
    const pEnd = p.offset + p.length;
    if (p.view) {
      yield { offset: p.offset, length: p.length, kind: "data", view: p.view };
    } else if (p.zero && target.readsZeroes) {
      skip(p.length);
    } else {
      for (let o = p.offset; o < pEnd; o += p.zero ? target.maxZeroSize : chunk) {
        yield p.zero
          ? { offset: o, length: Math.min(target.maxZeroSize, pEnd - o), kind: "zero" }
          : { offset: o, length: Math.min(chunk, pEnd - o), kind: "data", backing: true };
      }
    }
  }
}

/**
 * Splits data that was read into runs of data and runs of zeroes, granule by granule (granules
 * aligned to the disk), so that zeroed filesystem blocks inside data become zero requests or
 * holes instead of bytes, as nbdcopy's sparse detection does.
 *
 * @param buf The bytes read.
 * @param offset Where they are on the disk.
 * @param granule The smallest zero run split out.
 * @returns `[start, end, zero]` runs covering the buffer, alternating.
 * @example
 * ```ts
 * import { zeroRuns } from "./copy.ts";
 * const buf = new Uint8Array(3 * 4096);
 * buf[5000] = 1;
 * const runs = [...zeroRuns(buf, 0, 4096)];
 * if (JSON.stringify(runs) !== "[[0,4096,true],[4096,8192,false],[8192,12288,true]]") {
 *   throw new Error();
 * }
 * ```
 */
export function* zeroRuns(
  buf: Uint8Array,
  offset: number,
  granule: number,
): Generator<[start: number, end: number, zero: boolean]> {
  if (isZero(buf)) {
    if (buf.length) yield [0, buf.length, true];
    return;
  }
  // Granules are aligned to the disk, not to the buffer. One word view of the whole buffer,
  // where it is aligned, instead of a view per granule: a 4 GiB copy has a million granules.
  const words = buf.byteOffset % 4 === 0
    ? new Int32Array(buf.buffer, buf.byteOffset, buf.length >> 2)
    : undefined;
  let runStart = 0;
  let runZero: boolean | undefined;
  let pos = 0;
  while (pos < buf.length) {
    const end = Math.min(buf.length, pos + granule - ((offset + pos) % granule));
    const zero = words && pos % 4 === 0 && end % 4 === 0
      ? wordsZero(words, pos >> 2, end >> 2)
      : isZero(buf.subarray(pos, end));
    if (runZero !== undefined && zero !== runZero) {
      yield [runStart, pos, runZero];
      runStart = pos;
    }
    runZero = zero;
    pos = end;
  }
  yield [runStart, buf.length, runZero!];
}

function wordsZero(words: Int32Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (words[i] !== 0) return false;
  return true;
}

/**
 * Tells whether a buffer holds only zero bytes, 4 bytes at a time where aligned.
 *
 * @param buf The buffer.
 * @returns True when every byte is zero.
 * @example
 * ```ts
 * import { isZero } from "./copy.ts";
 * if (!isZero(new Uint8Array(8)) || isZero(new Uint8Array([0, 1]))) throw new Error();
 * ```
 */
export function isZero(buf: Uint8Array): boolean {
  const head = (4 - (buf.byteOffset % 4)) % 4;
  const n = buf.length;
  let i = 0;
  for (; i < Math.min(head, n); i++) if (buf[i] !== 0) return false;
  const words = Math.floor((n - i) / 4);
  if (words > 0) {
    const w = new Int32Array(buf.buffer, buf.byteOffset + i, words);
    for (let j = 0; j < w.length; j++) if (w[j] !== 0) return false;
    i += words * 4;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
