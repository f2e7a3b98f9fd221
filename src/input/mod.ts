/**
 * The input modes, in one switch. Adding a mode means adding one module and one line here.
 *
 * @module
 */

import { UsageError } from "../errors.ts";
import { diskInput } from "./disk.ts";
import { ovaInput } from "./ova.ts";
import { vmxInput } from "./vmx.ts";
import { libvirtInput, vsphereInput } from "./vsphere/vsphere.ts";
import type { Input } from "./types.ts";

/** Input modes vmshift has, for `--help` and `--machine-readable`. */
export const INPUT_MODES = ["disk", "libvirt", "ova", "vmx", "vsphere"] as const;

/**
 * Finds the input module for `-i MODE`.
 *
 * @param mode The mode name.
 * @returns The input.
 * @throws {UsageError} For an unknown mode.
 */
export function selectInput(mode: string): Input {
  switch (mode) {
    case "disk":
      return diskInput;
    case "ova":
      return ovaInput;
    case "vmx":
      return vmxInput;
    case "vsphere":
      return vsphereInput;
    case "libvirt":
      return libvirtInput;
    default:
      throw new UsageError(
        `Unknown input mode "-i ${mode}": vmshift reads ${INPUT_MODES.join(", ")}`,
      );
  }
}
