/**
 * The oVirt engine's REST API, as `-o rhv` uses it: a small typed layer over the client
 * generated from `openapi/ovirt-engine.yaml` (`src/output/generated/ovirt_engine.ts`).
 *
 * - The engine writes counts, sizes and flags as strings (`"provisioned_size": "10737418240"`,
 *   `"sparse": "true"`), wraps collections in an object named after the element, writes an
 *   empty collection as `{}` and leaves out fields with no value. This module turns all of it
 *   into numbers, booleans, arrays and optional fields, and never assumes a field is there.
 * - Every request goes through one `Deno.createHttpClient({ caCerts })`: the engine's
 *   certificate is always verified (against `caCerts` when given, else the system's roots).
 * - Authentication is the SSO password grant; the bearer token is sent in a header, never in a
 *   URL except the logout's, whose errors are scrubbed. When the engine answers 401 (the token
 *   expired), the client logs in again once and repeats the request.
 * - Errors say what was asked and what the engine said (`fault.reason`, `fault.detail`), never
 *   the password or the token.
 *
 * @module
 */

import * as api from "./generated/ovirt_engine.ts";

/** Options for {@linkcode OvirtApi.login}. */
export interface OvirtApiOptions {
  /** The API URL, `https://ENGINE/ovirt-engine/api` (no user in it). */
  url: string;
  /** The user, e.g. `admin@internal`. */
  username: string;
  /** The password. */
  password: string;
  /** PEM certificates to trust instead of the system's roots. */
  caCerts?: string[];
  /** Aborts every request. */
  signal?: AbortSignal;
  /**
   * Milliseconds one request may take.
   * @default 120000
   */
  timeout?: number;
  /** Debug messages (never with secrets). */
  debug?: (message: string) => void;
}

/** A storage domain. */
export interface StorageDomainInfo {
  id: string;
  name: string;
  /** data, iso, export, ... */
  type?: string;
  /** nfs, iscsi, fcp, glusterfs, posixfs, localfs, ... */
  storageType?: string;
  /** Free bytes. */
  available?: number;
  /** Used bytes. */
  used?: number;
}

/** A data center. */
export interface DataCenterInfo {
  id: string;
  name?: string;
  status?: string;
}

/** A host. */
export interface HostInfo {
  id: string;
  name?: string;
}

/** A cluster. */
export interface ClusterInfo {
  id: string;
  name?: string;
  /** x86_64, ppc64, ..., or `undefined` (the engine's word) for a cluster without hosts. */
  architecture?: string;
}

/** A disk. */
export interface DiskInfo {
  id: string;
  name?: string;
  /** The image (volume) id. */
  imageId?: string;
  /** locked, ok, illegal. */
  status?: string;
  format?: string;
  sparse?: boolean;
  provisionedSize?: number;
  actualSize?: number;
}

/** An image transfer. */
export interface TransferInfo {
  id: string;
  /** initializing, transferring, paused_system, finished_success, ... */
  phase?: string;
  /** The imageio daemon's URL. */
  transferUrl?: string;
  /** The imageio proxy's URL. */
  proxyUrl?: string;
  /** The host that serves it. */
  hostId?: string;
}

/** A job. */
export interface JobInfo {
  id: string;
  /** started, finished, failed, aborted, unknown. */
  status?: string;
  description?: string;
}

/** What {@linkcode OvirtApi.addDisk} sends. */
export interface DiskSpec {
  /** A chosen disk UUID. */
  id?: string;
  name: string;
  description?: string;
  /** Virtual size in bytes. */
  provisionedSize: number;
  /** Bytes allocated up front (qcow2 on block storage). */
  initialSize?: number;
  format: "raw" | "cow";
  sparse: boolean;
  storageDomainId: string;
}

/** An answer of the engine that is an error. */
export class EngineError extends Error {
  /** The HTTP status (0 when the engine could not be reached). */
  readonly status: number;

  /**
   * @param message What failed and why.
   * @param status The HTTP status.
   * @param options The cause.
   */
  constructor(message: string, status: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "EngineError";
    this.status = status;
  }
}

type Result = { status: number; data?: unknown; headers?: Headers };
type Opts = {
  baseUrl: string;
  fetch: typeof fetch;
  headers: Record<string, string>;
  signal: AbortSignal;
};

/**
 * A logged-in session with the engine.
 *
 * @example
 * ```ts ignore
 * import { OvirtApi } from "./ovirt_api.ts";
 * await using engine = await OvirtApi.login({
 *   url: "https://engine.example/ovirt-engine/api",
 *   username: "admin@internal",
 *   password: (await Deno.readTextFile("password.txt")).trimEnd(),
 * });
 * console.log(await engine.storageDomain("data"));
 * ```
 */
export class OvirtApi implements AsyncDisposable {
  /** `https://ENGINE`, for messages. */
  readonly origin: string;
  readonly #base: string;
  readonly #options: OvirtApiOptions;
  readonly #client: Deno.HttpClient;
  #token: string | undefined;
  #closed = false;

  private constructor(options: OvirtApiOptions) {
    const url = new URL(options.url);
    this.origin = url.origin;
    // The generated client's paths start at /ovirt-engine: /api/..., /sso/..., /services/...
    this.#base = url.origin + url.pathname.replace(/\/+$/, "").replace(/\/api$/, "");
    this.#options = options;
    this.#client = Deno.createHttpClient(options.caCerts ? { caCerts: options.caCerts } : {});
  }

  /**
   * Logs in.
   *
   * @param options URL, user, password, certificates.
   * @returns The session; dispose it to log out.
   * @throws {EngineError} When the engine cannot be reached or refuses the user.
   */
  static async login(options: OvirtApiOptions): Promise<OvirtApi> {
    const engine = new OvirtApi(options);
    try {
      await engine.#login();
    } catch (e) {
      engine.#client.close();
      throw e;
    }
    return engine;
  }

  async #login(): Promise<void> {
    const { username, password } = this.#options;
    const res = await this.#call("log in", () =>
      api.ssoToken(
        { grant_type: "password", scope: "ovirt-app-api", username, password },
        this.#opts(false),
      ));
    const body = obj(res.data);
    const token = str(body.access_token);
    if (res.status !== 200 || !token) {
      const why = str(body.error) ?? str(body.error_description) ?? `HTTP ${res.status}`;
      throw new EngineError(
        `Cannot log in to the oVirt engine at ${this.origin} as "${username}": ${this.#scrub(why)}`,
        res.status === 200 ? 401 : res.status,
      );
    }
    this.#token = token;
    this.#options.debug?.(`logged in to ${this.origin} as "${username}"`);
  }

  /** Logs out (revokes the token). Errors are reported through `debug` only. */
  async logout(): Promise<void> {
    const token = this.#token;
    this.#token = undefined;
    if (!token) return;
    try {
      await this.#call("log out", () => api.ssoLogout(token, this.#opts(false)));
      this.#options.debug?.(`logged out of ${this.origin}`);
    } catch (e) {
      this.#options.debug?.(`cannot log out of ${this.origin}: ${this.#scrub(String(e))}`);
    }
  }

  /** Logs out and releases the HTTP client. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.logout();
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }

  /**
   * Finds a storage domain by name.
   * @param name Its name.
   * @returns It, or undefined when there is none.
   */
  async storageDomain(name: string): Promise<StorageDomainInfo | undefined> {
    const res = await this.#get(
      `look up storage domain "${name}"`,
      (o) => api.listStorageDomains({ search: `name=${quoteSearch(name)}` }, o),
    );
    const sd = list(res.data, "storage_domain").map(obj).find((d) => str(d.name) === name);
    if (!sd || !str(sd.id)) return undefined;
    const storage = obj(sd.storage);
    return defined({
      id: str(sd.id)!,
      name,
      type: str(sd.type),
      storageType: str(storage.type),
      available: num(sd.available),
      used: num(sd.used),
    });
  }

  /**
   * Finds the data center a storage domain is attached to.
   * @param storageName The storage domain's name.
   * @returns It, or undefined.
   */
  async dataCenterOfStorage(storageName: string): Promise<DataCenterInfo | undefined> {
    const res = await this.#get(
      `look up the data center of "${storageName}"`,
      (o) => api.listDataCenters({ search: `storage.name=${quoteSearch(storageName)}` }, o),
    );
    const dc = list(res.data, "data_center").map(obj).find((d) => str(d.id));
    return dc
      ? defined({ id: str(dc.id)!, name: str(dc.name), status: str(dc.status) })
      : undefined;
  }

  /**
   * Lists the clusters of a data center.
   * @param dataCenterId The data center.
   * @returns Its clusters.
   */
  async clustersOf(dataCenterId: string): Promise<ClusterInfo[]> {
    const res = await this.#get(
      "list the clusters of the data center",
      (o) => api.listDataCenterClusters(dataCenterId, o),
    );
    return list(res.data, "cluster").map(obj).filter((c) => str(c.id)).map((c) =>
      defined({
        id: str(c.id)!,
        name: str(c.name),
        architecture: str(obj(c.cpu).architecture),
      })
    );
  }

  /**
   * Finds the host of a hardware id (`/etc/vdsm/vdsm.id`) among the hosts that are up in a
   * data center.
   * @param hardwareId The host's hardware id.
   * @param dataCenter The data center's name.
   * @returns It, or undefined when no such host is up there.
   */
  async upHost(hardwareId: string, dataCenter: string): Promise<HostInfo | undefined> {
    const search = `hw_id=${quoteSearch(hardwareId)} and datacenter=${
      quoteSearch(dataCenter)
    } and status=up`;
    const res = await this.#get(
      `look up this host (hardware id ${hardwareId}) in data center "${dataCenter}"`,
      (o) => api.listHosts({ search }, o),
    );
    const host = list(res.data, "host").map(obj).find((h) => str(h.id));
    return host ? defined({ id: str(host.id)!, name: str(host.name) }) : undefined;
  }

  /**
   * Tells whether a VM of this name exists.
   * @param name The name.
   * @returns True when one does.
   */
  async vmExists(name: string): Promise<boolean> {
    const res = await this.#get(
      `look up VM "${name}"`,
      (o) => api.listVms({ search: `name=${quoteSearch(name)}` }, o),
    );
    // The search is case-insensitive and may match patterns: compare the names.
    return list(res.data, "vm").map(obj).some((v) => str(v.name) === name);
  }

  /**
   * Reads a disk.
   * @param id The disk id.
   * @returns It, or undefined when there is no such disk.
   */
  async disk(id: string): Promise<DiskInfo | undefined> {
    const res = await this.#request(`read disk ${id}`, (o) => api.getDisk(id, o), [200, 404]);
    return res.status === 404 ? undefined : diskInfo(res.data, id);
  }

  /**
   * Creates a disk (it starts `locked`).
   * @param spec What to create.
   * @returns The disk.
   */
  async addDisk(spec: DiskSpec): Promise<DiskInfo> {
    const res = await this.#request(
      `create disk "${spec.name}"`,
      (o) =>
        api.addDisk({
          ...(spec.id ? { id: spec.id } : {}),
          name: spec.name,
          alias: spec.name,
          ...(spec.description ? { description: spec.description } : {}),
          provisioned_size: spec.provisionedSize,
          ...(spec.initialSize !== undefined ? { initial_size: spec.initialSize } : {}),
          format: spec.format,
          sparse: spec.sparse,
          storage_domains: { storage_domain: [{ id: spec.storageDomainId }] },
        }, o),
      [200, 201, 202],
    );
    const disk = diskInfo(res.data, spec.id);
    if (!disk.id) throw new EngineError(`The engine created disk "${spec.name}" without an id`, 0);
    return disk;
  }

  /**
   * Removes a disk.
   * @param id The disk.
   * @returns `removed`, `gone` (there was no such disk), or `locked` (try again later).
   */
  async removeDisk(id: string): Promise<"removed" | "gone" | "locked"> {
    const res = await this.#request(
      `remove disk ${id}`,
      (o) => api.removeDisk(id, o),
      [200, 202, 204, 404, 409],
    );
    return res.status === 404 ? "gone" : res.status === 409 ? "locked" : "removed";
  }

  /**
   * Starts an upload to a disk.
   * @param diskId The disk.
   * @param inactivityTimeout Seconds of inactivity after which the engine gives up.
   * @param hostId The host to serve it; else the engine picks one.
   * @returns The transfer.
   */
  async addUpload(
    diskId: string,
    inactivityTimeout: number,
    hostId?: string,
  ): Promise<TransferInfo> {
    const res = await this.#request(
      `start an upload to disk ${diskId}`,
      (o) =>
        api.addImageTransfer({
          disk: { id: diskId },
          ...(hostId ? { host: { id: hostId } } : {}),
          direction: "upload",
          format: "raw",
          inactivity_timeout: inactivityTimeout,
        }, o),
      [200, 201, 202],
    );
    const t = transferInfo(res.data);
    if (!t) {
      throw new EngineError(`The engine started an upload to disk ${diskId} without an id`, 0);
    }
    return t;
  }

  /**
   * Reads a transfer.
   * @param id The transfer.
   * @returns It, or undefined when the engine no longer has it.
   */
  async transfer(id: string): Promise<TransferInfo | undefined> {
    const res = await this.#request(
      `read transfer ${id}`,
      (o) => api.getImageTransfer(id, o),
      [200, 404],
    );
    return res.status === 404 ? undefined : transferInfo(res.data) ?? { id };
  }

  /**
   * Finalizes a transfer.
   * @param id The transfer.
   * @returns False when the engine no longer has it.
   */
  async finalizeTransfer(id: string): Promise<boolean> {
    const res = await this.#request(
      `finalize transfer ${id}`,
      (o) => api.finalizeImageTransfer(id, {}, o),
      [200, 202, 204, 404],
    );
    return res.status !== 404;
  }

  /**
   * Cancels a transfer.
   * @param id The transfer.
   * @returns False when the engine no longer has it.
   */
  async cancelTransfer(id: string): Promise<boolean> {
    const res = await this.#request(
      `cancel transfer ${id}`,
      (o) => api.cancelImageTransfer(id, {}, o),
      [200, 202, 204, 404],
    );
    return res.status !== 404;
  }

  /**
   * Creates a VM from an OVF.
   * @param clusterId The cluster.
   * @param ovf The OVF document.
   * @param correlationId Names the jobs of this request.
   * @returns The VM's id, when the engine says it.
   */
  async addVm(clusterId: string, ovf: string, correlationId: string): Promise<string | undefined> {
    const res = await this.#request(
      "create the VM",
      (o) =>
        api.addVm(
          {
            cluster: { id: clusterId },
            initialization: { configuration: { type: "ova", data: ovf } },
          },
          { correlationId },
          o,
        ),
      [200, 201, 202],
    );
    return str(obj(res.data).id);
  }

  /**
   * Lists the jobs of a correlation id.
   * @param correlationId The id given with the request.
   * @returns The jobs.
   */
  async jobs(correlationId: string): Promise<JobInfo[]> {
    const res = await this.#get(
      "list the jobs",
      (o) => api.listJobs({ search: `correlation_id=${quoteSearch(correlationId)}` }, o),
    );
    return list(res.data, "job").map(obj).filter((j) => str(j.id)).map((j) =>
      defined({ id: str(j.id)!, status: str(j.status), description: str(j.description) })
    );
  }

  // ---------------------------------------------------------------------------------------

  #opts(auth: boolean): Opts {
    const timeout = AbortSignal.timeout(this.#options.timeout ?? 120_000);
    const signal = this.#options.signal
      ? AbortSignal.any([this.#options.signal, timeout])
      : timeout;
    const client = this.#client;
    return {
      baseUrl: this.#base,
      fetch: (input, init) => fetch(input, { ...init, client }),
      headers: {
        Accept: "application/json",
        Version: "4",
        ...(auth && this.#token ? { Authorization: `Bearer ${this.#token}` } : {}),
      },
      signal,
    };
  }

  #get(
    what: string,
    fn: (opts: Opts) => Promise<Result>,
  ): Promise<Result> {
    return this.#request(what, fn, [200]);
  }

  /** Sends an authenticated request, logging in again once on 401. */
  async #request(
    what: string,
    fn: (opts: Opts) => Promise<Result>,
    ok: number[],
  ): Promise<Result> {
    let res = await this.#call(what, () => fn(this.#opts(true)));
    if (res.status === 401) {
      this.#options.debug?.(`the engine answered 401 to "${what}": logging in again`);
      await this.#login();
      res = await this.#call(what, () => fn(this.#opts(true)));
    }
    if (!ok.includes(res.status)) {
      const fault = obj(res.data);
      const detail = [str(fault.reason), str(fault.detail)].filter(Boolean).join(": ") ||
        (typeof res.data === "string" ? res.data.trim().slice(0, 300) : "");
      const why = res.status === 401
        ? "the engine refused the session (401) even after logging in again"
        : `${res.status}${detail ? ` ${detail}` : ""}`;
      throw new EngineError(
        `The oVirt engine at ${this.origin} cannot ${what}: ${this.#scrub(why)}`,
        res.status,
      );
    }
    return res;
  }

  /** Runs a request, turning network failures into errors that name no secret. */
  async #call(what: string, fn: () => Promise<Result>): Promise<Result> {
    try {
      return await fn();
    } catch (e) {
      if (this.#options.signal?.aborted) throw this.#options.signal.reason;
      let why = e instanceof Error ? e.message : String(e);
      // fetch says "fetch failed"; what failed is in the causes.
      for (let c = e instanceof Error ? e.cause : undefined, n = 0; c && n < 4; n++) {
        if (!(c instanceof Error)) break;
        why += `: ${c.message}`;
        c = c.cause;
      }
      if (e instanceof DOMException && e.name === "TimeoutError") why = "no answer in time";
      if (e instanceof SyntaxError) why = `the answer is not JSON (${why})`;
      // fetch's messages quote the URL, which for the logout holds the token.
      why = why.replace(/ for url \([^)]*\)/g, "");
      throw new EngineError(
        `Cannot reach the oVirt engine at ${this.origin} (to ${what}): ${this.#scrub(why)}`,
        0,
        { cause: e },
      );
    }
  }

  /** Removes the password and the token from a text. */
  #scrub(text: string): string {
    let out = text;
    for (const secret of [this.#options.password, this.#token]) {
      if (secret && secret.length >= 4) out = out.replaceAll(secret, "***");
    }
    return out;
  }
}

// -----------------------------------------------------------------------------------------
// The engine's JSON, normalized.

type Obj = Record<string, unknown>;

function obj(v: unknown): Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? v as Obj : {};
}

/** A collection: `{"disk": [...]}`, `{}` when empty, or a lone object instead of a list. */
function list(data: unknown, key: string): unknown[] {
  const v = obj(data)[key];
  if (Array.isArray(v)) return v;
  return v === undefined || v === null ? [] : [v];
}

function str(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return undefined;
}

/**
 * A number the engine wrote as a string or a number.
 * @param v The value.
 * @returns The number, or undefined when absent or not a number.
 */
export function num(v: unknown): number | undefined {
  if (typeof v === "number") return Number.isFinite(v) ? v : undefined;
  if (typeof v === "string" && /^\s*-?\d+(\.\d+)?\s*$/.test(v)) return Number(v);
  return undefined;
}

/**
 * A flag the engine wrote as a string or a boolean.
 * @param v The value.
 * @returns The flag, or undefined when absent.
 */
export function bool(v: unknown): boolean | undefined {
  if (typeof v === "boolean") return v;
  if (typeof v === "string") {
    const s = v.trim().toLowerCase();
    if (s === "true") return true;
    if (s === "false") return false;
  }
  return undefined;
}

function diskInfo(data: unknown, fallbackId?: string): DiskInfo {
  const d = obj(data);
  return defined({
    id: str(d.id) ?? fallbackId ?? "",
    name: str(d.name) ?? str(d.alias),
    imageId: str(d.image_id),
    status: str(d.status),
    format: str(d.format),
    sparse: bool(d.sparse),
    provisionedSize: num(d.provisioned_size),
    actualSize: num(d.actual_size),
  });
}

function transferInfo(data: unknown): TransferInfo | undefined {
  const t = obj(data);
  const id = str(t.id);
  if (!id) return undefined;
  return defined({
    id,
    phase: str(t.phase),
    transferUrl: str(t.transfer_url),
    proxyUrl: str(t.proxy_url),
    hostId: str(obj(t.host).id),
  });
}

/** Drops undefined fields (the project compiles with exactOptionalPropertyTypes). */
function defined<T extends object>(o: { [K in keyof T]: T[K] | undefined }): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/** Quotes a value for the engine's search language when it holds spaces or quotes. */
function quoteSearch(value: string): string {
  return /^[\w.@:-]+$/.test(value) ? value : `"${value.replaceAll('"', '\\"')}"`;
}
