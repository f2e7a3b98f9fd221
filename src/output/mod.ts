/**
 * The output modes, in one switch. Adding a mode means adding one module and one line here.
 *
 * @module
 */

import { UsageError } from "../errors.ts";
import { localOutput } from "./local.ts";
import { nullOutput } from "./null.ts";
import { qemuOutput } from "./qemu.ts";
import { rhvOutput } from "./rhv.ts";
import type { Output } from "./types.ts";

/** Output modes vmshift has, for `--help` and `--machine-readable`. */
export const OUTPUT_MODES = [
  "local",
  "null",
  "qemu",
  "rhv",
  "rhv-upload",
  "ovirt",
  "ovirt-upload",
] as const;

/**
 * Finds the output module for `-o MODE`.
 *
 * @param mode The mode name.
 * @returns The output.
 * @throws {UsageError} For an unknown mode.
 */
export function selectOutput(mode: string): Output {
  switch (mode) {
    case "local":
      return localOutput;
    case "null":
      return nullOutput;
    case "qemu":
      return qemuOutput;
    case "rhv":
    case "rhv-upload":
    case "ovirt":
    case "ovirt-upload":
      return rhvOutput;
    default:
      throw new UsageError(
        `Unknown output mode "-o ${mode}": vmshift writes ${OUTPUT_MODES.join(", ")}`,
      );
  }
}
