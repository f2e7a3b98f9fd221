/**
 * Tests of the QEMU script generator: the shell quoting, the QEMU arguments the script passes
 * (through a fake QEMU that prints its argv), and real QEMU started paused under TCG from the
 * script, inspected through QMP.
 */

import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../_assert.ts";
import { CommandError, run, startServer } from "../../src/process.ts";
import {
  OVMF_DIR,
  qemuScript,
  qemuValue,
  shellQuote,
  type TargetDisk,
} from "../../src/output/qemu_script.ts";
import { TempDir } from "../../src/tmpdir.ts";
import type { Vm } from "../../src/vm.ts";

const TRICKY = [
  "",
  "plain",
  "with space",
  "it's",
  "''",
  "'",
  "a'b'c",
  `"double"`,
  "$HOME",
  "${HOME:-x}",
  "`id`",
  "$(id)",
  "back\\slash\\",
  "new\nline",
  "tab\tx",
  "*",
  "~",
  "-n",
  "; rm -rf / #",
  "a|b&c>d<e",
  "ünï 日本 😀",
  "!event",
];

/** A name with everything a shell or QEMU's option parser could trip over. */
const HOSTILE = `it's "x" $HOME \`id\` $(id), a,,b \\ !`;

function vmWith(overrides: Partial<Vm> = {}, diskCount = 1): Vm {
  return {
    name: "guest",
    memory: 256 * 1024 ** 2,
    vcpus: 2,
    disks: Array.from({ length: diskCount }, (_, index) => ({
      index,
      source: `[ds1] guest/guest_${index}.vmdk`,
      virtualSize: 64 * 1024 ** 2,
    })),
    nics: [{ mac: "52:54:00:12:34:56", network: "VM Network" }],
    ...overrides,
  };
}

function targets(count: number): TargetDisk[] {
  return Array.from({ length: count }, (_, i) => ({ path: `/vms/g-${i}`, format: "qcow2" }));
}

/** Writes the script into `dir` and returns its path. */
async function writeScript(dir: TempDir, script: string): Promise<string> {
  const path = dir.join(`vm-${crypto.randomUUID()}.sh`);
  await Deno.writeTextFile(path, script, { mode: 0o755 });
  return path;
}

/**
 * Runs the script with a fake QEMU that prints its arguments NUL-separated, and returns them.
 */
async function fakeArgv(
  dir: TempDir,
  script: string,
  env: Record<string, string> = {},
  args: string[] = [],
): Promise<string[]> {
  const fake = dir.join("fake-qemu");
  await Deno.writeTextFile(fake, "#!/bin/sh\nprintf '%s\\0' \"$@\"\n", { mode: 0o755 });
  const out = await run("sh", [await writeScript(dir, script), ...args], {
    env: { QEMU: fake, ...env },
  });
  assert(out.endsWith("\0"), JSON.stringify(out));
  return out.slice(0, -1).split("\0");
}

/** The value following each occurrence of an option. */
function values(argv: string[], option: string): string[] {
  return argv.flatMap((a, i) => (a === option ? [argv[i + 1]!] : []));
}

Deno.test("shellQuote makes every string one shell word, unchanged", async () => {
  for (const value of TRICKY) {
    const out = await run("sh", ["-c", `printf '%s' ${shellQuote(value)}`]);
    assertEquals(out, value, JSON.stringify(value));
    // And as the only word: no word splitting, no globbing, no tilde expansion.
    const count = await run("sh", ["-c", `set -- ${shellQuote(value)}; printf '%s' "$#"`]);
    assertEquals(count, "1", JSON.stringify(value));
  }
  assertEquals(shellQuote("it's"), `'it'\\''s'`);
  assertThrows(() => shellQuote("nul\0"), TypeError, "NUL");
});

Deno.test("qemuValue doubles commas", () => {
  assertEquals(qemuValue("/a,b,,c"), "/a,,b,,,,c");
  assertEquals(qemuValue("plain"), "plain");
});

Deno.test("QEMU script is valid sh and ends by passing its arguments on", async () => {
  await using dir = await TempDir.create();
  for (
    const vm of [
      vmWith(),
      vmWith({ firmware: "uefi", secureBoot: true, name: HOSTILE }),
      vmWith({ nics: [] }, 0),
    ]
  ) {
    const script = qemuScript(vm, targets(vm.disks.length));
    assert(script.startsWith("#!/bin/sh"), script);
    await run("sh", ["-n", await writeScript(dir, script)]);
    assert(script.trimEnd().endsWith('"$@"'), script);
  }
  // A newline in the name neither ends a comment line nor splits an argument.
  const name = "a\n; echo pwned\nb";
  const firmware = dir.join("firmware.fd");
  await Deno.writeTextFile(firmware, "");
  const argv = await fakeArgv(
    dir,
    qemuScript(vmWith({ name, firmware: "uefi" }), targets(1)),
    { OVMF_CODE: firmware, OVMF_VARS: firmware },
  );
  assertEquals(values(argv, "-name"), [`guest=${name}`]);
  assertEquals(argv.filter((a) => a.includes("; echo")), [`guest=${name}`]);
});

Deno.test("QEMU script passes the VM's configuration to QEMU", async () => {
  await using dir = await TempDir.create();
  const vm = vmWith({
    name: HOSTILE,
    memory: 3 * 1024 ** 3 + 1, // rounded up to whole MiB
    vcpus: 4,
    cpuTopology: { sockets: 2, cores: 2, threads: 1 },
    nics: [{ mac: "52:54:00:AA:BB:CC" }, {}],
  }, 2);
  const disks: TargetDisk[] = [
    { path: `/vms/${HOSTILE}/disk-a`, format: "qcow2" },
    { path: "/vms/disk-b", format: "raw" },
  ];
  const argv = await fakeArgv(dir, qemuScript(vm, disks), { QEMU_ACCEL: "tcg" }, [
    "-snapshot",
    "extra arg",
  ]);

  assertEquals(values(argv, "-name"), [`guest=${qemuValue(HOSTILE)}`]);
  assertEquals(values(argv, "-machine"), ["q35,accel=tcg"]);
  assertEquals(values(argv, "-cpu"), ["max"]);
  assertEquals(values(argv, "-m"), ["3073"]);
  assertEquals(values(argv, "-smp"), ["cpus=4,sockets=2,cores=2,threads=1"]);
  assertEquals(values(argv, "-rtc"), ["base=utc"]);
  assertEquals(values(argv, "-drive"), [
    `file=/vms/${qemuValue(HOSTILE)}/disk-a,format=qcow2,if=none,id=drive-vda,cache=none,` +
    "discard=unmap",
    "file=/vms/disk-b,format=raw,if=none,id=drive-vdb,cache=none,discard=unmap",
  ]);
  assertEquals(values(argv, "-netdev"), ["user,id=net0", "user,id=net1"]);
  assertEquals(values(argv, "-device"), [
    "virtio-blk-pci,drive=drive-vda,id=vda,bootindex=1",
    "virtio-blk-pci,drive=drive-vdb,id=vdb",
    "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:aa:bb:cc",
    "virtio-net-pci,netdev=net1,id=nic1",
    "virtio-rng-pci,rng=rng0",
    "virtio-balloon-pci",
    "qemu-xhci,id=usb",
    "usb-tablet,bus=usb.0",
    "VGA",
  ]);
  assertEquals(values(argv, "-object"), ["rng-random,filename=/dev/urandom,id=rng0"]);
  assertEquals(values(argv, "-display"), ["none"]);
  assertEquals(values(argv, "-serial"), ["stdio"]);
  assertEquals(argv.slice(-2), ["-snapshot", "extra arg"]);
});

Deno.test("QEMU script uses -cpu host only when KVM is tried first and usable", async () => {
  await using dir = await TempDir.create();
  const script = qemuScript(vmWith(), targets(1));
  const kvmUsable = await Deno.open("/dev/kvm", { read: true, write: true })
    .then((f) => (f.close(), true), () => false);

  const byDefault = await fakeArgv(dir, script);
  assertEquals(values(byDefault, "-machine"), ["q35,accel=kvm:tcg"]);
  assertEquals(values(byDefault, "-cpu"), [kvmUsable ? "host" : "max"]);

  const tcg = await fakeArgv(dir, script, { QEMU_ACCEL: "tcg" });
  assertEquals(values(tcg, "-machine"), ["q35,accel=tcg"]);
  assertEquals(values(tcg, "-cpu"), ["max"]);

  const tcgFirst = await fakeArgv(dir, script, { QEMU_ACCEL: "tcg:kvm" });
  assertEquals(values(tcgFirst, "-cpu"), ["max"]);
});

Deno.test("QEMU script without virtio uses SATA disks and e1000 NICs", async () => {
  await using dir = await TempDir.create();
  const vm = vmWith({ guestOs: "windows9-64" }, 8);
  const argv = await fakeArgv(dir, qemuScript(vm, targets(8), { virtio: false }), {
    QEMU_ACCEL: "tcg",
  });
  const devices = values(argv, "-device");
  assertEquals(devices.filter((d) => d.includes("virtio")), []);
  assertEquals(values(argv, "-object"), []);
  assertEquals(devices.slice(0, 10), [
    "ide-hd,drive=drive-sda,bus=ide.0,id=sda,bootindex=1",
    "ide-hd,drive=drive-sdb,bus=ide.1,id=sdb",
    "ide-hd,drive=drive-sdc,bus=ide.2,id=sdc",
    "ide-hd,drive=drive-sdd,bus=ide.3,id=sdd",
    "ide-hd,drive=drive-sde,bus=ide.4,id=sde",
    "ide-hd,drive=drive-sdf,bus=ide.5,id=sdf",
    "ahci,id=sata1",
    "ide-hd,drive=drive-sdg,bus=sata1.0,id=sdg",
    "ide-hd,drive=drive-sdh,bus=sata1.1,id=sdh",
    "e1000,netdev=net0,id=nic0,mac=52:54:00:12:34:56",
  ]);
  assertEquals(values(argv, "-rtc"), ["base=localtime,driftfix=slew"]);
});

Deno.test("QEMU script can put disks on virtio and NICs on e1000 (no netkvm for the guest)", async () => {
  await using dir = await TempDir.create();
  const vm = vmWith({ guestOs: "windows9-64" }, 1);
  const argv = await fakeArgv(dir, qemuScript(vm, targets(1), { nic: "e1000" }), {
    QEMU_ACCEL: "tcg",
  });
  const devices = values(argv, "-device");
  assert(devices.some((d) => d.startsWith("virtio-blk-pci,")), devices.join(" "));
  assert(devices.some((d) => d.startsWith("e1000,netdev=net0,")), devices.join(" "));
  assertEquals(devices.filter((d) => d.startsWith("virtio-net-pci")), []);
});

Deno.test("QEMU script boots UEFI guests from OVMF with their own variable store", async () => {
  await using dir = await TempDir.create();
  const code = dir.join("code, 1.fd");
  const template = dir.join("vars.fd");
  await Deno.writeTextFile(code, "code");
  await Deno.writeTextFile(template, "vars");
  const env = { QEMU_ACCEL: "tcg", OVMF_CODE: code, OVMF_VARS: template };

  const bios = await fakeArgv(dir, qemuScript(vmWith({ name: "web/01" }), targets(1)), env);
  assertEquals(values(bios, "-drive").filter((d) => d.startsWith("if=pflash")), []);
  assertEquals(values(bios, "-machine"), ["q35,accel=tcg"]);

  const script = qemuScript(vmWith({ name: "web/01", firmware: "uefi" }), targets(1));
  const argv = await fakeArgv(dir, script, env);
  const vars = dir.join("web_01_VARS.fd");
  assertEquals(values(argv, "-drive").slice(0, 2), [
    `if=pflash,format=raw,unit=0,readonly=on,file=${qemuValue(code)}`,
    `if=pflash,format=raw,unit=1,file=${vars}`,
  ]);
  assertEquals(values(argv, "-machine"), ["q35,accel=tcg"]);
  assertEquals(values(argv, "-global"), []);
  assertEquals(await Deno.readTextFile(vars), "vars", "the template is copied beside the script");
  // A second run keeps the VM's variables.
  await Deno.writeTextFile(vars, "changed by the guest");
  await fakeArgv(dir, script, env);
  assertEquals(await Deno.readTextFile(vars), "changed by the guest");

  // UEFI_VARS puts them elsewhere.
  const elsewhere = dir.join("elsewhere.fd");
  const moved = await fakeArgv(dir, script, { ...env, UEFI_VARS: elsewhere });
  assertEquals(values(moved, "-drive")[1], `if=pflash,format=raw,unit=1,file=${elsewhere}`);

  // Secure boot: Debian's secure boot build with Microsoft's keys, SMM, secure flash.
  const secure = qemuScript(vmWith({ firmware: "uefi", secureBoot: true }), targets(1));
  assertStringIncludes(secure, `${OVMF_DIR}/OVMF_CODE_4M.secboot.fd`);
  assertStringIncludes(secure, `${OVMF_DIR}/OVMF_VARS_4M.ms.fd`);
  const secureArgv = await fakeArgv(dir, secure, env);
  assertEquals(values(secureArgv, "-machine"), ["q35,smm=on,accel=tcg"]);
  assertEquals(values(secureArgv, "-global"), ["driver=cfi.pflash01,property=secure,value=on"]);
});

Deno.test("QEMU script says which UEFI firmware is missing", async () => {
  await using dir = await TempDir.create();
  const script = await writeScript(
    dir,
    qemuScript(vmWith({ name: HOSTILE, firmware: "uefi" }), targets(1)),
  );
  const missing = dir.join("no such dir/OVMF_CODE.fd");
  const e = await assertRejects(
    () => run("sh", [script], { env: { OVMF_CODE: missing, QEMU: "false" } }),
    CommandError,
  );
  assertEquals(e.code, 1);
  assertStringIncludes(
    e.stderr,
    `Cannot start VM ${JSON.stringify(HOSTILE)}: UEFI firmware "${missing}" not found`,
  );
  assertStringIncludes(e.stderr, "apt-get install ovmf");
});

Deno.test("QEMU script starts QEMU with the disks and NICs it describes", async () => {
  await using dir = await TempDir.create();
  // The disk lives where a careless script would break: quotes, $, backticks, comma.
  const diskDir = dir.join(HOSTILE);
  await Deno.mkdir(diskDir);
  const disk = `${diskDir}/guest-sda.qcow2`;
  await run("qemu-img", ["create", "-q", "-f", "qcow2", disk, "64M"]);
  const vm = vmWith({
    name: HOSTILE,
    vcpus: 2,
    cpuTopology: { sockets: 1, cores: 2, threads: 1 },
    nics: [{ mac: "52:54:00:ab:cd:ef" }],
  });
  const script = await writeScript(dir, qemuScript(vm, [{ path: disk, format: "qcow2" }]));

  await using qemu = await startQemu(dir, script);
  using qmp = await Qmp.connect(qemu.socket);

  assertEquals(await qmp.execute("query-name"), { name: HOSTILE });
  assertEquals(await qmp.execute("query-kvm"), { enabled: false, present: true }, "TCG");
  const status = await qmp.execute("query-status") as { status: string };
  assertEquals(status.status, "prelaunch", "-S from the script's arguments");
  const cpus = await qmp.execute("query-cpus-fast") as Array<{ "qom-path": string }>;
  assertEquals(cpus.length, 2);
  assertEquals(await qomGet(qmp, cpus[0]!["qom-path"], "type"), "max-x86_64-cpu");
  const memory = await qmp.execute("query-memory-size-summary") as { "base-memory": number };
  assertEquals(memory["base-memory"], vm.memory);

  const blocks = await qmp.execute("query-block") as Array<
    { device: string; inserted?: { file: string; drv: string; cache: { direct: boolean } } }
  >;
  const vda = blocks.find((b) => b.device === "drive-vda");
  assertEquals(vda?.inserted?.file, disk);
  assertEquals(vda?.inserted?.drv, "qcow2");
  assertEquals(vda?.inserted?.cache.direct, true, "cache=none");

  assertEquals(await qomGet(qmp, "/machine/peripheral/vda", "type"), "virtio-blk-pci");
  assertEquals(await qomGet(qmp, "/machine/peripheral/vda", "drive"), "drive-vda");
  assertEquals(await qomGet(qmp, "/machine/peripheral/vda", "bootindex"), 1);
  assertEquals(await qomGet(qmp, "/machine/peripheral/nic0", "type"), "virtio-net-pci");
  assertEquals(await qomGet(qmp, "/machine/peripheral/nic0", "mac"), "52:54:00:ab:cd:ef");

  // Both sit on the PCI bus, next to the RNG and balloon (vendor 0x1af4: virtio).
  const buses = await qmp.execute("query-pci") as Array<
    { devices: Array<{ qdev_id: string; id: { vendor: number } }> }
  >;
  const pci = buses.flatMap((b) => b.devices);
  const virtio = pci.filter((d) => d.id.vendor === 0x1af4);
  assertEquals(virtio.length, 4, JSON.stringify(pci));
  assert(pci.some((d) => d.qdev_id === "vda"), JSON.stringify(pci));
  assert(pci.some((d) => d.qdev_id === "nic0"), JSON.stringify(pci));

  await qmp.quit();
  assertEquals((await qemu.status).code, 0);
});

Deno.test("QEMU script without virtio starts QEMU with SATA disks and e1000 NICs", async () => {
  await using dir = await TempDir.create();
  // Seven disks: six on q35's own AHCI controller, the seventh on one the script adds.
  const disks: TargetDisk[] = [];
  for (let i = 0; i < 7; i++) {
    const path = dir.join(`guest-${i}.qcow2`);
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "16M"]);
    disks.push({ path, format: "qcow2" });
  }
  const vm = vmWith({ nics: [{ mac: "52:54:00:00:00:01" }] }, 7);
  const script = await writeScript(dir, qemuScript(vm, disks, { virtio: false }));

  await using qemu = await startQemu(dir, script);
  using qmp = await Qmp.connect(qemu.socket);
  for (const [i, dev] of ["sda", "sdf", "sdg"].map((d) => [d.charCodeAt(2) - 97, d] as const)) {
    assertEquals(await qomGet(qmp, `/machine/peripheral/${dev}`, "type"), "ide-hd");
    assertEquals(await qomGet(qmp, `/machine/peripheral/${dev}`, "drive"), `drive-${dev}`);
    const blocks = await qmp.execute("query-block") as Array<
      { device: string; inserted?: { file: string } }
    >;
    assertEquals(blocks.find((b) => b.device === `drive-${dev}`)?.inserted?.file, disks[i]!.path);
  }
  assertEquals(await qomGet(qmp, "/machine/peripheral/sda", "bootindex"), 1);
  assertEquals(await qomGet(qmp, "/machine/peripheral/sata1", "type"), "ich9-ahci");
  assertEquals(await qomGet(qmp, "/machine/peripheral/nic0", "type"), "e1000");
  assertEquals(await qomGet(qmp, "/machine/peripheral/nic0", "mac"), "52:54:00:00:00:01");
  const buses = await qmp.execute("query-pci") as Array<
    { devices: Array<{ id: { vendor: number } }> }
  >;
  assertEquals(buses.flatMap((b) => b.devices).filter((d) => d.id.vendor === 0x1af4), []);
  await qmp.quit();
  assertEquals((await qemu.status).code, 0);
});

Deno.test({
  name: "QEMU script starts secure boot UEFI guests on OVMF",
  ignore: !ovmfInstalled(),
  async fn() {
    await using dir = await TempDir.create();
    const disk = dir.join("guest-sda.raw");
    await run("qemu-img", ["create", "-q", "-f", "raw", disk, "64M"]);
    const vm = vmWith({ name: "uefi guest", firmware: "uefi", secureBoot: true, nics: [] });
    const script = await writeScript(dir, qemuScript(vm, [{ path: disk, format: "raw" }]));

    await using qemu = await startQemu(dir, script);
    using qmp = await Qmp.connect(qemu.socket);
    const blocks = await qmp.execute("query-block") as Array<
      { device: string; inserted?: { file: string; ro: boolean } }
    >;
    const flash = Object.fromEntries(blocks.map((b) => [b.device, b.inserted]));
    assertEquals(flash["pflash0"]?.file, `${OVMF_DIR}/OVMF_CODE_4M.secboot.fd`);
    assertEquals(flash["pflash0"]?.ro, true);
    assertEquals(flash["pflash1"]?.file, dir.join("uefi_guest_VARS.fd"));
    assertEquals(flash["pflash1"]?.ro, false);
    assertEquals(await qomGet(qmp, "/machine", "smm"), "on");
    await qmp.quit();
    assertEquals((await qemu.status).code, 0);
  },
});

function ovmfInstalled(): boolean {
  try {
    Deno.statSync(`${OVMF_DIR}/OVMF_CODE_4M.secboot.fd`);
    return true;
  } catch {
    return false;
  }
}

/** Runs the script under TCG, paused (`-S`), with a QMP socket; dispose to stop QEMU. */
function startQemu(dir: TempDir, script: string) {
  const socket = dir.join("qmp.sock");
  return startServer("sh", [script, "-S", "-qmp", `unix:${socket},server=on,wait=off`], {
    socket,
    env: { QEMU_ACCEL: "tcg" },
    dieWithParent: true,
    name: "qemu (from the generated script)",
    timeoutMs: 15_000,
  });
}

async function qomGet(qmp: Qmp, path: string, property: string): Promise<unknown> {
  return await qmp.execute("qom-get", { path, property });
}

/** A minimal QMP client: one command at a time, events skipped. */
class Qmp implements Disposable {
  #conn: Deno.UnixConn;
  #buffer = "";
  #decoder = new TextDecoder();

  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
  }

  static async connect(path: string): Promise<Qmp> {
    const qmp = new Qmp(await Deno.connect({ transport: "unix", path }));
    try {
      const greeting = await qmp.#read();
      assert("QMP" in greeting, JSON.stringify(greeting));
      await qmp.execute("qmp_capabilities");
      return qmp;
    } catch (e) {
      qmp[Symbol.dispose]();
      throw e;
    }
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const message = JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) });
    const bytes = new TextEncoder().encode(message + "\n");
    for (let done = 0; done < bytes.length;) done += await this.#conn.write(bytes.subarray(done));
    while (true) {
      const reply = await this.#read();
      if ("event" in reply) continue;
      if ("error" in reply) {
        throw new Error(`QMP command "${command}" failed: ${JSON.stringify(reply.error)}`);
      }
      return reply.return;
    }
  }

  /** Asks QEMU to quit; it may close the connection before it answers. */
  async quit(): Promise<void> {
    await this.execute("quit").catch(() => {});
  }

  async #read(): Promise<Record<string, unknown>> {
    const chunk = new Uint8Array(65536);
    while (true) {
      const newline = this.#buffer.indexOf("\n");
      if (newline >= 0) {
        const line = this.#buffer.slice(0, newline);
        this.#buffer = this.#buffer.slice(newline + 1);
        return JSON.parse(line);
      }
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error("QMP connection closed");
      this.#buffer += this.#decoder.decode(chunk.subarray(0, n), { stream: true });
    }
  }

  [Symbol.dispose](): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}
