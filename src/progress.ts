/**
 * What vmshift tells the user while it works, in one of three voices:
 *
 * - human (default): stage messages on stdout the way virt-v2v prints them
 *   (`[   2.1] Copying disk 1/1`), and on a terminal a progress line on stderr with percent,
 *   bytes, rate and ETA, redrawn in place;
 * - machine-readable (`--machine-readable`): one JSON object per line on stdout, with a `type`
 *   of `message`, `progress`, `warning`, `error` or `result`;
 * - quiet (`-q`): nothing but errors.
 *
 * Errors always go to stderr too, so that a failed run says why wherever its output goes.
 *
 * @module
 */

import type { CopyProgress } from "./copy.ts";

/** How the reporter speaks. */
export type Voice = "human" | "machine" | "quiet";

/** Options for {@linkcode Reporter}. */
export interface ReporterOptions {
  /** human, machine or quiet. */
  voice: Voice;
  /** Print debug messages (`-v`). */
  verbose?: boolean;
  /** Draw the progress line (defaults to "stderr is a terminal"). */
  terminal?: boolean;
  /** Where stdout lines go (tests replace it). */
  out?: (line: string) => void;
  /** Where stderr text goes (tests replace it). */
  err?: (text: string) => void;
  /** Clock in milliseconds (tests replace it). */
  now?: () => number;
}

/** Talks to the user. */
export class Reporter {
  readonly #voice: Voice;
  readonly #verbose: boolean;
  readonly #terminal: boolean;
  readonly #out: (line: string) => void;
  readonly #err: (text: string) => void;
  readonly #now: () => number;
  readonly #start: number;
  #lineShown = false;
  #lastJson = -Infinity;
  /** Recent (time, done) samples for the rate. */
  #samples: Array<[number, number]> = [];

  /**
   * @param options Voice and sinks.
   */
  constructor(options: ReporterOptions) {
    this.#voice = options.voice;
    this.#verbose = options.verbose ?? false;
    this.#terminal = options.terminal ?? Deno.stderr.isTerminal();
    const enc = new TextEncoder();
    this.#out = options.out ?? ((line) => Deno.stdout.writeSync(enc.encode(line + "\n")));
    this.#err = options.err ?? ((text) => Deno.stderr.writeSync(enc.encode(text)));
    this.#now = options.now ?? (() => performance.now());
    this.#start = this.#now();
  }

  /** Seconds since the reporter was made. */
  get elapsed(): number {
    return (this.#now() - this.#start) / 1000;
  }

  /**
   * A stage message, e.g. "Setting up the source: -i disk guest.img".
   * @param text The message.
   */
  message(text: string): void {
    if (this.#voice === "quiet") return;
    this.#clearLine();
    if (this.#voice === "machine") {
      this.#json({ type: "message", message: text, elapsed: round(this.elapsed, 1) });
    } else {
      this.#out(`[${this.elapsed.toFixed(1).padStart(6)}] ${text}`);
    }
  }

  /**
   * A plain line of information (results, summaries).
   * @param text The text.
   */
  info(text: string): void {
    if (this.#voice === "quiet") return;
    this.#clearLine();
    if (this.#voice === "machine") this.#json({ type: "info", message: text });
    else this.#out(text);
  }

  /**
   * A warning: something the user should know, that does not stop the run.
   * @param text The warning.
   */
  warning(text: string): void {
    this.#clearLine();
    if (this.#voice === "machine") this.#json({ type: "warning", message: text });
    else this.#err(`vmshift: warning: ${text}\n`);
  }

  /**
   * A debug message, shown with `-v`.
   * @param text The message.
   */
  debug(text: string): void {
    if (!this.#verbose) return;
    this.#clearLine();
    this.#err(`vmshift: debug: ${text}\n`);
  }

  /**
   * A debug line printed whatever the verbosity (used by `-x` to show commands).
   * @param text The line.
   */
  debugAlways(text: string): void {
    this.#clearLine();
    this.#err(`${text}\n`);
  }

  /**
   * The error that ended the run: on stderr always, and as JSON when machine-readable.
   * @param text The error message.
   */
  error(text: string): void {
    this.#clearLine();
    if (this.#voice === "machine") this.#json({ type: "error", message: text });
    this.#err(`vmshift: error: ${text}\n`);
  }

  /**
   * What conversion did: its report as lines, or one `conversion` object when
   * machine-readable.
   * @param report The conversion report.
   */
  conversion(report: { lines(): string[]; toJSON(): Record<string, unknown> }): void {
    if (this.#voice === "machine") this.#json({ type: "conversion", ...report.toJSON() });
    else for (const line of report.lines()) this.info(line);
  }

  /**
   * A final structured result (machine-readable only).
   * @param fields What to report.
   */
  result(fields: Record<string, unknown>): void {
    if (this.#voice === "machine") this.#json({ type: "result", ...fields });
  }

  /**
   * Progress of the disk being copied.
   * @param disk Disk number, from 1.
   * @param disks Number of disks.
   * @param p Progress.
   */
  progress(disk: number, disks: number, p: CopyProgress): void {
    const now = this.#now();
    this.#samples.push([now, p.done]);
    while (this.#samples.length > 2 && now - this.#samples[0]![0] > 5000) this.#samples.shift();
    const [t0, d0] = this.#samples[0]!;
    const rate = now > t0 ? ((p.done - d0) / (now - t0)) * 1000 : 0;
    const percent = p.total ? (p.done / p.total) * 100 : 100;
    const eta = rate > 0 ? (p.total - p.done) / rate : undefined;
    if (this.#voice === "machine") {
      if (now - this.#lastJson < 1000 && p.done < p.total) return;
      this.#lastJson = now;
      this.#json({
        type: "progress",
        disk,
        disks,
        percent: round(percent, 1),
        bytes: p.done,
        total: p.total,
        data_bytes: p.dataBytes,
        rate: Math.round(rate),
        ...(eta !== undefined ? { eta: Math.round(eta) } : {}),
      });
      return;
    }
    if (this.#voice !== "human" || !this.#terminal) return;
    const line = `    (${percent.toFixed(1).padStart(5)}%) ${formatBytes(p.done)} of ${
      formatBytes(p.total)
    }, ${formatBytes(rate)}/s, ETA ${eta !== undefined ? formatDuration(eta) : "--:--"}`;
    this.#err(`\r${line}\x1b[K`);
    this.#lineShown = true;
  }

  /** Ends a progress line. */
  progressDone(): void {
    this.#samples = [];
    this.#clearLine();
  }

  #clearLine(): void {
    if (this.#lineShown) {
      this.#err("\r\x1b[K");
      this.#lineShown = false;
    }
  }

  #json(obj: Record<string, unknown>): void {
    this.#out(JSON.stringify({ ...obj, timestamp: new Date().toISOString() }));
  }
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/**
 * Formats a byte count with binary units.
 *
 * @param n Bytes.
 * @returns E.g. `1.5 GiB`.
 * @example
 * ```ts
 * import { formatBytes } from "./progress.ts";
 * if (formatBytes(1536 * 1024 * 1024) !== "1.5 GiB") throw new Error();
 * ```
 */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
}

/**
 * Formats seconds as `M:SS` or `H:MM:SS`.
 *
 * @param seconds Duration.
 * @returns The formatted duration.
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * if (formatDuration(3725) !== "1:02:05") throw new Error();
 * ```
 */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}
