/**
 * Tests of the libguestfs binding. The first tests need no appliance; the big one launches a
 * single appliance (about 12 s under TCG) and runs its steps on it, plus a second handle whose
 * launch is aborted.
 *
 * @module
 */

import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../_assert.ts";
import {
  type AddDriveOptions,
  AUG_FLAGS,
  Guestfs,
  GuestfsError,
} from "../../src/convert/guestfs.ts";
import { decodeValue, encodeValue, type RegValue } from "../../src/convert/windows/registry.ts";
import { emptyHive } from "../../scripts/_regf.ts";

const ENOENT = 2;

/** KVM hangs on these machines; vmshift itself never forces TCG, the tests do. */
function useTcg(): void {
  Deno.env.set("LIBGUESTFS_BACKEND", "direct");
  Deno.env.set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
}

async function sparseFile(path: string, size: number): Promise<void> {
  using f = await Deno.open(path, { create: true, write: true, truncate: true });
  await f.truncate(size);
}

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return text;
}

/** PIDs of qemu processes (seen with ps) whose command line opens `image`. */
async function qemuUsing(image: string): Promise<number[]> {
  const ps = await run("ps", ["-eo", "pid=,args="]);
  return ps.split("\n")
    .map((l) => l.trim().match(/^(\d+) (.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null)
    .filter((m) => /qemu-system/.test(m[2] ?? "") && (m[2] ?? "").includes(image))
    .map((m) => Number(m[1]));
}

/** Bytes the image file takes on the host, as qemu-img reports them. */
async function actualSize(image: string): Promise<number> {
  const info = JSON.parse(await run("qemu-img", ["info", "-U", "--output=json", image]));
  return info["actual-size"];
}

Deno.test("a handle is created and closed without launching", async () => {
  useTcg();
  const lines: string[] = [];
  const g = Guestfs.create({ trace: true, onLog: (l) => lines.push(l) });
  const e = assertThrows(
    () => g.addDrive("/nonexistent/disk.img", { format: "raw" }),
    GuestfsError,
    "libguestfs add_drive: ",
  );
  assertEquals([e.call, e.errno], ["add_drive", ENOENT]);
  assertStringIncludes(e.message, "/nonexistent/disk.img");
  // Trace lines reach onLog instead of stderr.
  assertEquals(lines.filter((l) => l.includes("add_drive")), [
    'libguestfs: trace: add_drive "/nonexistent/disk.img" "format:raw"',
    "libguestfs: trace: add_drive = -1 (error)",
  ]);
  g.close();
  g.close();
  assert(g.closed);
  assertThrows(() => g.exists("/"), Error, "Cannot call exists: the libguestfs handle is closed");
  await assertRejects(() => g.inspectOs(), Error, "the libguestfs handle is closed");
  await g[Symbol.asyncDispose]();
});

Deno.test("a long call that fails on the worker thread reports the error", async () => {
  await using g = Guestfs.create();
  const e = await assertRejects(() => g.mount("/dev/sda1", "/"), GuestfsError);
  assertEquals(e.call, "mount");
  assertMatch(e.message, /^libguestfs mount: mount: call launch before using this function/);
  // The queue goes on after a failure.
  await assertRejects(() => g.cat("/etc/hostname"), GuestfsError, "libguestfs cat: ");
  // close() with calls queued: none of them runs.
  const first = g.cat("/a");
  const queued = g.cat("/b");
  g.close();
  await assertRejects(() => first, Error, "Cannot call cat: the libguestfs handle is closed");
  await assertRejects(() => queued, Error, "Cannot call cat: the libguestfs handle is closed");
});

Deno.test("addDrive passes its options in the optargs struct", () => {
  useTcg();
  using g = Guestfs.create();
  // Each error comes from a check libguestfs makes on one field of the struct.
  const fails = (options: AddDriveOptions, includes: string, path = "/dev/null") =>
    assertThrows(() => g.addDrive(path, options), GuestfsError, includes);
  fails({ protocol: "nbd" }, "nbd: you must specify exactly one server", "export");
  fails({ protocol: "nbd", server: ["unix:/a", "unix:/b"] }, "exactly one server", "export");
  g.addDrive("export", { protocol: "nbd", server: ["unix:/tmp/none.sock"], format: "raw" });
  fails({ format: "raw", server: ["unix:/a"] }, "cannot specify a server with file-backed");
  fails({ format: "raw", label: "not a label!" }, "label parameter is empty, too long");
  fails({ format: "no,format" }, "format parameter is empty or contains disallowed");
  fails({ format: "raw", readonly: true, discard: "enable" }, "cannot be enabled on read-only");
  fails({ format: "raw", cachemode: "bogus" as "unsafe" }, "cachemode parameter must be");
  g.addDrive("/dev/null", {
    format: "raw",
    readonly: true,
    discard: "besteffort",
    cachemode: "unsafe",
    name: "sdz",
    label: "scratch",
  });
  assertThrows(() => g.exists("a\0b"), TypeError, "NUL byte");
});

Deno.test("a launched appliance works on disks, files, Augeas and commands", async (t) => {
  useTcg();
  const dir = await Deno.makeTempDir({ prefix: "vmshift-guestfs-test-" });
  try {
    const disk = `${dir}/disk.img`;
    const overlay = `${dir}/overlay.qcow2`;
    await sparseFile(disk, 256 * 2 ** 20);
    await run("qemu-img", ["create", "-q", "-f", "qcow2", overlay, "256M"]);
    const lines: string[] = [];
    await using g = Guestfs.create({ verbose: true, tmpdir: dir, onLog: (l) => lines.push(l) });
    g.addDrive(disk, { format: "raw" });
    g.addDrive(overlay, { format: "qcow2", discard: "besteffort" });

    await t.step("launch leaves the event loop running and routes the log", async () => {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 100);
      const start = Date.now();
      try {
        await g.launch();
      } finally {
        clearInterval(timer);
      }
      assert(g.launched);
      // Timers fired all along: at least half of the expected number.
      assert(ticks >= (Date.now() - start) / 200, `only ${ticks} timer ticks during launch`);
      assert(lines.some((l) => l.startsWith("libguestfs: ")), "no library lines");
      assert(lines.some((l) => /Linux version|guestfsd/.test(l)), "no appliance lines");
      assertEquals(g.listDevices(), ["/dev/sda", "/dev/sdb"]);
    });

    await t.step("partDisk, mkfs, setLabel and mount make a filesystem", async () => {
      await g.partDisk("/dev/sda", "mbr");
      await g.mkfs("ext4", "/dev/sda1");
      g.setLabel("/dev/sda1", "vmshift");
      await g.mount("/dev/sda1", "/");
      assertEquals(g.listPartitions(), ["/dev/sda1"]);
      assert(g.available(["linuxfsuuid"]));
    });

    await t.step("files round-trip, text and binary", async () => {
      await g.write("/hello.txt", "héllo\nworld\n");
      assertEquals(await g.cat("/hello.txt"), "héllo\nworld\n");
      const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
      await g.write("/blob.bin", bytes);
      assertBytesEqual(await g.readFile("/blob.bin"), bytes);
      assertEquals(g.filesize("/blob.bin"), bytes.byteLength);
      await g.write("/empty", "");
      assertEquals((await g.readFile("/empty")).byteLength, 0);
      assertEquals(await g.cat("/empty"), "");
    });

    await t.step(
      "hivex calls read and write a registry hive that our regf writer made",
      async () => {
        await g.write("/hive", emptyHive("ROOT"));
        assertEquals(new TextDecoder().decode(await g.pread("/hive", 4, 0)), "regf");
        await g.hivexOpen("/hive", { write: true });
        const root = g.hivexRoot();
        assertEquals(g.hivexNodeName(root), "ROOT");
        assertEquals(g.hivexNodeChildren(root), []);
        const key = g.hivexNodeAddChild(root, "Services");
        const vmci = g.hivexNodeAddChild(key, "vmci");
        for (
          const [name, value] of Object.entries(
            {
              Start: { dword: 4 },
              ImagePath: { expandSz: "x.sys" },
              Deps: { multiSz: ["a", "b"] },
            },
          )
        ) {
          const [type, bytes] = encodeValue(value as RegValue);
          g.hivexNodeSetValue(vmci, name, type, bytes);
        }
        await g.hivexCommit();
        await g.hivexClose();
        // Reopened read-only: what was committed is there, found without regard to case.
        await g.hivexOpen("/hive");
        const found = g.hivexNodeGetChild(g.hivexNodeGetChild(g.hivexRoot(), "SERVICES")!, "VMCI");
        assert(found !== undefined);
        assertEquals(g.hivexNodeGetChild(g.hivexRoot(), "nope"), undefined);
        assertEquals(g.hivexNodeName(g.hivexNodeParent(found)), "Services");
        const values = g.hivexNodeValues(found).map((v) => [
          g.hivexValueKey(v),
          g.hivexValueType(v),
          decodeValue(g.hivexValueType(v), g.hivexValueValue(v)),
        ]);
        assertEquals(values, [
          ["Start", 4, { dword: 4 }],
          ["ImagePath", 2, { expandSz: "x.sys" }],
          ["Deps", 7, { multiSz: ["a", "b"] }],
        ]);
        assertEquals(g.hivexValueString(g.hivexNodeGetValue(found, "imagepath")!), "x.sys");
        assertEquals(g.hivexNodeGetValue(found, "nope"), undefined);
        // Writes need a hive opened for writing.
        assertThrows(() => g.hivexNodeAddChild(found, "x"), GuestfsError, "hivex_node_add_child");
        await g.hivexClose();
        await assertRejects(() => g.hivexOpen("/nope"), GuestfsError, "libguestfs hivex_open: ");
        // Deleting a key, then the hive is as our writer made it but for the Services key.
        await g.hivexOpen("/hive", { write: true });
        g.hivexNodeDeleteChild(g.hivexNodeGetChild(g.hivexRoot(), "Services")!);
        await g.hivexCommit();
        await g.hivexClose();
        await g.hivexOpen("/hive");
        assertEquals(g.hivexNodeChildren(g.hivexRoot()), []);
        await g.hivexClose();
      },
    );

    await t.step("file and directory operations", async () => {
      g.mkdirP("/etc/a/b/c");
      assert(g.isDir("/etc/a/b/c"));
      assertEquals(g.ls("/etc/a"), ["b"]);
      assert(g.exists("/hello.txt") && g.isFile("/hello.txt") && !g.isDir("/hello.txt"));
      assert(!g.exists("/nope"));
      g.cp("/hello.txt", "/etc/a/one.conf");
      g.mv("/etc/a/one.conf", "/etc/a/two.conf");
      g.touch("/etc/a/three.conf");
      assertEquals(g.globExpand("/etc/a/*.conf"), ["/etc/a/three.conf", "/etc/a/two.conf"]);
      assertEquals(g.globExpand("/etc/a/*.none"), []);
      assertEquals(await g.cat("/etc/a/two.conf"), "héllo\nworld\n");
      g.lnSf("/etc/a/two.conf", "/link");
      assert(g.isSymlink("/link") && !g.isFile("/link"));
      assertEquals(g.readlink("/link"), "/etc/a/two.conf");
      g.lnSf("three.conf", "/link");
      assertEquals(g.readlink("/link"), "three.conf");
      g.chmod(0o600, "/etc/a/two.conf");
      g.rm("/etc/a/two.conf");
      g.rmF("/etc/a/two.conf");
      assert(!g.exists("/etc/a/two.conf"));
      g.rmRf("/etc/a");
      assert(!g.exists("/etc/a"));
    });

    await t.step("blkid and vfs* describe the filesystem", async () => {
      const tags = g.blkid("/dev/sda1");
      assertEquals([tags.TYPE, tags.LABEL], ["ext4", "vmshift"]);
      assertEquals(g.vfsType("/dev/sda1"), "ext4");
      assertEquals(g.vfsLabel("/dev/sda1"), "vmshift");
      assertMatch(g.vfsUuid("/dev/sda1"), /^[0-9a-f]{8}-[0-9a-f-]{27}$/);
      assertEquals(g.vfsUuid("/dev/sda1"), tags.UUID);
      const filesystems = await g.listFilesystems();
      assert(filesystems.some(([d, t]) => d === "/dev/sda1" && t === "ext4"));
    });

    await t.step("Augeas reads and edits /etc/hosts", async () => {
      await g.write("/etc/hosts", "127.0.0.1 localhost\n10.0.0.1 old.example old\n");
      await g.augInit("/", AUG_FLAGS.noLoad);
      g.augTransform("Hosts.lns", "/etc/hosts");
      await g.augLoad();
      assertEquals(g.augMatch("/files/etc/hosts/*"), ["/files/etc/hosts/1", "/files/etc/hosts/2"]);
      assertEquals(g.augGet("/files/etc/hosts/2/canonical"), "old.example");
      g.augSet("/files/etc/hosts/2/canonical", "new.example");
      g.augInsert("/files/etc/hosts/2/alias", "alias", false);
      g.augSet("/files/etc/hosts/2/alias[2]", "new");
      assertEquals(g.augRm("/files/etc/hosts/1"), 3); // the entry, its ipaddr and canonical
      assertThrows(() => g.augGet("/files/etc/hosts/9/canonical"), GuestfsError, "aug_get");
      g.augSave();
      g.augClose();
      assertEquals(await g.cat("/etc/hosts"), "10.0.0.1 new.example old new\n");
    });

    await t.step("commands fail without a guest to run in", async () => {
      const e = await assertRejects(() => g.command(["/bin/true"]), GuestfsError);
      assertEquals(e.call, "command");
      assertMatch(e.message, /^libguestfs command: /);
      assertEquals(
        (await assertRejects(() => g.commandLines(["/bin/true"]), GuestfsError)).call,
        "command_lines",
      );
      assertEquals((await assertRejects(() => g.sh("true"), GuestfsError)).call, "sh");
    });

    await t.step("errors name the call and keep libguestfs' message", async () => {
      const mount = await assertRejects(() => g.mount("/dev/sda9", "/mnt"), GuestfsError);
      assertMatch(mount.message, /^libguestfs mount: mount: .*\/dev\/sda9: No such file/);
      assertEquals([mount.call, mount.errno], ["mount", ENOENT]);
      const cat = await assertRejects(() => g.cat("/missing"), GuestfsError);
      // guestfs_cat downloads the file: libguestfs names the inner call.
      assertMatch(cat.message, /^libguestfs cat: \w+: \/missing: No such file or directory$/);
      assertEquals(cat.errno, ENOENT);
      const readlink = assertThrows(() => g.readlink("/hello.txt"), GuestfsError);
      assertMatch(readlink.message, /^libguestfs readlink: .*\/hello\.txt: Invalid argument$/);
      assertEquals(readlink.errno, 22); // EINVAL, read on this thread
    });

    await t.step("a short call while a long call runs throws instead of racing", async () => {
      const pending = g.cat("/hello.txt");
      assertThrows(() => g.exists("/"), Error, "another libguestfs call on this handle");
      assertEquals(await pending, "héllo\nworld\n");
      assert(g.exists("/"));
      // Long calls queue up in order.
      const [a, , b] = await Promise.all([
        g.cat("/hello.txt"),
        g.write("/hello.txt", "second"),
        g.cat("/hello.txt"),
      ]);
      assertEquals([a, b], ["héllo\nworld\n", "second"]);
    });

    await t.step("fstrim and inspection work on the mounted disk", async () => {
      await g.fstrim("/");
      assertEquals(await g.inspectOs(), []);
      assertEquals(g.inspectGetRoots(), []);
      // Inspection unmounts everything.
      assertThrows(() => g.exists("/hello.txt"), GuestfsError, "call 'mount' first");
      await g.mount("/dev/sda1", "/");
    });

    await t.step("discard reaches the qcow2 overlay", async () => {
      await g.mkfs("ext4", "/dev/sdb");
      g.mkdirP("/mnt");
      await g.mount("/dev/sdb", "/mnt");
      const big = `${dir}/big.bin`;
      const chunk = new Uint8Array(2 ** 20).map((_, i) => (i % 251) + 1);
      {
        using f = await Deno.open(big, { create: true, write: true });
        for (let i = 0; i < 50; i++) await f.write(chunk);
      }
      await g.sync();
      const empty = await actualSize(overlay);
      await g.upload(big, "/mnt/big.bin");
      await g.sync();
      const full = await actualSize(overlay);
      assert(full - empty >= 50 * 2 ** 20, `overlay grew by ${full - empty} bytes`);
      g.rm("/mnt/big.bin");
      await g.sync();
      await g.fstrim("/mnt");
      await g.sync();
      const trimmed = await actualSize(overlay);
      assert(full - trimmed >= 45 * 2 ** 20, `fstrim freed only ${full - trimmed} bytes`);
      await g.umount("/mnt");
    });

    await t.step("aborting a launch kills its appliance and rejects with the reason", async () => {
      const other = `${dir}/abort.img`;
      await sparseFile(other, 16 * 2 ** 20);
      await using h = Guestfs.create();
      h.addDrive(other, { format: "raw" });
      const controller = new AbortController();
      const reason = new Error("Stop the test launch");
      const timer = setTimeout(() => controller.abort(reason), 1000);
      const start = Date.now();
      try {
        const e = await assertRejects(() => h.launch(controller.signal));
        assert(e === reason, `rejected with ${e}`);
      } finally {
        clearTimeout(timer);
      }
      const elapsed = Date.now() - start;
      assert(elapsed < 5000, `the aborted launch took ${elapsed} ms`);
      assert(!h.launched);
      assertEquals(await qemuUsing(other), []);
      // The first handle's appliance is untouched.
      assertEquals((await qemuUsing(disk)).length, 1);
      assert(g.isFile("/hello.txt"));
      await assertRejects(() => h.launch(AbortSignal.abort(reason)));
      // close() during a launch kills the appliance; the launch fails at once.
      const c = Guestfs.create();
      c.addDrive(other, { format: "raw" });
      const launching = c.launch();
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const closing = Date.now();
      c.close();
      await assertRejects(() => launching, GuestfsError, "libguestfs launch: ");
      assert(Date.now() - closing < 4000, `launch took ${Date.now() - closing} ms to fail`);
      await c[Symbol.asyncDispose]();
      assertEquals(await qemuUsing(other), []);
    });

    await t.step("dispose shuts the appliance down and leaves no qemu", async () => {
      await g.umountAll();
      await g[Symbol.asyncDispose]();
      g.close();
      assert(!g.launched);
      assertEquals(await qemuUsing(disk), []);
      assertThrows(() => g.exists("/"), Error, "closed");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
