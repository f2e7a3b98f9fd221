/**
 * A stand-in for a vmshift migration, for scheduler tests that need a run to last (started by
 * the scheduler through `VMSHIFT_CHILD`): it prints machine-readable events like vmshift,
 * takes `FAKE_MS` milliseconds, and appends what happened to the file `FAKE_LOG`:
 * `start NAME`, `done NAME`, `failed NAME` (for the VMs named in `FAKE_FAIL`), or `stopped NAME` when SIGTERM stops it (exit 143, as vmshift),
 * or `orphaned NAME` when its scheduler dies (it stops too, as vmshift does; unless
 * `FAKE_OUTLIVE` is set, to stand for a child that hangs on).
 *
 * @module
 */

const name = Deno.args[Deno.args.indexOf("-on") + 1]!;
const log = Deno.env.get("FAKE_LOG")!;
const ms = Number(Deno.env.get("FAKE_MS") ?? "100");
const note = (what: string) => Deno.writeTextFileSync(log, `${what} ${name}\n`, { append: true });
const event = (ev: Record<string, unknown>) => console.log(JSON.stringify(ev));

note("start");
Deno.addSignalListener("SIGTERM", () => {
  note("stopped");
  Deno.exit(143);
});
if (!Deno.env.get("FAKE_OUTLIVE")) {
  const ppid = () => {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1];
  };
  // Compared with the pid the scheduler gave: it may have died before this process started.
  const parent = Deno.env.get("VMSHIFT_SCHEDULER_PID");
  const t = setInterval(() => {
    if (ppid() !== parent) {
      note("orphaned");
      Deno.exit(143);
    }
  }, 100);
  Deno.unrefTimer(t);
  if (ppid() !== parent) {
    note("orphaned");
    Deno.exit(143);
  }
}
const total = 1 << 20;
// FAKE_FAIL=NAME,...: these fail halfway, the way vmshift fails (an error event, stderr, exit 1).
const fails = (Deno.env.get("FAKE_FAIL") ?? "").split(",").includes(name);
const steps = 10;
for (let i = 1; i <= steps; i++) {
  await new Promise((r) => setTimeout(r, ms / steps));
  const left = ((steps - i) * ms) / steps / 1000;
  event({
    type: "progress",
    disk: 1,
    disks: 1,
    bytes: (total * i) / steps,
    total,
    percent: (100 * i) / steps,
    rate: total / (ms / 1000),
    eta: Math.round(left),
  });
  if (fails && i === steps / 2) {
    const msg = `Copying disk 1 failed: the target refused the write (${name})`;
    event({ type: "error", message: msg });
    console.error(`vmshift: error: ${msg}`);
    note("failed");
    Deno.exit(1);
  }
}
event({ type: "result", vm: name, disks: [{ size: total, data_bytes: total / 2 }], seconds: 0 });
note("done");
