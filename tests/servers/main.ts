/**
 * Runs the oVirt test servers on their own, for the demo and for trying a client by hand:
 *
 *     deno run -A tests/servers/main.ts --dir DIR [--ready-file FILE]
 *
 * Prints one JSON line `{"engineUrl", "caFile", "passwordFile", "storageDomain", "cluster"}` on
 * stdout once both servers listen (and writes it to FILE), serves until SIGINT or SIGTERM,
 * then stops and removes everything it made in DIR (the ready file included).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startOvirt } from "./mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { dir: { type: "string" }, "ready-file": { type: "string" } },
});
if (!values.dir) {
  console.error("Usage: deno run -A tests/servers/main.ts --dir DIR [--ready-file FILE]");
  Deno.exit(2);
}

const stop = Promise.withResolvers<void>();
const onSignal = () => stop.resolve();
Deno.addSignalListener("SIGINT", onSignal);
Deno.addSignalListener("SIGTERM", onSignal);
try {
  await using ovirt = await startOvirt({ dir: values.dir });
  const ready = JSON.stringify({
    engineUrl: ovirt.engineUrl,
    caFile: ovirt.caFile,
    passwordFile: ovirt.passwordFile,
    storageDomain: "data",
    cluster: "Default",
  });
  const readyFile = values["ready-file"];
  if (readyFile) {
    // Written whole, then renamed: a reader never sees half a line.
    await Deno.writeTextFile(`${readyFile}.tmp`, `${ready}\n`);
    await Deno.rename(`${readyFile}.tmp`, readyFile);
  }
  console.log(ready);
  try {
    await stop.promise;
  } finally {
    if (readyFile) await Deno.remove(readyFile).catch(() => {});
  }
} finally {
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
}
