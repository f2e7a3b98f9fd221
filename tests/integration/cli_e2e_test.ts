/** The command line as a user meets it: help, version, capabilities, tracing. */

import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../_assert.ts";
import { makeTestImage } from "../../scripts/make_test_image.ts";
import { Sandbox } from "./_harness.ts";

Deno.test("--help explains usage, outputs and exit codes; exit 0", async () => {
  await using sb = await Sandbox.create();
  const r = await sb.run(["--help"]);
  assertEquals(r.code, 0);
  for (
    const part of ["Usage:", "-i disk FILE", "-o local -os DIR", "-of raw|qcow2", "Exit codes:"]
  ) {
    assertStringIncludes(r.stdout, part);
  }
});

Deno.test("--version prints the version", async () => {
  await using sb = await Sandbox.create();
  const r = await sb.run(["--version"]);
  assertEquals(r.code, 0);
  assertMatch(r.stdout, /^vmshift \d+\.\d+\.\d+\n$/);
});

Deno.test("--machine-readable alone lists capabilities the way virt-v2v does", async () => {
  await using sb = await Sandbox.create();
  const r = await sb.run(["--machine-readable"]);
  assertEquals(r.code, 0);
  const lines = r.stdout.trim().split("\n");
  for (const cap of ["virt-v2v", "input:disk", "output:local", "output:qemu", "output:null"]) {
    assert(lines.includes(cap), `missing ${cap}: ${lines.join(" ")}`);
  }
});

Deno.test("no arguments at all: a usage error, exit 2", async () => {
  await using sb = await Sandbox.create();
  const r = await sb.run([]);
  assertEquals(r.code, 2);
  assertStringIncludes(r.stderr, "No input: give -i MODE");
});

Deno.test("-x shows every external command; -v adds debug messages", async () => {
  await using sb = await Sandbox.create();
  const src = join(sb.work, "g.qcow2");
  await makeTestImage(src, { format: "qcow2", virtualSize: 16 * 1024 * 1024, dataBytes: 1 << 20 });
  const r = await sb.run(["-x", "-v", "-i", "disk", src, "-o", "null"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /^\+ qemu-img info --output=json/m);
  assertMatch(r.stderr, /^\+ setpriv --pdeathsig SIGKILL -- qemu-nbd .*--read-only/m);
  assertStringIncludes(r.stderr, "vmshift: debug: disk 1:");
  await sb.assertNothingLeft();
});
