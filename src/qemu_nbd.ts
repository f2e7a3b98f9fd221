/**
 * qemu-nbd, behind one builder: vmshift serves source disks it cannot read with nbdkit, the
 * qcow2 overlays and qemu-img-created targets through it. qemu-nbd reports allocation and zero
 * extents (base:allocation) through a whole backing chain, which the copy engine relies on.
 *
 * @module
 */

import { type Server, startServer } from "./process.ts";
import { nbdReady } from "./nbd/probe.ts";

/** Options for {@linkcode serveQemuNbd}. */
export interface QemuNbdOptions {
  /** The unix socket to listen on (inside the run's private temporary directory). */
  socket: string;
  /** Image format; always given, so qemu-nbd never probes (probing raw images is unsafe). */
  format: string;
  /**
   * Serve read-only: the file is opened O_RDONLY and writes are refused.
   * @default false
   */
  readOnly?: boolean;
  /**
   * How many clients may connect at once. vmshift copies over several connections.
   * @default 8
   */
  shared?: number;
  /**
   * Let zero writes punch holes (sparse targets) instead of allocating zeroes.
   * @default false
   */
  discard?: boolean;
  /**
   * Cache mode passed to `--cache`. `none` bypasses the host page cache (O_DIRECT).
   * @default "writeback"
   */
  cache?: "none" | "writeback" | "unsafe";
  /**
   * Also offer the `qemu:allocation-depth` meta context: for each range, how deep in the
   * backing chain it is allocated (1: in this image, 2: in its backing file, 0: nowhere).
   * @default false
   */
  allocationDepth?: boolean;
  /** The working directory, for a relative file name; vmshift's own by default. */
  cwd?: string;
  /** Name used in messages. */
  name?: string;
  /** Stops the start when aborted. */
  signal?: AbortSignal;
}

/**
 * Serves an image file over NBD with qemu-nbd.
 *
 * @param file The image (or a JSON `json:{...}` filename).
 * @param options Socket, format, access.
 * @returns The running server; dispose it to stop it.
 */
export function serveQemuNbd(file: string, options: QemuNbdOptions): Promise<Server> {
  const args = [
    // Keep serving after a client disconnects: the readiness probe and each stage connect and
    // disconnect, and vmshift stops the server itself.
    "--persistent",
    `--shared=${options.shared ?? 8}`,
    "--socket",
    options.socket,
    "--format",
    options.format,
    `--cache=${options.cache ?? "writeback"}`,
    "--aio=threads",
  ];
  if (options.readOnly) args.push("--read-only");
  if (options.discard) args.push("--discard=unmap", "--detect-zeroes=unmap");
  if (options.allocationDepth) args.push("--allocation-depth");
  args.push(file);
  return startServer("qemu-nbd", args, {
    socket: options.socket,
    ready: nbdReady,
    // qemu-nbd has no --exit-with-parent of its own.
    dieWithParent: true,
    name: options.name ?? `qemu-nbd (${file})`,
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
}
