/**
 * listTar against archives written by GNU tar in every format it has, and against headers
 * built here byte by byte (base-256 sizes, pax sizes, corrupt checksums, truncation).
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../_assert.ts";
import { listTar, readAt } from "../../src/input/tar.ts";
import { run } from "../../src/process.ts";

const LONG = "d/" + "long-name-".repeat(15) + "disk.vmdk"; // 161 characters

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-tar-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Files with distinct contents, one with a long name in a subdirectory. */
async function makeFiles(dir: string, long: boolean): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>([
    ["guest.ovf", new TextEncoder().encode("<Envelope/>\n")],
    ["guest.mf", new TextEncoder().encode("SHA1(guest.ovf)= 00\n")],
    ["guest-disk1.vmdk", Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff)],
  ]);
  if (long) files.set(LONG, Uint8Array.from({ length: 700 }, (_, i) => (i * 13) & 0xff));
  for (const [name, data] of files) {
    await Deno.mkdir(join(dir, "src", name, ".."), { recursive: true });
    await Deno.writeFile(join(dir, "src", name), data);
  }
  return files;
}

async function assertDataAt(path: string, offset: number, expected: Uint8Array): Promise<void> {
  using f = await Deno.open(path);
  const got = new Uint8Array(expected.length);
  assertEquals(await readAt(f, offset, got), expected.length);
  assertEquals(got, expected);
}

for (const format of ["ustar", "gnu", "oldgnu", "pax", "v7"] as const) {
  const long = format !== "ustar" && format !== "v7";
  Deno.test(`lists a GNU tar "${format}" archive with each member's data offset and size`, async () => {
    await withDir(async (dir) => {
      const files = await makeFiles(dir, long);
      const tar = join(dir, "x.tar");
      await run("tar", [`--format=${format}`, "-cf", tar, "-C", join(dir, "src"), ...files.keys()]);
      const entries = (await listTar(tar)).filter((e) => e.type === "file");
      assertEquals(entries.map((e) => e.name), [...files.keys()]);
      for (const e of entries) {
        assertEquals(e.size, files.get(e.name)!.length);
        assertEquals(e.offset % 512, 0);
        await assertDataAt(tar, e.offset, files.get(e.name)!);
      }
    });
  });
}

Deno.test("directories, symbolic links and hard links are listed with their type", async () => {
  await withDir(async (dir) => {
    await makeFiles(dir, false);
    await Deno.symlink("guest.ovf", join(dir, "src", "link.ovf"));
    await Deno.link(join(dir, "src", "guest.mf"), join(dir, "src", "hard.mf"));
    await Deno.mkdir(join(dir, "src", "sub"));
    const tar = join(dir, "x.tar");
    await run("tar", [
      "-cf",
      tar,
      "-C",
      join(dir, "src"),
      "guest.mf",
      "hard.mf",
      "link.ovf",
      "sub",
    ]);
    const entries = await listTar(tar);
    assertEquals(
      entries.map((e) => [e.name, e.type, e.linkName ?? null, e.size]),
      [
        ["guest.mf", "file", null, 20],
        ["hard.mf", "hardlink", "guest.mf", 0],
        ["link.ovf", "symlink", "guest.ovf", 0],
        ["sub/", "directory", null, 0],
      ],
    );
  });
});

Deno.test("names keep the ./ prefix tar stores when archiving a directory", async () => {
  await withDir(async (dir) => {
    await makeFiles(dir, false);
    const tar = join(dir, "x.tar");
    await run("tar", ["-cf", tar, "-C", join(dir, "src"), "."]);
    const names = (await listTar(tar)).map((e) => e.name).sort();
    assertEquals(names, ["./", "./guest-disk1.vmdk", "./guest.mf", "./guest.ovf"]);
  });
});

Deno.test("sparse members (GNU and pax) are flagged", async () => {
  await withDir(async (dir) => {
    const f = join(dir, "sparse.img");
    using file = await Deno.open(f, { write: true, create: true });
    await file.truncate(1024 * 1024);
    await file.seek(512 * 1024, Deno.SeekMode.Start);
    await file.write(new Uint8Array(4096).fill(1));
    for (const format of ["gnu", "pax"]) {
      const tar = join(dir, `${format}.tar`);
      await run("tar", [`--format=${format}`, "--sparse", "-cf", tar, "-C", dir, "sparse.img"]);
      const [e] = await listTar(tar);
      assertEquals([e?.name, e?.sparse], ["sparse.img", true], format);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Headers built by hand.

interface HeaderOptions {
  type?: string;
  /** Write the size field as GNU base-256. */
  base256?: boolean;
  magic?: "ustar" | "gnu";
  prefix?: string;
}

function header(name: string, size: number, options: HeaderOptions = {}): Uint8Array {
  const h = new Uint8Array(512);
  const put = (at: number, s: string) => h.set(new TextEncoder().encode(s), at);
  put(0, name);
  put(100, "0000644\0");
  put(108, "0000000\0");
  put(116, "0000000\0");
  if (options.base256) {
    h[124] = 0x80;
    let n = size;
    for (let i = 135; i > 124; i--) {
      h[i] = n % 256;
      n = Math.floor(n / 256);
    }
  } else {
    put(124, size.toString(8).padStart(11, "0") + "\0");
  }
  put(136, "14723162132\0");
  put(156, options.type ?? "0");
  if (options.magic === "gnu") put(257, "ustar  \0");
  else put(257, "ustar\x0000");
  if (options.prefix) put(345, options.prefix);
  put(148, "        ");
  const sum = h.reduce((a, b) => a + b, 0);
  put(148, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

function pad(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.length / 512) * 512);
  out.set(data);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (`${len}${body}`.length !== len) len = `${len}${body}`.length;
  return `${len}${body}`;
}

Deno.test("a member of 9 GiB with a base-256 size is listed without reading its data", async () => {
  await withDir(async (dir) => {
    const tar = join(dir, "big.ova");
    const size = 9 * 1024 ** 3 + 5;
    await Deno.writeFile(
      tar,
      concat(
        header("small.ovf", 3),
        pad(new Uint8Array(3)),
        header("big.vmdk", size, { base256: true, magic: "gnu" }),
      ),
    );
    {
      using f = await Deno.open(tar, { write: true });
      // Sparse: the data is never written, and never read.
      await f.truncate(1536 + Math.ceil(size / 512) * 512 + 1024);
    }
    const t0 = performance.now();
    const entries = await listTar(tar);
    assert(performance.now() - t0 < 2000, "listing read the data");
    assertEquals(entries.map((e) => [e.name, e.offset, e.size]), [
      ["small.ovf", 512, 3],
      ["big.vmdk", 1536, size],
    ]);
  });
});

Deno.test("pax records override the header's path and size; prefix fields make ustar paths", async () => {
  await withDir(async (dir) => {
    const tar = join(dir, "pax.tar");
    const longPath = "dir/" + "x".repeat(200) + ".vmdk";
    const records = new TextEncoder().encode(
      paxRecord("path", longPath) + paxRecord("size", "1000") + paxRecord("mtime", "1.5"),
    );
    await Deno.writeFile(
      tar,
      concat(
        header("PaxHeaders/x", records.length, { type: "x" }),
        pad(records),
        header("short-name", 0), // size 0 in the header, 1000 in the pax record
        pad(new Uint8Array(1000).fill(9)),
        header("disk.vmdk", 5, { prefix: "some/dir" }),
        pad(new Uint8Array(5)),
        new Uint8Array(1024),
      ),
    );
    const entries = await listTar(tar);
    assertEquals(entries.map((e) => [e.name, e.offset, e.size]), [
      [longPath, 1536, 1000],
      ["some/dir/disk.vmdk", 3072, 5],
    ]);
  });
});

Deno.test("a GNU header's prefix area is not taken for a path prefix", async () => {
  await withDir(async (dir) => {
    const tar = join(dir, "gnu.tar");
    // Old GNU headers keep access times and such where ustar has its prefix.
    await Deno.writeFile(
      tar,
      concat(
        header("disk.vmdk", 1, { magic: "gnu", prefix: "14723162132" }),
        pad(new Uint8Array(1)),
      ),
    );
    assertEquals((await listTar(tar)).map((e) => e.name), ["disk.vmdk"]);
  });
});

Deno.test("an archive that ends between members without the end marker is accepted, as GNU tar does", async () => {
  await withDir(async (dir) => {
    const tar = join(dir, "x.tar");
    await Deno.writeFile(tar, concat(header("a", 3), pad(new Uint8Array(3))));
    assertEquals((await listTar(tar)).map((e) => e.name), ["a"]);
  });
});

Deno.test("truncated archives are refused, saying where they end", async () => {
  await withDir(async (dir) => {
    const whole = concat(
      header("guest.ovf", 3),
      pad(new Uint8Array(3)),
      header("disk.vmdk", 5000),
      pad(new Uint8Array(5000)),
    );
    const tar = join(dir, "x.ova");
    await Deno.writeFile(tar, whole.subarray(0, 2048 + 100));
    await assertRejects(
      () => listTar(tar),
      Error,
      `Cannot read "${tar}": truncated tar archive: "disk.vmdk" needs 5000 bytes from byte 1536, but the file ends at byte 2148`,
    );
    await Deno.writeFile(tar, whole.subarray(0, 1024 + 200));
    await assertRejects(
      () => listTar(tar),
      Error,
      "truncated tar archive: the file ends at byte 1224, inside a header",
    );
    await assertRejects(
      () => listTar(tar, { name: "guest.ova" }),
      Error,
      `Cannot read "guest.ova": truncated`,
    );
  });
});

Deno.test("files that are not tar archives are refused", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "x.ova");
    await Deno.writeTextFile(path, "<Envelope/>\n".repeat(100));
    await assertRejects(
      () => listTar(path),
      Error,
      "not a tar archive (no valid tar header at the start)",
    );
    await Deno.writeFile(path, new Uint8Array(0));
    await assertRejects(() => listTar(path), Error, "empty file, not a tar archive");
    await Deno.writeFile(path, new Uint8Array(100));
    await assertRejects(() => listTar(path), Error, "not a tar archive (only 100 bytes)");
    await Deno.writeFile(path, new Uint8Array(4096));
    await assertRejects(() => listTar(path), Error, "starts with a block of zeros");
    await assertRejects(() => listTar(join(dir, "missing.ova")), Error, "no such file");
  });
});

Deno.test("a corrupt header after the first is reported with its offset", async () => {
  await withDir(async (dir) => {
    const second = header("disk.vmdk", 3);
    second[0] = "X".charCodeAt(0); // checksum no longer matches
    const tar = join(dir, "x.tar");
    await Deno.writeFile(
      tar,
      concat(header("a.ovf", 3), pad(new Uint8Array(3)), second, pad(new Uint8Array(3))),
    );
    await assertRejects(
      () => listTar(tar),
      Error,
      "corrupt tar archive: bad header checksum at byte 1024",
    );
  });
});

Deno.test("listing stops when aborted", async () => {
  await withDir(async (dir) => {
    const tar = join(dir, "x.tar");
    await Deno.writeFile(tar, concat(header("a", 3), pad(new Uint8Array(3))));
    const ac = new AbortController();
    ac.abort(new Error("stop"));
    await assertRejects(() => listTar(tar, { signal: ac.signal }), Error, "stop");
  });
});
