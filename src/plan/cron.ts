/**
 * Five-field cron expressions (minute hour day-of-month month day-of-week), the dialect
 * `Deno.cron` accepts, parsed here too so that a plan's windows are checked before the scheduler
 * starts and so that the scheduler knows whether a window is open right now (after a restart in
 * the middle of a window, `Deno.cron` would only fire at the next opening).
 *
 * Times are UTC, as in `Deno.cron`.
 *
 * @module
 */

const FIELDS = [
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day of month", min: 1, max: 31 },
  { name: "month", min: 1, max: 12 },
  { name: "day of week", min: 0, max: 7 },
] as const;

/** A parsed cron expression: the allowed values of each field. */
export interface Cron {
  /** The expression as written. */
  source: string;
  minutes: Set<number>;
  hours: Set<number>;
  days: Set<number>;
  months: Set<number>;
  weekdays: Set<number>;
  /** Day of month was `*` (cron's "either day field matches" rule needs to know). */
  anyDay: boolean;
  /** Day of week was `*`. */
  anyWeekday: boolean;
}

/**
 * Parses a five-field cron expression.
 *
 * @param expr E.g. `0 22 * * 1-5`.
 * @returns The parsed expression.
 * @throws {SyntaxError} Saying which field is wrong.
 * @example
 * ```ts
 * import { parseCron } from "./cron.ts";
 * if (!parseCron("30 22 * * 1-5").hours.has(22)) throw new Error();
 * ```
 */
export function parseCron(expr: string): Cron {
  const parts = expr.trim().split(/\s+/);
  if (parts.length !== 5) {
    throw new SyntaxError(
      `Bad cron expression "${expr}": expected 5 fields (minute hour day month weekday), ` +
        `found ${parts.length}`,
    );
  }
  const sets = parts.map((p, i) => parseField(p, FIELDS[i]!, expr));
  const weekdays = sets[4]!;
  if (weekdays.has(7)) weekdays.add(0); // 7 is Sunday too
  return {
    source: expr,
    minutes: sets[0]!,
    hours: sets[1]!,
    days: sets[2]!,
    months: sets[3]!,
    weekdays,
    anyDay: parts[2] === "*",
    anyWeekday: parts[4] === "*",
  };
}

function parseField(
  text: string,
  f: { name: string; min: number; max: number },
  expr: string,
): Set<number> {
  const out = new Set<number>();
  const bad = (why: string) =>
    new SyntaxError(`Bad cron expression "${expr}": ${f.name} "${text}": ${why}`);
  for (const item of text.split(",")) {
    const m = item.match(/^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/);
    if (!m) throw bad(`expected *, N, N-M or a step like */5`);
    let lo = f.min;
    let hi = f.max === 7 ? 6 : f.max;
    if (m[1] !== "*") {
      lo = Number(m[2]);
      hi = m[3] !== undefined ? Number(m[3]) : m[4] !== undefined ? hi : lo;
    }
    const step = m[4] !== undefined ? Number(m[4]) : 1;
    if (lo < f.min || hi > f.max || lo > hi) {
      throw bad(`values must be from ${f.min} to ${f.max}, low to high`);
    }
    if (step < 1) throw bad("a step must be at least 1");
    for (let v = lo; v <= hi; v += step) out.add(v);
  }
  return out;
}

/**
 * Whether a minute matches the expression.
 *
 * @param cron The expression.
 * @param t A time; its UTC minute is tested.
 * @returns True when a job would fire at that minute.
 */
export function cronMatches(cron: Cron, t: Date): boolean {
  if (!cron.minutes.has(t.getUTCMinutes()) || !cron.hours.has(t.getUTCHours())) return false;
  if (!cron.months.has(t.getUTCMonth() + 1)) return false;
  const day = cron.days.has(t.getUTCDate());
  const wday = cron.weekdays.has(t.getUTCDay());
  // Classic cron: when both day fields are restricted, either one matching is enough.
  if (!cron.anyDay && !cron.anyWeekday) return day || wday;
  return day && wday;
}

/**
 * The latest opening of a window that is still open at `now`: the last minute matching `cron`
 * within `durationMs` before `now`.
 *
 * @param cron When windows open.
 * @param durationMs How long each stays open.
 * @param now The time asked about.
 * @returns The opening time, or undefined when no window is open at `now`.
 * @example
 * ```ts
 * import { openWindowStart, parseCron } from "./cron.ts";
 * const start = openWindowStart(parseCron("0 22 * * *"), 3600_000, new Date("2026-01-01T22:30:00Z"));
 * if (start?.toISOString() !== "2026-01-01T22:00:00.000Z") throw new Error();
 * ```
 */
export function openWindowStart(cron: Cron, durationMs: number, now: Date): Date | undefined {
  const minute = 60_000;
  let t = Math.floor(now.getTime() / minute) * minute;
  // Longest window looked back over: a week (longer plans are odd; this keeps the loop short).
  const stop = now.getTime() - Math.min(durationMs, 7 * 24 * 3600_000);
  for (; t > stop - minute; t -= minute) {
    if (t + durationMs <= now.getTime()) break;
    if (cronMatches(cron, new Date(t))) return new Date(t);
  }
  return undefined;
}

/**
 * The next opening strictly after `now`.
 *
 * @param cron When windows open.
 * @param now The time asked about.
 * @returns The next matching minute within a year, or undefined.
 */
export function nextOpening(cron: Cron, now: Date): Date | undefined {
  const minute = 60_000;
  let t = Math.floor(now.getTime() / minute) * minute + minute;
  for (let i = 0; i < 366 * 24 * 60; i++, t += minute) {
    if (cronMatches(cron, new Date(t))) return new Date(t);
  }
  return undefined;
}
