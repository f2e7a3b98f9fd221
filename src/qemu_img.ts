/**
 * qemu-img, behind one module: image information, target creation and overlays.
 *
 * @module
 */

import { run, streamLines } from "./process.ts";

/** What `qemu-img info` says of an image. */
export interface ImageInfo {
  /** Detected format: raw, qcow2, vmdk, ... */
  format: string;
  /** The size the guest sees. */
  virtualSize: number;
  /** Bytes allocated on the host. */
  actualSize: number;
  /** The backing file, if any. */
  backingFile?: string;
}

/**
 * Reads an image's format and sizes. The format is probed: call this only on images to be
 * opened read-only.
 *
 * @param path The image.
 * @param options Abort signal.
 * @returns Format and sizes.
 */
export async function imageInfo(
  path: string,
  options: { signal?: AbortSignal; format?: string } = {},
): Promise<ImageInfo> {
  const args = ["info", "--output=json", "--force-share"];
  if (options.format) args.push("-f", options.format);
  args.push(path);
  const out = await run("qemu-img", args, {
    what: `Cannot read disk "${path}"`,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const j = JSON.parse(out) as Record<string, unknown>;
  return {
    format: String(j["format"]),
    virtualSize: Number(j["virtual-size"]),
    actualSize: Number(j["actual-size"] ?? 0),
    ...(typeof j["backing-filename"] === "string" ? { backingFile: j["backing-filename"] } : {}),
  };
}

/** Options for {@linkcode createImage}. */
export interface CreateOptions {
  /** raw or qcow2. */
  format: string;
  /** Virtual size in bytes. */
  size: number;
  /**
   * Allocate all space now (`preallocation=falloc`).
   * @default false
   */
  preallocated?: boolean;
  /** Abort signal. */
  signal?: AbortSignal;
}

/**
 * Creates an empty image. Fails if the file exists, so that nothing of the user's is
 * overwritten.
 *
 * @param path The new file.
 * @param options Format, size, allocation.
 */
export async function createImage(path: string, options: CreateOptions): Promise<void> {
  // O_EXCL: refuse to overwrite, and no race between the check and the creation.
  const f = await Deno.open(path, { write: true, createNew: true, mode: 0o644 });
  if (options.format === "raw" && !options.preallocated) {
    // A sparse raw image is a file of the right size: no program to start for it.
    try {
      await f.truncate(options.size);
    } catch (e) {
      throw new Error(`Cannot create "${path}": ${e instanceof Error ? e.message : e}`);
    } finally {
      f.close();
    }
    return;
  }
  f.close();
  const opts = [];
  if (options.preallocated) opts.push("preallocation=falloc");
  if (options.format === "qcow2") opts.push("compat=1.1");
  const args = ["create", "-q", "-f", options.format];
  if (opts.length) args.push("-o", opts.join(","));
  args.push(path, String(options.size));
  await run("qemu-img", args, {
    what: `Cannot create "${path}"`,
    ...(options.signal ? { signal: options.signal } : {}),
  });
}

/**
 * Creates a qcow2 overlay whose backing file is an NBD URI serving raw data. Every write lands
 * in the overlay; the backing source is only ever read.
 *
 * @param path The overlay file to create.
 * @param backingUri The NBD URI of the source disk.
 * @param size Virtual size of the source disk.
 * @param options Abort signal.
 */
export async function createOverlay(
  path: string,
  backingUri: string,
  size: number,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  await run("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "compat=1.1",
    "-b",
    backingUri,
    "-F",
    "raw",
    path,
    String(size),
  ], { what: `Cannot create the overlay for "${backingUri}"`, ...options });
}

/** One run of an image's map (`qemu-img map --output=json`): where guest bytes live. */
export interface MapEntry {
  /** Guest offset. */
  start: number;
  /** Byte count. */
  length: number;
  /** Whether the range reads as zeroes. */
  zero: boolean;
  /** Whether the range holds data. */
  data: boolean;
  /** Where the range's bytes are in the image file, when they are stored there as they are
   * (not for compressed clusters, nor for zeroes). */
  offset?: number;
}

/**
 * Maps an image: its guest ranges in order, each with where its bytes are stored in the file.
 * The map is read as qemu-img prints it, one entry at a time, so it need not fit in memory.
 *
 * @param path The image (opened read-only, shared with other readers).
 * @param format Its format (never probed).
 * @param options Abort signal.
 * @returns The entries; dispose to stop qemu-img early.
 */
export function mapImage(
  path: string,
  format: string,
  options: { signal?: AbortSignal } = {},
): AsyncDisposable & { entries: AsyncIterableIterator<MapEntry> } {
  const out = streamLines("qemu-img", [
    "map",
    "--output=json",
    "--force-share",
    "-f",
    format,
    path,
  ], { what: `Cannot map disk "${path}"`, ...options });
  async function* entries(): AsyncGenerator<MapEntry> {
    for await (const line of out.lines) {
      // One object per line, between "[" and "]" and ending with "," or "]".
      const text = line.trim().replace(/^\[/, "").replace(/[,\]]$/, "");
      if (!text) continue;
      const j = JSON.parse(text) as Record<string, unknown>;
      yield {
        start: Number(j["start"]),
        length: Number(j["length"]),
        zero: j["zero"] === true,
        data: j["data"] === true,
        ...(typeof j["offset"] === "number" ? { offset: j["offset"] } : {}),
      };
    }
  }
  return { entries: entries(), [Symbol.asyncDispose]: () => out[Symbol.asyncDispose]() };
}
