/**
 * `-i ova FILE.ova`: a VM exported by VMware as an OVA (ovftool, vSphere "Export OVF
 * Template"): a tar file holding an OVF descriptor, a manifest and the disks (usually
 * streamOptimized VMDK), or a directory holding an unpacked OVA.
 *
 * 1. The archive is listed by reading its tar headers only ({@linkcode listTar}); a directory
 *    is walked. Compressed or zip archives are refused with what to do instead.
 * 2. The manifest (`*.mf`) is checked by hashing each file it lists straight from the archive
 *    (the OVF first, then every other file), as virt-v2v does; a mismatch stops the run. Files
 *    the manifest lists but the package lacks are skipped, as virt-v2v does for VMware's
 *    exports. Certificates (`*.cert`) are not checked.
 * 3. The OVF gives the VM ({@linkcode parseOvf}): name, memory, vCPUs and topology, firmware,
 *    secure boot, guest OS, disks on their buses, NICs with MAC, network and model.
 * 4. Each disk is served read-only by qemu-nbd from inside the archive, never extracted: a qemu
 *    `json:` filename puts the format driver (vmdk) on a `raw` driver with the member's
 *    `offset` and `size` over the OVA file, opened read-only. `"backing": null` keeps qemu from
 *    opening any other file a hostile VMDK names. A disk of an unpacked OVA is the file itself.
 *    A gzip-compressed disk (`ovf:compression="gzip"`, or `.vmdk.gz`) is decompressed by
 *    nbdkit's gzip filter over the member's range (it keeps the decompressed data in a hidden,
 *    already deleted file under `$TMPDIR`), with qemu-nbd's vmdk driver on top of it over NBD.
 * 5. Each disk's virtual size must be the capacity the OVF gives it.
 *
 * Errors start with `Cannot read "OVA": ` and say what is wrong.
 *
 * @module
 */

import { basename, posix, resolve } from "node:path";
import { UsageError } from "../errors.ts";
import { NbdClient } from "../nbd/client.ts";
import { Nbdkit, nbdkitHas } from "../nbdkit.ts";
import { imageInfo } from "../qemu_img.ts";
import { serveQemuNbd } from "../qemu_nbd.ts";
import { DEFAULT_MEMORY, DEFAULT_VCPUS, type Disk, diskName, type Nic, type Vm } from "../vm.ts";
import { hashFile, type ManifestEntry, parseManifest } from "./ova_manifest.ts";
import { type OvfDisk, parseOvf } from "./ovf_parser.ts";
import { listTar, readAt, roundUp } from "./tar.ts";
import type { Input, InputCli, InputSession, PreparedInput, RunContext } from "./types.ts";

/** The `-i ova` input. */
export const ovaInput: Input = {
  mode: "ova",
  parseOptions(cli: InputCli): PreparedInput {
    if (cli.args.length !== 1) {
      throw new UsageError(
        cli.args.length === 0
          ? `-i ova needs the OVA: vmshift -i ova FILE.ova -o ...`
          : `-i ova takes one OVA, got ${cli.args.length}: ${
            cli.args.map((a) => `"${a}"`).join(" ")
          }`,
      );
    }
    for (const flag of ["conn", "transport", "passwordFile", "format"] as const) {
      if (cli[flag] !== undefined) {
        throw new UsageError(
          `-i ova does not take ${flagName[flag]}${
            flag === "format" ? ": the disks' formats come from the OVA" : ""
          }`,
        );
      }
    }
    if (cli.options.length) {
      throw new UsageError(`-i ova takes no -io options, got "${cli.options[0]![0]}"`);
    }
    const path = resolve(cli.args[0]!);
    return {
      description: `-i ova ${path}`,
      open: (ctx) => openOva(path, ctx),
    };
  },
};

const flagName = { conn: "-ic", transport: "-it", passwordFile: "-ip", format: "-if" } as const;

/** The OVF and manifests are read into memory; anything this large is not one. */
const MAX_DESCRIPTOR = 16 * 1024 * 1024;

/** A file of the package: a member of the tar file, or a file of the directory. */
interface Member {
  /** Normalised path inside the package. */
  name: string;
  /** Bytes as stored. */
  size: number;
  /** The file to read. */
  path: string;
  /** Where the bytes start in `path` (0 for a directory's file). */
  offset: number;
  /** A member of the tar file (rather than a file of a directory). */
  inTar: boolean;
  /** Stored as a sparse tar member: its bytes are not in one run. */
  sparse: boolean;
}

/** An OVA, listed. */
interface Package {
  /** The OVA as the user named it (absolute), for messages. */
  path: string;
  /** Members by normalised name. */
  members: Map<string, Member>;
}

async function openOva(path: string, ctx: RunContext): Promise<InputSession> {
  const fail = (message: string): never => {
    throw new Error(`Cannot read "${path}": ${message}`);
  };
  const pkg = await listPackage(path, ctx, fail);

  const ovfs = [...pkg.members.values()].filter((m) => /\.ovf$/i.test(m.name));
  if (ovfs.length === 0) fail("there is no OVF descriptor (.ovf file) in it");
  if (ovfs.length > 1) {
    fail(
      `there are ${ovfs.length} OVF descriptors in it: ${
        ovfs.map((m) => `"${m.name}"`).join(", ")
      }`,
    );
  }
  const ovfMember = ovfs[0]!;
  const ovfDir = posix.dirname(ovfMember.name);
  for (const m of pkg.members.values()) {
    if (/\.cert$/i.test(m.name)) {
      ctx.debug(`ova: "${m.name}" is a signing certificate; vmshift does not check signatures`);
    }
  }

  // The manifest: checksums to verify, by member name.
  const manifest = new Map<string, ManifestEntry>();
  for (const mf of [...pkg.members.values()].filter((m) => /\.mf$/i.test(m.name))) {
    const text = await readText(mf, fail);
    const parsed = parseManifest(text);
    for (const line of parsed.unparsed) {
      ctx.debug(
        `ova: manifest "${mf.name}": line not understood (ignored): ${JSON.stringify(line)}`,
      );
    }
    for (const entry of parsed.entries) {
      const name = inside(posix.dirname(mf.name), entry.file);
      if (name === undefined) {
        fail(`the manifest "${mf.name}" names "${entry.file}", which is outside the OVA`);
      }
      manifest.set(name!, entry);
    }
  }
  if (manifest.size === 0) ctx.debug("ova: no manifest: the files' checksums are not verified");
  const verify = async (m: Member) => {
    const entry = manifest.get(m.name);
    if (!entry) return;
    ctx.debug(`ova: verifying the ${entry.algorithm} checksum of "${m.name}" (${m.size} bytes)`);
    const digest = await hashFile(m.path, entry.algorithm, {
      offset: m.offset,
      length: m.size,
      signal: ctx.signal,
    });
    if (digest !== entry.digest) {
      fail(`"${m.name}" does not match its ${entry.algorithm} checksum in the manifest`);
    }
  };

  // The OVF: checked against the manifest first, so that a corrupt one says so.
  await verify(ovfMember);
  let ovf;
  try {
    ovf = parseOvf(await readText(ovfMember, fail));
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    return fail(`invalid OVF descriptor "${ovfMember.name}": ${e.message}`);
  }
  for (const w of ovf.warnings) ctx.debug(`ova: ${w}`);
  if (ovf.disks.length === 0) fail(`the OVF descriptor "${ovfMember.name}" describes no disk`);

  // Every disk's file must be in the package before anything is hashed or served.
  const diskMembers = ovf.disks.map((d, i) => diskMember(pkg, ovfDir, d, i, ctx, fail));

  if (manifest.size) {
    for (const m of diskMembers) {
      if (!manifest.has(m.name)) ctx.debug(`ova: the manifest has no checksum for "${m.name}"`);
    }
  }

  // The rest of the manifest: the disks and whatever else it lists.
  for (const [name, entry] of manifest) {
    if (name === ovfMember.name) continue;
    const m = pkg.members.get(name);
    if (!m) {
      // VMware's exports have been seen listing files they do not contain (RHBZ#1570407).
      ctx.debug(`ova: the manifest lists "${entry.file}", which is not in the OVA: ignored`);
      continue;
    }
    await verify(m);
  }

  await using stack = new AsyncDisposableStack();
  const uris: string[] = [];
  const disks: Disk[] = [];
  for (const [i, d] of ovf.disks.entries()) {
    const m = diskMembers[i]!;
    const served = await serveDisk(pkg, m, d, i, ctx, stack, fail);
    uris.push(served.uri);
    const disk: Disk = {
      index: i,
      source: m.inTar ? `${path}/${m.name}` : m.path,
      virtualSize: served.virtualSize,
      sourceFormat: served.format,
    };
    if (d.bus) disk.bus = d.bus;
    disks.push(disk);
  }

  const vm: Vm = {
    name: ovf.name ?? (basename(path).replace(/\.ova$/i, "") || "vmshift-guest"),
    memory: ovf.memory ?? DEFAULT_MEMORY,
    vcpus: ovf.vcpus ?? DEFAULT_VCPUS,
    disks,
    nics: ovf.nics.map((n) => {
      const nic: Nic = { model: n.model };
      if (n.mac) nic.mac = n.mac;
      if (n.network) nic.network = n.network;
      return nic;
    }),
  };
  if (ovf.cpuTopology) vm.cpuTopology = ovf.cpuTopology;
  if (ovf.firmware) vm.firmware = ovf.firmware;
  if (ovf.secureBoot !== undefined) vm.secureBoot = ovf.secureBoot;
  if (ovf.guestOs) vm.guestOs = ovf.guestOs;

  const servers = stack.move();
  return {
    vm,
    uris,
    [Symbol.asyncDispose]: () => servers.disposeAsync(),
  };
}

/** Lists a tar file or walks a directory. */
async function listPackage(
  path: string,
  ctx: RunContext,
  fail: (message: string) => never,
): Promise<Package> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (e) {
    return fail(reason(e));
  }
  const members = new Map<string, Member>();
  if (stat.isDirectory) {
    await walk(path, "", 0, members, fail);
    ctx.debug(`ova: directory with ${members.size} files`);
    return { path, members };
  }
  if (!stat.isFile) fail("not a file or a directory");
  await checkNotCompressed(path, fail);
  const entries = await listTar(path, { name: path, signal: ctx.signal });
  for (const e of entries) {
    if (e.type !== "file") continue;
    const name = normalise(e.name);
    if (name === undefined) continue; // outside the archive's root: never referred to
    members.set(name, {
      name,
      size: e.size,
      path,
      offset: e.offset,
      inTar: true,
      sparse: e.sparse ?? false,
    });
  }
  ctx.debug(
    `ova: tar file with ${entries.length} members: ${
      [...members.values()].map((m) => `${m.name} (${m.size} bytes at ${m.offset})`).join(", ")
    }`,
  );
  return { path, members };
}

/** Files of an unpacked OVA, a few levels deep (virt-v2v looks for the OVF in subfolders). */
async function walk(
  top: string,
  rel: string,
  depth: number,
  out: Map<string, Member>,
  fail: (message: string) => never,
): Promise<void> {
  const dir = rel ? posix.join(top, rel) : top;
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    return fail(`cannot list "${dir}": ${reason(e)}`);
  }
  for (const e of entries) {
    const name = rel ? `${rel}/${e.name}` : e.name;
    const full = posix.join(top, name);
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(full); // follows symbolic links
    } catch {
      continue; // a dangling link
    }
    if (st.isDirectory && !e.isSymlink && depth < 3) await walk(top, name, depth + 1, out, fail);
    else if (st.isFile) {
      out.set(name, { name, size: st.size, path: full, offset: 0, inTar: false, sparse: false });
    }
  }
}

/** Refuses compressed and zip files with what to do instead. */
async function checkNotCompressed(path: string, fail: (message: string) => never): Promise<void> {
  const head = new Uint8Array(6);
  {
    using f = await Deno.open(path, { read: true });
    await readAt(f, 0, head);
  }
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  const compressor = starts(0x1f, 0x8b)
    ? "gzip"
    : starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)
    ? "xz"
    : starts(0x42, 0x5a, 0x68)
    ? "bzip2"
    : starts(0x28, 0xb5, 0x2f, 0xfd)
    ? "zstd"
    : undefined;
  if (compressor) {
    fail(
      `it is compressed (${compressor}), not a tar archive; decompress it first and give ` +
        "vmshift the .ova inside",
    );
  }
  if (starts(0x50, 0x4b, 0x03, 0x04)) {
    fail(
      "it is a zip file, not a tar archive; unzip it into a directory and give vmshift the directory",
    );
  }
}

/** Finds the member holding a disk's data, or says why there is none. */
function diskMember(
  pkg: Package,
  ovfDir: string,
  d: OvfDisk,
  i: number,
  ctx: RunContext,
  fail: (message: string) => never,
): Member {
  const what = d.label ? `"${d.label}"` : `disk ${i + 1}`;
  const file = d.file;
  if (!file) {
    return fail(
      `${what} has no file in the OVF (an empty disk, to be created on import); vmshift ` +
        "migrates existing disks only",
    );
  }
  if (file.chunkSize !== undefined) {
    fail(
      `"${file.href}" is split into chunks of ${file.chunkSize} bytes (ovf:chunkSize); join the ` +
        "chunks and remove ovf:chunkSize from the OVF first",
    );
  }
  const name = inside(ovfDir, file.href);
  if (name === undefined) fail(`the OVF refers to "${file.href}", which is outside the OVA`);
  let m = pkg.members.get(name!);
  if (!m) {
    // VMware exports have been seen naming "disk1.vmdk" and holding "disk1.vmdk.000000000"
    // (RHBZ#1570407): take the highest such snapshot.
    const snapshots = [...pkg.members.keys()]
      .filter((k) => k.startsWith(`${name}.`) && /^\d+$/.test(k.slice(name!.length + 1)))
      .sort();
    if (snapshots.length) {
      m = pkg.members.get(snapshots.at(-1)!)!;
      ctx.debug(`ova: "${file.href}" is not in the OVA; using "${m.name}"`);
    }
  }
  if (!m) return fail(`"${file.href}" (${what}) is not in the OVA`);
  if (m.sparse) {
    fail(`"${m.name}" is stored as a sparse tar member; repack the OVA without tar --sparse`);
  }
  if (file.size !== undefined && file.size !== m.size) {
    ctx.debug(`ova: "${m.name}" holds ${m.size} bytes; the OVF says ${file.size}`);
  }
  return m;
}

/** Serves one disk with qemu-nbd (over nbdkit's gzip filter when compressed). */
async function serveDisk(
  pkg: Package,
  m: Member,
  d: OvfDisk,
  i: number,
  ctx: RunContext,
  stack: AsyncDisposableStack,
  fail: (message: string) => never,
): Promise<{ uri: string; virtualSize: number; format: string }> {
  const dev = diskName(i);
  let head: Uint8Array = new Uint8Array(512);
  {
    using f = await Deno.open(m.path, { read: true });
    const got = await readAt(f, m.offset, head);
    head = head.subarray(0, Math.min(got, m.size));
  }
  const gzipped = head[0] === 0x1f && head[1] === 0x8b;
  if (d.file?.compression === "gzip" && !gzipped) {
    ctx.debug(`ova: "${m.name}" is marked gzip-compressed but is not: read as it is`);
  }

  // The protocol layer: where qemu reads the disk's stored bytes from.
  let file: Record<string, unknown>;
  if (gzipped) {
    if (!(await nbdkitHas("filter", "gzip"))) {
      fail(`"${m.name}" is compressed (gzip); decompress the OVA first`);
    }
    const nbdkit = new Nbdkit("file")
      // Outermost: decompress (into a hidden temporary file, since gzip cannot seek).
      .addFilter("gzip");
    // Innermost: only the member's bytes of the tar file.
    if (m.inTar) {
      nbdkit.addFilter("offset").addArg("offset", `${m.offset}`).addArg("range", `${m.size}`);
    }
    nbdkit.addArg("file", m.path);
    const server = stack.use(
      await nbdkit.serve(ctx.dir.join(`in-${dev}-gzip.sock`), {
        name: `nbdkit (gunzip "${m.name}")`,
        signal: ctx.signal,
      }),
    );
    // The first connection makes nbdkit decompress the whole file, which can take minutes:
    // done here, with no time limit, rather than inside qemu-nbd's start.
    ctx.debug(`ova: decompressing "${m.name}"`);
    try {
      await using nbd = await NbdClient.connect(server.uri, {
        name: server.name,
        signal: ctx.signal,
      });
      head = await nbd.read(0, Math.min(512, nbd.size));
    } catch (e) {
      ctx.signal.throwIfAborted();
      const detail = server.stderr.trim().split("\n").slice(-3).join(" ").trim() ||
        (e instanceof Error ? e.message : String(e));
      return fail(`"${m.name}" cannot be decompressed: ${detail}`);
    }
    file = { driver: "nbd", server: { type: "unix", path: server.socket } };
  } else if (m.inTar) {
    // qemu wants a size in whole sectors; tar pads every member to 512 bytes.
    const size = (await fileSize(m.path)) >= m.offset + roundUp(m.size) ? roundUp(m.size) : m.size;
    file = {
      driver: "raw",
      offset: m.offset,
      size,
      file: { driver: "file", filename: m.path, "read-only": true },
    };
  } else {
    file = { driver: "file", filename: m.path, "read-only": true };
  }

  const format = detectFormat(head, d, m, pkg, fail);
  const layer: Record<string, unknown> = { driver: format, file };
  // Never open a backing file a hostile image names: OVA disks stand alone.
  if (format !== "raw") layer["backing"] = null;
  const qemuFile = `json:${JSON.stringify(layer)}`;

  const info = await imageInfo(qemuFile, { format, signal: ctx.signal }).catch((e) =>
    fail(`"${m.name}" is not a readable ${format} image: ${e instanceof Error ? e.message : e}`)
  );
  if (info.backingFile) {
    fail(`"${m.name}" is a snapshot of "${info.backingFile}"; export the VM without snapshots`);
  }
  if (d.capacity !== undefined && d.capacity !== info.virtualSize) {
    fail(
      `"${m.name}" holds a ${info.virtualSize}-byte disk, but the OVF gives it a capacity of ` +
        `${d.capacity} bytes`,
    );
  }
  ctx.debug(`ova: disk ${i + 1} "${m.name}": ${format}, virtual size ${info.virtualSize}`);
  const server = stack.use(
    await serveQemuNbd(qemuFile, {
      socket: ctx.dir.join(`in-${dev}.sock`),
      format,
      readOnly: true,
      name: `qemu-nbd (source "${m.name}")`,
      signal: ctx.signal,
    }),
  );
  return { uri: server.uri, virtualSize: info.virtualSize, format };
}

/** The image format from the first bytes of the disk. */
function detectFormat(
  head: Uint8Array,
  d: OvfDisk,
  m: Member,
  pkg: Package,
  fail: (message: string) => never,
): "vmdk" | "qcow2" | "raw" {
  const ascii = new TextDecoder("latin1").decode(head.subarray(0, 64));
  if (ascii.startsWith("KDMV") || ascii.startsWith("COWD")) return "vmdk";
  if (ascii.startsWith("QFI\xfb")) return "qcow2";
  if (ascii.startsWith("# Disk DescriptorFile")) {
    if (m.inTar) {
      fail(
        `"${m.name}" is a VMDK descriptor whose data is in other files; unpack "${
          basename(pkg.path)
        }" into a directory and give vmshift the directory`,
      );
    }
    return "vmdk";
  }
  if (/vmdk/i.test(d.format ?? "") || /\.vmdk$/i.test(m.name)) {
    fail(`"${m.name}" is not a VMDK image (it does not start with a VMDK header)`);
  }
  return "raw";
}

/** A path relative to a directory of the package, normalised; undefined if it leaves the package. */
function inside(dir: string, href: string): string | undefined {
  if (href.startsWith("/") || /^[a-z][a-z0-9+.-]*:/i.test(href)) return undefined;
  return normalise(dir === "." ? href : `${dir}/${href}`);
}

function normalise(name: string): string | undefined {
  const n = posix.normalize(name).replace(/\/+$/, "");
  if (n === "." || n === ".." || n.startsWith("../") || n.startsWith("/")) return undefined;
  return n.replace(/^(\.\/)+/, "");
}

async function readText(m: Member, fail: (message: string) => never): Promise<string> {
  if (m.size > MAX_DESCRIPTOR) fail(`"${m.name}" is ${m.size} bytes: too large for a descriptor`);
  const bytes = new Uint8Array(m.size);
  {
    using f = await Deno.open(m.path, { read: true });
    if (await readAt(f, m.offset, bytes) < m.size) fail(`"${m.name}" is truncated`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return fail(`"${m.name}" is not UTF-8 text`);
  }
}

async function fileSize(path: string): Promise<number> {
  return (await Deno.stat(path)).size;
}

function reason(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file or directory";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  return e instanceof Error ? e.message : String(e);
}
