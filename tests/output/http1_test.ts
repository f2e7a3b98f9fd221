/**
 * The HTTP/1.1 client of the imageio uploader, against a small TLS server of the test's own:
 * keep-alive, Content-Length both ways, chunked and read-to-close answers, reconnecting after
 * the server closed the connection, and refusing a server whose certificate another CA signed.
 */

import { assert, assertEquals, assertRejects, assertStringIncludes } from "../_assert.ts";
import { ConnectionLostError, Http1Connection } from "../../src/output/_http1.ts";
import { makeCa, makeServerCertificate } from "../servers/_tls.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

interface Seen {
  method: string;
  path: string;
  headers: Headers;
  body: Uint8Array;
  connection: number;
}

type Reply = (req: Seen) => { raw: string | Uint8Array; close?: boolean };

/** A TLS server that answers each request with what `reply` returns, byte for byte. */
class RawServer implements AsyncDisposable {
  readonly seen: Seen[] = [];
  readonly port: number;
  connections = 0;
  #listener: Deno.TlsListener;
  #conns = new Set<Deno.TlsConn>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void>;

  constructor(certFile: string, keyFile: string, reply: Reply) {
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: Deno.readTextFileSync(certFile),
      key: Deno.readTextFileSync(keyFile),
    });
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#accepting = (async () => {
      for await (const conn of listener) {
        const id = ++this.connections;
        this.#conns.add(conn);
        const task = this.#serve(conn, id, reply).catch(() => {}).finally(() => {
          this.#conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        });
        this.#tasks.add(task);
        task.finally(() => this.#tasks.delete(task));
      }
    })().catch(() => {});
  }

  async #serve(conn: Deno.TlsConn, id: number, reply: Reply): Promise<void> {
    let buf = new Uint8Array(0);
    const more = async () => {
      const chunk = new Uint8Array(65536);
      const n = await conn.read(chunk);
      if (n === null) return false;
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
      return true;
    };
    while (true) {
      let end: number;
      while ((end = dec.decode(buf).indexOf("\r\n\r\n")) < 0) if (!(await more())) return;
      const head = dec.decode(buf.subarray(0, end)).split("\r\n");
      const [method, path] = head[0]!.split(" ");
      const headers = new Headers(
        head.slice(1).map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trim()]),
      );
      const length = Number(headers.get("content-length") ?? 0);
      while (buf.length < end + 4 + length) if (!(await more())) return;
      const body = buf.slice(end + 4, end + 4 + length);
      buf = buf.slice(end + 4 + length);
      const req = { method: method!, path: path!, headers, body, connection: id };
      this.seen.push(req);
      const { raw, close } = reply(req);
      await conn.write(typeof raw === "string" ? enc.encode(raw) : raw);
      if (close) return;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Promise.all(this.#tasks);
    await this.#accepting;
  }
}

async function certificates() {
  const dir = await Deno.makeTempDir({ prefix: "vmshift-http1-test-" });
  const ca = await makeCa(dir, "good");
  const server = await makeServerCertificate(dir, "server", ca);
  const other = await makeCa(dir, "other");
  const stranger = await makeServerCertificate(dir, "stranger", other);
  return {
    dir,
    server,
    stranger,
    caCerts: [await Deno.readTextFile(ca.caFile)],
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

const ok = (body: string, extra = "") =>
  `HTTP/1.1 200 OK\r\nContent-Length: ${enc.encode(body).length}\r\n${extra}\r\n${body}`;

Deno.test("requests share one keep-alive connection, bodies go with Content-Length", async () => {
  await using certs = await certificates();
  await using server = new RawServer(
    certs.server.certFile,
    certs.server.keyFile,
    (req) => ({ raw: ok(`${req.method} ${req.body.length}`) }),
  );
  using http = new Http1Connection(new URL(`https://127.0.0.1:${server.port}`), {
    caCerts: certs.caCerts,
  });
  const big = new Uint8Array(5 * 1024 * 1024).fill(7);
  const answers = await Promise.all([
    http.request({ method: "OPTIONS", path: "/images/t" }),
    http.request({ method: "PUT", path: "/images/t?flush=n", body: big }),
    http.request({ method: "PATCH", path: "/images/t", body: enc.encode('{"op":"flush"}') }),
  ]);
  assertEquals(answers.map((r) => dec.decode(r.body)), [
    "OPTIONS 0",
    `PUT ${big.length}`,
    "PATCH 14",
  ]);
  assertEquals(server.connections, 1);
  assertEquals(http.connectionsOpened, 1);
  const put = server.seen[1]!;
  assertEquals(put.headers.get("content-length"), String(big.length));
  assertEquals(put.headers.get("transfer-encoding"), null);
  assertEquals(put.headers.get("host"), `127.0.0.1:${server.port}`);
  assert(put.body.every((b) => b === 7));
});

Deno.test("chunked answers, answers read to the end, and 204 without a body", async () => {
  await using certs = await certificates();
  await using server = new RawServer(certs.server.certFile, certs.server.keyFile, (req) => {
    if (req.path === "/chunked") {
      return {
        raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
          "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
      };
    }
    if (req.path === "/empty") return { raw: "HTTP/1.1 204 No Content\r\n\r\n" };
    return { raw: "HTTP/1.0 200 OK\r\n\r\nuntil the end", close: true };
  });
  using http = new Http1Connection(new URL(`https://localhost:${server.port}`), {
    caCerts: certs.caCerts,
  });
  const chunked = await http.request({ method: "GET", path: "/chunked" });
  assertEquals(dec.decode(chunked.body), "hello, world");
  const empty = await http.request({ method: "PATCH", path: "/empty", body: enc.encode("{}") });
  assertEquals([empty.status, empty.body.length], [204, 0]);
  const toEnd = await http.request({ method: "GET", path: "/end" });
  assertEquals(dec.decode(toEnd.body), "until the end");
  assertEquals(http.connected, false);
  assertEquals(server.connections, 1);
});

Deno.test("a connection the server closed is reopened by the next request", async () => {
  await using certs = await certificates();
  let n = 0;
  await using server = new RawServer(certs.server.certFile, certs.server.keyFile, () => {
    n++;
    // 1: closes with "Connection: close"; 2: closes without saying so; then keep-alive.
    if (n === 1) return { raw: ok("one", "Connection: close\r\n"), close: true };
    if (n === 2) return { raw: ok("two"), close: true };
    return { raw: ok(String(n)) };
  });
  using http = new Http1Connection(new URL(`https://127.0.0.1:${server.port}`), {
    caCerts: certs.caCerts,
  });
  assertEquals(dec.decode((await http.request({ method: "GET", path: "/" })).body), "one");
  // Told to close: the next request quietly opens a new connection.
  assertEquals(dec.decode((await http.request({ method: "GET", path: "/" })).body), "two");
  // Closed without a word: the request on the dead connection fails as a lost connection...
  const lost = await assertRejects(
    () => http.request({ method: "PUT", path: "/", body: enc.encode("x") }),
    ConnectionLostError,
  );
  assertStringIncludes(lost.message, `https://127.0.0.1:${server.port}`);
  // ...and the one after it goes out on a new connection.
  assertEquals(dec.decode((await http.request({ method: "GET", path: "/" })).body), "3");
  assertEquals(http.connectionsOpened, 3);
  assertEquals(server.connections, 3);
});

Deno.test("a server whose certificate another CA signed is refused", async () => {
  await using certs = await certificates();
  await using server = new RawServer(
    certs.stranger.certFile,
    certs.stranger.keyFile,
    () => ({ raw: ok("should not get here") }),
  );
  using http = new Http1Connection(new URL(`https://127.0.0.1:${server.port}`), {
    caCerts: certs.caCerts,
  });
  const e = await assertRejects(() => http.request({ method: "GET", path: "/" }));
  assert(!(e instanceof ConnectionLostError), "a certificate error is not a lost connection");
  assertStringIncludes(e.message, `Cannot connect to https://127.0.0.1:${server.port}`);
  assertStringIncludes(e.message.toLowerCase(), "certificate");
  assertEquals(server.seen.length, 0);
});

Deno.test("an aborted request closes the connection and rejects with the reason", async () => {
  await using certs = await certificates();
  await using server = new RawServer(certs.server.certFile, certs.server.keyFile, () => ({
    // Never a complete answer.
    raw: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
  }));
  using http = new Http1Connection(new URL(`https://127.0.0.1:${server.port}`), {
    caCerts: certs.caCerts,
  });
  const controller = new AbortController();
  const request = http.request({ method: "GET", path: "/", signal: controller.signal });
  setTimeout(() => controller.abort(new Error("stop")), 100);
  await assertRejects(() => request, Error, "stop");
  assertEquals(http.connected, false);
});
