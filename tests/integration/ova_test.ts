/**
 * End to end: `-i ova` with OVAs built like VMware's exports (streamOptimized VMDKs, an OVF in
 * VMware's shape, a manifest), as a tar file and as an unpacked directory, with a compressed
 * disk, and broken in the ways a real one can be. Every run is a real vmshift with real
 * qemu-nbd and nbdkit servers; afterwards nothing may be left behind and the OVA must be
 * untouched.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeTestImage } from "../../scripts/make_test_image.ts";
import {
  fixtureMac,
  makeOvaFixture,
  type OvaFixtureOptions,
} from "../../scripts/make_ova_fixture.ts";
import { assertSameContent, Sandbox, sha256 } from "./_harness.ts";

const MiB = 1024 * 1024;

/** A sparse raw image with data runs, zero regions and holes. */
async function rawImage(sb: Sandbox, name: string, size: number, data: number, seed: number) {
  const path = join(sb.work, name);
  await makeTestImage(path, { format: "raw", virtualSize: size, dataBytes: data, seed });
  return path;
}

async function fingerprint(path: string): Promise<[string, number]> {
  return [await sha256(path), (await Deno.stat(path)).mtime!.getTime()];
}

function events(stdout: string): Array<Record<string, unknown>> {
  return stdout.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("-i ova: two disks on SCSI and SATA, EFI with secure boot, to -o local: identical, VM from the OVF", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 64 * MiB, 12 * MiB, 1);
  const b = await rawImage(sb, "b.img", 32 * MiB, 4 * MiB, 2);
  const ova = join(sb.work, "web01.ova");
  await makeOvaFixture(ova, {
    disks: [{ image: a, bus: "scsi" }, { image: b, bus: "sata" }],
    vcpus: 4,
    coresPerSocket: 2,
    memoryMiB: 2048,
    firmware: "efi",
    secureBoot: true,
    osType: "debian12_64Guest",
    nics: [
      { network: "VM Network", mac: fixtureMac(0), model: "VmxNet3" },
      { network: "Backup", mac: fixtureMac(1), model: "E1000" },
    ],
    cert: true,
  });
  const before = await fingerprint(ova);

  // --print-source: the VM as the OVF describes it.
  const p = await sb.run(["-i", "ova", ova, "--print-source", "--machine-readable"]);
  assertEquals(p.code, 0, p.stderr);
  const source = events(p.stdout).find((e) => e.type === "result")!.source;
  assertEquals(source, {
    name: "web01",
    memory: 2048 * MiB,
    vcpus: 4,
    cpuTopology: { sockets: 2, cores: 2, threads: 1 },
    firmware: "uefi",
    secureBoot: true,
    guestOs: "debian12_64Guest",
    disks: [
      {
        index: 0,
        source: `${ova}/web01-disk1.vmdk`,
        virtualSize: 64 * MiB,
        sourceFormat: "vmdk",
        bus: "scsi",
      },
      {
        index: 1,
        source: `${ova}/web01-disk2.vmdk`,
        virtualSize: 32 * MiB,
        sourceFormat: "vmdk",
        bus: "sata",
      },
    ],
    nics: [
      { model: "vmxnet3", mac: fixtureMac(0), network: "VM Network" },
      { model: "e1000", mac: fixtureMac(1), network: "Backup" },
    ],
  });

  // The migration.
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  const r = await sb.run(["-i", "ova", ova, "-o", "local", "-os", out, "-v"]);
  assertEquals(r.code, 0, r.stderr);
  assertStringIncludes(r.stderr, `"web01.cert" is a signing certificate`);
  assertStringIncludes(r.stderr, `verifying the SHA256 checksum of "web01-disk2.vmdk"`);
  await assertSameContent(a, join(out, "web01-sda"));
  await assertSameContent(b, join(out, "web01-sdb"));
  const xml = await Deno.readTextFile(join(out, "web01.xml"));
  for (
    const part of [
      "<name>web01</name>",
      `<memory unit='KiB'>${2048 * 1024}</memory>`,
      "<vcpu>4</vcpu>",
      "<topology sockets='2' cores='2' threads='1'/>",
      "<os firmware='efi'>",
      "<feature enabled='yes' name='secure-boot'/>",
      `<source file='${join(out, "web01-sda")}'/>`,
      `<source file='${join(out, "web01-sdb")}'/>`,
      "<source network='VM Network'/>",
      "<source network='Backup'/>",
      `<mac address='${fixtureMac(0)}'/>`,
      `<mac address='${fixtureMac(1)}'/>`,
    ]
  ) {
    assertStringIncludes(xml, part);
  }
  assertEquals(await fingerprint(ova), before, "the OVA was modified");
  await sb.assertNothingLeft();
});

Deno.test("-i ova DIR: an unpacked OVA with a SHA1 manifest and an IDE disk", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 48 * MiB, 6 * MiB, 3);
  const dir = join(sb.work, "exported");
  await makeOvaFixture(dir, {
    name: "db02",
    disks: [{ image: a, bus: "ide" }],
    directory: true,
    checksum: "SHA1",
    nics: [{ network: "DMZ" }],
  });
  const disk = join(dir, "db02-disk1.vmdk");
  const before = await fingerprint(disk);
  const r = await sb.run(["-i", "ova", dir, "-o", "local", "-os", sb.work, "--machine-readable"]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameContent(a, join(sb.work, "db02-sda"));
  const xml = await Deno.readTextFile(join(sb.work, "db02.xml"));
  assertStringIncludes(xml, "<source network='DMZ'/>");
  assert(!xml.includes("<os firmware='efi'>"), "a BIOS VM got EFI");
  assertEquals(await fingerprint(disk), before, "the disk was modified");
  await sb.assertNothingLeft();
});

Deno.test("-i ova: a gzip-compressed disk is decompressed on the fly", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 32 * MiB, 4 * MiB, 4);
  const b = await rawImage(sb, "b.img", 32 * MiB, 4 * MiB, 5);
  const ova = join(sb.work, "gz.ova");
  await makeOvaFixture(ova, { disks: [{ image: a }, { image: b, gzip: true }] });
  const before = await fingerprint(ova);
  const r = await sb.run(["-i", "ova", ova, "-o", "local", "-os", sb.work]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameContent(a, join(sb.work, "gz-sda"));
  await assertSameContent(b, join(sb.work, "gz-sdb"));
  assertEquals(await fingerprint(ova), before, "the OVA was modified");
  await sb.assertNothingLeft();
});

/** Broken packages: what to build (or do to it) and what the error must say. */
const BROKEN: Array<{
  name: string;
  fixture?: Partial<OvaFixtureOptions>;
  /** Spoils the built package; returns the path to give vmshift. */
  spoil?: (path: string, sb: Sandbox) => Promise<string>;
  message: (path: string) => string;
}> = [
  {
    name: "a disk that does not match the manifest",
    fixture: { corruptManifest: true },
    message: (p) =>
      `Cannot read "${p}": "bad-disk1.vmdk" does not match its SHA256 checksum in the manifest`,
  },
  {
    name: "a tar without the disk the OVF names",
    fixture: { missingDisk: 0 },
    message: (p) => `Cannot read "${p}": "bad-disk1.vmdk" ("Hard disk 1") is not in the OVA`,
  },
  {
    name: "a truncated tar",
    spoil: async (p) => {
      await Deno.truncate(p, (await Deno.stat(p)).size - 100_000);
      return p;
    },
    message: (p) => `Cannot read "${p}": truncated tar archive: "bad-disk1.vmdk" needs`,
  },
  {
    name: "a malformed OVF (consistent with its manifest)",
    fixture: { editOvf: (xml) => xml.replace("</VirtualSystem>", "") },
    message: (p) =>
      `Cannot read "${p}": invalid OVF descriptor "bad.ovf": line 116, column 1: end tag "</Envelope>" does not match "<VirtualSystem>" (line 17)`,
  },
  {
    name: "an OVF whose capacity is not the disk's",
    fixture: { editOvf: (xml) => xml.replace(`ovf:capacity="16"`, `ovf:capacity="17"`) },
    message: (p) =>
      `Cannot read "${p}": "bad-disk1.vmdk" holds a 16777216-byte disk, but the OVF gives it a capacity of 17825792 bytes`,
  },
  {
    name: "an OVF naming a file outside the package",
    fixture: {
      directory: true,
      editOvf: (xml) => xml.replace(`ovf:href="bad-disk1.vmdk"`, `ovf:href="../a.img"`),
    },
    message: (p) => `Cannot read "${p}": the OVF refers to "../a.img", which is outside the OVA`,
  },
  {
    name: "a file that is not a tar archive",
    spoil: async (p) => {
      await Deno.writeTextFile(p, "not an OVA\n".repeat(100));
      return p;
    },
    message: (p) => `Cannot read "${p}": not a tar archive`,
  },
  {
    name: "a gzip-compressed OVA",
    spoil: async (p, sb) => {
      const gz = join(sb.work, "bad.ova.gz");
      const src = await Deno.open(p);
      const dst = await Deno.open(gz, { write: true, create: true });
      await src.readable.pipeThrough(new CompressionStream("gzip")).pipeTo(dst.writable);
      return gz;
    },
    message: (p) => `Cannot read "${p}": it is compressed (gzip), not a tar archive`,
  },
];

Deno.test("-i ova refuses broken packages with a clear error and leaves nothing behind", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 16 * MiB, 2 * MiB, 6);
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  for (const t of BROKEN) {
    let path = join(sb.work, t.fixture?.directory ? "bad" : "bad.ova");
    await makeOvaFixture(path, { disks: [{ image: a }], ...t.fixture });
    if (t.spoil) path = await t.spoil(path, sb);
    const r = await sb.run(["-i", "ova", path, "-o", "local", "-os", out]);
    assertEquals(r.code, 1, `${t.name}: ${r.stderr}`);
    assertStringIncludes(r.stderr, t.message(path));
    assertEquals(await Array.fromAsync(Deno.readDir(out)), [], `${t.name}: output left`);
    await sb.assertNothingLeft();
    await Deno.remove(path, { recursive: true });
  }
});

Deno.test("-i ova takes exactly one OVA and no -if", async () => {
  await using sb = await Sandbox.create();
  const r = await sb.run(["-i", "ova", "a.ova", "b.ova", "-o", "null"]);
  assertEquals(r.code, 2);
  assertStringIncludes(r.stderr, `-i ova takes one OVA, got 2: "a.ova" "b.ova"`);
  const f = await sb.run(["-i", "ova", "-if", "vmdk", "a.ova", "-o", "null"]);
  assertEquals(f.code, 2);
  assertStringIncludes(f.stderr, "-i ova does not take -if");
  await sb.assertNothingLeft();
});
