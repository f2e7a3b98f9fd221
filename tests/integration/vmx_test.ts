/**
 * End to end: `-i vmx` with VM directories built like VMware's (a VMX in ESXi's or
 * Workstation's shape, VMDKs of every subformat qemu-img writes, a CD-ROM, NICs, snapshots),
 * whole and broken in the ways a real one can be. Every run is a real vmshift with real
 * qemu-nbd servers; afterwards nothing may be left behind and the VM's files must be untouched.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeTestImage } from "../../scripts/make_test_image.ts";
import {
  FIXTURE_GENID,
  makeVmwareFixture,
  type VmwareFixture,
  type VmwareFixtureOptions,
  vmwareMac,
} from "../../scripts/make_vmware_fixture.ts";
import { assertSameContent, MAIN, type RunResult, Sandbox, sha256 } from "./_harness.ts";

const MiB = 1024 * 1024;
const SNAPSHOT = "the VM has snapshots; consolidate (delete) all snapshots in VMware first";

/** A sparse raw image with data runs, zero regions and holes. */
async function rawImage(sb: Sandbox, name: string, size: number, data: number, seed: number) {
  const path = join(sb.work, name);
  await makeTestImage(path, { format: "raw", virtualSize: size, dataBytes: data, seed });
  return path;
}

/** Hashing a 2 GiB sparse flat extent takes seconds; larger files are compared by times. */
const HASH_LIMIT = 256 * MiB;

/**
 * Every file of a directory with its SHA-256 (up to {@linkcode HASH_LIMIT}), size, mtime and
 * ctime. Any write, truncation or change of mode moves the ctime, and nothing can set it back.
 */
async function fingerprint(dir: string): Promise<Array<[string, string, number, number, number]>> {
  const out: Array<[string, string, number, number, number]> = [];
  const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
  for (const name of names) {
    const p = join(dir, name);
    const st = await Deno.stat(p);
    const sum = st.size <= HASH_LIMIT ? await sha256(p) : "(not hashed)";
    out.push([name, sum, st.size, st.mtime!.getTime(), st.ctime!.getTime()]);
  }
  return out;
}

function events(stdout: string): Array<Record<string, unknown>> {
  return stdout.trim().split("\n").map((l) => JSON.parse(l));
}

async function entries(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("-i vmx: a disk of every VMDK subformat, EFI with secure boot, to -o local: identical, VM from the VMX", async () => {
  await using sb = await Sandbox.create();
  // Two disks above 2 GiB (sparse), so that the twoGbMaxExtent formats have two extents.
  const a = await rawImage(sb, "a.img", 64 * MiB, 8 * MiB, 1);
  const b = await rawImage(sb, "b.img", 2112 * MiB, 8 * MiB, 2);
  const c = await rawImage(sb, "c.img", 32 * MiB, 4 * MiB, 3);
  const d = await rawImage(sb, "d.img", 32 * MiB, 4 * MiB, 4);
  const e = await rawImage(sb, "e.img", 2112 * MiB, 4 * MiB, 5);
  const vmDir = join(sb.work, "web01");
  const fx = await makeVmwareFixture(vmDir, {
    name: "web01",
    disks: [
      { image: a, subformat: "monolithicSparse", bus: "scsi" },
      { image: b, subformat: "twoGbMaxExtentSparse", bus: "scsi" },
      { image: c, subformat: "monolithicFlat", bus: "sata" },
      { image: d, subformat: "streamOptimized", bus: "nvme" },
      { image: e, subformat: "twoGbMaxExtentFlat", bus: "ide" },
    ],
    vcpus: 4,
    coresPerSocket: 2,
    memoryMiB: 3072,
    firmware: "efi",
    secureBoot: true,
    guestOS: "debian12-64",
    nics: [
      { network: "VM Network", model: "vmxnet3" },
      { network: "Backup", model: "e1000e", addressType: "static" },
    ],
  });
  assertEquals(fx.disks[1]!.files.length, 3, "twoGbMaxExtentSparse: descriptor and two extents");
  assertEquals(fx.disks[4]!.files.length, 3, "twoGbMaxExtentFlat: descriptor and two extents");
  const before = await fingerprint(vmDir);

  // --print-source: the VM as the VMX describes it; the CD-ROM is reported, not copied.
  const p = await sb.run(["-i", "vmx", fx.vmx, "--print-source", "--machine-readable"]);
  assertEquals(p.code, 0, p.stderr);
  const ev = events(p.stdout);
  const source = ev.find((x) => x.type === "result")!.source;
  const disk = (i: number, bus: string) => ({
    index: i,
    source: fx.disks[[0, 1, 3, 2, 4][i]!]!.path,
    virtualSize: fx.disks[[0, 1, 3, 2, 4][i]!]!.virtualSize,
    bus,
    sourceFormat: "vmdk",
  });
  assertEquals(source, {
    name: "web01",
    memory: 3072 * MiB,
    vcpus: 4,
    firmware: "uefi",
    disks: [disk(0, "scsi"), disk(1, "scsi"), disk(2, "nvme"), disk(3, "sata"), disk(4, "ide")],
    nics: [
      { mac: vmwareMac(0), network: "VM Network", model: "vmxnet3" },
      { mac: vmwareMac(1), network: "Backup", model: "e1000e" },
    ],
    cpuTopology: { sockets: 2, cores: 2, threads: 1 },
    secureBoot: true,
    guestOs: "debian12-64",
    genid: FIXTURE_GENID.uuid,
  });
  assertEquals(
    ev.filter((x) => x.type === "warning").map((x) => x.message),
    [
      'CD-ROM sata0:1 ("/vmfs/volumes/64f1c2a7-1b2c3d4e-5f60-a0b1c2d3e4f5/iso/debian-12.iso") ' +
      "is skipped: vmshift copies hard disks only",
    ],
  );
  const h = await sb.run(["-i", "vmx", fx.vmx, "--print-source"]);
  assertEquals(h.code, 0, h.stderr);
  for (
    const line of [
      "    source name: web01",
      `       VM genid: ${FIXTURE_GENID.uuid}`,
      "       guest OS: debian12-64",
      `         memory: ${3072 * MiB} (bytes)`,
      "       nr vCPUs: 4",
      "   CPU topology: sockets: 2 cores/socket: 2 threads/core: 1",
      "       firmware: uefi (secure boot)",
      `\t0 [vmdk] ${fx.disks[0]!.path} (64.0 MiB) [scsi]`,
      `\t4 [vmdk] ${fx.disks[4]!.path} (2.1 GiB) [ide]`,
      `\tNetwork "Backup" mac: ${vmwareMac(1)} [e1000e]`,
    ]
  ) assertStringIncludes(h.stdout, line);
  assertStringIncludes(h.stderr, "vmshift: warning: CD-ROM sata0:1 (");

  // The migration.
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  const r = await sb.run(["-i", "vmx", fx.vmx, "-o", "local", "-os", out]);
  assertEquals(r.code, 0, r.stderr);
  const images = [a, b, d, c, e];
  for (const [i, img] of images.entries()) {
    await assertSameContent(img, join(out, `web01-sd${"abcde"[i]}`));
  }
  const xml = await Deno.readTextFile(join(out, "web01.xml"));
  for (
    const part of [
      "<name>web01</name>",
      `<memory unit='KiB'>${3072 * 1024}</memory>`,
      "<vcpu>4</vcpu>",
      "<topology sockets='2' cores='2' threads='1'/>",
      "<os firmware='efi'>",
      "<feature enabled='yes' name='secure-boot'/>",
      "<source network='VM Network'/>",
      "<source network='Backup'/>",
      `<mac address='${vmwareMac(0)}'/>`,
      `<mac address='${vmwareMac(1)}'/>`,
    ]
  ) assertStringIncludes(xml, part);
  assertEquals(xml.match(/<disk type='file' device='disk'>/g)?.length, 5, xml);
  assertEquals(await entries(out), [
    "web01-sda",
    "web01-sdb",
    "web01-sdc",
    "web01-sdd",
    "web01-sde",
    "web01.xml",
  ]);
  assertEquals(await fingerprint(vmDir), before, "the VM's files were modified");
  await sb.assertNothingLeft();
});

Deno.test("-i vmx: a Workstation VM, BIOS, IDE disk, NAT and custom networks", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 48 * MiB, 6 * MiB, 6);
  const vmDir = join(sb.work, "Ubuntu 64-bit");
  const fx = await makeVmwareFixture(vmDir, {
    name: "Ubuntu 64-bit",
    platform: "workstation",
    disks: [{ image: a, bus: "ide" }],
    vcpus: 1,
    memoryMiB: 1024,
    guestOS: "ubuntu-64",
    nics: [{ network: "vmnet8", model: "e1000" }, { network: "vmnet2" }],
    genid: false,
  });
  const before = await fingerprint(vmDir);
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  const r = await sb.run(["-i", "vmx", fx.vmx, "-o", "local", "-os", out, "-on", "ubuntu"]);
  assertEquals(r.code, 0, r.stderr);
  assertStringIncludes(r.stderr, 'CD-ROM ide1:0 ("debian-12.iso") is skipped');
  await assertSameContent(a, join(out, "ubuntu-sda"));
  const xml = await Deno.readTextFile(join(out, "ubuntu.xml"));
  assert(!xml.includes("firmware='efi'"), xml);
  for (
    const part of [
      `<memory unit='KiB'>${1024 * 1024}</memory>`,
      "<vcpu>1</vcpu>",
      "<source network='vmnet8'/>",
      "<source network='vmnet2'/>",
      `<mac address='${vmwareMac(0, "00:0c:29")}'/>`,
      `<mac address='${vmwareMac(1, "00:0c:29")}'/>`,
    ]
  ) assertStringIncludes(xml, part);
  assertEquals(await fingerprint(vmDir), before, "the VM's files were modified");
  await sb.assertNothingLeft();
});

Deno.test("-i vmx: ESXi thin disks (createType vmfs), one on another datastore by absolute path", async () => {
  await using sb = await Sandbox.create();
  const a = await rawImage(sb, "a.img", 32 * MiB, 4 * MiB, 8);
  const b = await rawImage(sb, "b.img", 16 * MiB, 2 * MiB, 9);
  const vmDir = join(sb.work, "ds1", "db02");
  const fx = await makeVmwareFixture(vmDir, {
    name: "db02",
    disks: [{ image: a, subformat: "vmfs" }, { image: b, subformat: "vmfs" }],
  });
  // The second disk lives on another datastore, named by its absolute path.
  const ds2 = join(sb.work, "ds2", "db02");
  await Deno.mkdir(ds2, { recursive: true });
  for (const f of fx.disks[1]!.files) await Deno.rename(f, join(ds2, f.slice(vmDir.length + 1)));
  const moved = join(ds2, "db02_1.vmdk");
  await Deno.writeTextFile(
    fx.vmx,
    fx.vmxText.replace('scsi0:1.fileName = "db02_1.vmdk"', `scsi0:1.fileName = "${moved}"`),
  );
  assertStringIncludes(await Deno.readTextFile(fx.disks[0]!.path), 'createType="vmfs"');
  const before = [await fingerprint(vmDir), await fingerprint(ds2)];

  const p = await sb.run(["-i", "vmx", fx.vmx, "--print-source", "--machine-readable"]);
  assertEquals(p.code, 0, p.stderr);
  const source = events(p.stdout).find((x) => x.type === "result")!.source as {
    disks: Array<{ source: string; virtualSize: number }>;
  };
  assertEquals(source.disks.map((d) => [d.source, d.virtualSize]), [
    [fx.disks[0]!.path, 32 * MiB],
    [moved, 16 * MiB],
  ]);
  const r = await sb.run(["-i", "vmx", fx.vmx, "-o", "local", "-os", sb.work]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameContent(a, join(sb.work, "db02-sda"));
  await assertSameContent(b, join(sb.work, "db02-sdb"));
  assertEquals([await fingerprint(vmDir), await fingerprint(ds2)], before);
  await sb.assertNothingLeft();
});

/** Runs vmshift with the capabilities that let root read any file dropped, so that file
 * permissions apply to it as to any user. */
async function runWithoutDacOverride(sb: Sandbox, args: string[]): Promise<RunResult> {
  const drop = "-dac_override,-dac_read_search";
  const root = Deno.uid() === 0;
  const argv = [
    ...(root ? ["setpriv", `--bounding-set=${drop}`, `--inh-caps=${drop}`, "--"] : []),
    Deno.execPath(),
    "run",
    "-A",
    MAIN,
    ...args,
    "--no-convert",
  ];
  const out = await new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env: { TMPDIR: sb.tmp, NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("-i vmx, broken: each fault gives a clear error, exit 1, nothing left, the VM untouched", async () => {
  await using sb = await Sandbox.create();
  const img = await rawImage(sb, "a.img", 16 * MiB, 1 * MiB, 7);
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  let n = 0;
  const vm = async (
    options: Partial<VmwareFixtureOptions> = {},
    subformat: "monolithicFlat" | "monolithicSparse" = "monolithicFlat",
  ): Promise<VmwareFixture> =>
    await makeVmwareFixture(join(sb.work, `vm${n++}`), {
      disks: [{ image: img, subformat }],
      ...options,
    });

  const cases: Array<{
    what: string;
    make: () => Promise<{ fx: VmwareFixture; message: (fx: VmwareFixture) => string }>;
    run?: typeof runWithoutDacOverride;
  }> = [
    {
      what: "a malformed line",
      make: async () => {
        const fx = await vm();
        const lines = fx.vmxText.split("\n");
        lines.splice(11, 0, "sched.mem.pshare.enable TRUE");
        await Deno.writeTextFile(fx.vmx, lines.join("\n"));
        return {
          fx,
          message: (f) => `Cannot parse "${f.vmx}" line 12: expected KEY = "VALUE" (no "=")`,
        };
      },
    },
    {
      what: "a missing descriptor",
      make: async () => {
        const fx = await vm();
        await Deno.remove(fx.disks[0]!.path);
        return { fx, message: (f) => `Cannot read "${f.disks[0]!.path}": no such file` };
      },
    },
    {
      what: "a missing extent",
      make: async () => {
        const fx = await vm();
        await Deno.remove(fx.disks[0]!.files[1]!);
        return {
          fx,
          message: (f) =>
            `Cannot read "${f.disks[0]!.files[1]}": extent 1 of "${
              f.disks[0]!.path
            }" (descriptor line 8): no such file`,
        };
      },
    },
    {
      what: "a snapshot",
      make: async () => {
        const fx = await makeVmwareFixture(join(sb.work, `vm${n++}`), {
          disks: [{ image: img, snapshot: true }],
        });
        return { fx, message: (f) => `Cannot read "${f.disks[0]!.path}": ${SNAPSHOT}` };
      },
    },
    {
      what: "a truncated flat extent",
      make: async () => {
        const fx = await vm();
        await Deno.truncate(fx.disks[0]!.files[1]!, 8 * MiB);
        return {
          fx,
          message: (f) =>
            `Cannot read "${f.disks[0]!.files[1]}": the file is truncated: it holds ${
              8 * MiB
            } bytes, but "${f.disks[0]!.path}" says it holds ${16 * MiB}`,
        };
      },
    },
    {
      what: "a truncated sparse disk",
      make: async () => {
        const fx = await vm({}, "monolithicSparse");
        const size = (await Deno.stat(fx.disks[0]!.path)).size;
        await Deno.truncate(fx.disks[0]!.path, size - 4096);
        return {
          fx,
          message: (f) =>
            `Cannot read "${f.disks[0]!.path}": the file is truncated: its grain tables`,
        };
      },
    },
    {
      what: "an unreadable extent",
      make: async () => {
        const fx = await vm();
        await Deno.chmod(fx.disks[0]!.files[1]!, 0o000);
        return {
          fx,
          message: (f) =>
            `Cannot read "${f.disks[0]!.files[1]}": extent 1 of "${
              f.disks[0]!.path
            }" (descriptor line 8): permission denied`,
        };
      },
      run: runWithoutDacOverride,
    },
    {
      what: "an unreadable VMX",
      make: async () => {
        const fx = await vm();
        await Deno.chmod(fx.vmx, 0o200);
        return { fx, message: (f) => `Cannot read "${f.vmx}": permission denied` };
      },
      run: runWithoutDacOverride,
    },
    {
      what: "no disks",
      make: async () => {
        const fx = await vm();
        await Deno.writeTextFile(fx.vmx, 'scsi0:0.present = "FALSE"\n', { append: true });
        return { fx, message: (f) => `"${f.vmx}" has no disks` };
      },
    },
    {
      what: "a missing VMX",
      make: async () => {
        const fx = await vm();
        await Deno.remove(fx.vmx);
        return { fx, message: (f) => `Cannot read "${f.vmx}": no such file` };
      },
    },
  ];
  for (const c of cases) {
    const { fx, message } = await c.make();
    const before = await fingerprint(fx.dir);
    const r = await (c.run ?? ((s, a) => s.run(a)))(sb, [
      "-i",
      "vmx",
      fx.vmx,
      "-o",
      "local",
      "-os",
      out,
    ]);
    assertEquals(r.code, 1, `${c.what}: ${r.stderr}`);
    assertStringIncludes(r.stderr, `vmshift: error: ${message(fx)}`);
    assertEquals(await entries(out), [], `${c.what}: output left behind`);
    assertEquals(await fingerprint(fx.dir), before, `${c.what}: the VM's files were modified`);
    await sb.assertNothingLeft();
    // Let the sandbox remove the files again.
    for (const f of fx.files) await Deno.chmod(f, 0o644).catch(() => {});
  }
});

Deno.test("-i vmx usage errors exit 2 before anything is read", async () => {
  await using sb = await Sandbox.create();
  const cases: Array<[string[], string]> = [
    [["-i", "vmx", "-o", "null"], "-i vmx needs the VMX file"],
    [["-i", "vmx", "a.vmx", "b.vmx", "-o", "null"], "-i vmx takes one VMX file, got 2"],
    [
      ["-i", "vmx", "-it", "ssh", "g.vmx", "-o", "null"],
      "-i vmx -it ssh needs the VMX as an ssh:// URI",
    ],
    [["-i", "vmx", "-it", "vddk", "g.vmx", "-o", "null"], "-i vmx cannot use -it vddk"],
    [["-i", "vmx", "-if", "vmdk", "g.vmx", "-o", "null"], "-i vmx does not take -if"],
    [["-i", "vmx", "-ic", "esx://h", "g.vmx", "-o", "null"], "-i vmx does not take -ic"],
    [["-i", "vmx", "-io", "x=y", "g.vmx", "-o", "null"], "-i vmx takes no -io options"],
  ];
  for (const [args, message] of cases) {
    const r = await sb.run(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, message);
  }
  await sb.assertNothingLeft();
});
