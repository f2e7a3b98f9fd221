/**
 * Windows conversion pieces that need no appliance: registry encodings and .reg files, the
 * regf writer (checked with hivex's own tools), virtio-win directory choice and lookup,
 * `--mac` parsing.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes, assertThrows } from "../../_assert.ts";
import { emptyHive } from "../../../scripts/_regf.ts";
import { makeVirtioWinTree } from "../../../scripts/make_virtio_win_tree.ts";
import { guestImage } from "../../_guests.ts";
import {
  decodeValue,
  encodeValue,
  regFile,
  type RegValue,
} from "../../../src/convert/windows/registry.ts";
import { locateVirtioWin, osDirNames } from "../../../src/convert/windows/virtio.ts";
import { parseMacIp } from "../../../src/convert/windows/firstboot.ts";
import { parseCli } from "../../../src/cli.ts";
import { UsageError } from "../../../src/errors.ts";

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("registry values encode as Windows stores them and decode back", () => {
  const values: RegValue[] = [
    { sz: "héllo" },
    { expandSz: "%SystemRoot%\\inf" },
    { multiSz: ["a", "bc"] },
    { dword: 0xfffffffe },
    { qword: 2n ** 40n },
    { binary: Uint8Array.from([1, 255, 0, 0]) },
  ];
  for (const v of values) {
    const [type, bytes] = encodeValue(v);
    assertEquals(decodeValue(type, bytes), v);
  }
  assertEquals(Array.from(encodeValue({ sz: "A" })[1]), [65, 0, 0, 0]);
  assertEquals(Array.from(encodeValue({ multiSz: ["A"] })[1]), [65, 0, 0, 0, 0, 0]);
  // A DWORD too short to be one comes back as bytes rather than as a wrong number.
  assertEquals(decodeValue(4, Uint8Array.of(1)), { binary: Uint8Array.of(1) });
});

Deno.test("an empty hive from our regf writer is filled and read back by hivexregedit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-regf-test-" });
  try {
    const hive = `${dir}/SYSTEM`;
    await Deno.writeFile(hive, emptyHive("ROOT"));
    const keys = {
      "ControlSet001\\Services\\vmci": {
        Start: { dword: 0 },
        ImagePath: { expandSz: "System32\\drivers\\vmci.sys" },
        DependOnService: { multiSz: ["a", "b"] },
        "": { sz: "default" },
      },
      "Select": { Current: { dword: 1 } },
    } satisfies Record<string, Record<string, RegValue>>;
    await Deno.writeTextFile(`${dir}/in.reg`, regFile("HKEY_LOCAL_MACHINE\\SYSTEM", keys));
    await run("hivexregedit", [
      "--merge",
      "--prefix",
      "HKEY_LOCAL_MACHINE\\SYSTEM",
      hive,
      `${dir}/in.reg`,
    ]);
    const out = await run("hivexregedit", [
      "--export",
      "--prefix",
      "HKEY_LOCAL_MACHINE\\SYSTEM",
      hive,
      "\\",
    ]);
    assertStringIncludes(out, "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\vmci]");
    assertStringIncludes(out, '"Start"=dword:00000000');
    assertStringIncludes(out, '"Current"=dword:00000001');
    assertStringIncludes(
      out,
      `@=hex(1):${
        Array.from(encodeValue({ sz: "default" })[1], (b) => b.toString(16).padStart(2, "0")).join(
          ",",
        )
      }`,
    );
    // The checksum covers the base block: a flipped byte makes hivex refuse the hive.
    const bad = emptyHive();
    bad[100] = bad[100]! ^ 1; // in the file name field, which nothing but the checksum covers
    await Deno.writeFile(`${dir}/bad`, bad);
    const r = await new Deno.Command("hivexregedit", {
      args: ["--export", `${dir}/bad`, "\\"],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert(!r.success, "hivex opened a hive with a bad checksum");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertThrows(() => emptyHive("a\\b"), RangeError, "Cannot name a registry key");
});

Deno.test("virtio-win release directories follow the guest's version, build and variant", () => {
  const dirs = (major: number, minor: number, build: number, variant: string) =>
    osDirNames({ major, minor, build, variant });
  assertEquals(dirs(6, 1, 7601, "Client"), ["w7"]);
  assertEquals(dirs(6, 1, 7601, "Server"), ["2k8R2"]);
  assertEquals(dirs(6, 2, 9200, "Server"), ["2k12"]);
  assertEquals(dirs(6, 3, 9600, "Client"), ["w8.1"]);
  assertEquals(dirs(10, 0, 19045, "Client"), ["w10"]);
  assertEquals(dirs(10, 0, 22631, "Client"), ["w11", "w10"]);
  assertEquals(dirs(10, 0, 14393, "Server"), ["2k16"]);
  assertEquals(dirs(10, 0, 17763, "Server"), ["2k19", "2k16"]);
  assertEquals(dirs(10, 0, 20348, "Server"), ["2k22", "2k19", "2k16"]);
  assertEquals(dirs(10, 0, 26100, "Server Core"), ["2k25", "2k22", "2k19", "2k16"]);
  assertEquals(dirs(6, 0, 6002, "Client"), []);
});

Deno.test("virtio-win is found through VIRTIO_WIN, VIRTIO_WIN_DIR or not at all", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-virtio-win-test-" });
  try {
    await makeVirtioWinTree(`${dir}/tree`, { only: ["w10"] });
    const env = (vars: Record<string, string>) => (n: string) => vars[n];
    const tree = { kind: "dir", path: `${dir}/tree` };
    assertEquals(locateVirtioWin(env({ VIRTIO_WIN: `${dir}/tree` })), tree);
    assertEquals(locateVirtioWin(env({ VIRTIO_WIN_DIR: `${dir}/tree` })), tree);
    // Nothing given and nothing installed: no drivers (the conversion then falls back).
    assertEquals(locateVirtioWin(env({}), `${dir}/nothing-here`), undefined);
    if (!(await Deno.stat("/usr/share/virtio-win").catch(() => undefined))) {
      assertEquals(locateVirtioWin(env({})), undefined);
    }
    // Given but wrong: an error, not a silent fallback.
    assertThrows(
      () => locateVirtioWin(env({ VIRTIO_WIN: `${dir}/nope` })),
      Error,
      `Cannot use VIRTIO_WIN "${dir}/nope": `,
    );
    await Deno.writeTextFile(`${dir}/virtio-win.iso`, "not really");
    assertThrows(
      () => locateVirtioWin(env({ VIRTIO_WIN: `${dir}/virtio-win.iso` })),
      Error,
      `Cannot use VIRTIO_WIN "${dir}/virtio-win.iso": not an ISO 9660 image`,
    );
    await Deno.writeTextFile(`${dir}/empty.iso`, "");
    assertThrows(
      () => locateVirtioWin(env({ VIRTIO_WIN: `${dir}/empty.iso` })),
      Error,
      `Cannot use VIRTIO_WIN "${dir}/empty.iso": the file is empty`,
    );
    // An ISO: its volume descriptor is checked, the file is not opened for writing.
    const iso = await guestImage("phony-virtio-win-iso");
    assertEquals(locateVirtioWin(env({ VIRTIO_WIN: iso })), { kind: "iso", path: iso });
    // Installed: the ISO in the install directory first, as virt-v2v does, then the directory.
    const installed = `${dir}/installed`;
    await makeVirtioWinTree(installed, { only: ["w10"] });
    assertEquals(locateVirtioWin(env({}), installed), { kind: "dir", path: installed });
    await Deno.copyFile(iso, `${installed}/virtio-win.iso`);
    assertEquals(locateVirtioWin(env({}), installed), {
      kind: "iso",
      path: `${installed}/virtio-win.iso`,
    });
    // ... and a broken installed ISO is an error naming it.
    await Deno.writeTextFile(`${installed}/virtio-win.iso`, "");
    assertThrows(
      () => locateVirtioWin(env({}), installed),
      Error,
      `Cannot use virtio-win "${installed}/virtio-win.iso": the file is empty`,
    );
    // The phony tree has the real layout and names.
    assert((await Deno.stat(`${dir}/tree/viostor/w10/amd64/viostor.sys`)).isFile);
    assert((await Deno.stat(`${dir}/tree/NetKVM/w10/x86/netkvm.inf`)).isFile);
    assert((await Deno.stat(`${dir}/tree/guest-agent/qemu-ga-x86_64.msi`)).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--mac MAC:ip: parses as virt-v2v spells it; other forms pass, bad ones fail", () => {
  assertEquals(parseMacIp("52:54:00:AA:bb:cc:ip:10.0.0.5,10.0.0.1,16,10.0.0.2,10.0.0.3"), {
    mac: "52:54:00:aa:bb:cc",
    address: "10.0.0.5",
    gateway: "10.0.0.1",
    prefix: 16,
    dns: ["10.0.0.2", "10.0.0.3"],
  });
  assertEquals(parseMacIp("52:54:00:aa:bb:cc:ip:10.0.0.5"), {
    mac: "52:54:00:aa:bb:cc",
    address: "10.0.0.5",
    gateway: "",
    prefix: 24,
    dns: [],
  });
  assertEquals(parseMacIp("52:54:00:aa:bb:cc:network:default"), undefined);
  assertThrows(() => parseMacIp("52:54:00:aa:bb:ip:10.0.0.5"), RangeError, "Bad --mac");
  assertThrows(() => parseMacIp("52:54:00:aa:bb:cc:ip:10.0.0.5,,33"), RangeError, "prefix length");
  assertThrows(() => parseMacIp("52:54:00:aa:bb:cc:ip:host,10.0.0.1"), RangeError, "IPv4");
  const base = ["-i", "disk", "g.img", "-o", "null"];
  const cli = parseCli([...base, "--mac", "52:54:00:aa:bb:cc:ip:10.0.0.5,10.0.0.1,24"]);
  assertEquals(cli.staticIps.map((s) => s.address), ["10.0.0.5"]);
  assertThrows(() => parseCli([...base, "--mac", "nope"]), UsageError, 'Bad --mac "nope"');
});

Deno.test("an unreadable VIRTIO_WIN file is refused with its name", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-virtio-win-test-" });
  try {
    const path = `${dir}/virtio-win.iso`;
    await Deno.copyFile(await guestImage("phony-virtio-win-iso"), path);
    await Deno.chmod(path, 0o000);
    // Root reads any file: drop the capabilities that let it (the file stays root's, mode 0).
    const module = new URL("../../../src/convert/windows/virtio.ts", import.meta.url).href;
    const script = `import { locateVirtioWin } from "${module}";
      try { locateVirtioWin((n) => n === "VIRTIO_WIN" ? ${JSON.stringify(path)} : undefined); }
      catch (e) { console.log(e.message); }`;
    const cmd = Deno.uid() === 0
      ? ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", Deno.execPath()]
      : [Deno.execPath()];
    const r = await new Deno.Command(cmd[0]!, {
      args: [...cmd.slice(1), "eval", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(r.success, new TextDecoder().decode(r.stderr));
    assertStringIncludes(
      new TextDecoder().decode(r.stdout),
      `Cannot use VIRTIO_WIN "${path}": cannot read it (`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
