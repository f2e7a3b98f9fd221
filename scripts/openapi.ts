/**
 * `deno task openapi`: generates a TypeScript client for every OpenAPI document in `openapi/`
 * with oazapfts, into `src/output/generated/NAME.ts`. With `--check`, generates into a
 * temporary directory and fails when the committed clients differ (they are out of date).
 *
 * @module
 */

import { basename, extname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const specs = join(root, "openapi");
const outDir = join(root, "src/output/generated");
const check = Deno.args.includes("--check");

const docs = (await Array.fromAsync(Deno.readDir(specs)))
  .filter((e) => e.isFile && /\.(ya?ml|json)$/.test(e.name))
  .map((e) => e.name)
  .sort();
if (docs.length === 0) {
  console.log("openapi: no OpenAPI documents in openapi/; nothing to generate");
  Deno.exit(0);
}

const tmp = await Deno.makeTempDir({ prefix: "vmshift-openapi-" });
let stale = 0;
try {
  await Deno.mkdir(outDir, { recursive: true });
  for (const doc of docs) {
    const name = basename(doc, extname(doc));
    const generated = join(tmp, `${name}.ts`);
    const gen = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "npm:oazapfts@7", join(specs, doc), generated],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!gen.success) throw new Error(`Cannot generate a client from "openapi/${doc}"`);
    // Format as the repository is formatted, so the comparison is of content only.
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", generated] }).output();
    const text = await Deno.readTextFile(generated);
    const target = join(outDir, `${name}.ts`);
    if (check) {
      const committed = await Deno.readTextFile(target).catch(() => "");
      if (committed !== text) {
        console.error(`openapi: src/output/generated/${name}.ts is out of date`);
        stale++;
      }
    } else {
      await Deno.writeTextFile(target, text);
      console.log(`openapi: openapi/${doc} -> src/output/generated/${name}.ts`);
    }
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
if (stale) {
  console.error("openapi: run `deno task openapi` and commit the result");
  Deno.exit(1);
}
