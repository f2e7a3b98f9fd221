/**
 * VMDK descriptors (text and embedded), sparse headers, snapshot detection and the file checks
 * of readVmdk: on images qemu-img writes in every subformat, on in-memory files (a
 * FileAccess like the SSH transport's), and on a streamOptimized file in VMware's own layout
 * (grain directory in the footer), whole and truncated.
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../_assert.ts";
import {
  decodeDescriptor,
  type FileAccess,
  GD_AT_END,
  isDeltaDisk,
  isSnapshotFileName,
  localFiles,
  parseDescriptor,
  parseSparseHeader,
  readVmdk,
  vmdkVirtualSize,
} from "../../src/input/vmdk.ts";
import { run } from "../../src/process.ts";
import { memFiles } from "./_mem_files.ts";
import { VMDK_SUBFORMATS } from "../../scripts/make_vmware_fixture.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SNAPSHOT = "the VM has snapshots; consolidate (delete) all snapshots in VMware first";

function enc(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function descriptor(createType: string, extents: string[], extra = ""): string {
  return `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=7a2f1c3e
parentCID=ffffffff
isNativeSnapshot="no"
createType="${createType}"
${extra}
# Extent description
${extents.join("\n")}

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "2610"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "8d2a6f0b9a4a7a3f3e0d0f1e7a2f1c3e"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 93 7b 2e 1f 4a-b0 5e 6f 1d 2c 3b 4a 59"
ddb.virtualHWVersion = "21"
`;
}

// ---------------------------------------------------------------------------------------------
// Descriptors

Deno.test("descriptor: header keys, extents of every kind, the disk database", () => {
  const d = parseDescriptor(
    descriptor("twoGbMaxExtentFlat", [
      'RW 4192256 FLAT "guest-f001.vmdk" 0',
      'RDONLY 2048 FLAT "guest with spaces-f002.vmdk" 128',
      "RW 1024 ZERO",
      'RW 8388608 VMFS "guest-flat.vmdk"',
    ]).replaceAll("\n", "\r\n"),
    "guest.vmdk",
  );
  assertEquals(d.version, 1);
  assertEquals(d.cid, "7a2f1c3e");
  assertEquals(d.parentCid, "ffffffff");
  assertEquals(d.createType, "twoGbMaxExtentFlat");
  assertEquals(d.header["isnativesnapshot"], "no");
  assertEquals(d.ddb["adaptertype"], "lsilogic");
  assertEquals(d.ddb["uuid"], "60 00 C2 93 7b 2e 1f 4a-b0 5e 6f 1d 2c 3b 4a 59");
  assertEquals(d.extents.map((e) => [e.access, e.sectors, e.type, e.fileName, e.offset, e.line]), [
    ["RW", 4192256, "FLAT", "guest-f001.vmdk", 0, 10],
    ["RDONLY", 2048, "FLAT", "guest with spaces-f002.vmdk", 128, 11],
    ["RW", 1024, "ZERO", undefined, 0, 12],
    ["RW", 8388608, "VMFS", "guest-flat.vmdk", 0, 13],
  ]);
  assertEquals(vmdkVirtualSize(d), (4192256 + 2048 + 1024 + 8388608) * 512);
  assert(!isDeltaDisk(d));
});

Deno.test("descriptor: malformed lines are named by line; createType and extents are required", () => {
  const e = assertThrows(
    () => parseDescriptor(descriptor("vmfs", ['RW 100 VMFS "a.vmdk"', "RW lots FLAT"]), "g.vmdk"),
    SyntaxError,
  );
  assertEquals(
    e.message,
    'Cannot parse "g.vmdk" descriptor line 11: expected KEY=VALUE or an extent: ACCESS SECTORS ' +
      'TYPE "FILE" [OFFSET]',
  );
  assertThrows(
    () => parseDescriptor(descriptor("vmfs", ["RW 100 VMFS"]), "g.vmdk"),
    SyntaxError,
    "descriptor line 10: the VMFS extent names no file",
  );
  assertThrows(
    () => parseDescriptor(descriptor("vmfs", ['RW 100 VMFS "a.vmdk" zero']), "g.vmdk"),
    SyntaxError,
    "descriptor line 10: expected an extent",
  );
  assertThrows(
    () => parseDescriptor("# Disk DescriptorFile\nversion=1\nRW 1 ZERO\n", "g.vmdk"),
    SyntaxError,
    'Cannot parse "g.vmdk" descriptor: it has no createType',
  );
  assertThrows(
    () => parseDescriptor('# Disk DescriptorFile\ncreateType="vmfs"\n', "g.vmdk"),
    SyntaxError,
    "it lists no extent",
  );
});

Deno.test("descriptor: NUL padding dropped, encoding applied to file names", () => {
  const bytes = new Uint8Array([
    ...enc('# Disk DescriptorFile\nencoding="windows-1252"\ncreateType="vmfs"\nRW 8 VMFS "caf'),
    0xe9,
    ...enc('-flat.vmdk"\n'),
    0,
    0,
    0,
  ]);
  const d = parseDescriptor(decodeDescriptor(bytes), "café.vmdk");
  assertEquals(d.extents[0]!.fileName, "café-flat.vmdk");
});

Deno.test("snapshots: by parentCID, parentFileNameHint, delta types, VMware's file names", () => {
  const delta = (extra: string, type = "monolithicSparse", ext = 'RW 8 SPARSE "g-000001.vmdk"') =>
    isDeltaDisk(
      parseDescriptor(descriptor(type, [ext], extra).replace("parentCID=ffffffff\n", ""), "x"),
    );
  assert(delta("parentCID=7a2f1c3e"));
  assert(delta('parentCID=ffffffff\nparentFileNameHint="guest.vmdk"'));
  assert(delta("parentCID=ffffffff", "seSparse", 'RW 8 SESPARSE "g-000001-sesparse.vmdk"'));
  assert(delta("parentCID=ffffffff", "vmfsSparse", 'RW 8 VMFSSPARSE "g-000001-delta.vmdk"'));
  assert(!delta("parentCID=FFFFFFFF"));
  assert(isSnapshotFileName("/ds/guest/guest-000001.vmdk"));
  assert(isSnapshotFileName("GUEST_1-000012.VMDK"));
  for (const name of ["guest.vmdk", "guest-flat.vmdk", "guest-s001.vmdk", "guest-00001.vmdk"]) {
    assert(!isSnapshotFileName(name), name);
  }
});

// ---------------------------------------------------------------------------------------------
// readVmdk on in-memory files

Deno.test("flat disks: every extent checked; sizes from the descriptor", async () => {
  const files = memFiles({
    "/ds/g/g.vmdk": descriptor("twoGbMaxExtentFlat", [
      'RW 4194304 FLAT "g-f001.vmdk" 0',
      'RW 2048 FLAT "g-f002.vmdk" 0',
      "RW 2048 ZERO",
      'RW 100 FLAT "/ds/other/shared.vmdk" 4',
    ]),
    "/ds/g/g-f001.vmdk": { size: 2 * GiB },
    "/ds/g/g-f002.vmdk": { size: MiB + 4096 },
    "/ds/other/shared.vmdk": { size: 104 * 512 },
  });
  const info = await readVmdk("/ds/g/g.vmdk", files);
  assertEquals(info.virtualSize, (4194304 + 2048 + 2048 + 100) * 512);
  assertEquals(info.embedded, false);
  assertEquals(info.files, [
    "/ds/g/g.vmdk",
    "/ds/g/g-f001.vmdk",
    "/ds/g/g-f002.vmdk",
    "/ds/other/shared.vmdk",
  ]);
  assertEquals(info.extents.map((e) => [e.path, e.fileSize]), [
    ["/ds/g/g-f001.vmdk", 2 * GiB],
    ["/ds/g/g-f002.vmdk", MiB + 4096],
    [undefined, undefined],
    ["/ds/other/shared.vmdk", 104 * 512],
  ]);
  // ESXi's vmfs disk: one VMFS extent, no offset.
  const esxi = memFiles({
    "/ds/w/w.vmdk": descriptor("vmfs", ['RW 83886080 VMFS "w-flat.vmdk"']),
    "/ds/w/w-flat.vmdk": { size: 40 * GiB },
  });
  assertEquals((await readVmdk("/ds/w/w.vmdk", esxi)).virtualSize, 40 * GiB);
});

Deno.test("a truncated flat extent names the file, its size and the descriptor's", async () => {
  const files = memFiles({
    "/ds/g/g.vmdk": descriptor("monolithicFlat", ['RW 2048 FLAT "g-flat.vmdk" 0']),
    "/ds/g/g-flat.vmdk": { size: 1000 * 512 },
  });
  await assertRejects(
    () => readVmdk("/ds/g/g.vmdk", files),
    Error,
    'Cannot read "[ds] g/g-flat.vmdk": the file is truncated: it holds 512000 bytes, but ' +
      '"[ds] g/g.vmdk" says it holds 1048576 (descriptor line 10)',
  );
  // With an offset, the extent must reach OFFSET + SECTORS.
  const offset = memFiles({
    "/ds/g/g.vmdk": descriptor("monolithicFlat", ['RW 2048 FLAT "g-flat.vmdk" 8']),
    "/ds/g/g-flat.vmdk": { size: 2048 * 512 },
  });
  await assertRejects(() => readVmdk("/ds/g/g.vmdk", offset), Error, "the file is truncated");
});

Deno.test("missing and unreadable files: the file and the reason are named", async () => {
  const d = descriptor("monolithicFlat", ['RW 2048 FLAT "g-flat.vmdk" 0']);
  await assertRejects(
    () => readVmdk("/ds/g/g.vmdk", memFiles({})),
    Error,
    'Cannot read "[ds] g/g.vmdk": no such file',
  );
  await assertRejects(
    () => readVmdk("/ds/g/g.vmdk", memFiles({ "/ds/g/g.vmdk": d })),
    Error,
    'Cannot read "[ds] g/g-flat.vmdk": extent 1 of "[ds] g/g.vmdk" (descriptor line 10): no such file',
  );
  await assertRejects(
    () =>
      readVmdk(
        "/ds/g/g.vmdk",
        memFiles({ "/ds/g/g.vmdk": d, "/ds/g/g-flat.vmdk": { size: MiB } }, ["/ds/g/g-flat.vmdk"]),
      ),
    Error,
    'Cannot read "[ds] g/g-flat.vmdk": extent 1 of "[ds] g/g.vmdk" (descriptor line 10): ' +
      "permission denied",
  );
  await assertRejects(
    () => readVmdk("/ds/g/g.vmdk", memFiles({ "/ds/g/g.vmdk": d }, ["/ds/g/g.vmdk"])),
    Error,
    'Cannot read "[ds] g/g.vmdk": permission denied',
  );
});

Deno.test("snapshots are refused with virt-v2v's advice, before any extent is read", async () => {
  const files = memFiles({
    "/ds/g/g-000001.vmdk": descriptor("monolithicFlat", ['RW 8 FLAT "g-flat.vmdk" 0']),
    "/ds/g/delta.vmdk": descriptor(
      "seSparse",
      ['RW 8 SESPARSE "g-000001-sesparse.vmdk"'],
      'parentFileNameHint="g.vmdk"',
    ).replace("parentCID=ffffffff", "parentCID=7a2f1c3e"),
  });
  await assertRejects(
    () => readVmdk("/ds/g/g-000001.vmdk", files),
    Error,
    `Cannot read "[ds] g/g-000001.vmdk": ${SNAPSHOT}`,
  );
  await assertRejects(
    () => readVmdk("/ds/g/delta.vmdk", files),
    Error,
    `Cannot read "[ds] g/delta.vmdk": ${SNAPSHOT}`,
  );
});

Deno.test("raw devices, unknown types, NOACCESS extents, non-VMDK files are refused", async () => {
  const cases: Array<[string, string]> = [
    [
      descriptor("vmfsPassthroughRawDeviceMap", ['RW 8 VMFSRDM "g-rdmp.vmdk"']),
      'it is a raw device mapping or physical disk (createType "vmfsPassthroughRawDeviceMap")',
    ],
    [descriptor("fullDevice", ['RW 8 FLAT "/dev/sda" 0']), "raw device mapping"],
    [
      descriptor("vmfsThinny", ['RW 8 VMFS "g-flat.vmdk"']),
      'unsupported VMDK type (createType "vmfsThinny")',
    ],
    [descriptor("vmfs", ['NOACCESS 8 VMFS "g-flat.vmdk"']), "is marked NOACCESS"],
    [descriptor("vmfs", ['RW 8 VMFSRAW "g-raw.vmdk"']), "is a raw device"],
    ["not a disk at all\n", "not a VMDK disk (no VMDK header or descriptor)"],
    ["COWD\x01\x00\x00\x00", "it is an ESX sparse (COWD) extent"],
  ];
  for (const [text, message] of cases) {
    const files = memFiles({ "/ds/g/g.vmdk": text, "/ds/g/g-flat.vmdk": { size: MiB } });
    await assertRejects(() => readVmdk("/ds/g/g.vmdk", files), Error, message);
  }
});

// ---------------------------------------------------------------------------------------------
// Sparse extents: VMware's streamOptimized layout, built here byte by byte.

/** A sparse header (512 bytes). */
function sparseHeader(h: {
  version?: number;
  flags?: number;
  capacity: number;
  grainSize?: number;
  descriptorOffset?: number;
  descriptorSize?: number;
  gdOffset: number;
  overhead: number;
}): Uint8Array {
  const b = new Uint8Array(512);
  const v = new DataView(b.buffer);
  b.set(enc("KDMV"));
  v.setUint32(4, h.version ?? 3, true);
  v.setUint32(8, h.flags ?? 0x30001, true);
  v.setBigUint64(12, BigInt(h.capacity), true);
  v.setBigUint64(20, BigInt(h.grainSize ?? 128), true);
  v.setBigUint64(28, BigInt(h.descriptorOffset ?? 0), true);
  v.setBigUint64(36, BigInt(h.descriptorSize ?? 0), true);
  v.setUint32(44, 512, true);
  v.setBigUint64(48, 0n, true);
  v.setBigUint64(56, h.gdOffset === GD_AT_END ? 0xffffffffffffffffn : BigInt(h.gdOffset), true);
  v.setBigUint64(64, BigInt(h.overhead), true);
  b.set([0x0a, 0x20, 0x0d, 0x0a], 73);
  v.setUint16(77, 1, true);
  return b;
}

/**
 * A streamOptimized extent as VMware writes it: the header says the grain directory is at the
 * end; grains (each a marker and deflated data), then the grain table and directory (each after
 * its marker), then the footer marker, the footer and the end-of-stream marker.
 */
function vmwareStream(name: string, capacity: number): Uint8Array {
  const desc = enc(descriptor("streamOptimized", [`RW ${capacity} SPARSE "${name}"`]));
  const sectors = (n: number) => Math.ceil(n / 512);
  const descAt = 1;
  const descSectors = 2;
  const overhead = 128;
  const grainAt = overhead; // one compressed grain: marker (12 bytes) + 100 bytes
  const gtAt = grainAt + 2; // GT marker sector, then the table (4 sectors)
  const gdAt = gtAt + 1 + 4; // GD marker sector, then the directory (1 sector)
  const footerAt = gdAt + 1 + 1;
  const total = (footerAt + 3) * 512;
  const file = new Uint8Array(total);
  const v = new DataView(file.buffer);
  file.set(
    sparseHeader({
      capacity,
      descriptorOffset: descAt,
      descriptorSize: descSectors,
      gdOffset: GD_AT_END,
      overhead,
    }),
  );
  file.set(desc.subarray(0, Math.min(desc.length, descSectors * 512)), descAt * 512);
  v.setBigUint64(grainAt * 512, 0n, true); // the grain's LBA
  v.setUint32(grainAt * 512 + 8, 100, true); // its compressed size
  // The grain table: grain 0 at grainAt.
  v.setUint32(gtAt * 512 + 8, sectors(4 * 512), true);
  v.setUint32(gtAt * 512 + 12, 1, true); // marker type: grain table
  v.setUint32((gtAt + 1) * 512, grainAt, true);
  // The grain directory: table 0 at gtAt + 1.
  v.setUint32(gdAt * 512 + 8, 1, true);
  v.setUint32(gdAt * 512 + 12, 2, true); // marker type: grain directory
  v.setUint32((gdAt + 1) * 512, gtAt + 1, true);
  // Footer marker, footer (the header with the real gdOffset), end-of-stream marker.
  v.setUint32(footerAt * 512 + 8, 1, true);
  v.setUint32(footerAt * 512 + 12, 3, true);
  file.set(
    sparseHeader({
      capacity,
      descriptorOffset: descAt,
      descriptorSize: descSectors,
      gdOffset: gdAt + 1,
      overhead,
    }),
    (footerAt + 1) * 512,
  );
  return file;
}

Deno.test("VMware's streamOptimized layout: the grain directory is found in the footer", async () => {
  const file = vmwareStream("disk1.vmdk", 2048);
  const h = parseSparseHeader(file, "disk1.vmdk");
  assertEquals([h.gdOffset, h.capacity, h.grainSize, h.flags], [GD_AT_END, 2048, 128, 0x30001]);
  const info = await readVmdk("/ova/disk1.vmdk", memFiles({ "/ova/disk1.vmdk": file }));
  assertEquals(info.descriptor.createType, "streamOptimized");
  assertEquals([info.embedded, info.virtualSize, info.files], [true, 2048 * 512, [
    "/ova/disk1.vmdk",
  ]]);
});

Deno.test("VMware's streamOptimized layout, truncated: no footer, or a grain cut short", async () => {
  const file = vmwareStream("disk1.vmdk", 2048);
  // Cut inside the end-of-stream marker: the footer is no longer 1024 bytes from the end.
  await assertRejects(
    () =>
      readVmdk(
        "/ova/disk1.vmdk",
        memFiles({ "/ova/disk1.vmdk": file.slice(0, file.length - 100) }),
      ),
    Error,
    'Cannot read "/ova/disk1.vmdk": the file is truncated: its footer (at the end of a ' +
      "streamOptimized file) is missing",
  );
  // A grain whose marker says it is longer than what is left of the file.
  const long = vmwareStream("disk1.vmdk", 2048);
  new DataView(long.buffer).setUint32(128 * 512 + 8, 1_000_000, true);
  await assertRejects(
    () => readVmdk("/ova/disk1.vmdk", memFiles({ "/ova/disk1.vmdk": long })),
    Error,
    `the file is truncated: a compressed grain ends at byte ${128 * 512 + 12 + 1_000_000}`,
  );
});

Deno.test("sparse header: its values are checked", () => {
  assertThrows(
    () => parseSparseHeader(new Uint8Array(512), "x.vmdk"),
    SyntaxError,
    "no KDMV header",
  );
  const bad = sparseHeader({ capacity: 8, grainSize: 3, gdOffset: 1, overhead: 1 });
  assertThrows(() => parseSparseHeader(bad, "x.vmdk"), SyntaxError, "invalid grain size 3");
  const v4 = sparseHeader({ version: 4, capacity: 8, gdOffset: 1, overhead: 1 });
  assertThrows(
    () => parseSparseHeader(v4, "x.vmdk"),
    SyntaxError,
    "unsupported sparse extent version 4",
  );
});

// ---------------------------------------------------------------------------------------------
// readVmdk on what qemu-img writes

async function qemuVmdk(dir: string, subformat: string, size: number, name = "g"): Promise<string> {
  const raw = join(dir, `${name}.raw`);
  await Deno.writeFile(raw, new Uint8Array(0));
  await Deno.truncate(raw, size);
  // Data at the start and in the last sector, so that the last grain is allocated.
  await run("qemu-io", [
    "-f",
    "raw",
    "-c",
    "write -P 0x5a 0 128k",
    "-c",
    `write -P 0xa5 ${size - 512} 512`,
    raw,
  ]);
  const out = join(dir, `${name}.vmdk`);
  await run("qemu-img", [
    "convert",
    "-q",
    "-f",
    "raw",
    "-O",
    "vmdk",
    "-o",
    `subformat=${subformat}`,
    raw,
    out,
  ]);
  await Deno.remove(raw);
  return out;
}

Deno.test("every subformat qemu-img writes is read, with its files and size", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vmdk-test-" });
  try {
    const expect: Record<string, string[]> = {
      monolithicSparse: ["g.vmdk"],
      monolithicFlat: ["g.vmdk", "g-flat.vmdk"],
      twoGbMaxExtentSparse: ["g.vmdk", "g-s001.vmdk", "g-s002.vmdk"],
      twoGbMaxExtentFlat: ["g.vmdk", "g-f001.vmdk", "g-f002.vmdk"],
      streamOptimized: ["g.vmdk"],
    };
    for (const subformat of VMDK_SUBFORMATS) {
      const sub = join(dir, subformat);
      await Deno.mkdir(sub);
      // Above 2 GiB, so that the twoGbMaxExtent formats have two extents (sparse: cheap).
      const size = 2 * GiB + 3 * MiB;
      const path = await qemuVmdk(sub, subformat, size);
      const info = await readVmdk(path, localFiles);
      assertEquals(info.descriptor.createType, subformat);
      assertEquals(info.virtualSize, size);
      assertEquals(info.files.map((f) => f.slice(sub.length + 1)), expect[subformat]);
      assertEquals(
        info.embedded,
        subformat === "monolithicSparse" || subformat === "streamOptimized",
      );
      assertEquals(info.warnings, []);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qemu-img's files, broken: truncated sparse extents, a lone extent, a delta disk", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vmdk-test-" });
  try {
    // monolithicSparse cut before its last grain.
    const mono = await qemuVmdk(dir, "monolithicSparse", 64 * MiB, "mono");
    const size = (await Deno.stat(mono)).size;
    await Deno.truncate(mono, size - 32 * 1024);
    await assertRejects(
      () => readVmdk(mono, localFiles),
      Error,
      `Cannot read "${mono}": the file is truncated: its grain tables point to data up to byte ${size}, ` +
        `but the file holds only ${size - 32 * 1024} bytes`,
    );
    // The second extent of a split sparse disk cut inside its metadata.
    const split = join(dir, "split");
    await Deno.mkdir(split);
    const two = await qemuVmdk(split, "twoGbMaxExtentSparse", 2 * GiB + MiB);
    await Deno.truncate(join(split, "g-s002.vmdk"), 10_000);
    await assertRejects(
      () => readVmdk(two, localFiles),
      Error,
      `Cannot read "${join(split, "g-s002.vmdk")}": the file is truncated`,
    );
    // An extent given instead of its descriptor.
    await assertRejects(
      () => readVmdk(join(split, "g-s001.vmdk"), localFiles),
      Error,
      "it is one extent of a split disk, not its descriptor",
    );
    // streamOptimized cut inside its compressed grains.
    const so = await qemuVmdk(dir, "streamOptimized", 64 * MiB, "so");
    const soSize = (await Deno.stat(so)).size;
    await Deno.truncate(so, soSize - 64 * 1024 - 20);
    await assertRejects(() => readVmdk(so, localFiles), Error, "the file is truncated");
    // A delta disk as qemu-img makes one: parentCID and parentFileNameHint.
    await qemuVmdk(dir, "monolithicSparse", 16 * MiB, "base");
    const delta = join(dir, "child.vmdk");
    await run("qemu-img", ["create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", delta]);
    await assertRejects(
      () => readVmdk(delta, localFiles),
      Error,
      `Cannot read "${delta}": ${SNAPSHOT}`,
    );
    // A renamed monolithicSparse file still reads itself.
    const renamed = join(dir, "renamed.vmdk");
    await Deno.rename(join(dir, "base.vmdk"), renamed);
    assertEquals((await readVmdk(renamed, localFiles)).files, [renamed]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the grain check reads tables in runs, not one read per table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vmdk-test-" });
  try {
    const path = await qemuVmdk(dir, "monolithicSparse", 4 * GiB, "big");
    let reads = 0;
    const counting: FileAccess = {
      stat: localFiles.stat,
      read: (p, o, l) => {
        reads++;
        return localFiles.read(p, o, l);
      },
    };
    assertEquals((await readVmdk(path, counting)).virtualSize, 4 * GiB);
    // Header, descriptor, grain directory, 128 tables in one run, nothing else.
    assert(reads <= 5, `${reads} reads`);
    reads = 0;
    await readVmdk(path, counting, { checkGrains: false });
    assert(reads <= 2, `${reads} reads without the grain check`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
