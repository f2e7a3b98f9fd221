/**
 * The output contract. One module per output mode (`-o MODE`) exports an {@linkcode Output};
 * the switch in `mod.ts` maps mode names (and their aliases) to them.
 *
 * 1. {@linkcode Output.parseOptions} runs before any work, to catch errors early: it checks
 *    `-oc/-of/-oa/-os/-oo/...` and returns a {@linkcode PreparedOutput}, or throws a
 *    `UsageError`.
 * 2. {@linkcode PreparedOutput.setup} checks the target (the output directory exists and is
 *    writable, names are free, ...) and creates one empty target disk per source disk,
 *    returning an {@linkcode OutputSession} whose {@linkcode OutputSession.targets} the copy
 *    engine writes to.
 * 3. {@linkcode OutputSession.finalize} is called after every disk was copied: it writes the
 *    VM's metadata (domain XML, boot script, OVF) and commits the output.
 * 4. Disposing a session that was not finalized undoes everything it created, so a failed or
 *    interrupted run leaves nothing behind on the target.
 *
 * @module
 */

import type { CopyTarget } from "../copy.ts";
import type { RunContext } from "../input/types.ts";
import type { Vm } from "../vm.ts";

/** The output side of the command line, as parsed. */
export interface OutputCli {
  /** `-o`: the mode. */
  mode: string;
  /** `-oc`: the output connection URI. */
  conn?: string;
  /** `-of`: raw or qcow2. */
  format?: string;
  /** `-oa`: sparse or preallocated. */
  allocation?: string;
  /** `-os`: the output storage (a directory, a storage domain). */
  storage?: string;
  /** `-op`: a file holding the password. */
  passwordFile?: string;
  /** `-on`: the name of the VM on the target. */
  name?: string;
  /** `-oo KEY[=VALUE]` options, in order. */
  options: Array<[string, string]>;
}

/** What an output module exports. */
export interface Output {
  /** The mode name, as given to `-o`. */
  readonly mode: string;
  /**
   * Checks the command line for this mode.
   *
   * @param cli The parsed output options.
   * @returns The prepared output.
   * @throws {UsageError} When the options are wrong for this mode.
   */
  parseOptions(cli: OutputCli): PreparedOutput;
}

/** An output whose options were checked. */
export interface PreparedOutput {
  /** A one-line description for messages, e.g. `-o local -os /var/tmp`. */
  readonly description: string;
  /**
   * Checks the target and creates the empty target disks.
   *
   * @param vm The VM to create (its `name` is already `-on` when given).
   * @param ctx The run context.
   * @returns The session.
   */
  setup(vm: Vm, ctx: RunContext): Promise<OutputSession>;
}

/** A target being written. */
export interface OutputSession extends AsyncDisposable {
  /** One copy target per disk, in the order of `vm.disks`. */
  readonly targets: readonly CopyTarget[];
  /**
   * Writes the VM metadata and commits the output: after this, disposing keeps everything.
   *
   * @returns Paths or identifiers of what was created, for the final message.
   */
  finalize(): Promise<string[]>;
  /**
   * Undoes what the session created, now rather than on dispose, so that the error of a failed
   * copy can say what was cleaned up. Outputs whose clean-up needs no telling (local files)
   * leave it out; disposing undoes everything anyway.
   *
   * @returns What was undone, e.g. `cancelled 1 transfer, removed 1 disk`; empty for nothing.
   */
  abort?(): Promise<string>;
}
