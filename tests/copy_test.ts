/**
 * The copy engine against a real qemu-nbd source, with a recording target: what travels as
 * data, what as zero requests, and what is skipped.
 */

import { assert, assertBytesEqual, assertEquals, assertRejects } from "./_assert.ts";
import { copyDisk, type CopyTarget, isZero, type TargetWriter } from "../src/copy.ts";
import { liveCount, run } from "../src/process.ts";
import { serveQemuNbd } from "../src/qemu_nbd.ts";
import { createOverlay } from "../src/qemu_img.ts";
import { fileTarget } from "../src/output/file_target.ts";
import { TempDir } from "../src/tmpdir.ts";

const MiB = 1024 * 1024;

type Op = { op: "write" | "zero"; offset: number; length: number; conn: number };

function recorder(readsZeroes: boolean, image: Uint8Array): CopyTarget & { ops: Op[] } {
  const ops: Op[] = [];
  let conns = 0;
  return {
    name: "recorder",
    readsZeroes,
    maxConnections: 4,
    maxZeroSize: 64 * MiB,
    ops,
    connect(): Promise<TargetWriter> {
      const conn = conns++;
      return Promise.resolve({
        write(offset, data) {
          ops.push({ op: "write", offset, length: data.length, conn });
          image.set(data, offset);
          return Promise.resolve();
        },
        zero(offset, length) {
          ops.push({ op: "zero", offset, length, conn });
          image.fill(0, offset, offset + length);
          return Promise.resolve();
        },
        flush: () => Promise.resolve(),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
  };
}

/** A 64 MiB qcow2: data at 0 (3 MiB of 0xab), zero clusters at 8 MiB (2 MiB), zero bytes written as data at 16 MiB (1 MiB), data at the last 512 bytes. */
async function image(dir: TempDir): Promise<string> {
  const path = dir.join("src.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
  await run("qemu-io", [
    "-f",
    "qcow2",
    "-c",
    "write -P 0xab 0 3M",
    "-c",
    "write -z 8M 2M",
    "-c",
    "write -P 0 16M 1M",
    "-c",
    `write -P 0xcd ${64 * MiB - 512} 512`,
    path,
  ]);
  return path;
}

function expected(): Uint8Array {
  const want = new Uint8Array(64 * MiB);
  want.fill(0xab, 0, 3 * MiB);
  want.fill(0xcd, 64 * MiB - 512);
  return want;
}

Deno.test("copy onto a target that reads zeroes: data as bytes, holes skipped", async () => {
  await using dir = await TempDir.create();
  await using server = await serveQemuNbd(await image(dir), {
    socket: dir.join("s.sock"),
    format: "qcow2",
    readOnly: true,
  });
  const got = new Uint8Array(64 * MiB);
  const target = recorder(true, got);
  const result = await copyDisk(server.uri, target, { requestSize: 1 * MiB });
  assertBytesEqual(got, expected());
  const written = target.ops.filter((o) => o.op === "write").reduce((n, o) => n + o.length, 0);
  // The last 512 bytes are read as one 64 KiB qcow2 cluster (extents have cluster
  // granularity), and zeroes inside what was read are found 4 KiB at a time: of that cluster
  // only the 4 KiB granule holding the data travels.
  assertEquals(written, 3 * MiB + 4096, "only the data travels as bytes");
  assertEquals(result.dataBytes, written);
  // qemu reports qcow2 zero clusters as holes that read zeroes, so they are skipped like the
  // never-written space; the zero bytes written as data are read, found zero, and skipped.
  assertEquals(result.zeroBytes, 0);
  assertEquals(result.dataBytes + result.zeroBytes + result.skippedBytes, 64 * MiB);
  assert(target.ops.every((o) => o.length <= 1 * MiB || o.op === "zero"));
  assertEquals(new Set(target.ops.map((o) => o.conn)).size > 1, true, "several connections");
});

Deno.test("copy onto a target that does not read zeroes: every zero range is a zero request", async () => {
  await using dir = await TempDir.create();
  await using server = await serveQemuNbd(await image(dir), {
    socket: dir.join("s.sock"),
    format: "qcow2",
    readOnly: true,
  });
  const got = new Uint8Array(64 * MiB).fill(0x55);
  const target = recorder(false, got);
  const result = await copyDisk(server.uri, target, {});
  assertBytesEqual(got, expected());
  assertEquals(result.skippedBytes, 0);
  assertEquals(result.dataBytes, 3 * MiB + 4096);
  assertEquals(result.zeroBytes, 64 * MiB - 3 * MiB - 4096);
});

Deno.test("copy splits zeroed blocks out of data, at the target's granule", async () => {
  await using dir = await TempDir.create();
  const path = dir.join("src.raw");
  await run("qemu-img", ["create", "-q", "-f", "raw", path, "1M"]);
  // One 1 MiB data extent (zero bytes written, so allocated) with data in blocks 0, 2 and 200.
  await run("qemu-io", [
    "-f",
    "raw",
    "-c",
    "write -P 0 0 1M",
    "-c",
    "write -P 0x11 0 4k",
    "-c",
    "write -P 0x22 8k 4k",
    "-c",
    "write -P 0x33 800k 4k",
    path,
  ]);
  await using server = await serveQemuNbd(path, {
    socket: dir.join("s.sock"),
    format: "raw",
    readOnly: true,
  });
  const fine = recorder(false, new Uint8Array(MiB));
  const r = await copyDisk(server.uri, fine, { connections: 1 });
  assertEquals(r.dataBytes, 3 * 4096);
  assertEquals(
    fine.ops.filter((o) => o.op === "write").map((o) => [o.offset, o.length]),
    [[0, 4096], [8192, 4096], [800 * 1024, 4096]],
  );
  // A target whose requests are costly (imageio) splits out only large zero runs.
  const coarse = { ...recorder(false, new Uint8Array(MiB)), zeroGranule: 64 * 1024 };
  const c = await copyDisk(server.uri, coarse, { connections: 1 });
  assertEquals(c.dataBytes, 2 * 64 * 1024);
});

Deno.test("copy reports progress up to the whole size", async () => {
  await using dir = await TempDir.create();
  await using server = await serveQemuNbd(await image(dir), {
    socket: dir.join("s.sock"),
    format: "qcow2",
    readOnly: true,
  });
  const seen: number[] = [];
  await copyDisk(server.uri, recorder(true, new Uint8Array(64 * MiB)), {
    onProgress: (p) => seen.push(p.done),
  });
  assertEquals(seen[0], 0);
  assertEquals(seen.at(-1), 64 * MiB);
  assert(seen.every((v, i) => i === 0 || v >= seen[i - 1]!), "progress never goes back");
});

Deno.test("a failing target write fails the copy with its error", async () => {
  await using dir = await TempDir.create();
  await using server = await serveQemuNbd(await image(dir), {
    socket: dir.join("s.sock"),
    format: "qcow2",
    readOnly: true,
  });
  const target: CopyTarget = {
    ...recorder(true, new Uint8Array(64 * MiB)),
    connect: () =>
      Promise.resolve({
        write: () => Promise.reject(new Error("disk full")),
        zero: () => Promise.resolve(),
        flush: () => Promise.resolve(),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      }),
  };
  await assertRejects(() => copyDisk(server.uri, target), Error, "disk full");
});

Deno.test("an aborted copy stops with the abort reason", async () => {
  await using dir = await TempDir.create();
  await using server = await serveQemuNbd(await image(dir), {
    socket: dir.join("s.sock"),
    format: "qcow2",
    readOnly: true,
  });
  const ac = new AbortController();
  ac.abort(new Error("stop now"));
  await assertRejects(
    () => copyDisk(server.uri, recorder(true, new Uint8Array(64 * MiB)), { signal: ac.signal }),
    Error,
    "stop now",
  );
});

Deno.test("isZero finds any non-zero byte at any alignment", () => {
  const buf = new Uint8Array(4099);
  assert(isZero(buf));
  for (const i of [0, 1, 3, 4, 2047, 4095, 4098]) {
    buf[i] = 1;
    assert(!isZero(buf), `byte ${i}`);
    assert(!isZero(buf.subarray(i > 0 ? 1 : 0)), `byte ${i}, unaligned view`);
    buf[i] = 0;
  }
  assert(isZero(new Uint8Array(0)));
});

Deno.test("copy into a new raw file through several handles writes every chunk in place", async () => {
  await using dir = await TempDir.create();
  // Many data chunks, so that requests on the same handle overlap in time.
  const src = dir.join("src.raw");
  const data = new Uint8Array(48 * MiB);
  for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) % 251 + 1;
  await Deno.writeFile(src, data);
  await using server = await serveQemuNbd(src, {
    socket: dir.join("s.sock"),
    format: "raw",
    readOnly: true,
  });
  const out = dir.join("out.raw");
  await Deno.writeFile(out, new Uint8Array(0));
  await Deno.truncate(out, data.length);
  const result = await copyDisk(server.uri, fileTarget(out), {
    requestSize: 1 * MiB,
    connections: 2,
    depth: 4,
  });
  assertEquals(result.dataBytes, data.length);
  assertBytesEqual(await Deno.readFile(out), data);
});

/**
 * Serves a qcow2 source and a qcow2 overlay over it, as the pipeline does: the source
 * read-only, the overlay with `qemu:allocation-depth`. `write` is conversion's stand-in, a
 * qemu-io write into the overlay.
 */
async function overlayOver(
  dir: TempDir,
  src: string,
  write?: string,
): Promise<AsyncDisposable & { backing: string; top: string }> {
  const stack = new AsyncDisposableStack();
  try {
    const backing = stack.use(
      await serveQemuNbd(src, { socket: dir.join("b.sock"), format: "qcow2", readOnly: true }),
    );
    const overlay = dir.join("overlay.qcow2");
    await createOverlay(overlay, backing.uri, 64 * MiB);
    if (write) await run("qemu-io", ["-f", "qcow2", "-c", write, overlay]);
    const top = stack.use(
      await serveQemuNbd(overlay, {
        socket: dir.join("o.sock"),
        format: "qcow2",
        readOnly: true,
        allocationDepth: true,
      }),
    );
    return {
      backing: backing.uri,
      top: top.uri,
      [Symbol.asyncDispose]: () => stack.disposeAsync(),
    };
  } catch (e) {
    await stack.disposeAsync();
    throw e;
  }
}

Deno.test("data the overlay does not hold is read from the backing source", async () => {
  await using dir = await TempDir.create();
  const src = await image(dir);
  // Conversion's stand-in: one write into the overlay, over part of the source's data.
  await using servers = await overlayOver(dir, src, "write -P 0x11 1M 64k");
  // Tell the copy that the backing is a different image: every byte that comes from it then
  // shows where it was read from.
  const other = dir.join("other.raw");
  await Deno.writeFile(other, new Uint8Array(64 * MiB).fill(0xee));
  await using otherServer = await serveQemuNbd(other, {
    socket: dir.join("x.sock"),
    format: "raw",
    readOnly: true,
  });
  const got = new Uint8Array(64 * MiB);
  const result = await copyDisk(servers.top, recorder(true, got), {
    backingUri: otherServer.uri,
    requestSize: 1 * MiB,
  });
  const want = new Uint8Array(64 * MiB);
  want.fill(0xee, 0, 3 * MiB); // the source's data extents, read from "the backing"
  want.fill(0x11, 1 * MiB, 1 * MiB + 64 * 1024); // what the overlay holds, read from it
  want.fill(0xee, 16 * MiB, 17 * MiB); // zero bytes written as data on the source
  want.fill(0xee, 64 * MiB - 64 * 1024); // the last cluster
  assertBytesEqual(got, want);
  assertEquals(result.dataBytes, 4 * MiB + 64 * 1024);
});

/** A qcow2 source with plain, compressed and zeroed clusters, as `qemu-img map` sees them. */
async function mixedSource(dir: TempDir): Promise<string> {
  const src = dir.join("mixed.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", src, String(64 * MiB)]);
  for (
    const cmd of [
      "write -P 0x22 0 2M", // plain clusters: read in place
      "write -c -P 0x33 8M 64k", // a compressed cluster: no offset in the file, read over NBD
      "write -P 0x44 16M 64k", // written, then zeroed: a zero cluster
      "write -z 16M 64k",
      "write -P 0x55 63M 1M", // the end of the disk
    ]
  ) {
    await run("qemu-io", ["-f", "qcow2", "-c", cmd, src]);
  }
  return src;
}

Deno.test("data the overlay does not hold is read in place from a local source file", async () => {
  await using dir = await TempDir.create();
  const src = await mixedSource(dir);
  const before = await Deno.readFile(src);
  const mtime = (await Deno.stat(src)).mtime;
  await using servers = await overlayOver(dir, src, "write -P 0x11 1M 64k");
  const processes = liveCount();
  for (const readsZeroes of [true, false]) {
    const got = new Uint8Array(64 * MiB).fill(readsZeroes ? 0 : 0xff);
    const target = recorder(readsZeroes, got);
    const result = await copyDisk(servers.top, target, {
      backingUri: servers.backing,
      backingFile: { path: src, format: "qcow2" },
      requestSize: 1 * MiB,
    });
    const want = new Uint8Array(64 * MiB);
    want.fill(0x22, 0, 2 * MiB);
    want.fill(0x11, 1 * MiB, 1 * MiB + 64 * 1024);
    want.fill(0x33, 8 * MiB, 8 * MiB + 64 * 1024);
    want.fill(0x55, 63 * MiB);
    assertBytesEqual(got, want);
    // In place: the plain clusters the overlay does not cover; not the compressed cluster
    // (read over NBD) nor the overlay's own write.
    assertEquals(result.localBytes, 2 * MiB - 64 * 1024 + 1 * MiB);
    assertEquals(result.dataBytes, 3 * MiB + 64 * 1024);
    // Zeroes are zero requests where the target does not read zeroes, else nothing.
    const zeroed = target.ops.filter((o) =>
      o.op === "zero" && o.offset <= 16 * MiB && o.offset + o.length >= 17 * MiB
    );
    assertEquals(zeroed.length, readsZeroes ? 0 : 1);
  }
  // qemu-img map is gone, the source untouched.
  assertEquals(liveCount(), processes);
  assertBytesEqual(await Deno.readFile(src), before);
  assertEquals((await Deno.stat(src)).mtime, mtime);
});

Deno.test("a copy aborted while reading in place leaves no qemu-img behind", async () => {
  await using dir = await TempDir.create();
  const src = await mixedSource(dir);
  await using servers = await overlayOver(dir, src);
  const processes = liveCount();
  const stop = new AbortController();
  const target = recorder(true, new Uint8Array(64 * MiB));
  const connect = target.connect.bind(target);
  target.connect = async (signal, source) => {
    const w = await connect(signal, source);
    return {
      ...w,
      write(offset, data) {
        stop.abort(new Error("stopped by the test"));
        return w.write(offset, data);
      },
    };
  };
  await assertRejects(
    () =>
      copyDisk(servers.top, target, {
        backingUri: servers.backing,
        backingFile: { path: src, format: "qcow2" },
        requestSize: 64 * 1024,
        signal: stop.signal,
      }),
    Error,
    "stopped by the test",
  );
  assertEquals(liveCount(), processes);
});
