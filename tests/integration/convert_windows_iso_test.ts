/**
 * virtio-win from its ISO (`VIRTIO_WIN=/path/virtio-win.iso`): the phony Windows 10 guest is
 * converted once with the phony virtio-win directory and once with the same tree as an ISO
 * (`scripts/make_virtio_win_iso.ts`); both give the same drivers, registry and first-boot
 * script, the ISO is not modified and nothing is left behind. A file that is not a usable ISO
 * is refused with its name, exit 1, before any change.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { guestImage } from "../_guests.ts";
import { Sandbox } from "./_harness.ts";
import { assertRefused, assertWin10Drivers, readOutputs } from "./_windows.ts";
import { makeVirtioWinTree } from "../../scripts/make_virtio_win_tree.ts";

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("VIRTIO_WIN may be the virtio-win ISO: the same result as its directory", async (t) => {
  await using box = await Sandbox.create();
  const tree = `${box.work}/virtio-win`;
  await makeVirtioWinTree(tree);
  const iso = await guestImage("phony-virtio-win-iso");
  const source = await guestImage("phony-win10");
  const isoSum = await sha256(iso);
  const isoMtime = (await Deno.stat(iso)).mtime?.getTime();
  const disks: Record<string, string> = {};
  const reports: Record<string, string> = {};

  for (const [kind, virtioWin] of [["dir", tree], ["iso", iso]] as const) {
    await t.step(`converts Windows 10 with VIRTIO_WIN = the ${kind}`, async () => {
      const out = `${box.work}/out-${kind}`;
      await Deno.mkdir(out);
      const r = await box.run(
        ["-i", "disk", source, "-o", "local", "-os", out, "-on", `win10-${kind}`],
        { convert: true, env: { VIRTIO_WIN: virtioWin } },
      );
      assertEquals(r.code, 0, r.stderr);
      disks[kind] = `${out}/win10-${kind}-sda`;
      reports[kind] = r.stdout + r.stderr;
      await box.assertNothingLeft();
    });
  }

  await t.step("the drivers, registry and first-boot script are the same", async () => {
    const [dir, fromIso] = await readOutputs([disks.dir!, disks.iso!], box.work);
    assertWin10Drivers(dir!);
    assertWin10Drivers(fromIso!);
    assertEquals(fromIso!.files, dir!.files);
    assertEquals(fromIso!.system, dir!.system);
    assertEquals(fromIso!.software, dir!.software);
    assertEquals(fromIso!.firstboot, dir!.firstboot);
    // The report names the files in the ISO, not the private copy they went through.
    assertStringIncludes(reports.iso!, `from ${iso}:/viostor/w10/amd64 into`);
    assertStringIncludes(reports.iso!, `${iso}:/guest-agent/qemu-ga-x86_64.msi`);
    assert(!reports.iso!.includes(`${box.tmp}/`), "the report names the private copy");
    // The ISO is the appliance's /dev/sdb: never a root, never trimmed.
    assertStringIncludes(reports.iso!, "Trimmed:");
    assertStringIncludes(reports.iso!, "/dev/sda");
    assert(!reports.iso!.includes("/dev/sdb"), reports.iso);
  });

  await t.step("a Linux guest's inspection is not disturbed by the ISO drive", async () => {
    // The phony Debian guest is refused for want of an initramfs tool, which is checked after
    // inspection chose its root (one root: the ISO is not taken for an operating system) and
    // mounted it; no bootable Linux guest here, to keep the test short.
    const out = `${box.work}/out-linux`;
    await Deno.mkdir(out);
    const r = await box.run(
      ["-i", "disk", await guestImage("phony-debian"), "-o", "local", "-os", out, "-on", "deb"],
      { convert: true, env: { VIRTIO_WIN: iso } },
    );
    assertEquals(r.code, 1, r.stderr);
    assertStringIncludes(r.stderr, "Cannot rebuild the initramfs");
    assert(!r.stderr.includes("several operating systems"), r.stderr);
    await box.assertNothingLeft();
  });

  await t.step("the ISO is not modified", async () => {
    assertEquals(await sha256(iso), isoSum);
    assertEquals((await Deno.stat(iso)).mtime?.getTime(), isoMtime);
  });

  const bad = [
    ["a file that is not an ISO", "not-an.iso", "not an ISO 9660 image"],
    ["an empty file", "empty.iso", "the file is empty"],
  ] as const;
  await Deno.writeTextFile(`${box.work}/not-an.iso`, "phony virtio-win\n".repeat(4000));
  await Deno.writeTextFile(`${box.work}/empty.iso`, "");
  for (const [what, name, why] of bad) {
    await t.step(`${what} is refused with its name, exit 1, before any change`, async () => {
      const path = `${box.work}/${name}`;
      await assertRefused(box, source, path, name, `Cannot use VIRTIO_WIN "${path}": ${why}`);
    });
  }
});
