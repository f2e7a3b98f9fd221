/**
 * The scheduler: runs a plan's migrations as child vmshift processes (`--machine-readable`)
 * inside its maintenance windows and limits.
 *
 * One straight loop: recover what a dead scheduler left running, then until nothing is left
 * pending: start every VM that may start (window open, dependencies done, backoff passed,
 * limits not reached, highest priority first, and only when it can finish before the window
 * closes at the measured rate), wait for something to change (a run ends, a backoff or the
 * window ends, a window opens, an interrupt), repeat. At a window's end every run is stopped
 * (SIGTERM: vmshift removes what it created) and its VM is left pending for the next window.
 *
 * The pieces that touch the world come in through small interfaces ({@linkcode Launcher},
 * {@linkcode Windows}), so that tests can drive the loop with fakes.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { basename } from "node:path";
import { errorMessage } from "../errors.ts";
import { formatBytes, formatDuration } from "../progress.ts";
import { childArgs, type Plan, type PlanVm, storageDomain } from "./plan.ts";
import { nextOpening, openWindowStart } from "./cron.ts";
import type { Brief, StateStore } from "./state.ts";

/** A child run, as the scheduler sees it. */
export interface ChildRun {
  /** Its process id. */
  readonly pid: number;
  /** Resolves with the exit code. */
  readonly done: Promise<number>;
  /** Asks it to stop (SIGTERM; vmshift cleans up and exits 143). */
  stop(): void;
}

/** Starts child runs. */
export interface Launcher {
  /**
   * Starts one migration.
   * @param args vmshift's arguments.
   * @param env Extra environment (the run id, so that a later scheduler can find the child).
   * @param onEvent Called with every machine-readable event the child prints.
   * @param onStderr Called with every line the child prints on stderr.
   * @returns The run.
   */
  start(
    args: string[],
    env: Record<string, string>,
    onEvent: (ev: Record<string, unknown>) => void,
    onStderr: (line: string) => void,
  ): ChildRun;
}

/** A window that is open. */
export interface OpenWindow {
  name: string;
  /** When it closes, ms since the epoch (Infinity: never). */
  end: number;
  /** `--bandwidth` for runs in it, bits/s. */
  bandwidth?: number;
}

/** When migrations may run. */
export interface Windows {
  /**
   * The window open at a time.
   * @param now Ms since the epoch.
   * @returns The window, or undefined when none is open.
   */
  current(now: number): OpenWindow | undefined;
  /**
   * Calls back whenever a window opens, until the signal aborts.
   * @param cb The callback.
   * @param signal Stops watching.
   */
  watch(cb: () => void, signal: AbortSignal): void;
  /**
   * When the next window opens after a time, for messages.
   * @param now Ms since the epoch.
   * @returns Ms since the epoch, or undefined.
   */
  next?(now: number): number | undefined;
}

/** Options of {@linkcode Scheduler}. */
export interface SchedulerOptions {
  launcher: Launcher;
  windows: Windows;
  /** This host's name, recorded as the owner of its runs. */
  owner: string;
  /** Messages for the user. */
  log: (text: string) => void;
  /**
   * Estimated bytes to copy of a VM without `size` in the plan.
   * @default the apparent size of its local input files
   */
  sizeOf?: (vm: PlanVm) => number | undefined;
  /**
   * Stops the child a dead scheduler left running, if it still runs (SIGTERM, then SIGKILL).
   * @default finds it by its run id in /proc/PID/environ
   */
  stopOrphan?: (pid: number, runId: string) => Promise<boolean>;
  /** Clock, ms since the epoch. */
  now?: () => number;
  /**
   * How long a run stays claimed without a heartbeat: after that, another scheduler (or this
   * one, restarted) reclaims it. Heartbeats come every third of it.
   * @default 30 s
   */
  leaseMs?: number;
  /**
   * At start, reclaim every run marked running, leases or not: right when no other scheduler
   * can be alive (the SQLite store is locked by this one). Otherwise runs are reclaimed when
   * their lease has ended, at start and whenever the scheduler looks for work.
   * @default true
   */
  recoverAllAtStart?: boolean;
  /**
   * The host this scheduler runs on: runs of dead schedulers on it have children this one can
   * stop.
   * @default the part of owner before "/"
   */
  host?: string;
}

/** One run, for the occupancy figures. */
export interface RunRecord {
  vm: string;
  start: number;
  end: number;
  code: number;
}

/** What a scheduler run did. */
export interface Summary {
  done: number;
  failed: number;
  pending: number;
  runs: RunRecord[];
  /**
   * Milliseconds the scheduler spent deciding, recording and spawning (its overhead, all of
   * it: {@linkcode Summary.spawnMs} is part of it).
   */
  busyMs: number;
  /** Of that, milliseconds spent in spawning children (`fork`/`exec`). */
  spawnMs: number;
  /** Wall time of the run. */
  wallMs: number;
}

interface Active {
  vm: PlanVm;
  runId: string;
  child: ChildRun;
  start: number;
  /** Why the scheduler stopped it, if it did. */
  stopReason?: string;
  warnings: string[];
  conversion?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: string;
  /** The child's last stderr lines, for a failure that printed no error event. */
  stderr: string[];
  disksDone: number;
  lastTotal: number;
  lastDisk: number;
  rate: number;
}

/** Runs a plan. */
export class Scheduler {
  readonly #plan: Plan;
  readonly #store: StateStore;
  readonly #o: Required<SchedulerOptions>;
  readonly #active = new Map<string, Active>();
  readonly #runs: RunRecord[] = [];
  #wake: () => void = () => {};
  #busyMs = 0;
  #waitingSaid = false;
  readonly #samples: Array<[number, number]> = [];
  #spawnMs = 0;

  /**
   * @param plan The plan.
   * @param store Its state.
   * @param options Launcher, windows, owner, log.
   */
  constructor(plan: Plan, store: StateStore, options: SchedulerOptions) {
    this.#plan = plan;
    this.#store = store;
    this.#o = {
      sizeOf: localInputSize,
      stopOrphan,
      now: () => Date.now(),
      leaseMs: 30_000,
      recoverAllAtStart: true,
      host: options.owner.split("/")[0]!,
      ...options,
    };
  }

  /**
   * Runs until every VM is done or failed, or the signal aborts (then every run is stopped and
   * left pending).
   *
   * @param signal Interrupt.
   * @returns What happened.
   */
  async run(signal: AbortSignal): Promise<Summary> {
    const t0 = this.#o.now();
    await this.#store.sync(this.#plan.vms.map((v) => v.name));
    await this.#recover(this.#o.recoverAllAtStart ? Infinity : this.#o.now());
    const stopWatching = new AbortController();
    const both = AbortSignal.any([signal, stopWatching.signal]);
    this.#o.windows.watch(() => this.#wake(), both);
    const onAbort = () => this.#wake();
    signal.addEventListener("abort", onAbort);
    let timer: ReturnType<typeof setTimeout> | undefined;
    let sampler: ReturnType<typeof setInterval> | undefined;
    let heart: ReturnType<typeof setInterval> | undefined;
    try {
      sampler = setInterval(() => this.#sample(), 1000);
      // Heartbeats renew this scheduler's leases, and wake it to see what others did.
      heart = setInterval(async () => {
        try {
          const before = new Set(this.#active.keys());
          const held = await this.#store.heartbeat(this.#o.owner, this.#o.now(), this.#o.leaseMs);
          // A run another scheduler reclaimed (this one missed its heartbeats: a pause, a lost
          // connection) is stopped at once; its end is not recorded.
          for (const [name, a] of this.#active) {
            if (before.has(name) && !held.includes(a.runId) && !a.stopReason) {
              a.stopReason = "another scheduler reclaimed it after this one missed its heartbeats";
              this.#o.log(`${name}: stopping: ${a.stopReason}`);
              a.child.stop();
            }
          }
        } catch (e) {
          this.#o.log(`heartbeat failed: ${errorMessage(e)}`);
        }
        this.#wake();
      }, this.#o.leaseMs / 3);
      while (true) {
        const b0 = performance.now();
        const woke = new Promise<void>((r) => (this.#wake = r));
        let next: number;
        if (signal.aborted) {
          this.#stopAll("the scheduler was interrupted");
          next = Infinity;
        } else next = await this.#fill();
        this.#busyMs += performance.now() - b0;
        if (this.#active.size === 0 && (signal.aborted || await this.#finished())) break;
        clearTimeout(timer);
        if (Number.isFinite(next)) {
          // (At most an hour: longer delays overflow timers; waking early is harmless.)
          timer = setTimeout(
            () => this.#wake(),
            Math.min(Math.max(0, next - this.#o.now()), 3600_000),
          );
        }
        await woke;
      }
    } finally {
      clearTimeout(timer);
      clearInterval(sampler);
      clearInterval(heart);
      signal.removeEventListener("abort", onAbort);
      stopWatching.abort();
    }
    const rows = await this.#rows();
    return {
      done: rows.filter((r) => r.state === "done").length,
      failed: rows.filter((r) => r.state === "failed").length,
      pending: rows.filter((r) => r.state === "pending").length,
      runs: this.#runs,
      busyMs: this.#busyMs,
      spawnMs: this.#spawnMs,
      wallMs: this.#o.now() - t0,
    };
  }

  /** The plan's rows, in plan order. */
  async #rows(): Promise<Brief[]> {
    const byName = new Map((await this.#store.brief()).map((r) => [r.name, r]));
    return this.#plan.vms.map((v) => byName.get(v.name)!);
  }

  async #finished(): Promise<boolean> {
    return (await this.#rows()).every((r) => r.state === "done" || r.state === "failed");
  }

  /**
   * Runs whose scheduler died (its lease ended, or every run when `before` is Infinity): stop
   * their children where they run on this host, and put the VMs back to pending.
   * @param before Runs whose lease ended before this time.
   */
  async #recover(before: number): Promise<void> {
    const plan = new Set(this.#plan.vms.map((v) => v.name));
    for (const r of await this.#store.expired(before)) {
      if (!plan.has(r.name) || !r.runId || this.#active.has(r.name)) continue;
      const local = r.owner === null || r.owner.split("/")[0] === this.#o.host;
      if (local && r.pid !== null && await this.#o.stopOrphan(r.pid, r.runId)) {
        this.#o.log(`${r.name}: stopped the run a previous scheduler left (pid ${r.pid})`);
      }
      const released = await this.#store.stop(r.name, r.runId, {
        reason: `its scheduler (${r.owner}) stopped while this ran; cleaned up, to be retried`,
        failure: false,
        giveUp: false,
        notBefore: 0,
        now: this.#o.now(),
      });
      if (released) this.#o.log(`${r.name}: reclaimed from ${r.owner}; will be retried`);
    }
  }

  /**
   * Starts what may start.
   * @returns When to look again (a backoff ends, the window ends), ms since the epoch.
   */
  async #fill(): Promise<number> {
    if (!this.#o.recoverAllAtStart) await this.#recover(this.#o.now());
    const now = this.#o.now();
    let next = Infinity;
    const win = this.#o.windows.current(now);
    if (!win) {
      if (this.#active.size) this.#stopAll("the window closed");
      if (!this.#waitingSaid) {
        this.#waitingSaid = true;
        const at = this.#o.windows.next?.(now);
        this.#o.log(
          `No window is open${at ? `; the next opens ${new Date(at).toISOString()}` : ""}`,
        );
      }
      return next;
    }
    this.#waitingSaid = false;
    if (win.end <= now) return next;
    next = win.end;

    const rows = await this.#rows();
    const state = new Map(rows.map((r) => [r.name, r]));
    // A VM whose dependency failed can never start.
    for (const vm of this.#plan.vms) {
      const r = state.get(vm.name)!;
      if (r.state !== "pending") continue;
      const bad = vm.after.find((d) => state.get(d)?.state === "failed");
      if (bad) await this.#failPending(vm.name, `its dependency "${bad}" failed`);
    }
    const l = this.#plan.limits;
    // Limits count every run of the plan, this scheduler's or another's; the claim checks them
    // again in its transaction.
    const groups = (vm: PlanVm) => {
      const out: Array<{ names: string[]; max: number }> = [];
      const keys: Array<[(v: PlanVm) => string | undefined, number | undefined]> = [
        [(v) => v.sourceHost, l.perSourceHost],
        [(v) => v.datastore, l.perDatastore],
        [storageDomain, l.perStorageDomain],
      ];
      for (const [key, max] of keys) {
        const k = key(vm);
        if (max === undefined || k === undefined) continue;
        out.push({ names: this.#plan.vms.filter((v) => key(v) === k).map((v) => v.name), max });
      }
      return out;
    };
    const full = (g: { names: string[]; max: number }) =>
      g.names.filter((n) => state.get(n)?.state === "running" || this.#active.has(n)).length >=
        g.max;
    const rate = this.#rate(win, rows);
    const candidates = this.#plan.vms
      .map((vm, i) => ({ vm, i, row: state.get(vm.name)! }))
      .filter((c) => c.row.state === "pending" && !this.#active.has(c.vm.name))
      .sort((a, b) => b.vm.priority - a.vm.priority || a.i - b.i);
    for (const { vm, row } of candidates) {
      if (this.#active.size >= l.total) break;
      if (vm.after.some((d) => state.get(d)?.state !== "done")) continue;
      if (row.notBefore > now) {
        next = Math.min(next, row.notBefore);
        continue;
      }
      const limits = groups(vm);
      if (limits.some(full)) continue;
      const size = vm.size ?? this.#o.sizeOf(vm);
      if (size !== undefined && rate !== undefined && Number.isFinite(win.end)) {
        const needMs = (size / rate) * 1000;
        if (now + needMs > win.end) {
          const why = `does not fit in the window "${win.name}": ${formatBytes(size)} at ` +
            `${formatBytes(rate)}/s needs ${formatDuration(needMs / 1000)}, ` +
            `${formatDuration((win.end - now) / 1000)} left`;
          if (row.reason !== why) {
            await this.#store.note(vm.name, why);
            this.#o.log(`${vm.name}: ${why}`);
          }
          continue;
        }
      }
      if (await this.#start(vm, win, now, row.attempts + 1, limits)) {
        state.set(vm.name, { ...row, state: "running" });
      }
    }
    return next;
  }

  async #failPending(name: string, reason: string): Promise<void> {
    if (await this.#store.failPending(name, reason, this.#o.now())) {
      this.#o.log(`${name}: failed: ${reason}`);
    }
  }

  /** Bytes/s to expect: measured on the plan's finished runs, else assumed; capped by the window. */
  #rate(win: OpenWindow, rows: Brief[]): number | undefined {
    const done = rows.filter((r) => r.state === "done" && (r.seconds ?? 0) > 0);
    const bytes = done.reduce((n, r) => n + r.virtualSize, 0);
    const secs = done.reduce((n, r) => n + r.seconds!, 0);
    // Runs share the host: the rate of one run is what it got while others ran too.
    let rate = secs > 0 ? bytes / secs : this.#plan.assumedRate;
    if (win.bandwidth !== undefined) rate = Math.min(rate ?? Infinity, win.bandwidth / 8);
    return rate;
  }

  async #start(
    vm: PlanVm,
    win: OpenWindow,
    now: number,
    attempt: number,
    groups: Array<{ names: string[]; max: number }>,
  ): Promise<boolean> {
    const runId = crypto.randomUUID();
    const claimed = await this.#store.claim(vm.name, runId, this.#o.owner, {
      now,
      leaseMs: this.#o.leaseMs,
      groups,
    });
    if (!claimed) return false;
    const args = childArgs(vm);
    const flags = ["--machine-readable"];
    if (win.bandwidth !== undefined) flags.push("--bandwidth", String(win.bandwidth));
    args.splice(args.indexOf("--"), 0, ...flags);
    const a: Active = {
      vm,
      runId,
      child: undefined as unknown as ChildRun,
      start: now,
      warnings: [],
      stderr: [],
      disksDone: 0,
      lastTotal: 0,
      lastDisk: 1,
      rate: 0,
    };
    const s0 = performance.now();
    try {
      a.child = this.#o.launcher.start(
        args,
        // The run id finds an orphan again; the pid lets the child notice this scheduler died.
        { VMSHIFT_RUN_ID: runId, VMSHIFT_SCHEDULER_PID: String(Deno.pid) },
        (ev) => this.#event(a, ev),
        (line) => {
          a.stderr.push(line);
          if (a.stderr.length > 5) a.stderr.shift();
        },
      );
    } catch (e) {
      await this.#store.stop(vm.name, runId, {
        reason: `cannot start vmshift: ${errorMessage(e)}`,
        failure: true,
        giveUp: true,
        notBefore: 0,
        now,
      });
      return false;
    }
    this.#spawnMs += performance.now() - s0;
    this.#active.set(vm.name, a);
    await this.#store.setPid(vm.name, runId, a.child.pid);
    this.#o.log(`${vm.name}: started (attempt ${attempt})`);
    a.child.done.then((code) => this.#ended(a, code), (e) => this.#ended(a, -1, errorMessage(e)))
      .catch((e) => {
        this.#o.log(`${vm.name}: cannot record the end of the run: ${errorMessage(e)}`);
        this.#active.delete(vm.name);
        this.#wake();
      });
    return true;
  }

  #event(a: Active, ev: Record<string, unknown>): void {
    switch (ev.type) {
      case "progress": {
        const disk = Number(ev.disk ?? 1);
        if (disk !== a.lastDisk) {
          a.disksDone += a.lastTotal;
          a.lastDisk = disk;
        }
        a.lastTotal = Number(ev.total ?? 0);
        a.rate = Number(ev.rate ?? 0);
        const p = {
          bytes: a.disksDone + Number(ev.bytes ?? 0),
          percent: Number(ev.percent ?? 0),
          rate: a.rate,
          ...(typeof ev.eta === "number" ? { eta: ev.eta } : {}),
        };
        Promise.resolve(this.#store.progress(a.vm.name, a.runId, p)).catch(() => {});
        break;
      }
      case "warning":
        a.warnings.push(String(ev.message));
        break;
      case "error":
        a.error = String(ev.message);
        break;
      case "conversion":
        a.conversion = ev;
        break;
      case "result":
        a.result = ev;
        break;
    }
  }

  async #ended(a: Active, code: number, why?: string): Promise<void> {
    const b0 = performance.now();
    const now = this.#o.now();
    this.#runs.push({ vm: a.vm.name, start: a.start, end: now, code });
    const details = {
      warnings: a.warnings,
      ...(a.conversion ? { conversion: a.conversion } : {}),
      ...(a.result ? { result: a.result } : {}),
    };
    const name = a.vm.name;
    if (code === 0 && a.result) {
      const disks = (a.result.disks ?? []) as Array<Record<string, number>>;
      const virtualSize = disks.reduce((n, d) => n + (d.size ?? 0), 0);
      const ok = await this.#store.finish(name, a.runId, {
        bytes: virtualSize,
        dataBytes: disks.reduce((n, d) => n + (d.data_bytes ?? 0), 0),
        virtualSize,
        seconds: (now - a.start) / 1000,
        details,
      }, now);
      this.#o.log(
        ok
          ? `${name}: done in ${formatDuration((now - a.start) / 1000)}`
          : `${name}: finished, but this run no longer held it: not recorded`,
      );
    } else if (a.stopReason) {
      await this.#store.stop(name, a.runId, {
        reason: `${a.stopReason}; cleaned up, left for the next window`,
        failure: false,
        giveUp: false,
        notBefore: 0,
        now,
        details,
      });
      this.#o.log(`${name}: stopped: ${a.stopReason}`);
    } else {
      const row = (await this.#store.get(name))!;
      const last = a.stderr.findLast((l) => l.startsWith("vmshift: error: "));
      const reason = a.error ?? last?.slice("vmshift: error: ".length) ?? why ??
        `vmshift exited with code ${code}`;
      // Exit code 2: the command line is wrong; retrying cannot help.
      const giveUp = code === 2 || row.failures + 1 >= this.#plan.retry.attempts;
      const backoff = Math.min(
        this.#plan.retry.backoffMs * 2 ** row.failures,
        this.#plan.retry.maxBackoffMs,
      );
      await this.#store.stop(name, a.runId, {
        reason,
        failure: true,
        giveUp,
        notBefore: giveUp ? 0 : now + backoff,
        now,
        details,
      });
      this.#o.log(
        giveUp
          ? `${name}: failed: ${reason}`
          : `${name}: failed (${reason}); retrying in ${formatDuration(backoff / 1000)}`,
      );
    }
    this.#active.delete(name);
    this.#busyMs += performance.now() - b0;
    this.#wake();
  }

  #stopAll(reason: string): void {
    for (const a of this.#active.values()) {
      if (a.stopReason) continue;
      a.stopReason = reason;
      this.#o.log(`${a.vm.name}: stopping: ${reason}`);
      a.child.stop();
    }
  }

  #sample(): void {
    let rate = 0;
    for (const a of this.#active.values()) rate += a.rate;
    const now = this.#o.now();
    this.#samples.push([now, rate]);
    if (this.#samples.length > 3600) this.#samples.shift();
    // The store keeps one sample in five (the report's record); the page gets all of them.
    if (this.#samples.length % 5 === 0) {
      Promise.resolve(this.#store.sample(now, rate)).catch(() => {});
    }
  }

  /** Throughput of all runs, one sample a second over the last hour: [ms, bytes/s]. */
  get samples(): Array<[number, number]> {
    return this.#samples;
  }

  /**
   * The window open now.
   * @returns Its name and end (null: never), or null.
   */
  openWindow(): { name: string; end: number | null } | null {
    const w = this.#o.windows.current(this.#o.now());
    return w ? { name: w.name, end: Number.isFinite(w.end) ? w.end : null } : null;
  }
}

/**
 * The windows of a plan, opened with `Deno.cron` (a timer to the next opening where
 * `Deno.cron` is not available: run without `--unstable-cron`).
 *
 * @param plan The plan.
 * @returns Its windows; a plan without windows is always open.
 */
export function planWindows(plan: Plan): Windows {
  return {
    current(now) {
      if (plan.windows.length === 0) return { name: "always", end: Infinity };
      let best: OpenWindow | undefined;
      for (const w of plan.windows) {
        const start = openWindowStart(w.cron, w.durationMs, new Date(now));
        if (!start) continue;
        const end = start.getTime() + w.durationMs;
        if (!best || end > best.end) {
          best = {
            name: w.name,
            end,
            ...(w.bandwidth !== undefined ? { bandwidth: w.bandwidth } : {}),
          };
        }
      }
      return best;
    },
    next(now) {
      const at = plan.windows.map((w) => nextOpening(w.cron, new Date(now))?.getTime())
        .filter((t): t is number => t !== undefined);
      return at.length ? Math.min(...at) : undefined;
    },
    watch(cb, signal) {
      plan.windows.forEach((w, i) => {
        if (typeof Deno.cron === "function") {
          Deno.cron(`vmshift window ${i} ${w.name}`, w.cron.source, { signal }, cb);
          return;
        }
        const arm = () => {
          const at = nextOpening(w.cron, new Date());
          if (!at || signal.aborted) return;
          const t = setTimeout(() => {
            cb();
            arm();
          }, at.getTime() - Date.now());
          signal.addEventListener("abort", () => clearTimeout(t), { once: true });
        };
        arm();
      });
    },
  };
}

/** The repository's main.ts, which children run when vmshift runs under `deno`. */
const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/**
 * Starts child vmshift processes: `deno run -A main.ts ...` when run by deno, the binary itself
 * when compiled. `VMSHIFT_CHILD` replaces the command (tests use a stand-in).
 *
 * @param options Where the child's stderr goes.
 * @returns The launcher.
 */
export function childLauncher(options: { stderr?: (line: string) => void } = {}): Launcher {
  const override = Deno.env.get("VMSHIFT_CHILD");
  const [cmd, ...prefix] = override
    ? override.split(" ")
    : basename(Deno.execPath()).startsWith("deno")
    ? [Deno.execPath(), "run", "-A", MAIN]
    : [Deno.execPath()];
  return {
    start(args, env, onEvent, onStderr) {
      const child = new Deno.Command(cmd!, {
        args: [...prefix, ...args],
        env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const lines = async (s: ReadableStream<Uint8Array>, f: (line: string) => void) => {
        let buf = "";
        for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            f(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
          }
        }
        if (buf) f(buf);
      };
      const out = lines(child.stdout, (line) => {
        try {
          const ev = JSON.parse(line);
          if (ev && typeof ev === "object") onEvent(ev);
        } catch { /* not an event */ }
      });
      const err = lines(child.stderr, (line) => {
        onStderr(line);
        options.stderr?.(line);
      });
      let killTimer: ReturnType<typeof setTimeout> | undefined;
      return {
        pid: child.pid,
        done: (async () => {
          const [status] = await Promise.all([child.status, out, err]);
          clearTimeout(killTimer);
          return status.signal ? 128 + signalNumber(status.signal) : status.code;
        })(),
        stop() {
          try {
            child.kill("SIGTERM");
          } catch { /* gone */ }
          // vmshift cleans up within seconds; one that does not is killed.
          killTimer = setTimeout(() => {
            try {
              child.kill("SIGKILL");
            } catch { /* gone */ }
          }, 60_000);
        },
      };
    },
  };
}

function signalNumber(s: Deno.Signal): number {
  return ({ SIGTERM: 15, SIGKILL: 9, SIGINT: 2 } as Record<string, number>)[s] ?? 0;
}

function localInputSize(vm: PlanVm): number | undefined {
  if (!["disk", "vmx", "ova"].includes(vm.input.mode) || vm.input.transport) return undefined;
  let n = 0;
  for (const a of vm.input.args) {
    try {
      const st = Deno.statSync(a);
      if (!st.isFile) return undefined;
      n += st.size;
    } catch {
      return undefined;
    }
  }
  // A .vmx names its disks; their sizes are not known here.
  return vm.input.mode === "vmx" ? undefined : n;
}

function procIsOurChild(pid: number, runId: string): boolean {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/environ`).split("\0").includes(
      `VMSHIFT_RUN_ID=${runId}`,
    );
  } catch {
    return false;
  }
}

async function stopOrphan(pid: number, runId: string): Promise<boolean> {
  const alive = () => procIsOurChild(pid, runId);
  if (!alive()) return false;
  try {
    Deno.kill(pid, "SIGTERM");
  } catch { /* gone */ }
  for (let i = 0; i < 600 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive()) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
  return true;
}
