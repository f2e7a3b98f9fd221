/**
 * The input contract. One module per input mode (`-i MODE`) exports an {@linkcode Input}; the
 * switch in `mod.ts` maps mode names to them.
 *
 * 1. {@linkcode Input.parseOptions} runs before any work, to catch command-line errors early;
 *    it checks the arguments and returns a {@linkcode PreparedInput}, or throws a `UsageError`.
 * 2. {@linkcode PreparedInput.open} connects to the source and returns an
 *    {@linkcode InputSession}: the VM model and one read-only NBD URI per disk. The source is
 *    never opened for writing, by vmshift or by the servers it starts.
 * 3. Disposing the session stops every server the input started and releases every connection.
 *
 * NBD URIs are the only thing passed from the input to the later stages.
 *
 * @module
 */

import type { TempDir } from "../tmpdir.ts";
import type { Vm } from "../vm.ts";

/** The input side of the command line, as parsed. */
export interface InputCli {
  /** `-i`: the mode. */
  mode: string;
  /** Positional arguments (files, VM names). */
  args: string[];
  /** `-ic`: the input URI. */
  conn?: string;
  /** `-if`: the input format. */
  format?: string;
  /** `-it`: the transport. */
  transport?: string;
  /** `-ip`: a file holding the password. */
  passwordFile?: string;
  /** `-io KEY=VALUE` options, in order. */
  options: Array<[string, string]>;
  /** `--bandwidth`: bits per second, for remote transports. */
  bandwidth?: number;
  /** `--bandwidth-file`: a file holding the rate in bits/s, re-read while running. */
  bandwidthFile?: string;
}

/** What an input module exports. */
export interface Input {
  /** The mode name, as given to `-i`. */
  readonly mode: string;
  /**
   * Checks the command line for this mode.
   *
   * @param cli The parsed input options.
   * @returns The prepared input.
   * @throws {UsageError} When the options are wrong for this mode.
   */
  parseOptions(cli: InputCli): PreparedInput;
}

/** The context every stage gets: the run's private directory and the interrupt signal. */
export interface RunContext {
  /** The run's private temporary directory (sockets, overlays). */
  dir: TempDir;
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal;
  /** Prints a debug message when `-v` is on. */
  debug: (message: string) => void;
  /** Tells the user something that does not stop the run. */
  warning: (message: string) => void;
}

/** An input whose options were checked, ready to open. */
export interface PreparedInput {
  /** A one-line description for messages, e.g. `-i disk /var/tmp/guest.img`. */
  readonly description: string;
  /**
   * The source is read over a network, so `--bandwidth` applies to it.
   * @default false
   */
  readonly remote?: boolean;
  /**
   * Opens the source and serves each disk read-only over NBD.
   *
   * @param ctx The run context.
   * @returns The session; dispose it to stop the servers.
   */
  open(ctx: RunContext): Promise<InputSession>;
}

/** An open source. */
export interface InputSession extends AsyncDisposable {
  /** The VM as the source describes it. */
  readonly vm: Vm;
  /** One read-only NBD URI per disk, in the order of `vm.disks`, serving raw guest data. */
  readonly uris: readonly string[];
  /**
   * Per disk, in the order of `vm.disks`: the local image file behind the NBD URI, when the
   * copy may read its bytes in place (see `src/local_image.ts`): a raw or qcow2 file on this
   * host, not changing while vmshift runs. Absent for remote sources.
   */
  readonly files?: ReadonlyArray<{ path: string; format: string } | undefined>;
}
