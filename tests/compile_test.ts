/**
 * `deno task compile` builds one vmshift binary. `deno compile` needs the Deno runtime
 * (`denort`), which it downloads from the internet unless `DENORT_BIN` names a local copy; on
 * machines that reach neither, this test says plainly that it was skipped.
 */

import { assertEquals, assertStringIncludes } from "./_assert.ts";
import { TempDir } from "../src/tmpdir.ts";
import { fileURLToPath } from "node:url";

const denort = Deno.env.get("DENORT_BIN");
const runtime = denort && (await Deno.stat(denort).then(() => true, () => false));
if (!runtime) {
  console.log(
    "SKIPPED: deno compile test: no Deno runtime to embed (set DENORT_BIN to a denort binary; " +
      "this machine cannot download one)",
  );
}

Deno.test({
  name: "deno compile builds a vmshift binary that runs",
  ignore: !runtime,
  async fn() {
    await using dir = await TempDir.create();
    const bin = dir.join("vmshift");
    const main = fileURLToPath(new URL("../main.ts", import.meta.url));
    const c = await new Deno.Command(Deno.execPath(), {
      args: ["compile", "-A", "--output", bin, main],
    }).output();
    assertEquals(c.code, 0, new TextDecoder().decode(c.stderr));
    const v = await new Deno.Command(bin, { args: ["--version"] }).output();
    assertEquals(v.code, 0);
    assertStringIncludes(new TextDecoder().decode(v.stdout), "vmshift ");
  },
});
