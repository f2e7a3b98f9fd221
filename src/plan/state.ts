/**
 * The state of every VM of a plan, kept in an embedded store: one SQLite file through
 * `node:sqlite`, no server.
 *
 * Why SQLite rather than Deno KV: the state is a small table that is updated in transactions
 * with conditions ("running -> done only for the run that is running"), queried by state for
 * `status` and the report, and the multi-host store (PostgreSQL) needs the same rows and the
 * same conditional updates. SQLite gives that in the SQL the PostgreSQL store will share; Deno
 * KV would need hand-made indexes and `atomic().check()` chains for the same guarantees, and
 * is still behind `--unstable-kv`.
 *
 * Every transition is one conditional `UPDATE`, so no VM is ever reported done twice: a run
 * that was given up (the scheduler died, the window closed) can no longer finish it.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";

/** Where a VM is. */
export type VmState = "pending" | "running" | "done" | "failed";

/** One VM's row. */
export interface VmRow {
  name: string;
  state: VmState;
  /** Runs started. */
  attempts: number;
  /** Runs that failed (the retry limit counts these; runs stopped by a window's end do not). */
  failures: number;
  /** Why the last run failed or stopped, or why a VM waits. */
  reason: string | null;
  /** The current run (a random id), while running. */
  runId: string | null;
  /** The child's process id, while running. */
  pid: number | null;
  /** The host that runs it. */
  owner: string | null;
  /** Not started again before this time (ms since the epoch): retry backoff. */
  notBefore: number;
  /** While running: the owner's lease ends then unless its heartbeat renews it. */
  leaseUntil: number;
  /** Bytes copied so far (this run) or in total (done). */
  bytes: number;
  /** Bytes of data read from the source (done). */
  dataBytes: number;
  /** Virtual size of the disks. */
  virtualSize: number;
  /** Percent of the current run. */
  percent: number;
  /** Bytes/s of the current run. */
  rate: number;
  /** Seconds left in the current run, when known. */
  eta: number | null;
  /** Start of the current or last run, ms since the epoch. */
  startedAt: number | null;
  /** End of the last run. */
  finishedAt: number | null;
  /** Seconds the successful run took. */
  seconds: number | null;
  /** Warnings of the last run, and its conversion report, as JSON text. */
  details: string | null;
}

/** The part of a row the scheduler decides on. */
export type Brief = Pick<
  VmRow,
  "name" | "state" | "attempts" | "notBefore" | "reason" | "virtualSize" | "seconds"
>;

/** Options of a claim. */
export interface ClaimOptions {
  /** The time, ms since the epoch. */
  now: number;
  /** The lease of the run (renewed by heartbeats); 0 for none. */
  leaseMs?: number;
  /** Limits: at most `max` of the VMs `names` running at once (with this one, if claimed). */
  groups?: Array<{ names: string[]; max: number }>;
}

/**
 * What the scheduler needs of a state store: the SQLite store, or the PostgreSQL store that
 * several conversion hosts share. Every transition is conditional on the current state and
 * the run id, so a run that lost its VM cannot change it.
 */
export interface StateStore {
  sync(names: readonly string[]): void | Promise<void>;
  list(): VmRow[] | Promise<VmRow[]>;
  brief(): Brief[] | Promise<Brief[]>;
  get(name: string): VmRow | undefined | Promise<VmRow | undefined>;
  claim(name: string, runId: string, owner: string, o: ClaimOptions): boolean | Promise<boolean>;
  setPid(name: string, runId: string, pid: number): void | Promise<void>;
  progress(name: string, runId: string, p: Progress): void | Promise<void>;
  finish(name: string, runId: string, f: Finish, now: number): boolean | Promise<boolean>;
  stop(name: string, runId: string, o: StopOptions): boolean | Promise<boolean>;
  failPending(name: string, reason: string, now: number): boolean | Promise<boolean>;
  note(name: string, reason: string | null): void | Promise<void>;
  sample(t: number, bytesPerSecond: number): void | Promise<void>;
  heartbeat(owner: string, now: number, leaseMs: number): string[] | Promise<string[]>;
  expired(now: number): VmRow[] | Promise<VmRow[]>;
}

/** How a run ended without success. */
export interface StopOptions {
  reason: string;
  /** Counts against the retry limit. */
  failure: boolean;
  /** failed rather than pending. */
  giveUp: boolean;
  /** Not retried before (ms since the epoch). */
  notBefore: number;
  now: number;
  details?: Record<string, unknown>;
}

/** Fields a run reports while it goes. */
export interface Progress {
  bytes: number;
  percent: number;
  rate: number;
  eta?: number;
}

/** What a finished run reports. */
export interface Finish {
  bytes: number;
  dataBytes: number;
  virtualSize: number;
  seconds: number;
  details: Record<string, unknown>;
}

const COLUMNS = `name TEXT PRIMARY KEY,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  run_id TEXT,
  pid INTEGER,
  owner TEXT,
  not_before INTEGER NOT NULL DEFAULT 0,
  lease_until INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER NOT NULL DEFAULT 0,
  data_bytes INTEGER NOT NULL DEFAULT 0,
  virtual_size INTEGER NOT NULL DEFAULT 0,
  percent REAL NOT NULL DEFAULT 0,
  rate REAL NOT NULL DEFAULT 0,
  eta REAL,
  started_at INTEGER,
  finished_at INTEGER,
  seconds REAL,
  details TEXT`;

/** The SQLite state store of one plan. */
export class SqliteStore implements StateStore, Disposable {
  readonly #db: DatabaseSync;
  /** The file. */
  readonly path: string;

  /**
   * Opens (and creates) the store.
   *
   * @param path The SQLite file.
   */
  constructor(path: string) {
    this.path = path;
    this.#db = new DatabaseSync(path);
    // WAL: `vmshift status` reads while the scheduler writes. synchronous=NORMAL: a commit
    // survives a crash of vmshift (what recovery is about) without an fsync per progress
    // update; a power cut may lose the last updates, which recovery treats like a crash.
    this.#db.exec(
      "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000",
    );
    this.#db.exec(`CREATE TABLE IF NOT EXISTS vms (${COLUMNS})`);
    this.#db.exec(
      "CREATE TABLE IF NOT EXISTS samples (t INTEGER NOT NULL, bytes_per_second REAL NOT NULL)",
    );
    this.#db.exec(
      "CREATE TABLE IF NOT EXISTS scheduler (id INTEGER PRIMARY KEY CHECK (id = 1), " +
        "pid INTEGER NOT NULL, host TEXT NOT NULL, started_at INTEGER NOT NULL)",
    );
  }

  /**
   * Adds a pending row for every VM that has none (VMs added to a plan later).
   * @param names The plan's VMs.
   */
  sync(names: readonly string[]): void {
    const ins = this.#stmt("INSERT OR IGNORE INTO vms (name) VALUES (?)");
    this.#tx(() => {
      for (const n of names) ins.run(n);
    });
  }

  /**
   * Every row, in name order.
   * @returns The rows.
   */
  list(): VmRow[] {
    return this.#stmt("SELECT * FROM vms ORDER BY name").all().map(toRow);
  }

  /**
   * What the scheduler decides on, for every VM: fewer columns than {@linkcode list}, because
   * it asks after every run.
   * @returns Name, state, attempts, backoff, reason, size and seconds of every VM.
   */
  brief(): Brief[] {
    return this.#stmt(
      "SELECT name, state, attempts, not_before, reason, virtual_size, seconds FROM vms",
    ).all().map((r) => ({
      name: r.name as string,
      state: r.state as VmState,
      attempts: r.attempts as number,
      notBefore: r.not_before as number,
      reason: r.reason as string | null,
      virtualSize: r.virtual_size as number,
      seconds: r.seconds as number | null,
    }));
  }

  /**
   * One row.
   * @param name The VM.
   * @returns Its row, or undefined.
   */
  get(name: string): VmRow | undefined {
    const r = this.#stmt("SELECT * FROM vms WHERE name = ?").get(name);
    return r ? toRow(r) : undefined;
  }

  /**
   * Claims a pending VM for a run: pending -> running, in one transaction with the limit check.
   *
   * @param name The VM.
   * @param runId The run's id.
   * @param owner The scheduler.
   * @param o The time, the lease, and limits over all schedulers: at most `max` of `names` may
   *   run at once.
   * @returns False when the VM was not pending, its backoff has not passed, or a limit is full.
   */
  claim(name: string, runId: string, owner: string, o: ClaimOptions): boolean {
    return this.#tx(() => {
      for (const g of o.groups ?? []) {
        const running = this.#stmt(
          "SELECT name FROM vms WHERE state = 'running'",
        ).all().filter((r) => g.names.includes(r.name as string)).length;
        if (running >= g.max) return false;
      }
      const r = this.#stmt(
        `UPDATE vms SET state = 'running', run_id = ?, owner = ?, pid = NULL, lease_until = ?,
           attempts = attempts + 1, started_at = ?, finished_at = NULL, bytes = 0, percent = 0,
           rate = 0, eta = NULL, reason = NULL
         WHERE name = ? AND state = 'pending' AND not_before <= ?`,
      ).run(runId, owner, o.now + (o.leaseMs ?? 0), o.now, name, o.now);
      return r.changes === 1;
    });
  }

  /**
   * Renews the lease of a scheduler's runs.
   * @param owner The scheduler.
   * @param now The time.
   * @param leaseMs How long the lease lasts from now.
   * @returns The run ids it still holds.
   */
  heartbeat(owner: string, now: number, leaseMs: number): string[] {
    return this.#stmt(
      "UPDATE vms SET lease_until = ? WHERE owner = ? AND state = 'running' RETURNING run_id",
    ).all(now + leaseMs, owner).map((r) => r.run_id as string);
  }

  /**
   * Runs whose lease ended: their scheduler died.
   * @param now The time (Infinity: every run, when no other scheduler can be alive).
   * @returns Their rows.
   */
  expired(now: number): VmRow[] {
    return this.#stmt("SELECT * FROM vms WHERE state = 'running' AND lease_until < ?")
      .all(Number.isFinite(now) ? now : Number.MAX_SAFE_INTEGER).map(toRow);
  }

  /**
   * Records the process id of a run's child (so that a restarted scheduler can stop it).
   * @param name The VM.
   * @param runId The run.
   * @param pid The child.
   */
  setPid(name: string, runId: string, pid: number): void {
    this.#stmt("UPDATE vms SET pid = ? WHERE name = ? AND run_id = ? AND state = 'running'")
      .run(pid, name, runId);
  }

  /**
   * Progress of a run.
   * @param name The VM.
   * @param runId The run.
   * @param p Bytes, percent, rate, ETA.
   */
  progress(name: string, runId: string, p: Progress): void {
    this.#stmt(
      `UPDATE vms SET bytes = ?, percent = ?, rate = ?, eta = ?
       WHERE name = ? AND run_id = ? AND state = 'running'`,
    ).run(p.bytes, p.percent, p.rate, p.eta ?? null, name, runId);
  }

  /**
   * A run succeeded: running -> done, only for the run that holds the VM.
   *
   * @param name The VM.
   * @param runId The run.
   * @param f What it copied.
   * @param now The time.
   * @returns False when this run no longer holds the VM (it was given up): not done again.
   */
  finish(name: string, runId: string, f: Finish, now: number): boolean {
    const r = this.#stmt(
      `UPDATE vms SET state = 'done', bytes = ?, data_bytes = ?, virtual_size = ?, seconds = ?,
         details = ?, finished_at = ?, percent = 100, rate = 0, eta = NULL, pid = NULL,
         reason = NULL
       WHERE name = ? AND run_id = ? AND state = 'running'`,
    ).run(
      f.bytes,
      f.dataBytes,
      f.virtualSize,
      f.seconds,
      JSON.stringify(f.details),
      now,
      name,
      runId,
    );
    return r.changes === 1;
  }

  /**
   * A run ended without success: back to pending (to retry after `notBefore`), or failed.
   *
   * @param name The VM.
   * @param runId The run.
   * @param o Why, whether it counts as a failure, whether to give up, when to retry.
   * @returns False when this run no longer holds the VM.
   */
  stop(name: string, runId: string, o: StopOptions): boolean {
    const r = this.#stmt(
      `UPDATE vms SET state = ?, reason = ?, failures = failures + ?, not_before = ?,
         finished_at = ?, pid = NULL, run_id = NULL, rate = 0, eta = NULL,
         details = COALESCE(?, details)
       WHERE name = ? AND run_id = ? AND state = 'running'`,
    ).run(
      o.giveUp ? "failed" : "pending",
      o.reason,
      o.failure ? 1 : 0,
      o.notBefore,
      o.now,
      o.details ? JSON.stringify(o.details) : null,
      name,
      runId,
    );
    return r.changes === 1;
  }

  /**
   * Gives up on a pending VM that can never start (its dependency failed): pending -> failed.
   * @param name The VM.
   * @param reason Why.
   * @param now The time.
   * @returns False when it was not pending.
   */
  failPending(name: string, reason: string, now: number): boolean {
    return this.#stmt(
      "UPDATE vms SET state = 'failed', reason = ?, finished_at = ? WHERE name = ? AND state = 'pending'",
    ).run(reason, now, name).changes === 1;
  }

  /**
   * Notes why a pending VM waits (shown by `status`).
   * @param name The VM.
   * @param reason Why.
   */
  note(name: string, reason: string | null): void {
    this.#stmt("UPDATE vms SET reason = ? WHERE name = ? AND state = 'pending'")
      .run(reason, name);
  }

  /**
   * Records the plan's throughput at a time (for the status page's chart and the report).
   * @param t Ms since the epoch.
   * @param bytesPerSecond All runs together.
   */
  sample(t: number, bytesPerSecond: number): void {
    this.#stmt("INSERT INTO samples (t, bytes_per_second) VALUES (?, ?)")
      .run(t, bytesPerSecond);
  }

  /**
   * Takes the store for this scheduler, refusing when another live scheduler holds it.
   *
   * @param pid This process.
   * @param host This host.
   * @param alive Whether a process id is a live process.
   * @returns The pid of a live scheduler holding it, or undefined once taken.
   */
  lock(pid: number, host: string, alive: (pid: number) => boolean): number | undefined {
    return this.#tx(() => {
      const r = this.#stmt("SELECT pid, host FROM scheduler WHERE id = 1").get() as
        | { pid: number; host: string }
        | undefined;
      if (r && r.host === host && r.pid !== pid && alive(r.pid)) return r.pid;
      this.#stmt(
        "INSERT OR REPLACE INTO scheduler (id, pid, host, started_at) VALUES (1, ?, ?, ?)",
      ).run(pid, host, Date.now());
      return undefined;
    });
  }

  /**
   * Lets go of the store.
   * @param pid This process.
   */
  unlock(pid: number): void {
    this.#stmt("DELETE FROM scheduler WHERE id = 1 AND pid = ?").run(pid);
  }

  /** Prepared statements, compiled once: the scheduler runs the same few very often. */
  readonly #cache = new Map<string, StatementSync>();

  #stmt(sql: string): StatementSync {
    let st = this.#cache.get(sql);
    if (!st) {
      st = this.#db.prepare(sql);
      this.#cache.set(sql, st);
    }
    return st;
  }

  #tx<T>(f: () => T): T {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      const r = f();
      this.#db.exec("COMMIT");
      return r;
    } catch (e) {
      this.#db.exec("ROLLBACK");
      throw e;
    }
  }

  [Symbol.dispose](): void {
    this.#db.close();
  }
}

/**
 * A row as the database returns it (snake_case columns) to a {@linkcode VmRow}.
 * @param r The row.
 * @returns The VM row.
 */
export function toRow(r: Record<string, unknown>): VmRow {
  return {
    name: r.name as string,
    state: r.state as VmState,
    attempts: Number(r.attempts),
    failures: Number(r.failures),
    reason: (r.reason as string | null) ?? null,
    runId: (r.run_id as string | null) ?? null,
    pid: r.pid === null ? null : Number(r.pid),
    owner: (r.owner as string | null) ?? null,
    notBefore: Number(r.not_before),
    leaseUntil: Number(r.lease_until),
    bytes: Number(r.bytes),
    dataBytes: Number(r.data_bytes),
    virtualSize: Number(r.virtual_size),
    percent: Number(r.percent),
    rate: Number(r.rate),
    eta: r.eta === null ? null : Number(r.eta),
    startedAt: r.started_at === null ? null : Number(r.started_at),
    finishedAt: r.finished_at === null ? null : Number(r.finished_at),
    seconds: r.seconds === null ? null : Number(r.seconds),
    details: (r.details as string | null) ?? null,
  };
}
