/**
 * Reading converted Windows guests back for the Windows conversion tests: the registry as
 * hivexregedit exports it, and the files the conversion installs.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { Guestfs } from "../../src/convert/guestfs.ts";
import type { Sandbox } from "./_harness.ts";

/** A registry export: lower-cased key path → value name → `type:data` as hivexregedit prints. */
export type Registry = Map<string, { path: string; values: Map<string, string> }>;

export function parseReg(text: string): Registry {
  const reg: Registry = new Map();
  let current: Map<string, string> | undefined;
  for (const line of text.split(/\r?\n/)) {
    const key = /^\[(.*)\]$/.exec(line);
    if (key) {
      const path = key[1]!.replace(/^HKEY_LOCAL_MACHINE\\[A-Z]+\\?/, "");
      current = new Map();
      reg.set(path.toLowerCase(), { path, values: current });
      continue;
    }
    const value = /^(@|"(?:[^"\\]|\\.)*")=(.*)$/.exec(line);
    if (value && current) {
      const name = value[1] === "@" ? "" : JSON.parse(value[1]!) as string;
      current.set(name, value[2]!);
    }
  }
  return reg;
}

/** What one conversion produced, read from its output disk. */
export interface Converted {
  system: Registry;
  software: Registry;
  files: string[];
  firstboot?: string;
  scriptsIni?: string;
  gptIni?: string;
}

/** Reads hives and a few files from raw output disks, all in one appliance launch. */
export async function readOutputs(disks: string[], dir: string): Promise<Converted[]> {
  // KVM hangs on the test machines; vmshift itself never forces TCG, the tests do.
  Deno.env.set("LIBGUESTFS_BACKEND", "direct");
  Deno.env.set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
  await using g = Guestfs.create({ tmpdir: dir });
  for (const d of disks) g.addDrive(d, { format: "raw", readonly: true });
  await g.launch();
  const out: Converted[] = [];
  for (const [i, disk] of disks.entries()) {
    await g.mount(`/dev/sd${String.fromCharCode(97 + i)}1`, "/");
    const hives: Record<string, Registry> = {};
    for (const hive of ["SYSTEM", "SOFTWARE"]) {
      const local = `${dir}/${i}.${hive}`;
      await g.download(`/Windows/System32/config/${hive}`, local);
      const text = await new Deno.Command("hivexregedit", {
        args: ["--export", "--prefix", `HKEY_LOCAL_MACHINE\\${hive}`, local, "\\"],
        stdout: "piped",
      }).output();
      assert(text.success, `hivexregedit --export ${hive} of ${disk}`);
      hives[hive] = parseReg(new TextDecoder().decode(text.stdout));
    }
    const files = [
      ...g.globExpand("/Windows/Drivers/VirtIO/*"),
      ...g.globExpand("/Windows/System32/drivers/*"),
      ...g.globExpand("/Program Files/vmshift/firstboot/*"),
    ];
    const read = async (p: string) =>
      g.isFile(p) ? new TextDecoder().decode(await g.readFile(p)) : undefined;
    const utf16 = async (p: string) => {
      if (!g.isFile(p)) return undefined;
      const b = await g.readFile(p);
      return String.fromCharCode(...new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1))
        .slice(1);
    };
    const converted: Converted = { system: hives.SYSTEM!, software: hives.SOFTWARE!, files };
    const firstboot = await read("/Program Files/vmshift/firstboot/firstboot.cmd");
    if (firstboot !== undefined) converted.firstboot = firstboot;
    const ini = await utf16("/Windows/System32/GroupPolicy/Machine/Scripts/scripts.ini");
    if (ini !== undefined) converted.scriptsIni = ini;
    const gpt = await read("/Windows/System32/GroupPolicy/gpt.ini");
    if (gpt !== undefined) converted.gptIni = gpt;
    out.push(converted);
    await g.umountAll();
  }
  await g.shutdown();
  return out;
}

/**
 * What the phony Windows 10 guest gets with the full phony virtio-win: the w10/amd64 drivers
 * for the VM's devices only, staged and installed, and viostor bound in the DriverDatabase.
 *
 * @param ours The converted guest.
 */
export function assertWin10Drivers(ours: Converted): void {
  const staged = ours.files.filter((f) => f.startsWith("/Windows/Drivers/VirtIO/")).map((f) =>
    f.slice(24)
  ).sort();
  assertEquals(staged, [
    "balloon.cat",
    "balloon.inf",
    "balloon.sys",
    "blnsvr.exe",
    "netkvm.cat",
    "netkvm.inf",
    "netkvm.sys",
    "netkvmco.exe",
    "netkvmp.exe",
    "qemu-ga.msi",
    "viorng.cat",
    "viorng.inf",
    "viorng.sys",
    "viorngci.dll",
    "viorngum.dll",
    "vioscsi.cat",
    "vioscsi.inf",
    "vioscsi.sys",
    "vioser.cat",
    "vioser.inf",
    "vioser.sys",
    "viostor.cat",
    "viostor.inf",
    "viostor.sys",
  ]);
  for (const d of ["viostor", "vioscsi", "netkvm", "balloon", "vioser", "viorng"]) {
    assert(ours.files.includes(`/Windows/System32/drivers/${d}.sys`), `${d}.sys not installed`);
  }
  assert(
    !ours.files.some((f) => /viofs|vioinput|qxl|pvpanic|fwcfg/.test(f)),
    "optional driver installed",
  );
  const svc = ours.system.get("controlset001\\services\\viostor")!;
  assertEquals(svc.values.get("Start"), "dword:00000000");
  assertEquals(svc.values.get("Type"), "dword:00000001");
  assert(
    ours.system.has("driverdatabase\\deviceids\\pci\\ven_1af4&dev_1001&subsys_00021af4&rev_00"),
  );
  assert(
    ours.system.has("driverdatabase\\deviceids\\pci\\ven_1af4&dev_1042&subsys_11001af4&rev_01"),
  );
  assert(![...ours.system.keys()].some((k) => k.includes("criticaldevicedatabase")));
}

/**
 * Converts a Windows disk that must be refused: exit 1 with `message`, nothing in the output
 * directory, nothing left behind.
 *
 * @param box The sandbox.
 * @param source The disk.
 * @param virtioWin What VIRTIO_WIN names.
 * @param name Names the output directory.
 * @param message What stderr must say.
 */
export async function assertRefused(
  box: Sandbox,
  source: string,
  virtioWin: string,
  name: string,
  message: string,
): Promise<void> {
  const out = `${box.work}/out-${name}`;
  await Deno.mkdir(out);
  const r = await box.run(["-i", "disk", source, "-o", "local", "-os", out], {
    convert: true,
    env: { VIRTIO_WIN: virtioWin },
  });
  assertEquals(r.code, 1, r.stderr);
  assertStringIncludes(r.stderr, message);
  assertEquals([...Deno.readDirSync(out)], []);
  await box.assertNothingLeft();
}
