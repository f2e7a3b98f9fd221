/**
 * `-i vsphere -it vddk` end to end, where nbdkit's vddk plugin works (`nbdkit --dump-plugin
 * vddk`). Debian ships no vddk plugin, and VMware's VDDK cannot be installed here, so on these
 * machines the test says it was skipped; `tests/input/vsphere_test.ts` pins the exact nbdkit
 * command for each option set instead. VDDK cannot read from the simulator either (it speaks
 * VMware's NFC protocol, which vcsim does not), so where the plugin exists the test checks that
 * vmshift gets as far as starting it with the right arguments and reports VDDK's own error.
 */

import { join } from "node:path";
import { assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeVmwareFixture } from "../../scripts/make_vmware_fixture.ts";
import { processesMentioning, Sandbox } from "./_harness.ts";
import { addVcsimFiles, startVcsim } from "./_vcsim.ts";

const hasVddk = await new Deno.Command("nbdkit", { args: ["--dump-plugin", "vddk"] })
  .output().then((o) => o.success, () => false);

if (!hasVddk) {
  console.log(
    "vsphere_vddk_test: SKIPPED: nbdkit --dump-plugin vddk fails here (no vddk plugin or VDDK); " +
      "the vddk command lines are pinned by tests/input/vsphere_test.ts",
  );
}

Deno.test({
  name:
    "-i vsphere -it vddk: nbdkit's vddk plugin is started with the VM's moref, disk and thumbprint",
  ignore: !hasVddk,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vmshift-vddk-test-" });
    try {
      {
        await using sb = await Sandbox.create();
        const ds = join(dir, "ds");
        const img = join(dir, "a.img");
        await Deno.writeFile(img, new Uint8Array(1024 * 1024));
        const fx = await makeVmwareFixture(join(ds, "web01"), {
          name: "web01",
          disks: [{ image: img, subformat: "vmfs" }],
        });
        await addVcsimFiles(fx.dir, "web01");
        await using sim = await startVcsim(dir, {
          datastores: { ds },
          vms: [{
            name: "web01",
            datastore: "ds",
            vmx: "web01/web01.vmx",
            cpus: 1,
            memoryMB: 512,
            disks: [{
              controller: "pvscsi",
              bus: 0,
              unit: 0,
              file: "web01/web01.vmdk",
              capacity: 1 << 20,
            }],
            nics: [],
          }],
        });
        const r = await sb.run([
          "-i",
          "vsphere",
          "-it",
          "vddk",
          "-ic",
          sim.uri(),
          "-ip",
          sim.passwordFile,
          "-io",
          `vsphere-cafile=${sim.caFile}`,
          "web01",
          "-o",
          "null",
          "-v",
        ]);
        assertStringIncludes(r.stderr, `vm=moref=${sim.morefs["web01"]}`);
        assertStringIncludes(r.stderr, "file=[ds] web01/web01.vmdk");
        assertStringIncludes(r.stderr, "--filter=cow --filter=blocksize --filter=retry vddk");
        assertEquals(r.stderr.includes(sim.password), false);
        await sb.assertNothingLeft();
      }
      assertEquals(await processesMentioning(dir), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
