import {
  fillData,
  makeTestImage,
  parseSize,
  planLayout,
  type Region,
  type TestImageFormat,
} from "../../scripts/make_test_image.ts";
import { run } from "../../src/process.ts";
import { TempDir } from "../../src/tmpdir.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const VIRTUAL = 64 * MiB;
const DATA = 8 * MiB;

interface MapExtent {
  start: number;
  length: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
}

function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

function sum(regions: Region[], kind: Region["kind"]): number {
  return regions.filter((r) => r.kind === kind).reduce((n, r) => n + r.length, 0);
}

/** The map extents overlapping [start, end). */
function overlapping(map: MapExtent[], start: number, end: number): MapExtent[] {
  return map.filter((e) => e.start < end && e.start + e.length > start);
}

async function imageInfo(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await run("qemu-img", ["info", "--output=json", path]));
}

async function contentDigest(dir: TempDir, path: string, format: string): Promise<string> {
  const raw = dir.join(`digest-${crypto.randomUUID()}.raw`);
  await run("qemu-img", ["convert", "-f", format, "-O", "raw", path, raw]);
  const bytes = await Deno.readFile(raw);
  await Deno.remove(raw);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("planLayout covers the disk with unaligned data runs and data at the last sector", () => {
  for (
    const [virtualSize, dataBytes] of [
      [VIRTUAL, DATA],
      [16 * 1024 * MiB, 4 * 1024 * MiB],
      [100 * 1024 * MiB, 2 * 1024 * MiB],
      [16 * MiB, 64 * KiB],
    ] as const
  ) {
    const layout = planLayout(virtualSize, dataBytes, 3);
    let pos = 0;
    for (const r of layout) {
      assert(r.offset === pos, `gap or overlap at ${pos}`);
      assert(r.length > 0, `empty region at ${pos}`);
      pos += r.length;
    }
    assert(pos === virtualSize, "layout does not end at the virtual size");
    assert(sum(layout, "data") === dataBytes, "data regions do not add up");
    for (const r of layout.filter((r) => r.kind === "data")) {
      assert(r.offset % 512 === 0 && r.length % 512 === 0, "data run not sector-aligned");
      assert(r.length % (64 * KiB) !== 0, `data run length ${r.length} is 64 KiB-aligned`);
      assert(r.offset % (64 * KiB) !== 0, `data run offset ${r.offset} is 64 KiB-aligned`);
    }
    const last = layout.at(-1)!;
    assert(last.kind === "data" && last.offset + last.length === virtualSize, "no data at end");
    assert(layout.some((r) => r.kind === "zero"), "no zero region");
    assert(layout.some((r) => r.kind === "zero-data"), "no zero-data region");
    assert(layout.some((r) => r.kind === "hole"), "no hole");
  }
});

Deno.test("planLayout refuses more data than fits", () => {
  let error: unknown;
  try {
    planLayout(VIRTUAL, VIRTUAL, 1);
  } catch (e) {
    error = e;
  }
  assert(error instanceof RangeError, "expected a RangeError");
});

Deno.test("fillData is a function of seed and offset", () => {
  const a = new Uint8Array(200 * KiB);
  const b = new Uint8Array(3 * KiB);
  fillData(5, 1536, a);
  fillData(5, 1536 + 100 * KiB + 512, b);
  assert(
    b.every((x, i) => x === a[100 * KiB + 512 + i]),
    "same offset gave different bytes",
  );
  const c = new Uint8Array(3 * KiB);
  fillData(6, 1536 + 100 * KiB + 512, c);
  assert(!c.every((x, i) => x === b[i]), "another seed gave the same bytes");
});

Deno.test("parseSize reads binary units", () => {
  assert(parseSize("512") === 512, "512");
  assert(parseSize("64K") === 64 * KiB, "64K");
  assert(parseSize("1.5G") === 1536 * MiB, "1.5G");
  assert(parseSize("2GiB") === 2048 * MiB, "2GiB");
});

for (const format of ["raw", "qcow2", "vmdk"] as TestImageFormat[]) {
  Deno.test(`makeTestImage writes a ${format} image with data, zero regions and holes`, async () => {
    await using dir = await TempDir.create();
    const path = dir.join(`test.${format}`);
    const image = await makeTestImage(path, {
      format,
      virtualSize: VIRTUAL,
      dataBytes: DATA,
      seed: 1,
    });
    assert(image.dataBytes === DATA, "wrong data size reported");

    const info = await imageInfo(path);
    assert(info["format"] === format, `format is ${info["format"]}`);
    assert(info["virtual-size"] === VIRTUAL, `virtual size is ${info["virtual-size"]}`);

    // Allocation: raw files map at 4 KiB granularity, qcow2 clusters and vmdk grains at 64 KiB.
    const grain = format === "raw" ? 4 * KiB : 64 * KiB;
    const map: MapExtent[] = JSON.parse(
      await run("qemu-img", ["map", "--output=json", "-f", format, path]),
    );
    for (const r of image.layout) {
      const where = `${r.kind} region at ${r.offset}+${r.length}`;
      const extents = overlapping(map, r.offset, r.offset + r.length);
      if (r.kind === "data" || r.kind === "zero-data") {
        assert(extents.every((e) => e.data && !e.zero), `${where} is not all data`);
      } else if (r.kind === "zero") {
        assert(extents.every((e) => e.zero && !e.data), `${where} is not all zero`);
        if (format !== "raw") {
          assert(extents.every((e) => e.present), `${where} is not allocated`);
        }
      } else {
        const start = Math.ceil(r.offset / grain) * grain;
        const end = Math.floor((r.offset + r.length) / grain) * grain;
        const inner = overlapping(map, start, end);
        assert(inner.every((e) => e.zero && !e.data), `${where} is not a hole`);
        if (format !== "raw") assert(inner.every((e) => !e.present), `${where} is allocated`);
      }
    }

    // Content: data where planned, zeros everywhere else.
    const raw = dir.join("content.raw");
    await run("qemu-img", ["convert", "-f", format, "-O", "raw", path, raw]);
    const content = await Deno.readFile(raw);
    for (const r of image.layout) {
      const actual = content.subarray(r.offset, r.offset + r.length);
      if (r.kind === "data") {
        const expected = new Uint8Array(r.length);
        fillData(1, r.offset, expected);
        assert(actual.every((x, i) => x === expected[i]), `wrong data at ${r.offset}`);
      } else {
        assert(actual.every((x) => x === 0), `non-zero ${r.kind} at ${r.offset}`);
      }
    }

    // The file holds about as much as was written: data, zero bytes written as data, and for
    // raw the fallocated region; plus cluster rounding of each run and metadata.
    const allocated = info["actual-size"] as number;
    const runs = image.layout.filter((r) => r.kind === "data").length;
    const floor = DATA + sum(image.layout, "zero-data") +
      (format === "raw" ? sum(image.layout, "zero") : 0);
    const ceiling = floor + runs * 2 * 64 * KiB + 1 * MiB;
    assert(
      allocated >= floor && allocated <= ceiling,
      `allocated ${allocated} bytes, expected ${floor}..${ceiling}`,
    );
  });

  Deno.test(`makeTestImage writes the same ${format} content for the same seed`, async () => {
    await using dir = await TempDir.create();
    const options = { format, virtualSize: VIRTUAL, dataBytes: DATA, seed: 9 };
    await makeTestImage(dir.join("a"), options);
    await makeTestImage(dir.join("b"), options);
    await makeTestImage(dir.join("c"), { ...options, seed: 10 });
    const [a, b, c] = await Promise.all(
      ["a", "b", "c"].map((name) => contentDigest(dir, dir.join(name), format)),
    );
    assert(a === b, "same seed, different content");
    assert(a !== c, "different seed, same content");
  });
}
