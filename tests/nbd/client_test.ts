/**
 * Tests of the NBD client against real servers: nbdkit (memory, pattern, eval; error, delay and
 * blocksize-policy filters; `--no-sr` for simple replies) and qemu-nbd on qcow2 images.
 */

import assert from "node:assert/strict";
import { assertEquals, assertRejects } from "../_assert.ts";
import {
  type Extent,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NbdClient,
  NbdError,
  parseNbdUri,
} from "../../src/nbd/client.ts";
import { nbdReady } from "../../src/nbd/probe.ts";
import { Nbdkit } from "../../src/nbdkit.ts";
import { run, type Server, startServer } from "../../src/process.ts";
import { serveQemuNbd } from "../../src/qemu_nbd.ts";
import { TempDir } from "../../src/tmpdir.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** nbdkit with options the builder has no method for (e.g. `--no-sr`), placed before it. */
function serveNbdkitWith(extra: string[], nbdkit: Nbdkit, socket: string): Promise<Server> {
  return startServer("nbdkit", [...extra, ...nbdkit.args(socket)], {
    socket,
    ready: nbdReady,
    name: "nbdkit",
  });
}

/** An 8 MiB qcow2: data (0xab) in [0, 1M), a zero cluster run in [4M, 5M), the rest unallocated. */
async function makeQcow2(dir: TempDir): Promise<string> {
  const image = dir.join("disk.qcow2");
  await run("qemu-img", ["create", "-f", "qcow2", image, "8M"]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -z 4M 1M", image]);
  return image;
}

/** Checks data read from the nbdkit pattern plugin: each 8-byte word holds its own offset. */
function assertPattern(data: Uint8Array, offset: number): void {
  assert.equal(offset % 8, 0);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i + 8 <= data.length; i += 8) {
    const word = view.getBigUint64(i);
    if (word !== BigInt(offset + i)) {
      assert.fail(`Word at offset ${offset + i} is ${word}`);
    }
  }
}

/** Block status of the whole export, looping as a caller must, with runs of equal flags merged. */
async function mapAll(nbd: NbdClient): Promise<Extent[]> {
  const out: Extent[] = [];
  let offset = 0;
  while (offset < nbd.size) {
    const extents = await nbd.blockStatus(offset, nbd.size - offset);
    assert.ok(extents.length > 0);
    for (const e of extents) {
      assert.equal(e.offset, offset, "extents are contiguous");
      offset += e.length;
    }
    out.push(...extents);
  }
  return merge(out);
}

function merge(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.flags === e.flags && last.offset + last.length === e.offset) {
      last.length += e.length;
    } else out.push({ ...e });
  }
  return out;
}

/** What `nbdinfo --map --json` says about the export, merged the same way. */
async function nbdinfoMap(uri: string): Promise<Extent[]> {
  const json = JSON.parse(await run("nbdinfo", ["--map", "--json", uri])) as {
    offset: number;
    length: number;
    type: number;
  }[];
  return merge(json.map((e) => ({ offset: e.offset, length: e.length, flags: e.type })));
}

Deno.test("parseNbdUri reads unix and tcp URIs", () => {
  assert.deepEqual(parseNbdUri("nbd+unix:///?socket=/tmp/a.sock"), {
    socket: "/tmp/a.sock",
    exportName: "",
  });
  assert.deepEqual(parseNbdUri("nbd+unix:///sd%20a?socket=/tmp/a%2Bb.sock"), {
    socket: "/tmp/a+b.sock",
    exportName: "sd a",
  });
  assert.deepEqual(parseNbdUri("nbd://example.com/disk"), {
    host: "example.com",
    port: 10809,
    exportName: "disk",
  });
  assert.deepEqual(parseNbdUri("nbd://127.0.0.1:10900"), {
    host: "127.0.0.1",
    port: 10900,
    exportName: "",
  });
  assert.deepEqual(parseNbdUri("nbd://[::1]:10900/x"), {
    host: "::1",
    port: 10900,
    exportName: "x",
  });
});

Deno.test("parseNbdUri rejects what it cannot serve", () => {
  assert.throws(() => parseNbdUri("nbd+unix:///x"), {
    name: "TypeError",
    message: 'Invalid NBD URI "nbd+unix:///x": missing "socket" parameter',
  });
  assert.throws(() => parseNbdUri("nbds://host/"), /TLS is not supported/);
  assert.throws(() => parseNbdUri("http://host/"), /unsupported scheme "http:"/);
  assert.throws(() => parseNbdUri("not a uri"), /not a URI/);
});

Deno.test("handshake reports nbdkit's size and flags", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addArg("size", "64M").writable(true)
    .serve(dir.join("nbd.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  assert.equal(nbd.uri, server.uri);
  assert.equal(nbd.size, 64 * MiB);
  assert.equal(nbd.readOnly, false);
  assert.equal(nbd.canFlush, true);
  assert.equal(nbd.canTrim, true);
  assert.equal(nbd.canWriteZeroes, true);
  assert.equal(nbd.canFastZero, true);
  assert.equal(nbd.canMultiConn, true);
  assert.equal(nbd.canBlockStatus, true);
  // nbdkit's memory plugin states no block size: the protocol defaults apply.
  assert.equal(nbd.minBlockSize, 1);
  assert.equal(nbd.preferredBlockSize, 4096);
  assert.equal(nbd.maxBlockSize, 32 * MiB);
});

Deno.test("handshake reports qemu-nbd's size, flags and block sizes", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using server = await serveQemuNbd(image, {
    socket: dir.join("nbd.sock"),
    format: "qcow2",
    readOnly: true,
  });
  await using nbd = await NbdClient.connect(server.uri);
  assert.equal(nbd.size, 8 * MiB);
  assert.equal(nbd.readOnly, true);
  assert.equal(nbd.canBlockStatus, true);
  assert.equal(nbd.preferredBlockSize, 4096);
  assert.equal(nbd.maxBlockSize, 32 * MiB);
});

Deno.test("handshake records the block sizes the server states", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addFilter("blocksize-policy")
    .addArg("blocksize-minimum", "512").addArg("blocksize-preferred", "65536")
    .addArg("blocksize-maximum", "1M").addArg("size", "8M").writable(true)
    .serve(dir.join("nbd.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  assert.equal(nbd.minBlockSize, 512);
  assert.equal(nbd.preferredBlockSize, 65536);
  assert.equal(nbd.maxBlockSize, MiB);
  await assert.rejects(nbd.read(0, MiB + 512), {
    name: "RangeError",
    message: `Cannot send NBD READ at offset 0 length 1049088 to ${server.uri}: ` +
      "the length exceeds the maximum block size (1048576 bytes)",
  });
  assert.equal((await nbd.read(0, MiB)).length, MiB);
});

Deno.test("read returns known contents (pattern plugin)", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("pattern").addArg("size", "64M").serve(dir.join("p.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  assert.equal(nbd.readOnly, true);
  assertPattern(await nbd.read(0, 4096), 0);
  assertPattern(await nbd.read(40 * MiB + 8, 100 * KiB), 40 * MiB + 8);
  // The largest read the server takes, much larger than the socket and read buffers.
  assertPattern(await nbd.read(16 * MiB, nbd.maxBlockSize), 16 * MiB);
  const buffer = new Uint8Array(3 * KiB);
  await nbd.readInto(64 * MiB - 3 * KiB, buffer);
  assertPattern(buffer, 64 * MiB - 3 * KiB);
});

Deno.test("read returns known contents (data plugin)", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("data").addArg("data", "1 2 3 @0x10000 0xff")
    .addArg("size", "1M").serve(dir.join("d.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  assert.deepEqual(await nbd.read(0, 4), new Uint8Array([1, 2, 3, 0]));
  assert.deepEqual(await nbd.read(0x10000 - 1, 3), new Uint8Array([0, 0xff, 0]));
});

for (const flavour of ["structured", "simple"] as const) {
  Deno.test(`write and read round trip on nbdkit (${flavour} replies)`, async () => {
    await using dir = await TempDir.create();
    const memory = new Nbdkit("memory").addArg("size", "64M").writable(true);
    await using server = flavour === "simple"
      ? await serveNbdkitWith(["--no-sr"], memory, dir.join("m.sock"))
      : await memory.serve(dir.join("m.sock"));
    await using nbd = await NbdClient.connect(server.uri);
    assert.equal(nbd.canBlockStatus, flavour === "structured");
    const data = new Uint8Array(3 * MiB + 17);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    await nbd.write(1 * MiB + 5, data);
    await nbd.write(40 * MiB, data.subarray(0, 512), { fua: true });
    assert.deepEqual(await nbd.read(1 * MiB + 5, data.length), data);
    assert.deepEqual(await nbd.read(40 * MiB, 512), data.subarray(0, 512));
    // Unwritten parts read as zeroes.
    assert.deepEqual(await nbd.read(0, 4096), new Uint8Array(4096));
  });
}

Deno.test("write and read round trip on qemu-nbd, holes read as zeroes", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using server = await serveQemuNbd(image, { socket: dir.join("q.sock"), format: "qcow2" });
  await using nbd = await NbdClient.connect(server.uri);
  // A read across data and a hole: qemu-nbd sends OFFSET_DATA and OFFSET_HOLE chunks.
  const across = await nbd.read(MiB - 4096, 8192);
  assert.deepEqual(across.subarray(0, 4096), new Uint8Array(4096).fill(0xab));
  assert.deepEqual(across.subarray(4096), new Uint8Array(4096));
  // A destination full of garbage must come back zeroed where the disk has holes.
  const buffer = new Uint8Array(2 * MiB).fill(0x55);
  await nbd.readInto(3 * MiB, buffer);
  assert.deepEqual(buffer, new Uint8Array(2 * MiB));
  const data = new Uint8Array(MiB).fill(0x3c);
  await nbd.write(6 * MiB, data, { fua: true });
  await nbd.flush();
  assert.deepEqual(await nbd.read(6 * MiB, MiB), data);
});

Deno.test("many concurrent requests each get their own data", async () => {
  await using dir = await TempDir.create();
  await using pattern = await new Nbdkit("pattern").addArg("size", "1G").serve(dir.join("p.sock"));
  await using memory = await new Nbdkit("memory").addArg("size", "64M").writable(true)
    .serve(dir.join("m.sock"));
  await using source = await NbdClient.connect(pattern.uri);
  await using target = await NbdClient.connect(memory.uri);

  // 64 reads of varied sizes in flight at once, replies in whatever order the server likes.
  const reads = Array.from({ length: 64 }, (_, i) => {
    const offset = ((i * 7919) % 1000) * MiB + i * 8;
    const length = i % 4 === 0 ? 2 * MiB + 8 * i : 512 + 8 * i;
    return { offset, promise: source.read(offset, length) };
  });
  for (const { offset, promise } of reads) assertPattern(await promise, offset);

  // 64 writes then 64 reads in flight, each with its own fill byte.
  const size = 256 * KiB;
  await Promise.all(
    Array.from({ length: 64 }, (_, i) => target.write(i * size, new Uint8Array(size).fill(i + 1))),
  );
  const back = await Promise.all(Array.from({ length: 64 }, (_, i) => target.read(i * size, size)));
  back.forEach((data, i) => assert.deepEqual(data, new Uint8Array(size).fill(i + 1)));
});

Deno.test("block status agrees with nbdinfo on qemu-nbd", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using server = await serveQemuNbd(image, {
    socket: dir.join("q.sock"),
    format: "qcow2",
    readOnly: true,
  });
  await using nbd = await NbdClient.connect(server.uri);
  const map = await mapAll(nbd);
  assert.deepEqual(map, await nbdinfoMap(server.uri));
  // qemu 7.2 reports both the zero clusters and the unallocated ones as hole and zero.
  assert.deepEqual(map, [
    { offset: 0, length: MiB, flags: 0 },
    { offset: MiB, length: 7 * MiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
  ]);
  // Extents start at the offset asked for and are clipped to the range.
  const middle = await nbd.blockStatus(512 * KiB, MiB);
  assert.equal(middle[0]?.offset, 512 * KiB);
  const end = middle.reduce((sum, e) => sum + e.length, middle[0]!.offset);
  assert.ok(end <= 512 * KiB + MiB);
  assert.deepEqual(middle[0], { offset: 512 * KiB, length: 512 * KiB, flags: 0 });
});

Deno.test("block status agrees with nbdinfo on data, zero and hole extents", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("eval")
    .addArg("get_size", "echo 3M")
    .addArg("pread", "dd if=/dev/zero count=$3 iflag=count_bytes status=none")
    .addArg("can_extents", "exit 0")
    .addArg("extents", "echo 0 1M; echo 1M 1M zero; echo 2M 1M hole,zero")
    .serve(dir.join("e.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  const map = await mapAll(nbd);
  assert.deepEqual(map, await nbdinfoMap(server.uri));
  assert.deepEqual(map, [
    { offset: 0, length: MiB, flags: 0 },
    { offset: MiB, length: MiB, flags: NBD_STATE_ZERO },
    { offset: 2 * MiB, length: MiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
  ]);
  // Clipped to a range inside one extent.
  assert.deepEqual(await nbd.blockStatus(MiB + 4096, 8192), [
    { offset: MiB + 4096, length: 8192, flags: NBD_STATE_ZERO },
  ]);
});

Deno.test("block status without structured replies is one data extent", async () => {
  await using dir = await TempDir.create();
  await using server = await serveNbdkitWith(
    ["--no-sr"],
    new Nbdkit("memory").addArg("size", "1M"),
    dir.join("m.sock"),
  );
  await using nbd = await NbdClient.connect(server.uri);
  assert.equal(nbd.canBlockStatus, false);
  assert.deepEqual(await nbd.blockStatus(4096, 8192), [{ offset: 4096, length: 8192, flags: 0 }]);
});

Deno.test("write zeroes with and without noHole on nbdkit", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addArg("size", "8M").writable(true)
    .serve(dir.join("m.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  await nbd.write(0, new Uint8Array(2 * MiB).fill(9));
  await nbd.writeZeroes(0, 64 * KiB, { noHole: true });
  await nbd.writeZeroes(MiB, 64 * KiB);
  await nbd.writeZeroes(MiB + 64 * KiB, 64 * KiB, { fastZero: true });
  assert.deepEqual(await nbd.read(0, 64 * KiB), new Uint8Array(64 * KiB));
  assert.deepEqual(await nbd.read(MiB, 128 * KiB), new Uint8Array(128 * KiB));
  assert.deepEqual(await nbd.read(64 * KiB, 4), new Uint8Array([9, 9, 9, 9]));
  // nbdkit's memory plugin reads back zeroed ranges as holes either way.
  const map = await mapAll(nbd);
  assert.deepEqual(map.slice(0, 2), [
    { offset: 0, length: 64 * KiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    { offset: 64 * KiB, length: MiB - 64 * KiB, flags: 0 },
  ]);
});

Deno.test("write zeroes with noHole keeps qcow2 clusters allocated", async () => {
  await using dir = await TempDir.create();
  const image = dir.join("disk.qcow2");
  await run("qemu-img", ["create", "-f", "qcow2", image, "8M"]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xab 0 2M", image]);
  {
    await using server = await serveQemuNbd(image, {
      socket: dir.join("q.sock"),
      format: "qcow2",
      discard: true,
    });
    await using nbd = await NbdClient.connect(server.uri);
    await nbd.writeZeroes(0, 64 * KiB, { noHole: true });
    await nbd.writeZeroes(MiB, 64 * KiB);
    await nbd.flush();
    assert.deepEqual(await nbd.read(0, 64 * KiB), new Uint8Array(64 * KiB));
    assert.deepEqual(await nbd.read(MiB, 64 * KiB), new Uint8Array(64 * KiB));
    // Over NBD, qemu-nbd reports a zero cluster as hole and zero whether it is allocated or not.
    const status = await nbd.blockStatus(0, 2 * MiB);
    assert.deepEqual(status.filter((e) => e.flags !== 0), [
      { offset: 0, length: 64 * KiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
      { offset: MiB, length: 64 * KiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    ]);
  }
  // The image itself shows the difference: with noHole the cluster keeps its host offset.
  const map = JSON.parse(await run("qemu-img", ["map", "--output=json", image])) as {
    start: number;
    zero: boolean;
    offset?: number;
  }[];
  const at = (start: number) => map.find((e) => e.start === start);
  assert.equal(at(0)?.zero, true);
  assert.equal(typeof at(0)?.offset, "number", "noHole: still allocated");
  assert.equal(at(MiB)?.zero, true);
  assert.equal(at(MiB)?.offset, undefined, "without noHole: unmapped");
});

Deno.test("trim discards data on nbdkit and qemu-nbd", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using qemu = await serveQemuNbd(image, {
    socket: dir.join("q.sock"),
    format: "qcow2",
    discard: true,
  });
  await using nbdkit = await new Nbdkit("memory").addArg("size", "8M").writable(true)
    .serve(dir.join("m.sock"));
  for (const uri of [qemu.uri, nbdkit.uri]) {
    await using nbd = await NbdClient.connect(uri);
    assert.equal(nbd.canTrim, true);
    await nbd.write(0, new Uint8Array(MiB).fill(0xab));
    await nbd.trim(0, 512 * KiB);
    await nbd.flush();
    // Both servers read trimmed ranges back as zeroes and report them as holes.
    assert.deepEqual(await nbd.read(0, 512 * KiB), new Uint8Array(512 * KiB));
    assert.deepEqual(await nbd.blockStatus(0, 512 * KiB), [
      { offset: 0, length: 512 * KiB, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    ]);
    assert.deepEqual(await nbd.read(512 * KiB, 4), new Uint8Array(4).fill(0xab));
  }
});

Deno.test("errors name the server and the request", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addFilter("error")
    .addArg("error-pread", "EIO").addArg("error-pread-rate", "1")
    .addArg("error-pwrite", "ENOSPC").addArg("error-pwrite-rate", "1")
    .addArg("size", "1M").writable(true).serve(dir.join("e.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  await assert.rejects(nbd.read(4096, 512), (e: unknown) => {
    assert.ok(e instanceof NbdError);
    assert.equal(e.errno, 5);
    assert.equal(e.command, "READ");
    assert.equal(
      e.message,
      `NBD READ at offset 4096 length 512 failed on ${server.uri}: EIO (input/output error)`,
    );
    return true;
  });
  await assert.rejects(nbd.write(8192, new Uint8Array(1024)), {
    name: "NbdError",
    errno: 28,
    command: "WRITE",
    message: `NBD WRITE at offset 8192 length 1024 failed on ${server.uri}: ` +
      "ENOSPC (no space left on device)",
  });
  // A failed request leaves the connection usable.
  await nbd.writeZeroes(0, 4096);
  await nbd.flush();
});

Deno.test("errors in simple replies name the server given in options", async () => {
  await using dir = await TempDir.create();
  await using server = await serveNbdkitWith(
    ["--no-sr"],
    new Nbdkit("memory").addFilter("error").addArg("error", "EIO")
      .addArg("error-pread-rate", "1").addArg("size", "1M"),
    dir.join("e.sock"),
  );
  await using nbd = await NbdClient.connect(server.uri, { name: "source disk sda" });
  await assert.rejects(nbd.read(0, 512), {
    name: "NbdError",
    errno: 5,
    message: "NBD READ at offset 0 length 512 failed on source disk sda: EIO (input/output error)",
  });
  await assert.rejects(nbd.read(512, 512), { errno: 5 });
});

Deno.test("a read-only export refuses writes with a clear error", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using qemu = await serveQemuNbd(image, {
    socket: dir.join("q.sock"),
    format: "qcow2",
    readOnly: true,
  });
  await using nbdkit = await new Nbdkit("memory").addArg("size", "1M").serve(dir.join("m.sock"));
  for (const uri of [qemu.uri, nbdkit.uri]) {
    await using nbd = await NbdClient.connect(uri);
    assert.equal(nbd.readOnly, true);
    await assert.rejects(nbd.write(0, new Uint8Array(512)), {
      name: "NbdError",
      errno: 1,
      command: "WRITE",
      message: `NBD WRITE at offset 0 length 512 failed on ${uri}: ` +
        "EPERM (operation not permitted): the export is read-only",
    });
    await assert.rejects(nbd.writeZeroes(0, 512), /the export is read-only/);
    await assert.rejects(nbd.trim(0, 512), /the export is read-only/);
    // Reads still work.
    assert.equal((await nbd.read(0, 512)).length, 512);
  }
});

Deno.test("out-of-range requests throw RangeError before sending", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addArg("size", "64M").writable(true)
    .serve(dir.join("m.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  await assert.rejects(nbd.read(64 * MiB - 512, 1024), {
    name: "RangeError",
    message: `Cannot send NBD READ at offset 67108352 length 1024 to ${server.uri}: ` +
      "the range goes beyond the end of the export (67108864 bytes)",
  });
  await assert.rejects(nbd.read(0, 32 * MiB + 1), RangeError);
  await assert.rejects(nbd.write(-1, new Uint8Array(1)), RangeError);
  await assert.rejects(nbd.write(64 * MiB, new Uint8Array(1)), RangeError);
  await assert.rejects(nbd.readInto(0.5, new Uint8Array(1)), RangeError);
  await assert.rejects(nbd.writeZeroes(0, 64 * MiB + 1), RangeError);
  await assert.rejects(nbd.trim(64 * MiB, 1), RangeError);
  await assert.rejects(nbd.blockStatus(0, 0), RangeError);
  await assert.rejects(nbd.blockStatus(60 * MiB, 8 * MiB), RangeError);
  // Nothing reached the server: the connection is fine. Trim and zero may exceed the max block
  // size (they carry no payload).
  await nbd.writeZeroes(0, 64 * MiB, { noHole: true });
  await nbd.trim(0, 64 * MiB);
  assert.equal((await nbd.read(0, 32 * MiB)).length, 32 * MiB);
});

Deno.test("a server killed mid-request fails pending and later requests", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addFilter("delay").addArg("delay-read", "30")
    .addArg("size", "1M").serve(dir.join("d.sock"));
  await using nbd = await NbdClient.connect(server.uri);
  const pending = [nbd.read(0, 512), nbd.read(4096, 512), nbd.readInto(8192, new Uint8Array(64))];
  // Wait until nbdkit has read the requests and is sleeping in the delay filter.
  await new Promise((resolve) => setTimeout(resolve, 200));
  Deno.kill(server.pid, "SIGKILL");
  const expected = new RegExp(
    `^Connection to NBD server ${RegExp.escape(server.uri)} lost: ` +
      "the server closed the connection$",
  );
  for (const p of pending) await assert.rejects(p, { message: expected });
  await assert.rejects(nbd.read(0, 512), { message: expected });
  await assert.rejects(nbd.flush(), { message: expected });
  await nbd.close();
});

Deno.test("an unknown export name is a clear error", async () => {
  await using dir = await TempDir.create();
  const image = await makeQcow2(dir);
  await using server = await serveQemuNbd(image, {
    socket: dir.join("q.sock"),
    format: "qcow2",
    readOnly: true,
  });
  await assert.rejects(NbdClient.connect(server.uri, { exportName: "nope" }), {
    message: new RegExp(
      `^Cannot open NBD export "nope" on ${RegExp.escape(server.uri)}: ` +
        "the export does not exist \\(NBD_REP_ERR_UNKNOWN\\)",
    ),
  });
  const uri = `nbd+unix:///other?socket=${server.socket}`;
  await assert.rejects(NbdClient.connect(uri), {
    message: new RegExp(
      `^Cannot open NBD export "other" on ${RegExp.escape(uri)}: the export does not exist`,
    ),
  });
});

Deno.test("connecting to a missing socket says which server", async () => {
  await using dir = await TempDir.create();
  await assert.rejects(
    NbdClient.connect(`nbd+unix:///?socket=${dir.join("none.sock")}`, { name: "target" }),
    { message: /^Cannot connect to NBD server target: No such file or directory/ },
  );
});

Deno.test("connect honours an aborted signal", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addArg("size", "1M").serve(dir.join("m.sock"));
  const controller = new AbortController();
  controller.abort(new Error("stopped"));
  await assert.rejects(NbdClient.connect(server.uri, { signal: controller.signal }), {
    message: "stopped",
  });
});

Deno.test("close waits for pending requests and is idempotent", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("pattern").addArg("size", "64M").serve(dir.join("p.sock"));
  const nbd = await NbdClient.connect(server.uri);
  const reads = Array.from({ length: 16 }, (_, i) => nbd.read(i * MiB, MiB));
  const closed = nbd.close();
  await assert.rejects(nbd.read(0, 512), {
    message: `Cannot send a request to NBD server ${server.uri}: the connection is closed`,
  });
  for (const [i, p] of reads.entries()) assertPattern(await p, i * MiB);
  await closed;
  await nbd.close();
  await nbd[Symbol.asyncDispose]();
});

Deno.test("connects over TCP", async () => {
  await using dir = await TempDir.create();
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await using server = await startServer(
    "nbdkit",
    [
      "--foreground",
      "--exit-with-parent",
      "-i",
      "127.0.0.1",
      "-p",
      String(port),
      "pattern",
      "size=1M",
    ],
    {
      socket: dir.join("unused"),
      ready: async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        conn.close();
        return true;
      },
    },
  );
  await using nbd = await NbdClient.connect(`nbd://127.0.0.1:${port}/`);
  assert.equal(nbd.size, MiB);
  assertPattern(await nbd.read(8192, 65536), 8192);
  assert.equal(server.exited, false);
});

Deno.test("qemu-nbd: qemu:allocation-depth tells overlay data from backing data", async () => {
  await using dir = await TempDir.create();
  const base = dir.join("base.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 1M", base]);
  const top = dir.join("top.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 2 2M 1M", top]);
  await using server = await serveQemuNbd(top, {
    socket: dir.join("q.sock"),
    format: "qcow2",
    readOnly: true,
    allocationDepth: true,
  });
  await using nbd = await NbdClient.connect(server.uri, {
    metaContexts: ["qemu:allocation-depth"],
  });
  assertEquals(nbd.metaContexts.sort(), ["base:allocation", "qemu:allocation-depth"]);
  assertEquals(await nbd.blockStatus(0, 4 * MiB, "qemu:allocation-depth"), [
    { offset: 0, length: 1 * MiB, flags: 2 },
    { offset: 1 * MiB, length: 1 * MiB, flags: 0 },
    { offset: 2 * MiB, length: 1 * MiB, flags: 1 },
    { offset: 3 * MiB, length: 1 * MiB, flags: 0 },
  ]);
  // A context the server did not grant is refused by name.
  await using plain = await NbdClient.connect(server.uri);
  await assertRejects(
    () => plain.blockStatus(0, 4096, "qemu:allocation-depth"),
    TypeError,
    'did not grant meta context "qemu:allocation-depth"',
  );
});
