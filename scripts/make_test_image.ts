/**
 * Builds sparse test disk images (raw, qcow2, vmdk) with a known layout, fast enough for
 * several GiB of data: the benchmark source, the demo disk and the copy tests use it.
 *
 * Every image holds, in this order across the disk:
 *
 * - runs of pseudo-random data (incompressible, a pure function of the seed and the byte's
 *   offset, see {@linkcode fillData}) at offsets and with sizes that are multiples of 512 but
 *   not of 64 KiB, so that they straddle qcow2 clusters;
 * - a zeroed-but-allocated region: qcow2 zero clusters (`qemu-io write -z`), vmdk zeroed
 *   grains, or for raw an extent allocated with `fallocate` (unwritten, reads as zeros);
 * - a region of zero bytes written as ordinary data (`qemu-io write -P 0`, or plain writes);
 * - holes, never written, between all of these;
 * - a short data run that ends at the very last sector.
 *
 * Data is generated with xorshift128 in 4 MiB chunks and written with seek+write while the
 * next chunk is generated. qcow2 and vmdk images are made from a temporary raw file with
 * `qemu-img convert`, which drops zero regions, so those are applied afterwards with
 * `qemu-io`.
 *
 * As a command:
 *
 *     deno run -A scripts/make_test_image.ts OUT --format qcow2|raw|vmdk --size 1G --data 64M \
 *         [--seed N] [--json]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { run } from "../src/process.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Data is generated in blocks of this size, each seeded from (seed, block index). */
const BLOCK = 64 * KiB;
/** Generation and write chunk. */
const CHUNK = 4 * MiB;
/** Length of the data run that ends at the last sector. */
const TAIL = 9 * 512;

/** Image formats {@linkcode makeTestImage} can write. */
export type TestImageFormat = "raw" | "qcow2" | "vmdk";

/**
 * What a region of a test image holds.
 *
 * - `data`: pseudo-random bytes, see {@linkcode fillData}.
 * - `zero`: reads as zeros, allocated without data: qcow2 zero clusters, vmdk zeroed grains,
 *   fallocated extents in raw files.
 * - `zero-data`: zero bytes written as ordinary data (allocated, reported as data).
 * - `hole`: never written.
 */
export type RegionKind = "data" | "zero" | "zero-data" | "hole";

/** One region of a test image's layout. */
export interface Region {
  /** Byte offset in the virtual disk. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** What the region holds. */
  kind: RegionKind;
}

/** Options for {@linkcode makeTestImage}. */
export interface TestImageOptions {
  /** Image format. */
  format: TestImageFormat;
  /** Virtual size in bytes; a multiple of 1 MiB, at least 16 MiB. */
  virtualSize: number;
  /** Bytes of pseudo-random data; a multiple of 512, at most half the virtual size. */
  dataBytes: number;
  /**
   * Seed of the pseudo-random data and of the layout.
   * @default 1
   */
  seed?: number;
}

/** What {@linkcode makeTestImage} wrote. */
export interface TestImage {
  /** Bytes of pseudo-random data (the sum of the `data` regions). */
  dataBytes: number;
  /** The virtual size in bytes. */
  virtualSize: number;
  /** Regions in disk order, covering the whole disk, holes included. */
  layout: Region[];
}

/**
 * Creates a sparse test image with data runs, zero regions and holes.
 *
 * @param path Where to write the image; replaced if it exists.
 * @param options Format, virtual size, amount of data, seed.
 * @returns The layout that was written.
 * @throws {RangeError} When the sizes are invalid or the data does not fit.
 *
 * @example
 * ```ts ignore
 * import { makeTestImage } from "./make_test_image.ts";
 * const image = await makeTestImage("/tmp/test.qcow2", {
 *   format: "qcow2",
 *   virtualSize: 64 * 1024 * 1024,
 *   dataBytes: 8 * 1024 * 1024,
 * });
 * console.log(image.layout.filter((r) => r.kind === "data").length);
 * ```
 */
export async function makeTestImage(path: string, options: TestImageOptions): Promise<TestImage> {
  const { format, virtualSize, dataBytes } = options;
  const seed = options.seed ?? 1;
  const layout = planLayout(virtualSize, dataBytes, seed);
  await Deno.remove(path).catch(() => {});
  if (format === "raw") {
    await writeRaw(path, virtualSize, layout, seed, { zeros: true });
  } else {
    const raw = `${path}.data.tmp`;
    try {
      await writeRaw(raw, virtualSize, layout, seed, { zeros: false });
      const opts = format === "vmdk" ? ["-o", "zeroed_grain=on"] : [];
      await run("qemu-img", ["convert", "-W", "-f", "raw", "-O", format, ...opts, raw, path], {
        what: `Cannot create "${path}"`,
      });
    } finally {
      await Deno.remove(raw).catch(() => {});
    }
    const commands = layout.flatMap((r) =>
      r.kind === "zero"
        ? ["-c", `write -z ${r.offset} ${r.length}`]
        : r.kind === "zero-data"
        ? ["-c", `write -P 0 ${r.offset} ${r.length}`]
        : []
    );
    await run("qemu-io", ["-f", format, ...commands, path], {
      what: `Cannot write zero regions to "${path}"`,
    });
  }
  return { dataBytes, virtualSize, layout };
}

/**
 * Plans the layout of a test image without writing anything.
 *
 * @param virtualSize Virtual size in bytes (a multiple of 1 MiB, at least 16 MiB).
 * @param dataBytes Bytes of data (a multiple of 512, at least 64 KiB, at most half the disk).
 * @param seed Seed for the run sizes and offsets.
 * @returns Regions in disk order covering the whole disk.
 * @throws {RangeError} When the sizes are invalid.
 *
 * @example
 * ```ts
 * import { planLayout } from "./make_test_image.ts";
 * const layout = planLayout(64 * 1024 * 1024, 8 * 1024 * 1024, 1);
 * const data = layout.filter((r) => r.kind === "data").reduce((n, r) => n + r.length, 0);
 * if (data !== 8 * 1024 * 1024) throw new Error("wrong amount of data");
 * ```
 */
export function planLayout(virtualSize: number, dataBytes: number, seed: number): Region[] {
  if (!Number.isSafeInteger(virtualSize) || virtualSize % MiB !== 0 || virtualSize < 16 * MiB) {
    throw new RangeError(
      `Invalid virtual size "${virtualSize}": must be a multiple of 1 MiB, at least 16 MiB`,
    );
  }
  if (
    !Number.isSafeInteger(dataBytes) || dataBytes % 512 !== 0 || dataBytes < 64 * KiB ||
    dataBytes > virtualSize / 2
  ) {
    throw new RangeError(
      `Invalid data size "${dataBytes}": must be a multiple of 512, at least 64 KiB and at most ` +
        `half the virtual size (${virtualSize})`,
    );
  }
  const rng = new Xorshift128(seed ^ 0x5eed1a70, 0);
  const runs = Math.min(64, Math.max(3, Math.floor(dataBytes / (64 * MiB))));
  // One slot per run, one for the zero region, one for the zero-data region, one for the tail.
  const slotSize = Math.floor(virtualSize / (runs + 3) / MiB) * MiB;

  // Run sizes: random weights in [0.5, 1.5), rounded to sectors, never a multiple of 64 KiB.
  const body = dataBytes - TAIL;
  const weights = Array.from({ length: runs }, () => 0.5 + rng.nextFloat());
  const total = weights.reduce((a, b) => a + b, 0);
  const sizes = weights.map((w) => Math.floor((body * w) / total / 512) * 512);
  sizes[runs - 1]! += body - sizes.reduce((a, b) => a + b, 0);
  for (let i = 0; i < runs; i++) {
    if (sizes[i]! % BLOCK === 0) {
      const j = i === runs - 1 ? i - 1 : i + 1;
      sizes[i]! -= 512;
      sizes[j]! += 512;
    }
  }
  // Moving 512 bytes into the previous run can make it 64 KiB-aligned: undo that once more.
  if (sizes[runs - 2]! % BLOCK === 0) {
    sizes[runs - 2]! -= 1024;
    sizes[0]! += 1024;
  }
  const largest = Math.max(...sizes);
  if (sizes.some((s) => s <= 0 || s % BLOCK === 0) || largest > slotSize - BLOCK) {
    throw new RangeError(
      `Cannot fit ${dataBytes} bytes of data into a ${virtualSize}-byte disk: use a larger disk`,
    );
  }

  const zeroLength = clamp(Math.floor(slotSize / 4 / BLOCK) * BLOCK, BLOCK, 64 * MiB);
  const zeroDataLength = clamp(Math.floor(slotSize / 8 / BLOCK) * BLOCK, BLOCK, 16 * MiB);
  const regions: Region[] = [];
  let slot = 0;
  const dataRun = (length: number) => {
    // 1..127 sectors into a 1 MiB-aligned slot: never 64 KiB-aligned.
    const offset = slot++ * slotSize + 512 * (1 + Math.floor(rng.nextFloat() * 127));
    regions.push({ offset, length, kind: "data" });
  };
  dataRun(sizes[0]!);
  regions.push({ offset: slot++ * slotSize, length: zeroLength, kind: "zero" });
  dataRun(sizes[1]!);
  regions.push({ offset: slot++ * slotSize, length: zeroDataLength, kind: "zero-data" });
  for (let i = 2; i < runs; i++) dataRun(sizes[i]!);
  regions.push({ offset: virtualSize - TAIL, length: TAIL, kind: "data" });

  const layout: Region[] = [];
  let pos = 0;
  for (const r of regions) {
    if (r.offset > pos) layout.push({ offset: pos, length: r.offset - pos, kind: "hole" });
    layout.push(r);
    pos = r.offset + r.length;
  }
  return layout;
}

/**
 * Fills a buffer with the pseudo-random bytes a test image of this seed holds at an offset.
 * The same bytes are written wherever a `data` region covers that offset.
 *
 * @param seed The image's seed.
 * @param offset Byte offset in the virtual disk.
 * @param out The buffer to fill.
 *
 * @example
 * ```ts
 * import { fillData } from "./make_test_image.ts";
 * const a = new Uint8Array(1000);
 * const b = new Uint8Array(500);
 * fillData(7, 512, a);
 * fillData(7, 1012, b);
 * if (a[500] !== b[0] || a[999] !== b[499]) throw new Error("not a function of the offset");
 * ```
 */
export function fillData(seed: number, offset: number, out: Uint8Array): void {
  const first = Math.floor(offset / BLOCK);
  const blocks = Math.ceil((offset + out.length) / BLOCK) - first;
  const scratch = new Uint32Array((blocks * BLOCK) / 4);
  generateBlocks(seed, first, scratch);
  const start = offset - first * BLOCK;
  out.set(new Uint8Array(scratch.buffer, start, out.length));
}

/**
 * Parses a size such as `512`, `64K`, `64M`, `1G`, `1.5GiB`, `2T` (binary units).
 *
 * @param text The size.
 * @returns Bytes.
 * @throws {SyntaxError} When the text is not a size.
 *
 * @example
 * ```ts
 * import { parseSize } from "./make_test_image.ts";
 * if (parseSize("64M") !== 64 * 1024 * 1024) throw new Error("wrong");
 * ```
 */
export function parseSize(text: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$/i);
  if (!m) throw new SyntaxError(`Invalid size "${text}": expected e.g. 512, 64M, 4G`);
  const unit = { "": 1, k: KiB, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[
    (m[2] ?? "").toLowerCase() as "" | "k" | "m" | "g" | "t"
  ];
  return Math.round(Number(m[1]) * unit);
}

/**
 * Formats bytes with a binary unit, e.g. `4 GiB`, `1.5 MiB`.
 *
 * @param bytes The size.
 * @returns Text for people.
 *
 * @example
 * ```ts
 * import { formatSize } from "./make_test_image.ts";
 * if (formatSize(1536 * 1024) !== "1.5 MiB") throw new Error("wrong");
 * ```
 */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${Number(n.toFixed(2))} ${units[u]}`;
}

// ---------------------------------------------------------------------------------------------

/** xorshift128 (Marsaglia): fast, and its output does not compress. */
class Xorshift128 {
  #x: number;
  #y: number;
  #z: number;
  #w: number;

  constructor(seed: number, stream: number) {
    // Derive four non-zero state words from (seed, stream) with the murmur3 finaliser.
    this.#x = fmix32((seed ^ fmix32(stream + 0x9e3779b9)) >>> 0) || 1;
    this.#y = fmix32(this.#x + 0x7f4a7c15);
    this.#z = fmix32(this.#y + 0x85ebca6b);
    this.#w = fmix32(this.#z + 0xc2b2ae35);
  }

  /** Fills `out[start, end)` with the next words. */
  fill(out: Uint32Array, start: number, end: number): void {
    let x = this.#x, y = this.#y, z = this.#z, w = this.#w;
    for (let i = start; i < end; i++) {
      const t = x ^ (x << 11);
      x = y;
      y = z;
      z = w;
      w = w ^ (w >>> 19) ^ (t ^ (t >>> 8));
      out[i] = w;
    }
    this.#x = x;
    this.#y = y;
    this.#z = z;
    this.#w = w;
  }

  /** A float in [0, 1). */
  nextFloat(): number {
    const one = new Uint32Array(1);
    this.fill(one, 0, 1);
    return one[0]! / 2 ** 32;
  }
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Fills `out` (a whole number of blocks) with the data of blocks `first`, `first + 1`, ... */
function generateBlocks(seed: number, first: number, out: Uint32Array): void {
  const words = BLOCK / 4;
  for (let b = 0; b * words < out.length; b++) {
    const index = first + b;
    // Block indexes beyond 2^32 (256 TiB) mix in their high part.
    const stream = (index >>> 0) ^ fmix32(Math.floor(index / 2 ** 32));
    new Xorshift128(seed, stream).fill(out, b * words, (b + 1) * words);
  }
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

/** Writes a raw image: data runs, and with `zeros` the zero and zero-data regions too. */
async function writeRaw(
  path: string,
  virtualSize: number,
  layout: Region[],
  seed: number,
  options: { zeros: boolean },
): Promise<void> {
  {
    using file = await Deno.open(path, { write: true, create: true, truncate: true });
    await file.truncate(virtualSize);
    // Two buffers: one is written while the next chunk is generated into the other. One extra
    // block because a chunk starts at the block holding an unaligned run start.
    const buffers = [0, 1].map(() => new Uint32Array((CHUNK + BLOCK) / 4));
    let turn = 0;
    let pending: Promise<void> = Promise.resolve();
    const write = (offset: number, bytes: Uint8Array) => {
      const previous = pending;
      pending = (async () => {
        await previous;
        await file.seek(offset, Deno.SeekMode.Start);
        await writeAll(file, bytes);
      })();
    };
    try {
      for (const r of layout) {
        if (r.kind === "data") {
          const end = r.offset + r.length;
          let pos = r.offset;
          while (pos < end) {
            const first = Math.floor(pos / BLOCK);
            const stop = Math.min(end, first * BLOCK + CHUNK);
            const blocks = Math.ceil(stop / BLOCK) - first;
            const buffer = buffers[turn++ % 2]!;
            // The write that used this buffer two chunks ago has finished: at most one write is
            // queued behind the one in flight, and it uses the other buffer.
            generateBlocks(seed, first, buffer.subarray(0, (blocks * BLOCK) / 4));
            const bytes = new Uint8Array(buffer.buffer, pos - first * BLOCK, stop - pos);
            await pending;
            write(pos, bytes);
            pos = stop;
          }
        } else if (r.kind === "zero-data" && options.zeros) {
          const zeros = new Uint8Array(Math.min(CHUNK, r.length));
          for (let pos = r.offset; pos < r.offset + r.length; pos += zeros.length) {
            await pending;
            write(pos, zeros.subarray(0, Math.min(zeros.length, r.offset + r.length - pos)));
          }
        }
      }
    } finally {
      await pending;
    }
  }
  if (options.zeros) {
    for (const r of layout) {
      if (r.kind !== "zero") continue;
      await run("fallocate", ["--offset", `${r.offset}`, "--length", `${r.length}`, path], {
        what: `Cannot allocate a zero region in "${path}"`,
      });
    }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

const USAGE = `Usage: deno run -A scripts/make_test_image.ts OUT --format qcow2|raw|vmdk \\
    --size SIZE --data SIZE [--seed N] [--json]

Creates a sparse test image with pseudo-random data runs, zero regions and holes.
Sizes take binary units: 512, 64K, 64M, 16G.`;

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        format: { type: "string", default: "qcow2" },
        size: { type: "string", default: "1G" },
        data: { type: "string", default: "64M" },
        seed: { type: "string", default: "1" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    console.error(`make_test_image: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const format = values.format;
  if (positionals.length !== 1 || !["raw", "qcow2", "vmdk"].includes(format)) {
    console.error(USAGE);
    return 2;
  }
  let image: TestImage;
  const t0 = performance.now();
  try {
    image = await makeTestImage(positionals[0]!, {
      format: format as TestImageFormat,
      virtualSize: parseSize(values.size),
      dataBytes: parseSize(values.data),
      seed: Number(values.seed),
    });
  } catch (e) {
    if (e instanceof RangeError || e instanceof SyntaxError) {
      console.error(`make_test_image: ${e.message}`);
      return 2;
    }
    throw e;
  }
  const seconds = (performance.now() - t0) / 1000;
  if (values.json) {
    console.log(JSON.stringify({ ...image, format, seconds }, null, 2));
  } else {
    console.error(
      `Created "${positionals[0]}": ${format}, ${formatSize(image.virtualSize)} virtual, ` +
        `${formatSize(image.dataBytes)} of data in ${
          image.layout.filter((r) => r.kind === "data").length
        } runs, in ${seconds.toFixed(1)} s`,
    );
  }
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
