/**
 * An NBD client: the copy engine reads sources and writes targets through it.
 *
 * - Handshake: fixed newstyle negotiation, structured replies, the `base:allocation` meta
 *   context and `NBD_OPT_GO` asking for block size constraints. A server that refuses
 *   structured replies is served with simple replies (and no block status); a server without
 *   `NBD_OPT_GO` with `NBD_OPT_EXPORT_NAME`.
 * - Transmission: any number of requests in flight on one connection. One reader loop takes
 *   every reply off the socket and hands it to its request by cookie; request frames go through
 *   one writer queue, so frames never interleave (small frames sent together are coalesced into
 *   one write). Read payloads go straight from the socket into the caller's buffer.
 * - Errors: a request the server fails rejects with an {@linkcode NbdError} naming the server,
 *   the command and its range; the connection stays usable. When the connection is lost, every
 *   pending and later request rejects with an error saying so.
 *
 * Only what vmshift needs is implemented: no TLS, no extended headers, no `NBD_CMD_CACHE`.
 *
 * @module
 */

/** `base:allocation` flag: the range is not allocated (reads as zero unless also data). */
export const NBD_STATE_HOLE = 1;
/** `base:allocation` flag: the range reads as zeroes. */
export const NBD_STATE_ZERO = 2;

/** One extent of `base:allocation` block status. */
export interface Extent {
  /** Start, in bytes from the start of the export. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** {@linkcode NBD_STATE_HOLE} and {@linkcode NBD_STATE_ZERO} bits; 0 for allocated data. */
  flags: number;
}

/** Options for {@linkcode NbdClient.connect}. */
export interface ConnectOptions {
  /**
   * The export to open. When not given, the export named in the URI.
   * @default ""
   */
  exportName?: string;
  /**
   * Name of the server in error messages.
   * @default the URI
   */
  name?: string;
  /** Aborts the connection attempt (connect and handshake) when signalled. */
  signal?: AbortSignal;
  /**
   * Meta contexts to ask for besides `base:allocation`, e.g. `qemu:allocation-depth` (how deep
   * in a backing chain each range is allocated). Those the server grants are listed in
   * {@linkcode NbdClient.metaContexts} and can be passed to {@linkcode NbdClient.blockStatus}.
   * @default []
   */
  metaContexts?: readonly string[];
}

/** Options for {@linkcode NbdClient.write}. */
export interface WriteOptions {
  /**
   * Force unit access: the reply comes only once the data is on stable storage. Needs
   * {@linkcode NbdClient.canFua}.
   * @default false
   */
  fua?: boolean;
}

/** Options for {@linkcode NbdClient.writeZeroes}. */
export interface WriteZeroesOptions {
  /**
   * Keep the range allocated (`NBD_CMD_FLAG_NO_HOLE`); without it the server may punch a hole.
   * @default false
   */
  noHole?: boolean;
  /**
   * Fail fast with `ENOTSUP` (errno 95) unless zeroing is faster than writing zeroes
   * (`NBD_CMD_FLAG_FAST_ZERO`). Needs {@linkcode NbdClient.canFastZero}.
   * @default false
   */
  fastZero?: boolean;
  /**
   * Force unit access, as for {@linkcode WriteOptions.fua}.
   * @default false
   */
  fua?: boolean;
}

/** The parts of an NBD URI. */
export interface NbdUri {
  /** Unix socket path (`nbd+unix://`). */
  socket?: string;
  /** Host name or address (`nbd://`), without brackets for IPv6. */
  host?: string;
  /** TCP port (`nbd://`), 10809 unless given. */
  port?: number;
  /** Export name, percent-decoded; empty for the default export. */
  exportName: string;
}

/** Error numbers of the NBD protocol (the same values as Linux). */
const ERRNO: Readonly<Record<number, readonly [string, string]>> = {
  1: ["EPERM", "operation not permitted"],
  5: ["EIO", "input/output error"],
  12: ["ENOMEM", "cannot allocate memory"],
  22: ["EINVAL", "invalid argument"],
  28: ["ENOSPC", "no space left on device"],
  75: ["EOVERFLOW", "value too large"],
  95: ["ENOTSUP", "operation not supported"],
  108: ["ESHUTDOWN", "server is shutting down"],
};
const EPERM = 1;
const EIO = 5;
const EINVAL = 22;
const ENOTSUP = 95;

/**
 * A request that the server (or the client, for a request the export cannot take) failed. The
 * connection is still usable.
 *
 * `errno` is the NBD error number, which has the Linux value: 1 EPERM, 5 EIO, 12 ENOMEM,
 * 22 EINVAL, 28 ENOSPC, 75 EOVERFLOW, 95 ENOTSUP (e.g. a refused fast zero), 108 ESHUTDOWN.
 *
 * @example
 * ```ts
 * import { NbdError } from "./client.ts";
 * const e = new NbdError("READ", 5, "NBD READ at offset 0 length 512 failed on x: EIO");
 * if (e.errno !== 5 || e.command !== "READ") throw new Error("unexpected");
 * ```
 */
export class NbdError extends Error {
  /** The NBD error number (Linux value), e.g. 5 for EIO. */
  readonly errno: number;
  /** The command that failed, e.g. `READ`, `WRITE_ZEROES`, `BLOCK_STATUS`. */
  readonly command: string;

  /**
   * @param command The command, e.g. `READ`.
   * @param errno The NBD error number.
   * @param message The full message.
   * @param options Cause.
   */
  constructor(command: string, errno: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NbdError";
    this.errno = errno;
    this.command = command;
  }
}

/**
 * Describes an NBD error number, e.g. `EIO (input/output error)`.
 *
 * @param errno The NBD error number.
 * @returns Its name and meaning.
 */
function describeErrno(errno: number): string {
  const known = ERRNO[errno];
  return known ? `${known[0]} (${known[1]})` : `error ${errno}`;
}

// Handshake.
const NBDMAGIC_HI = 0x4e42444d; // "NBDMAGIC"
const NBDMAGIC_LO = 0x41474943;
const IHAVEOPT_HI = 0x49484156; // "IHAVEOPT"
const IHAVEOPT_LO = 0x454f5054;
const CLISERV_MAGIC_HI = 0x00004202; // oldstyle
const REPLY_MAGIC_HI = 0x0003e889;
const REPLY_MAGIC_LO = 0x045565a9;
const NBD_FLAG_FIXED_NEWSTYLE = 1;
const NBD_FLAG_NO_ZEROES = 2;
const NBD_OPT_EXPORT_NAME = 1;
const NBD_OPT_GO = 7;
const NBD_OPT_STRUCTURED_REPLY = 8;
const NBD_OPT_SET_META_CONTEXT = 10;
const NBD_REP_ACK = 1;
const NBD_REP_INFO = 3;
const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
const NBD_INFO_EXPORT = 0;
const NBD_INFO_BLOCK_SIZE = 3;
const REP_ERRORS: Readonly<Record<number, readonly [string, string]>> = {
  1: ["NBD_REP_ERR_UNSUP", "the server does not support it"],
  2: ["NBD_REP_ERR_POLICY", "refused by the server's policy"],
  3: ["NBD_REP_ERR_INVALID", "the server says the request is invalid"],
  4: ["NBD_REP_ERR_PLATFORM", "not supported on the server's platform"],
  5: ["NBD_REP_ERR_TLS_REQD", "the server requires TLS"],
  6: ["NBD_REP_ERR_UNKNOWN", "the export does not exist"],
  7: ["NBD_REP_ERR_SHUTDOWN", "the server is shutting down"],
  8: ["NBD_REP_ERR_BLOCK_SIZE_REQD", "the server requires block size negotiation"],
  9: ["NBD_REP_ERR_TOO_BIG", "the request is too big"],
  10: ["NBD_REP_ERR_EXT_HEADER_REQD", "the server requires extended headers"],
};

// Transmission flags.
const NBD_FLAG_READ_ONLY = 1 << 1;
const NBD_FLAG_SEND_FLUSH = 1 << 2;
const NBD_FLAG_SEND_FUA = 1 << 3;
const NBD_FLAG_SEND_TRIM = 1 << 5;
const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Requests and replies.
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const NBD_CMD_DISC = 2;
const NBD_CMD_FLUSH = 3;
const NBD_CMD_TRIM = 4;
const NBD_CMD_WRITE_ZEROES = 6;
const NBD_CMD_BLOCK_STATUS = 7;
const COMMAND_NAMES = [
  "READ",
  "WRITE",
  "DISC",
  "FLUSH",
  "TRIM",
  "CACHE",
  "WRITE_ZEROES",
  "BLOCK_STATUS",
];
const NBD_CMD_FLAG_FUA = 1 << 0;
const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
const NBD_REPLY_FLAG_DONE = 1;
const NBD_REPLY_TYPE_NONE = 0;
const NBD_REPLY_TYPE_OFFSET_DATA = 1;
const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
const NBD_REPLY_TYPE_ERROR_BIT = 0x8000;
const NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

const BASE_ALLOCATION = "base:allocation";
const DEFAULT_PORT = 10809;
const DEFAULT_MAX_BLOCK_SIZE = 32 * 1024 * 1024;
const DEFAULT_PREFERRED_BLOCK_SIZE = 4096;
const MAX_REQUEST_LENGTH = 0xffffffff;
const MAX_BLOCK_STATUS_LENGTH = 0x80000000;
/** Socket reads go through a buffer of this size, except large payloads (read in place). */
const READ_BUFFER_SIZE = 256 * 1024;
/** Payloads at least this long are read straight into their destination. */
const DIRECT_READ_MIN = 64 * 1024;
/** Frames shorter than this are copied together into one write. */
const COALESCE_MAX = 16 * 1024;
/** Bound on the payload of a reply that is not read data (error messages, extents). */
const MAX_META_PAYLOAD = 64 * 1024 * 1024;
/** How long close() waits for the server to hang up after NBD_CMD_DISC. */
const DISCONNECT_TIMEOUT_MS = 2000;
const TWO_32 = 0x100000000;

/** The server closed the connection, or a reply broke the protocol: fatal for the connection. */
class ConnectionError extends Error {}

/** A Deno connection with a read buffer: whole frames in, whole writes out. */
class Wire {
  readonly #conn: Deno.Conn;
  readonly #buf = new Uint8Array(READ_BUFFER_SIZE);
  readonly #view = new DataView(this.#buf.buffer);
  #start = 0;
  #end = 0;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** Bytes buffered and not consumed. */
  available(): number {
    return this.#end - this.#start;
  }

  /** Big-endian 16-bit value `pos` bytes into the buffered data. */
  u16(pos: number): number {
    return this.#view.getUint16(this.#start + pos);
  }

  /** Big-endian 32-bit value `pos` bytes into the buffered data. */
  u32(pos: number): number {
    return this.#view.getUint32(this.#start + pos);
  }

  /** Big-endian 64-bit value as a number; throws beyond 2^53. */
  u64(pos: number): number {
    const hi = this.u32(pos);
    if (hi >= 0x200000) throw new ConnectionError("protocol error: 64-bit value beyond 2^53");
    return hi * TWO_32 + this.u32(pos + 4);
  }

  /** Drops `n` buffered bytes. */
  consume(n: number): void {
    this.#start += n;
  }

  /**
   * Reads until `n` bytes (at most the buffer size) are buffered.
   * @returns False on end of stream before any byte is buffered.
   */
  async tryFill(n: number): Promise<boolean> {
    while (this.#end - this.#start < n) {
      if (this.#start + n > this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const got = await this.#conn.read(this.#buf.subarray(this.#end));
      if (got === null) {
        if (this.#end === this.#start) return false;
        throw new ConnectionError("the server closed the connection in the middle of a reply");
      }
      this.#end += got;
    }
    return true;
  }

  /** Reads until `n` bytes are buffered; end of stream is an error. */
  async fill(n: number): Promise<void> {
    if (!(await this.tryFill(n))) {
      throw new ConnectionError("the server closed the connection");
    }
  }

  /** Reads `n` bytes into a new array (for small, non-data payloads). */
  async take(n: number): Promise<Uint8Array> {
    if (n > this.#buf.length) {
      const out = new Uint8Array(n);
      await this.readInto(out);
      return out;
    }
    if (this.available() < n) await this.fill(n);
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Fills `dest` from the stream: buffered bytes first, the rest read in place if large. */
  async readInto(dest: Uint8Array): Promise<void> {
    let done = Math.min(this.#end - this.#start, dest.length);
    if (done > 0) {
      dest.set(this.#buf.subarray(this.#start, this.#start + done));
      this.#start += done;
    }
    while (done < dest.length) {
      const rest = dest.length - done;
      if (rest >= DIRECT_READ_MIN) {
        const got = await this.#conn.read(dest.subarray(done));
        if (got === null) {
          throw new ConnectionError("the server closed the connection in the middle of a reply");
        }
        done += got;
      } else {
        // Small remainder: read it with whatever follows (the next reply headers) in one go.
        this.#start = this.#end = 0;
        await this.fill(1);
        const n = Math.min(this.#end, rest);
        dest.set(this.#buf.subarray(0, n), done);
        this.#start = n;
        done += n;
      }
    }
  }

  /** Discards `n` bytes of the stream. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      if (this.available() === 0) await this.fill(1);
      const k = Math.min(n, this.available());
      this.#start += k;
      n -= k;
    }
  }

  /** Writes all of `data`. */
  async write(data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      done += await this.#conn.write(done === 0 ? data : data.subarray(done));
    }
  }

  /** Closes the socket; pending reads and writes are cancelled. */
  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** What the handshake settled. */
interface Negotiated {
  size: number;
  transmissionFlags: number;
  structured: boolean;
  metaContexts: Map<string, number>;
  minBlockSize: number;
  preferredBlockSize: number;
  maxBlockSize: number;
}

/** One request in flight. */
interface Pending {
  type: number;
  offset: number;
  length: number;
  /** Where READ data goes. */
  dest: Uint8Array | undefined;
  /** Bytes of READ data (or holes) received. */
  received: number;
  extents: Extent[] | undefined;
  /** For BLOCK_STATUS: the id of the meta context whose extents are wanted. */
  contextId: number | undefined;
  error: NbdError | undefined;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * A connection to one export of an NBD server. Requests may be issued concurrently; close it
 * (or use `await using`) when done.
 *
 * @example
 * ```ts
 * import { NbdClient } from "./client.ts";
 * import { Nbdkit } from "../nbdkit.ts";
 * import { TempDir } from "../tmpdir.ts";
 *
 * await using dir = await TempDir.create();
 * await using server = await new Nbdkit("memory").addArg("size", "1M").writable(true)
 *   .serve(dir.join("nbd.sock"));
 * await using nbd = await NbdClient.connect(server.uri);
 * await nbd.write(4096, new Uint8Array(512).fill(7));
 * const data = await nbd.read(4096, 512);
 * if (data[0] !== 7 || nbd.size !== 1024 * 1024) throw new Error("unexpected");
 * ```
 */
export class NbdClient implements AsyncDisposable {
  /** The URI connected to. */
  readonly uri: string;
  /** Export size in bytes. */
  readonly size: number;
  /** The server refuses writes. */
  readonly readOnly: boolean;
  /** The server takes NBD_CMD_FLUSH. */
  readonly canFlush: boolean;
  /** The server takes the FUA flag on writes. */
  readonly canFua: boolean;
  /** The server takes NBD_CMD_TRIM. */
  readonly canTrim: boolean;
  /** The server takes NBD_CMD_WRITE_ZEROES. */
  readonly canWriteZeroes: boolean;
  /** The server takes NBD_CMD_FLAG_FAST_ZERO on write zeroes. */
  readonly canFastZero: boolean;
  /** Several connections to this export see each other's writes (after flush). */
  readonly canMultiConn: boolean;
  /** Structured replies and the `base:allocation` meta context were negotiated. */
  readonly canBlockStatus: boolean;
  /** Minimum block size: requests should be aligned to it. */
  readonly minBlockSize: number;
  /** Preferred block size for efficient I/O. */
  readonly preferredBlockSize: number;
  /** Largest READ or WRITE the server takes (32 MiB when it did not say). */
  readonly maxBlockSize: number;

  readonly #name: string;
  readonly #wire: Wire;
  readonly #structured: boolean;
  readonly #metaContexts: Map<string, number>;
  readonly #pending = new Map<number, Pending>();
  readonly #inflight = new Set<Promise<unknown>>();
  #nextCookie = 1;
  #queue: Uint8Array[] = [];
  #writing: Promise<void> | undefined;
  readonly #scratch = new Uint8Array(64 * 1024);
  readonly #reader: Promise<void>;
  #failure: string | undefined;
  #failureCause: unknown;
  #closing = false;
  #closed: Promise<void> | undefined;
  #disconnected: (() => void) | undefined;

  private constructor(uri: string, name: string, wire: Wire, n: Negotiated) {
    this.uri = uri;
    this.#name = name;
    this.#wire = wire;
    this.#structured = n.structured;
    this.#metaContexts = n.metaContexts;
    const f = n.transmissionFlags;
    this.size = n.size;
    this.readOnly = (f & NBD_FLAG_READ_ONLY) !== 0;
    this.canFlush = (f & NBD_FLAG_SEND_FLUSH) !== 0;
    this.canFua = (f & NBD_FLAG_SEND_FUA) !== 0;
    this.canTrim = (f & NBD_FLAG_SEND_TRIM) !== 0;
    this.canWriteZeroes = (f & NBD_FLAG_SEND_WRITE_ZEROES) !== 0;
    this.canFastZero = this.canWriteZeroes && (f & NBD_FLAG_SEND_FAST_ZERO) !== 0;
    this.canMultiConn = (f & NBD_FLAG_CAN_MULTI_CONN) !== 0;
    this.canBlockStatus = n.structured && n.metaContexts.has(BASE_ALLOCATION);
    this.minBlockSize = n.minBlockSize;
    this.preferredBlockSize = n.preferredBlockSize;
    this.maxBlockSize = n.maxBlockSize;
    this.#reader = this.#readLoop();
  }

  /** The meta contexts the server granted, `base:allocation` among them when it can. */
  get metaContexts(): string[] {
    return [...this.#metaContexts.keys()];
  }

  /**
   * Connects to an NBD server and opens an export.
   *
   * @param uri `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]/EXPORT`.
   * @param options Export name, name for messages, abort signal.
   * @returns The open connection; close or dispose it.
   * @throws {TypeError} When the URI is not a supported NBD URI.
   * @throws {Error} When the server cannot be reached or refuses the export; the message
   * names the server and says why.
   */
  static async connect(uri: string, options: ConnectOptions = {}): Promise<NbdClient> {
    const parsed = parseNbdUri(uri);
    const name = options.name ?? uri;
    const exportName = options.exportName ?? parsed.exportName;
    const signal = options.signal;
    signal?.throwIfAborted();
    let conn: Deno.Conn;
    try {
      if (parsed.socket !== undefined) {
        conn = await Deno.connect({ transport: "unix", path: parsed.socket });
      } else {
        const tcp = await Deno.connect({ hostname: parsed.host!, port: parsed.port! });
        tcp.setNoDelay(true);
        conn = tcp;
      }
    } catch (e) {
      throw new Error(`Cannot connect to NBD server ${name}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    const wire = new Wire(conn);
    const onAbort = () => wire.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const negotiated = await handshake(wire, exportName, name, [
        BASE_ALLOCATION,
        ...(options.metaContexts ?? []).filter((c) => c !== BASE_ALLOCATION),
      ]);
      signal?.throwIfAborted();
      return new NbdClient(uri, name, wire, negotiated);
    } catch (e) {
      wire.close();
      signal?.throwIfAborted();
      if (e instanceof HandshakeError) throw e;
      throw new Error(`Cannot connect to NBD server ${name}: ${(e as Error).message}`, {
        cause: e,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Reads from the export.
   *
   * @param offset Byte offset.
   * @param length Byte count, at most {@linkcode NbdClient.maxBlockSize}.
   * @returns The data.
   * @throws {RangeError} When the range is beyond the export or too long.
   * @throws {NbdError} When the server fails the read.
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const buffer = new Uint8Array(length);
    await this.readInto(offset, buffer);
    return buffer;
  }

  /**
   * Reads `buffer.length` bytes from the export straight into `buffer`.
   *
   * @param offset Byte offset.
   * @param buffer Destination; its length is the byte count.
   * @throws {RangeError} When the range is beyond the export or too long.
   * @throws {NbdError} When the server fails the read.
   */
  readInto(offset: number, buffer: Uint8Array): Promise<void> {
    const length = buffer.length;
    const refused = this.#checkRange(NBD_CMD_READ, offset, length, this.maxBlockSize);
    if (refused) return Promise.reject(refused);
    if (length === 0) return this.#noop();
    return this.#request(NBD_CMD_READ, 0, offset, length, undefined, buffer);
  }

  /**
   * Writes to the export. `data` must not change until the promise settles.
   *
   * @param offset Byte offset.
   * @param data The data, at most {@linkcode NbdClient.maxBlockSize} bytes.
   * @param options FUA.
   * @throws {RangeError} When the range is beyond the export or too long.
   * @throws {NbdError} When the export is read-only or the server fails the write.
   */
  write(offset: number, data: Uint8Array, options: WriteOptions = {}): Promise<void> {
    const length = data.length;
    const refused = this.#checkRange(NBD_CMD_WRITE, offset, length, this.maxBlockSize) ??
      this.#checkWritable(NBD_CMD_WRITE, offset, length) ??
      (options.fua ? this.#checkFua(NBD_CMD_WRITE, offset, length) : undefined);
    if (refused) return Promise.reject(refused);
    if (length === 0) return this.#noop();
    return this.#request(
      NBD_CMD_WRITE,
      options.fua ? NBD_CMD_FLAG_FUA : 0,
      offset,
      length,
      data,
      undefined,
    );
  }

  /**
   * Writes zeroes (without sending them). The length is not bound by the maximum block size.
   *
   * @param offset Byte offset.
   * @param length Byte count, below 4 GiB.
   * @param options `noHole` keeps the range allocated; `fastZero` fails with ENOTSUP unless
   * zeroing is fast.
   * @throws {RangeError} When the range is beyond the export or not below 4 GiB.
   * @throws {NbdError} When the server does not support it or fails.
   */
  writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    const type = NBD_CMD_WRITE_ZEROES;
    let refused: Error | undefined = this.#checkRange(type, offset, length, MAX_REQUEST_LENGTH) ??
      this.#checkWritable(type, offset, length);
    if (!refused && !this.canWriteZeroes) {
      refused = this.#error(type, offset, length, ENOTSUP, "the server does not support it");
    }
    if (!refused && options.fastZero && !this.canFastZero) {
      refused = this.#error(
        type,
        offset,
        length,
        ENOTSUP,
        "the server does not support fast zero",
      );
    }
    if (!refused && options.fua) refused = this.#checkFua(type, offset, length);
    if (refused) return Promise.reject(refused);
    if (length === 0) return this.#noop();
    const flags = (options.noHole ? NBD_CMD_FLAG_NO_HOLE : 0) |
      (options.fastZero ? NBD_CMD_FLAG_FAST_ZERO : 0) | (options.fua ? NBD_CMD_FLAG_FUA : 0);
    return this.#request(type, flags, offset, length, undefined, undefined);
  }

  /**
   * Discards a range: the server may deallocate it; reads of it then return unspecified data
   * (zeroes for most servers).
   *
   * @param offset Byte offset.
   * @param length Byte count, below 4 GiB.
   * @throws {RangeError} When the range is beyond the export or not below 4 GiB.
   * @throws {NbdError} When the server does not support trim or fails.
   */
  trim(offset: number, length: number): Promise<void> {
    let refused: Error | undefined =
      this.#checkRange(NBD_CMD_TRIM, offset, length, MAX_REQUEST_LENGTH) ??
        this.#checkWritable(NBD_CMD_TRIM, offset, length);
    if (!refused && !this.canTrim) {
      refused = this.#error(NBD_CMD_TRIM, offset, length, EINVAL, "the server does not support it");
    }
    if (refused) return Promise.reject(refused);
    if (length === 0) return this.#noop();
    return this.#request(NBD_CMD_TRIM, 0, offset, length, undefined, undefined);
  }

  /**
   * Asks the server to put every completed write on stable storage.
   *
   * @throws {NbdError} When the server does not support flush or fails.
   */
  flush(): Promise<void> {
    if (!this.canFlush) {
      return Promise.reject(
        this.#error(NBD_CMD_FLUSH, 0, 0, EINVAL, "the server does not support it"),
      );
    }
    return this.#request(NBD_CMD_FLUSH, 0, 0, 0, undefined, undefined);
  }

  /**
   * Allocation status (`base:allocation`) of a range. The extents start at `offset`, are
   * contiguous and lie within `[offset, offset + length)`; there is at least one, and they may
   * cover less than `length` (the server decides), so callers loop. Without
   * {@linkcode NbdClient.canBlockStatus} the whole range is one extent of flags 0 (data).
   *
   * @param offset Byte offset.
   * @param length Byte count, more than 0. Requests are capped at 2 GiB.
   * @returns The extents.
   * @throws {RangeError} When the range is empty or beyond the export.
   * @throws {NbdError} When the server fails the request.
   */
  async blockStatus(
    offset: number,
    length: number,
    context: string = BASE_ALLOCATION,
  ): Promise<Extent[]> {
    const refused = this.#checkRange(NBD_CMD_BLOCK_STATUS, offset, length, Number.MAX_SAFE_INTEGER);
    if (refused) throw refused;
    if (length === 0) {
      throw new RangeError(
        `Cannot send ${describe(NBD_CMD_BLOCK_STATUS, offset, length)} to ${this.#name}: ` +
          `the length is 0`,
      );
    }
    const contextId = this.#metaContexts.get(context);
    if (contextId === undefined) {
      if (context === BASE_ALLOCATION) return [{ offset, length, flags: 0 }];
      throw new TypeError(`NBD server ${this.#name} did not grant meta context "${context}"`);
    }
    const cap = MAX_BLOCK_STATUS_LENGTH - (MAX_BLOCK_STATUS_LENGTH % this.minBlockSize);
    const sent = Math.min(length, cap);
    const extents: Extent[] = [];
    await this.#request(
      NBD_CMD_BLOCK_STATUS,
      0,
      offset,
      sent,
      undefined,
      undefined,
      extents,
      contextId,
    );
    return extents;
  }

  /**
   * Waits for pending requests, sends NBD_CMD_DISC and closes the connection. Safe to call
   * more than once; never throws.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  /** Same as {@linkcode NbdClient.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#inflight]);
    if (this.#failure === undefined) {
      const hungUp = new Promise<void>((resolve) => this.#disconnected = resolve);
      this.#send([frame(NBD_CMD_DISC, 0, 0, 0, 0)]);
      // The server hangs up after DISC; the reader sees the end of stream. Don't wait forever.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        hungUp,
        this.#reader,
        new Promise<void>((resolve) => timer = setTimeout(resolve, DISCONNECT_TIMEOUT_MS)),
      ]);
      clearTimeout(timer);
    }
    this.#wire.close();
    await this.#reader;
    await this.#writing;
  }

  #noop(): Promise<void> {
    return this.#failure !== undefined || this.#closing ? this.#rejectNow() : Promise.resolve();
  }

  #checkRange(type: number, offset: number, length: number, max: number): RangeError | undefined {
    let problem: string | undefined;
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0
    ) {
      problem = "offset and length must be non-negative integers";
    } else if (offset + length > this.size) {
      problem = `the range goes beyond the end of the export (${this.size} bytes)`;
    } else if (length > max) {
      problem = max === this.maxBlockSize
        ? `the length exceeds the maximum block size (${max} bytes)`
        : `the length exceeds ${max} bytes`;
    }
    return problem
      ? new RangeError(`Cannot send ${describe(type, offset, length)} to ${this.#name}: ${problem}`)
      : undefined;
  }

  #checkWritable(type: number, offset: number, length: number): NbdError | undefined {
    return this.readOnly
      ? this.#error(type, offset, length, EPERM, "the export is read-only")
      : undefined;
  }

  #checkFua(type: number, offset: number, length: number): NbdError | undefined {
    return this.canFua
      ? undefined
      : this.#error(type, offset, length, EINVAL, "the server does not support FUA");
  }

  #error(type: number, offset: number, length: number, errno: number, detail?: string): NbdError {
    return new NbdError(
      COMMAND_NAMES[type] ?? `command ${type}`,
      errno,
      `${describe(type, offset, length)} failed on ${this.#name}: ${describeErrno(errno)}` +
        (detail ? `: ${detail}` : ""),
    );
  }

  #rejectNow(): Promise<never> {
    const message = this.#closing
      ? `Cannot send a request to NBD server ${this.#name}: the connection is closed`
      : `Connection to NBD server ${this.#name} lost: ${this.#failure}`;
    return Promise.reject(new Error(message, { cause: this.#failureCause }));
  }

  #request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload: Uint8Array | undefined,
    dest: Uint8Array | undefined,
    extents?: Extent[],
    contextId?: number,
  ): Promise<void> {
    if (this.#failure !== undefined || this.#closing) return this.#rejectNow();
    let cookie = this.#nextCookie;
    while (this.#pending.has(cookie)) cookie = cookie >= 0xffffffff ? 1 : cookie + 1;
    this.#nextCookie = cookie >= 0xffffffff ? 1 : cookie + 1;
    const promise = new Promise<void>((resolve, reject) => {
      this.#pending.set(cookie, {
        type,
        offset,
        length,
        dest,
        received: 0,
        extents,
        contextId,
        error: undefined,
        resolve,
        reject,
      });
    });
    const header = frame(type, flags, cookie, offset, length);
    this.#send(payload ? [header, payload] : [header]);
    const tracked = promise.catch(() => {});
    this.#inflight.add(tracked);
    tracked.finally(() => this.#inflight.delete(tracked));
    return promise;
  }

  /** Queues the parts of one frame; the writer sends them in order, never interleaved. */
  #send(parts: Uint8Array[]): void {
    for (const p of parts) this.#queue.push(p);
    // Start on a microtask, so requests issued together go out in one write.
    this.#writing ??= Promise.resolve().then(() => this.#writeLoop());
  }

  async #writeLoop(): Promise<void> {
    const scratch = this.#scratch;
    try {
      while (this.#queue.length > 0 && this.#failure === undefined) {
        const parts = this.#queue;
        this.#queue = [];
        let used = 0;
        for (const p of parts) {
          if (p.length >= COALESCE_MAX) {
            if (used > 0) await this.#wire.write(scratch.subarray(0, used));
            used = 0;
            await this.#wire.write(p);
          } else {
            if (used + p.length > scratch.length) {
              await this.#wire.write(scratch.subarray(0, used));
              used = 0;
            }
            scratch.set(p, used);
            used += p.length;
          }
        }
        if (used > 0) await this.#wire.write(scratch.subarray(0, used));
      }
    } catch (e) {
      this.#fail(`cannot send a request: ${(e as Error).message}`, e);
    } finally {
      this.#queue = [];
      this.#writing = undefined;
    }
  }

  async #readLoop(): Promise<void> {
    const wire = this.#wire;
    try {
      while (true) {
        if (wire.available() < 4 && !(await wire.tryFill(4))) {
          if (this.#pending.size === 0 && this.#closing) {
            this.#disconnected?.();
            return;
          }
          throw new ConnectionError("the server closed the connection");
        }
        const magic = wire.u32(0);
        if (magic === STRUCTURED_REPLY_MAGIC && this.#structured) {
          if (wire.available() < 20) await wire.fill(20);
          const flags = wire.u16(4);
          const type = wire.u16(6);
          const cookie = wire.u32(12);
          const req = this.#lookup(wire.u32(8), cookie);
          const length = wire.u32(16);
          wire.consume(20);
          await this.#chunk(req, type, length);
          if (flags & NBD_REPLY_FLAG_DONE) this.#finish(cookie, req);
        } else if (magic === SIMPLE_REPLY_MAGIC) {
          if (wire.available() < 16) await wire.fill(16);
          const errno = wire.u32(4);
          const cookie = wire.u32(12);
          const req = this.#lookup(wire.u32(8), cookie);
          wire.consume(16);
          if (errno !== 0) {
            req.error ??= this.#error(req.type, req.offset, req.length, errno);
          } else if (req.dest) {
            await wire.readInto(req.dest);
            req.received = req.length;
          }
          this.#finish(cookie, req);
        } else {
          throw new ConnectionError(
            `protocol error: unexpected reply magic 0x${magic.toString(16)}`,
          );
        }
      }
    } catch (e) {
      if (this.#failure === undefined) {
        const message = e instanceof ConnectionError
          ? e.message
          : this.#closing
          ? "the client closed the connection"
          : (e as Error).message;
        this.#fail(message, e);
      }
    }
  }

  #lookup(hi: number, cookie: number): Pending {
    const req = hi === 0 ? this.#pending.get(cookie) : undefined;
    if (!req) {
      throw new ConnectionError(`protocol error: reply to an unknown request (cookie ${cookie})`);
    }
    return req;
  }

  #finish(cookie: number, req: Pending): void {
    this.#pending.delete(cookie);
    if (!req.error && req.type === NBD_CMD_READ && req.received !== req.length) {
      req.error = this.#error(
        req.type,
        req.offset,
        req.length,
        EIO,
        `the server sent ${req.received} of ${req.length} bytes`,
      );
    }
    if (!req.error && req.extents && req.extents.length === 0) {
      req.error = this.#error(req.type, req.offset, req.length, EIO, "the server sent no extents");
    }
    if (req.error) req.reject(req.error);
    else req.resolve();
  }

  /** Handles one structured reply chunk whose 20-byte header was consumed. */
  async #chunk(req: Pending, type: number, length: number): Promise<void> {
    const wire = this.#wire;
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw new ConnectionError("protocol error: NONE chunk with a payload");
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA: {
        if (length < 8) throw new ConnectionError("protocol error: short OFFSET_DATA chunk");
        if (wire.available() < 8) await wire.fill(8);
        const at = wire.u64(0) - req.offset;
        wire.consume(8);
        const n = length - 8;
        if (!req.dest || at < 0 || at + n > req.length) {
          throw new ConnectionError("protocol error: OFFSET_DATA chunk outside the request");
        }
        await wire.readInto(req.dest.subarray(at, at + n));
        req.received += n;
        return;
      }
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (length !== 12) throw new ConnectionError("protocol error: bad OFFSET_HOLE chunk");
        if (wire.available() < 12) await wire.fill(12);
        const at = wire.u64(0) - req.offset;
        const n = wire.u32(8);
        wire.consume(12);
        if (!req.dest || at < 0 || at + n > req.length) {
          throw new ConnectionError("protocol error: OFFSET_HOLE chunk outside the request");
        }
        req.dest.fill(0, at, at + n);
        req.received += n;
        return;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (length < 4 || (length - 4) % 8 !== 0 || length > MAX_META_PAYLOAD) {
          throw new ConnectionError("protocol error: bad BLOCK_STATUS chunk");
        }
        const payload = await wire.take(length);
        const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
        const out = req.extents;
        if (!out) {
          throw new ConnectionError("protocol error: BLOCK_STATUS chunk for a non-status request");
        }
        if (view.getUint32(0) !== req.contextId || out.length > 0) return;
        const end = req.offset + req.length;
        let pos = req.offset;
        for (let i = 4; i < length && pos < end; i += 8) {
          const n = Math.min(view.getUint32(i), end - pos);
          if (n === 0) continue;
          const flags = view.getUint32(i + 4);
          const last = out[out.length - 1];
          if (last && last.flags === flags) last.length += n;
          else out.push({ offset: pos, length: n, flags });
          pos += n;
        }
        return;
      }
      default: {
        if (!(type & NBD_REPLY_TYPE_ERROR_BIT)) {
          // An unknown chunk that is not an error: skip it, but the request cannot be trusted.
          await wire.skip(length);
          req.error ??= this.#error(
            req.type,
            req.offset,
            req.length,
            EIO,
            `unexpected reply chunk type ${type}`,
          );
          return;
        }
        if (length < 6 || length > MAX_META_PAYLOAD) {
          throw new ConnectionError("protocol error: bad error chunk");
        }
        const payload = await wire.take(length);
        const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
        const errno = view.getUint32(0) || EIO;
        const messageLength = Math.min(view.getUint16(4), length - 6);
        let detail = new TextDecoder().decode(payload.subarray(6, 6 + messageLength)).trim();
        if (type === NBD_REPLY_TYPE_ERROR_OFFSET && length >= 6 + messageLength + 8) {
          const hi = view.getUint32(6 + messageLength);
          const lo = view.getUint32(6 + messageLength + 4);
          const where = `at offset ${hi * TWO_32 + lo}`;
          detail = detail ? `${detail} (${where})` : where;
        }
        req.error ??= this.#error(req.type, req.offset, req.length, errno, detail);
        return;
      }
    }
  }

  #fail(reason: string, cause: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = reason;
    this.#failureCause = cause;
    const message = `Connection to NBD server ${this.#name} lost: ${reason}`;
    for (const req of this.#pending.values()) req.reject(new Error(message, { cause }));
    this.#pending.clear();
    this.#wire.close();
  }
}

/** A failure of the handshake that already carries its full message. */
class HandshakeError extends Error {}

/** Describes a request for messages, e.g. `NBD READ at offset 0 length 512`. */
function describe(type: number, offset: number, length: number): string {
  const name = COMMAND_NAMES[type] ?? `command ${type}`;
  return type === NBD_CMD_FLUSH
    ? `NBD ${name}`
    : `NBD ${name} at offset ${offset} length ${length}`;
}

/** Builds a 28-byte request header. */
function frame(
  type: number,
  flags: number,
  cookie: number,
  offset: number,
  length: number,
): Uint8Array {
  const out = new Uint8Array(28);
  const view = new DataView(out.buffer);
  view.setUint32(0, REQUEST_MAGIC);
  view.setUint16(4, flags);
  view.setUint16(6, type);
  view.setUint32(8, 0);
  view.setUint32(12, cookie);
  view.setUint32(16, Math.floor(offset / TWO_32));
  view.setUint32(20, offset >>> 0);
  view.setUint32(24, length);
  return out;
}

const encoder = new TextEncoder();

/** Runs the fixed newstyle handshake up to the start of transmission. */
async function handshake(
  wire: Wire,
  exportName: string,
  name: string,
  contexts: readonly string[],
): Promise<Negotiated> {
  await wire.fill(16);
  if (wire.u32(0) !== NBDMAGIC_HI || wire.u32(4) !== NBDMAGIC_LO) {
    throw new HandshakeError(`Cannot connect to NBD server ${name}: not an NBD server`);
  }
  if (wire.u32(8) === CLISERV_MAGIC_HI) {
    throw new HandshakeError(
      `Cannot connect to NBD server ${name}: oldstyle negotiation is not supported`,
    );
  }
  if (wire.u32(8) !== IHAVEOPT_HI || wire.u32(12) !== IHAVEOPT_LO) {
    throw new HandshakeError(`Cannot connect to NBD server ${name}: unknown negotiation style`);
  }
  await wire.fill(18);
  const serverFlags = wire.u16(16);
  wire.consume(18);
  if (!(serverFlags & NBD_FLAG_FIXED_NEWSTYLE)) {
    throw new HandshakeError(
      `Cannot connect to NBD server ${name}: the server does not support fixed newstyle negotiation`,
    );
  }
  const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = new Uint8Array(4);
  new DataView(clientFlags.buffer).setUint32(
    0,
    NBD_FLAG_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_NO_ZEROES : 0),
  );
  await wire.write(clientFlags);

  const nameBytes = encoder.encode(exportName);
  const quotedExport = `"${exportName}"`;
  const optionError = (what: string, reply: OptionReply): HandshakeError => {
    const known = REP_ERRORS[reply.type - NBD_REP_FLAG_ERROR];
    const detail = known ? `${known[1]} (${known[0]})` : `error reply ${reply.type}`;
    const message = new TextDecoder().decode(reply.data).trim();
    return new HandshakeError(
      `${what} on ${name}: ${detail}${message ? `: ${message}` : ""}`,
    );
  };

  // Structured replies: needed for block status and sparse reads. Refusal is not an error.
  await sendOption(wire, NBD_OPT_STRUCTURED_REPLY, new Uint8Array(0));
  let reply = await readOptionReply(wire, NBD_OPT_STRUCTURED_REPLY);
  const structured = reply.type === NBD_REP_ACK;
  while (reply.type !== NBD_REP_ACK && !(reply.type & NBD_REP_FLAG_ERROR)) {
    reply = await readOptionReply(wire, NBD_OPT_STRUCTURED_REPLY);
  }

  // Meta contexts for block status (base:allocation first). Refusal means no block status.
  const metaContexts = new Map<string, number>();
  if (structured) {
    const queries = contexts.map((c) => encoder.encode(c));
    const data = new Uint8Array(
      4 + nameBytes.length + 4 + queries.reduce((n, q) => n + 4 + q.length, 0),
    );
    const view = new DataView(data.buffer);
    view.setUint32(0, nameBytes.length);
    data.set(nameBytes, 4);
    view.setUint32(4 + nameBytes.length, queries.length);
    let at = 8 + nameBytes.length;
    for (const q of queries) {
      view.setUint32(at, q.length);
      data.set(q, at + 4);
      at += 4 + q.length;
    }
    await sendOption(wire, NBD_OPT_SET_META_CONTEXT, data);
    while (true) {
      reply = await readOptionReply(wire, NBD_OPT_SET_META_CONTEXT);
      if (reply.type === NBD_REP_ACK || reply.type & NBD_REP_FLAG_ERROR) break;
      if (reply.type === NBD_REP_META_CONTEXT && reply.data.length >= 4) {
        const id = new DataView(reply.data.buffer, reply.data.byteOffset).getUint32(0);
        const granted = new TextDecoder().decode(reply.data.subarray(4));
        if (contexts.includes(granted)) metaContexts.set(granted, id);
      }
    }
  }

  // NBD_OPT_GO, asking for block size constraints.
  const go = new Uint8Array(4 + nameBytes.length + 2 + 2);
  const goView = new DataView(go.buffer);
  goView.setUint32(0, nameBytes.length);
  go.set(nameBytes, 4);
  goView.setUint16(4 + nameBytes.length, 1);
  goView.setUint16(6 + nameBytes.length, NBD_INFO_BLOCK_SIZE);
  await sendOption(wire, NBD_OPT_GO, go);
  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSizes: [number, number, number] | undefined;
  while (true) {
    reply = await readOptionReply(wire, NBD_OPT_GO);
    if (reply.type === NBD_REP_ACK) break;
    if (reply.type === NBD_REP_ERR_UNSUP) {
      // A server older than NBD_OPT_GO: NBD_OPT_EXPORT_NAME has no error reply (an unknown
      // export just closes the connection).
      await sendOption(wire, NBD_OPT_EXPORT_NAME, nameBytes);
      const n = noZeroes ? 10 : 134;
      if (!(await wire.tryFill(n))) {
        throw new HandshakeError(
          `Cannot open NBD export ${quotedExport} on ${name}: the server closed the connection`,
        );
      }
      size = wire.u64(0);
      transmissionFlags = wire.u16(8);
      wire.consume(n);
      break;
    }
    if (reply.type & NBD_REP_FLAG_ERROR) {
      throw optionError(`Cannot open NBD export ${quotedExport}`, reply);
    }
    if (reply.type !== NBD_REP_INFO || reply.data.length < 2) continue;
    const view = new DataView(reply.data.buffer, reply.data.byteOffset, reply.data.length);
    const info = view.getUint16(0);
    if (info === NBD_INFO_EXPORT && reply.data.length >= 12) {
      const hi = view.getUint32(2);
      if (hi >= 0x200000) {
        throw new HandshakeError(
          `Cannot open NBD export ${quotedExport} on ${name}: the export is larger than 2^53 bytes`,
        );
      }
      size = hi * TWO_32 + view.getUint32(6);
      transmissionFlags = view.getUint16(10);
    } else if (info === NBD_INFO_BLOCK_SIZE && reply.data.length >= 14) {
      blockSizes = [view.getUint32(2), view.getUint32(6), view.getUint32(10)];
    }
  }
  if (size === undefined) {
    throw new HandshakeError(
      `Cannot open NBD export ${quotedExport} on ${name}: the server did not send the export size`,
    );
  }
  const [min, preferred, max] = blockSizes ??
    [1, DEFAULT_PREFERRED_BLOCK_SIZE, DEFAULT_MAX_BLOCK_SIZE];
  return {
    size,
    transmissionFlags,
    structured,
    metaContexts: structured ? metaContexts : new Map(),
    minBlockSize: Math.max(1, min),
    preferredBlockSize: Math.max(1, min, preferred),
    maxBlockSize: Math.max(1, min, max),
  };
}

interface OptionReply {
  type: number;
  data: Uint8Array;
}

async function sendOption(wire: Wire, option: number, data: Uint8Array): Promise<void> {
  const out = new Uint8Array(16 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, IHAVEOPT_HI);
  view.setUint32(4, IHAVEOPT_LO);
  view.setUint32(8, option);
  view.setUint32(12, data.length);
  out.set(data, 16);
  await wire.write(out);
}

async function readOptionReply(wire: Wire, option: number): Promise<OptionReply> {
  await wire.fill(20);
  if (wire.u32(0) !== REPLY_MAGIC_HI || wire.u32(4) !== REPLY_MAGIC_LO) {
    throw new ConnectionError("protocol error: bad option reply magic");
  }
  if (wire.u32(8) !== option) {
    throw new ConnectionError("protocol error: reply to another option");
  }
  const type = wire.u32(12);
  const length = wire.u32(16);
  wire.consume(20);
  if (length > MAX_META_PAYLOAD) throw new ConnectionError("protocol error: option reply too long");
  return { type, data: await wire.take(length) };
}

/**
 * Parses an NBD URI (the subset vmshift uses: no TLS).
 *
 * @param uri `nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST[:PORT]/EXPORT` or `nbd+tcp://...`.
 * @returns Socket or host and port, and the export name.
 * @throws {TypeError} When the URI is not a supported NBD URI.
 *
 * @example
 * ```ts
 * import { parseNbdUri } from "./client.ts";
 * const u = parseNbdUri("nbd+unix:///sda?socket=/tmp/vmshift-1/in.sock");
 * if (u.socket !== "/tmp/vmshift-1/in.sock" || u.exportName !== "sda") throw new Error("bad");
 * ```
 */
export function parseNbdUri(uri: string): NbdUri {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new TypeError(`Invalid NBD URI "${uri}": not a URI`);
  }
  const path = url.pathname;
  let exportName: string;
  try {
    exportName = decodeURIComponent(path.startsWith("/") ? path.slice(1) : path);
  } catch {
    throw new TypeError(`Invalid NBD URI "${uri}": bad percent-encoding in the export name`);
  }
  const params = new Map<string, string>();
  for (const part of url.search.slice(1).split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    try {
      params.set(decodeURIComponent(key), decodeURIComponent(value));
    } catch {
      throw new TypeError(`Invalid NBD URI "${uri}": bad percent-encoding in the query`);
    }
  }
  switch (url.protocol) {
    case "nbd+unix:": {
      if (url.host) {
        throw new TypeError(`Invalid NBD URI "${uri}": a unix socket URI has no host`);
      }
      const socket = params.get("socket");
      if (!socket) {
        throw new TypeError(`Invalid NBD URI "${uri}": missing "socket" parameter`);
      }
      return { socket, exportName };
    }
    case "nbd:":
    case "nbd+tcp:": {
      let host = url.hostname;
      if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
      if (!host) throw new TypeError(`Invalid NBD URI "${uri}": missing host`);
      const port = url.port ? Number(url.port) : DEFAULT_PORT;
      return { host, port, exportName };
    }
    case "nbds:":
    case "nbds+unix:":
    case "nbds+tcp:":
      throw new TypeError(`Invalid NBD URI "${uri}": TLS is not supported`);
    default:
      throw new TypeError(`Invalid NBD URI "${uri}": unsupported scheme "${url.protocol}"`);
  }
}
