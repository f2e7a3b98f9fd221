/**
 * Benchmarks `-i vsphere` against VMware's simulator (tests/vcsim): the figures behind the HTTPS
 * transport, `--bandwidth`, and finding a VM in a large inventory.
 *
 *     deno run -A scripts/bench_vsphere.ts [--size 1G] [--runs 3] [--inventory 1000]
 *         [--bandwidth 20M] [--seconds 5]
 *
 * 1. Starts the simulator with one fixture VM whose ESXi (`vmfs`) disk holds `--size` of random
 *    data, among `--inventory` more VMs of the simulator's own.
 * 2. Copies the disk into `null:`, `--runs` paired rounds (order alternating): bare `nbdkit curl`
 *    on the datastore URL (session cookie from our own login, no filters) + `nbdcopy`, against
 *    the whole `vmshift -i vsphere ... -o null` run (start-up, login, lookup, descriptor checks,
 *    overlay, copy, logout). Prints medians, MiB/s and vmshift's throughput over the bare peer's
 *    (the target: at least 0.80).
 * 3. Finds and describes the VM (`--print-source`) in the `--inventory`-VM inventory, timed as a
 *    whole run (target: under 2 s), and prints how long the listing itself took.
 * 4. Serves the disk with `--bandwidth` (nbdkit's rate filter on the curl plugin, as vmshift
 *    builds it) and reads it for `--seconds` after the filter's 2-second burst: the measured
 *    rate against the one asked for (target: within 10%).
 *
 * Results also go to `.cache/bench/vsphere.json`.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { parseRate } from "../src/cli.ts";
import { NbdClient } from "../src/nbd/client.ts";
import { nbdReady } from "../src/nbd/probe.ts";
import { run, startServer } from "../src/process.ts";
import { HttpsClient } from "../src/input/vsphere/_http.ts";
import { VimClient } from "../src/input/vsphere/_soap.ts";
import { curlDiskCommand } from "../src/input/vsphere/disk_servers.ts";
import { datastoreUrl } from "../src/input/vsphere/vsphere.ts";
import { median, printRows } from "./bench.ts";
import { formatSize, parseSize } from "./make_test_image.ts";
import { makeVmwareFixture } from "./make_vmware_fixture.ts";
import { addVcsimFiles, startVcsim } from "../tests/integration/_vcsim.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MAIN = join(ROOT, "main.ts");
const MiB = 1024 * 1024;

const { values: flags } = parseArgs({
  options: {
    size: { type: "string", default: "1G" },
    runs: { type: "string", default: "3" },
    inventory: { type: "string", default: "1000" },
    bandwidth: { type: "string", default: "20M" },
    seconds: { type: "string", default: "5" },
  },
});
const size = parseSize(flags.size);
const runs = Number(flags.runs);
const inventory = Number(flags.inventory);
const bandwidth = parseRate(flags.bandwidth);
const seconds = Number(flags.seconds);

const dir = await Deno.makeTempDir({ prefix: "vmshift-bench-vsphere-" });
try {
  const ds = join(dir, "ds");
  const img = join(dir, "disk.raw");
  console.log(`Writing a ${formatSize(size)} random disk...`);
  await run("sh", [
    "-c",
    `head -c ${size} /dev/urandom > "${img}"`,
  ]);
  const fx = await makeVmwareFixture(join(ds, "bench01"), {
    name: "bench01",
    disks: [{ image: img, subformat: "vmfs" }],
  });
  await Deno.remove(img);
  await addVcsimFiles(fx.dir, "bench01");
  console.log(`Starting the simulator with ${inventory + 1} VMs...`);
  const s0 = performance.now();
  await using sim = await startVcsim(dir, {
    datastores: { ds },
    generate: inventory,
    vms: [{
      name: "bench01",
      datastore: "ds",
      vmx: "bench01/bench01.vmx",
      cpus: 2,
      memoryMB: 2048,
      disks: [{
        controller: "pvscsi",
        bus: 0,
        unit: 0,
        file: "bench01/bench01.vmdk",
        capacity: size,
      }],
      nics: [{ model: "vmxnet3", mac: "00:50:56:00:00:01", network: "VM Network" }],
    }],
  });
  console.log(`  started in ${((performance.now() - s0) / 1000).toFixed(1)} s`);
  const login = ["-ic", sim.uri(), "-ip", sim.passwordFile, "-io", `vsphere-cafile=${sim.caFile}`];

  // Our own session for the bare peer (untimed).
  const http = new HttpsClient("127.0.0.1", sim.port, {
    verify: true,
    ca: await Deno.readTextFile(sim.caFile),
  });
  const client = await VimClient.connect(http);
  await client.login(sim.user, sim.password);
  const cookieFile = join(dir, "cookie");
  await Deno.writeTextFile(cookieFile, client.cookie!, { mode: 0o600 });
  const url = datastoreUrl(sim.server, sim.datacenter, "ds", "bench01/bench01-flat.vmdk");

  const BARE = "nbdkit curl + nbdcopy";
  const VMSHIFT = "vmshift -i vsphere -o null (whole run)";
  const times = new Map<string, number[]>([[BARE, []], [VMSHIFT, []]]);
  for (let round = 0; round < runs; round++) {
    const order = round % 2 ? [VMSHIFT, BARE] : [BARE, VMSHIFT];
    for (const name of order) {
      let t: number;
      if (name === BARE) {
        const socket = join(dir, "bare.sock");
        const args = [
          "--foreground",
          "--exit-with-parent",
          "--unix",
          socket,
          "--readonly",
          "curl",
          `url=${url}`,
          `cookie=+${cookieFile}`,
          `cainfo=${sim.caFile}`,
        ];
        await using server = await startServer("nbdkit", args, { socket, ready: nbdReady });
        const t0 = performance.now();
        await run("nbdcopy", [server.uri, "null:"]);
        t = (performance.now() - t0) / 1000;
      } else {
        const t0 = performance.now();
        await run(Deno.execPath(), [
          "run",
          "-A",
          MAIN,
          "-i",
          "vsphere",
          ...login,
          "bench01",
          "-o",
          "null",
          "-q",
        ]);
        t = (performance.now() - t0) / 1000;
      }
      times.get(name)!.push(t);
      console.log(`  round ${round + 1}: ${name}: ${t.toFixed(2)} s`);
    }
  }
  const bare = median(times.get(BARE)!);
  const ours = median(times.get(VMSHIFT)!);
  const rows = [["reader", "median s", "min s", "max s", "MiB/s", "ratio"]];
  for (const [name, t] of times) {
    const m = median(t);
    rows.push([
      name,
      m.toFixed(2),
      Math.min(...t).toFixed(2),
      Math.max(...t).toFixed(2),
      (size / MiB / m).toFixed(1),
      (bare / m).toFixed(2),
    ]);
  }
  console.log(
    `\nCopy of a ${formatSize(size)} disk over HTTPS from the simulator into null:, ${runs} ` +
      "round(s) (ratio: throughput over the bare peer's; target >= 0.80):\n",
  );
  printRows(rows, 1);

  // Lookup in the whole inventory.
  const lookups: number[] = [];
  let listed = "";
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "-i", "vsphere", ...login, "bench01", "--print-source", "-v"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    lookups.push((performance.now() - t0) / 1000);
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    listed = new TextDecoder().decode(out.stderr).match(/(\d+) VMs listed in (\d+) ms/)?.[0] ?? "";
  }
  const lookup = median(lookups);
  console.log(
    `\nFind and describe the VM among ${inventory + 1} (--print-source, whole run incl. Deno ` +
      `start-up): median ${lookup.toFixed(2)} s (target < 2 s); ${listed}`,
  );

  // --bandwidth: the rate after the filter's burst.
  const socket = join(dir, "rate.sock");
  await using limited = await curlDiskCommand(url, {
    cookieFile,
    caFile: sim.caFile,
    bandwidth,
  }).serve(socket);
  await using c = await NbdClient.connect(limited.uri);
  const chunk = 256 * 1024;
  let offset = 0;
  const burst = Math.ceil((bandwidth * 2) / 8 / chunk) * chunk; // burstiness: 2 s
  for (; offset < burst; offset += chunk) await c.read(offset % (size - chunk), chunk);
  const t0 = performance.now();
  let bytes = 0;
  while (performance.now() - t0 < seconds * 1000) {
    await c.read(offset % (size - chunk), chunk);
    offset += chunk;
    bytes += chunk;
  }
  const elapsed = (performance.now() - t0) / 1000;
  const measured = (bytes * 8) / elapsed;
  console.log(
    `\n--bandwidth ${flags.bandwidth} = ${bandwidth} bits/s (${(bandwidth / 8 / MiB).toFixed(2)} ` +
      `MiB/s): after the 2 s burst, ${formatSize(bytes)} in ${elapsed.toFixed(2)} s = ` +
      `${measured.toFixed(0)} bits/s, ${((measured / bandwidth) * 100).toFixed(1)}% of the limit`,
  );
  await c.close();
  await client.logout();
  http.close();

  await Deno.mkdir(join(ROOT, ".cache/bench"), { recursive: true });
  await Deno.writeTextFile(
    join(ROOT, ".cache/bench/vsphere.json"),
    JSON.stringify(
      {
        size,
        runs,
        bare_seconds: times.get(BARE),
        vmshift_seconds: times.get(VMSHIFT),
        ratio: bare / ours,
        inventory: inventory + 1,
        lookup_seconds: lookups,
        bandwidth,
        measured_bits_per_second: measured,
      },
      null,
      2,
    ),
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
