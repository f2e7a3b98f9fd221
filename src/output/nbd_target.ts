/**
 * A copy target served over NBD (qemu-nbd on a file that an output created).
 *
 * @module
 */

import type { CopyTarget, TargetWriter } from "../copy.ts";
import { NbdClient } from "../nbd/client.ts";

/** Options for {@linkcode nbdTarget}. */
export interface NbdTargetOptions {
  /** The file was just created: what was never written reads as zeroes. */
  readsZeroes: boolean;
  /** Zero requests must keep the space allocated (`-oa preallocated`). */
  preallocated: boolean;
  /**
   * Connections the server accepts for this copy.
   * @default 4
   */
  maxConnections?: number;
}

/**
 * Wraps an NBD server as a copy target.
 *
 * @param name Name for messages (the target file).
 * @param uri NBD URI of the server.
 * @param options What the target reads and keeps.
 * @returns The copy target.
 */
export function nbdTarget(name: string, uri: string, options: NbdTargetOptions): CopyTarget {
  return {
    name,
    nbdUri: uri,
    readsZeroes: options.readsZeroes,
    maxConnections: options.maxConnections ?? 4,
    // NBD lengths are 32-bit; stay well inside.
    maxZeroSize: 1024 * 1024 * 1024,
    async connect(signal: AbortSignal): Promise<TargetWriter> {
      const client = await NbdClient.connect(uri, { signal, name });
      if (client.readOnly) {
        await client.close();
        throw new Error(`Cannot write "${name}": the NBD server is read-only`);
      }
      return {
        write: (offset, data) => client.write(offset, data),
        zero: (offset, length) =>
          client.canWriteZeroes
            ? client.writeZeroes(offset, length, { noHole: options.preallocated })
            : client.write(offset, new Uint8Array(length)),
        flush: () => (client.canFlush ? client.flush() : Promise.resolve()),
        [Symbol.asyncDispose]: () => client.close(),
      };
    },
  };
}
