import { assert, assertEquals } from "../_assert.ts";
import { parsePlan, type Plan } from "../../src/plan/plan.ts";
import {
  type ChildRun,
  type Launcher,
  type OpenWindow,
  Scheduler,
  type SchedulerOptions,
  type Windows,
} from "../../src/plan/scheduler.ts";
import { SqliteStore } from "../../src/plan/state.ts";

/** How a fake child behaves: runs `ms`, then exits with `code` (or waits for stop()). */
interface Behaviour {
  ms?: number;
  code?: number;
  stderr?: string;
  /** Runs until stopped. */
  hang?: boolean;
}

interface Started {
  vm: string;
  at: number;
  end?: number;
  args: string[];
}

/** A launcher whose children are timers; behaviours are taken per VM in order. */
function fakeLauncher(behaviours: Record<string, Behaviour[]>) {
  const started: Started[] = [];
  let running = 0;
  let maxRunning = 0;
  const launcher: Launcher = {
    start(args, _env, onEvent, onStderr) {
      const vm = args[args.indexOf("-on") + 1]!;
      const b = behaviours[vm]?.shift() ?? {};
      const rec: Started = { vm, at: Date.now(), args };
      started.push(rec);
      running++;
      maxRunning = Math.max(maxRunning, running);
      let stop!: () => void;
      const done = new Promise<number>((resolve) => {
        const finish = (code: number) => {
          clearTimeout(t);
          running--;
          rec.end = Date.now();
          if (code === 0) {
            onEvent({ type: "progress", disk: 1, bytes: 1 << 20, total: 1 << 20, percent: 100 });
            onEvent({ type: "result", disks: [{ size: 1 << 20, data_bytes: 1000 }], seconds: 0 });
          } else if (b.stderr) onStderr(b.stderr);
          resolve(code);
        };
        const t = b.hang ? undefined : setTimeout(() => finish(b.code ?? 0), b.ms ?? 20);
        stop = () => finish(143);
      });
      return { pid: 1, done, stop } satisfies ChildRun;
    },
  };
  return {
    launcher,
    started,
    get maxRunning() {
      return maxRunning;
    },
  };
}

function openFor(ms: number | undefined): Windows {
  const end = ms === undefined ? Infinity : Date.now() + ms;
  return {
    current: (now): OpenWindow | undefined => (now < end ? { name: "test", end } : undefined),
    watch() {},
  };
}

function plan(yaml: string): Plan {
  return parsePlan(
    `defaults: { input: { mode: disk, args: [x.img] }, output: { mode: "null" }, convert: false }\n` +
      yaml,
    "p.yaml",
  );
}

async function withStore<T>(f: (store: SqliteStore) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-sched-test-" });
  try {
    using store = new SqliteStore(`${dir}/state.db`);
    return await f(store);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function scheduler(p: Plan, store: SqliteStore, o: Partial<SchedulerOptions>): Scheduler {
  return new Scheduler(p, store, {
    launcher: o.launcher!,
    windows: o.windows ?? openFor(undefined),
    owner: "test",
    log: () => {},
    sizeOf: () => undefined,
    stopOrphan: () => Promise.resolve(false),
    ...o,
  });
}

Deno.test("the scheduler keeps the limit full, highest priority first, dependencies after", async () => {
  await withStore(async (store) => {
    const p = plan(`
limits: { total: 2 }
vms:
  - { name: a }
  - { name: b }
  - { name: app, after: db }
  - { name: db, priority: 5 }
  - { name: c }
  - { name: d }
`);
    const fake = fakeLauncher({});
    const s = await scheduler(p, store, { launcher: fake.launcher }).run(
      new AbortController().signal,
    );
    assertEquals([s.done, s.failed, s.pending], [6, 0, 0]);
    assertEquals(fake.maxRunning, 2);
    assertEquals(fake.started[0]!.vm, "db");
    const db = fake.started.find((x) => x.vm === "db")!;
    const app = fake.started.find((x) => x.vm === "app")!;
    assert(app.at >= db.end!, "app started before db was done");
    assertEquals(fake.started.length, 6, "every VM ran exactly once");
    // The child is a --machine-readable vmshift run of the VM.
    assert(db.args.includes("--machine-readable") && db.args.at(-2) === "--");
    assertEquals(store.get("db")!.virtualSize, 1 << 20);
  });
});

Deno.test("per source host, datastore and storage domain limits hold", async () => {
  await withStore(async (store) => {
    const p = plan(`
limits: { total: 4, perSourceHost: 1, perDatastore: 2 }
vms:
  - { name: a1, sourceHost: a, datastore: ds1 }
  - { name: a2, sourceHost: a, datastore: ds1 }
  - { name: b1, sourceHost: b, datastore: ds1 }
  - { name: c1, sourceHost: c, datastore: ds1 }
  - { name: d1, sourceHost: d, datastore: ds2 }
`);
    const fake = fakeLauncher({});
    await scheduler(p, store, { launcher: fake.launcher }).run(new AbortController().signal);
    const by = (n: string) => fake.started.find((s) => s.vm === n)!;
    // How many of these ran at the moment each of them started.
    const most = (runs: Started[]) =>
      Math.max(...runs.map((x) => runs.filter((y) => y.at <= x.at && x.at < y.end!).length));
    assertEquals(most(["a1", "a2"].map(by)), 1, "two runs from source host a at once");
    assertEquals(most(["a1", "a2", "b1", "c1"].map(by)), 2, "datastore ds1 limit");
    assertEquals(fake.started.length, 5);
  });
});

Deno.test("transient failures are retried with growing backoff; exit 2 and the last attempt fail", async () => {
  await withStore(async (store) => {
    const p = plan(`
retry: { attempts: 3, backoff: 0.05 }
limits: { total: 3 }
vms: [{ name: flaky }, { name: usage }, { name: broken }]
`);
    const fake = fakeLauncher({
      flaky: [{ code: 1 }, { code: 1 }, { code: 0 }],
      usage: [{ code: 2, stderr: 'vmshift: error: Unknown option "-ox"' }],
      broken: [1, 2, 3].map(() => ({
        code: 1,
        stderr: "vmshift: error: Copying disk 1 failed: EIO",
      })),
    });
    const s = await scheduler(p, store, { launcher: fake.launcher }).run(
      new AbortController().signal,
    );
    assertEquals([s.done, s.failed], [1, 2]);
    const starts = fake.started.filter((x) => x.vm === "flaky");
    assertEquals(starts.length, 3);
    assert(starts[1]!.at - starts[0]!.end! >= 45, "no backoff before the 2nd attempt");
    assert(starts[2]!.at - starts[1]!.end! >= 95, "the backoff did not double");
    const usage = store.get("usage")!;
    assertEquals([usage.state, usage.attempts, usage.reason], [
      "failed",
      1,
      'Unknown option "-ox"',
    ]);
    const broken = store.get("broken")!;
    assertEquals([broken.state, broken.attempts, broken.failures], ["failed", 3, 3]);
    assertEquals(broken.reason, "Copying disk 1 failed: EIO");
    assertEquals(store.get("flaky")!.state, "done");
  });
});

Deno.test("a VM whose dependency failed fails without running", async () => {
  await withStore(async (store) => {
    const p = plan(`
retry: { attempts: 1 }
vms: [{ name: db }, { name: app, after: db }]
`);
    const fake = fakeLauncher({ db: [{ code: 1 }] });
    const s = await scheduler(p, store, { launcher: fake.launcher }).run(
      new AbortController().signal,
    );
    assertEquals([s.done, s.failed], [0, 2]);
    assertEquals(fake.started.map((x) => x.vm), ["db"]);
    assertEquals(store.get("app")!.reason, 'its dependency "db" failed');
    assertEquals(store.get("app")!.attempts, 0);
  });
});

Deno.test("at the window's end every run is stopped and left pending for the next window", async () => {
  await withStore(async (store) => {
    const p = plan(`vms: [{ name: a }, { name: b }]\nlimits: { total: 2 }`);
    const fake = fakeLauncher({ a: [{ hang: true }], b: [{ hang: true }] });
    const stop = new AbortController();
    const t = setTimeout(() => stop.abort(), 400);
    const s = await scheduler(p, store, { launcher: fake.launcher, windows: openFor(150) })
      .run(stop.signal);
    clearTimeout(t);
    assertEquals([s.done, s.failed, s.pending], [0, 0, 2]);
    for (const n of ["a", "b"]) {
      const r = store.get(n)!;
      assertEquals([r.state, r.attempts, r.failures], ["pending", 1, 0]);
      assert(r.reason?.startsWith("the window closed"), r.reason ?? "");
      const run = fake.started.find((x) => x.vm === n)!;
      assert(
        run.end! - run.at >= 140 && run.end! - run.at < 350,
        `stopped after ${run.end! - run.at} ms`,
      );
    }
    // Nothing started after the window closed.
    assertEquals(fake.started.length, 2);
  });
});

Deno.test("a VM that cannot finish inside the window at the expected rate waits", async () => {
  await withStore(async (store) => {
    // 1 MiB/s assumed and 5 s left: 100 MiB does not fit, 2 MiB does. Once "small" has run, the
    // measured rate (1 MiB in some milliseconds) replaces the assumed one and "big" fits.
    const p = plan(`
assumedRate: 1M
vms: [{ name: big, size: 100M, priority: 1 }, { name: small, size: 2M }, { name: huge, size: 1T }]
`);
    const fake = fakeLauncher({});
    const logs: string[] = [];
    const stop = new AbortController();
    const t = setTimeout(() => stop.abort(), 400);
    await scheduler(p, store, {
      launcher: fake.launcher,
      windows: openFor(5000),
      log: (l) => logs.push(l),
    }).run(stop.signal);
    clearTimeout(t);
    assertEquals(fake.started.map((x) => x.vm), ["small", "big"]);
    assert(
      logs.some((l) =>
        l.startsWith('big: does not fit in the window "test": 100.0 MiB at 1.0 MiB/s')
      ),
      logs.join("\n"),
    );
    const huge = store.get("huge")!;
    assertEquals([huge.state, huge.attempts], ["pending", 0]);
    assert(huge.reason?.startsWith('does not fit in the window "test": 1.0 TiB at'), huge.reason!);
  });
});

Deno.test("a run a dead scheduler left is stopped and retried, and can never finish it too", async () => {
  await withStore(async (store) => {
    const p = plan(`vms: [{ name: a }]`);
    store.sync(["a"]);
    assert(store.claim("a", "old-run", "test", { now: Date.now() }));
    store.setPid("a", "old-run", 4242);
    const stopped: Array<[number, string]> = [];
    const fake = fakeLauncher({});
    const s = await scheduler(p, store, {
      launcher: fake.launcher,
      stopOrphan: (pid, runId) => {
        stopped.push([pid, runId]);
        return Promise.resolve(true);
      },
    }).run(new AbortController().signal);
    assertEquals(stopped, [[4242, "old-run"]]);
    assertEquals(s.done, 1);
    const r = store.get("a")!;
    assertEquals([r.state, r.attempts, r.failures], ["done", 2, 0]);
    // The old run's late success is not recorded a second time.
    assert(
      !store.finish("a", "old-run", {
        bytes: 1,
        dataBytes: 1,
        virtualSize: 1,
        seconds: 1,
        details: {},
      }, Date.now()),
    );
    assertEquals(store.get("a")!.virtualSize, 1 << 20);
  });
});

Deno.test("an interrupt stops every run and leaves it pending", async () => {
  await withStore(async (store) => {
    const p = plan(`vms: [{ name: a }]`);
    const fake = fakeLauncher({ a: [{ hang: true }] });
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const s = await scheduler(p, store, { launcher: fake.launcher }).run(stop.signal);
    assertEquals(s.pending, 1);
    assertEquals(store.get("a")!.state, "pending");
    assertEquals(store.get("a")!.failures, 0);
  });
});

Deno.test("a window's bandwidth goes to every run and caps the rate the window fit expects", async () => {
  await withStore(async (store) => {
    // 80 Mbit/s = 10 MiB/s: 20 MiB fits in the 5 s left, 100 MiB does not (at 1 GiB/s assumed
    // both would).
    const p = plan(`
assumedRate: 1G
limits: { total: 2 }
vms: [{ name: fits, size: 20M }, { name: too-big, size: 100M }]
`);
    const fake = fakeLauncher({ fits: [{ hang: true }] });
    const end = Date.now() + 5000;
    const windows: Windows = {
      current: (now) => (now < end ? { name: "office", end, bandwidth: 80 * 2 ** 20 } : undefined),
      watch() {},
    };
    const stop = new AbortController();
    const t = setTimeout(() => stop.abort(), 200);
    await scheduler(p, store, { launcher: fake.launcher, windows }).run(stop.signal);
    clearTimeout(t);
    assertEquals(fake.started.map((x) => x.vm), ["fits"]);
    const args = fake.started[0]!.args;
    const i = args.indexOf("--bandwidth");
    assert(i > 0 && i < args.indexOf("--"), args.join(" "));
    assertEquals(args[i + 1], String(80 * 2 ** 20));
    assert(store.get("too-big")!.reason!.includes("100.0 MiB at 10.0 MiB/s"));
  });
});
