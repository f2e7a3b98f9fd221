/**
 * End to end: `-i vmx -it ssh ssh://USER@HOST:PORT/PATH/guest.vmx` against a real OpenSSH
 * server on 127.0.0.1 (`_sshd.ts`): the VMX and descriptors read over SFTP, each flat extent
 * served by nbdkit's ssh plugin. Host keys, logins, formats that only read locally, and no
 * process or file left behind.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import {
  FIXTURE_GENID,
  makeVmwareFixture,
  type VmwareFixture,
  vmwareMac,
} from "../../scripts/make_vmware_fixture.ts";
import { assertSameContent, type RunResult, Sandbox } from "./_harness.ts";
import { pidsMentioning, type Sshd, startSshd } from "./_sshd.ts";

const MiB = 1024 * 1024;

function events(stdout: string): Array<Record<string, unknown>> {
  return stdout.trim().split("\n").map((l) => JSON.parse(l));
}

/** Makes the VM's directory readable by the sshd's user (files 0644, directories 0755). */
async function shareWithSshd(fx: VmwareFixture): Promise<void> {
  await Deno.chmod(fx.dir, 0o755);
  for (const f of fx.files) await Deno.chmod(f, 0o644);
}

/**
 * A small raw image (small enough to copy through `--bandwidth 8M` in seconds): random data in
 * its first half, a hole after it.
 */
async function rawImage(path: string, size: number): Promise<string> {
  const data = new Uint8Array(size / 2);
  for (let i = 0; i < data.length; i += 65536) {
    crypto.getRandomValues(data.subarray(i, i + 65536));
  }
  await Deno.writeFile(path, data);
  await Deno.truncate(path, size);
  return path;
}

/** Raw images for the VM's disks, in the sandbox (never served). */
async function images(sb: Sandbox): Promise<[string, string]> {
  return [
    await rawImage(join(sb.work, "a.img"), 4 * MiB),
    await rawImage(join(sb.work, "b.img"), 2 * MiB),
  ];
}

/** A Sandbox and an sshd serving a VM with a monolithicFlat and an ESXi vmfs disk. */
async function withServer(
  fn: (sb: Sandbox, sshd: Sshd, fx: VmwareFixture, raw: [string, string]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-vmx-ssh-test-" });
  try {
    {
      await using sb = await Sandbox.create();
      await using sshd = await startSshd(dir);
      const raw = await images(sb);
      const fx = await makeVmwareFixture(join(sshd.dataDir, "web01"), {
        name: "web01",
        disks: [
          { image: raw[0], subformat: "monolithicFlat", bus: "scsi" },
          { image: raw[1], subformat: "vmfs", bus: "sata" },
        ],
        vcpus: 2,
        memoryMiB: 1024,
        firmware: "efi",
        nics: [{ network: "VM Network", model: "vmxnet3" }],
      });
      await shareWithSshd(fx);
      await fn(sb, sshd, fx, raw);
      await sb.assertNothingLeft();
    }
    assertEquals(await pidsMentioning(dir), [], "sshd or nbdkit processes left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function assertFailed(r: RunResult, message: string, secret?: string): void {
  assertEquals(r.code, 1, r.stderr);
  assertStringIncludes(r.stderr, message);
  if (secret) assert(!r.stderr.includes(secret) && !r.stdout.includes(secret), "secret shown");
}

Deno.test("-i vmx -it ssh: flat and vmfs disks over SFTP and nbdkit ssh, password login: identical, VM from the VMX", async () => {
  await withServer(async (sb, sshd, fx, raw) => {
    const uri = sshd.uri(fx.vmx);
    const login = ["-ip", sshd.passwordFile, "-io", `ssh-known-hosts=${sshd.knownHosts}`];

    const p = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      uri,
      ...login,
      "--print-source",
      "--machine-readable",
    ]);
    assertEquals(p.code, 0, p.stderr);
    const source = events(p.stdout).find((x) => x.type === "result")!.source;
    assertEquals(source, {
      name: "web01",
      memory: 1024 * MiB,
      vcpus: 2,
      firmware: "uefi",
      disks: [
        {
          index: 0,
          source: sshd.uri(fx.disks[0]!.path),
          virtualSize: 4 * MiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        },
        {
          index: 1,
          source: sshd.uri(fx.disks[1]!.path),
          virtualSize: 2 * MiB,
          bus: "sata",
          sourceFormat: "vmdk",
        },
      ],
      nics: [{ mac: vmwareMac(0), network: "VM Network", model: "vmxnet3" }],
      guestOs: "debian12-64",
      genid: FIXTURE_GENID.uuid,
    });
    assert(!p.stderr.includes(sshd.password), "password shown");

    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    const r = await sb.run(["-i", "vmx", "-it", "ssh", uri, ...login, "-o", "local", "-os", out]);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, `Setting up the source: -i vmx -it ssh ${uri}`);
    assert(!r.stderr.includes(sshd.password), "password shown");
    await assertSameContent(raw[0], join(out, "web01-sda"));
    await assertSameContent(raw[1], join(out, "web01-sdb"));
    const xml = await Deno.readTextFile(join(out, "web01.xml"));
    assertStringIncludes(xml, "<name>web01</name>");
    assertStringIncludes(xml, `<mac address='${vmwareMac(0)}'/>`);
  });
});

Deno.test("-i vmx -it ssh: key-file login with --bandwidth 8M, no 'no effect' warning", async () => {
  await withServer(async (sb, sshd, fx, raw) => {
    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    const started = Date.now();
    const r = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      sshd.uri(fx.vmx),
      "-io",
      `ssh-identity=${sshd.clientKey}`,
      "-io",
      `ssh-known-hosts=${sshd.knownHosts}`,
      "--bandwidth",
      "8M",
      "-o",
      "local",
      "-os",
      out,
      "-v",
    ]);
    assertEquals(r.code, 0, r.stderr);
    assert(!r.stderr.includes("no effect"), r.stderr);
    assertStringIncludes(r.stderr, "logged in by publickey");
    assertStringIncludes(r.stderr, "rate=8388608");
    assertStringIncludes(r.stderr, `known-hosts=${sb.tmp}/`);
    // 6 MiB at 1 MiB/s, of which nbdkit's rate filter lets the first 2 s' worth burst.
    assert(Date.now() - started >= 2000, `copied in ${Date.now() - started} ms`);
    await assertSameContent(raw[0], join(out, "web01-sda"));
    await assertSameContent(raw[1], join(out, "web01-sdb"));
  });
});

Deno.test("-i vmx -it ssh: a changed host key is refused, an unknown one only with the option", async () => {
  await withServer(async (sb, sshd, fx) => {
    const base = ["-i", "vmx", "-it", "ssh", sshd.uri(fx.vmx), "-ip", sshd.passwordFile];
    const changed = await sb.run([
      ...base,
      "-io",
      `ssh-known-hosts=${sshd.otherKnownHosts}`,
      "--print-source",
    ]);
    assertFailed(changed, "THE SERVER'S HOST KEY HAS CHANGED", sshd.password);
    // Not even with the option: a changed key is never accepted.
    const changedAccepted = await sb.run([
      ...base,
      "-io",
      `ssh-known-hosts=${sshd.otherKnownHosts}`,
      "-io",
      "ssh-accept-unknown-host-key=true",
      "--print-source",
    ]);
    assertFailed(changedAccepted, "THE SERVER'S HOST KEY HAS CHANGED", sshd.password);

    const empty = join(sb.work, "known_hosts");
    await Deno.writeTextFile(empty, "");
    const unknown = await sb.run([...base, "-io", `ssh-known-hosts=${empty}`, "--print-source"]);
    assertFailed(unknown, "the server's host key is not known", sshd.password);
    assertStringIncludes(unknown.stderr, sshd.hostKeyFingerprint);
    assertStringIncludes(unknown.stderr, "-io ssh-accept-unknown-host-key=true");

    // Accepted for the run: nbdkit gets the key the session accepted, and the copy works.
    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    const accepted = await sb.run([
      ...base,
      "-io",
      `ssh-known-hosts=${empty}`,
      "-io",
      "ssh-accept-unknown-host-key=true",
      "-o",
      "local",
      "-os",
      out,
    ]);
    assertEquals(accepted.code, 0, accepted.stderr);
    assertStringIncludes(accepted.stderr, sshd.hostKeyFingerprint);
    assertEquals(await Deno.readTextFile(empty), "", "the user's known_hosts file was modified");
  });
});

Deno.test("-i vmx -it ssh: a wrong password fails clearly without showing it", async () => {
  await withServer(async (sb, sshd, fx) => {
    const wrong = join(sb.work, "wrong-password");
    const secret = "not-the-password-7f3a9c";
    await Deno.writeTextFile(wrong, secret, { mode: 0o600 });
    const r = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      sshd.uri(fx.vmx),
      "-ip",
      wrong,
      "-io",
      `ssh-known-hosts=${sshd.knownHosts}`,
      "-o",
      "null",
    ]);
    assertFailed(r, "authentication failed", secret);
    assert(!r.stderr.includes(sshd.password), "password shown");
  });
});

Deno.test("-i vmx -it ssh: sparse and split disks are refused with what to do; a missing disk is named", async () => {
  await withServer(async (sb, sshd, _fx, raw) => {
    const login = ["-ip", sshd.passwordFile, "-io", `ssh-known-hosts=${sshd.knownHosts}`];
    const sparse = await makeVmwareFixture(join(sshd.dataDir, "sparse"), {
      name: "sparse",
      disks: [{ image: raw[0], subformat: "monolithicSparse" }],
    });
    await shareWithSshd(sparse);
    const r = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      sshd.uri(sparse.vmx),
      ...login,
      "-o",
      "null",
    ]);
    assertFailed(
      r,
      `Cannot read "${sshd.uri(sparse.disks[0]!.path)}" over SSH: monolithicSparse disks can ` +
        "only be read locally; copy the VM's directory to this host and use -i vmx FILE.vmx, " +
        "or convert the disk to a flat VMDK on the ESXi host (vmkfstools -i sparse.vmdk -d thin",
    );

    const stream = await makeVmwareFixture(join(sshd.dataDir, "stream"), {
      name: "stream",
      disks: [{ image: raw[1], subformat: "streamOptimized" }],
    });
    await shareWithSshd(stream);
    const s = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      sshd.uri(stream.vmx),
      ...login,
      "-o",
      "null",
    ]);
    assertFailed(s, "streamOptimized disks can only be read locally");

    // Over 2 GiB in twoGbMaxExtentFlat: two flat extent files (sparse, all zeroes).
    const big = join(sb.work, "big.img");
    await Deno.writeFile(big, new Uint8Array());
    await Deno.truncate(big, 2112 * MiB);
    const split = await makeVmwareFixture(join(sshd.dataDir, "split"), {
      name: "split",
      disks: [{ image: big, subformat: "twoGbMaxExtentFlat" }],
    });
    await shareWithSshd(split);
    const t = await sb.run([
      "-i",
      "vmx",
      "-it",
      "ssh",
      sshd.uri(split.vmx),
      ...login,
      "-o",
      "null",
    ]);
    assertFailed(
      t,
      `Cannot read "${sshd.uri(split.disks[0]!.path)}" over SSH: its data is split over 2 ` +
        "extent files (twoGbMaxExtentFlat), and only a disk in one flat file can be read over SSH",
    );

    // A disk whose flat extent is gone: named by its ssh:// URI, "no such file".
    const gone = await makeVmwareFixture(join(sshd.dataDir, "gone"), {
      name: "gone",
      disks: [{ image: raw[1], subformat: "monolithicFlat" }],
    });
    await shareWithSshd(gone);
    const flat = gone.disks[0]!.files.find((f) => f.endsWith("-flat.vmdk"))!;
    await Deno.remove(flat);
    const g = await sb.run(["-i", "vmx", "-it", "ssh", sshd.uri(gone.vmx), ...login, "-o", "null"]);
    assertFailed(g, `Cannot read "${sshd.uri(flat)}": extent 1 of`);
    assertStringIncludes(g.stderr, "no such file");
  });
});

Deno.test("-i vmx -it ssh usage errors exit 2 before anything is read", async () => {
  await using sb = await Sandbox.create();
  const cases: Array<[string[], string]> = [
    [["-i", "vmx", "-it", "ssh", "g.vmx", "-o", "null"], "needs the VMX as an ssh:// URI"],
    [
      ["-i", "vmx", "-it", "ssh", "-ic", "ssh://root@esxi", "/g.vmx", "-o", "null"],
      "-i vmx -it ssh does not take -ic",
    ],
    [["-i", "vmx", "-it", "ssh", "ssh://root:pw@esxi/g.vmx", "-o", "null"], "-ip FILE"],
    [
      ["-i", "vmx", "-it", "ssh", "ssh://root@esxi/g.vmx", "-io", "x=y", "-o", "null"],
      'takes only the ssh-* -io options, got "x"',
    ],
  ];
  for (const [args, message] of cases) {
    const r = await sb.run(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, message);
  }
  await sb.assertNothingLeft();
});
