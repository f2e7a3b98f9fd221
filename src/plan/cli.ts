/**
 * The plan subcommands: `vmshift plan validate|show PLAN`, `vmshift schedule PLAN`,
 * `vmshift status PLAN`. A subcommand is the first argument; a command line with `-i` is
 * always a single migration, as before, so existing scripts keep working.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { hostname } from "node:os";
import { errorMessage, EXIT, UsageError } from "../errors.ts";
import { basename } from "node:path";
import { cpuUsage } from "node:process";
import { formatBytes, formatDuration } from "../progress.ts";
import { nextOpening } from "./cron.ts";
import {
  childArgs,
  formatIssue,
  loadPlan,
  parseDuration,
  type Plan,
  PlanError,
  storageDomain,
} from "./plan.ts";
import { childLauncher, planWindows, Scheduler } from "./scheduler.ts";
import { renderReport } from "./report.ts";
import { SqliteStore, type StateStore, type VmRow } from "./state.ts";
import { PostgresStore } from "./state_pg.ts";
import { isLoopback, serveStatus } from "./status_page.ts";

import { PLAN_HELP } from "./help.ts";
export { isSubcommand, PLAN_HELP, SUBCOMMANDS } from "./help.ts";

/**
 * Runs a subcommand.
 * @param argv The arguments, the subcommand first.
 * @returns The exit code.
 */
export async function runSubcommand(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        state: { type: "string" },
        output: { type: "string" },
        lease: { type: "string" },
        "plan-id": { type: "string" },
        listen: { type: "string" },
        "listen-token-file": { type: "string" },
        "machine-readable": { type: "boolean" },
        verbose: { type: "boolean", short: "v" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return usage(errorMessage(e));
  }
  const v = parsed.values;
  if (v.help) {
    console.log(PLAN_HELP);
    return EXIT.ok;
  }
  const [cmd, ...pos] = parsed.positionals;
  const mr = v["machine-readable"] ?? false;
  let action: string | undefined;
  if (cmd === "plan") action = pos.shift();
  if (cmd === "plan" && action !== "validate" && action !== "show") {
    return usage(`"vmshift plan" needs validate or show: vmshift plan validate PLAN`);
  }
  if (pos.length !== 1) {
    return usage(`"vmshift ${cmd}${action ? ` ${action}` : ""}" needs one PLAN file`);
  }
  const file = pos[0]!;

  let plan: Plan;
  try {
    plan = await loadPlan(file);
  } catch (e) {
    if (!(e instanceof PlanError)) throw e;
    if (mr) {
      console.log(JSON.stringify({ type: "error", message: e.message, issues: e.issues }));
    }
    console.error(`vmshift: error: Plan "${file}" is not valid:`);
    for (const i of e.issues) console.error(`  ${formatIssue(i)}`);
    return EXIT.failure;
  }

  if (cmd === "plan" && action === "validate") {
    const msg = `Plan "${file}" is valid: ${plan.vms.length} VMs, ${plan.windows.length} windows`;
    console.log(mr ? JSON.stringify({ type: "result", valid: true, vms: plan.vms.length }) : msg);
    return EXIT.ok;
  }
  if (cmd === "plan") {
    show(plan, mr);
    return EXIT.ok;
  }
  const statePath = v.state ?? defaultStatePath(file);
  const shared = /^postgres(ql)?:\/\//.test(statePath);
  let leaseMs = 30_000;
  if (v.lease !== undefined) {
    const ms = parseDuration(v.lease);
    if (ms === undefined || ms < 3000) {
      return usage(`Bad --lease "${v.lease}": expected 3s or more`);
    }
    leaseMs = ms;
  }
  const planId = v["plan-id"] ?? basename(file).replace(/\.(json|ya?ml)$/i, "");
  if (cmd === "status" || cmd === "report") {
    if (!shared) {
      try {
        await Deno.stat(statePath);
      } catch {
        console.error(`vmshift: error: No state "${statePath}": the plan was never scheduled`);
        return EXIT.failure;
      }
    }
    await using store = await openStore(statePath, planId);
    await store.sync(plan.vms.map((vm) => vm.name));
    const rows = await store.list();
    if (cmd === "status") status(plan, rows, mr);
    else {
      const out = v.output ?? file.replace(/\.(json|ya?ml)$/i, "") + ".html";
      await Deno.writeTextFile(out, renderReport(plan, rows, new Date()));
      console.log(
        mr ? JSON.stringify({ type: "result", report: out }) : `Report written to "${out}"`,
      );
    }
    return EXIT.ok;
  }
  let listen: { hostname: string; port: number; token?: string } | undefined;
  if (cmd === "schedule" && v.listen !== undefined) {
    const m = v.listen.match(/^(\[[^\]]+\]|[^:]+):(\d+)$/);
    if (!m || Number(m[2]) > 65535) {
      return usage(`Bad --listen "${v.listen}": expected HOST:PORT, e.g. 127.0.0.1:8080`);
    }
    listen = { hostname: m[1]!, port: Number(m[2]) };
    if (v["listen-token-file"] !== undefined) {
      try {
        listen.token = (await Deno.readTextFile(v["listen-token-file"])).trim();
      } catch (e) {
        return usage(
          `Cannot read --listen-token-file "${v["listen-token-file"]}": ${errorMessage(e)}`,
        );
      }
      if (!listen.token) return usage(`The token file "${v["listen-token-file"]}" is empty`);
    } else if (!isLoopback(listen.hostname)) {
      return usage(
        `--listen ${v.listen} is not a loopback address: the page needs a token, ` +
          "--listen-token-file FILE",
      );
    }
  } else if (v.listen !== undefined || v["listen-token-file"] !== undefined) {
    return usage("--listen is an option of vmshift schedule");
  }
  return await schedule(plan, statePath, {
    mr,
    verbose: v.verbose ?? false,
    leaseMs,
    planId,
    ...(listen ? { listen } : {}),
  });
}

type OpenedStore = StateStore & AsyncDisposable & { sqlite?: SqliteStore };

async function openStore(path: string, planId: string): Promise<OpenedStore> {
  if (/^postgres(ql)?:\/\//.test(path)) return await PostgresStore.open(path, planId);
  const sqlite = new SqliteStore(path);
  return Object.assign(sqlite, {
    sqlite,
    [Symbol.asyncDispose]: () => Promise.resolve(sqlite[Symbol.dispose]()),
  });
}

function usage(msg: string): number {
  console.error(`vmshift: error: ${msg}`);
  return EXIT.usage;
}

/**
 * Where a plan's state lives unless `--state` says: next to it, `NAME.state.db`.
 * @param file The plan.
 * @returns The state file.
 */
export function defaultStatePath(file: string): string {
  return file.replace(/\.(json|ya?ml)$/i, "") + ".state.db";
}

function show(plan: Plan, mr: boolean): void {
  const now = new Date();
  if (mr) {
    console.log(JSON.stringify({
      type: "result",
      limits: plan.limits,
      retry: plan.retry,
      windows: plan.windows.map((w) => ({
        name: w.name,
        cron: w.cron.source,
        duration_seconds: w.durationMs / 1000,
        bandwidth: w.bandwidth ?? null,
        next: nextOpening(w.cron, now)?.toISOString() ?? null,
      })),
      vms: plan.vms.map((vm) => ({
        ...vm,
        storage_domain: storageDomain(vm),
        args: childArgs(vm),
      })),
    }));
    return;
  }
  const l = plan.limits;
  console.log(
    `Limits: ${l.total} at once` +
      (l.perSourceHost ? `, ${l.perSourceHost} per source host` : "") +
      (l.perDatastore ? `, ${l.perDatastore} per datastore` : "") +
      (l.perStorageDomain ? `, ${l.perStorageDomain} per storage domain` : ""),
  );
  console.log(
    `Retry: ${plan.retry.attempts} attempts, backoff ${
      formatDuration(plan.retry.backoffMs / 1000)
    }` +
      ` doubling up to ${formatDuration(plan.retry.maxBackoffMs / 1000)}`,
  );
  if (!plan.windows.length) console.log("Windows: none (migrations may run at any time)");
  for (const w of plan.windows) {
    const next = nextOpening(w.cron, now);
    console.log(
      `Window "${w.name}": "${w.cron.source}" (UTC) for ${formatDuration(w.durationMs / 1000)}` +
        (w.bandwidth ? `, --bandwidth ${w.bandwidth}` : "") +
        (next ? `; next opens ${next.toISOString()}` : ""),
    );
  }
  for (const vm of plan.vms) {
    console.log(
      `VM "${vm.name}": priority ${vm.priority}` +
        (vm.after.length ? `, after ${vm.after.join(", ")}` : "") +
        (vm.sourceHost ? `, source host ${vm.sourceHost}` : "") +
        (vm.datastore ? `, datastore ${vm.datastore}` : "") +
        (vm.size ? `, size ${formatBytes(vm.size)}` : ""),
    );
    console.log(`    vmshift ${childArgs(vm).map(quote).join(" ")}`);
  }
}

function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function status(plan: Plan, rows: VmRow[], mr: boolean): void {
  const byName = new Map(rows.map((r) => [r.name, r]));
  const ordered = plan.vms.map((vm) => byName.get(vm.name)!);
  if (mr) {
    console.log(JSON.stringify({
      type: "status",
      vms: ordered.map((r) => ({
        name: r.name,
        state: r.state,
        attempts: r.attempts,
        failures: r.failures,
        reason: r.reason,
        bytes: r.bytes,
        data_bytes: r.dataBytes,
        virtual_size: r.virtualSize,
        percent: r.percent,
        rate: r.rate,
        eta: r.eta,
        started_at: r.startedAt ? new Date(r.startedAt).toISOString() : null,
        finished_at: r.finishedAt ? new Date(r.finishedAt).toISOString() : null,
        seconds: r.seconds,
      })),
    }));
    return;
  }
  const table = [["VM", "STATE", "ATTEMPTS", "BYTES", "DURATION", "REASON"]];
  for (const r of ordered) {
    table.push([
      r.name,
      r.state === "running" ? `running ${r.percent.toFixed(0)}%` : r.state,
      String(r.attempts),
      r.state === "done" ? formatBytes(r.virtualSize) : formatBytes(r.bytes),
      r.seconds === null
        ? ""
        : r.seconds < 60
        ? `${r.seconds.toFixed(1)} s`
        : formatDuration(r.seconds),
      r.reason ?? "",
    ]);
  }
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) {
    console.log(
      row.map((c, i) => i === row.length - 1 ? c : c.padEnd(widths[i]!)).join("  ").trimEnd(),
    );
  }
  const count = (s: string) => ordered.filter((r) => r.state === s).length;
  console.log(
    `${count("done")} done, ${count("running")} running, ${count("pending")} pending, ` +
      `${count("failed")} failed`,
  );
}

async function schedule(
  plan: Plan,
  statePath: string,
  o: {
    mr: boolean;
    verbose: boolean;
    leaseMs: number;
    planId: string;
    listen?: { hostname: string; port: number; token?: string };
  },
): Promise<number> {
  const { mr, verbose } = o;
  const enc = new TextEncoder();
  const log = (text: string) => {
    const line = mr
      ? JSON.stringify({ type: "message", message: text, timestamp: new Date().toISOString() })
      : `[${new Date().toISOString().slice(11, 19)}] ${text}`;
    Deno.stdout.writeSync(enc.encode(line + "\n"));
  };
  let store: OpenedStore;
  try {
    store = await openStore(statePath, o.planId);
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message);
    console.error(
      `vmshift: error: Cannot open the state "${redact(statePath)}": ${errorMessage(e)}`,
    );
    return EXIT.failure;
  }
  await using _closed = store;
  // One scheduler per SQLite file; with PostgreSQL, as many as there are conversion hosts.
  const holder = store.sqlite?.lock(Deno.pid, hostname(), (pid) => {
    try {
      Deno.statSync(`/proc/${pid}`);
      return true;
    } catch {
      return false;
    }
  });
  if (holder !== undefined) {
    console.error(
      `vmshift: error: Another scheduler (pid ${holder}) runs this plan with "${statePath}"`,
    );
    return EXIT.failure;
  }
  const controller = new AbortController();
  let signal: "SIGINT" | "SIGTERM" | undefined;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => {
      if (signal) return;
      signal = sig;
      log(`${sig} received: stopping every run and leaving its VM pending`);
      controller.abort();
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    const scheduler = new Scheduler(plan, store, {
      launcher: childLauncher(verbose ? { stderr: (l) => console.error(`  | ${l}`) } : {}),
      windows: planWindows(plan),
      owner: `${hostname()}/${Deno.pid}`,
      log,
      leaseMs: o.leaseMs,
      // SQLite: this scheduler holds the lock, so every run marked running is an orphan.
      recoverAllAtStart: !!store.sqlite,
    });
    log(`Scheduling "${plan.file}": ${plan.vms.length} VMs, state in "${redact(statePath)}"`);
    const stopServer = new AbortController();
    let server: Deno.HttpServer | undefined;
    if (o.listen) {
      const { hostname: host, port, token } = o.listen;
      let ready!: () => void;
      const listening = new Promise<void>((r) => (ready = r));
      try {
        server = serveStatus({
          hostname: host,
          port,
          ...(token !== undefined ? { token } : {}),
          snapshot: async () => ({
            plan: plan.file,
            vms: await rowsInPlanOrder(plan, store),
            samples: scheduler.samples,
            window: scheduler.openWindow(),
          }),
          onListen: (p) => {
            log(`Status page: http://${host}:${p}/${token !== undefined ? "?token=..." : ""}`);
            ready();
          },
        }, stopServer.signal);
      } catch (e) {
        console.error(`vmshift: error: Cannot listen on ${host}:${port}: ${errorMessage(e)}`);
        return EXIT.failure;
      }
      await listening;
    }
    let s;
    try {
      s = await scheduler.run(controller.signal);
    } finally {
      stopServer.abort();
      await server?.finished;
    }
    const summary = `${s.done} done, ${s.failed} failed, ${s.pending} pending`;
    if (mr) {
      console.log(JSON.stringify({
        type: "result",
        done: s.done,
        failed: s.failed,
        pending: s.pending,
        runs: s.runs,
        busy_ms: Math.round(s.busyMs * 10) / 10,
        spawn_ms: Math.round(s.spawnMs * 10) / 10,
        wall_ms: s.wallMs,
        // CPU time of this process (the scheduler; children not included), user + system.
        cpu_ms: Math.round((cpuUsage().user + cpuUsage().system) / 1000),
      }));
    } else log(summary);
    if (signal) return signal === "SIGINT" ? EXIT.sigint : EXIT.sigterm;
    return s.failed || s.pending ? EXIT.failure : EXIT.ok;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
    store.sqlite?.unlock(Deno.pid);
  }
}

async function rowsInPlanOrder(plan: Plan, store: StateStore): Promise<VmRow[]> {
  const byName = new Map((await store.list()).map((r) => [r.name, r]));
  return plan.vms.map((vm) => byName.get(vm.name)).filter((r): r is VmRow => !!r);
}

function redact(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, (_, user) => `//${String(user).split(":")[0]}@`);
}
