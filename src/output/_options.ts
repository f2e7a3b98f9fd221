/**
 * The output options every disk-writing output shares: `-of raw|qcow2` and
 * `-oa sparse|preallocated`, with virt-v2v's defaults.
 *
 * @module
 */

import { UsageError } from "../errors.ts";
import type { OutputCli } from "./types.ts";

/** The checked `-of` and `-oa`. */
export interface DiskOptions {
  /** `-of`, default raw. */
  format: "raw" | "qcow2";
  /** `-oa preallocated`; sparse by default. */
  preallocated: boolean;
}

/**
 * Checks `-of` and `-oa`.
 *
 * @param cli The parsed output options.
 * @returns The format and allocation.
 * @throws {UsageError} For another format or allocation.
 */
export function parseDiskOptions(cli: OutputCli): DiskOptions {
  const format = cli.format ?? "raw";
  if (format !== "raw" && format !== "qcow2") {
    throw new UsageError(`Unsupported output format "-of ${format}": use raw or qcow2`);
  }
  const allocation = cli.allocation ?? "sparse";
  if (allocation !== "sparse" && allocation !== "preallocated") {
    throw new UsageError(`Unsupported allocation "-oa ${allocation}": use sparse or preallocated`);
  }
  return { format, preallocated: allocation === "preallocated" };
}
