/**
 * The imageio uploader: a {@linkcode CopyTarget} that writes one disk through an imageio
 * transfer URL (the daemon's `transfer_url` or the proxy's `proxy_url`).
 *
 * - `OPTIONS` first: `zero`, `flush` and `max_writers` are used only when offered (a very old
 *   server answers 405 or 204: then data is all it gets, and every PUT flushes).
 * - `min(max_writers, 4)` connections; each {@linkcode TargetWriter} owns one keep-alive HTTPS
 *   connection ({@linkcode Http1Connection}), because imageio's flush is per connection.
 * - When `OPTIONS` names the daemon's `unix_socket` and the daemon turns out to be on this host
 *   (the socket answers `OPTIONS` for the same ticket: tickets are secret, so only the daemon
 *   holding the transfer knows it), the data goes over that socket in plain HTTP, as virt-v2v
 *   does on an oVirt host: the same requests without TLS, which on a shared host costs as much
 *   CPU as the rest of the upload. Anything else (no socket, another host's daemon, an error)
 *   keeps HTTPS.
 * - Data: `PUT /images/TICKET?flush=n` with `Content-Range: bytes START-END/*` and
 *   `Content-Length`. Zeroes: `PATCH {"op":"zero",...,"flush":false}`, never bytes. At the end
 *   the copy engine flushes every connection: `PATCH {"op":"flush"}`.
 * - A connection that is lost, or a 500 (imageio lost what it held since the last flush), is
 *   retried: the writer reconnects, resends everything written on that connection since its
 *   last flush, then the request. Only the (offset, length) of those writes is kept, never the
 *   data: it is read again through the {@linkcode SourceReader} given to `connect`. A flush
 *   every {@linkcode ImageioOptions.flushEvery} bytes per connection bounds what a resend costs.
 * - 403 (no such ticket, expired) fails at once: retrying cannot help.
 * - A connection left idle for half the ticket's inactivity timeout gets a cheap keep-alive
 *   (`PATCH flush`), and so does the ticket while no writer is connected (before the copy of
 *   this disk starts, while other disks are copied), so that neither imageio nor the engine
 *   gives up on a transfer that is merely waiting its turn.
 *
 * The ticket in the URL is a credential: messages name the server, never the ticket.
 *
 * @module
 */

import type { CopyTarget, SourceReader, TargetWriter } from "../copy.ts";
import {
  ConnectionLostError,
  Http1Connection,
  type Http1Options,
  type Http1Response,
} from "./_http1.ts";

const MiB = 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Options for {@linkcode openImageio}. */
export interface ImageioOptions {
  /** Names the disk in messages, e.g. `disk 1`. */
  name: string;
  /** PEM certificates to trust instead of the system's roots. */
  caCerts?: string[];
  /**
   * True when ranges never written read as zeroes and need no zero request: only a new sparse
   * disk on file storage. Block storage and preallocated disks must get their zeroes.
   */
  readsZeroes: boolean;
  /**
   * Connections at most (the server's `max_writers` may lower it).
   * @default 4
   */
  maxConnections?: number;
  /**
   * The ticket's inactivity timeout in seconds: keep-alives go out at half of it.
   * @default 60
   */
  inactivityTimeout?: number;
  /**
   * Bytes written on a connection after which it is flushed, bounding what a lost connection
   * makes the writer resend.
   * @default 256 MiB
   */
  flushEvery?: number;
  /**
   * Retries of one request after a lost connection or a 500.
   * @default 5
   */
  retries?: number;
  /**
   * Milliseconds before the first retry; doubled for each next one, up to 8 s.
   * @default 250
   */
  retryDelay?: number;
  /**
   * Largest request body in bytes (the copy engine's request size fits in one).
   * @default 8 MiB
   */
  maxRequestSize?: number;
  /** Aborts the setup and every request. */
  signal?: AbortSignal;
  /** Debug messages. */
  debug?: (message: string) => void;
}

/** What the server offers, from `OPTIONS`. */
export interface ImageioFeatures {
  /** `PATCH {"op":"zero"}`. */
  zero: boolean;
  /** `PATCH {"op":"flush"}` (and `PUT ?flush=n`). */
  flush: boolean;
  /** `GET .../extents`. */
  extents: boolean;
  /** Writers the server accepts at once. */
  maxWriters: number;
  /** The daemon's local socket (`unix_socket`), when it offers one. */
  unixSocket?: string;
}

/** An HTTP answer that is an error. */
export class ImageioError extends Error {
  /** The HTTP status. */
  readonly status: number;

  /**
   * @param message What failed.
   * @param status The HTTP status.
   */
  constructor(message: string, status: number) {
    super(message);
    this.name = "ImageioError";
    this.status = status;
  }
}

/**
 * Asks an imageio transfer URL what it offers and returns it as a copy target.
 *
 * @param url The transfer URL (`https://HOST:PORT/images/TICKET`).
 * @param options Name, certificates, zero policy, limits.
 * @returns The target; dispose it to close its spare connection and stop its keep-alives.
 * @throws {Error} When the server cannot be reached, is not trusted, or refuses the ticket.
 *
 * @example
 * ```ts ignore
 * import { openImageio } from "./imageio.ts";
 * await using target = await openImageio(transfer.transferUrl, {
 *   name: "disk 1",
 *   caCerts: [await Deno.readTextFile("ca.pem")],
 *   readsZeroes: false,
 * });
 * console.log(target.features, target.maxConnections);
 * ```
 */
export async function openImageio(url: string, options: ImageioOptions): Promise<ImageioTarget> {
  const parsed = new URL(url);
  const tls: Http1Options = options.caCerts ? { caCerts: options.caCerts } : {};
  let http = new Http1Connection(parsed, tls);
  try {
    const ticket = new Ticket(parsed);
    const res = await http.request({
      method: "OPTIONS",
      path: ticket.path,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    let features: ImageioFeatures;
    if (res.status === 405 || res.status === 204) {
      // A very old server: no zero, no flush, no extents may be assumed.
      features = { zero: false, flush: false, extents: false, maxWriters: 1 };
    } else if (res.status === 200) {
      let body: { features?: unknown; max_writers?: unknown; unix_socket?: unknown };
      try {
        body = JSON.parse(decoder.decode(res.body));
      } catch {
        body = {};
      }
      const list = Array.isArray(body.features) ? body.features.map(String) : [];
      const maxWriters = Number(body.max_writers);
      features = {
        zero: list.includes("zero"),
        flush: list.includes("flush"),
        extents: list.includes("extents"),
        maxWriters: Number.isSafeInteger(maxWriters) && maxWriters > 0 ? maxWriters : 1,
        ...(typeof body.unix_socket === "string" && body.unix_socket.length > 1
          ? { unixSocket: body.unix_socket }
          : {}),
      };
    } else {
      throw ticket.error(res, "OPTIONS", http.origin);
    }
    options.debug?.(
      `imageio ${http.origin} (${options.name}): features ${
        Object.entries(features).filter(([, v]) => v === true).map(([k]) => k).join(",") ||
        "none"
      }, max_writers ${features.maxWriters}` +
        (features.unixSocket ? `, unix_socket ${JSON.stringify(features.unixSocket)}` : ""),
    );
    let connection = tls;
    if (features.unixSocket) {
      const local = await localDaemon(parsed, ticket, features.unixSocket, options);
      if (local) {
        http.close();
        http = local;
        connection = { unixSocket: features.unixSocket };
      }
    }
    return new ImageioTarget(ticket, http, parsed, connection, features, options);
  } catch (e) {
    http.close();
    throw e;
  }
}

/**
 * The daemon's local socket, when it is the daemon that holds this transfer: it must answer
 * OPTIONS for the ticket with 200. Any failure means "not here" and HTTPS is kept.
 */
async function localDaemon(
  url: URL,
  ticket: Ticket,
  socket: string,
  options: ImageioOptions,
): Promise<Http1Connection | undefined> {
  const http = new Http1Connection(url, { unixSocket: socket, connectTimeout: 5000 });
  let why: string;
  try {
    const res = await http.request({
      method: "OPTIONS",
      path: ticket.path,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (res.status === 200) {
      options.debug?.(
        `imageio ${url.origin} (${options.name}): the daemon is on this host: uploading ` +
          `through its local socket (no TLS)`,
      );
      return http;
    }
    why = `it answered ${res.status} for this transfer`;
  } catch (e) {
    if (options.signal?.aborted) {
      http.close();
      throw options.signal.reason;
    }
    why = ticket.redact(e instanceof Error ? e.message : String(e));
  }
  http.close();
  options.debug?.(`imageio ${url.origin} (${options.name}): local socket not used (${why})`);
  return undefined;
}

/** The ticket in a transfer URL, kept out of messages. */
class Ticket {
  readonly path: string;
  readonly #secret: string;

  constructor(url: URL) {
    this.path = url.pathname;
    this.#secret = decodeURIComponent(url.pathname.split("/").filter(Boolean).pop() ?? "");
  }

  redact(text: string): string {
    return this.#secret.length >= 8 ? text.replaceAll(this.#secret, "<ticket>") : text;
  }

  error(res: Http1Response, what: string, origin: string): ImageioError {
    const text = this.redact(decoder.decode(res.body).trim()).slice(0, 300);
    const reason = res.status === 403
      ? "the transfer ticket was refused (expired, cancelled or unknown)"
      : `${res.status} ${res.statusText}`.trim();
    return new ImageioError(
      `imageio at ${origin} failed ${what}: ${reason}${text ? `: ${text}` : ""}`,
      res.status,
    );
  }
}

/** An imageio transfer as a copy target. */
export class ImageioTarget implements CopyTarget, AsyncDisposable {
  /** Names the disk in messages. */
  readonly name: string;
  /** See {@linkcode ImageioOptions.readsZeroes}. */
  readonly readsZeroes: boolean;
  /** min(max_writers, the options' maxConnections). */
  readonly maxConnections: number;
  /**
   * All of {@linkcode ImageioTarget.maxConnections}: uploads wait on round trips, not on local
   * CPUs (measured: 4 connections cut the upload phase from 5.4-6.8 s to 4.6-5.2 s on 2 CPUs).
   */
  get connections(): number {
    return this.maxConnections;
  }
  /** Largest zero request. */
  readonly maxZeroSize: number = 1024 * MiB;
  /** Each request is an HTTP round trip: only large zero runs are worth one of their own. */
  readonly zeroGranule: number = MiB;
  /** What the server offers. */
  readonly features: ImageioFeatures;
  /** The server, `https://HOST:PORT` (with ` (local socket)` when it goes over one). */
  readonly origin: string;
  readonly #url: URL;
  readonly #connection: Http1Options;
  readonly #ticket: Ticket;
  readonly #options: ImageioOptions;
  #spare: Http1Connection | undefined;
  readonly #writers = new Set<ImageioWriter>();
  #lastUse = Date.now();
  #timer: ReturnType<typeof setInterval> | undefined;
  #keepingAlive = false;

  /** Use {@linkcode openImageio}. */
  constructor(
    ticket: Ticket,
    spare: Http1Connection,
    url: URL,
    connection: Http1Options,
    features: ImageioFeatures,
    options: ImageioOptions,
  ) {
    this.name = `${options.name} (imageio at ${spare.origin})`;
    this.origin = spare.origin;
    this.#url = url;
    this.#connection = connection;
    this.readsZeroes = options.readsZeroes;
    this.features = features;
    this.maxConnections = Math.max(1, Math.min(features.maxWriters, options.maxConnections ?? 4));
    this.#ticket = ticket;
    this.#spare = spare;
    this.#options = options;
    const idle = this.#idleLimit();
    const timer = setInterval(() => this.#keepAlive(), Math.max(50, Math.min(idle / 2, 60_000)));
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  #idleLimit(): number {
    return ((this.#options.inactivityTimeout ?? 60) * 1000) / 2;
  }

  /**
   * Opens one more writer, on its own connection (the first one reuses the connection that
   * asked OPTIONS).
   *
   * @param signal Aborts the connection attempt and the writer's requests.
   * @param source Reads the source again, to resend writes the server lost.
   * @returns The writer.
   */
  async connect(signal: AbortSignal, source: SourceReader): Promise<TargetWriter> {
    let http = this.#spare;
    this.#spare = undefined;
    if (!http) {
      http = this.#newConnection();
      try {
        await http.connect(signal);
      } catch (e) {
        http.close();
        throw e;
      }
    }
    const sig = this.#options.signal ? AbortSignal.any([signal, this.#options.signal]) : signal;
    const writer = new ImageioWriter(this, http, this.#ticket, source, sig, this.#options, () => {
      this.#writers.delete(writer);
      this.#lastUse = Date.now();
    });
    this.#writers.add(writer);
    return writer;
  }

  /** A connection to the server the way OPTIONS settled: HTTPS, or the local socket. */
  #newConnection(): Http1Connection {
    return new Http1Connection(this.#url, this.#connection);
  }

  /** Keeps idle connections, and the ticket itself, from timing out. */
  #keepAlive(): void {
    const limit = this.#idleLimit();
    for (const w of this.#writers) w.keepAliveIfIdle(limit);
    if (this.#writers.size > 0 || this.#keepingAlive) return;
    if (Date.now() - this.#lastUse < limit) return;
    // No writer: touch the ticket on a connection of our own.
    this.#keepingAlive = true;
    const http = this.#spare ??= this.#newConnection();
    const req = this.features.flush
      ? jsonRequest("PATCH", this.#ticket.path, { op: "flush" })
      : { method: "OPTIONS", path: this.#ticket.path };
    http.request(req).then(
      (res) => {
        this.#options.debug?.(`imageio keep-alive (${this.#options.name}): ${res.status}`);
      },
      (e) => {
        this.#options.debug?.(`imageio keep-alive (${this.#options.name}) failed: ${e}`);
      },
    ).finally(() => {
      this.#lastUse = Date.now();
      this.#keepingAlive = false;
    });
  }

  /** Stops keep-alives and closes the spare connection (writers close their own). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#spare?.close();
    this.#spare = undefined;
    return Promise.resolve();
  }
}

/** A range written since the last flush, to resend if the server loses it. */
interface Written {
  offset: number;
  length: number;
  zero: boolean;
}

/** One connection's writer. Requests on it go one at a time. */
class ImageioWriter implements TargetWriter {
  readonly #target: ImageioTarget;
  readonly #http: Http1Connection;
  readonly #ticket: Ticket;
  readonly #source: SourceReader;
  readonly #signal: AbortSignal;
  readonly #options: ImageioOptions;
  readonly #onClose: () => void;
  /** Ranges acknowledged since the last flush. */
  #pending: Written[] = [];
  #pendingBytes = 0;
  /** The connection broke or the server lost writes: resend before anything else. */
  #lost = false;
  #queue: Promise<unknown> = Promise.resolve();
  #busy = 0;
  #lastUse = Date.now();
  #scratch: Uint8Array | undefined;
  #zeros: Uint8Array | undefined;
  #closed = false;

  constructor(
    target: ImageioTarget,
    http: Http1Connection,
    ticket: Ticket,
    source: SourceReader,
    signal: AbortSignal,
    options: ImageioOptions,
    onClose: () => void,
  ) {
    this.#target = target;
    this.#http = http;
    this.#ticket = ticket;
    this.#source = source;
    this.#signal = signal;
    this.#options = options;
    this.#onClose = onClose;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#locked(async () => {
      await this.#retrying(
        `writing ${data.length} bytes at offset ${offset}`,
        () => this.#put(offset, data),
      );
      this.#record({ offset, length: data.length, zero: false });
      await this.#maybeFlush();
    });
  }

  zero(offset: number, length: number): Promise<void> {
    return this.#locked(async () => {
      await this.#retrying(
        `zeroing ${length} bytes at offset ${offset}`,
        () => this.#zeroRange(offset, length),
      );
      this.#record({ offset, length, zero: true });
      await this.#maybeFlush();
    });
  }

  flush(): Promise<void> {
    return this.#locked(() => this.#flushNow());
  }

  /**
   * Sends a keep-alive when the connection has been idle for `limit` milliseconds.
   * @param limit Idle milliseconds.
   */
  keepAliveIfIdle(limit: number): void {
    if (this.#closed || this.#busy > 0 || Date.now() - this.#lastUse < limit) return;
    this.#locked(async () => {
      if (this.#target.features.flush) {
        await this.#flushNow();
      } else {
        await this.#retrying("keep-alive", () => this.#options_());
      }
      this.#options.debug?.(`imageio keep-alive on an idle connection (${this.#options.name})`);
    }).catch((e) => {
      // The next write reconnects and resends; it reports the error if it persists.
      this.#options.debug?.(`imageio keep-alive failed (${this.#options.name}): ${e}`);
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    this.#http.close();
    this.#onClose();
  }

  // ---------------------------------------------------------------------------------------

  /** Runs one operation at a time on this connection. */
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    this.#busy++;
    const run = this.#queue.then(() => {
      if (this.#closed) throw new Error(`imageio writer for ${this.#options.name} is closed`);
      return fn();
    }).finally(() => {
      this.#busy--;
      this.#lastUse = Date.now();
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  #record(w: Written): void {
    // Without flush every PUT is durable on its own: nothing to resend.
    if (!this.#target.features.flush) return;
    const last = this.#pending.at(-1);
    if (last && last.zero === w.zero && last.offset + last.length === w.offset) {
      last.length += w.length;
    } else {
      this.#pending.push(w);
    }
    // Zero requests cost one request to resend, not their length.
    this.#pendingBytes += w.zero ? 0 : w.length;
  }

  async #maybeFlush(): Promise<void> {
    const every = this.#options.flushEvery ?? 256 * MiB;
    if (this.#pendingBytes >= every || this.#pending.length >= 4096) await this.#flushNow();
  }

  async #flushNow(): Promise<void> {
    if (!this.#target.features.flush) return;
    await this.#retrying("flushing", () => this.#patch({ op: "flush" }));
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  /**
   * Runs a request, retrying after a lost connection or a 500: the writes since the last
   * flush are sent again first, on the new connection.
   */
  async #retrying(what: string, fn: () => Promise<void>): Promise<void> {
    const retries = this.#options.retries ?? 5;
    for (let attempt = 0;; attempt++) {
      try {
        if (this.#lost) await this.#resend();
        await fn();
        return;
      } catch (e) {
        if (this.#signal.aborted) throw this.#signal.reason;
        const retryable = e instanceof ConnectionLostError ||
          (e instanceof ImageioError && e.status >= 500 && e.status !== 501 && e.status !== 507);
        if (!retryable || attempt >= retries) {
          const msg = e instanceof Error ? e.message : String(e);
          const tries = attempt > 0 ? ` (after ${attempt + 1} attempts)` : "";
          throw new Error(
            `Cannot upload ${this.#options.name}: ${what}: ${this.#ticket.redact(msg)}${tries}`,
            { cause: e },
          );
        }
        this.#lost = true;
        const delay = Math.min(8000, (this.#options.retryDelay ?? 250) * 2 ** attempt);
        this.#options.debug?.(
          `imageio (${this.#options.name}): ${what}: ${this.#ticket.redact(String(e))}; ` +
            `resending ${this.#pending.length} range(s) written since the last flush, ` +
            `retry ${attempt + 1}/${retries} in ${delay} ms`,
        );
        await sleep(delay, this.#signal);
      }
    }
  }

  /** Sends again what was written since the last flush, then flushes it. */
  async #resend(): Promise<void> {
    const max = Math.min(this.#options.maxRequestSize ?? 8 * MiB, 8 * MiB);
    for (const w of this.#pending) {
      if (w.zero) {
        await this.#zeroRange(w.offset, w.length);
        continue;
      }
      this.#scratch ??= new Uint8Array(max);
      for (let at = w.offset; at < w.offset + w.length; at += max) {
        const view = this.#scratch.subarray(0, Math.min(max, w.offset + w.length - at));
        await this.#source.readInto(at, view);
        await this.#put(at, view);
      }
    }
    if (this.#target.features.flush) await this.#patch({ op: "flush" });
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#lost = false;
  }

  async #put(offset: number, data: Uint8Array): Promise<void> {
    const query = this.#target.features.flush ? "?flush=n" : "";
    const res = await this.#http.request({
      method: "PUT",
      path: this.#ticket.path + query,
      headers: {
        "Content-Range": `bytes ${offset}-${offset + data.length - 1}/*`,
        "Content-Type": "application/octet-stream",
      },
      body: data,
      signal: this.#signal,
    });
    this.#check(res, "PUT");
  }

  async #zeroRange(offset: number, length: number): Promise<void> {
    if (this.#target.features.zero) {
      await this.#patch({ op: "zero", offset, size: length, flush: false });
      return;
    }
    // No zero support: zeroes go as bytes.
    const max = Math.min(this.#options.maxRequestSize ?? 8 * MiB, 8 * MiB);
    this.#zeros ??= new Uint8Array(Math.min(max, length));
    for (let at = offset; at < offset + length; at += this.#zeros.length) {
      const n = Math.min(this.#zeros.length, offset + length - at);
      await this.#put(at, this.#zeros.subarray(0, n));
    }
  }

  async #patch(body: Record<string, unknown>): Promise<void> {
    const res = await this.#http.request({
      ...jsonRequest("PATCH", this.#ticket.path, body),
      signal: this.#signal,
    });
    this.#check(res, `PATCH ${String(body.op)}`);
  }

  async #options_(): Promise<void> {
    const res = await this.#http.request({
      method: "OPTIONS",
      path: this.#ticket.path,
      signal: this.#signal,
    });
    if (res.status !== 405 && res.status !== 204) this.#check(res, "OPTIONS");
  }

  #check(res: Http1Response, what: string): void {
    if (res.status >= 200 && res.status < 300) return;
    throw this.#ticket.error(res, what, this.#http.origin);
  }
}

function jsonRequest(method: string, path: string, body: Record<string, unknown>) {
  return {
    method,
    path,
    headers: { "Content-Type": "application/json" },
    body: encoder.encode(JSON.stringify(body)),
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(id);
      reject(signal.reason);
    };
    const id = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
