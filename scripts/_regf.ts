/**
 * A writer of empty Windows registry hives ("regf" files), so that test guests are built from
 * hives our own code made rather than from hives copied out of a Windows installation. The
 * result holds one root key and nothing else; `hivexregedit --merge` (or libguestfs'
 * `hivex_*` calls) fill it.
 *
 * The layout follows the publicly documented format (e.g. the "Windows registry file format
 * specification" by Maxim Suhanov, and hivex's `lib/hivex-internal.h`):
 *
 *     0x0000  base block, 4096 bytes: "regf", sequence numbers, version 1.3, the offset of the
 *             root key, the size of the hive bins, and an XOR checksum of its first 508 bytes
 *     0x1000  one hive bin ("hbin"), 4096 bytes, holding cells; a cell starts with its size
 *             as an int32, negative when allocated, and is 8-byte aligned:
 *               0x20  "nk" cell: the root key (flags: hive entry, no delete, ASCII name)
 *               ....  "sk" cell: a security descriptor (self-relative, DACL present and null:
 *                     everyone has access), which every key must point to and which hivex
 *                     copies to the keys it adds
 *               ....  one free cell covering the rest of the bin
 *
 * Offsets inside the hive are relative to the first hive bin (file offset 0x1000).
 *
 * @module
 */

const BLOCK = 4096;
const NONE = 0xffffffff;

/**
 * Builds an empty hive.
 *
 * @param name The root key's name, as Windows names it in its hives (e.g. `ROOT`, or
 *   `CMI-CreateHive{...}`); nothing reads it back but tools that print it.
 * @returns The hive file's bytes (8 KiB).
 *
 * @example
 * ```ts
 * import { emptyHive } from "./_regf.ts";
 * const hive = emptyHive();
 * if (new TextDecoder().decode(hive.subarray(0, 4)) !== "regf") throw new Error("bad magic");
 * ```
 */
export function emptyHive(name = "ROOT"): Uint8Array {
  if (!/^[\x20-\x7e]{1,255}$/.test(name) || name.includes("\\")) {
    throw new RangeError(`Cannot name a registry key "${name}": printable ASCII without "\\"`);
  }
  const file = new Uint8Array(2 * BLOCK);
  const view = new DataView(file.buffer);
  const ascii = (at: number, s: string) => {
    for (let i = 0; i < s.length; i++) file[at + i] = s.charCodeAt(i);
  };
  // Windows FILETIME: 100 ns ticks since 1601-01-01 (a fixed date keeps builds reproducible).
  const filetime = 116444736000000000n + 1_700_000_000n * 10_000_000n;

  // Hive bin header.
  const bin = BLOCK;
  ascii(bin, "hbin");
  view.setUint32(bin + 4, 0, true); // offset of this bin from the first
  view.setUint32(bin + 8, BLOCK, true); // size of this bin
  view.setBigUint64(bin + 20, filetime, true);

  // Cells, at offsets relative to the first bin.
  const align = (n: number) => Math.ceil(n / 8) * 8;
  const nkAt = 0x20;
  const nkSize = align(4 + 76 + name.length);
  const skAt = nkAt + nkSize;
  const descriptor = new Uint8Array(20);
  const sd = new DataView(descriptor.buffer);
  sd.setUint8(0, 1); // revision
  sd.setUint16(2, 0x8004, true); // SE_SELF_RELATIVE | SE_DACL_PRESENT, DACL offset 0 (null)
  const skSize = align(4 + 20 + descriptor.length);
  const freeAt = skAt + skSize;

  // Root key ("nk"): offsets below are from the cell's data, after its size field.
  let c = bin + nkAt;
  view.setInt32(c, -nkSize, true);
  c += 4;
  ascii(c, "nk");
  view.setUint16(c + 2, 0x0004 | 0x0008 | 0x0020, true); // hive entry, no delete, ASCII name
  view.setBigUint64(c + 4, filetime, true);
  view.setUint32(c + 16, NONE, true); // parent: none
  view.setUint32(c + 20, 0, true); // subkeys
  view.setUint32(c + 24, 0, true); // volatile subkeys
  view.setUint32(c + 28, NONE, true); // subkey list
  view.setUint32(c + 32, NONE, true); // volatile subkey list
  view.setUint32(c + 36, 0, true); // values
  view.setUint32(c + 40, NONE, true); // value list
  view.setUint32(c + 44, skAt, true); // security
  view.setUint32(c + 48, NONE, true); // class name
  view.setUint16(c + 72, name.length, true);
  view.setUint16(c + 74, 0, true); // class name length
  ascii(c + 76, name);

  // Security ("sk"): a one-element circular list, used by one key.
  c = bin + skAt;
  view.setInt32(c, -skSize, true);
  c += 4;
  ascii(c, "sk");
  view.setUint32(c + 4, skAt, true); // next
  view.setUint32(c + 8, skAt, true); // previous
  view.setUint32(c + 12, 1, true); // reference count
  view.setUint32(c + 16, descriptor.length, true);
  file.set(descriptor, c + 20);

  // The rest of the bin is one free cell (positive size).
  view.setInt32(bin + freeAt, BLOCK - freeAt, true);

  // Base block.
  ascii(0, "regf");
  view.setUint32(4, 1, true); // primary sequence number
  view.setUint32(8, 1, true); // secondary sequence number (equal: the hive is consistent)
  view.setBigUint64(12, filetime, true);
  view.setUint32(20, 1, true); // major version
  view.setUint32(24, 3, true); // minor version
  view.setUint32(28, 0, true); // primary file
  view.setUint32(32, 1, true); // format: direct memory load
  view.setUint32(36, nkAt, true); // root key
  view.setUint32(40, BLOCK, true); // size of the hive bins
  view.setUint32(44, 1, true); // clustering factor
  let sum = 0;
  for (let i = 0; i < 508; i += 4) sum ^= view.getUint32(i, true);
  view.setUint32(508, sum >>> 0, true);
  return file;
}

if (import.meta.main) {
  const [out, name] = Deno.args;
  if (!out) {
    console.error("usage: deno run -A scripts/_regf.ts OUT.hive [ROOT-NAME]");
    Deno.exit(2);
  }
  await Deno.writeFile(out, emptyHive(name));
}
