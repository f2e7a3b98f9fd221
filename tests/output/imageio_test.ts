/**
 * The imageio uploader against the oVirt test servers: what OPTIONS offers, data and zeroes
 * landing where they belong, flushes per connection, surviving a dropped connection and a 500
 * by resending what the server lost, giving up at once on a refused ticket, and keeping an
 * idle transfer alive.
 */

import { assert, assertEquals, assertRejects, assertStringIncludes } from "../_assert.ts";
import type { SourceReader, TargetWriter } from "../../src/copy.ts";
import { openImageio } from "../../src/output/imageio.ts";
import { OvirtApi } from "../../src/output/ovirt_api.ts";
import { TempDir } from "../../src/tmpdir.ts";
import { type Ovirt, type OvirtOptions, startOvirt } from "../servers/mod.ts";

const MiB = 1024 * 1024;

/** An in-memory source: byte i is a function of i, except in the zero range. */
class Source implements SourceReader {
  readonly size: number;
  reads = 0;
  constructor(size: number) {
    this.size = size;
  }
  byte(i: number): number {
    return ((i * 2654435761) >>> 24) | 1;
  }
  readInto(offset: number, buffer: Uint8Array): Promise<void> {
    this.reads++;
    for (let i = 0; i < buffer.length; i++) buffer[i] = this.byte(offset + i);
    return Promise.resolve();
  }
  chunk(offset: number, length: number): Uint8Array {
    const b = new Uint8Array(length);
    for (let i = 0; i < length; i++) b[i] = this.byte(offset + i);
    return b;
  }
}

interface Setup extends AsyncDisposable {
  ovirt: Ovirt;
  engine: OvirtApi;
  caCerts: string[];
  diskId: string;
  transferId: string;
  transferUrl: string;
}

/** Servers, a logged-in engine session, one raw disk and an upload to it. */
async function setup(size: number, options: Partial<OvirtOptions> = {}): Promise<Setup> {
  const dir = await TempDir.create();
  const ovirt = await startOvirt({ dir: dir.path, ...options });
  const caCerts = [await Deno.readTextFile(ovirt.caFile)];
  const engine = await OvirtApi.login({
    url: ovirt.engineUrl,
    username: "admin@internal",
    password: "test-password",
    caCerts,
  });
  const sd = (await engine.storageDomain("data"))!;
  const disk = await engine.addDisk({
    name: "imageio-test",
    provisionedSize: size,
    format: "raw",
    sparse: true,
    storageDomainId: sd.id,
  });
  while ((await engine.disk(disk.id))?.status !== "ok") await sleep(50);
  const t = await engine.addUpload(disk.id, options.ticketInactivityTimeout ?? 3600);
  let ready = await engine.transfer(t.id);
  while (ready?.phase === "initializing") {
    await sleep(50);
    ready = await engine.transfer(t.id);
  }
  assertEquals(ready?.phase, "transferring");
  return {
    ovirt,
    engine,
    caCerts,
    diskId: disk.id,
    transferId: t.id,
    transferUrl: ready!.transferUrl!,
    async [Symbol.asyncDispose]() {
      await engine[Symbol.asyncDispose]();
      await ovirt[Symbol.asyncDispose]();
      await dir[Symbol.asyncDispose]();
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Finalizes the upload and returns the image's bytes. */
async function finish(s: Setup): Promise<Uint8Array> {
  await s.engine.finalizeTransfer(s.transferId);
  let t = await s.engine.transfer(s.transferId);
  while (t && t.phase !== "finished_success") {
    assert(t.phase !== "finished_failure", "finalize failed");
    await sleep(50);
    t = await s.engine.transfer(s.transferId);
  }
  const disk = s.ovirt.disks().find((d) => d.id === s.diskId)!;
  return await Deno.readFile(disk.path);
}

/** Writes [0, 6 MiB) as data, [6, 10) as zeroes, [10, 16) as data over `writers`. */
async function upload(writers: TargetWriter[], source: Source): Promise<void> {
  const jobs: Array<Promise<void>> = [];
  const plan: Array<[number, number, boolean]> = [
    [0, 4 * MiB, true],
    [4 * MiB, 2 * MiB, true],
    [6 * MiB, 4 * MiB, false],
    [10 * MiB, 4 * MiB, true],
    [14 * MiB, 2 * MiB, true],
  ];
  for (const [i, [offset, length, data]] of plan.entries()) {
    const w = writers[i % writers.length]!;
    jobs.push(data ? w.write(offset, source.chunk(offset, length)) : w.zero(offset, length));
  }
  await Promise.all(jobs);
  await Promise.all(writers.map((w) => w.flush()));
}

function assertImage(image: Uint8Array, source: Source): void {
  assertEquals(image.length, 16 * MiB);
  for (let i = 0; i < image.length; i += 4093) {
    const want = i >= 6 * MiB && i < 10 * MiB ? 0 : source.byte(i);
    if (image[i] !== want) throw new Error(`Byte ${i}: got ${image[i]}, expected ${want}`);
  }
}

Deno.test("OPTIONS decides features and connections: min(max_writers, 4)", async () => {
  for (const [maxWriters, expected] of [[8, 4], [1, 1]] as const) {
    await using s = await setup(16 * MiB, { maxWriters });
    await using target = await openImageio(s.transferUrl, {
      name: "disk 1",
      caCerts: s.caCerts,
      readsZeroes: false,
    });
    assertEquals(target.maxConnections, expected);
    assertEquals(
      [target.features.zero, target.features.flush, target.features.extents],
      [true, true, true],
    );
    assertEquals(target.readsZeroes, false);
    assert(!target.name.includes(s.transferUrl.split("/").pop()!), "the ticket is secret");
  }
});

Deno.test("data goes as PUT, zeroes as PATCH zero, one flush per connection", async () => {
  await using s = await setup(16 * MiB);
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
  });
  const source = new Source(16 * MiB);
  const signal = new AbortController().signal;
  const writers = [await target.connect(signal, source), await target.connect(signal, source)];
  await upload(writers, source);
  for (const w of writers) await w[Symbol.asyncDispose]();
  const stats = s.ovirt.stats();
  assertEquals(stats.putBytes, 12 * MiB);
  assertEquals(stats.putRequests, 4);
  assertEquals([stats.zeroRequests, stats.zeroBytes], [1, 4 * MiB]);
  assertEquals(stats.flushRequests, 2);
  assertEquals(stats.implicitFlushes, 0);
  assertEquals(stats.connections, 2, "the OPTIONS connection is reused by the first writer");
  assertEquals(source.reads, 0, "nothing was resent");
  assertImage(await finish(s), source);
});

Deno.test("a daemon on this host: the data goes over its local socket, without TLS", async () => {
  await using s = await setup(16 * MiB, { unixSocket: true });
  const messages: string[] = [];
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    retryDelay: 10,
    debug: (m) => messages.push(m),
  });
  assertEquals(target.features.unixSocket, s.ovirt.unixSocket);
  assertStringIncludes(target.origin, "(local socket)");
  assert(messages.some((m) => m.includes("through its local socket")), messages.join("\n"));
  const source = new Source(16 * MiB);
  const signal = new AbortController().signal;
  const writers = [await target.connect(signal, source), await target.connect(signal, source)];
  // A connection lost over the socket comes back over the socket.
  s.ovirt.faults.dropConnectionAfterBytes = 5 * MiB;
  await upload(writers, source);
  for (const w of writers) await w[Symbol.asyncDispose]();
  const stats = s.ovirt.stats();
  assert(stats.droppedBytes > 0, "the fault fired");
  // OPTIONS over HTTPS, then every data connection over the socket: the probe (reused by the
  // first writer), the second writer, and the reconnection after the drop.
  assertEquals([stats.connections, stats.unixConnections], [4, 3]);
  assertImage(await finish(s), source);
});

Deno.test("a local socket that is not this transfer's daemon is left for HTTPS", async () => {
  await using other = await setup(MiB, { unixSocket: true });
  for (const socket of [other.ovirt.unixSocket!, "\0/vmshift-test-imageio/nobody-listens"]) {
    await using s = await setup(16 * MiB);
    // Another daemon on this host (it answers 403 for the ticket), or a socket nobody serves.
    s.ovirt.faults.advertiseUnixSocket = socket;
    const messages: string[] = [];
    await using target = await openImageio(s.transferUrl, {
      name: "disk 1",
      caCerts: s.caCerts,
      readsZeroes: false,
      debug: (m) => messages.push(m),
    });
    assert(!target.origin.includes("local socket"), target.origin);
    assert(messages.some((m) => m.includes("local socket not used")), messages.join("\n"));
    assert(messages.every((m) => !m.includes(s.transferUrl.split("/").pop()!)), "ticket shown");
    const source = new Source(16 * MiB);
    const writer = await target.connect(new AbortController().signal, source);
    await upload([writer], source);
    await writer[Symbol.asyncDispose]();
    assertEquals(s.ovirt.stats().unixConnections, 0);
    assertImage(await finish(s), source);
  }
  assertEquals(other.ovirt.stats().putRequests, 0, "the other daemon got no data");
});

Deno.test("a dropped connection: reconnect, resend the unflushed writes, data intact", async () => {
  await using s = await setup(16 * MiB);
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    retryDelay: 10,
  });
  const source = new Source(16 * MiB);
  const writer = await target.connect(new AbortController().signal, source);
  // Dies in the middle of the third PUT: the first two (unflushed) are lost with it.
  s.ovirt.faults.dropConnectionAfterBytes = 9 * MiB;
  await upload([writer], source);
  await writer[Symbol.asyncDispose]();
  const stats = s.ovirt.stats();
  assert(stats.droppedBytes > 0, "the fault fired and lost writes");
  assert(source.reads > 0, "the lost writes were read again from the source");
  assertEquals(stats.connections, 2);
  assertImage(await finish(s), source);
});

Deno.test("a 500 loses the unflushed writes: they are resent, data intact", async () => {
  await using s = await setup(16 * MiB);
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    retryDelay: 10,
  });
  const source = new Source(16 * MiB);
  const writer = await target.connect(new AbortController().signal, source);
  await writer.write(0, source.chunk(0, 4 * MiB));
  s.ovirt.faults.fail500Once = true;
  await upload([writer], source);
  await writer[Symbol.asyncDispose]();
  assert(s.ovirt.stats().droppedBytes > 0, "the 500 lost writes");
  assert(source.reads > 0, "they were read again");
  assertImage(await finish(s), source);
});

Deno.test("flushing every N bytes bounds what a lost connection costs", async () => {
  await using s = await setup(16 * MiB);
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    flushEvery: 4 * MiB,
    retryDelay: 10,
  });
  const source = new Source(16 * MiB);
  const writer = await target.connect(new AbortController().signal, source);
  // 12 MiB of PUTs: the drop comes in the last one, after the flush that followed 4+2+4 MiB.
  s.ovirt.faults.dropConnectionAfterBytes = 11 * MiB;
  await upload([writer], source);
  await writer[Symbol.asyncDispose]();
  assert(s.ovirt.stats().droppedBytes > 0, "the fault fired");
  // Everything before the dropped PUT was flushed: nothing had to be read again.
  assertEquals(source.reads, 0);
  assert(s.ovirt.stats().flushRequests >= 3);
  assertImage(await finish(s), source);
});

Deno.test("a refused ticket (403) fails at once, without retrying", async () => {
  await using s = await setup(16 * MiB);
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    retryDelay: 5000,
  });
  const source = new Source(16 * MiB);
  const writer = await target.connect(new AbortController().signal, source);
  await s.engine.cancelTransfer(s.transferId);
  // Let the engine take the ticket away.
  let t = await s.engine.transfer(s.transferId);
  while (t && !t.phase?.startsWith("finished")) {
    await sleep(50);
    t = await s.engine.transfer(s.transferId);
  }
  const started = Date.now();
  const e = await assertRejects(() => writer.write(0, source.chunk(0, MiB)));
  assert(Date.now() - started < 2000, "no retries");
  assertStringIncludes(e.message, "Cannot upload disk 1");
  assertStringIncludes(e.message, "ticket was refused");
  assert(!e.message.includes(s.transferUrl.split("/").pop()!), "the ticket is not in messages");
  await writer[Symbol.asyncDispose]();
});

Deno.test("an idle writer and an idle transfer are kept alive", async () => {
  await using s = await setup(16 * MiB, { ticketInactivityTimeout: 2 });
  await using target = await openImageio(s.transferUrl, {
    name: "disk 1",
    caCerts: s.caCerts,
    readsZeroes: false,
    inactivityTimeout: 2,
  });
  const source = new Source(16 * MiB);
  // No writer for 3 s: the target itself touches the ticket.
  await sleep(3000);
  assertEquals((await s.engine.transfer(s.transferId))?.phase, "transferring");
  const writer = await target.connect(new AbortController().signal, source);
  await writer.write(0, source.chunk(0, MiB));
  // An idle connection for 3 s: it gets keep-alives and stays open.
  await sleep(3000);
  assertEquals((await s.engine.transfer(s.transferId))?.phase, "transferring");
  await upload([writer], source);
  await writer[Symbol.asyncDispose]();
  assertEquals(source.reads, 0, "nothing was lost");
  assertImage(await finish(s), source);
});
