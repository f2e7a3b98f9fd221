/**
 * The oVirt engine test server: the REST API of openapi/ovirt-engine.yaml over HTTPS, strict the
 * way the real engine is (shared/OVIRT-FACTS.md).
 *
 * - SSO password grant for `admin@internal`; bearer tokens that expire; Basic auth refused.
 * - JSON as the engine writes it: sizes, counts and flags as strings, timestamps as numbers,
 *   collections wrapped in an object named after the element, `{}` when empty, absent fields
 *   absent.
 * - Requests must say `Accept: application/json` (the real engine would answer XML) and send
 *   JSON bodies as `application/json`; `Version`, when sent, must be 4.
 * - Everything that takes time on a real engine takes time here too, and is polled: a new disk
 *   is `locked` for `diskLockMs`; a transfer is `initializing` for `transferInitMs`, then
 *   `transferring` with a ticket on the imageio test daemon; finalize and cancel go through
 *   their intermediate phases; a disk removal and a VM import take a while (a job).
 *
 * @module
 */

import { join } from "node:path";
import { createImage } from "../../src/qemu_img.ts";
import { serveQemuNbd } from "../../src/qemu_nbd.ts";
import type { Server } from "../../src/process.ts";
import type { Imageio } from "./_imageio.ts";
import { parseOvf } from "./_ovf.ts";

/** Faults the engine injects (see `Faults` in mod.ts). */
export interface EngineFaults {
  failFinalize?: boolean;
  pauseTransfer?: boolean;
}

/** Options of {@linkcode Engine.start}. */
export interface EngineOptions {
  /** Where images and sockets live. */
  root: string;
  certFile: string;
  keyFile: string;
  password: string;
  storageDomains: Array<{ name: string; available: number; type: "nfs" | "iscsi" }>;
  clusters: Array<{ name: string; architecture: string }>;
  /** The hosts of the data center; `hwId` is vdsm's hardware id (`/etc/vdsm/vdsm.id`). */
  hosts: Array<{ name: string; hwId: string; status: string }>;
  existingVms: string[];
  tokenLifetimeMs: number;
  /** Overrides the inactivity timeout the client asks for, in seconds. */
  ticketInactivityTimeout: number | undefined;
  maxWriters: number;
  diskLockMs: number;
  transferInitMs: number;
  faults: () => EngineFaults;
  imageio: Imageio;
}

interface Domain {
  id: string;
  name: string;
  type: "nfs" | "iscsi";
  available: number;
  used: number;
  committed: number;
  master: boolean;
}

/** A disk as the engine keeps it. */
export interface DiskState {
  id: string;
  imageId: string;
  name: string;
  description: string | undefined;
  format: "raw" | "cow";
  sparse: boolean;
  provisionedSize: number;
  initialSize: number | undefined;
  status: "locked" | "ok" | "illegal";
  domain: Domain;
  path: string;
  reserved: number;
  transfer: TransferState | undefined;
  vmId: string | undefined;
  removing: boolean;
}

/** An image transfer as the engine keeps it. */
export interface TransferState {
  id: string;
  disk: DiskState;
  phase: string;
  direction: "upload" | "download";
  format: "raw" | "cow";
  inactivityTimeout: number;
  timeoutSec: number;
  ticketId: string | undefined;
  nbd: Server | undefined;
  transferUrl: string | undefined;
  proxyUrl: string | undefined;
  transferred: number;
  ending: Promise<void> | undefined;
  /** The host that serves it. */
  host: HostState;
  /** The client asked for that host (`host` in the request). */
  hostAsked: boolean;
}

/** A host as the engine keeps it. */
export interface HostState {
  id: string;
  name: string;
  hwId: string;
  status: string;
}

/** A VM as the engine keeps it. */
export interface VmState {
  id: string;
  name: string;
  ovf: string;
  clusterId: string;
  status: string;
  created: number;
}

interface JobState {
  id: string;
  correlationId: string | undefined;
  description: string;
  status: "started" | "finished" | "failed";
  start: number;
  end: number | undefined;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const API = "/ovirt-engine/api";
const ADMIN_ID = "fdfc627c-d875-11e0-90f0-83df133b58cc";
const TERMINAL = new Set(["finished_success", "finished_failure", "finished_cleanup"]);

/** An answer other than success: a Fault (or SSO error, or plain text) with a status. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly detail: string,
    readonly kind: "fault" | "sso" | "text" | "html" = "fault",
  ) {
    super(detail);
  }

  toResponse(): Response {
    switch (this.kind) {
      case "sso":
        return Response.json({ error_code: this.reason, error: this.detail }, {
          status: this.status,
        });
      case "text":
        return new Response(`${this.detail}\n`, {
          status: this.status,
          headers: { "Content-Type": "text/plain" },
        });
      case "html":
        return new Response(
          `<html><head><title>Error</title></head><body>${this.reason}</body></html>`,
          {
            status: this.status,
            headers: { "Content-Type": "text/html", "WWW-Authenticate": 'Bearer realm="RESTAPI"' },
          },
        );
      default:
        return Response.json({ reason: this.reason, detail: this.detail }, {
          status: this.status,
        });
    }
  }
}

/** 400 for a request the engine's validation refuses ("Operation Failed", detail in []). */
function refused(detail: string, status = 400): ApiError {
  return new ApiError(status, "Operation Failed", `[${detail}]`);
}

function notFound(id: string): ApiError {
  return new ApiError(404, "Operation Failed", `Entity not found: ${id}`);
}

function incomplete(detail: string): ApiError {
  return new ApiError(400, "Incomplete parameters", detail);
}

/** The engine. */
export class Engine implements AsyncDisposable {
  /** `https://127.0.0.1:PORT/ovirt-engine/api`. */
  readonly url: string;
  readonly #o: EngineOptions;
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #dc = { id: crypto.randomUUID(), name: "Default" };
  readonly #domains: Domain[];
  readonly #clusters: Array<{ id: string; name: string; architecture: string }>;
  readonly #hosts: HostState[];
  readonly #disks = new Map<string, DiskState>();
  readonly #transfers = new Map<string, TransferState>();
  readonly #vms = new Map<string, VmState>();
  readonly #jobs: JobState[] = [];
  readonly #tokens = new Map<string, number>();
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #ticker: ReturnType<typeof setInterval>;
  #closed = false;

  private constructor(o: EngineOptions, server: Deno.HttpServer<Deno.NetAddr>) {
    this.#o = o;
    this.#server = server;
    this.url = `https://127.0.0.1:${server.addr.port}${API}`;
    this.#domains = o.storageDomains.map((d, i) => ({
      id: crypto.randomUUID(),
      name: d.name,
      type: d.type,
      available: d.available,
      used: 0,
      committed: 0,
      master: i === 0,
    }));
    this.#clusters = o.clusters.map((c) => ({ id: crypto.randomUUID(), ...c }));
    this.#hosts = o.hosts.map((h) => ({ id: crypto.randomUUID(), ...h }));
    for (const name of o.existingVms) {
      const id = crypto.randomUUID();
      this.#vms.set(id, {
        id,
        name,
        ovf: "",
        clusterId: this.#clusters[0]?.id ?? "",
        status: "down",
        created: Date.now() - 86_400_000,
      });
    }
    this.#ticker = setInterval(() => this.#tick(), 100);
  }

  /**
   * Starts the engine on 127.0.0.1, on a free port.
   *
   * @param o Options.
   * @returns The engine; dispose it to stop it.
   */
  static async start(o: EngineOptions): Promise<Engine> {
    const cert = await Deno.readTextFile(o.certFile);
    const key = await Deno.readTextFile(o.keyFile);
    const ref: { engine?: Engine } = {};
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert,
      key,
      onListen: () => {},
      onError: (e) => new ApiError(500, "Internal Server Error", String(e)).toResponse(),
    }, (req) => ref.engine!.#handle(req));
    ref.engine = new Engine(o, server);
    return ref.engine;
  }

  /** Disks, for tests. */
  disks(): DiskState[] {
    return [...this.#disks.values()];
  }

  /** Transfers, for tests. */
  transfers(): TransferState[] {
    return [...this.#transfers.values()];
  }

  /** Hosts, for tests. */
  hosts(): HostState[] {
    return [...this.#hosts];
  }

  /** VMs, for tests. */
  vms(): VmState[] {
    return [...this.#vms.values()];
  }

  /** Stops serving, cancels pending work, stops the qemu-nbd of every transfer. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#ticker);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    await this.#server.shutdown();
    while (this.#tasks.size) await Promise.allSettled([...this.#tasks]);
    for (const t of this.#transfers.values()) await this.#endTicket(t);
  }

  // --- scheduling -----------------------------------------------------------------------

  #later(ms: number, fn: () => void | Promise<void>): void {
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#run(fn);
    }, ms);
    this.#timers.add(timer);
  }

  #run(fn: () => void | Promise<void>): void {
    const p = (async () => {
      try {
        await fn();
      } catch (e) {
        console.error(`oVirt engine test server: ${e instanceof Error ? e.stack : e}`);
      }
    })();
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p));
  }

  #tick(): void {
    const faults = this.#o.faults();
    const now = Date.now();
    for (const t of this.#transfers.values()) {
      if (t.phase !== "transferring") continue;
      const ticket = t.ticketId ? this.#o.imageio.ticket(t.ticketId) : undefined;
      const idle = ticket && ticket.inflight === 0 &&
        now - ticket.lastActivity > t.timeoutSec * 1000;
      if (faults.pauseTransfer || idle) {
        t.phase = "paused_system";
        this.#run(() => this.#endTicket(t));
      }
    }
  }

  /** Removes the transfer's ticket and stops its qemu-nbd (once). */
  #endTicket(t: TransferState): Promise<void> {
    t.ending ??= (async () => {
      if (t.ticketId) {
        const ticket = this.#o.imageio.ticket(t.ticketId);
        if (ticket) t.transferred = ticket.transferred;
        await this.#o.imageio.removeTicket(t.ticketId);
      }
      await t.nbd?.stop();
      t.nbd = undefined;
    })();
    return t.ending;
  }

  // --- HTTP -----------------------------------------------------------------------------

  async #handle(req: Request): Promise<Response> {
    try {
      return await this.#route(req);
    } catch (e) {
      if (e instanceof ApiError) return e.toResponse();
      return new ApiError(500, "Internal Server Error", String(e)).toResponse();
    }
  }

  async #route(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path === "/ovirt-engine/sso/oauth/token") return await this.#ssoToken(req);
    if (path === "/ovirt-engine/services/sso-logout") {
      if (req.method !== "GET") throw methodNotAllowed();
      this.#tokens.delete(url.searchParams.get("token") ?? "");
      return new Response("", { status: 200, headers: { "Content-Type": "text/html" } });
    }
    if (path !== API && !path.startsWith(`${API}/`)) {
      throw new ApiError(404, "Not Found", `No such resource: ${path}`, "text");
    }
    this.#authenticate(req);
    const version = req.headers.get("version");
    if (version !== null && version.trim() !== "4") {
      throw new ApiError(400, "Bad Request", `Version ${version} of the API is not supported`);
    }
    if (!/application\/json/i.test(req.headers.get("accept") ?? "")) {
      throw new ApiError(
        406,
        "Not Acceptable",
        "This test engine answers JSON only: send Accept: application/json " +
          "(the real engine would answer XML)",
        "text",
      );
    }
    const parts = path.slice(API.length).split("/").filter(Boolean);
    const [collection, id, action, extra] = parts;
    const m = req.method;
    const search = url.searchParams.get("search");
    switch (collection) {
      case undefined:
        if (m !== "GET") throw methodNotAllowed();
        return Response.json({
          product_info: {
            name: "oVirt Engine",
            vendor: "ovirt.org",
            version: { major: "4", minor: "5", build: "3", revision: "0", full_version: "4.5.3" },
          },
        });
      case "storagedomains":
        if (id !== undefined || m !== "GET") throw notFoundPath(path, m);
        return Response.json(this.#listStorageDomains(search));
      case "datacenters":
        if (id === undefined && m === "GET") return Response.json(this.#listDataCenters(search));
        if (id !== undefined && action === "clusters" && extra === undefined && m === "GET") {
          if (id !== this.#dc.id) throw notFound(id);
          return Response.json(wrap("cluster", this.#clusters.map((c) => this.#clusterJson(c))));
        }
        throw notFoundPath(path, m);
      case "clusters":
        if (id !== undefined || m !== "GET") throw notFoundPath(path, m);
        return Response.json(this.#listClusters(search));
      case "hosts":
        if (id !== undefined || m !== "GET") throw notFoundPath(path, m);
        return Response.json(this.#listHosts(search));
      case "vms":
        if (id !== undefined) throw notFoundPath(path, m);
        if (m === "GET") return Response.json(this.#listVms(search));
        if (m === "POST") return await this.#addVm(req, url);
        throw methodNotAllowed();
      case "disks":
        if (id === undefined) {
          if (m === "POST") return await this.#addDisk(req);
          throw methodNotAllowed();
        }
        if (action !== undefined) throw notFoundPath(path, m);
        if (m === "GET") return Response.json(this.#diskJson(this.#disk(id)));
        if (m === "DELETE") return this.#removeDisk(id);
        throw methodNotAllowed();
      case "imagetransfers":
        if (id === undefined) {
          if (m === "POST") return await this.#addTransfer(req);
          if (m === "GET") {
            return Response.json(
              wrap("image_transfer", this.transfers().map((t) => this.#transferJson(t))),
            );
          }
          throw methodNotAllowed();
        }
        if (action === undefined && m === "GET") {
          return Response.json(this.#transferJson(this.#transfer(id)));
        }
        if ((action === "finalize" || action === "cancel") && extra === undefined) {
          if (m !== "POST") throw methodNotAllowed();
          await readJson(req); // An action has a body, `{}` at least.
          return action === "finalize" ? this.#finalize(id) : this.#cancel(id);
        }
        throw notFoundPath(path, m);
      case "jobs":
        if (id !== undefined || m !== "GET") throw notFoundPath(path, m);
        return Response.json(this.#listJobs(search));
      default:
        throw notFoundPath(path, m);
    }
  }

  async #ssoToken(req: Request): Promise<Response> {
    if (req.method !== "POST") throw methodNotAllowed();
    const type = req.headers.get("content-type") ?? "";
    if (!/^application\/x-www-form-urlencoded\b/i.test(type)) {
      throw new ApiError(
        400,
        "invalid_request",
        `The request must be a form (application/x-www-form-urlencoded), not "${type}"`,
        "sso",
      );
    }
    const form = new URLSearchParams(await req.text());
    const grant = form.get("grant_type");
    if (grant !== "password") {
      throw new ApiError(
        400,
        "unsupported_grant_type",
        `The grant type "${grant ?? ""}" is not supported`,
        "sso",
      );
    }
    if (!(form.get("scope") ?? "").split(/\s+/).includes("ovirt-app-api")) {
      throw new ApiError(
        400,
        "invalid_scope",
        'The scope must include "ovirt-app-api" to use the REST API',
        "sso",
      );
    }
    const user = form.get("username") ?? "";
    const at = user.lastIndexOf("@");
    if (at < 0) {
      throw new ApiError(
        400,
        "access_denied",
        `Cannot authenticate user '${user}': No valid profile found in credentials..`,
        "sso",
      );
    }
    if (
      user.slice(0, at) !== "admin" || user.slice(at + 1) !== "internal" ||
      form.get("password") !== this.#o.password
    ) {
      throw new ApiError(
        400,
        "access_denied",
        `Cannot authenticate user '${user}': The username or password is incorrect..`,
        "sso",
      );
    }
    const token = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(48))))
      .replace(/[+/=]/g, (c) => ({ "+": "-", "/": "_", "=": "" })[c]!);
    const exp = Date.now() + this.#o.tokenLifetimeMs;
    this.#tokens.set(token, exp);
    return Response.json({
      access_token: token,
      scope: "ovirt-app-api ovirt-ext=token-info:validate",
      exp: String(exp),
      token_type: "Bearer",
    });
  }

  #authenticate(req: Request): void {
    const auth = req.headers.get("authorization") ?? "";
    const m = auth.match(/^Bearer\s+(\S+)$/i);
    const exp = m ? this.#tokens.get(m[1]!) : undefined;
    if (exp === undefined || exp <= Date.now()) {
      if (m) this.#tokens.delete(m[1]!);
      throw new ApiError(401, "Unauthorized", "Unauthorized", "html");
    }
  }

  // --- storage domains, data centers, clusters ------------------------------------------

  #listStorageDomains(search: string | null): unknown {
    const match = matcher(search, {
      name: (d: Domain) => [d.name],
      id: (d: Domain) => [d.id],
      datacenter: () => [this.#dc.name],
    });
    return wrap("storage_domain", this.#domains.filter(match).map((d) => this.#domainJson(d)));
  }

  #domainJson(d: Domain): unknown {
    return {
      id: d.id,
      href: `${API}/storagedomains/${d.id}`,
      name: d.name,
      type: "data",
      available: String(d.available),
      used: String(d.used),
      committed: String(d.committed),
      master: String(d.master),
      backup: "false",
      block_size: "512",
      external_status: "ok",
      storage_format: "v5",
      warning_low_space_indicator: "10",
      critical_space_action_blocker: "5",
      discard_after_delete: "false",
      supports_discard: String(d.type === "iscsi"),
      wipe_after_delete: "false",
      storage: d.type === "nfs"
        ? { type: "nfs", address: "127.0.0.1", path: `/exports/${d.name}` }
        : { type: "iscsi", volume_group: { id: d.id } },
      data_centers: {
        data_center: [{ id: this.#dc.id, href: `${API}/datacenters/${this.#dc.id}` }],
      },
    };
  }

  #listDataCenters(search: string | null): unknown {
    const match = matcher(search, {
      name: () => [this.#dc.name],
      id: () => [this.#dc.id],
      "storage.name": () => this.#domains.map((d) => d.name),
    });
    return wrap("data_center", match(this.#dc) ? [this.#dcJson()] : []);
  }

  #dcJson(): unknown {
    return {
      id: this.#dc.id,
      href: `${API}/datacenters/${this.#dc.id}`,
      name: this.#dc.name,
      description: "The default Data Center",
      local: "false",
      status: "up",
      storage_format: "v5",
      version: { major: "4", minor: "7" },
    };
  }

  #listHosts(search: string | null): unknown {
    const match = matcher(search, {
      name: (h: HostState) => [h.name],
      id: (h) => [h.id],
      hw_id: (h) => [h.hwId],
      status: (h) => [h.status],
      datacenter: () => [this.#dc.name],
      cluster: () => this.#clusters.slice(0, 1).map((c) => c.name),
    });
    const cluster = this.#clusters[0];
    return wrap(
      "host",
      this.#hosts.filter(match).map((h) => ({
        id: h.id,
        href: `${API}/hosts/${h.id}`,
        name: h.name,
        address: "127.0.0.1",
        status: h.status,
        ...(cluster ? { cluster: { id: cluster.id, href: `${API}/clusters/${cluster.id}` } } : {}),
      })),
    );
  }

  #listClusters(search: string | null): unknown {
    const match = matcher(search, {
      name: (c: { id: string; name: string }) => [c.name],
      id: (c: { id: string; name: string }) => [c.id],
      datacenter: () => [this.#dc.name],
    });
    return wrap("cluster", this.#clusters.filter(match).map((c) => this.#clusterJson(c)));
  }

  #clusterJson(c: { id: string; name: string; architecture: string }): unknown {
    return {
      id: c.id,
      href: `${API}/clusters/${c.id}`,
      name: c.name,
      description: "The default server cluster",
      cpu: c.architecture === "undefined"
        ? { architecture: "undefined" }
        : { architecture: c.architecture, type: "Intel Nehalem Family" },
      data_center: { id: this.#dc.id, href: `${API}/datacenters/${this.#dc.id}` },
      version: { major: "4", minor: "7" },
    };
  }

  // --- disks ----------------------------------------------------------------------------

  #disk(id: string): DiskState {
    const disk = this.#disks.get(id);
    if (!disk) throw notFound(id);
    return disk;
  }

  #diskJson(d: DiskState): unknown {
    let actual = 0;
    try {
      actual = (Deno.statSync(d.path).blocks ?? 0) * 512;
    } catch {
      // Being removed.
    }
    return {
      id: d.id,
      href: `${API}/disks/${d.id}`,
      name: d.name,
      alias: d.name,
      ...(d.description !== undefined ? { description: d.description } : {}),
      image_id: d.imageId,
      provisioned_size: String(d.provisionedSize),
      ...(d.initialSize !== undefined ? { initial_size: String(d.initialSize) } : {}),
      actual_size: String(actual),
      total_size: String(actual),
      format: d.format,
      ...(d.format === "cow" ? { qcow_version: "qcow2_v3" } : {}),
      sparse: String(d.sparse),
      status: d.status,
      storage_type: "image",
      content_type: "data",
      backup: "none",
      propagate_errors: "false",
      shareable: "false",
      wipe_after_delete: "false",
      storage_domains: {
        storage_domain: [{ id: d.domain.id, href: `${API}/storagedomains/${d.domain.id}` }],
      },
    };
  }

  async #addDisk(req: Request): Promise<Response> {
    const body = await readJson(req);
    const size = integer(body["provisioned_size"], "provisioned_size");
    if (size === undefined) incompleteThrow("Disk [provisionedSize|size] required for add");
    if (size! <= 0) throw refused("Cannot add Virtual Disk. Disk size must be positive.");
    const format = body["format"];
    if (format === undefined) incompleteThrow("Disk [format] required for add");
    if (format !== "raw" && format !== "cow") {
      throw new ApiError(
        400,
        "Invalid value",
        `Invalid value "${format}" for "format": expected "raw" or "cow"`,
      );
    }
    const sparse = boolean(body["sparse"], "sparse") ?? (format === "cow");
    const initialSize = integer(body["initial_size"], "initial_size");
    const refs = (body["storage_domains"] as Record<string, unknown> | undefined)?.[
      "storage_domain"
    ];
    const ref = Array.isArray(refs) ? refs[0] as Record<string, unknown> | undefined : undefined;
    if (!ref || (typeof ref["id"] !== "string" && typeof ref["name"] !== "string")) {
      incompleteThrow("Disk [storageDomains.storageDomain.id|name] required for add");
    }
    const domain = this.#domains.find((d) =>
      typeof ref!["id"] === "string" ? d.id === ref!["id"] : d.name === ref!["name"]
    );
    if (!domain) throw refused("Cannot add Virtual Disk. Storage Domain doesn't exist.");
    let id: string = crypto.randomUUID();
    if (body["id"] !== undefined) {
      if (typeof body["id"] !== "string" || !UUID.test(body["id"])) {
        throw new ApiError(400, "Invalid value", `Invalid UUID string: ${body["id"]}`);
      }
      id = body["id"].toLowerCase();
      if (this.#disks.has(id)) {
        throw refused("Cannot add Virtual Disk. The disk ID is already in use.", 409);
      }
    }
    if (format === "raw" && sparse && domain.type === "iscsi") {
      throw refused(
        "Cannot add Virtual Disk. Disk configuration (RAW Sparse) is incompatible with the " +
          "storage domain type.",
      );
    }
    if (initialSize !== undefined && (initialSize < 0 || initialSize > size! * 1.1 + 1048576)) {
      throw refused("Cannot add Virtual Disk. The initial size is invalid.");
    }
    // What the new disk takes from the domain now: all of it when preallocated; the initial
    // size (or nothing) when sparse, as thin provisioning allows.
    const needed = sparse ? (initialSize ?? 0) : size!;
    if (needed > domain.available) {
      throw refused(`Cannot add Virtual Disk. Low disk space on Storage Domain ${domain.name}.`);
    }
    const name = typeof body["name"] === "string"
      ? body["name"]
      : typeof body["alias"] === "string"
      ? body["alias"]
      : `disk-${this.#disks.size + 1}`;
    const imageId = crypto.randomUUID();
    const dir = join(this.#o.root, "storage", domain.id, "images", id);
    await Deno.mkdir(dir, { recursive: true });
    const path = join(dir, imageId);
    await createImage(path, {
      format: format === "cow" ? "qcow2" : "raw",
      size: size!,
      preallocated: !sparse,
    });
    domain.available -= needed;
    domain.used += needed;
    domain.committed += size!;
    const disk: DiskState = {
      id,
      imageId,
      name,
      description: typeof body["description"] === "string" ? body["description"] : undefined,
      format,
      sparse,
      provisionedSize: size!,
      initialSize,
      status: "locked",
      domain,
      path,
      reserved: needed,
      transfer: undefined,
      vmId: undefined,
      removing: false,
    };
    this.#disks.set(id, disk);
    this.#later(this.#o.diskLockMs, () => {
      if (disk.status === "locked" && !disk.transfer && !disk.removing) disk.status = "ok";
    });
    return created(`${API}/disks/${id}`, this.#diskJson(disk));
  }

  #removeDisk(id: string): Response {
    const disk = this.#disk(id);
    if (disk.status === "locked") {
      throw refused(
        `Cannot remove Virtual Disk: The following disks are locked: ${disk.name}. Please try ` +
          "again in a few minutes.",
        409,
      );
    }
    disk.removing = true;
    disk.status = "locked";
    this.#later(this.#o.diskLockMs, async () => {
      await Deno.remove(join(disk.path, ".."), { recursive: true }).catch(() => {});
      disk.domain.available += disk.reserved;
      disk.domain.used -= disk.reserved;
      disk.domain.committed -= disk.provisionedSize;
      this.#disks.delete(id);
    });
    return new Response(null, { status: 200 });
  }

  // --- image transfers ------------------------------------------------------------------

  #transfer(id: string): TransferState {
    const t = this.#transfers.get(id);
    if (!t) throw notFound(id);
    return t;
  }

  #transferJson(t: TransferState): unknown {
    const ticket = t.ticketId ? this.#o.imageio.ticket(t.ticketId) : undefined;
    const active = !TERMINAL.has(t.phase) && !t.phase.startsWith("finalizing");
    return {
      id: t.id,
      href: `${API}/imagetransfers/${t.id}`,
      phase: t.phase,
      direction: t.direction,
      format: t.format,
      inactivity_timeout: String(t.inactivityTimeout),
      active: String(active),
      transferred: String(ticket?.transferred ?? t.transferred),
      shallow: "false",
      timeout_policy: "legacy",
      ...(t.transferUrl ? { transfer_url: t.transferUrl } : {}),
      ...(t.proxyUrl ? { proxy_url: t.proxyUrl } : {}),
      disk: { id: t.disk.id, href: `${API}/disks/${t.disk.id}` },
      image: { id: t.disk.imageId },
      host: { id: t.host.id, href: `${API}/hosts/${t.host.id}` },
    };
  }

  async #addTransfer(req: Request): Promise<Response> {
    const body = await readJson(req);
    const ref = (body["disk"] ?? body["image"]) as Record<string, unknown> | undefined;
    if (typeof ref?.["id"] !== "string") {
      incompleteThrow("ImageTransfer [disk.id|image.id] required for add");
    }
    const disk = this.#disks.get(ref!["id"] as string);
    if (!disk) throw notFound(ref!["id"] as string);
    const direction = body["direction"] ?? "upload";
    if (direction !== "upload" && direction !== "download") {
      throw new ApiError(400, "Invalid value", `Invalid value "${direction}" for "direction"`);
    }
    const wanted = body["host"] as Record<string, unknown> | undefined;
    let host = this.#hosts.find((h) => h.status === "up");
    if (wanted !== undefined) {
      host = this.#hosts.find((h) => h.id === wanted["id"] || h.name === wanted["name"]);
      if (!host) throw refused("Cannot transfer Virtual Disk. Host doesn't exist.");
      if (host.status !== "up") {
        throw refused(`Cannot transfer Virtual Disk. Host ${host.name} is not in Up status.`);
      }
    }
    if (!host) {
      throw refused("Cannot transfer Virtual Disk. There is no active host in the Data Center.");
    }
    const format = body["format"] ?? disk.format;
    if (format !== "raw" && format !== "cow") {
      throw new ApiError(400, "Invalid value", `Invalid value "${format}" for "format"`);
    }
    if (format === "cow") {
      throw refused(
        'Not supported by this test engine: transfer format "cow" (qcow2 as is); use "raw"',
      );
    }
    const asked = integer(body["inactivity_timeout"], "inactivity_timeout") ?? 60;
    if (asked <= 0) throw refused("Cannot transfer Virtual Disk. Invalid inactivity timeout.");
    if (disk.status === "locked") {
      throw refused(
        `Cannot transfer Virtual Disk: The following disks are locked: ${disk.name}. Please ` +
          "try again in a few minutes.",
        409,
      );
    }
    if (disk.status === "illegal") {
      throw refused("Cannot transfer Virtual Disk. Disk is in illegal state.");
    }
    const t: TransferState = {
      id: crypto.randomUUID(),
      disk,
      phase: "initializing",
      direction,
      format,
      inactivityTimeout: asked,
      timeoutSec: this.#o.ticketInactivityTimeout ?? asked,
      ticketId: undefined,
      nbd: undefined,
      transferUrl: undefined,
      proxyUrl: undefined,
      transferred: 0,
      ending: undefined,
      host,
      hostAsked: wanted !== undefined,
    };
    this.#transfers.set(t.id, t);
    disk.status = "locked";
    disk.transfer = t;
    this.#later(this.#o.transferInitMs, () => this.#startTransfer(t));
    return created(`${API}/imagetransfers/${t.id}`, this.#transferJson(t));
  }

  async #startTransfer(t: TransferState): Promise<void> {
    if (t.phase !== "initializing") return;
    if (this.#o.faults().pauseTransfer) {
      t.phase = "paused_system";
      return;
    }
    const disk = t.disk;
    let nbd: Server;
    try {
      await Deno.mkdir(join(this.#o.root, "run"), { recursive: true });
      nbd = await serveQemuNbd(disk.path, {
        socket: join(this.#o.root, "run", `${t.id.slice(0, 8)}.sock`),
        format: disk.format === "cow" ? "qcow2" : "raw",
        readOnly: t.direction === "download",
        discard: disk.sparse,
        shared: this.#o.maxWriters + 8,
        name: `qemu-nbd (disk ${disk.id})`,
      });
    } catch (e) {
      console.error(`oVirt engine test server: transfer ${t.id}: ${e}`);
      t.phase = "finished_failure";
      disk.transfer = undefined;
      disk.status = "ok";
      return;
    }
    if (t.phase !== "initializing" || this.#closed) {
      await nbd.stop();
      return;
    }
    t.nbd = nbd;
    t.ticketId = crypto.randomUUID();
    this.#o.imageio.addTicket({
      id: t.ticketId,
      size: disk.provisionedSize,
      writable: t.direction === "upload",
      sparse: disk.sparse,
      nbdUri: nbd.uri,
      timeoutSec: t.timeoutSec,
    });
    t.transferUrl = `https://127.0.0.1:${this.#o.imageio.daemonPort}/images/${t.ticketId}`;
    t.proxyUrl = `https://127.0.0.1:${this.#o.imageio.proxyPort}/images/${t.ticketId}`;
    t.phase = "transferring";
  }

  #finalize(id: string): Response {
    const t = this.#transfer(id);
    if (!["transferring", "paused_system", "paused_user"].includes(t.phase)) {
      throw refused(
        `Cannot finalize Image Transfer. The transfer is in phase ${t.phase}.`,
        409,
      );
    }
    t.phase = "finalizing_success";
    this.#run(async () => {
      await this.#endTicket(t);
      this.#later(this.#o.transferInitMs, () => {
        if (this.#o.faults().failFinalize) {
          t.phase = "finalizing_failure";
          this.#later(this.#o.transferInitMs / 2, () => {
            t.phase = "finished_failure";
            t.disk.status = "illegal";
            t.disk.transfer = undefined;
          });
        } else {
          t.phase = "finished_success";
          t.disk.status = "ok";
          t.disk.transfer = undefined;
        }
      });
    });
    return Response.json({ status: "complete" });
  }

  #cancel(id: string): Response {
    const t = this.#transfer(id);
    if (TERMINAL.has(t.phase) || t.phase.startsWith("finalizing") || t.phase.startsWith("cancel")) {
      return Response.json({ status: "complete" });
    }
    t.phase = "cancelled_user";
    this.#run(async () => {
      await this.#endTicket(t);
      this.#later(this.#o.transferInitMs / 2, () => {
        t.phase = "finalizing_failure";
        this.#later(this.#o.transferInitMs / 2, () => {
          t.phase = "finished_failure";
          t.disk.status = "illegal";
          t.disk.transfer = undefined;
        });
      });
    });
    return Response.json({ status: "complete" });
  }

  // --- VMs and jobs ---------------------------------------------------------------------

  #listVms(search: string | null): unknown {
    const match = matcher(search, {
      name: (v: VmState) => [v.name],
      id: (v: VmState) => [v.id],
      cluster: (v: VmState) => [this.#clusters.find((c) => c.id === v.clusterId)?.name ?? ""],
      status: (v: VmState) => [v.status],
    });
    return wrap("vm", this.vms().filter(match).map((v) => this.#vmJson(v)));
  }

  #vmJson(v: VmState): unknown {
    return {
      id: v.id,
      href: `${API}/vms/${v.id}`,
      name: v.name,
      status: v.status,
      creation_time: v.created,
      memory: "1073741824",
      os: { type: "other" },
      cluster: { id: v.clusterId, href: `${API}/clusters/${v.clusterId}` },
    };
  }

  async #addVm(req: Request, url: URL): Promise<Response> {
    const body = await readJson(req);
    const cref = body["cluster"] as Record<string, unknown> | undefined;
    if (typeof cref?.["id"] !== "string" && typeof cref?.["name"] !== "string") {
      incompleteThrow("Vm [cluster.id|name] required for add");
    }
    const cluster = this.#clusters.find((c) =>
      typeof cref!["id"] === "string" ? c.id === cref!["id"] : c.name === cref!["name"]
    );
    if (!cluster) {
      throw refused(`Cannot add VM. Cluster ${cref!["id"] ?? cref!["name"]} doesn't exist.`);
    }
    const conf = ((body["initialization"] as Record<string, unknown> | undefined)?.[
      "configuration"
    ]) as Record<string, unknown> | undefined;
    if (!conf || typeof conf["data"] !== "string") {
      incompleteThrow("Vm [initialization.configuration.data] required for add");
    }
    if (conf!["type"] !== "ova") {
      throw new ApiError(
        400,
        "Invalid value",
        `Invalid value "${conf!["type"]}" for "initialization.configuration.type": ` +
          'this test engine imports "ova" configurations only',
      );
    }
    const ovf = conf!["data"] as string;
    let parsed;
    try {
      parsed = parseOvf(ovf);
    } catch (e) {
      throw refused(
        `Cannot add VM. Failed to parse the OVF configuration: ${(e as Error).message}`,
      );
    }
    const name = typeof body["name"] === "string" ? body["name"] : parsed.name;
    if (!name) throw refused("Cannot add VM. The VM name is required.");
    if (name.length > 64 || !/^[\p{L}\p{N}._-]+$/u.test(name)) {
      throw refused(
        "Cannot add VM. The given name contains special characters. Only lower-case and " +
          "upper-case letters, numbers, '_', '-', '.' are allowed, at most 64 of them.",
      );
    }
    if (this.vms().some((v) => v.name.toLowerCase() === name.toLowerCase())) {
      throw refused(
        "Cannot add VM. The VM name is already in use, please choose a unique name and try " +
          "again.",
        409,
      );
    }
    if (cluster.architecture === "undefined") {
      throw refused("Cannot add VM. The cluster does not have a defined architecture.");
    }
    const disks: DiskState[] = [];
    for (const diskId of parsed.diskIds) {
      const disk = this.#disks.get(diskId);
      if (!disk || disk.removing) {
        throw refused(`Cannot add VM. The disk ${diskId} named in the OVF doesn't exist.`);
      }
      if (disk.status !== "ok") {
        throw refused(
          `Cannot add VM: The following disks are locked or illegal: ${disk.name}.`,
          409,
        );
      }
      if (disk.vmId) throw refused(`Cannot add VM. The disk ${diskId} is attached to a VM.`, 409);
      disks.push(disk);
    }
    const vm: VmState = {
      id: crypto.randomUUID(),
      name,
      ovf,
      clusterId: cluster.id,
      status: "image_locked",
      created: Date.now(),
    };
    this.#vms.set(vm.id, vm);
    for (const d of disks) d.vmId = vm.id;
    const job: JobState = {
      id: crypto.randomUUID(),
      correlationId: url.searchParams.get("correlation_id") ?? undefined,
      description: `Importing VM ${name} from configuration to Cluster ${cluster.name}`,
      status: "started",
      start: Date.now(),
      end: undefined,
    };
    this.#jobs.push(job);
    this.#later(this.#o.diskLockMs, () => {
      job.status = "finished";
      job.end = Date.now();
      vm.status = "down";
    });
    return created(`${API}/vms/${vm.id}`, this.#vmJson(vm));
  }

  #listJobs(search: string | null): unknown {
    const match = matcher(search, {
      correlation_id: (j: JobState) => [j.correlationId ?? ""],
      id: (j: JobState) => [j.id],
      status: (j: JobState) => [j.status],
      description: (j: JobState) => [j.description],
    });
    return wrap(
      "job",
      this.#jobs.filter(match).map((j) => ({
        id: j.id,
        href: `${API}/jobs/${j.id}`,
        description: j.description,
        status: j.status,
        external: "false",
        auto_cleared: "true",
        start_time: j.start,
        ...(j.end !== undefined ? { end_time: j.end } : {}),
        last_updated: j.end ?? j.start,
        owner: { id: ADMIN_ID, href: `${API}/users/${ADMIN_ID}` },
      })),
    );
  }
}

// --- helpers ----------------------------------------------------------------------------

function methodNotAllowed(): ApiError {
  return new ApiError(405, "Method Not Allowed", "Method not allowed", "text");
}

function notFoundPath(path: string, method: string): ApiError {
  return new ApiError(404, "Not Found", `No resource for ${method} ${path}`, "text");
}

function incompleteThrow(detail: string): never {
  throw incomplete(detail);
}

function created(location: string, body: unknown): Response {
  return Response.json(body, { status: 201, headers: { "Location": location } });
}

/** A collection as the engine writes it: `{"disk": [...]}`, or `{}` when empty. */
function wrap(key: string, items: unknown[]): Record<string, unknown> {
  return items.length ? { [key]: items } : {};
}

async function readJson(req: Request): Promise<Record<string, unknown>> {
  const type = req.headers.get("content-type") ?? "";
  if (!/^application\/json\b/i.test(type)) {
    await req.body?.cancel();
    throw new ApiError(
      415,
      "Unsupported Media Type",
      `Content-Type "${type}" is not supported: send application/json`,
    );
  }
  const text = await req.text();
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ApiError(
      400,
      "Bad Request",
      `Cannot parse the request body: ${(e as Error).message}`,
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError(400, "Bad Request", "Cannot parse the request body: not a JSON object");
  }
  return value as Record<string, unknown>;
}

/** An integer as the engine reads it: a JSON number or a decimal string. */
function integer(v: unknown, field: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "number" && Number.isSafeInteger(v)) return v;
  if (typeof v === "string" && /^-?\d+$/.test(v.trim()) && Number.isSafeInteger(Number(v))) {
    return Number(v);
  }
  throw new ApiError(
    400,
    "Invalid value",
    `Value ${JSON.stringify(v)} of "${field}" is not an integer`,
  );
}

/** A flag as the engine reads it: a JSON boolean or "true"/"false". */
function boolean(v: unknown, field: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "boolean") return v;
  if (typeof v === "string" && /^(true|false)$/i.test(v)) return v.toLowerCase() === "true";
  throw new ApiError(
    400,
    "Invalid value",
    `Value ${JSON.stringify(v)} of "${field}" is not a boolean`,
  );
}

/**
 * A filter from an engine search query: `key=value` clauses joined with `and`; `*` matches
 * anything; values may be double-quoted; case-insensitive. Unknown keys are a 400, as on the
 * engine.
 */
function matcher<T>(
  query: string | null,
  keys: Record<string, (item: T) => string[]>,
): (item: T) => boolean {
  if (!query || !query.trim()) return () => true;
  const clauses = query.trim().split(/\s+and\s+/i).map((clause) => {
    const m = clause.match(/^\s*([\w.]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))\s*$/);
    if (!m) throw refused(`Cannot search: the search query "${query}" is invalid`);
    const get = keys[m[1]!.toLowerCase()];
    if (!get) throw refused(`Cannot search: unknown field "${m[1]}" in "${query}"`);
    const value = m[2]?.replace(/\\(.)/g, "$1") ?? m[3]!;
    const re = new RegExp(
      "^" + value.split("*").map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$",
      "i",
    );
    return (item: T) => get(item).some((v) => re.test(v));
  });
  return (item) => clauses.every((c) => c(item));
}
