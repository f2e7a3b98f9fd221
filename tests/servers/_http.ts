/**
 * A small HTTP/1.1 server connection for the imageio test daemon: request heads in, bodies
 * read in pieces as they arrive, responses out with `Content-Length`. Written by hand because
 * `Deno.serve` cannot close one chosen idle connection, tell connections apart, or refuse a
 * chunked body before reading it.
 *
 * @module
 */

const HEAD_MAX = 64 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A parsed request line and headers. */
export interface RequestHead {
  method: string;
  /** The request target as sent, e.g. `/images/abc?flush=n`. */
  target: string;
  /** `HTTP/1.1` or `HTTP/1.0`. */
  version: string;
  /** Header values by lower-case name; repeated headers joined with `, `. */
  headers: Map<string, string>;
}

/** The request head was malformed; answer 400 and close. */
export class BadRequest extends Error {}

/** Reason phrases of the statuses the daemon sends. */
const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  206: "Partial Content",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Payload Too Large",
  416: "Requested Range Not Satisfiable",
  500: "Internal Server Error",
};

/** One client connection: buffered reads, whole writes. */
export class HttpConnection {
  readonly conn: Deno.Conn;
  readonly #buf = new Uint8Array(HEAD_MAX);
  #start = 0;
  #end = 0;
  #closed = false;

  /** @param conn The accepted (TLS) connection. */
  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** True once {@linkcode HttpConnection.close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Reads the next request head.
   *
   * @param idleMs Close the connection if no byte of a request arrives for this long.
   * @returns The head, or null when the client closed (or the connection idled out) between
   * requests.
   * @throws {BadRequest} When the head is malformed or too long.
   */
  async readHead(idleMs: number): Promise<RequestHead | null> {
    let end = this.#find();
    while (end < 0) {
      if (this.#end - this.#start >= HEAD_MAX) throw new BadRequest("Request head too long");
      this.#compact();
      const idle = this.#start === this.#end;
      const timer = idle ? setTimeout(() => this.close(), idleMs) : undefined;
      let got: number | null;
      try {
        got = await this.conn.read(this.#buf.subarray(this.#end));
      } catch (e) {
        if (this.#closed || isDisconnect(e)) return null;
        throw e;
      } finally {
        clearTimeout(timer);
      }
      if (got === null) {
        if (this.#start === this.#end) return null;
        throw new BadRequest("Connection closed in the middle of a request head");
      }
      this.#end += got;
      end = this.#find();
    }
    const text = decoder.decode(this.#buf.subarray(this.#start, end));
    this.#start = end + 4;
    const lines = text.split("\r\n");
    const m = lines[0]!.match(/^([A-Z]+) (\S+) (HTTP\/1\.[01])$/);
    if (!m) throw new BadRequest(`Malformed request line: ${JSON.stringify(lines[0])}`);
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0 || /\s/.test(line.slice(0, colon))) {
        throw new BadRequest(`Malformed header: ${JSON.stringify(line)}`);
      }
      const name = line.slice(0, colon).toLowerCase();
      const value = line.slice(colon + 1).trim();
      const old = headers.get(name);
      headers.set(name, old === undefined ? value : `${old}, ${value}`);
    }
    return { method: m[1]!, target: m[2]!, version: m[3]!, headers };
  }

  /**
   * Reads the next piece of a body: buffered bytes first, then one read from the socket.
   *
   * @param dest Where the bytes go; at most its length are read.
   * @returns How many bytes were read; 0 when the client closed the connection.
   */
  async readSome(dest: Uint8Array): Promise<number> {
    if (this.#start < this.#end) {
      const n = Math.min(dest.length, this.#end - this.#start);
      dest.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
      return n;
    }
    try {
      return (await this.conn.read(dest)) ?? 0;
    } catch (e) {
      if (this.#closed || isDisconnect(e)) return 0;
      throw e;
    }
  }

  /**
   * Reads exactly `length` bytes of body.
   *
   * @param length The byte count.
   * @returns The bytes, or null when the connection ended first.
   */
  async readBody(length: number): Promise<Uint8Array | null> {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = await this.readSome(out.subarray(done));
      if (n === 0) return null;
      done += n;
    }
    return out;
  }

  /**
   * Reads and throws away `length` bytes of body.
   *
   * @param length The byte count.
   * @returns False when the connection ended first.
   */
  async discardBody(length: number): Promise<boolean> {
    const scratch = new Uint8Array(Math.min(length, 1024 * 1024));
    while (length > 0) {
      const n = await this.readSome(scratch.subarray(0, Math.min(length, scratch.length)));
      if (n === 0) return false;
      length -= n;
    }
    return true;
  }

  /**
   * Sends a response head (and a body, when given). `Content-Length` is always set: the
   * length of `body`, or `contentLength` when the body follows with {@linkcode write}.
   *
   * @param status The status code.
   * @param headers Extra headers.
   * @param body The body, if sent now.
   * @param contentLength The length of a body sent afterwards.
   */
  async respond(
    status: number,
    headers: Record<string, string>,
    body?: Uint8Array | string,
    contentLength?: number,
  ): Promise<void> {
    const bytes = typeof body === "string" ? encoder.encode(body) : body;
    const all: Record<string, string> = {
      "Server": "imageio/2.5.3 (vmshift test server)",
      "Date": new Date().toUTCString(),
      ...headers,
    };
    if (status !== 100) {
      all["Content-Length"] = String(contentLength ?? bytes?.length ?? 0);
    }
    let head = `HTTP/1.1 ${status} ${REASONS[status] ?? "Unknown"}\r\n`;
    for (const [k, v] of Object.entries(all)) head += `${k}: ${v}\r\n`;
    head += "\r\n";
    const headBytes = encoder.encode(head);
    if (bytes && bytes.length <= 64 * 1024) {
      const one = new Uint8Array(headBytes.length + bytes.length);
      one.set(headBytes);
      one.set(bytes, headBytes.length);
      await this.write(one);
    } else {
      await this.write(headBytes);
      if (bytes) await this.write(bytes);
    }
  }

  /**
   * Writes all of `data`.
   *
   * @param data The bytes.
   */
  async write(data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) done += await this.conn.write(data.subarray(done));
  }

  /**
   * Closes after an answer that said `Connection: close` while the request body was left
   * unread: stops writing, then reads and drops what the client still sends for a moment, so
   * that the close does not reset the connection before the client has read the answer.
   */
  async lingeringClose(): Promise<void> {
    if (this.#closed) return;
    const timer = setTimeout(() => this.close(), 500);
    try {
      await this.conn.closeWrite();
      const scratch = new Uint8Array(64 * 1024);
      for (let total = 0; total < 16 * 1024 * 1024;) {
        const n = await this.conn.read(scratch);
        if (n === null) break;
        total += n;
      }
    } catch {
      // Reset or closed by the timer: done either way.
    } finally {
      clearTimeout(timer);
      this.close();
    }
  }

  /** Closes the connection (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }

  #find(): number {
    for (let i = this.#start; i + 3 < this.#end; i++) {
      if (
        this.#buf[i] === 13 && this.#buf[i + 1] === 10 && this.#buf[i + 2] === 13 &&
        this.#buf[i + 3] === 10
      ) {
        return i;
      }
    }
    return -1;
  }

  #compact(): void {
    if (this.#start === 0) return;
    this.#buf.copyWithin(0, this.#start, this.#end);
    this.#end -= this.#start;
    this.#start = 0;
  }
}

/**
 * True for the errors a socket gives when the peer went away or it was closed under a read.
 *
 * @param e The error.
 * @returns Whether it means "disconnected".
 */
export function isDisconnect(e: unknown): boolean {
  return e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted ||
    e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.UnexpectedEof || e instanceof Deno.errors.ConnectionAborted ||
    (e instanceof Error && /tls|handshake|certificate|close_notify|peer/i.test(e.message));
}
