/**
 * OVA manifests (`NAME.mf`): one line per file of the package, `SHA256(disk1.vmdk)= HEX`
 * (ovftool writes SHA1 by default, SHA256 or SHA512 with `--shaAlgorithm`), and the streaming
 * hash that checks them. Files are hashed in chunks straight from the archive or the directory,
 * never loaded whole: disks are tens or hundreds of GiB.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Hash algorithms found in manifests. */
export type ManifestAlgorithm = "SHA1" | "SHA256" | "SHA512";

/** One line of a manifest. */
export interface ManifestEntry {
  /** The algorithm, as the manifest spells it. */
  algorithm: ManifestAlgorithm;
  /** The file, relative to the manifest's directory. */
  file: string;
  /** The expected digest, lower-case hex. */
  digest: string;
}

/** What {@linkcode parseManifest} found. */
export interface Manifest {
  /** The checksum lines, in order. */
  entries: ManifestEntry[];
  /** Lines that are not checksum lines (blank lines excepted), for a warning. */
  unparsed: string[];
}

const HEX_LENGTH: Record<ManifestAlgorithm, number> = { SHA1: 40, SHA256: 64, SHA512: 128 };
const LINE = /^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$/;

/**
 * Parses a manifest.
 *
 * @param text The manifest's text.
 * @returns Its checksum lines, and the lines it could not read.
 * @example
 * ```ts
 * import { parseManifest } from "./ova_manifest.ts";
 * const m = parseManifest(`SHA1(guest.ovf)= ${"ab".repeat(20)}\r\nnonsense\n`);
 * if (m.entries[0]?.file !== "guest.ovf" || m.unparsed[0] !== "nonsense") throw new Error();
 * ```
 */
export function parseManifest(text: string): Manifest {
  const entries: ManifestEntry[] = [];
  const unparsed: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/\r$/, "");
    if (!line.trim()) continue;
    const m = line.match(LINE);
    const algorithm = m?.[1] as ManifestAlgorithm | undefined;
    if (!m || !algorithm || m[3]!.length !== HEX_LENGTH[algorithm]) {
      unparsed.push(line);
      continue;
    }
    entries.push({ algorithm, file: m[2]!, digest: m[3]!.toLowerCase() });
  }
  return { entries, unparsed };
}

/** Options for {@linkcode hashFile}. */
export interface HashOptions {
  /**
   * Where the bytes start in the file (a member of a tar archive).
   * @default 0
   */
  offset?: number;
  /**
   * How many bytes to hash.
   * @default to the end of the file
   */
  length?: number;
  /** Stops hashing when aborted. */
  signal?: AbortSignal;
}

const CHUNK = 4 * 1024 * 1024;

/**
 * Hashes a file, or a range of it, reading it in chunks.
 *
 * @param path The file.
 * @param algorithm The manifest's algorithm.
 * @param options The range, abort signal.
 * @returns The digest, lower-case hex.
 * @throws {Error} When the file cannot be read or ends before the range does.
 * @example
 * ```ts
 * import { hashFile } from "./ova_manifest.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "xxabcxx");
 * const digest = await hashFile(path, "SHA1", { offset: 2, length: 3 });
 * await Deno.remove(path);
 * if (digest !== "a9993e364706816aba3e25717850c26c9cd0d89d") throw new Error(digest);
 * ```
 */
export async function hashFile(
  path: string,
  algorithm: ManifestAlgorithm,
  options: HashOptions = {},
): Promise<string> {
  using file = await Deno.open(path, { read: true });
  const offset = options.offset ?? 0;
  const end = options.length === undefined ? Infinity : offset + options.length;
  await file.seek(offset, Deno.SeekMode.Start);
  const hash = createHash(algorithm.toLowerCase());
  const buffer = new Uint8Array(CHUNK);
  let pos = offset;
  while (pos < end) {
    options.signal?.throwIfAborted();
    const want = Math.min(buffer.length, end - pos);
    const n = await file.read(buffer.subarray(0, want));
    if (n === null) {
      if (end === Infinity) break;
      throw new Error(`"${path}" ends at byte ${pos}, before byte ${end}`);
    }
    // update() consumes the bytes before returning, so the buffer can be reused.
    hash.update(buffer.subarray(0, n));
    pos += n;
  }
  return hash.digest("hex");
}
