/**
 * Failure paths of a whole run: bad input, bad output, interrupts and a server killed mid-copy.
 * Each must give a clear message and a non-zero exit, and leave nothing behind: no output
 * files, no temporary files, no processes, and the source unchanged.
 */

import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../_assert.ts";
import { makeTestImage } from "../../scripts/make_test_image.ts";
import { run } from "../../src/process.ts";
import { processesMentioning, readUntil, Sandbox, sha256 } from "./_harness.ts";

const MiB = 1024 * 1024;

async function smallSource(sb: Sandbox): Promise<string> {
  const path = join(sb.work, "guest.qcow2");
  await makeTestImage(path, { format: "qcow2", virtualSize: 32 * MiB, dataBytes: 4 * MiB });
  return path;
}

async function entries(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("a missing source file: clear error, exit 1, nothing left", async () => {
  await using sb = await Sandbox.create();
  const missing = join(sb.work, "nope.img");
  const r = await sb.run(["-i", "disk", missing, "-o", "local", "-os", sb.work]);
  assertEquals(r.code, 1);
  assertStringIncludes(r.stderr, `vmshift: error: Cannot open disk "${missing}": no such file`);
  assertEquals(await entries(sb.work), []);
  await sb.assertNothingLeft();
});

Deno.test("an unsupported source format: clear error, exit 1", async () => {
  await using sb = await Sandbox.create();
  const vdi = join(sb.work, "guest.vdi");
  await run("qemu-img", ["create", "-q", "-f", "vdi", vdi, "16M"]);
  const r = await sb.run(["-i", "disk", vdi, "-o", "null"]);
  assertEquals(r.code, 1);
  assertStringIncludes(r.stderr, `Cannot open disk "${vdi}": unsupported format "vdi"`);
  await sb.assertNothingLeft();
});

Deno.test("usage errors exit 2 before anything is done", async () => {
  await using sb = await Sandbox.create();
  const src = await smallSource(sb);
  const cases: Array<[string[], string]> = [
    [["-i", "disk", src, "-o", "local"], "-o local needs the output directory: -os DIR"],
    [["-i", "disk", src, "-o", "local", "-os", sb.work, "-of", "vdi"], 'output format "-of vdi"'],
    [["-i", "disk", src, "-o", "local", "-os", sb.work, "-oa", "thick"], 'allocation "-oa thick"'],
    [["-i", "disk", src, "-o", "nowhere"], 'Unknown output mode "-o nowhere"'],
    [["-i", "vmdkx", src, "-o", "null"], 'Unknown input mode "-i vmdkx"'],
    [["-i", "disk", "-o", "null"], "-i disk needs the disk image"],
    [["-i", "disk", src, src, "-o", "null"], "-i disk takes one disk image, got 2"],
    [["-i", "disk", src], "No output: give -o MODE"],
    [["-i", "disk", src, "-o", "null", "--bogus"], 'Unknown option "--bogus"'],
  ];
  for (const [args, message] of cases) {
    const r = await sb.run(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, message);
  }
  assertEquals(await entries(sb.work), ["guest.qcow2"]);
  await sb.assertNothingLeft();
});

Deno.test("an output directory that is missing, a file, or not writable: exit 1", async () => {
  await using sb = await Sandbox.create();
  const src = await smallSource(sb);
  const missing = join(sb.work, "no-such-dir");
  for (
    const [dir, why] of [
      [missing, "no such directory"],
      [src, "not a directory"],
      ["/proc", ""],
    ]
  ) {
    const r = await sb.run(["-i", "disk", src, "-o", "local", "-os", dir!]);
    assertEquals(r.code, 1, r.stderr);
    assertStringIncludes(r.stderr, `Cannot write to "${dir}"${why ? `: ${why}` : ""}`);
  }
  assertEquals(await entries(sb.work), ["guest.qcow2"]);
  await sb.assertNothingLeft();
});

Deno.test("an existing output is never overwritten", async () => {
  await using sb = await Sandbox.create();
  const src = await smallSource(sb);
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  await Deno.writeTextFile(join(out, "guest.xml"), "mine");
  const r = await sb.run(["-i", "disk", src, "-o", "local", "-os", out]);
  assertEquals(r.code, 1);
  assertStringIncludes(r.stderr, `Cannot write "${join(out, "guest.xml")}": the file exists`);
  assertEquals(await entries(out), ["guest.xml"]);
  assertEquals(await Deno.readTextFile(join(out, "guest.xml")), "mine");
  await sb.assertNothingLeft();
});

async function interruptMidCopy(
  signal: "SIGINT" | "SIGTERM",
  code: number,
  format: "raw" | "qcow2",
) {
  await using sb = await Sandbox.create();
  const src = join(sb.work, "big.qcow2");
  await makeTestImage(src, { format: "qcow2", virtualSize: 2048 * MiB, dataBytes: 768 * MiB });
  const sum = await sha256(src);
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  const local = ["-o", "local", "-os", out, "-of", format];
  const child = sb.spawn(["-i", "disk", src, ...local, "--machine-readable"]);
  const stderr = new Response(child.stderr).text();
  const { lines, rest } = await readUntil(child, (l) => l.includes('"progress"'));
  assert(lines.some((l) => l.includes('"progress"')), `no progress seen: ${lines.join("\n")}`);
  child.kill(signal);
  const status = await child.status;
  await rest;
  const err = await stderr;
  assertEquals(status.code, code, err);
  assertStringIncludes(err, `Interrupted by ${signal}`);
  assertEquals(await entries(out), [], "output files left behind");
  assertEquals(await sha256(src), sum);
  await sb.assertNothingLeft();
}

Deno.test("SIGTERM mid-copy to raw: exit 143, output removed, nothing left", async () => {
  await interruptMidCopy("SIGTERM", 143, "raw");
});

Deno.test("SIGINT mid-copy to qcow2 (written in process): exit 130, output removed, nothing left", async () => {
  await interruptMidCopy("SIGINT", 130, "qcow2");
});

for (const [socket, role] of [["out-sda.sock", "target"], ["in-sda.sock", "source"]] as const) {
  Deno.test(`the ${role} server killed mid-copy: the error names it, nothing left`, async () => {
    await using sb = await Sandbox.create();
    const src = join(sb.work, "big.qcow2");
    await makeTestImage(src, { format: "qcow2", virtualSize: 2048 * MiB, dataBytes: 768 * MiB });
    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    // Preallocated qcow2 is the local output still written through a qemu-nbd server.
    const local = ["-o", "local", "-os", out, "-of", "qcow2", "-oa", "preallocated"];
    const child = sb.spawn(["-i", "disk", src, ...local, "--machine-readable"]);
    const stderr = new Response(child.stderr).text();
    const { rest } = await readUntil(child, (l) => l.includes('"progress"'));
    const server = (await processesMentioning(sb.tmp)).find((l) =>
      l.includes("qemu-nbd") && l.includes(socket)
    );
    assert(server, `the ${role}'s qemu-nbd is running`);
    Deno.kill(Number(server.split(" ")[0]), "SIGKILL");
    const status = await child.status;
    await rest;
    const err = await stderr;
    assertEquals(status.code, 1, err);
    assertStringIncludes(err, "Copying disk 1 failed");
    assertStringIncludes(err, `(${role} "`);
    assertStringIncludes(err, "was killed by SIGKILL");
    assertEquals(await entries(out), []);
    await sb.assertNothingLeft();
  });
}

Deno.test("a run killed outright leaves no servers; the next run removes its temp dir", async () => {
  await using sb = await Sandbox.create();
  const src = join(sb.work, "big.qcow2");
  await makeTestImage(src, { format: "qcow2", virtualSize: 2048 * MiB, dataBytes: 768 * MiB });
  const child = sb.spawn(["-i", "disk", src, "-o", "null", "--machine-readable"]);
  const stderr = new Response(child.stderr).text();
  const { rest } = await readUntil(child, (l) => l.includes('"progress"'));
  child.kill("SIGKILL");
  await child.status;
  await rest;
  await stderr;
  // The servers die with their parent (nbdkit --exit-with-parent, setpriv --pdeathsig).
  for (let i = 0; i < 50 && (await processesMentioning(sb.tmp)).length; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assertEquals(await processesMentioning(sb.tmp), []);
  // SIGKILL cannot be caught: the temp dir stays until the next run sweeps it.
  assertEquals((await entries(sb.tmp)).length, 1);
  const r = await sb.run(["-i", "disk", src, "--print-source"]);
  assertEquals(r.code, 0, r.stderr);
  await sb.assertNothingLeft();
});
