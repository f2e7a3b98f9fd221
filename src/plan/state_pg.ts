/**
 * The state of a plan in PostgreSQL, shared by the schedulers of several conversion hosts
 * (`vmshift schedule PLAN --state postgres://USER@HOST/DB`).
 *
 * The same rows and the same conditional transitions as the SQLite store, plus what sharing
 * needs: a VM is claimed with a row lock taken with `FOR UPDATE SKIP LOCKED` (two hosts never
 * wait on, nor both get, the same VM), limits over all hosts are checked inside the claim's
 * transaction under an advisory lock of the plan, and every run has a lease that its host's
 * heartbeats renew; a run whose lease ended (its host died) is reclaimed by any host.
 *
 * One database holds several plans: rows are keyed by the plan's id.
 *
 * The password never goes on the command line: a URL with one is refused; use `PGPASSWORD`
 * in the environment (or trust/peer authentication).
 *
 * @module
 */

import postgres from "postgres";
import { UsageError } from "../errors.ts";
import {
  type Brief,
  type ClaimOptions,
  type Finish,
  type Progress,
  type StateStore,
  type StopOptions,
  toRow,
  type VmRow,
  type VmState,
} from "./state.ts";

const SCHEMA = `CREATE TABLE IF NOT EXISTS vmshift_vms (
  plan TEXT NOT NULL,
  name TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  run_id TEXT,
  pid INTEGER,
  owner TEXT,
  not_before BIGINT NOT NULL DEFAULT 0,
  lease_until BIGINT NOT NULL DEFAULT 0,
  bytes BIGINT NOT NULL DEFAULT 0,
  data_bytes BIGINT NOT NULL DEFAULT 0,
  virtual_size BIGINT NOT NULL DEFAULT 0,
  percent DOUBLE PRECISION NOT NULL DEFAULT 0,
  rate DOUBLE PRECISION NOT NULL DEFAULT 0,
  eta DOUBLE PRECISION,
  started_at BIGINT,
  finished_at BIGINT,
  seconds DOUBLE PRECISION,
  details TEXT,
  PRIMARY KEY (plan, name)
);
CREATE TABLE IF NOT EXISTS vmshift_samples (
  plan TEXT NOT NULL, owner TEXT NOT NULL, t BIGINT NOT NULL, bytes_per_second DOUBLE PRECISION NOT NULL
)`;

/** The PostgreSQL state store of one plan. */
export class PostgresStore implements StateStore, AsyncDisposable {
  readonly #sql: postgres.Sql;
  readonly #plan: string;

  private constructor(sql: postgres.Sql, plan: string) {
    this.#sql = sql;
    this.#plan = plan;
  }

  /**
   * Connects, and creates the tables when missing.
   *
   * @param url `postgres://USER@HOST:PORT/DB`, without a password.
   * @param plan The plan's id (rows of other plans are left alone).
   * @returns The store.
   * @throws {UsageError} For a URL with a password.
   */
  static async open(url: string, plan: string): Promise<PostgresStore> {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new UsageError(`Bad --state "${url}": expected postgres://USER@HOST:PORT/DATABASE`);
    }
    if (u.password) {
      throw new UsageError(
        "Bad --state: the URL holds a password; give it in PGPASSWORD, never on the command line",
      );
    }
    const sql = postgres(url, {
      max: 4,
      onnotice: () => {},
      // (BIGINT columns come back as strings; toRow makes numbers of them, far below 2^53.)
      connection: { application_name: "vmshift" },
    });
    try {
      // Two schedulers starting at once both create the tables: serialize that.
      await sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(hashtext('vmshift schema'))`;
        await tx.unsafe(SCHEMA);
      });
    } catch (e) {
      await sql.end({ timeout: 1 });
      throw e;
    }
    return new PostgresStore(sql, plan);
  }

  async sync(names: readonly string[]): Promise<void> {
    if (!names.length) return;
    await this.#sql`INSERT INTO vmshift_vms (plan, name)
      SELECT ${this.#plan}, unnest(${this.#sql.array([...names])}::text[])
      ON CONFLICT DO NOTHING`;
  }

  async list(): Promise<VmRow[]> {
    const rows = await this.#sql`SELECT * FROM vmshift_vms WHERE plan = ${this.#plan}
      ORDER BY name`;
    return rows.map((r) => toRow(r));
  }

  async brief(): Promise<Brief[]> {
    const rows = await this.#sql`SELECT name, state, attempts, not_before, reason,
      virtual_size, seconds FROM vmshift_vms WHERE plan = ${this.#plan}`;
    return rows.map((r) => ({
      name: r.name as string,
      state: r.state as VmState,
      attempts: Number(r.attempts),
      notBefore: Number(r.not_before),
      reason: (r.reason as string | null) ?? null,
      virtualSize: Number(r.virtual_size),
      seconds: r.seconds === null ? null : Number(r.seconds),
    }));
  }

  async get(name: string): Promise<VmRow | undefined> {
    const [r] = await this.#sql`SELECT * FROM vmshift_vms
      WHERE plan = ${this.#plan} AND name = ${name}`;
    return r ? toRow(r) : undefined;
  }

  claim(name: string, runId: string, owner: string, o: ClaimOptions): Promise<boolean> {
    return this.#sql.begin(async (tx) => {
      const groups = o.groups ?? [];
      if (groups.length) {
        // Limits over every host: one claim at a time checks them.
        await tx`SELECT pg_advisory_xact_lock(hashtext(${"vmshift plan " + this.#plan}))`;
        for (const g of groups) {
          const [r] = await tx`SELECT count(*)::int AS n FROM vmshift_vms
            WHERE plan = ${this.#plan} AND state = 'running' AND name = ANY(${tx.array(g.names)})`;
          if (Number(r?.n) >= g.max) return false;
        }
      }
      const rows = await tx`UPDATE vmshift_vms SET state = 'running', run_id = ${runId},
          owner = ${owner}, pid = NULL, lease_until = ${o.now + (o.leaseMs ?? 0)},
          attempts = attempts + 1, started_at = ${o.now}, finished_at = NULL, bytes = 0,
          percent = 0, rate = 0, eta = NULL, reason = NULL
        WHERE plan = ${this.#plan} AND name = (
          SELECT name FROM vmshift_vms
          WHERE plan = ${this.#plan} AND name = ${name} AND state = 'pending'
            AND not_before <= ${o.now}
          FOR UPDATE SKIP LOCKED)
        RETURNING name`;
      return rows.length === 1;
    }) as Promise<boolean>;
  }

  async setPid(name: string, runId: string, pid: number): Promise<void> {
    await this.#sql`UPDATE vmshift_vms SET pid = ${pid}
      WHERE plan = ${this.#plan} AND name = ${name} AND run_id = ${runId} AND state = 'running'`;
  }

  async progress(name: string, runId: string, p: Progress): Promise<void> {
    await this.#sql`UPDATE vmshift_vms SET bytes = ${p.bytes}, percent = ${p.percent},
        rate = ${p.rate}, eta = ${p.eta ?? null}
      WHERE plan = ${this.#plan} AND name = ${name} AND run_id = ${runId} AND state = 'running'`;
  }

  async finish(name: string, runId: string, f: Finish, now: number): Promise<boolean> {
    const rows = await this.#sql`UPDATE vmshift_vms SET state = 'done', bytes = ${f.bytes},
        data_bytes = ${f.dataBytes}, virtual_size = ${f.virtualSize}, seconds = ${f.seconds},
        details = ${JSON.stringify(f.details)}, finished_at = ${now}, percent = 100, rate = 0,
        eta = NULL, pid = NULL, reason = NULL
      WHERE plan = ${this.#plan} AND name = ${name} AND run_id = ${runId} AND state = 'running'
      RETURNING name`;
    return rows.length === 1;
  }

  async stop(name: string, runId: string, o: StopOptions): Promise<boolean> {
    const rows = await this.#sql`UPDATE vmshift_vms SET
        state = ${o.giveUp ? "failed" : "pending"}, reason = ${o.reason},
        failures = failures + ${o.failure ? 1 : 0}, not_before = ${o.notBefore},
        finished_at = ${o.now}, pid = NULL, run_id = NULL, rate = 0, eta = NULL,
        details = COALESCE(${o.details ? JSON.stringify(o.details) : null}::text, details)
      WHERE plan = ${this.#plan} AND name = ${name} AND run_id = ${runId} AND state = 'running'
      RETURNING name`;
    return rows.length === 1;
  }

  async failPending(name: string, reason: string, now: number): Promise<boolean> {
    const rows = await this.#sql`UPDATE vmshift_vms SET state = 'failed', reason = ${reason},
        finished_at = ${now}
      WHERE plan = ${this.#plan} AND name = ${name} AND state = 'pending' RETURNING name`;
    return rows.length === 1;
  }

  async note(name: string, reason: string | null): Promise<void> {
    await this.#sql`UPDATE vmshift_vms SET reason = ${reason}
      WHERE plan = ${this.#plan} AND name = ${name} AND state = 'pending'`;
  }

  async sample(t: number, bytesPerSecond: number): Promise<void> {
    await this.#sql`INSERT INTO vmshift_samples (plan, owner, t, bytes_per_second)
      VALUES (${this.#plan}, '', ${t}, ${bytesPerSecond})`;
  }

  async heartbeat(owner: string, now: number, leaseMs: number): Promise<string[]> {
    const rows = await this.#sql`UPDATE vmshift_vms SET lease_until = ${now + leaseMs}
      WHERE plan = ${this.#plan} AND owner = ${owner} AND state = 'running' RETURNING run_id`;
    return rows.map((r) => r.run_id as string);
  }

  async expired(now: number): Promise<VmRow[]> {
    const before = Number.isFinite(now) ? now : Number.MAX_SAFE_INTEGER;
    const rows = await this.#sql`SELECT * FROM vmshift_vms
      WHERE plan = ${this.#plan} AND state = 'running' AND lease_until < ${before}`;
    return rows.map((r) => toRow(r));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#sql.end({ timeout: 5 });
  }
}
