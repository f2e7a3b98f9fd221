/**
 * Benchmarks reading a disk over SSH: the figures behind `-it ssh` and `--bandwidth`.
 *
 *     deno run -A scripts/bench_ssh.ts [--size 1G] [--runs 3] [--bandwidth 10M] [--seconds 5]
 *         [--sparse]
 *
 * 1. Starts a test sshd on 127.0.0.1 (tests/integration/_sshd.ts) and writes a `--size` file
 *    of random data for it to serve (`--sparse`: a hole, which the server reads for free).
 * 2. Copies the file into `null:` with nbdcopy, `--runs` paired rounds (order alternating),
 *    from two servers: bare `nbdkit ssh` (no filters) and vmshift's `serveSshDisk` (the
 *    filters `-it ssh` uses). Prints median seconds, MiB/s and vmshift's ratio to bare nbdkit.
 * 3. Serves the file with `--bandwidth` (nbdkit's rate filter, bits per second as vmshift's
 *    `--bandwidth` takes them) and reads it for `--seconds` after the rate filter's initial
 *    2-second burst; prints the measured rate against the one asked for.
 *
 * Step 2 also times the whole `vmshift -i vmx -it ssh ... -o null` run (start-up, SFTP, checks,
 * overlay included) on a VM whose monolithicFlat disk is that file, against bare `nbdkit ssh`
 * + nbdcopy: the target is at least 80% of the bare throughput.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { parseRate } from "../src/cli.ts";
import { NbdClient } from "../src/nbd/client.ts";
import { nbdReady } from "../src/nbd/probe.ts";
import { Nbdkit } from "../src/nbdkit.ts";
import { run, type Server, startServer } from "../src/process.ts";
import { serveSshDisk } from "../src/input/ssh_disk.ts";
import { median, printRows } from "./bench.ts";
import { formatSize, parseSize } from "./make_test_image.ts";
import { type Sshd, startSshd } from "../tests/integration/_sshd.ts";
import { makeVmwareFixture } from "./make_vmware_fixture.ts";
import { fileURLToPath } from "node:url";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

const MiB = 1024 * 1024;

const { values: flags } = parseArgs({
  options: {
    size: { type: "string", default: "1G" },
    runs: { type: "string", default: "3" },
    bandwidth: { type: "string", default: "10M" },
    seconds: { type: "string", default: "5" },
    sparse: { type: "boolean", default: false },
  },
});
const size = parseSize(flags.size);
const runs = Number(flags.runs);
const bandwidth = parseRate(flags.bandwidth);
const seconds = Number(flags.seconds);

const dir = await Deno.makeTempDir({ prefix: "vmshift-bench-ssh-" });
try {
  await using sshd = await startSshd(dir);
  const file = join(sshd.dataDir, "disk.raw");
  console.log(`Writing a ${formatSize(size)} ${flags.sparse ? "sparse" : "random"} file...`);
  if (flags.sparse) {
    await run("truncate", ["-s", String(size), file]);
  } else {
    await run("sh", ["-c", `head -c ${size} /dev/urandom > "$1"`, "sh", file]);
  }
  await Deno.chmod(file, 0o644);

  // The same bytes as a VMware VM with a monolithicFlat disk, for the whole vmshift run.
  const fx = await makeVmwareFixture(join(sshd.dataDir, "bench"), {
    name: "bench",
    disks: [{ image: file, subformat: "monolithicFlat" }],
  });
  await Deno.chmod(fx.dir, 0o755);
  for (const f of fx.files) await Deno.chmod(f, 0o644);
  const vmshiftRun = async (): Promise<void> => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "-q",
        "-i",
        "vmx",
        "-it",
        "ssh",
        sshd.uri(fx.vmx),
        "-io",
        `ssh-known-hosts=${sshd.knownHosts}`,
        "-io",
        `ssh-identity=${sshd.clientKey}`,
        "-o",
        "null",
        "--no-convert",
      ],
      stdin: "null",
    }).output();
    if (!out.success) throw new Error(`vmshift failed: ${new TextDecoder().decode(out.stderr)}`);
  };

  const servers: Array<[string, () => Promise<Server>]> = [
    ["nbdkit ssh (bare)", () => bareNbdkit(sshd, file, join(dir, "bare.sock"))],
    [
      "vmshift serveSshDisk",
      () =>
        serveSshDisk(sshd.uri(file), {
          socket: join(dir, "ours.sock"),
          knownHosts: sshd.knownHosts,
          identity: sshd.clientKey,
        }),
    ],
  ];
  const VMSHIFT = "vmshift -i vmx -it ssh -o null (whole run)";
  const names = [...servers.map(([name]) => name), VMSHIFT];
  const times = new Map<string, number[]>(names.map((name) => [name, []]));
  for (let round = 0; round < runs; round++) {
    const order = round % 2 ? [...names].reverse() : names;
    for (const name of order) {
      let s: number;
      if (name === VMSHIFT) {
        const t0 = performance.now();
        await vmshiftRun();
        s = (performance.now() - t0) / 1000;
      } else {
        await using server = await servers.find(([n]) => n === name)![1]();
        const t0 = performance.now();
        await run("nbdcopy", [server.uri, "null:"]);
        s = (performance.now() - t0) / 1000;
      }
      times.get(name)!.push(s);
      console.log(`  round ${round + 1}: ${name}: ${s.toFixed(2)} s`);
    }
  }
  const rows = [["reader", "median s", "min s", "max s", "MiB/s", "ratio"]];
  const bare = median(times.get(servers[0]![0])!);
  for (const name of names) {
    const t = times.get(name)!;
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
    `\nCopy of ${formatSize(size)} over SSH on 127.0.0.1 into null: with nbdcopy, ${runs} ` +
      `round(s) (ratio: throughput over bare nbdkit's):\n`,
  );
  printRows(rows, 1);

  // --bandwidth: steady rate after the rate filter's burst.
  await using limited = await serveSshDisk(sshd.uri(file), {
    socket: join(dir, "rate.sock"),
    knownHosts: sshd.knownHosts,
    identity: sshd.clientKey,
    bandwidth,
  });
  await using c = await NbdClient.connect(limited.uri);
  const chunk = 64 * 1024;
  let offset = 0;
  const burst = Math.ceil((bandwidth * 2) / 8 / chunk) * chunk; // burstiness: 2 s
  const b0 = performance.now();
  for (; offset < burst; offset += chunk) await c.read(offset % (size - chunk), chunk);
  const burstSeconds = (performance.now() - b0) / 1000;
  const t0 = performance.now();
  let bytes = 0;
  while (performance.now() - t0 < seconds * 1000) {
    await c.read(offset % (size - chunk), chunk);
    offset += chunk;
    bytes += chunk;
  }
  const elapsed = (performance.now() - t0) / 1000;
  const measured = (bytes * 8) / elapsed;
  console.log(`\n--bandwidth ${flags.bandwidth} (${bandwidth} bits/s, ${bandwidth / 8e6} MB/s):`);
  console.log(
    `  first ${formatSize(burst)} (the rate filter's 2 s burst): ${burstSeconds.toFixed(2)} s`,
  );
  console.log(
    `  then ${formatSize(bytes)} in ${elapsed.toFixed(2)} s: ${(measured / 1e6).toFixed(2)} ` +
      `Mbit/s, ${((measured / bandwidth) * 100).toFixed(1)}% of ${bandwidth / 1e6} Mbit/s`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}

/** nbdkit's ssh plugin with no filters, the way one would serve the file by hand. */
function bareNbdkit(sshd: Sshd, file: string, socket: string): Promise<Server> {
  const cmd = new Nbdkit("ssh").writable(false)
    .addArg("host", sshd.host)
    .addArg("port", String(sshd.port))
    .addArg("user", sshd.user)
    .addArg("path", file)
    .addArg("known-hosts", sshd.knownHosts)
    .addArg("identity", sshd.clientKey);
  return startServer("nbdkit", cmd.args(socket), { socket, ready: nbdReady });
}
