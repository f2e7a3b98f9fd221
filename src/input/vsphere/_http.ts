/**
 * HTTPS to one vSphere server (vCenter or ESXi): requests on keep-alive connections, the TLS
 * check vmshift asks for, and the server's certificate thumbprint.
 *
 * Built on `node:https` rather than `fetch`: Deno's `fetch` cannot skip certificate checks for
 * one client, and virt-v2v users write `?no_verify=1` in their `-ic` URIs; `node:https` takes
 * a CA (`ca`), or no check (`rejectUnauthorized: false`), per agent, and shows the peer's
 * certificate, whose SHA-1 fingerprint is the thumbprint VDDK wants.
 *
 * Request and response bodies are never logged here: a SOAP login carries the password, and the
 * session cookie is in the headers.
 *
 * @module
 */

import https from "node:https";
import type { IncomingMessage } from "node:http";
import type { TLSSocket } from "node:tls";

/** How the server's certificate is checked. */
export type TlsCheck =
  | { verify: true; ca?: string }
  | { verify: false };

/** A response, body read in full (SOAP) or not at all (HEAD). */
export interface HttpResponse {
  /** The status code. */
  status: number;
  /** Response headers, names lower case. */
  headers: Record<string, string | string[] | undefined>;
  /** The body. */
  body: Uint8Array;
}

/** Options of {@linkcode HttpsClient.request}. */
export interface RequestOptions {
  /** `GET`, `HEAD`, `POST`. */
  method: string;
  /** Path and query, e.g. `/sdk`. */
  path: string;
  /** Request headers. */
  headers?: Record<string, string>;
  /** The body, for POST. */
  body?: string;
  /** Stops the request. */
  signal?: AbortSignal;
  /**
   * The most bytes of body to read; more is an error.
   * @default 256 MiB
   */
  maxBytes?: number;
}

/** Thrown when the TLS handshake fails because the certificate is not trusted. */
export class TlsTrustError extends Error {
  /**
   * @param message What failed.
   * @param options The cause.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TlsTrustError";
  }
}

/** HTTPS requests to one server. */
export class HttpsClient {
  /** `host` or `host:port`, for messages. */
  readonly server: string;
  readonly #host: string;
  readonly #port: number;
  readonly #agent: https.Agent;
  #thumbprint: string | undefined;

  /**
   * @param host The server's name or address.
   * @param port Its HTTPS port.
   * @param tls How its certificate is checked.
   */
  constructor(host: string, port: number, tls: TlsCheck) {
    this.#host = host;
    this.#port = port;
    this.server = port === 443 ? host : `${host}:${port}`;
    this.#agent = new https.Agent({
      keepAlive: true,
      maxSockets: 4,
      ...(tls.verify ? (tls.ca ? { ca: tls.ca } : {}) : { rejectUnauthorized: false }),
    });
  }

  /**
   * The SHA-1 fingerprint of the server's certificate, `AA:BB:...` (upper case), as VDDK's
   * `thumbprint=` takes it; known after the first request.
   */
  get thumbprint(): string | undefined {
    return this.#thumbprint;
  }

  /**
   * Sends a request and reads the whole response.
   *
   * @param options Method, path, headers, body.
   * @returns The response.
   * @throws {TlsTrustError} When the server's certificate is not trusted.
   * @throws {Error} When the server cannot be reached.
   */
  request(options: RequestOptions): Promise<HttpResponse> {
    options.signal?.throwIfAborted();
    const max = options.maxBytes ?? 256 * 1024 * 1024;
    return new Promise<HttpResponse>((resolve, reject) => {
      const headers: Record<string, string> = { ...options.headers };
      if (options.body !== undefined) {
        headers["content-length"] = String(new TextEncoder().encode(options.body).length);
      }
      const req = https.request({
        host: this.#host,
        port: this.#port,
        method: options.method,
        path: options.path,
        headers,
        agent: this.#agent,
        servername: isIp(this.#host) ? undefined : this.#host,
      }, (res: IncomingMessage) => {
        const socket = res.socket as TLSSocket;
        if (this.#thumbprint === undefined && typeof socket?.getPeerCertificate === "function") {
          const fp = socket.getPeerCertificate()?.fingerprint;
          if (fp) this.#thumbprint = fp.toUpperCase();
        }
        const chunks: Uint8Array[] = [];
        let size = 0;
        res.on("data", (c: Uint8Array) => {
          size += c.length;
          if (size > max) {
            res.destroy(new Error(`the response is larger than ${max} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () => {
          const body = new Uint8Array(size);
          let at = 0;
          for (const c of chunks) {
            body.set(c, at);
            at += c.length;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        });
        res.on("error", (e: Error) => reject(this.#explain(e)));
      });
      const onAbort = () => req.destroy(options.signal?.reason ?? new Error("aborted"));
      options.signal?.addEventListener("abort", onAbort, { once: true });
      req.on("close", () => options.signal?.removeEventListener("abort", onAbort));
      req.on(
        "error",
        (e: Error) => reject(options.signal?.aborted ? options.signal.reason : this.#explain(e)),
      );
      req.end(options.body);
    });
  }

  /** Closes the idle connections. */
  close(): void {
    this.#agent.destroy();
  }

  #explain(e: Error): Error {
    const code = (e as { code?: string }).code ?? "";
    const text = `${code} ${e.message}`;
    if (
      /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|certificate|UnknownIssuer|NotValidForName/i
        .test(text)
    ) {
      return new TlsTrustError(
        `the server's TLS certificate is not trusted (${e.message.trim()})`,
        { cause: e },
      );
    }
    if (code === "ECONNREFUSED") return new Error("connection refused", { cause: e });
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
      return new Error(`cannot resolve "${this.#host}"`, { cause: e });
    }
    return e;
  }
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(":");
}
