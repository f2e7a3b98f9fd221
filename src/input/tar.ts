/**
 * Tar archives, read in place: {@linkcode listTar} walks the headers of a tar file (an OVA) and
 * says where each member's data lies, so that the data can be served from inside the archive
 * without unpacking it. Only the 512-byte headers (and the few long-name and pax records) are
 * read; member data is skipped with a seek, whatever its size.
 *
 * Formats: POSIX ustar (with its 155-byte name prefix), GNU (`L`/`K` long names and links,
 * base-256 sizes for members of 8 GiB and more), pax (`x` extended headers: `path`, `linkpath`,
 * `size`; `g` global headers are skipped) and old v7 headers. Sparse members (GNU `S`, or pax
 * `GNU.sparse.*`) are listed with {@linkcode TarEntry.sparse} set: their data is not stored as
 * one run of bytes.
 *
 * @module
 */

import { fsReason } from "../errors.ts";

const BLOCK = 512;
/** Long names and pax records larger than this are refused rather than read into memory. */
const MAX_META = 1024 * 1024;

/** What a tar member is. */
export type TarEntryType = "file" | "directory" | "symlink" | "hardlink" | "other";

/** One member of a tar archive. */
export interface TarEntry {
  /** Path inside the archive, as stored (after long-name and pax records are applied). */
  name: string;
  /** What it is. */
  type: TarEntryType;
  /** Byte offset of the member's data in the archive. */
  offset: number;
  /** Length of the member's data in bytes (the stored bytes, for a sparse member). */
  size: number;
  /** Byte offset of the member's (first) header. */
  headerOffset: number;
  /** Target of a link. */
  linkName?: string;
  /** The data is stored sparse (GNU sparse formats): it is not the file's bytes in one run. */
  sparse?: boolean;
}

/** Options for {@linkcode listTar}. */
export interface ListTarOptions {
  /**
   * How the archive is named in error messages.
   * @default the path
   */
  name?: string;
  /** Stops the listing when aborted. */
  signal?: AbortSignal;
}

/**
 * Lists the members of a tar file with the offset and size of their data, reading only headers.
 *
 * The listing ends at the first all-zero block (the end-of-archive marker) or, as GNU tar
 * accepts, at the end of the file when it falls between members.
 *
 * @param path The tar file.
 * @param options Name for messages, abort signal.
 * @returns The members in archive order.
 * @throws {Error} When the file cannot be opened, is not a tar file, is truncated or has a
 * corrupt header; the message starts with `Cannot read "NAME": ` and says which.
 * @example
 * ```ts ignore
 * import { listTar } from "./tar.ts";
 * for (const e of await listTar("guest.ova")) console.log(e.name, e.offset, e.size);
 * ```
 */
export async function listTar(path: string, options: ListTarOptions = {}): Promise<TarEntry[]> {
  const label = options.name ?? path;
  const fail = (message: string): never => {
    throw new Error(`Cannot read "${label}": ${message}`);
  };
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    return fail(fsReason(e));
  }
  using _ = file;
  const fileSize = (await file.stat()).size;
  if (fileSize === 0) fail("empty file, not a tar archive");

  const entries: TarEntry[] = [];
  const header = new Uint8Array(BLOCK);
  // Long names and pax records apply to the next real member.
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax: Map<string, string> | undefined;
  let pos = 0;
  while (true) {
    options.signal?.throwIfAborted();
    if (pos === fileSize && entries.length) break; // no end-of-archive marker: GNU tar accepts
    const got = await readAt(file, pos, header);
    if (got < BLOCK) {
      if (pos === 0) fail(`not a tar archive (only ${fileSize} bytes)`);
      fail(`truncated tar archive: the file ends at byte ${fileSize}, inside a header`);
    }
    if (header.every((b) => b === 0)) {
      if (pos === 0) fail("not a tar archive (it starts with a block of zeros)");
      break;
    }
    if (!checksumOk(header)) {
      fail(
        pos === 0
          ? "not a tar archive (no valid tar header at the start)"
          : `corrupt tar archive: bad header checksum at byte ${pos}`,
      );
    }
    const typeflag = String.fromCharCode(header[156]!);
    const magic = text(header, 257, 6);
    const posix = magic === "ustar"; // "ustar\0"; GNU writes "ustar  \0" and no prefix field
    let size = numeric(header, 124, 12);
    if (size === undefined) {
      fail(`corrupt tar archive: bad size field in the header at byte ${pos}`);
    }
    let name = text(header, 0, 100);
    const prefix = posix ? text(header, 345, 155) : "";
    if (prefix) name = `${prefix}/${name}`;
    let linkName = text(header, 157, 100);
    const dataOffset = pos + BLOCK;
    let sparse = typeflag === "S";

    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      if (size! > MAX_META) {
        fail(`corrupt tar archive: a ${size}-byte metadata record at byte ${pos}`);
      }
      const data = new Uint8Array(size!);
      if (await readAt(file, dataOffset, data) < size!) {
        fail(`truncated tar archive: the file ends at byte ${fileSize}, inside a header`);
      }
      if (typeflag === "x") pax = parsePax(data, () => fail(`corrupt pax header at byte ${pos}`));
      else if (typeflag === "L") longName = cString(data);
      else if (typeflag === "K") longLink = cString(data);
      // A global header ("g") sets defaults for the whole archive; OVAs do not use them.
      pos = dataOffset + roundUp(size!);
      continue;
    }

    if (longName !== undefined) name = longName;
    if (longLink !== undefined) linkName = longLink;
    if (pax) {
      if (pax.has("path")) name = pax.get("path")!;
      if (pax.has("linkpath")) linkName = pax.get("linkpath")!;
      if (pax.has("size")) {
        const s = pax.get("size")!;
        if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
          fail(`corrupt pax header before byte ${pos}: bad size "${s}"`);
        }
        size = Number(s);
      }
      if ([...pax.keys()].some((k) => k.startsWith("GNU.sparse."))) {
        sparse = true;
        // GNU's pax sparse format hides the real name from tars that do not know it.
        if (pax.has("GNU.sparse.name")) name = pax.get("GNU.sparse.name")!;
      }
    }
    longName = longLink = pax = undefined;

    const type: TarEntryType = typeflag === "0" || typeflag === "\0" || typeflag === "7" ||
        typeflag === "S"
      ? "file"
      : typeflag === "5"
      ? "directory"
      : typeflag === "2"
      ? "symlink"
      : typeflag === "1"
      ? "hardlink"
      : "other";
    // Only members with data have bytes after the header (links and directories have none,
    // whatever their size field says).
    const stored = type === "file" || type === "other" ? size! : 0;
    if (dataOffset + stored > fileSize) {
      fail(
        `truncated tar archive: "${name}" needs ${stored} bytes from byte ${dataOffset}, ` +
          `but the file ends at byte ${fileSize}`,
      );
    }
    const entry: TarEntry = {
      name: type === "directory" ? name : name.replace(/\/+$/, ""),
      type,
      offset: dataOffset,
      size: stored,
      headerOffset: pos,
    };
    if (linkName && (type === "symlink" || type === "hardlink")) entry.linkName = linkName;
    if (sparse) entry.sparse = true;
    entries.push(entry);
    pos = dataOffset + roundUp(stored);
    if (pos > fileSize) pos = fileSize; // the last member's padding is missing
  }
  return entries;
}

/**
 * Reads bytes at an offset of an open file until the buffer is full or the file ends.
 *
 * @param file The open file.
 * @param offset Where to start.
 * @param buffer Where to put the bytes.
 * @returns How many bytes were read (less than the buffer only at the end of the file).
 */
export async function readAt(
  file: Deno.FsFile,
  offset: number,
  buffer: Uint8Array,
): Promise<number> {
  await file.seek(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < buffer.length) {
    const n = await file.read(buffer.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}

/**
 * Rounds a size up to a whole number of tar blocks (512 bytes).
 *
 * @param n Bytes.
 * @returns The next multiple of 512.
 * @example
 * ```ts
 * import { roundUp } from "./tar.ts";
 * if (roundUp(1) !== 512 || roundUp(1024) !== 1024) throw new Error();
 * ```
 */
export function roundUp(n: number): number {
  return Math.ceil(n / BLOCK) * BLOCK;
}

/** The header checksum: the sum of its bytes with the checksum field read as spaces. */
function checksumOk(h: Uint8Array): boolean {
  const stored = numeric(h, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  // Some old tars summed signed bytes.
  return stored === unsigned || stored === signed;
}

/**
 * A numeric header field: octal digits (space or NUL terminated, maybe space padded), or GNU
 * base-256 when the top bit of the first byte is set.
 */
function numeric(h: Uint8Array, at: number, len: number): number | undefined {
  const first = h[at]!;
  if (first & 0x80) {
    if (first === 0xff) return undefined; // negative
    let n = first & 0x7f;
    for (let i = 1; i < len; i++) n = n * 256 + h[at + i]!;
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const raw = String.fromCharCode(...h.subarray(at, at + len));
  const nul = raw.indexOf("\0");
  const digits = (nul < 0 ? raw : raw.slice(0, nul)).trim();
  if (digits === "") return 0;
  if (!/^[0-7]+$/.test(digits)) return undefined;
  const n = parseInt(digits, 8);
  return Number.isSafeInteger(n) ? n : undefined;
}

const decoder = new TextDecoder();

/** A NUL-terminated string field. */
function text(h: Uint8Array, at: number, len: number): string {
  return cString(h.subarray(at, at + len));
}

function cString(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return decoder.decode(nul < 0 ? b : b.subarray(0, nul));
}

/** Pax records: `LENGTH KEY=VALUE\n`, LENGTH counting the whole record in bytes. */
function parsePax(data: Uint8Array, bad: () => never): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // padding
    const space = data.indexOf(0x20, pos);
    if (space < 0) bad();
    const len = Number(decoder.decode(data.subarray(pos, space)));
    if (!Number.isSafeInteger(len) || len <= space - pos || pos + len > data.length) bad();
    const record = decoder.decode(data.subarray(space + 1, pos + len));
    const eq = record.indexOf("=");
    if (eq < 0 || !record.endsWith("\n")) bad();
    out.set(record.slice(0, eq), record.slice(eq + 1, -1));
    pos += len;
  }
  return out;
}
