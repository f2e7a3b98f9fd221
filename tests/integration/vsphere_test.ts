/**
 * End to end: `-i vsphere` (and `-i libvirt -ic vpx://`) against VMware's own vCenter simulator
 * (govmomi's simulator library, `tests/vcsim/main.go`) on 127.0.0.1 over TLS: the VM found
 * through the vSphere API by name and by moref, its hardware, its disks read over HTTPS from the
 * datastore's /folder endpoint by nbdkit's curl plugin with the session cookie, refusals (wrong
 * password, unknown VM, running VM, snapshots, untrusted TLS), the rate limit, no secret shown,
 * no process or file left, the fixtures unchanged, and the session logged out.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeVmwareFixture, type VmwareFixture } from "../../scripts/make_vmware_fixture.ts";
import {
  assertSameContent,
  processesMentioning,
  type RunResult,
  Sandbox,
  sha256,
} from "./_harness.ts";
import {
  addVcsimFiles,
  assertNoSecret,
  login,
  migrateToLocal,
  rawImage,
  type SimVm,
  startVcsim,
  type Vcsim,
} from "./_vcsim.ts";

const MiB = 1024 * 1024;

interface World {
  sb: Sandbox;
  sim: Vcsim;
  raw: { a: string; b: string; c: string };
  fixtures: Record<string, VmwareFixture>;
  hashes: () => Promise<Record<string, string>>;
}

/** A Sandbox, fixture VMs in a datastore directory, and the simulator serving them. */
async function withSimulator(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vsphere-test-" });
  try {
    {
      await using sb = await Sandbox.create();
      const ds = join(dir, "datastore1");
      await Deno.mkdir(ds);
      const raw = {
        a: await rawImage(join(dir, "a.img"), 4 * MiB, [[0, 2 * MiB]]),
        b: await rawImage(join(dir, "b.img"), 2 * MiB, [[0, MiB]]),
        c: await rawImage(join(dir, "c.img"), 1 * MiB, [[0, MiB / 2]]),
      };
      const fixtures: Record<string, VmwareFixture> = {
        web01: await makeVmwareFixture(join(ds, "web01"), {
          name: "web01",
          disks: [
            { image: raw.a, subformat: "vmfs", bus: "scsi" },
            { image: raw.b, subformat: "monolithicSparse", bus: "sata" },
          ],
        }),
        running01: await makeVmwareFixture(join(ds, "running01"), {
          name: "running01",
          disks: [{ image: raw.c, subformat: "vmfs" }],
        }),
        snap01: await makeVmwareFixture(join(ds, "snap01"), {
          name: "snap01",
          disks: [{ image: raw.c, subformat: "vmfs" }],
        }),
      };
      for (const [name, fx] of Object.entries(fixtures)) await addVcsimFiles(fx.dir, name);
      const disk = (vm: string, i: number, controller = "pvscsi") => ({
        controller,
        bus: 0,
        unit: 0,
        file: `${vm}/${fixtures[vm]!.disks[i]!.fileName}`,
        capacity: fixtures[vm]!.disks[i]!.virtualSize,
      });
      const vms: SimVm[] = [
        {
          name: "web01",
          datastore: "datastore1",
          vmx: "web01/web01.vmx",
          cpus: 4,
          coresPerSocket: 2,
          memoryMB: 2048,
          firmware: "efi",
          secureBoot: true,
          guestId: "debian10_64Guest",
          disks: [
            disk("web01", 0),
            disk("web01", 1, "sata"),
          ],
          nics: [
            { model: "vmxnet3", mac: "00:50:56:aa:bb:01", network: "VM Network" },
            { model: "e1000e", mac: "00:50:56:aa:bb:02", network: "DC0_DVPG0" },
          ],
        },
        {
          name: "running01",
          datastore: "datastore1",
          vmx: "running01/running01.vmx",
          cpus: 1,
          memoryMB: 512,
          disks: [disk("running01", 0)],
          nics: [],
          powerOn: true,
        },
        {
          name: "snap01",
          datastore: "datastore1",
          vmx: "snap01/snap01.vmx",
          cpus: 1,
          memoryMB: 512,
          disks: [disk("snap01", 0)],
          nics: [],
          snapshot: "before-upgrade",
        },
      ];
      // The disks' files, hashed before and after: vmshift never writes to the source.
      const diskFiles = Object.values(fixtures).flatMap((fx) => fx.disks.flatMap((d) => d.files));
      const hashes = async () =>
        Object.fromEntries(await Promise.all(diskFiles.map(async (f) => [f, await sha256(f)])));
      const before = await hashes();
      await using sim = await startVcsim(dir, { datastores: { datastore1: ds }, vms });
      await fn({ sb, sim, raw, fixtures, hashes });
      assertEquals(await hashes(), before, "the source's disk files changed");
      const stats = await sim.stats();
      assertEquals(stats.sessionsActive, 0, "a session was left logged in");
      await sb.assertNothingLeft();
    }
    assertEquals(await processesMentioning(dir), [], "simulator or nbdkit left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function source(r: RunResult): Record<string, unknown> {
  assertEquals(r.code, 0, r.stderr);
  const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  return events.find((e) => e.type === "result")!.source;
}

function assertFailed(r: RunResult, message: string, sim: Vcsim): void {
  assertEquals(r.code, 1, r.stderr);
  assertStringIncludes(r.stderr, message);
  assertNoSecret(r, sim);
}

Deno.test("-i vsphere: finds the VM by name, moref and as -i libvirt -ic vpx://, hardware from the API", async () => {
  await withSimulator(async ({ sb, sim }) => {
    const expected = {
      name: "web01",
      memory: 2048 * MiB,
      vcpus: 4,
      cpuTopology: { sockets: 2, cores: 2, threads: 1 },
      firmware: "uefi",
      secureBoot: true,
      guestOs: "debian10_64Guest",
      disks: [
        {
          index: 0,
          source: "[datastore1] web01/web01.vmdk",
          virtualSize: 4 * MiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        },
        {
          index: 1,
          source: "[datastore1] web01/web01_1.vmdk",
          virtualSize: 2 * MiB,
          bus: "sata",
          sourceFormat: "vmdk",
        },
      ],
      nics: [
        { model: "vmxnet3", mac: "00:50:56:aa:bb:01", network: "VM Network" },
        { model: "e1000e", mac: "00:50:56:aa:bb:02", network: "DC0_DVPG0" },
      ],
    };
    const byName = await sb.run([
      "-i",
      "vsphere",
      ...login(sim),
      "web01",
      "--print-source",
      "--machine-readable",
    ]);
    assertEquals(source(byName), expected);

    const moref = sim.morefs["web01"]!;
    assert(/^vm-\d+$/.test(moref), moref);
    const byMoref = await sb.run([
      "-i",
      "libvirt",
      ...login(sim),
      moref,
      "--print-source",
      "--machine-readable",
    ]);
    assertEquals(source(byMoref), expected);

    // The whole inventory, without a datacenter in the URI.
    const noDc = await sb.run([
      "-i",
      "vsphere",
      "-ic",
      sim.uri(""),
      "-ip",
      sim.passwordFile,
      "-io",
      `vsphere-cafile=${sim.caFile}`,
      "web01",
      "--print-source",
      "--machine-readable",
    ]);
    assertEquals(source(noDc), expected);
    const stats = await sim.stats();
    assertEquals(stats.unauthorized, 0);
    assert(stats.folderRequests > 0, "the descriptors were not read over HTTPS");
  });
});

Deno.test("-i vsphere: disks copied over HTTPS (vmfs flat and hosted sparse) identical, -v/-x show no secret", async () => {
  await withSimulator(async ({ sb, sim, raw }) => {
    const { r, out } = await migrateToLocal(sb, sim, "web01");
    assertStringIncludes(r.stderr, "curl url=https://127.0.0.1:");
    assertStringIncludes(r.stderr, "/folder/web01/web01-flat.vmdk?dcPath=DC0&dsName=datastore1");
    assertStringIncludes(r.stderr, `cookie=+${sb.tmp}/`);
    assertStringIncludes(r.stderr, "logged out");
    await assertSameContent(raw.a, join(out, "web01-sda"));
    await assertSameContent(raw.b, join(out, "web01-sdb"));
    const stats = await sim.stats();
    assertEquals(stats.unauthorized, 0, "a /folder request went without the session cookie");
  });
});

Deno.test("-i vsphere: wrong password, unknown VM, running VM, VM with snapshots are refused clearly", async () => {
  await withSimulator(async ({ sb, sim, raw }) => {
    const wrong = join(sb.work, "wrong-password");
    await Deno.writeTextFile(wrong, "not-the-password\n");
    const badLogin = await sb.run(["-i", "vsphere", ...login(sim, wrong), "web01", "-o", "null"]);
    assertFailed(
      badLogin,
      `Cannot log in to vCenter "${sim.server}" as "administrator@vsphere.local": the user ` +
        "name or the password",
      sim,
    );
    assert(!badLogin.stderr.includes("not-the-password"));

    const unknown = await sb.run(["-i", "vsphere", ...login(sim), "nosuchvm", "-o", "null"]);
    assertFailed(unknown, `Cannot find VM "nosuchvm" in datacenter "DC0"`, sim);

    const badDc = await sb.run([
      "-i",
      "vsphere",
      "-ic",
      sim.uri("/NoSuchDC/cluster/host"),
      "-ip",
      sim.passwordFile,
      "-io",
      `vsphere-cafile=${sim.caFile}`,
      "web01",
      "-o",
      "null",
    ]);
    assertFailed(badDc, `no datacenter "NoSuchDC"`, sim);

    const running = await sb.run(["-i", "vsphere", ...login(sim), "running01", "-o", "null"]);
    assertFailed(
      running,
      `Cannot migrate VM "running01": it is powered on; shut it down first`,
      sim,
    );

    const snap = await sb.run(["-i", "vsphere", ...login(sim), "snap01", "-o", "null"]);
    assertFailed(
      snap,
      `Cannot migrate VM "snap01": it has snapshots ("before-upgrade"); consolidate (delete)`,
      sim,
    );
    const noSuchSnap = await sb.run([
      "-i",
      "vsphere",
      ...login(sim),
      "-io",
      "vsphere-snapshot=nope",
      "snap01",
      "-o",
      "null",
    ]);
    assertFailed(noSuchSnap, `VM "snap01" has no snapshot "nope": it has "before-upgrade"`, sim);

    // Reading the snapshot is what the refusal offers: its disks as the snapshot holds them.
    const out = join(sb.work, "snap");
    await Deno.mkdir(out);
    const fromSnapshot = await sb.run([
      "-i",
      "vsphere",
      ...login(sim),
      "-io",
      "vsphere-snapshot=before-upgrade",
      "snap01",
      "-o",
      "local",
      "-os",
      out,
    ]);
    assertEquals(fromSnapshot.code, 0, fromSnapshot.stderr);
    await assertSameContent(raw.c, join(out, "snap01-sda"));

    const noPasswordFile = await sb.run([
      "-i",
      "vsphere",
      "-ic",
      sim.uri(),
      "web01",
      "-o",
      "null",
    ]);
    assertEquals(noPasswordFile.code, 2, noPasswordFile.stderr);
    assertStringIncludes(noPasswordFile.stderr, "needs the password");
  });
});

Deno.test("-i vsphere: an untrusted certificate is refused unless no_verify=1", async () => {
  await withSimulator(async ({ sb, sim }) => {
    const untrusted = await sb.run([
      "-i",
      "vsphere",
      "-ic",
      sim.uri(),
      "-ip",
      sim.passwordFile,
      "web01",
      "-o",
      "null",
    ]);
    assertFailed(
      untrusted,
      `Cannot connect to vCenter "${sim.server}": the server's TLS certificate is not trusted`,
      sim,
    );
    assertStringIncludes(untrusted.stderr, "-io vsphere-cafile=CA.pem");

    const noVerify = await sb.run([
      "-i",
      "vsphere",
      "-ic",
      sim.uri(`/${sim.datacenter}`, "no_verify=1"),
      "-ip",
      sim.passwordFile,
      "web01",
      "-o",
      "null",
      "-v",
    ]);
    assertEquals(noVerify.code, 0, noVerify.stderr);
    assertStringIncludes(noVerify.stdout + noVerify.stderr, "is not checked (no_verify=1)");
    assertStringIncludes(noVerify.stderr, "sslverify=false");
    assertNoSecret(noVerify, sim);
  });
});

Deno.test("-i vsphere: --bandwidth and --bandwidth-file go to nbdkit's rate filter and hold", async () => {
  await withSimulator(async ({ sb, sim }) => {
    const r = await sb.run([
      "-i",
      "vsphere",
      ...login(sim),
      "web01",
      "--bandwidth",
      "8M",
      "-o",
      "null",
      "-v",
    ]);
    assertEquals(r.code, 0, r.stderr);
    assert(!r.stderr.includes("no effect"), r.stderr);
    assertStringIncludes(r.stderr, "--filter=rate --filter=retry curl");
    assertStringIncludes(r.stderr, "rate=8388608");
    // The rate holds: disk 1's 2 MiB of data take about 2 s at 1 MiB/s (unlimited, the 1 MiB
    // of disk 2, which fits in the rate filter's first burst, takes 0.01 s). Measured on the
    // copy itself, not the whole run, whose start-up and login time says nothing of the rate.
    const copied = Number(/disk 1: .* copied in ([\d.]+) s/.exec(r.stderr)?.[1]);
    assert(copied >= 1.5, `disk 1 copied in ${copied} s`);

    const file = join(sb.work, "rate");
    await Deno.writeTextFile(file, "8M\n");
    const f = await sb.run([
      "-i",
      "vsphere",
      ...login(sim),
      "web01",
      "--bandwidth-file",
      file,
      "-o",
      "null",
      "-v",
    ]);
    assertEquals(f.code, 0, f.stderr);
    assertStringIncludes(f.stderr, `rate-file=${file}`);
  });
});
