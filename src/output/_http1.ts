/**
 * A small HTTP/1.1 client over one TLS connection (or the imageio daemon's local unix socket),
 * for the imageio uploader.
 *
 * `fetch` pools connections behind the caller's back: it cannot pin a request to a connection,
 * and imageio's flush is per connection (a flush makes durable what was written on the same
 * connection), so every uploader connection owns one {@linkcode Http1Connection}. What it does:
 *
 * - requests carry `Content-Length` (imageio refuses chunked uploads with 400), bodies are sent
 *   as given, never copied into a bigger buffer;
 * - responses are read by `Content-Length`, by chunks, or up to the end of the connection;
 * - the connection is kept alive between requests, and reopened on the next request when the
 *   server closed it (`Connection: close`, an idle timeout, a reset);
 * - a connection that breaks while a request is on the wire fails that request with
 *   {@linkcode ConnectionLostError}: whether to resend is the caller's decision, because only
 *   the caller knows what the server may have lost with it;
 * - the server's certificate is always verified, against `caCerts` when given (else the
 *   system's roots); over a unix socket (`unixSocket`, a path or a Linux abstract name starting
 *   with NUL) there is no TLS: only a process on the same host can connect.
 *
 * @module
 */

const CRLF = "\r\n";
const MAX_HEAD = 64 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The connection broke (closed, reset) before a whole response was read. */
export class ConnectionLostError extends Error {
  /**
   * @param message What broke.
   * @param options The underlying error.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectionLostError";
  }
}

/** A response, read whole. */
export interface Http1Response {
  /** Status code. */
  status: number;
  /** Reason phrase. */
  statusText: string;
  /** Headers (names are case-insensitive). */
  headers: Headers;
  /** The body. */
  body: Uint8Array;
}

/** A request. */
export interface Http1Request {
  /** `GET`, `PUT`, `PATCH`, `OPTIONS`, ... */
  method: string;
  /** Path and query, e.g. `/images/abc?flush=n`. */
  path: string;
  /** Extra headers; `Host` and `Content-Length` are set by the client. */
  headers?: Record<string, string>;
  /** The body, sent with its `Content-Length`. */
  body?: Uint8Array;
  /** Aborts the request; the connection is closed. */
  signal?: AbortSignal;
}

/** Options for {@linkcode Http1Connection}. */
export interface Http1Options {
  /** PEM certificates to trust instead of the system's roots. */
  caCerts?: string[];
  /**
   * Milliseconds to wait for the TCP and TLS handshakes.
   * @default 30000
   */
  connectTimeout?: number;
  /**
   * Connect to this unix socket instead, in plain HTTP: a path, or an abstract name that starts
   * with `\0` (imageio's is `\0/org/ovirt/imageio`). The URL still names the server in messages.
   */
  unixSocket?: string;
}

/**
 * One keep-alive HTTPS connection, opened on the first request and reopened on the next
 * request after it was lost. Requests are sent one at a time, in call order.
 *
 * @example
 * ```ts ignore
 * import { Http1Connection } from "./_http1.ts";
 * using http = new Http1Connection(new URL("https://imageio.example:54322"));
 * const r = await http.request({ method: "OPTIONS", path: "/images/TICKET" });
 * console.log(r.status, new TextDecoder().decode(r.body));
 * ```
 */
export class Http1Connection implements Disposable {
  readonly #hostname: string;
  readonly #port: number;
  readonly #hostHeader: string;
  readonly #options: Http1Options;
  #conn: Deno.Conn | undefined;
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;
  #queue: Promise<unknown> = Promise.resolve();
  #opened = 0;
  #closed = false;

  /**
   * @param url Where to connect: `https://HOST[:PORT]` (the path is ignored).
   * @param options Certificates, timeouts.
   * @throws {TypeError} For a URL that is not https.
   */
  constructor(url: URL, options: Http1Options = {}) {
    if (url.protocol !== "https:") {
      throw new TypeError(`Unsupported URL "${url.origin}": only https is supported`);
    }
    this.#hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
    this.#port = url.port ? Number(url.port) : 443;
    this.#hostHeader = url.host;
    this.#options = options;
  }

  /** `https://HOST:PORT`, for messages (with ` (local socket)` over a unix socket). */
  get origin(): string {
    return `https://${this.#hostHeader}${this.#options.unixSocket ? " (local socket)" : ""}`;
  }

  /** How many times a connection was opened (1 when keep-alive held throughout). */
  get connectionsOpened(): number {
    return this.#opened;
  }

  /** Whether a connection is open now. */
  get connected(): boolean {
    return this.#conn !== undefined;
  }

  /**
   * Opens the connection now, if it is not open (requests do it themselves).
   * @param signal Aborts the handshake.
   * @throws {Error} When the server cannot be reached or its certificate is not trusted.
   */
  async connect(signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new Error(`Connection to ${this.origin} was closed`);
    if (this.#conn) return;
    const timeout = AbortSignal.timeout(this.#options.connectTimeout ?? 30_000);
    const abort = signal ? AbortSignal.any([signal, timeout]) : timeout;
    let conn: Deno.Conn | undefined;
    const onAbort = () => conn?.close();
    abort.addEventListener("abort", onAbort, { once: true });
    try {
      abort.throwIfAborted();
      const unix = this.#options.unixSocket;
      if (unix !== undefined) {
        conn = await Deno.connect({ transport: "unix", path: unix });
      } else {
        const tls = await Deno.connectTls({
          hostname: this.#hostname,
          port: this.#port,
          ...(this.#options.caCerts ? { caCerts: this.#options.caCerts } : {}),
        });
        conn = tls;
        // The handshake verifies the certificate: do it now, so that an untrusted server fails
        // here with a clear message, not as a lost connection in the middle of a request.
        await tls.handshake();
      }
      abort.throwIfAborted();
    } catch (e) {
      try {
        conn?.close();
      } catch { /* already closed */ }
      if (signal?.aborted) throw signal.reason;
      const why = timeout.aborted ? "timed out" : e instanceof Error ? e.message : String(e);
      throw new Error(`Cannot connect to ${this.origin}: ${why}`, { cause: e });
    } finally {
      abort.removeEventListener("abort", onAbort);
    }
    this.#conn = conn;
    this.#start = this.#end = 0;
    this.#opened++;
  }

  /**
   * Sends a request and reads its response. Calls made while another request is in flight wait
   * their turn.
   *
   * @param req Method, path, headers, body.
   * @returns The response, whatever its status.
   * @throws {ConnectionLostError} When the connection broke before the whole response came;
   *   the next request opens a new connection.
   * @throws {Error} When the server cannot be reached or its answer is not HTTP.
   */
  request(req: Http1Request): Promise<Http1Response> {
    const run = this.#queue.then(() => this.#request(req));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #request(req: Http1Request): Promise<Http1Response> {
    req.signal?.throwIfAborted();
    await this.connect(req.signal);
    const conn = this.#conn!;
    const onAbort = () => this.#drop();
    req.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await this.#send(conn, req);
      const res = await this.#readResponse(conn, req.method);
      return res;
    } catch (e) {
      this.#drop();
      if (req.signal?.aborted) throw req.signal.reason;
      if (e instanceof ProtocolError) {
        throw new Error(`Bad answer from ${this.origin}: ${e.message}`, { cause: e });
      }
      if (e instanceof ConnectionLostError) throw e;
      const why = e instanceof Error ? e.message : String(e);
      throw new ConnectionLostError(`Connection to ${this.origin} lost: ${why}`, { cause: e });
    } finally {
      req.signal?.removeEventListener("abort", onAbort);
    }
  }

  async #send(conn: Deno.Conn, req: Http1Request): Promise<void> {
    let head = `${req.method} ${req.path} HTTP/1.1${CRLF}Host: ${this.#hostHeader}${CRLF}`;
    for (const [k, v] of Object.entries(req.headers ?? {})) {
      if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new TypeError(`Bad header "${k}"`);
      head += `${k}: ${v}${CRLF}`;
    }
    const body = req.body;
    if (body || !["GET", "HEAD", "OPTIONS", "DELETE"].includes(req.method)) {
      head += `Content-Length: ${body?.length ?? 0}${CRLF}`;
    }
    head += CRLF;
    const headBytes = encoder.encode(head);
    if (body && body.length <= 64 * 1024) {
      // Small bodies go out in one write (one TLS record) with the head.
      const all = new Uint8Array(headBytes.length + body.length);
      all.set(headBytes);
      all.set(body, headBytes.length);
      await writeAll(conn, all);
    } else {
      await writeAll(conn, headBytes);
      if (body) await writeAll(conn, body);
    }
  }

  async #readResponse(conn: Deno.Conn, method: string): Promise<Http1Response> {
    while (true) {
      const headText = await this.#readHead(conn);
      const lines = headText.split(CRLF);
      const m = lines[0]!.match(/^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/);
      if (!m) throw new ProtocolError(`not an HTTP/1.x status line: "${lines[0]!.slice(0, 80)}"`);
      const minor = m[1]!;
      const status = Number(m[2]);
      const headers = new Headers();
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(":");
        if (colon <= 0) throw new ProtocolError(`bad header line "${line.slice(0, 80)}"`);
        headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
      }
      if (status >= 100 && status < 200) continue; // 100 Continue and friends: the real one follows
      const connection = (headers.get("connection") ?? "").toLowerCase();
      let keepAlive = minor === "1"
        ? !connection.includes("close")
        : connection.includes("keep-alive");
      let body: Uint8Array;
      const te = (headers.get("transfer-encoding") ?? "").toLowerCase();
      const cl = headers.get("content-length");
      if (method === "HEAD" || status === 204 || status === 304) {
        body = new Uint8Array(0);
      } else if (te && te !== "identity") {
        if (!te.endsWith("chunked")) {
          throw new ProtocolError(`unsupported transfer encoding "${te}"`);
        }
        body = await this.#readChunked(conn);
      } else if (cl !== null) {
        if (!/^\d+$/.test(cl)) throw new ProtocolError(`bad Content-Length "${cl}"`);
        body = await this.#readExactly(conn, Number(cl));
      } else {
        body = await this.#readToEnd(conn);
        keepAlive = false;
      }
      if (!keepAlive) this.#drop();
      return { status, statusText: m[3] ?? "", headers, body };
    }
  }

  /** Reads more bytes into the buffer; false at the end of the stream. */
  async #fill(conn: Deno.Conn): Promise<boolean> {
    if (this.#start > 0 && this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) {
      if (this.#start > 0) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      } else {
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
    }
    const n = await conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  async #readHead(conn: Deno.Conn): Promise<string> {
    // Bytes after #start already scanned (relative: #fill may move the data to the front).
    let scanned = 0;
    while (true) {
      const buf = this.#buf;
      for (let i = this.#start + Math.max(0, scanned - 3); i + 3 < this.#end; i++) {
        if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
          const text = decoder.decode(buf.subarray(this.#start, i));
          this.#start = i + 4;
          return text;
        }
      }
      scanned = this.#end - this.#start;
      if (scanned > MAX_HEAD) throw new ProtocolError("response head too large");
      if (!(await this.#fill(conn))) {
        throw new ConnectionLostError(
          scanned > 0
            ? `Connection to ${this.origin} closed in the middle of a response`
            : `Connection to ${this.origin} closed by the server`,
        );
      }
    }
  }

  async #readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (this.#start === this.#end && !(await this.#fill(conn))) {
        throw new ConnectionLostError(`Connection to ${this.origin} closed in a response body`);
      }
      const take = Math.min(n - got, this.#end - this.#start);
      out.set(this.#buf.subarray(this.#start, this.#start + take), got);
      this.#start += take;
      got += take;
    }
    return out;
  }

  async #readLine(conn: Deno.Conn): Promise<string> {
    while (true) {
      const view = this.#buf.subarray(this.#start, this.#end);
      const nl = view.indexOf(10);
      if (nl >= 0) {
        const line = decoder.decode(view.subarray(0, nl)).replace(/\r$/, "");
        this.#start += nl + 1;
        return line;
      }
      if (view.length > MAX_HEAD) throw new ProtocolError("line too long");
      if (!(await this.#fill(conn))) {
        throw new ConnectionLostError(`Connection to ${this.origin} closed in a chunked body`);
      }
    }
  }

  async #readChunked(conn: Deno.Conn): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    while (true) {
      const sizeLine = await this.#readLine(conn);
      const size = parseInt(sizeLine.split(";")[0]!.trim(), 16);
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new ProtocolError(`bad chunk size "${sizeLine.slice(0, 20)}"`);
      }
      if (size === 0) {
        // Trailers, up to an empty line.
        while ((await this.#readLine(conn)) !== "");
        break;
      }
      parts.push(await this.#readExactly(conn, size));
      if ((await this.#readLine(conn)) !== "") {
        throw new ProtocolError("chunk not followed by CRLF");
      }
    }
    return concat(parts);
  }

  async #readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
    while (await this.#fill(conn));
    const out = this.#buf.slice(this.#start, this.#end);
    this.#start = this.#end;
    return out;
  }

  /** Closes the current connection; the next request opens another. */
  #drop(): void {
    const conn = this.#conn;
    this.#conn = undefined;
    this.#start = this.#end = 0;
    try {
      conn?.close();
    } catch { /* already closed */ }
  }

  /** Closes the connection for good. */
  close(): void {
    this.#closed = true;
    this.#drop();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

class ProtocolError extends Error {}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    done += await conn.write(done ? bytes.subarray(done) : bytes);
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
