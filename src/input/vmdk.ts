/**
 * VMware's disk format, VMDK, as far as vmshift needs it before handing a disk to qemu's vmdk
 * driver: which files make up the disk, how large it is, whether it is a snapshot, and whether
 * every file is there, readable and as large as the descriptor says. qemu reads the data; this
 * module only makes sure that it will read the right thing, and says clearly what is wrong
 * when it would not (qemu pads a truncated extent with zeroes without a word).
 *
 * A VMDK is described by a text *descriptor* (VMware's "Virtual Disk Format 5.0"):
 *
 *     # Disk DescriptorFile
 *     version=1
 *     encoding="UTF-8"
 *     CID=fffffffe
 *     parentCID=ffffffff
 *     createType="twoGbMaxExtentSparse"
 *
 *     # Extent description
 *     RW 4192256 SPARSE "guest-s001.vmdk"
 *     RW 2048 SPARSE "guest-s002.vmdk"
 *
 *     # The Disk Data Base
 *     #DDB
 *     ddb.adapterType = "lsilogic"
 *
 * The descriptor is a file of its own (`monolithicFlat`, `twoGbMaxExtent*`, ESXi's `vmfs`), or
 * is embedded in a hosted sparse extent (`monolithicSparse`, `streamOptimized`): a file that
 * starts with the `KDMV` header, which gives the descriptor's place in sectors. Each extent line
 * is `ACCESS SECTORS TYPE "FILE" [OFFSET]`; the disk's size is the sum of its extents.
 *
 * Snapshots: a delta disk names its parent (`parentCID` other than `ffffffff`,
 * `parentFileNameHint`), and VMware names it `NAME-000001.vmdk`. vmshift refuses them, as
 * virt-v2v does: the user consolidates the snapshots in VMware first.
 *
 * Every read goes through a {@linkcode FileAccess}, so that the same checks run on local files
 * ({@linkcode localFiles}) and on a remote datastore (an SFTP implementation for `-it ssh`).
 *
 * @module
 */

import { posix } from "node:path";
import { fsReason } from "../errors.ts";

/**
 * How files are read: locally, or over SFTP. Paths are POSIX paths as the implementation
 * understands them (absolute). Errors should be `Deno.errors.NotFound`,
 * `Deno.errors.PermissionDenied` or `Deno.errors.IsADirectory` where they apply, so that
 * messages can say "no such file" or "permission denied"; any other error's message is shown.
 */
export interface FileAccess {
  /**
   * A file's size and kind.
   * @param path The file.
   * @returns Its size in bytes, and whether it is a regular file (or a block device).
   */
  stat(path: string): Promise<{ size: number; isFile: boolean }>;
  /**
   * Reads part of a file.
   * @param path The file.
   * @param offset Where to start.
   * @param length How many bytes; keep reads small (descriptors, headers, grain tables).
   * @returns The bytes; fewer than `length` only at the end of the file.
   */
  read(path: string, offset: number, length: number): Promise<Uint8Array>;
  /**
   * How a path is named in messages, e.g. `ssh://esxi/vmfs/volumes/ds1/guest/guest.vmx`.
   * @default the path itself
   */
  display?(path: string): string;
}

/** {@linkcode FileAccess} on local files (and NFS mounts). */
export const localFiles: FileAccess = {
  async stat(path) {
    const st = await Deno.stat(path);
    return { size: st.size, isFile: st.isFile || st.isBlockDevice === true };
  },
  async read(path, offset, length) {
    using f = await Deno.open(path, { read: true });
    await f.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(length);
    let got = 0;
    while (got < length) {
      const n = await f.read(buf.subarray(got));
      if (n === null || n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  },
};

/** What makes an error reading a file, for messages: "no such file", "permission denied"... */
export const fileError: (e: unknown) => string = fsReason;

/** One extent line of a descriptor. */
export interface VmdkExtent {
  /** `RW`, `RDONLY` or `NOACCESS`. */
  access: "RW" | "RDONLY" | "NOACCESS";
  /** Its size in 512-byte sectors. */
  sectors: number;
  /** `FLAT`, `SPARSE`, `ZERO`, `VMFS`, `VMFSSPARSE`, `SESPARSE`, `VMFSRDM`, `VMFSRAW`... */
  type: string;
  /** The file, as written (relative to the descriptor's directory); none for `ZERO`. */
  fileName?: string;
  /** Where the extent's data starts in a `FLAT` file, in sectors. */
  offset: number;
  /** The line in the descriptor, from 1. */
  line: number;
}

/** A parsed descriptor. */
export interface VmdkDescriptor {
  /** `version` (1 when absent). */
  version: number;
  /** `CID`: the content ID, 8 hex digits, lower case. */
  cid?: string;
  /** `parentCID`: `ffffffff` for a disk without parent. */
  parentCid?: string;
  /** `createType`, e.g. `monolithicSparse`. */
  createType: string;
  /** `parentFileNameHint`: the parent of a delta disk. */
  parentFileNameHint?: string;
  /** The extents, in disk order. */
  extents: VmdkExtent[];
  /** The disk database (`ddb.*` keys, lower case, without `ddb.`), e.g. `adaptertype`. */
  ddb: Record<string, string>;
  /** Every other `key=value` of the header, keys lower case. */
  header: Record<string, string>;
}

/** The `KDMV` header of a hosted sparse extent (VMware's `SparseExtentHeader`), sizes in sectors. */
export interface SparseHeader {
  /** Format version: 1, 2 or 3. */
  version: number;
  /** Bit 0: newline test; 1: redundant grain table; 2: zeroed-grain GTEs; 16: compressed; 17: markers. */
  flags: number;
  /** The extent's size. */
  capacity: number;
  /** Sectors per grain (128 = 64 KiB). */
  grainSize: number;
  /** Where the embedded descriptor is (0: none). */
  descriptorOffset: number;
  /** How long the embedded descriptor is. */
  descriptorSize: number;
  /** Grain table entries per grain table (512). */
  numGTEsPerGT: number;
  /** The redundant grain directory. */
  rgdOffset: number;
  /** The grain directory; {@linkcode GD_AT_END} when it is in the footer's. */
  gdOffset: number;
  /** Sectors of metadata at the start of the file. */
  overhead: number;
  /** The extent was not closed cleanly. */
  uncleanShutdown: boolean;
  /** 0: none, 1: deflate. */
  compressAlgorithm: number;
}

/** `gdOffset` of a streamOptimized header whose grain directory is given in the footer. */
export const GD_AT_END = -1;

/** A disk read and checked by {@linkcode readVmdk}. */
export interface VmdkInfo {
  /** The descriptor's file (for an embedded descriptor: the sparse file). */
  path: string;
  /** The descriptor. */
  descriptor: VmdkDescriptor;
  /** The descriptor is embedded in a sparse extent (`monolithicSparse`, `streamOptimized`). */
  embedded: boolean;
  /** The size the guest sees, in bytes: the sum of the extents. */
  virtualSize: number;
  /** The extents, with the file each is in (resolved) and that file's size. */
  extents: Array<VmdkExtent & { path?: string; fileSize?: number }>;
  /** Every file of the disk, descriptor first, without repeats. */
  files: string[];
  /** Things that are odd but do not stop the migration (an unclean shutdown). */
  warnings: string[];
}

/** createTypes qemu reads and vmshift migrates. */
export const VMDK_CREATE_TYPES = [
  "monolithicSparse",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
  "streamOptimized",
  "vmfs",
] as const;

const DELTA_TYPES = new Set(["vmfssparse", "sesparse", "vsansparse"]);
const RAW_TYPES = new Set([
  "fulldevice",
  "partitioneddevice",
  "vmfsraw",
  "vmfsrawdevicemap",
  "vmfspassthroughrawdevicemap",
]);
const NO_PARENT = "ffffffff";
/** Descriptors are small; VMware's are under 2 KiB. Anything larger is not one. */
const MAX_DESCRIPTOR = 1024 * 1024;

/**
 * Whether a file name is VMware's name for a snapshot's delta disk: `NAME-000001.vmdk`.
 *
 * @param path The file's name or path.
 * @returns True for a delta disk's name.
 * @example
 * ```ts
 * import { isSnapshotFileName } from "./vmdk.ts";
 * if (!isSnapshotFileName("/vms/guest-000001.vmdk")) throw new Error();
 * if (isSnapshotFileName("guest-flat.vmdk") || isSnapshotFileName("guest_1.vmdk")) throw new Error();
 * ```
 */
export function isSnapshotFileName(path: string): boolean {
  return /-\d{6}\.vmdk$/i.test(path);
}

/**
 * The message for a disk that is a snapshot, as virt-v2v words it.
 *
 * @param shown The disk's name as shown to the user.
 * @returns The message.
 */
export function snapshotMessage(shown: string): string {
  return `Cannot read "${shown}": the VM has snapshots; consolidate (delete) all snapshots in ` +
    "VMware first";
}

/**
 * Decodes a descriptor's bytes: NUL padding dropped, in the character set its `encoding` key
 * names (UTF-8 when absent or unknown).
 *
 * @param bytes The descriptor as stored.
 * @returns Its text.
 * @example
 * ```ts
 * import { decodeDescriptor } from "./vmdk.ts";
 * const text = decodeDescriptor(new TextEncoder().encode("# Disk DescriptorFile\nversion=1\n\0\0"));
 * if (text !== "# Disk DescriptorFile\nversion=1\n") throw new Error();
 * ```
 */
export function decodeDescriptor(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  const body = nul < 0 ? bytes : bytes.subarray(0, nul);
  const label = new TextDecoder("latin1").decode(body).match(
    /^[ \t]*encoding[ \t]*=[ \t]*"([^"\r\n]*)"/im,
  )?.[1];
  let decoder = new TextDecoder("utf-8");
  if (label) {
    try {
      decoder = new TextDecoder(label);
    } catch {
      // An unknown character set: UTF-8 is right for every ASCII file name.
    }
  }
  return decoder.decode(body);
}

/**
 * Parses a descriptor's text.
 *
 * @param text The descriptor (see {@linkcode decodeDescriptor} for bytes).
 * @param name The file's name, for messages.
 * @returns The descriptor.
 * @throws {SyntaxError} For a line that is neither a comment, `KEY=VALUE` nor an extent, a
 * descriptor without `createType` or extents: `Cannot parse "guest.vmdk" descriptor line 7:
 * ...`.
 * @example
 * ```ts
 * import { parseDescriptor, vmdkVirtualSize } from "./vmdk.ts";
 * const d = parseDescriptor(`# Disk DescriptorFile
 * version=1
 * CID=fffffffe
 * parentCID=ffffffff
 * createType="twoGbMaxExtentFlat"
 * RW 4194304 FLAT "g-f001.vmdk" 0
 * RW 2048 FLAT "g-f002.vmdk" 0
 * ddb.adapterType = "lsilogic"
 * `, "g.vmdk");
 * if (d.extents.length !== 2 || d.extents[1]?.fileName !== "g-f002.vmdk") throw new Error();
 * if (vmdkVirtualSize(d) !== (4194304 + 2048) * 512 || d.ddb["adaptertype"] !== "lsilogic") {
 *   throw new Error();
 * }
 * ```
 */
export function parseDescriptor(text: string, name: string): VmdkDescriptor {
  const header: Record<string, string> = {};
  const ddb: Record<string, string> = {};
  const extents: VmdkExtent[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) continue;
    const fail = (detail: string): never => {
      throw new SyntaxError(`Cannot parse "${name}" descriptor line ${i + 1}: ${detail}`);
    };
    const ext = line.match(/^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+(.*))?$/);
    if (ext) {
      const type = ext[3]!.toUpperCase();
      const extent: VmdkExtent = {
        access: ext[1] as VmdkExtent["access"],
        sectors: Number(ext[2]),
        type,
        offset: 0,
        line: i + 1,
      };
      const rest = ext[4]?.trim() ?? "";
      if (rest) {
        const f = rest.match(/^"([^"]*)"(?:\s+(\d+))?$/);
        if (!f) fail(`expected an extent: ACCESS SECTORS TYPE "FILE" [OFFSET]`);
        extent.fileName = f![1]!;
        if (f![2] !== undefined) extent.offset = Number(f![2]);
      } else if (type !== "ZERO") {
        fail(`the ${type} extent names no file`);
      }
      if (!Number.isSafeInteger(extent.sectors) || !Number.isSafeInteger(extent.offset)) {
        fail("the extent is too large");
      }
      extents.push(extent);
      continue;
    }
    const kv = line.match(/^([A-Za-z0-9_.:-]+)\s*=\s*(?:"([^"]*)"|([^\s"]*))\s*$/);
    if (!kv) fail(`expected KEY=VALUE or an extent: ACCESS SECTORS TYPE "FILE" [OFFSET]`);
    const key = kv![1]!.toLowerCase();
    const value = kv![2] ?? kv![3] ?? "";
    if (key.startsWith("ddb.")) ddb[key.slice(4)] = value;
    else header[key] = value;
  }
  const createType = header["createtype"];
  if (!createType) {
    throw new SyntaxError(`Cannot parse "${name}" descriptor: it has no createType`);
  }
  if (extents.length === 0) {
    throw new SyntaxError(`Cannot parse "${name}" descriptor: it lists no extent`);
  }
  const version = header["version"] === undefined ? 1 : Number(header["version"]);
  if (!Number.isInteger(version)) {
    throw new SyntaxError(
      `Cannot parse "${name}" descriptor: invalid version "${header["version"]}"`,
    );
  }
  const d: VmdkDescriptor = { version, createType, extents, ddb, header };
  if (header["cid"] !== undefined) d.cid = header["cid"].toLowerCase();
  if (header["parentcid"] !== undefined) d.parentCid = header["parentcid"].toLowerCase();
  if (header["parentfilenamehint"]) d.parentFileNameHint = header["parentfilenamehint"];
  return d;
}

/**
 * The size the guest sees: the sum of the extents' sizes.
 *
 * @param d The descriptor.
 * @returns Bytes.
 */
export function vmdkVirtualSize(d: VmdkDescriptor): number {
  return d.extents.reduce((n, e) => n + e.sectors, 0) * 512;
}

/**
 * Whether a descriptor is a snapshot's delta disk: it has a parent.
 *
 * @param d The descriptor.
 * @returns True for a delta disk.
 */
export function isDeltaDisk(d: VmdkDescriptor): boolean {
  return (d.parentCid !== undefined && d.parentCid !== NO_PARENT) ||
    d.parentFileNameHint !== undefined || DELTA_TYPES.has(d.createType.toLowerCase()) ||
    d.extents.some((e) => DELTA_TYPES.has(e.type.toLowerCase()));
}

/**
 * Parses the `KDMV` header of a hosted sparse extent.
 *
 * @param bytes At least the first 77 bytes of the file.
 * @param name The file's name, for messages.
 * @returns The header.
 * @throws {SyntaxError} When it is not a KDMV header or its values make no sense.
 */
export function parseSparseHeader(bytes: Uint8Array, name: string): SparseHeader {
  const fail = (detail: string): never => {
    throw new SyntaxError(`Cannot read "${name}": ${detail}`);
  };
  if (bytes.length < 79 || new TextDecoder("latin1").decode(bytes.subarray(0, 4)) !== "KDMV") {
    fail("not a VMDK sparse extent (no KDMV header)");
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (at: number) => {
    const n = v.getBigUint64(at, true);
    return n === 0xffffffffffffffffn
      ? GD_AT_END
      : n > BigInt(Number.MAX_SAFE_INTEGER)
      ? NaN
      : Number(n);
  };
  const h: SparseHeader = {
    version: v.getUint32(4, true),
    flags: v.getUint32(8, true),
    capacity: u64(12),
    grainSize: u64(20),
    descriptorOffset: u64(28),
    descriptorSize: u64(36),
    numGTEsPerGT: v.getUint32(44, true),
    rgdOffset: u64(48),
    gdOffset: u64(56),
    overhead: u64(64),
    uncleanShutdown: v.getUint8(72) !== 0,
    compressAlgorithm: v.getUint16(77, true),
  };
  if (h.version < 1 || h.version > 3) fail(`unsupported sparse extent version ${h.version}`);
  if (!(h.capacity >= 0)) fail("invalid capacity in its header");
  if (!(h.grainSize >= 1) || (h.grainSize & (h.grainSize - 1)) !== 0 || h.grainSize > 1 << 20) {
    fail(`invalid grain size ${h.grainSize} in its header`);
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 1 << 20) {
    fail(`invalid grain table size ${h.numGTEsPerGT} in its header`);
  }
  for (const k of ["descriptorOffset", "descriptorSize", "rgdOffset", "overhead"] as const) {
    if (!(h[k] >= 0)) fail(`invalid ${k} in its header`);
  }
  if (!(h.gdOffset >= 0 || h.gdOffset === GD_AT_END)) fail("invalid gdOffset in its header");
  return h;
}

/** Options of {@linkcode readVmdk}. */
export interface ReadVmdkOptions {
  /**
   * Read the grain directory and grain tables of sparse extents, to check that every grain
   * they point to is inside the file (a truncated sparse file is otherwise read as zeroes). It
   * reads 2 KiB of tables per 32 MiB of allocated disk.
   * @default true
   */
  checkGrains?: boolean;
  /** Stops the reads when aborted. */
  signal?: AbortSignal;
}

/**
 * Reads a VMDK disk's descriptor (a text file, or embedded in a sparse extent) and checks the
 * disk before qemu reads it:
 *
 * - it is not a snapshot's delta disk (by name, `parentCID`, `parentFileNameHint`, type);
 * - its createType is one vmshift migrates ({@linkcode VMDK_CREATE_TYPES}), not a raw device;
 * - every extent's file exists and can be read;
 * - every flat extent's file holds `OFFSET + SECTORS` sectors;
 * - every sparse extent's header matches its extent line, and every grain its tables point to
 *   is inside the file (with {@linkcode ReadVmdkOptions.checkGrains}); a streamOptimized
 *   extent whose directory is at its end has its footer.
 *
 * @param path The descriptor's path (what the VMX's `fileName` names), absolute.
 * @param files How to read files.
 * @param options Grain checks, abort signal.
 * @returns The disk.
 * @throws {Error} `Cannot read "PATH": ...` naming the file at fault and what is wrong with it.
 */
export async function readVmdk(
  path: string,
  files: FileAccess,
  options: ReadVmdkOptions = {},
): Promise<VmdkInfo> {
  const show = (p: string) => files.display?.(p) ?? p;
  const fail = (p: string, detail: string): never => {
    throw new Error(`Cannot read "${show(p)}": ${detail}`);
  };
  if (isSnapshotFileName(path)) throw new Error(snapshotMessage(show(path)));
  const signal = options.signal;
  const stat = async (p: string, what = "") => {
    signal?.throwIfAborted();
    let st: { size: number; isFile: boolean };
    try {
      st = await files.stat(p);
    } catch (e) {
      return fail(p, `${what}${fileError(e)}`);
    }
    if (!st.isFile) fail(p, `${what}not a regular file`);
    return st.size;
  };
  const read = async (p: string, offset: number, length: number, what = "") => {
    signal?.throwIfAborted();
    try {
      return await files.read(p, offset, length);
    } catch (e) {
      return fail(p, `${what}${fileError(e)}`);
    }
  };

  const size = await stat(path);
  const head = await read(path, 0, Math.min(size, 4096));
  const magic = new TextDecoder("latin1").decode(head.subarray(0, 4));
  let descriptorBytes: Uint8Array;
  let embedded = false;
  let ownHeader: SparseHeader | undefined;
  if (magic === "KDMV") {
    ownHeader = parseSparseHeader(head, show(path));
    const splitExtent = "it is one extent of a split disk, not its descriptor (the VMX " +
      "should name the descriptor, the small .vmdk file without -sNNN)";
    if (ownHeader.descriptorOffset === 0 || ownHeader.descriptorSize === 0) {
      fail(path, splitExtent);
    }
    const at = ownHeader.descriptorOffset * 512;
    const len = ownHeader.descriptorSize * 512;
    if (len > MAX_DESCRIPTOR) fail(path, "its embedded descriptor is too large");
    if (at + len > size) fail(path, "the file is truncated: its descriptor is missing");
    descriptorBytes = await read(path, at, len);
    if (decodeDescriptor(descriptorBytes).trim() === "") {
      // The extents of a split sparse disk have room for a descriptor, left empty.
      fail(path, splitExtent);
    }
    embedded = true;
  } else if (magic === "COWD") {
    return fail(
      path,
      "it is an ESX sparse (COWD) extent, not a descriptor; the VM probably has snapshots: " +
        "consolidate (delete) all snapshots in VMware first",
    );
  } else {
    const text = new TextDecoder("latin1").decode(head.subarray(0, 1024));
    if (!/^\s*#\s*Disk DescriptorFile/i.test(text)) {
      fail(path, "not a VMDK disk (no VMDK header or descriptor)");
    }
    if (size > MAX_DESCRIPTOR) fail(path, "its descriptor is too large");
    descriptorBytes = size <= head.length ? head : await read(path, 0, size);
  }
  const d = parseDescriptor(decodeDescriptor(descriptorBytes), show(path));
  if (isDeltaDisk(d)) throw new Error(snapshotMessage(show(path)));
  const createType = d.createType.toLowerCase();
  if (RAW_TYPES.has(createType)) {
    fail(
      path,
      `it is a raw device mapping or physical disk (createType "${d.createType}"); copy it to ` +
        "a virtual disk in VMware first",
    );
  }
  if (!VMDK_CREATE_TYPES.some((t) => t.toLowerCase() === createType)) {
    fail(
      path,
      `unsupported VMDK type (createType "${d.createType}"); vmshift reads ${
        VMDK_CREATE_TYPES.join(", ")
      }`,
    );
  }

  if (embedded && (d.extents.length !== 1 || d.extents[0]!.type !== "SPARSE")) {
    fail(path, "its embedded descriptor must list one SPARSE extent: the file itself");
  }
  const dir = posix.dirname(path);
  const warnings: string[] = [];
  const out: VmdkInfo["extents"] = [];
  const filesSeen = [path];
  for (const [i, e] of d.extents.entries()) {
    const what = `extent ${i + 1} of "${show(path)}" (descriptor line ${e.line})`;
    if (e.access === "NOACCESS") fail(path, `${what} is marked NOACCESS`);
    if (e.type === "ZERO") {
      out.push({ ...e });
      continue;
    }
    if (e.type === "VMFSRDM" || e.type === "VMFSRAW" || e.type === "VMFSPASSTHROUGHRAW") {
      fail(path, `${what} is a raw device; copy it to a virtual disk in VMware first`);
    }
    if (!["FLAT", "VMFS", "SPARSE"].includes(e.type)) {
      fail(path, `${what} has an unsupported type "${e.type}"`);
    }
    // An embedded descriptor's extent is the file itself, whatever name it gives (qemu and
    // VMware read it so, and a renamed monolithicSparse file still names its old self).
    const p = embedded
      ? path
      : posix.isAbsolute(e.fileName!)
      ? posix.normalize(e.fileName!)
      : posix.join(dir, e.fileName!);
    if (!filesSeen.includes(p)) filesSeen.push(p);
    const of = p === path ? "" : `${what}: `;
    const fileSize = p === path ? size : await stat(p, of);
    if (e.type === "FLAT" || e.type === "VMFS") {
      // Reading the first byte proves the file can be opened for reading.
      if (e.sectors > 0) await read(p, e.offset * 512, 1, of);
      const need = (e.offset + e.sectors) * 512;
      if (fileSize < need) {
        fail(
          p,
          `the file is truncated: it holds ${fileSize} bytes, but "${
            show(path)
          }" says it holds ${need} (descriptor line ${e.line})`,
        );
      }
    } else {
      const header = p === path && ownHeader
        ? ownHeader
        : parseSparseHeader(await read(p, 0, 512, of), show(p));
      if (header.capacity !== e.sectors) {
        fail(
          p,
          `its header gives a capacity of ${header.capacity} sectors, but "${
            show(path)
          }" says ${e.sectors} (descriptor line ${e.line})`,
        );
      }
      if (header.uncleanShutdown) {
        warnings.push(
          `"${show(p)}" was not closed cleanly: is the VM running? Shut it down before migrating`,
        );
      }
      await checkSparse(show(p), header, fileSize, {
        read: (o, l) => read(p, o, l, of),
        fail: (detail) => fail(p, detail),
        checkGrains: options.checkGrains ?? true,
      });
    }
    out.push({ ...e, path: p, fileSize });
  }
  return {
    path,
    descriptor: d,
    embedded,
    virtualSize: vmdkVirtualSize(d),
    extents: out,
    files: filesSeen,
    warnings,
  };
}

/** Checks that a sparse extent's metadata and grains lie inside the file. */
async function checkSparse(
  name: string,
  header: SparseHeader,
  fileSize: number,
  io: {
    read: (offset: number, length: number) => Promise<Uint8Array>;
    fail: (detail: string) => never;
    checkGrains: boolean;
  },
): Promise<void> {
  const truncated = (what: string): never =>
    io.fail(`the file is truncated: ${what}, but the file holds only ${fileSize} bytes`);
  let h = header;
  if (h.gdOffset === GD_AT_END) {
    // streamOptimized written in one pass: the footer (a copy of the header with the real
    // gdOffset) is in the sector before the end-of-stream marker.
    if (fileSize < 1536) truncated("its footer is missing");
    const footer = await io.read(fileSize - 1024, 512);
    if (new TextDecoder("latin1").decode(footer.subarray(0, 4)) !== "KDMV") {
      io.fail(
        "the file is truncated: its footer (at the end of a streamOptimized file) is missing",
      );
    }
    h = parseSparseHeader(footer, name);
    if (h.gdOffset === GD_AT_END) io.fail("its footer has no grain directory");
  }
  if (h.overhead * 512 > fileSize) {
    truncated(`its header says it starts with ${h.overhead * 512} bytes of metadata`);
  }
  if (!io.checkGrains) return;

  const grainsPerGt = h.numGTEsPerGT;
  const gtCount = Math.ceil(h.capacity / (h.grainSize * grainsPerGt));
  const gdBytes = gtCount * 4;
  if (h.gdOffset * 512 + gdBytes > fileSize) {
    truncated(`its grain directory ends at byte ${h.gdOffset * 512 + gdBytes}`);
  }
  const gd = new DataView((await io.read(h.gdOffset * 512, gdBytes)).slice().buffer);
  const tables: Array<{ index: number; at: number }> = [];
  for (let i = 0; i < gtCount; i++) {
    const s = gd.getUint32(i * 4, true);
    if (s !== 0) tables.push({ index: i, at: s * 512 });
  }
  const gtBytes = grainsPerGt * 4;
  tables.sort((a, b) => a.at - b.at);
  let maxSector = 0;
  let maxGrain = 0;
  // Read the tables in runs of adjacent ones (qemu and VMware write them together), at most
  // 1 MiB at a time.
  for (let i = 0; i < tables.length;) {
    let j = i + 1;
    while (
      j < tables.length && tables[j]!.at === tables[j - 1]!.at + gtBytes &&
      (j - i + 1) * gtBytes <= 1024 * 1024
    ) j++;
    const start = tables[i]!.at;
    const len = (j - i) * gtBytes;
    if (start + len > fileSize) {
      truncated(`its grain table at byte ${start} ends at byte ${start + len}`);
    }
    const run = await io.read(start, len);
    if (run.length < len) truncated(`its grain table at byte ${start} ends at byte ${start + len}`);
    const dv = new DataView(run.buffer, run.byteOffset, run.byteLength);
    for (let t = i; t < j; t++) {
      const base = (t - i) * gtBytes;
      for (let g = 0; g < grainsPerGt; g++) {
        const s = dv.getUint32(base + g * 4, true);
        // 0: unallocated; 1: a zeroed grain (with the zeroed-grain flag).
        if (s > 1 && s > maxSector) {
          maxSector = s;
          maxGrain = tables[t]!.index * grainsPerGt + g;
        }
      }
    }
    i = j;
  }
  if (maxSector === 0) return;
  const start = maxSector * 512;
  if (h.flags & (1 << 16)) {
    // Compressed grains start with a marker: LBA (8 bytes) and the compressed size (4 bytes).
    if (start + 12 > fileSize) truncated(`a grain starts at byte ${start}`);
    const marker = await io.read(start, 12);
    const len = new DataView(marker.slice().buffer).getUint32(8, true);
    if (start + 12 + len > fileSize) {
      truncated(`a compressed grain ends at byte ${start + 12 + len}`);
    }
  } else {
    // The last grain of the extent may be partial.
    const sectors = Math.min(h.grainSize, h.capacity - maxGrain * h.grainSize);
    const end = start + Math.max(sectors, 1) * 512;
    if (end > fileSize) truncated(`its grain tables point to data up to byte ${end}`);
  }
}
