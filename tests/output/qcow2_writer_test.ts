/**
 * The qcow2 writer against qemu-img 7.2: every image must pass `qemu-img check`, read back
 * (`qemu-img compare`) the same as a raw file written with the same pattern, and have only
 * the clusters written allocated (`qemu-img map`). Writes are issued concurrently and out of
 * order, across cluster and 512 MiB (L2 table) boundaries, and with an L2 cache smaller than
 * the disk so tables are evicted and read back.
 */

import { assert, assertEquals, assertRejects, assertStringIncludes } from "../_assert.ts";
import { Qcow2Writer } from "../../src/output/qcow2_writer.ts";
import { TempDir } from "../../src/tmpdir.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CLUSTER = 64 * KiB;
const L2_SPAN = 512 * MiB;

async function qemuImg(...args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

async function assertClean(path: string): Promise<void> {
  const r = await qemuImg("check", "-f", "qcow2", path);
  assertEquals(r.code, 0, r.out);
  assertStringIncludes(r.out, "No errors were found on the image.");
}

async function assertSameAsRaw(raw: string, qcow2: string): Promise<void> {
  const r = await qemuImg("compare", "-f", "raw", "-F", "qcow2", raw, qcow2);
  assertEquals(r.code, 0, r.out);
  assertStringIncludes(r.out, "Images are identical.");
}

/** Guest clusters `qemu-img map` reports holding data. */
async function allocatedClusters(qcow2: string): Promise<number[]> {
  const r = await qemuImg("map", "--output=json", "-f", "qcow2", qcow2);
  assertEquals(r.code, 0, r.out);
  // Extents are split where the host file has holes (a partly written cluster), so they need
  // not start or end on a cluster boundary.
  const clusters = new Set<number>();
  for (const e of JSON.parse(r.out) as { start: number; length: number; data: boolean }[]) {
    if (!e.data) continue;
    const end = Math.ceil((e.start + e.length) / CLUSTER);
    for (let c = Math.floor(e.start / CLUSTER); c < end; c++) clusters.add(c);
  }
  return [...clusters].sort((a, b) => a - b);
}

/** Guest clusters a set of ranges touches. */
function touched(ranges: Range[]): number[] {
  const set = new Set<number>();
  for (const r of ranges) {
    if (r.length === 0) continue;
    const last = Math.floor((r.offset + r.length - 1) / CLUSTER);
    for (let c = Math.floor(r.offset / CLUSTER); c <= last; c++) set.add(c);
  }
  return [...set].sort((a, b) => a - b);
}

interface Range {
  offset: number;
  length: number;
}

/** A seeded generator (mulberry32): failures repeat. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** Bytes that differ by range and position, never all zero. */
function pattern(range: Range, seed: number): Uint8Array {
  const data = new Uint8Array(range.length);
  const random = rng(seed ^ range.offset);
  for (let i = 0; i < data.length; i++) data[i] = 1 + Math.floor(random() * 255);
  return data;
}

/** Writes ranges into both images: the qcow2 ones concurrently, `inFlight` at a time. */
async function writeBoth(
  image: Qcow2Writer,
  raw: Deno.FsFile,
  ranges: Range[],
  seed: number,
  inFlight = 8,
): Promise<void> {
  const queue = [...ranges];
  const worker = async () => {
    for (let r = queue.shift(); r; r = queue.shift()) {
      const data = pattern(r, seed);
      raw.seekSync(r.offset, Deno.SeekMode.Start);
      raw.writeSync(data);
      await image.write(r.offset, data);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

async function rawFile(path: string, size: number): Promise<Deno.FsFile> {
  const f = await Deno.open(path, { createNew: true, read: true, write: true });
  await f.truncate(size);
  return f;
}

Deno.test("scattered unaligned concurrent writes read back identical and check clean", async () => {
  await using dir = await TempDir.create();
  const size = 1 * GiB + 300 * MiB;
  const random = rng(1);
  const ranges: Range[] = [
    // Crossing the first L2 boundary, and the second one at 1 GiB.
    { offset: L2_SPAN - 5000, length: 3 * CLUSTER },
    { offset: 2 * L2_SPAN - 100, length: 200 },
    // Two halves of one cluster, below.
    // A large write over many clusters, unaligned at both ends.
    { offset: 3 * MiB + 17, length: 2 * MiB + 33 },
    // The first and last bytes of the disk.
    { offset: 0, length: 1 },
    { offset: size - 513, length: 513 },
  ];
  // Random writes in the gaps: sorted random offsets, each length within its gap.
  const starts = Array.from({ length: 150 }, () => Math.floor(random() * size)).sort((a, b) =>
    a - b
  );
  for (let i = 0; i < starts.length - 1; i++) {
    const offset = starts[i]!;
    const room = starts[i + 1]! - offset;
    const length = Math.min(room, 1 + Math.floor(random() * 300 * KiB));
    const r = { offset, length };
    if (!ranges.some((o) => o.offset < offset + length && offset < o.offset + o.length)) {
      ranges.push(r);
    }
  }
  const raw = await rawFile(dir.join("disk.raw"), size);
  const image = await Qcow2Writer.create(dir.join("disk.qcow2"), size);
  // Two halves of one cluster written at the same time, the second half first.
  const half = { offset: 700 * MiB + CLUSTER / 2, length: CLUSTER / 2 };
  const otherHalf = { offset: 700 * MiB, length: CLUSTER / 2 };
  await Promise.all([
    writeBoth(image, raw, [half], 1),
    writeBoth(image, raw, [otherHalf], 1),
  ]);
  await writeBoth(image, raw, shuffle(ranges, random), 1);
  await image.close();
  raw.close();
  await assertClean(dir.join("disk.qcow2"));
  await assertSameAsRaw(dir.join("disk.raw"), dir.join("disk.qcow2"));
  assertEquals(
    await allocatedClusters(dir.join("disk.qcow2")),
    touched([...ranges, half, otherHalf]),
  );
});

Deno.test("a disk larger than the L2 cache evicts tables, reads them back and stays valid", async () => {
  await using dir = await TempDir.create();
  const size = 64 * GiB;
  const random = rng(2);
  // One small write in each of the 128 regions, out of order: the default cache holds 32.
  const first = shuffle(
    Array.from({ length: size / L2_SPAN }, (_, i) => ({
      offset: i * L2_SPAN + Math.floor(random() * (L2_SPAN - 8 * KiB)),
      length: 1 + Math.floor(random() * 8 * KiB),
    })),
    random,
  );
  // Then writes into regions evicted long ago, next to the first ones.
  const second = first.slice(0, 40).map((r) => ({ offset: r.offset + 64 * KiB, length: 5000 }));
  const raw = await rawFile(dir.join("disk.raw"), size);
  const image = await Qcow2Writer.create(dir.join("disk.qcow2"), size);
  await writeBoth(image, raw, first, 2);
  await writeBoth(image, raw, second, 2);
  await image.close();
  raw.close();
  await assertClean(dir.join("disk.qcow2"));
  await assertSameAsRaw(dir.join("disk.raw"), dir.join("disk.qcow2"));
  assertEquals(await allocatedClusters(dir.join("disk.qcow2")), touched([...first, ...second]));
});

Deno.test("a two-table cache under many concurrent writers loses no allocation", async () => {
  await using dir = await TempDir.create();
  const size = 8 * GiB;
  const random = rng(3);
  // 16 regions, 30 writes each, every write in flight with 31 others: tables are evicted,
  // taken back while their write-back runs, and read back while other writers wait on them.
  const ranges = shuffle(
    Array.from({ length: 16 * 30 }, (_, i) => ({
      offset: (i % 16) * L2_SPAN + Math.floor(i / 16) * 3 * CLUSTER + Math.floor(random() * 1000),
      length: 1 + Math.floor(random() * 2 * CLUSTER),
    })),
    random,
  );
  const raw = await rawFile(dir.join("disk.raw"), size);
  const image = await Qcow2Writer.create(dir.join("disk.qcow2"), size, { cachedL2Tables: 2 });
  await writeBoth(image, raw, ranges, 3, 32);
  await image.close();
  raw.close();
  await assertClean(dir.join("disk.qcow2"));
  await assertSameAsRaw(dir.join("disk.raw"), dir.join("disk.qcow2"));
  assertEquals(await allocatedClusters(dir.join("disk.qcow2")), touched(ranges));
});

Deno.test("an image with nothing written is valid and reads as zeroes", async () => {
  await using dir = await TempDir.create();
  const image = await Qcow2Writer.create(dir.join("empty.qcow2"), 10 * GiB);
  await image.close();
  await assertClean(dir.join("empty.qcow2"));
  (await rawFile(dir.join("zero.raw"), 10 * GiB)).close();
  await assertSameAsRaw(dir.join("zero.raw"), dir.join("empty.qcow2"));
  assertEquals(await allocatedClusters(dir.join("empty.qcow2")), []);
});

Deno.test("a virtual size that is no multiple of 512 is rounded up as qemu-img create does", async () => {
  await using dir = await TempDir.create();
  const image = await Qcow2Writer.create(dir.join("odd.qcow2"), 1_000_000);
  assertEquals(image.virtualSize, 1_000_448);
  const raw = await rawFile(dir.join("odd.raw"), 1_000_448);
  // The last cluster is partial; the rounded-up tail is writable, as in qemu.
  await writeBoth(
    image,
    raw,
    [{ offset: 999_000, length: 1448 }, { offset: 12, length: 70_000 }],
    4,
  );
  await image.close();
  raw.close();
  await assertClean(dir.join("odd.qcow2"));
  await assertSameAsRaw(dir.join("odd.raw"), dir.join("odd.qcow2"));
  const info = await qemuImg("info", "--output=json", dir.join("odd.qcow2"));
  const parsed = JSON.parse(info.out) as {
    "virtual-size": number;
    "format-specific": { data: { compat: string } };
  };
  assertEquals(parsed["virtual-size"], 1_000_448);
  assertEquals(parsed["format-specific"].data.compat, "1.1");
});

Deno.test("zero clears allocated clusters and leaves unallocated ones alone", async () => {
  await using dir = await TempDir.create();
  const size = 1 * GiB;
  const raw = await rawFile(dir.join("disk.raw"), size);
  const image = await Qcow2Writer.create(dir.join("disk.qcow2"), size, { cachedL2Tables: 1 });
  const written = [{ offset: 0, length: 4 * CLUSTER }, { offset: L2_SPAN + 100, length: 1000 }];
  await writeBoth(image, raw, written, 5);
  // From inside the first write into unallocated space, and over a region whose table was
  // evicted (the cache holds one table).
  const zeroed = [
    { offset: CLUSTER + 10, length: 10 * CLUSTER },
    { offset: L2_SPAN + 200, length: 100 },
    { offset: 700 * MiB, length: 5 * MiB },
  ];
  for (const z of zeroed) {
    raw.seekSync(z.offset, Deno.SeekMode.Start);
    raw.writeSync(new Uint8Array(z.length));
  }
  await Promise.all(zeroed.map((z) => image.zero(z.offset, z.length)));
  await image.close();
  raw.close();
  await assertClean(dir.join("disk.qcow2"));
  await assertSameAsRaw(dir.join("disk.raw"), dir.join("disk.qcow2"));
  // Clusters stay allocated (zeroed in place); no cluster was allocated by zeroing.
  assertEquals(await allocatedClusters(dir.join("disk.qcow2")), touched(written));
});

Deno.test("writes outside the image are refused with the range and the size", async () => {
  await using dir = await TempDir.create();
  await using image = await Qcow2Writer.create(dir.join("disk.qcow2"), 1 * MiB);
  const e = await assertRejects(
    () => image.write(MiB - 10, new Uint8Array(20)),
    RangeError,
    `at ${MiB - 10}+20: outside the image (${MiB} bytes)`,
  );
  assertStringIncludes(e.message, dir.join("disk.qcow2"));
  await assertRejects(() => image.zero(-1, 5), RangeError, "at -1+5");
  await assertRejects(() => image.zero(0, MiB + 1), RangeError, `(${MiB} bytes)`);
  await image.close();
  await assertRejects(() => image.write(0, new Uint8Array(1)), Error, "it is closed");
  await assertClean(dir.join("disk.qcow2"));
});

Deno.test("an existing path is refused and left as it was", async () => {
  await using dir = await TempDir.create();
  const path = dir.join("there.qcow2");
  Deno.writeTextFileSync(path, "keep me");
  await assertRejects(() => Qcow2Writer.create(path, GiB), Deno.errors.AlreadyExists);
  assertEquals(Deno.readTextFileSync(path), "keep me");
});

Deno.test("invalid sizes are refused", async () => {
  await using dir = await TempDir.create();
  await assertRejects(() => Qcow2Writer.create(dir.join("a"), 0), RangeError, '"0"');
  await assertRejects(() => Qcow2Writer.create(dir.join("b"), 2 ** 52), RangeError, "larger");
});

Deno.test("abort waits for writes in flight and closes the descriptor", async () => {
  await using dir = await TempDir.create();
  const path = dir.join("disk.qcow2");
  const image = await Qcow2Writer.create(path, GiB);
  const writes = Array.from(
    { length: 8 },
    (_, i) => image.write(i * 3 * MiB, new Uint8Array(MiB).fill(i + 1)),
  );
  await image.abort();
  await image.abort();
  await Promise.allSettled(writes);
  await assertRejects(() => image.write(0, new Uint8Array(1)), Error, "it is closed");
  await assertRejects(() => image.close(), Error, "already closed");
  // Nothing of this process holds the file open any more.
  const self = Deno.readDirSync("/proc/self/fd");
  for (const fd of self) {
    try {
      assert(Deno.readLinkSync(`/proc/self/fd/${fd.name}`) !== path, "descriptor left open");
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  Deno.removeSync(path);
});
