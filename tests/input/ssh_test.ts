import { join } from "node:path";
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../_assert.ts";
import { UsageError } from "../../src/errors.ts";
import { NbdClient } from "../../src/nbd/client.ts";
import { liveCount, run } from "../../src/process.ts";
import {
  formatSshUri,
  HostKeyError,
  openSsh,
  parseSshUri,
  sshInputOptions,
} from "../../src/input/ssh.ts";
import { serveSshDisk, sshDiskArgs } from "../../src/input/ssh_disk.ts";
import { pidsMentioning, type Sshd, startSshAgent, startSshd } from "../integration/_sshd.ts";

Deno.test("parseSshUri takes user, host, port and a percent-decoded path", () => {
  assertEquals(parseSshUri("ssh://root@esxi.lab:2222/vmfs/volumes/ds1/g%20x/g.vmx"), {
    user: "root",
    host: "esxi.lab",
    port: 2222,
    path: "/vmfs/volumes/ds1/g x/g.vmx",
  });
  assertEquals(parseSshUri("ssh://u@[::1]/a").host, "::1");
  assertEquals(parseSshUri("ssh://u@h/~/g.vmx").path, "g.vmx");
  assertEquals(formatSshUri(parseSshUri("ssh://u@h:22/a b")), "ssh://u@h");
  assertEquals(formatSshUri(parseSshUri("ssh://u@h:2222/x"), "/a b"), "ssh://u@h:2222/a%20b");
});

Deno.test("parseSshUri refuses a password in the URI without repeating it", () => {
  const e = assertThrows(() => parseSshUri("ssh://root:hunter2@esxi/x.vmx"), UsageError);
  assert(!e.message.includes("hunter2"), e.message);
  assertStringIncludes(e.message, "-ip FILE");
  assertThrows(() => parseSshUri("http://esxi/x"), UsageError, "expected ssh://");
  assertThrows(() => parseSshUri("ssh://esxi/"), UsageError, "no path");
});

Deno.test("sshInputOptions takes the ssh -io options and leaves the others", () => {
  const { ssh, rest } = sshInputOptions({
    mode: "vmx",
    args: [],
    passwordFile: "pw.txt",
    options: [
      ["ssh-accept-unknown-host-key", "true"],
      ["ssh-known-hosts", "/k"],
      ["ssh-identity", "/id"],
      ["vddk-thumbprint", "x"],
    ],
  });
  assertEquals(ssh.acceptUnknownHostKey, true);
  assertEquals(ssh.knownHosts, "/k");
  assertEquals(ssh.identity, "/id");
  assert(ssh.passwordFile?.endsWith("/pw.txt"));
  assertEquals(rest, [["vddk-thumbprint", "x"]]);
  assertThrows(
    () =>
      sshInputOptions({ mode: "vmx", args: [], options: [["ssh-accept-unknown-host-key", "y?"]] }),
    UsageError,
    "expected true or false",
  );
});

Deno.test("the nbdkit ssh command: rate outermost, retry next to the plugin, secrets by file", () => {
  const args = sshDiskArgs("ssh://root@esxi:2222/vmfs/volumes/ds/g/g-flat.vmdk", "/run/s.sock", {
    knownHosts: "/run/kh",
    identity: "/keys/%id",
    passwordFile: "/run/pw",
    bandwidth: 10_000_000,
    bandwidthFile: "/run/rate",
  });
  assertEquals(args, [
    "--foreground",
    "--exit-with-parent",
    "--unix",
    "/run/s.sock",
    "--readonly",
    "--filter=rate",
    "--filter=retry",
    "ssh",
    "host=esxi",
    "port=2222",
    "user=root",
    "path=/vmfs/volumes/ds/g/g-flat.vmdk",
    "verify-remote-host=true",
    "known-hosts=/run/kh",
    "identity=/keys/%%id",
    "password=+/run/pw",
    "rate=10000000",
    "rate-file=/run/rate",
  ]);
  const plain = sshDiskArgs("ssh://u@h/d.img", "/s");
  assertEquals(plain.filter((a) => a.startsWith("--filter")), ["--filter=retry"]);
  assert(!plain.some((a) => a.startsWith("password=")));
  // --bandwidth-file alone still turns the rate filter on.
  const fileOnly = sshDiskArgs("ssh://u@h/d.img", "/s", { bandwidthFile: "/r" });
  assertEquals(fileOnly.filter((a) => a.startsWith("--filter")), [
    "--filter=rate",
    "--filter=retry",
  ]);
});

Deno.test("ssh input against a real sshd", async (t) => {
  const before = liveCount();
  const dir = await Deno.makeTempDir({ prefix: "vmshift-ssh-test-" });
  try {
    await using sshd = await startSshd(dir);
    const data = new Uint8Array(64 * 1024 * 1024);
    for (let i = 0; i < data.length; i += 65536) {
      crypto.getRandomValues(data.subarray(i, i + 65536));
    }
    const disk = join(sshd.dataDir, "disk-flat.vmdk");
    await Deno.writeFile(disk, data, { mode: 0o644 });
    const small = join(sshd.dataDir, "guest.vmx");
    await Deno.writeTextFile(small, 'displayName = "guest"\n', { mode: 0o644 });
    const key = { identity: sshd.clientKey, knownHosts: sshd.knownHosts };

    await t.step("SFTP reads bytes at offsets and stats files (key login)", async () => {
      await using s = await openSsh(sshd.uri(disk), key);
      assertEquals(s.authMethod, "publickey");
      assertEquals(s.hostKey.fingerprint, sshd.hostKeyFingerprint);
      assertEquals(s.hostKey.status, "known");
      assertEquals(await s.stat(disk), { size: data.length, isFile: true });
      assertEquals(await s.stat(sshd.dataDir), {
        size: (await Deno.stat(sshd.dataDir)).size,
        isFile: false,
      });
      for (const [off, len] of [[0, 512], [1_000_003, 70_000], [data.length - 100, 100]]) {
        assertEquals(await s.read(disk, off!, len!), data.subarray(off!, off! + len!));
      }
      // A read past the end stops at the end of the file.
      assertEquals((await s.read(disk, data.length - 10, 100)).length, 10);
      assertEquals(s.resolve("guest.vmx"), small);
      assertEquals(
        new TextDecoder().decode(await s.readFile(s.resolve("guest.vmx"), 1024)),
        'displayName = "guest"\n',
      );
      await assertRejects(() => s.readFile(disk, 1024), Error, "more than the 1024 expected");
      await assertRejects(
        () => s.stat(join(sshd.dataDir, "nope")),
        Error,
        `Cannot open "${join(sshd.dataDir, "nope")}" on ${sshd.uri("")}: no such file`,
      );
    });

    await t.step("logs in with a password read from a file", async () => {
      await using s = await openSsh(sshd.uri(small), {
        passwordFile: sshd.passwordFile,
        knownHosts: sshd.knownHosts,
      });
      assertEquals(s.authMethod, "password");
      assertEquals((await s.stat(small)).isFile, true);
    });

    await t.step("logs in through ssh-agent, before the key and the password", async () => {
      await using agent = await startSshAgent(dir, [sshd.clientKey]);
      await using s = await openSsh(sshd.uri(small), {
        agent: agent.socket,
        identity: sshd.clientKey,
        passwordFile: sshd.passwordFile,
        knownHosts: sshd.knownHosts,
      });
      assertEquals(s.authMethod, "agent");
    });

    await t.step("a wrong password is refused with a clean message", async () => {
      const bad = join(dir, "bad-password");
      await Deno.writeTextFile(bad, "wrong-Secret-4711\n", { mode: 0o600 });
      const e = await assertRejects(() =>
        openSsh(sshd.uri(small), { passwordFile: bad, knownHosts: sshd.knownHosts })
      );
      assertStringIncludes(
        e.message,
        `Cannot log in to ssh://vmshift-test@127.0.0.1:${sshd.port}: authentication failed`,
      );
      assert(!e.message.includes("wrong-Secret"), e.message);
      assert(!e.message.includes(sshd.password), e.message);
    });

    await t.step("a server that takes no passwords says so", async () => {
      const keyOnlyDir = join(dir, "key-only");
      await Deno.mkdir(keyOnlyDir);
      await using keyOnly = await startSshd(keyOnlyDir, {
        config: ["PasswordAuthentication no"],
      });
      const e = await assertRejects(() =>
        openSsh(keyOnly.uri(small), {
          passwordFile: keyOnly.passwordFile,
          knownHosts: keyOnly.knownHosts,
        })
      );
      assertStringIncludes(
        e.message,
        `Cannot log in to ssh://vmshift-test@127.0.0.1:${keyOnly.port}: authentication failed`,
      );
      assertStringIncludes(e.message, "the server takes only publickey, not password from");
      assert(!e.message.includes(keyOnly.password), e.message);
    });

    await t.step("an unknown host key is refused, and accepted with the option", async () => {
      const empty = join(dir, "empty_known_hosts");
      await Deno.writeTextFile(empty, "");
      const e = await assertRejects(
        () => openSsh(sshd.uri(small), { ...key, knownHosts: empty }),
        HostKeyError,
      );
      assertEquals(e.status, "unknown");
      assertStringIncludes(e.message, sshd.hostKeyFingerprint);
      assertStringIncludes(e.message, "-io ssh-accept-unknown-host-key=true");
      assertStringIncludes(e.message, `ssh-keyscan -p ${sshd.port} -t ed25519 127.0.0.1`);
      const warnings: string[] = [];
      await using s = await openSsh(sshd.uri(small), {
        ...key,
        knownHosts: empty,
        acceptUnknownHostKey: true,
        warning: (m) => warnings.push(m),
      });
      assertEquals(s.hostKey.status, "accepted");
      assertStringIncludes(warnings.join("\n"), sshd.hostKeyFingerprint);
    });

    await t.step(
      "the ssh-keyscan the message suggests makes the key known, hashed or not",
      async () => {
        for (const hashed of [false, true]) {
          const file = join(dir, `scanned${hashed ? "-hashed" : ""}`);
          const scan = await run("ssh-keyscan", [
            ...(hashed ? ["-H"] : []),
            "-p",
            String(sshd.port),
            "-t",
            "ed25519",
            "127.0.0.1",
          ]);
          await Deno.writeTextFile(file, scan);
          assertEquals(scan.startsWith("|1|"), hashed);
          await using s = await openSsh(sshd.uri(small), { ...key, knownHosts: file });
          assertEquals(s.hostKey.status, "known");
        }
      },
    );

    await t.step("a known_hosts with only the RSA key gets the RSA key checked", async () => {
      const rsaOnly = join(dir, "rsa_known_hosts");
      const lines = (await Deno.readTextFile(sshd.knownHosts)).split("\n");
      await Deno.writeTextFile(rsaOnly, lines.filter((l) => l.includes(" ssh-rsa ")).join("\n"));
      await using s = await openSsh(sshd.uri(small), { ...key, knownHosts: rsaOnly });
      assertEquals(s.hostKey.type, "ssh-rsa");
      assertEquals(s.hostKey.status, "known");
    });

    await t.step("a changed host key is refused, even with the option", async () => {
      for (const acceptUnknownHostKey of [false, true]) {
        const e = await assertRejects(
          () =>
            openSsh(sshd.uri(small), {
              ...key,
              knownHosts: sshd.otherKnownHosts,
              acceptUnknownHostKey,
            }),
          HostKeyError,
          "HOST KEY HAS CHANGED",
        );
        assertEquals(e.status, "changed");
        assertStringIncludes(e.message, `ssh-keygen -R "[127.0.0.1]:${sshd.port}"`);
      }
    });

    await t.step("nbdkit ssh serves a remote 64 MiB file, byte for byte", async () => {
      // The data connections trust the key the session checked, and only it.
      await using s = await openSsh(sshd.uri(disk), {
        ...key,
        knownHosts: join(dir, "none"),
        acceptUnknownHostKey: true,
      });
      const pinned = join(dir, "pinned_known_hosts");
      await s.writeKnownHosts(pinned);
      await using server = await serveSshDisk(s.uriFor(disk), {
        socket: join(dir, "in.sock"),
        knownHosts: pinned,
        identity: sshd.clientKey,
      });
      const out = join(dir, "copy.raw");
      await run("nbdcopy", [server.uri, out]);
      await run("cmp", [disk, out]);
      await Deno.remove(out);
      await using c = await NbdClient.connect(server.uri);
      assertEquals(c.size, data.length);
      assertEquals(await c.read(12345, 4096), data.subarray(12345, 12345 + 4096));
    });

    await t.step("nbdkit ssh logs in with the password file", async () => {
      await using server = await serveSshDisk(sshd.uri(disk), {
        socket: join(dir, "in.sock"),
        knownHosts: sshd.knownHosts,
        passwordFile: sshd.passwordFile,
      });
      await using c = await NbdClient.connect(server.uri);
      assertEquals(await c.read(0, 512), data.subarray(0, 512));
    });

    await t.step("nbdkit ssh refuses a changed host key with nbdkit's words", async () => {
      await assertRejects(
        () =>
          serveSshDisk(sshd.uri(disk), {
            socket: join(dir, "in.sock"),
            knownHosts: sshd.otherKnownHosts,
            identity: sshd.clientKey,
          }),
        Error,
        "host key for server changed",
      );
    });

    await t.step("--bandwidth: 8 Mbit/s reads 2 MiB in about 2 s", async () => {
      await using server = await serveSshDisk(sshd.uri(disk), {
        socket: join(dir, "in.sock"),
        ...key,
        bandwidth: 8 * 2 ** 20, // nbdkit's "8M"
      });
      await using c = await NbdClient.connect(server.uri);
      const reader = sequentialReader(c);
      await reader(2); // the rate filter's first 2 s are a burst
      const s = await reader(2);
      assert(s > 1.5 && s < 2.5, `2 MiB took ${s.toFixed(2)} s`);
    });

    await t.step("--bandwidth-file: the rate changes while reading", async () => {
      const rateFile = join(dir, "rate");
      await using server = await serveSshDisk(sshd.uri(disk), {
        socket: join(dir, "in.sock"),
        ...key,
        bandwidth: 8 * 2 ** 20,
        bandwidthFile: rateFile,
      });
      await using c = await NbdClient.connect(server.uri);
      const reader = sequentialReader(c);
      await reader(2); // burst
      const slow = await reader(1);
      await writeAtomically(rateFile, "64M\n");
      // Up to a second may pass before the filter reads the file: 1 MiB at the old rate covers it.
      await reader(1);
      const fast = await reader(2);
      await writeAtomically(rateFile, "8M\n");
      // The filter re-reads the file once a second and its bucket may still hold up to 2 s of
      // the old rate's tokens: drain those before measuring the new rate.
      await reader(3);
      const slowAgain = await reader(1);
      const took = `1 MiB in ${slow.toFixed(2)} s, 2 MiB at 64M in ${fast.toFixed(2)} s, ` +
        `1 MiB back at 8M in ${slowAgain.toFixed(2)} s`;
      assert(slow > 0.75 && slow < 1.25, took);
      assert(fast < 0.6, took);
      assert(slowAgain > 0.75 && slowAgain < 1.25, took);
    });

    await t.step("an aborted signal stops the connection attempt", async () => {
      const ac = new AbortController();
      ac.abort();
      await assertRejects(() => openSsh(sshd.uri(small), { ...key, signal: ac.signal }));
    });

    await checkNothingLeft(sshd, dir, before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(await pidsMentioning(dir), [], "processes left behind");
  assertEquals(liveCount(), before, "child processes still registered");
});

async function checkNothingLeft(sshd: Sshd, dir: string, before: number): Promise<void> {
  // Only sshd itself (under unshare) is still ours: no nbdkit, no ssh-agent, no ssh-add.
  assertEquals(liveCount(), before + 1);
  const left = (await pidsMentioning(dir)).filter((p) => p !== sshd.pid);
  const names = await Promise.all(
    left.map((p) => Deno.readTextFile(`/proc/${p}/cmdline`).catch(() => "")),
  );
  assertEquals(names.filter((n) => !/^(unshare|sshd)/.test(n)), []);
}

/** Reads the export from the start, MiB by MiB, in 128 KiB requests; returns seconds taken. */
function sequentialReader(c: NbdClient): (mib: number) => Promise<number> {
  let offset = 0;
  const chunk = 128 * 1024;
  return async (mib) => {
    const t0 = performance.now();
    for (let i = 0; i < mib * 8; i++, offset += chunk) await c.read(offset, chunk);
    return (performance.now() - t0) / 1000;
  };
}

async function writeAtomically(file: string, text: string): Promise<void> {
  await Deno.writeTextFile(`${file}.new`, text);
  await Deno.rename(`${file}.new`, file);
}
