/**
 * `-o null`: reads every disk through the whole pipeline and throws the data away. Useful to
 * test a source, measure the read side, or check that a conversion works.
 *
 * @module
 */

import type { CopyTarget, TargetWriter } from "../copy.ts";
import { UsageError } from "../errors.ts";
import type { Output, OutputCli } from "./types.ts";

const discard: TargetWriter = {
  write: () => Promise.resolve(),
  zero: () => Promise.resolve(),
  flush: () => Promise.resolve(),
  [Symbol.asyncDispose]: () => Promise.resolve(),
};

/** The `-o null` output. */
export const nullOutput: Output = {
  mode: "null",
  parseOptions(cli: OutputCli) {
    for (const [flag, value] of [["-oc", cli.conn], ["-op", cli.passwordFile]] as const) {
      if (value !== undefined) throw new UsageError(`-o null does not take ${flag}`);
    }
    return {
      description: "-o null",
      setup(vm) {
        const targets: CopyTarget[] = vm.disks.map((d) => ({
          name: `null (disk ${d.index + 1})`,
          readsZeroes: true,
          maxConnections: 4,
          maxZeroSize: Number.MAX_SAFE_INTEGER,
          connect: () => Promise.resolve(discard),
        }));
        return Promise.resolve({
          targets,
          finalize: () => Promise.resolve([]),
          [Symbol.asyncDispose]: () => Promise.resolve(),
        });
      },
    };
  },
};
