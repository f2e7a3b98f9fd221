/**
 * End to end, `-i vsphere -it https` against VMware's simulator (`tests/vcsim/main.go`), for
 * what the basic tests in `vsphere_test.ts` leave out: an ESXi host (`esx://root@HOST`, vcsim's
 * ESX model with its `ha-datacenter`), disks split over several extent files
 * (twoGbMaxExtentFlat, twoGbMaxExtentSparse) and streamOptimized ones copied identical, and
 * `--bandwidth-file` changed while the copy runs. No secret shows, no process or file is left,
 * the source's files are unchanged and the session is logged out.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeVmwareFixture, type VmwareFixture } from "../../scripts/make_vmware_fixture.ts";
import { assertSameContent, processesMentioning, Sandbox, sha256 } from "./_harness.ts";
import {
  addVcsimFiles,
  assertNoSecret,
  login,
  migrateToLocal,
  rawImage,
  type SimVm,
  startVcsim,
  type Vcsim,
  type VcsimOptions,
} from "./_vcsim.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * A twoGbMaxExtentFlat disk as qemu-img writes it, with its one `-f001.vmdk` split further into
 * three extent files of uneven sizes (`-f001`, `-f002`, `-f003`): VMware splits at 2 GiB, which
 * over HTTPS would mean reading 2 GiB of zeroes per extent in a test; the descriptor's shape is
 * the same.
 */
async function splitFlat(fx: VmwareFixture, i: number, cuts: number[]): Promise<string[]> {
  const d = fx.disks[i]!;
  const base = d.fileName.replace(/\.vmdk$/, "");
  const whole = await Deno.readFile(join(fx.dir, `${base}-f001.vmdk`));
  const sizes = [...cuts, whole.length - cuts.reduce((a, b) => a + b, 0)];
  const files: string[] = [];
  let at = 0;
  for (const [n, size] of sizes.entries()) {
    const name = `${base}-f${String(n + 1).padStart(3, "0")}.vmdk`;
    await Deno.writeFile(join(fx.dir, name), whole.subarray(at, at + size));
    files.push(join(fx.dir, name));
    at += size;
  }
  const text = await Deno.readTextFile(d.path);
  const extents = sizes.map((size, n) =>
    `RW ${size / 512} FLAT "${base}-f${String(n + 1).padStart(3, "0")}.vmdk" 0`
  );
  const out = text.replace(/^RW \d+ FLAT "[^"]+" 0$/m, extents.join("\n"));
  assert(out !== text, text);
  await Deno.writeTextFile(d.path, out);
  return [d.path, ...files];
}

interface World {
  sb: Sandbox;
  sim: Vcsim;
}

/** A Sandbox and the simulator serving fixture VMs; checks nothing is changed or left. */
async function withVms(
  make: (ds: string) => Promise<{ vms: SimVm[]; files: string[] }>,
  options: Pick<VcsimOptions, "model">,
  fn: (w: World) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vsphere-disks-test-" });
  try {
    {
      await using sb = await Sandbox.create();
      const ds = join(dir, "datastore1");
      await Deno.mkdir(ds);
      const { vms, files } = await make(ds);
      const hashes = async () =>
        Object.fromEntries(await Promise.all(files.map(async (f) => [f, await sha256(f)])));
      const before = await hashes();
      await using sim = await startVcsim(dir, { datastores: { datastore1: ds }, vms, ...options });
      await fn({ sb, sim });
      assertEquals(await hashes(), before, "the source's disk files changed");
      const stats = await sim.stats();
      assertEquals(stats.sessionsActive, 0, "a session was left logged in");
      assertEquals(stats.unauthorized, 0, "a /folder request went without the session cookie");
      await sb.assertNothingLeft();
    }
    assertEquals(await processesMentioning(dir), [], "simulator, nbdkit or qemu-nbd left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function simVm(fx: VmwareFixture, controller = "pvscsi"): SimVm {
  return {
    name: fx.name,
    datastore: "datastore1",
    vmx: `${fx.name}/${fx.name}.vmx`,
    cpus: 2,
    memoryMB: 1024,
    disks: fx.disks.map((d, unit) => ({
      controller,
      bus: 0,
      unit,
      file: `${fx.name}/${d.fileName}`,
      capacity: d.virtualSize,
    })),
    nics: [{ model: "vmxnet3", mac: "00:50:56:aa:cc:01", network: "VM Network" }],
  };
}

Deno.test("-i vsphere esx://root@HOST: an ESXi host's VM found (ha-datacenter), hardware, disks copied identical", async () => {
  let image = "";
  let sparse = "";
  let fx: VmwareFixture;
  await withVms(
    async (ds) => {
      image = await rawImage(join(ds, "..", "esx.img"), 4 * MiB, [[0, 3 * MiB]]);
      sparse = await rawImage(join(ds, "..", "esx-sparse.img"), 2 * MiB, [[MiB, MiB]]);
      fx = await makeVmwareFixture(join(ds, "esx01"), {
        name: "esx01",
        disks: [{ image, subformat: "vmfs" }, { image: sparse, subformat: "monolithicSparse" }],
      });
      await addVcsimFiles(fx.dir, "esx01");
      return { vms: [simVm(fx)], files: fx.disks.flatMap((d) => d.files) };
    },
    { model: "esx" },
    async ({ sb, sim }) => {
      assert(sim.uri().startsWith("esx://root@127.0.0.1:"), sim.uri());
      assertEquals(sim.datacenter, "ha-datacenter");
      for (const mode of ["vsphere", "libvirt"]) {
        const r = await sb.run([
          "-i",
          mode,
          ...login(sim),
          "esx01",
          "--print-source",
          "--machine-readable",
        ]);
        assertEquals(r.code, 0, r.stderr);
        const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
        const source = events.find((e) => e.type === "result")!.source;
        assertEquals(source.name, "esx01");
        assertEquals(source.vcpus, 2);
        assertEquals(source.memory, 1024 * MiB);
        assertEquals(source.disks, [{
          index: 0,
          source: "[datastore1] esx01/esx01.vmdk",
          virtualSize: 4 * MiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        }, {
          index: 1,
          source: "[datastore1] esx01/esx01_1.vmdk",
          virtualSize: 2 * MiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        }]);
        assertEquals(source.nics, [{
          model: "vmxnet3",
          mac: "00:50:56:aa:cc:01",
          network: "VM Network",
        }]);
      }
      const { r, out } = await migrateToLocal(sb, sim, "esx01");
      assertStringIncludes(r.stderr, "ESXi");
      assertStringIncludes(
        r.stderr,
        "/folder/esx01/esx01-flat.vmdk?dcPath=ha-datacenter&dsName=datastore1",
      );
      await assertSameContent(image, join(out, "esx01-sda"));
      await assertSameContent(sparse, join(out, "esx01-sdb"));

      const wrong = join(sb.work, "wrong-password");
      await Deno.writeTextFile(wrong, "not-the-password\n");
      const bad = await sb.run(["-i", "vsphere", ...login(sim, wrong), "esx01", "-o", "null"]);
      assertEquals(bad.code, 1, bad.stderr);
      assertStringIncludes(
        bad.stderr,
        `Cannot log in to ESXi "${sim.server}" as "root": the user name or the password`,
      );
      assertNoSecret(bad, sim);
      assert(!bad.stderr.includes("not-the-password"));
    },
  );
});

Deno.test("-i vsphere -it https: twoGbMaxExtentFlat, twoGbMaxExtentSparse and streamOptimized copied identical", async () => {
  const images: string[] = [];
  await withVms(
    async (ds) => {
      const up = join(ds, "..");
      // Flat: 3 MiB, split below into extents of 1 MiB, 1.5 MiB and 0.5 MiB.
      images.push(await rawImage(join(up, "flat.img"), 3 * MiB, [[0, 3 * MiB]]));
      // Sparse: over 2 GiB, so qemu-img writes two -sNNN.vmdk extents, with data on both sides of
      // the boundary and in the second extent.
      images.push(
        await rawImage(join(up, "sparse.img"), 2 * GiB + 2 * MiB, [
          [0, MiB],
          [2 * GiB - MiB / 2, MiB],
          [2 * GiB + MiB, MiB / 2],
        ]),
      );
      images.push(await rawImage(join(up, "stream.img"), 3 * MiB, [[0, 2 * MiB]]));
      const fx = await makeVmwareFixture(join(ds, "split01"), {
        name: "split01",
        disks: [
          { image: images[0]!, subformat: "twoGbMaxExtentFlat" },
          { image: images[1]!, subformat: "twoGbMaxExtentSparse" },
          { image: images[2]!, subformat: "streamOptimized" },
        ],
      });
      const flatFiles = await splitFlat(fx, 0, [MiB, MiB + MiB / 2]);
      assertEquals(
        fx.disks[1]!.files.length,
        3,
        "twoGbMaxExtentSparse: descriptor and two extents",
      );
      await addVcsimFiles(fx.dir, "split01");
      // The same flat disk with its second extent file gone from the datastore.
      const broken = await makeVmwareFixture(join(ds, "broken01"), {
        name: "broken01",
        disks: [{ image: images[0]!, subformat: "twoGbMaxExtentFlat" }],
      });
      const brokenFiles = await splitFlat(broken, 0, [MiB, MiB + MiB / 2]);
      await Deno.remove(brokenFiles[2]!);
      await addVcsimFiles(broken.dir, "broken01");
      return {
        vms: [simVm(fx), simVm(broken)],
        files: [...flatFiles, ...fx.disks.slice(1).flatMap((d) => d.files)],
      };
    },
    {},
    async ({ sb, sim }) => {
      const { r, out } = await migrateToLocal(sb, sim, "split01");
      for (const f of ["f001", "f002", "f003", "_1-s001", "_1-s002"]) {
        const name = f.startsWith("_") ? `split01${f}` : `split01-${f}`;
        assertStringIncludes(r.stderr, `/folder/split01/${name}.vmdk?dcPath=DC0&dsName=datastore1`);
      }
      assertStringIncludes(r.stderr, "/folder/split01/split01_2.vmdk?dcPath=DC0&dsName=datastore1");
      assertStringIncludes(
        r.stderr,
        `disk 1: "[datastore1] split01/split01.vmdk" on scsi, twoGbMaxExtentFlat`,
      );
      assertStringIncludes(
        r.stderr,
        `disk 2: "[datastore1] split01/split01_1.vmdk" on scsi, twoGbMaxExtentSparse`,
      );
      assertStringIncludes(
        r.stderr,
        `disk 3: "[datastore1] split01/split01_2.vmdk" on scsi, streamOptimized`,
      );
      await assertSameContent(images[0]!, join(out, "split01-sda"));
      await assertSameContent(images[1]!, join(out, "split01-sdb"));
      await assertSameContent(images[2]!, join(out, "split01-sdc"));

      const missing = await sb.run(["-i", "vsphere", ...login(sim), "broken01", "-o", "null"]);
      assertEquals(missing.code, 1, missing.stderr);
      assertStringIncludes(missing.stderr, "broken01-f002.vmdk");
      assertStringIncludes(missing.stderr, "no such file");
      assertNoSecret(missing, sim);
    },
  );
});

Deno.test("-i vsphere -it https: --bandwidth-file is re-read while the copy runs", async () => {
  await withVms(
    async (ds) => {
      const image = await rawImage(join(ds, "..", "rate.img"), 16 * MiB, [[0, 16 * MiB]]);
      const fx = await makeVmwareFixture(join(ds, "rate01"), {
        name: "rate01",
        disks: [{ image, subformat: "vmfs" }],
      });
      await addVcsimFiles(fx.dir, "rate01");
      return { vms: [simVm(fx)], files: fx.disks.flatMap((d) => d.files) };
    },
    {},
    async ({ sb, sim }) => {
      const file = join(sb.work, "rate");
      const set = async (rate: string) => {
        await Deno.writeTextFile(`${file}.tmp`, rate);
        await Deno.rename(`${file}.tmp`, file);
      };
      await set("8M\n");
      const started = performance.now();
      const child = sb.spawn([
        "-i",
        "vsphere",
        ...login(sim),
        "rate01",
        "--bandwidth-file",
        file,
        "-o",
        "null",
      ]);
      const output = child.output();
      // At 1 MiB/s (after the filter's 2 s burst) the 16 MiB take over 15 s: still copying at 4 s.
      const early = await Promise.race([
        output.then(() => "done"),
        new Promise((r) => setTimeout(() => r("running"), 4000)),
      ]);
      assertEquals(early, "running", "the copy was not slowed by the rate in the file");
      const changed = performance.now();
      await set("800M\n");
      const r = await output;
      const dec = new TextDecoder();
      const result = { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
      assertEquals(result.code, 0, result.stderr);
      assertNoSecret(result, sim);
      const after = (performance.now() - changed) / 1000;
      const total = (performance.now() - started) / 1000;
      // Over 10 MiB were left at 1 MiB/s; at 100 MiB/s they take well under a second, plus the
      // filter's re-read (once a second), the logout and the exit.
      assert(
        after < 6,
        `finished ${after.toFixed(1)} s after the rate was raised (${total.toFixed(1)} s in all)`,
      );
    },
  );
});
