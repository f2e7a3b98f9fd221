/**
 * The clients in src/output/generated/ are what oazapfts makes of openapi/ today, and
 * `scripts/openapi.ts --check` notices when they are not.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { assertEquals, assertStringIncludes } from "./_assert.ts";
import { TempDir } from "../src/tmpdir.ts";

const SCRIPT = fileURLToPath(new URL("../scripts/openapi.ts", import.meta.url));
const GENERATED = fileURLToPath(new URL("../src/output/generated/", import.meta.url));

async function check(...extra: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, "--check", ...extra],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("openapi: the generated clients are up to date", async () => {
  const { code, stderr } = await check();
  assertEquals(code, 0, stderr);
});

Deno.test("openapi: --check reports a client that differs from what the documents give", async () => {
  await using dir = await TempDir.create();
  for await (const e of Deno.readDir(GENERATED)) {
    if (e.isFile) await Deno.copyFile(join(GENERATED, e.name), dir.join(e.name));
  }
  const client = dir.join("ovirt_engine.ts");
  await Deno.writeTextFile(
    client,
    (await Deno.readTextFile(client)).replace(
      "export function addDisk(",
      "export function addDsk(",
    ),
  );
  const { code, stderr } = await check("--out", dir.path);
  assertEquals(code, 1, stderr);
  assertStringIncludes(stderr, "ovirt_engine.ts is out of date");
  assertEquals(stderr.includes("imageio.ts is out of date"), false, stderr);
});
