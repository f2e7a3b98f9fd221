/**
 * The imageio test daemon (and proxy): the images API of openapi/imageio.yaml over HTTPS, strict
 * the way the real daemon is (shared/OVIRT-FACTS.md), storing data through NBD to the qemu-nbd
 * that the engine starts for each transfer.
 *
 * - One HTTP/1.1 server of our own over `Deno.listenTls` (see `_http.ts`): keep-alive, one
 *   request at a time per connection, `Content-Length` required on bodies (chunked is 400), a
 *   connection idle for its ticket's inactivity timeout is closed.
 * - Each HTTP connection opens its own NBD connection to the ticket's qemu-nbd on its first
 *   request, as the real daemon opens one backend per connection.
 * - Flush is per connection, modelled by `_undo.ts`: a connection's writes are lost (undone)
 *   unless that connection flushes them before it fails, closes, or its ticket goes away.
 * - The proxy is a second listener on another port with the same tickets.
 * - With `unixSocket`, the daemon also listens on a local unix socket in plain HTTP and names it
 *   in OPTIONS (`unix_socket`, as the real daemon does with `\0/org/ovirt/imageio`), for
 *   clients on the same host.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { NBD_STATE_HOLE, NBD_STATE_ZERO, NbdClient } from "../../src/nbd/client.ts";
import { BadRequest, HttpConnection, isDisconnect, type RequestHead } from "./_http.ts";
import { UndoLog } from "./_undo.ts";

/** Faults the daemon injects (see `Faults` in mod.ts). */
export interface DaemonFaults {
  dropConnectionAfterBytes?: number;
  fail500Once?: boolean;
  slowMs?: number;
  advertiseUnixSocket?: string;
}

/** What the engine puts in a ticket. */
export interface TicketSpec {
  /** The ticket id (a UUID): the last element of transfer_url. */
  id: string;
  /** Image size in bytes (the guest's view). */
  size: number;
  /** Upload ticket (ops write and read); false for download (read). */
  writable: boolean;
  /** The disk is sparse: zeroing may punch holes. */
  sparse: boolean;
  /** The qemu-nbd serving the disk. */
  nbdUri: string;
  /** Inactivity timeout in seconds. */
  timeoutSec: number;
}

/** A ticket the daemon knows. */
export interface Ticket extends TicketSpec {
  /** Last time a request on it started or ended (epoch ms). */
  lastActivity: number;
  /** Requests running now. */
  inflight: number;
  /** Body bytes received by PUT. */
  transferred: number;
  /** Removal has begun: new requests get 403. */
  removed: boolean;
  connections: Set<DaemonConnection>;
  closing: Set<Promise<void>>;
}

/** Counters for tests. */
export interface DaemonStats {
  putBytes: number;
  putRequests: number;
  zeroRequests: number;
  zeroBytes: number;
  flushRequests: number;
  connections: number;
  /** Of those, connections over the local unix socket. */
  unixConnections: number;
  maxConcurrentConnections: number;
  droppedBytes: number;
  implicitFlushes: number;
}

/** Options of {@linkcode Imageio.start}. */
export interface ImageioOptions {
  certFile: string;
  keyFile: string;
  /** Scratch directory (undo logs). */
  dir: string;
  /** `max_writers` in OPTIONS. */
  maxWriters: number;
  /** Idle timeout of a connection that has not named a ticket yet, in seconds. */
  defaultIdleSec: number;
  /** The faults object, read on every request (tests change it at any time). */
  faults: () => DaemonFaults;
  /**
   * Also listen on this unix socket (a path, or an abstract name starting with NUL) and
   * name it in the daemon's OPTIONS answers.
   */
  unixSocket?: string;
}

const VERSION = "2.5.3";
const CHUNK = 4 * 1024 * 1024;
const MAX_ZERO = 1024 * 1024 * 1024;
const MAX_JSON = 64 * 1024;
const FEATURES_RW = ["checksum", "extents", "flush", "zero"];
const FEATURES_RO = ["checksum", "extents"];
const ALGORITHMS = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];
const DEFAULT_ALGORITHM = "sha1";
const REMOVE_WAIT_MS = 10_000;

/** An error answer: status, text, extra headers, and whether the connection must close. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
    readonly close = false,
  ) {
    super(message);
  }
}

/**
 * A PUT's writes to qemu-nbd, at most one in flight besides the chunk being read: adding a write
 * first waits for the one before it, whose buffer is about to be filled again.
 */
class Writes {
  #last: Promise<void> | undefined;
  readonly #nbd: NbdClient;

  constructor(nbd: NbdClient) {
    this.#nbd = nbd;
  }

  /** Waits for the write before, then starts this one (not waited for). */
  async add(offset: number, data: Uint8Array): Promise<void> {
    await this.settle();
    const write = this.#nbd.write(offset, data);
    write.catch(() => {}); // Reported by the next settle().
    this.#last = write;
  }

  /** Waits for the write in flight; throws its error. */
  async settle(): Promise<void> {
    const last = this.#last;
    this.#last = undefined;
    await last;
  }
}

/** One client connection and the backend (NBD connection, undo log) it opened. */
export class DaemonConnection {
  readonly id: number;
  readonly http: HttpConnection;
  readonly proxy: boolean;
  ticket: Ticket | undefined;
  nbd: NbdClient | undefined;
  undo: UndoLog | undefined;
  /** Inactivity timeout of the last ticket used, in seconds. */
  idleSec: number;
  readonly #daemon: Imageio;
  #buffers: [Uint8Array, Uint8Array] | undefined;

  constructor(id: number, http: HttpConnection, proxy: boolean, daemon: Imageio, idle: number) {
    this.id = id;
    this.http = http;
    this.proxy = proxy;
    this.#daemon = daemon;
    this.idleSec = idle;
  }

  /** The NBD connection for `ticket`, opened on first use. */
  async backend(ticket: Ticket): Promise<NbdClient> {
    if (this.ticket === ticket && this.nbd) return this.nbd;
    await this.release();
    const nbd = await NbdClient.connect(ticket.nbdUri, { name: `ticket ${ticket.id}` });
    this.nbd = nbd;
    this.undo = new UndoLog(join(this.#daemon.dir, `undo-${this.id}`));
    this.ticket = ticket;
    ticket.connections.add(this);
    return nbd;
  }

  /** Two body buffers of {@linkcode CHUNK} bytes, made on first use and kept. */
  buffers(): [Uint8Array, Uint8Array] {
    return this.#buffers ??= [new Uint8Array(CHUNK), new Uint8Array(CHUNK)];
  }

  /** Undoes this connection's unflushed writes (they are lost). */
  async dropUnflushed(): Promise<void> {
    if (!this.nbd || !this.undo || !this.ticket) return;
    // Awaited first: `x += await y` would read x before the wait and lose concurrent updates.
    const undone = await this.undo.restore(this.nbd, !this.ticket.sparse);
    this.#daemon.counters.droppedBytes += undone;
  }

  /** Loses the unflushed writes and closes the backend. Idempotent. */
  async release(): Promise<void> {
    const ticket = this.ticket;
    if (!ticket) return;
    const nbd = this.nbd!;
    const undo = this.undo!;
    this.ticket = this.nbd = this.undo = undefined;
    ticket.connections.delete(this);
    const done = (async () => {
      try {
        const undone = await undo.restore(nbd, !ticket.sparse);
        this.#daemon.counters.droppedBytes += undone;
      } catch {
        // The image server is gone: nothing left to undo into.
      }
      await undo[Symbol.asyncDispose]();
      await nbd.close();
    })();
    ticket.closing.add(done);
    try {
      await done;
    } finally {
      ticket.closing.delete(done);
    }
  }
}

/** The daemon and its proxy. */
export class Imageio implements AsyncDisposable {
  /** Port of the daemon (transfer_url). */
  readonly daemonPort: number;
  /** Port of the proxy (proxy_url). */
  readonly proxyPort: number;
  /** Scratch directory. */
  readonly dir: string;
  /** Counters. */
  readonly counters: DaemonStats = {
    putBytes: 0,
    putRequests: 0,
    zeroRequests: 0,
    zeroBytes: 0,
    flushRequests: 0,
    connections: 0,
    unixConnections: 0,
    maxConcurrentConnections: 0,
    droppedBytes: 0,
    implicitFlushes: 0,
  };
  readonly #options: ImageioOptions;
  readonly #listeners: Deno.Listener[];
  readonly #tickets = new Map<string, Ticket>();
  readonly #connections = new Set<DaemonConnection>();
  readonly #tasks = new Set<Promise<void>>();
  #nextConnection = 1;
  #live = 0;
  #dropArmed: number | undefined;
  #dropSeen = 0;
  #closed = false;

  /** The local socket, when the daemon has one. */
  readonly unixSocket: string | undefined;

  private constructor(options: ImageioOptions, listeners: Deno.Listener[]) {
    this.#options = options;
    this.#listeners = listeners;
    this.dir = options.dir;
    this.daemonPort = (listeners[0]!.addr as Deno.NetAddr).port;
    this.proxyPort = (listeners[1]!.addr as Deno.NetAddr).port;
    this.unixSocket = options.unixSocket;
  }

  /**
   * Starts the daemon and the proxy on 127.0.0.1, each on a free port (and the daemon on its
   * unix socket, when asked).
   *
   * @param options Certificate, scratch directory, limits, faults.
   * @returns The running daemon; dispose it to stop it.
   */
  static async start(options: ImageioOptions): Promise<Imageio> {
    const cert = await Deno.readTextFile(options.certFile);
    const key = await Deno.readTextFile(options.keyFile);
    const listen = () => Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key });
    const listeners: Deno.Listener[] = [listen(), listen()];
    if (options.unixSocket !== undefined) {
      try {
        listeners.push(Deno.listen({ transport: "unix", path: options.unixSocket }));
      } catch (e) {
        for (const l of listeners) l.close();
        throw e;
      }
    }
    const daemon = new Imageio(options, listeners);
    daemon.#accept(listeners[0]!, false);
    daemon.#accept(listeners[1]!, true);
    if (listeners[2]) daemon.#accept(listeners[2], false);
    return daemon;
  }

  /**
   * Registers a ticket (what the engine does through the daemon's control socket).
   *
   * @param spec The ticket.
   */
  addTicket(spec: TicketSpec): void {
    this.#tickets.set(spec.id, {
      ...spec,
      lastActivity: Date.now(),
      inflight: 0,
      transferred: 0,
      removed: false,
      connections: new Set(),
      closing: new Set(),
    });
  }

  /**
   * A ticket, while it exists.
   *
   * @param id The ticket id.
   * @returns The ticket, or undefined.
   */
  ticket(id: string): Ticket | undefined {
    return this.#tickets.get(id);
  }

  /**
   * Removes a ticket: new requests get 403; waits for running requests, then loses the
   * unflushed writes of every connection that used it and closes their backends.
   *
   * @param id The ticket id.
   */
  async removeTicket(id: string): Promise<void> {
    const ticket = this.#tickets.get(id);
    if (!ticket || ticket.removed) return;
    ticket.removed = true;
    const deadline = Date.now() + REMOVE_WAIT_MS;
    while (ticket.inflight > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    if (ticket.inflight > 0) {
      // A client stalled in the middle of a request: cut it off, as the daemon would.
      for (const c of ticket.connections) c.http.close();
      while (ticket.inflight > 0) await new Promise((r) => setTimeout(r, 10));
    }
    await Promise.all([...ticket.connections].map((c) => c.release()));
    await Promise.all([...ticket.closing]);
    this.#tickets.delete(id);
  }

  /** Stops both listeners, closes every connection, releases every backend. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const l of this.#listeners) {
      try {
        l.close();
      } catch {
        // Already closed.
      }
    }
    if (this.unixSocket && !this.unixSocket.startsWith("\0")) {
      await Deno.remove(this.unixSocket).catch(() => {});
    }
    for (const c of this.#connections) c.http.close();
    while (this.#tasks.size) await Promise.allSettled([...this.#tasks]);
    for (const id of [...this.#tickets.keys()]) await this.removeTicket(id);
  }

  #track(p: Promise<void>): void {
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p));
  }

  #accept(listener: Deno.Listener, proxy: boolean): void {
    this.#track((async () => {
      while (true) {
        let conn: Deno.Conn;
        try {
          conn = await listener.accept();
        } catch {
          return; // Listener closed.
        }
        if (this.#closed) {
          conn.close();
          return;
        }
        this.#track(this.#serve(conn, proxy));
      }
    })());
  }

  async #serve(conn: Deno.Conn, proxy: boolean): Promise<void> {
    const http = new HttpConnection(conn);
    const c = new DaemonConnection(
      this.#nextConnection++,
      http,
      proxy,
      this,
      this.#options.defaultIdleSec,
    );
    this.#connections.add(c);
    this.counters.connections++;
    if (conn.localAddr.transport === "unix") this.counters.unixConnections++;
    this.#live++;
    this.counters.maxConcurrentConnections = Math.max(
      this.counters.maxConcurrentConnections,
      this.#live,
    );
    try {
      while (!http.closed) {
        let head: RequestHead | null;
        try {
          head = await http.readHead(c.idleSec * 1000);
        } catch (e) {
          if (e instanceof BadRequest) {
            await this.#send(c, 400, { "Content-Type": "text/plain", ...CLOSE }, `${e.message}\n`)
              .catch(() => {});
            await http.lingeringClose();
          }
          break;
        }
        if (!head) break;
        const keepAlive = await this.#handle(c, head);
        const connection = head.headers.get("connection")?.toLowerCase() ?? "";
        if (!keepAlive || connection === "close" || head.version === "HTTP/1.0") break;
      }
    } catch (e) {
      if (!isDisconnect(e)) console.error(`imageio test server: connection ${c.id}: ${e}`);
    } finally {
      http.close();
      await c.release();
      this.#connections.delete(c);
      this.#live--;
    }
  }

  /** Handles one request; returns whether the connection stays open. */
  async #handle(c: DaemonConnection, head: RequestHead): Promise<boolean> {
    const length = head.headers.has("content-length")
      ? Number(head.headers.get("content-length"))
      : 0;
    let ticket: Ticket | undefined;
    const state: RequestState = {
      bodyRead: length === 0 && !head.headers.has("transfer-encoding"),
      answered: false,
    };
    try {
      if (
        (head.method === "GET" || head.method === "OPTIONS") && !state.bodyRead &&
        !head.headers.has("transfer-encoding")
      ) {
        // A body where none is expected: skip it, so the next request parses.
        if (!(await c.http.discardBody(length))) return false;
        state.bodyRead = true;
      }
      const url = new URL(head.target, "https://localhost");
      const path = url.pathname;
      if (path === "/info/") {
        if (head.method !== "GET") throw notAllowed("GET");
        await this.#send(c, 200, JSON_TYPE, JSON.stringify({ version: VERSION }));
        return true;
      }
      if (path === "/images/*") {
        if (head.method !== "OPTIONS") throw notAllowed("OPTIONS");
        await this.#send(
          c,
          200,
          { ...JSON_TYPE, "Allow": "OPTIONS,GET,PUT,PATCH" },
          JSON.stringify({ features: FEATURES_RW }),
        );
        return true;
      }
      const m = path.match(/^\/images\/([^/]+)(\/extents|\/checksum|\/checksum\/algorithms)?$/);
      if (!m) throw new HttpError(404, `No handler for ${JSON.stringify(path)}`);
      const id = decodeURIComponent(m[1]!);
      const sub = m[2] ?? "";
      const allowed = sub ? "GET" : "OPTIONS,GET,PUT,PATCH";
      if (!allowed.split(",").includes(head.method)) throw notAllowed(allowed);
      if (head.method === "PATCH" || head.method === "PUT") checkBodyHeaders(head);
      ticket = this.#tickets.get(id);
      if (!ticket || ticket.removed) {
        ticket = undefined;
        throw new HttpError(
          403,
          `You are not allowed to access this resource: No such ticket ${id}`,
        );
      }
      ticket.inflight++;
      ticket.lastActivity = Date.now();
      c.idleSec = ticket.timeoutSec;
      if (sub === "/extents") await this.#extents(c, ticket, url);
      else if (sub === "/checksum") await this.#checksum(c, ticket, url);
      else if (sub === "/checksum/algorithms") {
        await this.#send(c, 200, JSON_TYPE, JSON.stringify({ algorithms: ALGORITHMS }));
      } else if (head.method === "OPTIONS") await this.#imageOptions(c, ticket);
      else if (head.method === "GET") await this.#get(c, ticket, head, state);
      else if (head.method === "PUT") return await this.#put(c, ticket, head, url, state);
      else return await this.#patch(c, ticket, head, state);
      return true;
    } catch (e) {
      if (c.http.closed) return false;
      if (state.answered) {
        // Failed in the middle of a body: the only way to tell the client is to hang up.
        c.http.close();
        return false;
      }
      const err = e instanceof HttpError
        ? e
        : e instanceof RangeError || e instanceof TypeError
        ? new HttpError(400, e.message)
        : new HttpError(500, `Internal error: ${e instanceof Error ? e.message : e}`);
      const close = err.close || !state.bodyRead;
      try {
        await this.#send(
          c,
          err.status,
          { "Content-Type": "text/plain", ...err.headers, ...(close ? CLOSE : {}) },
          `${err.message}\n`,
        );
      } catch {
        return false;
      }
      if (close) await c.http.lingeringClose();
      return !close;
    } finally {
      if (ticket) {
        ticket.inflight--;
        ticket.lastActivity = Date.now();
      }
    }
  }

  async #send(
    c: DaemonConnection,
    status: number,
    headers: Record<string, string>,
    body?: Uint8Array | string,
    contentLength?: number,
  ): Promise<void> {
    const slow = this.#options.faults().slowMs;
    if (slow) await new Promise((r) => setTimeout(r, slow));
    await c.http.respond(status, headers, body, contentLength);
  }

  /** The socket named in OPTIONS: the daemon's own, or the one a fault says. */
  #advertised(c: DaemonConnection): string | undefined {
    if (c.proxy) return undefined;
    return this.#options.faults().advertiseUnixSocket ?? this.unixSocket;
  }

  async #imageOptions(c: DaemonConnection, ticket: Ticket): Promise<void> {
    await this.#send(
      c,
      200,
      { ...JSON_TYPE, "Allow": ticket.writable ? "OPTIONS,GET,PUT,PATCH" : "OPTIONS,GET" },
      JSON.stringify({
        features: ticket.writable ? FEATURES_RW : FEATURES_RO,
        max_readers: 8,
        max_writers: this.#options.maxWriters,
        ...(this.#advertised(c) !== undefined ? { unix_socket: this.#advertised(c) } : {}),
      }),
    );
  }

  async #put(
    c: DaemonConnection,
    ticket: Ticket,
    head: RequestHead,
    url: URL,
    state: RequestState,
  ): Promise<boolean> {
    const length = contentLength(head);
    const flushParam = url.searchParams.get("flush") ?? "y";
    if (flushParam !== "y" && flushParam !== "n") {
      throw new HttpError(400, `Invalid flush value: ${JSON.stringify(flushParam)}`);
    }
    const start = parseContentRange(head.headers.get("content-range"));
    checkWrite(ticket);
    if (start + length > ticket.size) throw outOfRange(ticket);
    await continue100(c, head);
    this.counters.putRequests++;
    const faults = this.#options.faults();
    const nbd = await c.backend(ticket);
    if (faults.fail500Once) {
      faults.fail500Once = false;
      if (!(await c.http.discardBody(length))) return false;
      state.bodyRead = true;
      await c.dropUnflushed();
      throw new HttpError(
        500,
        "Server error: the writes on this connection since its last flush were lost",
      );
    }
    await c.undo!.save(nbd, start, length);
    // Two buffers: one fills from the socket while the other is written to qemu-nbd, so a
    // connection keeps reading while its last chunk is being stored (the real daemon's threads
    // overlap the same way across connections; here all of them share one JS thread).
    const bufs = c.buffers();
    const writing = new Writes(nbd);
    let buf = bufs[0];
    let filled = 0;
    let pos = start;
    let remaining = length;
    try {
      while (remaining > 0) {
        const n = await c.http.readSome(
          buf.subarray(filled, Math.min(buf.length, filled + remaining)),
        );
        if (n === 0) {
          if (filled) await writing.add(pos, buf.subarray(0, filled));
          return false; // The client went away in the middle of the body.
        }
        this.counters.putBytes += n;
        ticket.transferred += n;
        filled += n;
        remaining -= n;
        if (this.#shouldDrop(faults, n)) {
          await writing.add(pos, buf.subarray(0, filled));
          await writing.settle(); // Landed before the client sees the connection close.
          c.http.close();
          return false;
        }
        if (filled === buf.length || remaining === 0) {
          await writing.add(pos, buf.subarray(0, filled));
          buf = buf === bufs[0] ? bufs[1] : bufs[0];
          pos += filled;
          filled = 0;
        }
      }
      await writing.settle();
    } finally {
      // On the early returns too: the write in flight lands before the connection is released.
      await writing.settle().catch(() => {});
    }
    state.bodyRead = true;
    if (flushParam === "y") {
      await nbd.flush();
      await c.undo!.forget();
      this.counters.implicitFlushes++;
    }
    await this.#send(c, 200, {});
    return true;
  }

  /** Counts PUT body bytes against `dropConnectionAfterBytes`; true when it fires. */
  #shouldDrop(faults: DaemonFaults, n: number): boolean {
    const limit = faults.dropConnectionAfterBytes;
    if (limit === undefined) {
      this.#dropArmed = undefined;
      return false;
    }
    if (this.#dropArmed !== limit) {
      this.#dropArmed = limit;
      this.#dropSeen = 0;
    }
    this.#dropSeen += n;
    if (this.#dropSeen < limit) return false;
    delete faults.dropConnectionAfterBytes;
    this.#dropArmed = undefined;
    this.#dropSeen = 0;
    return true;
  }

  async #patch(
    c: DaemonConnection,
    ticket: Ticket,
    head: RequestHead,
    state: RequestState,
  ): Promise<boolean> {
    const length = contentLength(head);
    if (length > MAX_JSON) {
      throw new HttpError(413, `Request body too large: ${length} bytes`, {}, true);
    }
    await continue100(c, head);
    const body = await c.http.readBody(length);
    if (!body) return false;
    state.bodyRead = true;
    let msg: unknown;
    try {
      msg = JSON.parse(new TextDecoder().decode(body));
    } catch (e) {
      throw new HttpError(400, `Invalid JSON message: ${(e as Error).message}`);
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
      throw new HttpError(400, "Invalid JSON message: not an object");
    }
    const op = (msg as Record<string, unknown>)["op"];
    if (op === "zero") {
      const m = msg as Record<string, unknown>;
      const size = m["size"];
      const offset = m["offset"] ?? 0;
      const flush = m["flush"] ?? false;
      if (!Number.isSafeInteger(size) || (size as number) < 0) {
        throw new HttpError(400, `Invalid size: ${JSON.stringify(size)}`);
      }
      if (!Number.isSafeInteger(offset) || (offset as number) < 0) {
        throw new HttpError(400, `Invalid offset: ${JSON.stringify(offset)}`);
      }
      if (typeof flush !== "boolean") {
        throw new HttpError(400, `Invalid flush: ${JSON.stringify(flush)}`);
      }
      checkWrite(ticket);
      const o = offset as number;
      const s = size as number;
      if (o + s > ticket.size) throw outOfRange(ticket);
      const nbd = await c.backend(ticket);
      await c.undo!.save(nbd, o, s);
      for (let at = o; at < o + s; at += MAX_ZERO) {
        await nbd.writeZeroes(at, Math.min(MAX_ZERO, o + s - at), { noHole: !ticket.sparse });
      }
      this.counters.zeroRequests++;
      this.counters.zeroBytes += s;
      if (flush) {
        await nbd.flush();
        await c.undo!.forget();
        this.counters.implicitFlushes++;
      }
    } else if (op === "flush") {
      checkWrite(ticket);
      const nbd = await c.backend(ticket);
      await nbd.flush();
      await c.undo!.forget();
      this.counters.flushRequests++;
    } else {
      throw new HttpError(400, `Unsupported operation: ${JSON.stringify(op)}`);
    }
    await this.#send(c, 200, {});
    return true;
  }

  async #get(
    c: DaemonConnection,
    ticket: Ticket,
    head: RequestHead,
    state: RequestState,
  ): Promise<void> {
    const size = ticket.size;
    const range = head.headers.get("range");
    let start = 0;
    let end = size - 1;
    if (range !== undefined) {
      const m = range.match(/^bytes=(\d*)-(\d*)$/);
      if (range.includes(",")) {
        throw new HttpError(416, "Multiple ranges are not supported", {
          "Content-Range": `bytes */${size}`,
        });
      }
      if (!m || (m[1] === "" && m[2] === "")) {
        throw new HttpError(400, `Invalid Range header: ${JSON.stringify(range)}`);
      }
      if (m[1] === "") {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        end = m[2] === "" ? size - 1 : Number(m[2]);
      }
      if (start >= size || end >= size || end < start) throw outOfRange(ticket);
    }
    const nbd = await c.backend(ticket);
    const length = end - start + 1;
    const headers: Record<string, string> = { "Content-Type": "application/octet-stream" };
    if (range !== undefined) headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
    await this.#send(c, range !== undefined ? 206 : 200, headers, undefined, length);
    state.answered = true;
    for (let at = start; at <= end; at += CHUNK) {
      await c.http.write(await nbd.read(at, Math.min(CHUNK, end + 1 - at)));
    }
  }

  async #extents(c: DaemonConnection, ticket: Ticket, url: URL): Promise<void> {
    const context = url.searchParams.get("context") ?? "zero";
    if (context === "dirty") {
      throw new HttpError(404, `Ticket ${ticket.id} does not support dirty extents`);
    }
    if (context !== "zero") {
      throw new HttpError(400, `Invalid context: ${JSON.stringify(context)}`);
    }
    const nbd = await c.backend(ticket);
    const out = await zeroExtents(nbd, ticket.size);
    await this.#send(c, 200, JSON_TYPE, JSON.stringify(out));
  }

  async #checksum(c: DaemonConnection, ticket: Ticket, url: URL): Promise<void> {
    const algorithm = url.searchParams.get("algorithm") ?? DEFAULT_ALGORITHM;
    if (!ALGORITHMS.includes(algorithm)) {
      throw new HttpError(400, `Unsupported algorithm: ${JSON.stringify(algorithm)}`);
    }
    const bsParam = url.searchParams.get("block_size");
    const blockSize = bsParam === null ? CHUNK : Number(bsParam);
    if (
      !Number.isSafeInteger(blockSize) || blockSize < 4096 || blockSize > CHUNK ||
      blockSize % 4096
    ) {
      throw new HttpError(400, `Invalid block_size: ${JSON.stringify(bsParam)}`);
    }
    const nbd = await c.backend(ticket);
    const extents = await zeroExtents(nbd, ticket.size);
    const outer = createHash(algorithm);
    const zeroDigest = createHash(algorithm).update(new Uint8Array(blockSize)).digest();
    let e = 0;
    for (let at = 0; at < ticket.size; at += blockSize) {
      const n = Math.min(blockSize, ticket.size - at);
      while (extents[e]!.start + extents[e]!.length <= at) e++;
      let zero = true;
      for (let k = e; k < extents.length && extents[k]!.start < at + n; k++) {
        if (!extents[k]!.zero) zero = false;
      }
      if (zero && n === blockSize) outer.update(zeroDigest);
      else if (zero) outer.update(createHash(algorithm).update(new Uint8Array(n)).digest());
      else outer.update(createHash(algorithm).update(await nbd.read(at, n)).digest());
    }
    await this.#send(
      c,
      200,
      JSON_TYPE,
      JSON.stringify({ algorithm, block_size: blockSize, checksum: outer.digest("hex") }),
    );
  }
}

/** Where a request is: its body read, its answer (head) sent. */
interface RequestState {
  bodyRead: boolean;
  answered: boolean;
}

const JSON_TYPE = { "Content-Type": "application/json" };
const CLOSE = { "Connection": "close" };

interface ExtentJson {
  start: number;
  length: number;
  zero: boolean;
  hole: boolean;
}

async function zeroExtents(nbd: NbdClient, size: number): Promise<ExtentJson[]> {
  const out: ExtentJson[] = [];
  let pos = 0;
  while (pos < size) {
    for (const ext of await nbd.blockStatus(pos, size - pos)) {
      const length = Math.min(ext.length, size - pos);
      if (length <= 0) break;
      const zero = (ext.flags & NBD_STATE_ZERO) !== 0;
      const hole = (ext.flags & NBD_STATE_HOLE) !== 0;
      const last = out[out.length - 1];
      if (last && last.zero === zero && last.hole === hole) last.length += length;
      else out.push({ start: pos, length, zero, hole });
      pos += length;
    }
  }
  return out;
}

function notAllowed(allow: string): HttpError {
  return new HttpError(405, "Method not allowed", { "Allow": allow });
}

function outOfRange(ticket: Ticket): HttpError {
  return new HttpError(
    416,
    `Requested range not satisfiable: the image has ${ticket.size} bytes`,
    { "Content-Range": `bytes */${ticket.size}` },
  );
}

function checkWrite(ticket: Ticket): void {
  if (!ticket.writable) {
    throw new HttpError(
      403,
      `You are not allowed to access this resource: Ticket ${ticket.id} forbids write`,
    );
  }
}

/** Bodies need a Content-Length; chunked transfer encoding is refused. */
function checkBodyHeaders(head: RequestHead): void {
  if (head.headers.has("transfer-encoding")) {
    throw new HttpError(
      400,
      `Unsupported Transfer-Encoding: ${head.headers.get("transfer-encoding")}: ` +
        "send Content-Length",
      {},
      true,
    );
  }
  contentLength(head);
}

function contentLength(head: RequestHead): number {
  const value = head.headers.get("content-length");
  if (value === undefined) {
    throw new HttpError(400, "Content-Length header is required", {}, true);
  }
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new HttpError(400, `Invalid Content-Length: ${JSON.stringify(value)}`, {}, true);
  }
  return Number(value);
}

/** START of `bytes START-END/*` (or `/TOTAL`); 0 without the header. */
function parseContentRange(value: string | undefined): number {
  if (value === undefined) return 0;
  const m = value.match(/^bytes (\d+)-(\d+)\/(\d+|\*)$/);
  if (!m || Number(m[2]) < Number(m[1])) {
    throw new HttpError(400, `Invalid Content-Range header: ${JSON.stringify(value)}`, {}, true);
  }
  return Number(m[1]);
}

async function continue100(c: DaemonConnection, head: RequestHead): Promise<void> {
  if (head.headers.get("expect")?.toLowerCase() === "100-continue") {
    await c.http.respond(100, {});
  }
}
