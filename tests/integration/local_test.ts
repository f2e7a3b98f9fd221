/**
 * End to end: `-i disk` to `-o local`, `-o qemu` and `-o null`, with real qemu-nbd servers and
 * generated images holding data runs, zeroed-but-allocated regions and holes.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../_assert.ts";
import {
  makeTestImage,
  type TestImage,
  type TestImageFormat,
} from "../../scripts/make_test_image.ts";
import { allocated, assertSameContent, Sandbox, sha256 } from "./_harness.ts";

const MiB = 1024 * 1024;

async function source(
  sb: Sandbox,
  format: TestImageFormat,
  virtualSize = 256 * MiB,
  dataBytes = 24 * MiB,
): Promise<{ path: string; image: TestImage; sum: string; mtime: number }> {
  const path = join(sb.work, `guest.${format === "raw" ? "img" : format}`);
  const image = await makeTestImage(path, { format, virtualSize, dataBytes, seed: 7 });
  return { path, image, sum: await sha256(path), mtime: (await Deno.stat(path)).mtime!.getTime() };
}

/**
 * Only data travels as bytes: at least all of the data, and at most the qcow2 clusters that
 * hold it (each data run can start and end inside a 64 KiB cluster).
 */
function assertDataOnly(sent: number, image: TestImage): void {
  const runs = image.layout.filter((r) => r.kind === "data").length;
  assert(
    sent >= image.dataBytes && sent <= image.dataBytes + runs * 2 * 64 * 1024,
    `${sent} bytes sent for ${image.dataBytes} bytes of data in ${runs} runs`,
  );
}

async function assertSourceUntouched(
  src: { path: string; sum: string; mtime: number },
): Promise<void> {
  assertEquals(await sha256(src.path), src.sum, "the source was modified");
  assertEquals((await Deno.stat(src.path)).mtime!.getTime(), src.mtime, "the source's mtime moved");
}

for (
  const [inFormat, outFormat] of [["qcow2", "raw"], ["qcow2", "qcow2"], ["raw", "raw"], [
    "vmdk",
    "qcow2",
  ]] as const
) {
  Deno.test(`-i disk ${inFormat} -o local -of ${outFormat}: identical, sparse, source untouched`, async () => {
    await using sb = await Sandbox.create();
    const src = await source(sb, inFormat);
    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    const local = ["-o", "local", "-os", out, "-of", outFormat];
    const r = await sb.run(["-i", "disk", src.path, ...local, "-v"]);
    assertEquals(r.code, 0, r.stderr);
    // raw and qcow2 sources are read in place (a memory map of the file), vmdk over NBD.
    const inPlace = Number(/\((\d+) read in place\)/.exec(r.stderr)?.[1]);
    if (inFormat === "vmdk") assertEquals(inPlace, 0);
    else assert(inPlace >= src.image.dataBytes, `${inPlace} bytes read in place`);
    const disk = join(out, "guest-sda");
    await assertSameContent(src.path, disk);
    const info = JSON.parse(
      new TextDecoder().decode(
        (await new Deno.Command("qemu-img", { args: ["info", "--output=json", disk] }).output())
          .stdout,
      ),
    );
    assertEquals(info.format, outFormat);
    if (outFormat === "qcow2") {
      // Written in process by vmshift's own qcow2 writer: qemu must find it clean.
      const check = await new Deno.Command("qemu-img", { args: ["check", "-f", "qcow2", disk] })
        .output();
      assertEquals(check.code, 0, new TextDecoder().decode(check.stdout));
    }
    assertEquals(info["virtual-size"], src.image.virtualSize);
    // Zeroes and holes are never written as data: the output holds the data and little more.
    // Extents come at the source's granularity (64 KiB qcow2 clusters, 4 KiB file system
    // blocks), so each data run may carry a partial unit at either end; a qcow2 output adds its
    // own clusters and metadata.
    const runs = src.image.layout.filter((r) => r.kind === "data").length;
    const unit = inFormat === "raw" ? 4096 : 64 * 1024;
    const slack = runs * 2 * unit + (outFormat === "raw" ? 16 * 4096 : 2 * MiB + runs * 128 * 1024);
    const got = await allocated(disk);
    assert(
      got <= src.image.dataBytes + slack,
      `output allocates ${got} bytes for ${src.image.dataBytes} bytes of data`,
    );
    const xml = await Deno.readTextFile(join(out, "guest.xml"));
    assertStringIncludes(xml, `<source file='${disk}'/>`);
    assertStringIncludes(xml, "bus='virtio'");
    assertEquals((await Array.fromAsync(Deno.readDir(out))).map((e) => e.name).sort(), [
      "guest-sda",
      "guest.xml",
    ]);
    await assertSourceUntouched(src);
    await sb.assertNothingLeft();
  });
}

Deno.test("-oa preallocated allocates the whole disk and keeps the data identical", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "qcow2", 64 * MiB, 8 * MiB);
  const r = await sb.run([
    "-i",
    "disk",
    src.path,
    "-o",
    "local",
    "-os",
    sb.work,
    "-oa",
    "preallocated",
    "-on",
    "pre",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const disk = join(sb.work, "pre-sda");
  await assertSameContent(src.path, disk);
  assert(await allocated(disk) >= 64 * MiB, "a preallocated disk is fully allocated");
  await sb.assertNothingLeft();
});

Deno.test("-o qemu writes the disks and an executable boot script", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "qcow2", 64 * MiB, 8 * MiB);
  const r = await sb.run(["-i", "disk", src.path, "-o", "qemu", "-os", sb.work, "-on", "vm1"]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameContent(src.path, join(sb.work, "vm1-sda"));
  const script = join(sb.work, "vm1.sh");
  assert(((await Deno.stat(script)).mode! & 0o111) !== 0, "the script is executable");
  const text = await Deno.readTextFile(script);
  assertStringIncludes(text, "virtio-blk-pci");
  assertStringIncludes(text, join(sb.work, "vm1-sda"));
  await sb.assertNothingLeft();
});

Deno.test("-o null reads everything and writes nothing", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "qcow2", 64 * MiB, 8 * MiB);
  const before = (await Array.fromAsync(Deno.readDir(sb.work))).length;
  const r = await sb.run(["-i", "disk", src.path, "-o", "null", "--machine-readable"]);
  assertEquals(r.code, 0, r.stderr);
  const result = r.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((o) =>
    o.type === "result"
  );
  assertDataOnly(result.disks[0].data_bytes, src.image);
  assertEquals((await Array.fromAsync(Deno.readDir(sb.work))).length, before);
  await assertSourceUntouched(src);
  await sb.assertNothingLeft();
});

Deno.test("--machine-readable prints one JSON object per line, with progress", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "qcow2", 64 * MiB, 8 * MiB);
  const r = await sb.run([
    "-i",
    "disk",
    src.path,
    "-o",
    "local",
    "-os",
    sb.work,
    "--machine-readable",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const types = new Set(events.map((e) => e.type));
  for (const t of ["message", "progress", "result"]) assert(types.has(t), `no ${t} event`);
  const last = events.filter((e) => e.type === "progress").at(-1);
  assertEquals(last.percent, 100);
  assertEquals(last.bytes, 64 * MiB);
  const result = events.find((e) => e.type === "result");
  assertEquals(result.created.length, 2);
  assertDataOnly(result.disks[0].data_bytes, src.image);
});

Deno.test("human output names the stages; -q prints nothing", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "raw", 32 * MiB, 4 * MiB);
  const r = await sb.run(["-i", "disk", src.path, "-o", "null"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stdout, /\[\s+\d+\.\d\] Setting up the source: -i disk /);
  assertMatch(r.stdout, /Copying disk 1\/1/);
  const q = await sb.run(["-q", "-i", "disk", src.path, "-o", "null"]);
  assertEquals([q.code, q.stdout, q.stderr], [0, "", ""]);
});

Deno.test("--print-source shows the VM and copies nothing", async () => {
  await using sb = await Sandbox.create();
  const src = await source(sb, "qcow2", 32 * MiB, 4 * MiB);
  const r = await sb.run(["-i", "disk", src.path, "--print-source"]);
  assertEquals(r.code, 0, r.stderr);
  assertStringIncludes(r.stdout, "source name: guest");
  assertStringIncludes(r.stdout, `0 [qcow2] ${src.path}`);
  const j = await sb.run(["-i", "disk", src.path, "--print-source", "--machine-readable"]);
  const result = j.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((o) =>
    o.type === "result"
  );
  assertEquals(result.source.disks[0].virtualSize, 32 * MiB);
  await sb.assertNothingLeft();
});
