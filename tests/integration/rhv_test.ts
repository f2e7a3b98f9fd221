/**
 * `-o rhv` end to end, against the oVirt test servers: vmshift runs as a user runs it, the
 * guest arrives identical as raw and as qcow2, zero regions cost no bytes, the VM is created
 * from an OVF naming its disks; every failure gives a clear error, a non-zero exit, and leaves
 * nothing behind, on the engine (no disk, no transfer in progress, no VM) or locally.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../_assert.ts";
import { makeTestImage, type TestImage } from "../../scripts/make_test_image.ts";
import { makeOvaFixture } from "../../scripts/make_ova_fixture.ts";
import { parseOvf } from "../servers/_ovf.ts";
import { makeCertificate, type Ovirt, type OvirtOptions, startOvirt } from "../servers/mod.ts";
import { assertSameContent, processesMentioning, readUntil, Sandbox } from "./_harness.ts";

const MiB = 1024 * 1024;
/** Bytes a copy may send beyond the data: whole sectors around unaligned runs, the tail. */
const SLACK = 2 * MiB;

interface World extends AsyncDisposable {
  sb: Sandbox;
  ovirt: Ovirt;
  source: string;
  image: TestImage;
  /** `-o rhv` and its options, with these servers. */
  args: (...extra: string[]) => string[];
}

async function world(
  options: Partial<OvirtOptions> = {},
  image = { virtualSize: 256 * MiB, dataBytes: 32 * MiB },
): Promise<World> {
  const sb = await Sandbox.create();
  try {
    const source = join(sb.work, "guest.qcow2");
    const made = await makeTestImage(source, { format: "qcow2", ...image });
    const ovirt = await startOvirt({ dir: sb.work, ...options });
    return {
      sb,
      ovirt,
      source,
      image: made,
      args: (...extra) => [
        "-i",
        "disk",
        source,
        "-o",
        "rhv",
        "-oc",
        ovirt.engineUrl,
        "-op",
        ovirt.passwordFile,
        "-os",
        "data",
        "-oo",
        `rhv-cafile=${ovirt.caFile}`,
        "-oo",
        "rhv-cluster=Default",
        ...extra,
      ],
      async [Symbol.asyncDispose]() {
        await ovirt[Symbol.asyncDispose]();
        await sb[Symbol.asyncDispose]();
      },
    };
  } catch (e) {
    await sb[Symbol.asyncDispose]();
    throw e;
  }
}

/** Nothing of the run is left on the engine: no disk, no transfer in progress, no new VM. */
function assertNothingOnEngine(ovirt: Ovirt, existingVms: string[] = []): void {
  assertEquals(ovirt.disks().map((d) => `${d.name} ${d.status}`), [], "disks left on the engine");
  const busy = ovirt.transfers().filter((t) => !t.phase.startsWith("finished"));
  assertEquals(busy.map((t) => t.phase), [], "transfers left in progress");
  assertEquals(ovirt.vms().map((v) => v.name).sort(), [...existingVms].sort(), "VMs");
}

/** The upload worked: one VM whose OVF names the disks, images identical to the source. */
async function assertUploaded(w: World, format: "raw" | "cow", name = "guest"): Promise<void> {
  const disks = w.ovirt.disks();
  assertEquals(disks.length, 1);
  const disk = disks[0]!;
  assertEquals([disk.format, disk.status, disk.provisionedSize], [
    format,
    "ok",
    w.image.virtualSize,
  ]);
  await assertSameContent(w.source, disk.path);
  const vms = w.ovirt.vms().filter((v) => v.name === name);
  assertEquals(vms.length, 1);
  assertEquals(parseOvf(vms[0]!.ovf), { name, diskIds: [disk.id] });
  assertEquals(
    w.ovirt.transfers().map((t) => t.phase),
    ["finished_success"],
  );
}

Deno.test("-o rhv uploads a raw disk: identical, zeroes cost no bytes, VM created", async () => {
  await using w = await world();
  const r = await w.sb.run(w.args());
  assertEquals(r.code, 0, r.stderr);
  await assertUploaded(w, "raw");
  const stats = w.ovirt.stats();
  assert(stats.putBytes >= w.image.dataBytes, `${stats.putBytes} bytes PUT`);
  assert(
    stats.putBytes <= w.image.dataBytes + SLACK,
    `${stats.putBytes} bytes PUT for ${w.image.dataBytes} of data`,
  );
  assertEquals(stats.droppedBytes, 0);
  assert(stats.flushRequests >= 1);
  assertStringIncludes(r.stdout, `VM "guest"`);
  await w.sb.assertNothingLeft();
});

Deno.test("-o rhv on the imageio daemon's host uploads over its local socket", async () => {
  await using w = await world({ unixSocket: true });
  const r = await w.sb.run(w.args("-v"));
  assertEquals(r.code, 0, r.stderr);
  await assertUploaded(w, "raw");
  const stats = w.ovirt.stats();
  // OPTIONS over HTTPS; then the 4 data connections over the socket.
  assertEquals([stats.connections - stats.unixConnections, stats.unixConnections], [1, 4]);
  assert(stats.putBytes <= w.image.dataBytes + SLACK, `${stats.putBytes} bytes PUT`);
  assertStringIncludes(r.stderr + r.stdout, "through its local socket");
  await w.sb.assertNothingLeft();
});

Deno.test("-o rhv on an oVirt host asks for its transfers to be served by that host", async () => {
  await using w = await world({
    hosts: [{ name: "host1", status: "maintenance" }, { name: "host2" }, { name: "host3" }],
  });
  const [host1, host2, host3] = w.ovirt.hosts();
  const vdsmId = join(w.sb.work, "vdsm.id");
  const upload = async (name: string, env: Record<string, string>) => {
    const r = await w.sb.run(w.args("-v", "-on", name), { env });
    assertEquals(r.code, 0, r.stderr);
    const t = w.ovirt.transfers().at(-1)!;
    assertEquals(t.phase, "finished_success");
    return { out: r.stderr + r.stdout, host: t.hostId, asked: t.hostAsked };
  };

  // This machine is host3 (up): its transfers are asked of it.
  await Deno.writeTextFile(vdsmId, `${host3!.hwId}\n`);
  const here = await upload("on-host3", { VMSHIFT_VDSM_ID_FILE: vdsmId });
  assertEquals([here.host, here.asked], [host3!.id, true]);
  assertStringIncludes(here.out, `this machine is host "host3" of data center "Default"`);

  // host1 is in maintenance: the engine chooses (host2, the first that is up).
  await Deno.writeTextFile(vdsmId, `${host1!.hwId}\n`);
  const down = await upload("on-host1", { VMSHIFT_VDSM_ID_FILE: vdsmId });
  assertEquals([down.host, down.asked], [host2!.id, false]);
  assertStringIncludes(down.out, `no host of hardware id ${host1!.hwId} is up`);

  // Not an oVirt host; and a vdsm.id that cannot be read, which only warns.
  const none = await upload("no-vdsm", { VMSHIFT_VDSM_ID_FILE: join(w.sb.work, "missing") });
  assertEquals(none.asked, false);
  assertStringIncludes(none.out, "not an oVirt host");
  const unreadable = await upload("unreadable", { VMSHIFT_VDSM_ID_FILE: w.sb.work });
  assertEquals(unreadable.asked, false);
  assertMatch(unreadable.out, /Cannot read .*: the engine chooses the host/);
  assertEquals(w.ovirt.vms().length, 4);
  await w.sb.assertNothingLeft();
});

Deno.test("-o rhv -of qcow2 uploads a cow disk that holds the same guest", async () => {
  await using w = await world();
  const r = await w.sb.run(w.args("-of", "qcow2", "-on", "guest-cow"));
  assertEquals(r.code, 0, r.stderr);
  await assertUploaded(w, "cow", "guest-cow");
  assert(w.ovirt.stats().putBytes <= w.image.dataBytes + SLACK);
  await w.sb.assertNothingLeft();
});

Deno.test("-oa preallocated sends zeroes as zero requests, never as bytes", async () => {
  await using w = await world();
  const r = await w.sb.run(w.args("-oa", "preallocated"));
  assertEquals(r.code, 0, r.stderr);
  await assertUploaded(w, "raw");
  const stats = w.ovirt.stats();
  assert(stats.zeroRequests > 0, "zero requests were sent");
  assert(stats.putBytes <= w.image.dataBytes + SLACK, `${stats.putBytes} bytes PUT`);
  assertEquals(w.ovirt.disks()[0]!.sparse, false);
  await w.sb.assertNothingLeft();
});

Deno.test("-oo rhv-disk-uuid names the disk; the user may be in -oc", async () => {
  await using w = await world();
  const uuid = crypto.randomUUID();
  const args = w.args("-oo", `rhv-disk-uuid=${uuid}`).map((a) =>
    a === w.ovirt.engineUrl ? a.replace("https://", "https://admin@internal@") : a
  );
  const r = await w.sb.run(args);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(w.ovirt.disks().map((d) => d.id), [uuid]);
  await w.sb.assertNothingLeft();
});

Deno.test("a dropped connection and a 500 mid-upload are survived, data identical", async () => {
  for (const fault of ["drop", "500"] as const) {
    await using w = await world();
    if (fault === "drop") w.ovirt.faults.dropConnectionAfterBytes = 10 * MiB;
    else w.ovirt.faults.fail500Once = true;
    const r = await w.sb.run(w.args());
    assertEquals(r.code, 0, `${fault}: ${r.stderr}`);
    if (fault === "drop") assert(w.ovirt.stats().droppedBytes > 0, "the drop lost writes");
    else assert(!w.ovirt.faults.fail500Once, "the 500 was answered");
    await assertUploaded(w, "raw");
    await w.sb.assertNothingLeft();
  }
});

Deno.test("a token that expires between requests is renewed", async () => {
  await using w = await world({ tokenLifetimeMs: 300 });
  const r = await w.sb.run(w.args());
  assertEquals(r.code, 0, r.stderr);
  await assertUploaded(w, "raw");
  await w.sb.assertNothingLeft();
});

Deno.test("failures before anything is created: clear error, exit 1, nothing left", async () => {
  const cases: Array<{
    name: string;
    options?: Partial<OvirtOptions>;
    extra?: string[];
    password?: string;
    storage?: string;
    cluster?: string;
    cafile?: "other";
    error: RegExp;
  }> = [
    {
      name: "wrong password",
      password: "not-the-password",
      error: /Cannot log in to the oVirt engine at https:\/\/127\.0\.0\.1:\d+ as "admin@internal"/,
    },
    {
      name: "a token that has expired by the time it is used",
      options: { tokenLifetimeMs: 1 },
      error: /refused the session \(401\) even after logging in again/,
    },
    {
      name: "unknown storage domain",
      storage: "nowhere",
      error: /Storage domain "nowhere" not found/,
    },
    {
      name: "VM name in use",
      options: { existingVms: ["guest"] },
      error: /A VM named "guest" already exists .*-on NAME/,
    },
    {
      name: "disk too big for the domain",
      options: { storageDomains: [{ name: "data", available: 100 * MiB }] },
      extra: ["-oa", "preallocated"],
      error: /Not enough free space on storage domain "data": 100\.0 MiB free, 256\.0 MiB needed/,
    },
    {
      name: "unknown cluster",
      cluster: "Elsewhere",
      error: /Cluster "Elsewhere" not found .*"Default"/,
    },
    {
      name: "cluster without architecture",
      options: { clusters: [{ name: "Default", architecture: "undefined" }] },
      error: /Cluster "Default" has no CPU architecture/,
    },
    {
      name: "sparse raw on block storage",
      options: { storageDomains: [{ name: "data", available: 2 ** 34, type: "iscsi" }] },
      error: /block storage \(iscsi\).*-of qcow2/,
    },
    {
      name: "a CA that did not sign the servers' certificates",
      cafile: "other",
      error: /certificate.*not signed by the CA in ".*other-ca\.pem" \(-oo rhv-cafile\)/i,
    },
  ];
  for (const c of cases) {
    await using w = await world(c.options ?? {});
    let args = w.args(...(c.extra ?? []));
    if (c.password) {
      const file = join(w.sb.work, "wrong-password");
      await Deno.writeTextFile(file, c.password);
      args = args.map((a) => a === w.ovirt.passwordFile ? file : a);
    }
    if (c.cafile) {
      const other = await makeCertificate(w.sb.work, "other");
      args = args.map((a) => a.startsWith("rhv-cafile=") ? `rhv-cafile=${other.caFile}` : a);
    }
    if (c.storage) args[args.indexOf("-os") + 1] = c.storage;
    if (c.cluster) args[args.indexOf("rhv-cluster=Default")] = `rhv-cluster=${c.cluster}`;
    const r = await w.sb.run(args);
    assertEquals(r.code, 1, `${c.name}: ${r.stderr}`);
    assertMatch(r.stderr, c.error);
    assert(!r.stderr.includes("test-password"), `${c.name}: the password is not printed`);
    assertNothingOnEngine(w.ovirt, c.options?.existingVms ?? []);
    await w.sb.assertNothingLeft();
  }
});

Deno.test("failures after disks were created are undone, and the error says so", async () => {
  for (const fault of ["failFinalize", "pauseTransfer"] as const) {
    await using w = await world();
    w.ovirt.faults[fault] = true;
    const r = await w.sb.run(w.args());
    assertEquals(r.code, 1, `${fault}: ${r.stderr}`);
    if (fault === "failFinalize") {
      assertMatch(
        r.stderr,
        /Finalizing the upload of disk 1 \([0-9a-f-]+\) failed: .*\(cleaned up: removed 1 disk\)/,
      );
    } else {
      assertMatch(
        r.stderr,
        /paused the upload to disk "guest-000" \(paused_system\).*\(cleaned up: cancelled 1 transfer, removed 1 disk\)/,
      );
    }
    assertNothingOnEngine(w.ovirt);
    await w.sb.assertNothingLeft();
  }
});

Deno.test("a copy that fails mid-upload is undone, and the error says what was cleaned up", async () => {
  await using w = await world();
  w.ovirt.faults.slowMs = 300;
  const child = w.sb.spawn([...w.args(), "--machine-readable"]);
  const stderr = new Response(child.stderr).text();
  const { rest } = await readUntil(child, (l) => l.includes('"type":"progress"'));
  // The source goes away under the copy.
  const source = (await processesMentioning(w.sb.tmp)).find((l) =>
    l.includes("qemu-nbd") && l.includes("in-sda.sock")
  );
  assert(source, "the source's qemu-nbd is running");
  Deno.kill(Number(source.split(" ")[0]), "SIGKILL");
  const [status, out, err] = await Promise.all([child.status, rest, stderr]);
  assertEquals(status.code, 1, `${out}\n${err}`);
  assertMatch(
    err,
    /Copying disk 1 failed: .*\(cleaned up: cancelled 1 transfer, removed 1 disk\)/,
  );
  assertNothingOnEngine(w.ovirt);
  await w.sb.assertNothingLeft();
});

Deno.test("SIGINT mid-upload: exit 130, transfer cancelled, disk removed", async () => {
  await using w = await world();
  w.ovirt.faults.slowMs = 300;
  const child = w.sb.spawn([...w.args(), "--machine-readable"]);
  const stderr = new Response(child.stderr).text();
  const { rest } = await readUntil(child, (l) => l.includes('"type":"progress"'));
  assertEquals(w.ovirt.disks().length, 1, "the upload is under way");
  child.kill("SIGINT");
  const [status, out, err] = await Promise.all([child.status, rest, stderr]);
  assertEquals(status.code, 130, `${out}\n${err}`);
  assertStringIncludes(err, "Interrupted by SIGINT");
  // Machine-readable: the clean-up report is a warning object on stdout.
  assertMatch(out, /"type":"warning".*cancelled 1 transfer, removed 1 disk/);
  assertNothingOnEngine(w.ovirt);
  await w.sb.assertNothingLeft();
});

Deno.test("-o rhv usage errors exit 2 before anything is done", async () => {
  await using w = await world();
  const uuid = crypto.randomUUID();
  const cases: Array<[string[], string]> = [
    [
      ["-i", "disk", w.source, "-o", "rhv", "-op", w.ovirt.passwordFile, "-os", "data"],
      "-o rhv needs the engine's API URL",
    ],
    [
      ["-i", "disk", w.source, "-o", "rhv-upload", "-oc", w.ovirt.engineUrl, "-os", "data"],
      "-o rhv-upload needs the engine password in a file: -op FILE",
    ],
    [w.args("-oo", "rhv-verifypeer=false"), "rhv-verifypeer=false is not supported"],
    [w.args("-oo", "rhv-disk-uuid=nope"), 'Bad -oo rhv-disk-uuid="nope"'],
    [w.args("-oo", "rhv-bogus=1"), 'Unknown option "-oo rhv-bogus"'],
    [w.args("-of", "vmdk"), 'Unsupported output format "-of vmdk"'],
    [
      w.args("-oo", `rhv-disk-uuid=${uuid}`, "-oo", `rhv-disk-uuid=${crypto.randomUUID()}`),
      "must match the number of disks of the guest (1)",
    ],
    [
      w.args().map((a) =>
        a === w.ovirt.engineUrl ? a.replace("https://", "https://admin:secret@") : a
      ),
      "do not put the password in the URL",
    ],
  ];
  for (const [args, message] of cases) {
    const r = await w.sb.run(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, message);
  }
  assertNothingOnEngine(w.ovirt);
  assertEquals(w.ovirt.stats().connections, 0, "imageio was never reached");
  await w.sb.assertNothingLeft();
});

Deno.test("-i ova with two disks -o rhv --parallel 2: both disks arrive, one VM names both", async () => {
  await using w = await world();
  const images: string[] = [];
  for (const [i, size] of [[0, 64 * MiB], [1, 32 * MiB]] as const) {
    const raw = join(w.sb.work, `disk${i}.raw`);
    await makeTestImage(raw, { format: "raw", virtualSize: size, dataBytes: 4 * MiB, seed: i + 3 });
    images.push(raw);
  }
  const ova = join(w.sb.work, "two.ova");
  await makeOvaFixture(ova, { disks: images.map((image) => ({ image })), name: "two" });
  const args = w.args().slice(3); // drop "-i disk SOURCE"
  const r = await w.sb.run(["-i", "ova", ova, ...args, "--parallel", "2"]);
  assertEquals(r.code, 0, r.stderr);
  const disks = w.ovirt.disks();
  assertEquals(disks.length, 2);
  const vms = w.ovirt.vms();
  assertEquals(vms.map((v) => v.name), ["two"]);
  for (const d of disks) assertStringIncludes(vms[0]!.ovf, d.id);
  // Each stored image holds one of the source disks (their order on the engine is its own).
  const bySize = new Map(disks.map((d) => [d.provisionedSize, d.path]));
  await assertSameContent(images[0]!, bySize.get(64 * MiB)!);
  await assertSameContent(images[1]!, bySize.get(32 * MiB)!);
  await w.sb.assertNothingLeft();
});
