/**
 * `-o rhv` (also `rhv-upload`, `ovirt`, `ovirt-upload`): uploads the disks to an oVirt / RHV
 * storage domain through imageio and creates the VM from an OVF, as virt-v2v's
 * `-o rhv-upload` does, without Python or nbdkit in between.
 *
 *     -o rhv -oc https://[USER@]ENGINE/ovirt-engine/api -op PASSWORD_FILE -os STORAGE_DOMAIN
 *       [-of raw|qcow2] [-oa sparse|preallocated] [-on NAME]
 *       [-oo rhv-cafile=CA.pem] [-oo rhv-cluster=NAME] [-oo rhv-direct[=true|false]]
 *       [-oo rhv-verifypeer[=true]] [-oo rhv-disk-uuid=UUID ...]
 *
 * The user comes from the URL (`https://admin@internal@engine/...`), else `admin@internal`; the
 * password only from the file. `ovirt-*` spellings of the `-oo` keys are accepted too.
 *
 * Transport: by default the imageio daemon (`transfer_url`) is used, and the proxy
 * (`proxy_url`) when the daemon cannot be reached; `rhv-direct` insists on the daemon,
 * `rhv-direct=false` (or `rhv-proxy`) goes through the proxy. TLS is always verified, for the
 * engine and imageio alike, against `rhv-cafile` (the engine's CA) or else the system's roots:
 * `rhv-verifypeer=false` is refused rather than silently ignored.
 *
 * 1. {@linkcode rhvOutput.parseOptions} checks all options and reads the password and CA files.
 * 2. `setup` logs in and checks everything before it creates anything: the storage domain
 *    exists, is a data domain, and has room for the disks (see {@linkcode spaceNeeded}), its data
 *    center, the cluster in that data center and a defined CPU architecture, the VM name is
 *    free, the chosen disk UUIDs are free; when this machine is an oVirt host that is up in
 *    that data center (`/etc/vdsm/vdsm.id`), the transfers are asked of it. Then, per disk:
 *    `POST /disks` (raw: sparse unless preallocated; qcow2 → `cow`, sparse, `initial_size` = the
 *    virtual size as virt-v2v sends it), wait for `ok`, `POST /imagetransfers` (upload, raw,
 *    inactivity timeout 3600 s, this host if it is one), wait while `initializing`
 *    (`paused_system` → cancel and fail), and open the imageio target.
 * 3. `finalize`: finalize every transfer and wait for `finished_success` (a 404 after finalize
 *    is an older engine: then the disk being `ok` means success), write the OVF with the disks'
 *    image ids, `POST /vms` with a correlation id and wait until none of its jobs is `started`,
 *    log out.
 * 4. Disposing without finalize (a failure, Ctrl-C) cancels the transfers, removes the disks and
 *    logs out. Failures in `setup` and `finalize` say what failed and what was cleaned up; for a
 *    failed copy the pipeline calls `abort()` first, so its error says it too; an interrupt is
 *    reported with a warning naming what was removed.
 *
 * @module
 */

import { fsReason, UsageError } from "../errors.ts";
import type { RunContext } from "../input/types.ts";
import { formatBytes } from "../progress.ts";
import type { Vm } from "../vm.ts";
import { type ImageioTarget, openImageio } from "./imageio.ts";
import {
  type ClusterInfo,
  type DataCenterInfo,
  EngineError,
  type HostInfo,
  OvirtApi,
  type StorageDomainInfo,
} from "./ovirt_api.ts";
import { createOvf, type OvfDisk } from "./ovf.ts";
import { parseDiskOptions } from "./_options.ts";
import type { Output, OutputCli, OutputSession, PreparedOutput } from "./types.ts";

const GiB = 1024 * 1024 * 1024;
/** Seconds of inactivity after which the engine gives up on a transfer. */
const INACTIVITY_TIMEOUT = 3600;
/** Storage types whose disks are files: a new sparse disk there reads zeroes unwritten. */
const FILE_STORAGE = new Set(["nfs", "glusterfs", "posixfs", "localfs"]);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NIL_UUID = "00000000-0000-0000-0000-000000000000";
/**
 * Where an oVirt host keeps its hardware id (vdsm's); `VMSHIFT_VDSM_ID_FILE` names another
 * file (vmshift in a container that sees the host's /etc/vdsm elsewhere; the tests).
 */
const VDSM_ID = "/etc/vdsm/vdsm.id";

/** The checked options of `-o rhv`. */
export interface RhvOptions {
  /** `-o` as given (rhv, rhv-upload, ovirt, ovirt-upload), for messages. */
  mode: string;
  /** The API URL without a user: `https://ENGINE/ovirt-engine/api`. */
  apiUrl: string;
  /** The user. */
  username: string;
  /** The password, from `-op`. */
  password: string;
  /** `-os`: the storage domain's name. */
  storage: string;
  /** `-of`. */
  format: "raw" | "qcow2";
  /** `-oa preallocated`. */
  preallocated: boolean;
  /** `-oo rhv-cafile`: its certificates. */
  caCerts?: string[];
  /** `-oo rhv-cafile`: its path. */
  caFile?: string;
  /** `-oo rhv-cluster`. */
  cluster: string;
  /** `daemon`: transfer_url only; `proxy`: proxy_url only; `auto`: daemon, else proxy. */
  transport: "auto" | "daemon" | "proxy";
  /** `-oo rhv-disk-uuid`, in order. */
  diskUuids: string[];
}

/**
 * Checks the command line of `-o rhv` and reads the password and CA files.
 *
 * @param cli The output options.
 * @returns The checked options.
 * @throws {UsageError} For anything missing or wrong.
 */
export function parseRhvOptions(cli: OutputCli): RhvOptions {
  const o = `-o ${cli.mode}`;
  if (!cli.conn) {
    throw new UsageError(
      `${o} needs the engine's API URL: -oc https://ENGINE/ovirt-engine/api`,
    );
  }
  let url: URL;
  try {
    url = new URL(cli.conn);
  } catch {
    throw new UsageError(
      `Bad -oc "${cli.conn}": expected a URL such as https://ENGINE/ovirt-engine/api`,
    );
  }
  if (url.protocol !== "https:") {
    throw new UsageError(`Bad -oc "${redactUrl(url)}": the engine is reached over https`);
  }
  if (url.password) {
    throw new UsageError(
      `Bad -oc: do not put the password in the URL, where other users can see it: use -op FILE`,
    );
  }
  if (!/\/api\/?$/.test(url.pathname)) {
    throw new UsageError(
      `Bad -oc "${redactUrl(url)}": expected the API URL, https://ENGINE/ovirt-engine/api`,
    );
  }
  if (url.search || url.hash) {
    throw new UsageError(`Bad -oc "${redactUrl(url)}": the URL takes no query or fragment`);
  }
  const username = url.username ? decodeURIComponent(url.username) : "admin@internal";
  url.username = "";
  const apiUrl = url.href.replace(/\/$/, "");

  if (!cli.passwordFile) {
    throw new UsageError(`${o} needs the engine password in a file: -op FILE`);
  }
  const password = readSmallFile(cli.passwordFile, "-op", "the password file").replace(
    /[\r\n\s]+$/,
    "",
  );
  if (!password) throw new UsageError(`The password file "${cli.passwordFile}" is empty`);

  if (!cli.storage) {
    throw new UsageError(`${o} needs the storage domain: -os STORAGE_DOMAIN`);
  }
  const { format, preallocated } = parseDiskOptions(cli);

  let caFile: string | undefined;
  let cluster: string | undefined;
  let transport: RhvOptions["transport"] | undefined;
  const diskUuids: string[] = [];
  for (const [rawKey, value] of cli.options) {
    const key = rawKey.replace(/^ovirt-/, "rhv-");
    const once = (v: unknown) => {
      if (v !== undefined) throw new UsageError(`-oo ${rawKey} given more than once`);
    };
    switch (key) {
      case "rhv-cafile":
        once(caFile);
        if (!value) throw new UsageError(`-oo ${rawKey} needs a file: -oo ${rawKey}=CA.pem`);
        caFile = value;
        break;
      case "rhv-cluster":
        once(cluster);
        if (!value) throw new UsageError(`-oo ${rawKey} needs a name: -oo ${rawKey}=NAME`);
        cluster = value;
        break;
      case "rhv-direct":
        once(transport);
        transport = parseBool(rawKey, value) ? "daemon" : "proxy";
        break;
      case "rhv-proxy":
        once(transport);
        transport = parseBool(rawKey, value) ? "proxy" : "daemon";
        break;
      case "rhv-verifypeer":
        if (!parseBool(rawKey, value)) {
          throw new UsageError(
            `-oo ${rawKey}=false is not supported: vmshift always verifies the engine's ` +
              `certificate; give the engine's CA with -oo rhv-cafile=CA.pem`,
          );
        }
        break;
      case "rhv-disk-uuid": {
        if (!UUID_RE.test(value) || value === NIL_UUID) {
          throw new UsageError(`Bad -oo ${rawKey}="${value}": expected a UUID`);
        }
        const id = value.toLowerCase();
        if (diskUuids.includes(id)) throw new UsageError(`-oo ${rawKey}=${value} given twice`);
        diskUuids.push(id);
        break;
      }
      default:
        throw new UsageError(
          `Unknown option "-oo ${rawKey}" for ${o}: it takes rhv-cafile, rhv-cluster, ` +
            `rhv-direct, rhv-verifypeer, rhv-disk-uuid`,
        );
    }
  }
  let caCerts: string[] | undefined;
  if (caFile !== undefined) {
    const pem = readSmallFile(caFile, "-oo rhv-cafile", "the CA file");
    if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
      throw new UsageError(`The CA file "${caFile}" holds no PEM certificate`);
    }
    caCerts = [pem];
  }
  return {
    mode: cli.mode,
    apiUrl,
    username,
    password,
    storage: cli.storage,
    format,
    preallocated,
    ...(caCerts ? { caCerts, caFile: caFile! } : {}),
    cluster: cluster ?? "Default",
    transport: transport ?? "auto",
    diskUuids,
  };
}

/** The `-o rhv` output. */
export const rhvOutput: Output = {
  mode: "rhv",
  parseOptions(cli: OutputCli): PreparedOutput {
    const opts = parseRhvOptions(cli);
    return {
      description: `-o ${opts.mode} -oc ${opts.apiUrl} -os ${opts.storage}`,
      setup: (vm, ctx) => RhvSession.create(vm, opts, ctx),
    };
  },
};

/**
 * The free space `setup` asks of the storage domain, with the reason for messages.
 *
 * - Preallocated disks: their whole virtual size, which the engine allocates.
 * - qcow2 disks on block storage: their virtual size too, since that is the `initial_size` we
 *   ask for (the amount of data is not known before the copy, so virt-v2v asks the same) and
 *   block storage allocates it up front.
 * - Sparse disks on file storage: the data is not known before the copy, so only a floor:
 *   1 GiB, or the disks' whole size when smaller.
 *
 * @param sizes The disks' virtual sizes.
 * @param options Format, allocation and whether the domain is file storage.
 * @returns Bytes needed and how that was reckoned.
 * @example
 * ```ts
 * import { spaceNeeded } from "./rhv.ts";
 * const n = spaceNeeded([2 ** 34], { format: "raw", preallocated: true, fileStorage: true });
 * if (n.bytes !== 2 ** 34) throw new Error();
 * ```
 */
export function spaceNeeded(
  sizes: number[],
  options: { format: "raw" | "qcow2"; preallocated: boolean; fileStorage: boolean },
): { bytes: number; why: string } {
  const total = sizes.reduce((a, b) => a + b, 0);
  if (options.preallocated && options.format === "raw") {
    return { bytes: total, why: "the preallocated disks' full size" };
  }
  if (options.format === "qcow2" && !options.fileStorage) {
    return { bytes: total, why: "the qcow2 disks' initial size on block storage" };
  }
  return {
    bytes: Math.min(total, GiB),
    why: "a floor of 1 GiB for sparse disks, whose data is not known before the copy",
  };
}

interface Transfer {
  id: string;
  diskIndex: number;
  finished: boolean;
}

/** One run's objects on the engine, and their undoing. */
class RhvSession implements OutputSession {
  readonly targets: ImageioTarget[] = [];
  readonly #vm: Vm;
  readonly #opts: RhvOptions;
  readonly #ctx: RunContext;
  readonly #engine: OvirtApi;
  /** Disks created, in disk order. */
  readonly #disks: string[] = [];
  readonly #transfers: Transfer[] = [];
  #sd!: StorageDomainInfo;
  #dcId!: string;
  #cluster!: ClusterInfo;
  /** This machine, when it is an oVirt host that is up in the storage domain's data center. */
  #host: HostInfo | undefined;
  #committed = false;
  #undone = false;

  private constructor(vm: Vm, opts: RhvOptions, ctx: RunContext, engine: OvirtApi) {
    this.#vm = vm;
    this.#opts = opts;
    this.#ctx = ctx;
    this.#engine = engine;
  }

  static async create(vm: Vm, opts: RhvOptions, ctx: RunContext): Promise<RhvSession> {
    if (opts.diskUuids.length && opts.diskUuids.length !== vm.disks.length) {
      throw new UsageError(
        `The number of -oo rhv-disk-uuid options (${opts.diskUuids.length}) must match the ` +
          `number of disks of the guest (${vm.disks.length})`,
      );
    }
    // The engine is not given ctx.signal: clean-up after an interrupt still needs it. Steps
    // check the signal between requests instead.
    const engine = await OvirtApi.login({
      url: opts.apiUrl,
      username: opts.username,
      password: opts.password,
      ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      debug: ctx.debug,
    }).catch((e) => {
      throw explainTls(e, opts);
    });
    const session = new RhvSession(vm, opts, ctx, engine);
    try {
      await session.#precheck();
      for (const i of vm.disks.keys()) await session.#createDisk(i);
    } catch (e) {
      throw await session.#fail(e);
    }
    return session;
  }

  /** Everything that can be checked before anything is created. */
  async #precheck(): Promise<void> {
    const { storage, cluster: clusterName } = this.#opts;
    const engine = this.#engine;
    const signal = this.#ctx.signal;
    const sd = await engine.storageDomain(storage);
    if (!sd) throw new Error(`Storage domain "${storage}" not found on ${engine.origin}`);
    if (sd.type && sd.type !== "data") {
      throw new Error(
        `Storage domain "${storage}" is a ${sd.type} domain: disks go to a data domain`,
      );
    }
    this.#sd = sd;
    if (this.#opts.format === "raw" && this.#sparse && sd.storageType && !this.#fileStorage) {
      // oVirt refuses thin raw disks on block storage: say so before creating anything.
      throw new Error(
        `Storage domain "${storage}" is block storage (${sd.storageType}), where oVirt has no ` +
          `sparse raw disks: use -of qcow2, or -oa preallocated`,
      );
    }
    signal.throwIfAborted();

    const dc = await engine.dataCenterOfStorage(storage);
    if (!dc) throw new Error(`Storage domain "${storage}" is not attached to any data center`);
    this.#dcId = dc.id;
    this.#host = await this.#thisHost(dc);
    const clusters = await engine.clustersOf(dc.id);
    const cluster = clusters.find((c) => c.name === clusterName);
    if (!cluster) {
      const names = clusters.map((c) => `"${c.name ?? c.id}"`).join(", ");
      throw new Error(
        `Cluster "${clusterName}" not found in the data center${dc.name ? ` "${dc.name}"` : ""} ` +
          `of storage domain "${storage}"${names ? `: it has ${names}` : ""} ` +
          `(choose one with -oo rhv-cluster=NAME)`,
      );
    }
    if (!cluster.architecture || cluster.architecture === "undefined") {
      throw new Error(
        `Cluster "${clusterName}" has no CPU architecture yet (no host was added to it): ` +
          `no VM can be created there`,
      );
    }
    this.#cluster = cluster;
    signal.throwIfAborted();

    const need = spaceNeeded(this.#vm.disks.map((d) => d.virtualSize), {
      format: this.#opts.format,
      preallocated: this.#opts.preallocated,
      fileStorage: this.#fileStorage,
    });
    if (sd.available === undefined) {
      this.#ctx.debug(`storage domain "${storage}" does not say its free space: not checked`);
    } else if (sd.available < need.bytes) {
      throw new Error(
        `Not enough free space on storage domain "${storage}": ${formatBytes(sd.available)} free, ${
          formatBytes(need.bytes)
        } needed (${need.why})`,
      );
    }

    if (await engine.vmExists(this.#vm.name)) {
      throw new Error(
        `A VM named "${this.#vm.name}" already exists on ${engine.origin}: ` +
          `remove it or choose another name with -on NAME`,
      );
    }
    for (const id of this.#opts.diskUuids) {
      if (await engine.disk(id)) {
        throw new Error(`A disk with UUID ${id} (-oo rhv-disk-uuid) already exists`);
      }
    }
    signal.throwIfAborted();
  }

  /**
   * This machine as a host of the data center, when it is an oVirt host (it has vdsm's hardware
   * id) that is up there, as virt-v2v and imageio's client find it: its transfers are then
   * served here, and written over the imageio daemon's local socket. It is only a speed-up:
   * anything that goes wrong leaves the choice to the engine.
   */
  async #thisHost(dc: DataCenterInfo): Promise<HostInfo | undefined> {
    const file = Deno.env.get("VMSHIFT_VDSM_ID_FILE") || VDSM_ID;
    let hardwareId: string;
    try {
      hardwareId = (await Deno.readTextFile(file)).split("\n")[0]!.trim();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        this.#ctx.debug(`no ${file}: not an oVirt host, the engine chooses the host`);
      } else {
        this.#ctx.warning(`Cannot read ${file} (${fsReason(e)}): the engine chooses the host`);
      }
      return undefined;
    }
    if (!hardwareId || !dc.name) {
      this.#ctx.debug(
        `${hardwareId ? "the data center has no name" : `${file} is empty`}: ` +
          `the engine chooses the host`,
      );
      return undefined;
    }
    const host = await this.#engine.upHost(hardwareId, dc.name).catch((e) => {
      if (!(e instanceof EngineError)) throw e;
      this.#ctx.warning(`${e.message}: the engine chooses the host`);
      return undefined;
    });
    this.#ctx.debug(
      host
        ? `this machine is host "${host.name ?? host.id}" of data center "${dc.name}": ` +
          `transfers are served here`
        : `no host of hardware id ${hardwareId} is up in data center "${dc.name}": ` +
          `the engine chooses the host`,
    );
    return host;
  }

  get #fileStorage(): boolean {
    return FILE_STORAGE.has(this.#sd.storageType ?? "");
  }

  get #sparse(): boolean {
    return this.#opts.format === "qcow2" || !this.#opts.preallocated;
  }

  async #createDisk(i: number): Promise<void> {
    const engine = this.#engine;
    const disk = this.#vm.disks[i]!;
    const cow = this.#opts.format === "qcow2";
    const name = `${this.#vm.name}-${String(i).padStart(3, "0")}`;
    const chosen = this.#opts.diskUuids[i];
    const created = await engine.addDisk({
      ...(chosen ? { id: chosen } : {}),
      name,
      description: "Uploaded by vmshift",
      provisionedSize: disk.virtualSize,
      ...(cow ? { initialSize: disk.virtualSize } : {}),
      format: cow ? "cow" : "raw",
      sparse: this.#sparse,
      storageDomainId: this.#sd.id,
    });
    this.#disks.push(created.id);
    this.#ctx.debug(`created disk ${created.id} ("${name}")`);
    await poll(`disk "${name}" to be ready`, this.#ctx.signal, 300_000, async () => {
      const d = await engine.disk(created.id);
      if (!d) throw new Error(`Disk "${name}" (${created.id}) disappeared while being created`);
      if (d.status === "illegal") throw new Error(`The engine could not create disk "${name}"`);
      return d.status === "ok" ? d : undefined;
    });

    const started = await engine.addUpload(created.id, INACTIVITY_TIMEOUT, this.#host?.id);
    const transfer: Transfer = { id: started.id, diskIndex: i, finished: false };
    this.#transfers.push(transfer);
    this.#ctx.debug(`started transfer ${started.id} to disk ${created.id}`);
    const ready = await poll(
      `the upload to disk "${name}" to start`,
      this.#ctx.signal,
      300_000,
      async () => {
        const t = await engine.transfer(started.id);
        if (!t) {
          transfer.finished = true;
          throw new Error(`The engine removed the upload to disk "${name}" before it started`);
        }
        switch (t.phase) {
          case undefined:
          case "initializing":
          case "resuming":
            return undefined;
          case "transferring":
            this.#ctx.debug(`transfer ${t.id} is served by host ${t.hostId ?? "(not said)"}`);
            return t;
          case "paused_system":
            throw new Error(
              `The engine paused the upload to disk "${name}" (paused_system): ` +
                `no host could serve it`,
            );
          default:
            throw new Error(`The upload to disk "${name}" failed to start: phase ${t.phase}`);
        }
      },
    );
    this.targets.push(await this.#openTarget(i, ready.transferUrl, ready.proxyUrl));
  }

  async #openTarget(i: number, daemon?: string, proxy?: string): Promise<ImageioTarget> {
    const options = {
      name: `disk ${i + 1}`,
      ...(this.#opts.caCerts ? { caCerts: this.#opts.caCerts } : {}),
      readsZeroes: this.#sparse && this.#fileStorage,
      inactivityTimeout: INACTIVITY_TIMEOUT,
      signal: this.#ctx.signal,
      debug: this.#ctx.debug,
    };
    const transport = this.#opts.transport;
    const first = transport === "proxy" ? proxy : daemon;
    if (!first) {
      throw new Error(
        transport === "proxy"
          ? "The engine gave no proxy URL (proxy_url) for the upload: try without rhv-direct=false"
          : transport === "daemon"
          ? "The engine gave no imageio daemon URL (transfer_url) for the upload: " +
            "try without -oo rhv-direct"
          : "The engine gave no imageio URL for the upload",
      );
    }
    try {
      return await openImageio(first, options);
    } catch (e) {
      if (transport !== "auto" || !proxy || proxy === first || this.#ctx.signal.aborted) {
        throw explainTls(e, this.#opts);
      }
      // The daemon is preferred; the proxy is the fallback when it cannot be reached.
      this.#ctx.warning(
        `Cannot use the imageio daemon for disk ${i + 1} (${
          e instanceof Error ? e.message : e
        }): uploading through the proxy`,
      );
      return await openImageio(proxy, options).catch((e2) => {
        throw explainTls(e2, this.#opts);
      });
    }
  }

  async finalize(): Promise<string[]> {
    try {
      return await this.#finalize();
    } catch (e) {
      throw await this.#fail(e);
    }
  }

  async #finalize(): Promise<string[]> {
    const engine = this.#engine;
    const signal = this.#ctx.signal;
    // The copy flushed every connection; close what is left before finalizing.
    for (const t of this.targets) await t[Symbol.asyncDispose]();
    for (const t of this.#transfers) {
      const diskId = this.#disks[t.diskIndex]!;
      const label = `disk ${t.diskIndex + 1} (${diskId})`;
      const known = await engine.finalizeTransfer(t.id);
      await poll(`the upload of ${label} to finish`, signal, 1_800_000, async () => {
        const now = known ? await engine.transfer(t.id) : undefined;
        // Ended one way or the other: nothing to cancel any more.
        if (!now || now.phase?.startsWith("finished")) t.finished = true;
        if (!now) {
          // An older engine removes the transfer once done: the disk tells the outcome.
          const d = await engine.disk(diskId);
          if (!d) throw new Error(`Finalizing the upload of ${label} failed: the disk is gone`);
          if (d.status === "ok") return true;
          if (d.status === "illegal") {
            throw new Error(`Finalizing the upload of ${label} failed: the disk is illegal`);
          }
          return undefined;
        }
        if (now.phase === "finished_success") return true;
        if (now.phase === "finished_failure" || now.phase?.startsWith("cancelled")) {
          throw new Error(
            `Finalizing the upload of ${label} failed: the engine reports ${now.phase}`,
          );
        }
        return undefined;
      });
      t.finished = true;
      this.#ctx.debug(`transfer ${t.id} finished`);
    }

    const disks: OvfDisk[] = [];
    for (const [i, id] of this.#disks.entries()) {
      const d = await poll(`disk ${i + 1} to be unlocked`, signal, 300_000, async () => {
        const d = await engine.disk(id);
        if (!d) throw new Error(`Disk ${i + 1} (${id}) is gone after its upload`);
        return d.status === "ok" ? d : undefined;
      });
      disks.push({
        diskId: id,
        // The engine always says it; a made-up id is what virt-v2v writes in any case.
        imageId: d.imageId ?? crypto.randomUUID(),
        virtualSize: this.#vm.disks[i]!.virtualSize,
        ...(d.actualSize !== undefined ? { actualSize: d.actualSize } : {}),
        ...(d.name ? { alias: d.name } : {}),
      });
    }
    const vmId = crypto.randomUUID();
    const ovf = createOvf(this.#vm, disks, {
      vmId,
      storageDomainId: this.#sd.id,
      dataCenterId: this.#dcId,
      format: this.#opts.format,
      preallocated: !this.#sparse,
      ...(this.#cluster.architecture ? { architecture: this.#cluster.architecture } : {}),
    });
    signal.throwIfAborted();
    const correlationId = `vmshift-${crypto.randomUUID()}`;
    const created = await engine.addVm(this.#cluster.id, ovf, correlationId);
    await poll(`the VM "${this.#vm.name}" to be created`, signal, 600_000, async () => {
      const jobs = await engine.jobs(correlationId);
      const failed = jobs.find((j) => j.status === "failed" || j.status === "aborted");
      if (failed) {
        throw new Error(
          `Creating the VM "${this.#vm.name}" failed: job ${failed.status}${
            failed.description ? ` (${failed.description})` : ""
          }`,
        );
      }
      return jobs.some((j) => j.status === "started") ? undefined : true;
    });
    this.#committed = true;
    await this.#engine[Symbol.asyncDispose]();
    return [
      `VM "${this.#vm.name}"${created ? ` (${created})` : ""} on ${engine.origin}`,
      ...disks.map((d, i) =>
        `  disk ${i + 1}: ${d.diskId} on storage domain "${this.#opts.storage}"`
      ),
    ];
  }

  /** Undoes what was created and returns the error to throw, saying both. */
  async #fail(e: unknown): Promise<unknown> {
    const summary = await this.#undo();
    if (this.#ctx.signal.aborted) {
      if (summary) {
        this.#ctx.warning(`Removed from the oVirt engine what this run created: ${summary}`);
      }
      return this.#ctx.signal.reason ?? e;
    }
    if (!summary) return e;
    const msg = e instanceof Error ? e.message : String(e);
    const err = new Error(`${msg} (cleaned up: ${summary})`, { cause: e });
    return err;
  }

  /**
   * Cancels the transfers, removes the disks, logs out.
   * @returns What was done, e.g. `cancelled 1 transfer, removed 1 disk`; empty when nothing.
   */
  async #undo(): Promise<string> {
    if (this.#undone || this.#committed) return "";
    this.#undone = true;
    const engine = this.#engine;
    const done: string[] = [];
    const problems: string[] = [];
    for (const t of this.targets) await t[Symbol.asyncDispose]().catch(() => {});
    let cancelled = 0;
    for (const t of this.#transfers.filter((t) => !t.finished)) {
      try {
        if (await engine.cancelTransfer(t.id)) cancelled++;
      } catch (e) {
        problems.push(`cannot cancel transfer ${t.id}: ${message(e)}`);
      }
    }
    // Wait for the cancelled transfers to end: the engine keeps their disks locked until then.
    for (const t of this.#transfers.filter((t) => !t.finished)) {
      await poll("a cancelled transfer to end", undefined, 60_000, async () => {
        const now = await engine.transfer(t.id);
        return !now || now.phase?.startsWith("finished") ? true : undefined;
      }).catch((e) => this.#ctx.debug(`transfer ${t.id}: ${message(e)}`));
    }
    if (cancelled) done.push(`cancelled ${plural(cancelled, "transfer")}`);
    let removed = 0;
    for (const id of this.#disks) {
      try {
        await poll(`disk ${id} to be removed`, undefined, 120_000, async () => {
          const r = await engine.removeDisk(id);
          if (r === "locked") return undefined;
          return await engine.disk(id) ? undefined : true;
        });
        removed++;
      } catch (e) {
        problems.push(`cannot remove disk ${id} (remove it by hand): ${message(e)}`);
      }
    }
    if (removed) done.push(`removed ${plural(removed, "disk")}`);
    await engine[Symbol.asyncDispose]();
    return [...done, ...problems].join(", ");
  }

  /** Undoes what was created (see {@linkcode OutputSession.abort}). */
  abort(): Promise<string> {
    return this.#undo();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#committed || this.#undone) {
      await this.#engine[Symbol.asyncDispose]();
      return;
    }
    const summary = await this.#undo();
    if (summary) {
      this.#ctx.warning(`Removed from the oVirt engine what this run created: ${summary}`);
    }
  }
}

/**
 * Polls until `check` returns a value.
 * @param what What is awaited, for the timeout message.
 * @param signal Aborts the wait.
 * @param timeout Milliseconds.
 * @param check Returns the value, undefined to wait more, or throws.
 */
async function poll<T>(
  what: string,
  signal: AbortSignal | undefined,
  timeout: number,
  check: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeout;
  let delay = 100;
  while (true) {
    signal?.throwIfAborted();
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${Math.round(timeout / 1000)} s waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(2000, delay * 2);
  }
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Adds a hint to certificate errors. */
function explainTls(e: unknown, opts: RhvOptions): unknown {
  const msg = message(e);
  if (!/certificate|UnknownIssuer|BadSignature|NotValidForName|tls/i.test(msg)) return e;
  const hint = opts.caFile
    ? `the server's certificate is not signed by the CA in "${opts.caFile}" (-oo rhv-cafile)`
    : "the server's certificate is not trusted: give the engine's CA with -oo rhv-cafile=CA.pem";
  const err = e instanceof EngineError
    ? new EngineError(`${msg} (${hint})`, e.status, { cause: e })
    : new Error(`${msg} (${hint})`, { cause: e });
  return err;
}

function readSmallFile(path: string, flag: string, what: string): string {
  try {
    if (Deno.statSync(path).size > 1024 * 1024) {
      throw new UsageError(`${flag} "${path}": ${what} is too large`);
    }
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`Cannot read ${what} "${path}" (${flag}): ${fsReason(e)}`);
  }
}

function parseBool(key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (v === "" || v === "true" || v === "yes" || v === "1" || v === "on") return true;
  if (v === "false" || v === "no" || v === "0" || v === "off") return false;
  throw new UsageError(`Bad -oo ${key}="${value}": expected true or false`);
}

function redactUrl(url: URL): string {
  const u = new URL(url.href);
  u.password = "";
  return u.href;
}
