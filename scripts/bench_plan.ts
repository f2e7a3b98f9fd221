/**
 * Benchmark of the scheduler: a plan of N small VMs (default 50) with a limit of L at once
 * (default 4), migrated by real child vmshift runs (`-i disk -o null --no-convert`, one small
 * generated disk shared read-only by every VM). Prints:
 *
 * - occupancy: the mean number of runs while the queue still held work (from the first start
 *   to the last start), against the limit;
 * - refill: how long a slot stayed empty between a run's end and the next start;
 * - overhead: the time the scheduler spent deciding and recording, against the wall time.
 *
 *     deno task bench:plan [--vms 50] [--limit 4] [--data 1M] [--json]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { makeTestImage } from "./make_test_image.ts";

const { values } = parseArgs({
  options: {
    vms: { type: "string", default: "50" },
    limit: { type: "string", default: "4" },
    data: { type: "string", default: "1" },
    json: { type: "boolean", default: false },
  },
});
const n = Number(values.vms);
const limit = Number(values.limit);
const main = fileURLToPath(new URL("../main.ts", import.meta.url));
const dir = await Deno.makeTempDir({ prefix: "vmshift-bench-plan-" });
try {
  const disk = `${dir}/disk.img`;
  await makeTestImage(disk, {
    format: "raw",
    virtualSize: 16 << 20,
    dataBytes: Number(values.data) << 20,
  });
  const plan = `${dir}/plan.json`;
  await Deno.writeTextFile(
    plan,
    JSON.stringify({
      defaults: { input: { mode: "disk", args: [disk] }, output: { mode: "null" }, convert: false },
      limits: { total: limit },
      vms: Array.from({ length: n }, (_, i) => ({ name: `vm${String(i + 1).padStart(3, "0")}` })),
    }),
  );
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "schedule", plan, "--machine-readable"],
    env: { TMPDIR: dir },
    stdin: "null",
    stderr: "inherit",
  }).output();
  const wall = performance.now() - t0;
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  const result = JSON.parse(lines.findLast((l) => l.includes('"type":"result"'))!);
  if (out.code !== 0 || result.done !== n) {
    throw new Error(`the plan did not finish: ${lines.at(-1)}`);
  }
  const runs = result.runs as Array<{ start: number; end: number }>;
  const first = Math.min(...runs.map((r) => r.start));
  const lastStart = Math.max(...runs.map((r) => r.start));
  // Occupancy: time-integral of running runs over [first start, last start].
  const points = runs.flatMap((r) => [[r.start, 1], [r.end, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let running = 0;
  let prev = first;
  let area = 0;
  let peak = 0;
  for (const [t, d] of points) {
    const upto = Math.min(t, lastStart);
    if (upto > prev) area += running * (upto - prev);
    prev = Math.max(prev, upto);
    running += d;
    peak = Math.max(peak, running);
  }
  const occupancy = area / (lastStart - first);
  // Refill: from each end (while work was queued) to the next start.
  const starts = runs.map((r) => r.start).sort((a, b) => a - b);
  const gaps = runs.filter((r) => r.end < lastStart).map((r) =>
    starts.find((s) => s >= r.end)! - r.end
  );
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const perRun = mean(runs.map((r) => r.end - r.start));
  const figures = {
    vms: n,
    limit,
    wall_seconds: Math.round(wall) / 1000,
    scheduler_wall_seconds: result.wall_ms / 1000,
    mean_run_seconds: Math.round(perRun) / 1000,
    occupancy: Math.round(occupancy * 100) / 100,
    peak,
    refill_ms_mean: Math.round(mean(gaps) * 10) / 10,
    refill_ms_max: Math.max(...gaps),
    scheduler_busy_ms: result.busy_ms,
    spawn_ms: result.spawn_ms,
    scheduler_cpu_ms: result.cpu_ms,
    cpu_percent: Math.round((result.cpu_ms / result.wall_ms) * 10000) / 100,
    overhead_percent: Math.round((result.busy_ms / result.wall_ms) * 10000) / 100,
  };
  if (values.json) console.log(JSON.stringify(figures));
  else {
    console.log(
      `${n} VMs, limit ${limit}: ${figures.wall_seconds} s in all, ` +
        `${figures.mean_run_seconds} s per run`,
    );
    console.log(
      `occupancy while the queue held work: ${figures.occupancy} of ${limit} ` +
        `(peak ${peak})`,
    );
    console.log(
      `a freed slot was refilled after ${figures.refill_ms_mean} ms on average, ` +
        `${figures.refill_ms_max} ms at most`,
    );
    console.log(
      `scheduler busy ${figures.scheduler_busy_ms} ms of ${result.wall_ms} ms: ` +
        `${figures.overhead_percent} % overhead (${result.spawn_ms} ms of it spawning children)`,
    );
    console.log(
      `scheduler CPU time (whole process, start-up included): ${result.cpu_ms} ms, ` +
        `${figures.cpu_percent} % of the wall time`,
    );
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
