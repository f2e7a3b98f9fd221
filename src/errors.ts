/**
 * Errors the user causes, as opposed to bugs. A {@linkcode UsageError} (bad command line) prints
 * without a stack and exits 2; every other error prints its message, exits 1, and keeps its
 * stack for `-v`.
 *
 * @module
 */

/** A mistake on the command line: printed without a stack, exit code 2. */
export class UsageError extends Error {
  /** Exit code for usage errors. */
  readonly exitCode = 2;

  /**
   * @param message What is wrong, e.g. `Unknown option "-ox"`.
   */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The run was interrupted by SIGINT or SIGTERM. */
export class InterruptedError extends Error {
  /** The signal that interrupted the run. */
  readonly signal: "SIGINT" | "SIGTERM";

  /**
   * @param signal SIGINT or SIGTERM.
   */
  constructor(signal: "SIGINT" | "SIGTERM") {
    super(`Interrupted by ${signal}`);
    this.name = "InterruptedError";
    this.signal = signal;
  }
}

/**
 * Says why a file could not be opened or read, in the words messages use everywhere:
 * `no such file`, `permission denied`, `is a directory`, else the error's own message.
 *
 * @param e The error thrown by a `Deno` file call.
 * @returns The reason, for `Cannot open disk "x": REASON`.
 * @example
 * ```ts
 * import { fsReason } from "./errors.ts";
 * if (fsReason(new Deno.errors.NotFound("x")) !== "no such file") throw new Error();
 * ```
 */
export function fsReason(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.IsADirectory) return "is a directory";
  return e instanceof Error ? e.message : String(e);
}

/**
 * The message of anything thrown.
 *
 * @param e What was thrown.
 * @returns Its message.
 * @example
 * ```ts
 * import { errorMessage } from "./errors.ts";
 * if (errorMessage(new Error("x")) !== "x" || errorMessage("y") !== "y") throw new Error();
 * ```
 */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Exit codes of vmshift, documented in the README and `--help`. */
export const EXIT = {
  /** The VM is fully in place on the target. */
  ok: 0,
  /** The migration failed; nothing was left behind on the target. */
  failure: 1,
  /** The command line is wrong; nothing was done. */
  usage: 2,
  /** Interrupted by SIGINT (Ctrl-C). */
  sigint: 130,
  /** Interrupted by SIGTERM. */
  sigterm: 143,
} as const;
