/**
 * Strict oVirt test servers: an engine (REST API, SSO) and an imageio daemon with its proxy,
 * following openapi/ovirt-engine.yaml, openapi/imageio.yaml and shared/OVIRT-FACTS.md point by
 * point, errors included, so that a client that passes against them works against the real
 * ones. Both speak HTTPS with certificates of a test CA made at start.
 *
 * What is modelled, and how (details in `_engine.ts`, `_imageio.ts`, `_undo.ts`):
 *
 * - Engine: SSO password grant (`admin@internal`), expiring bearer tokens, JSON as the engine
 *   writes it (strings for sizes and flags, `{}` for empty collections), searches by `name=`,
 *   `storage.name=`, `correlation_id=`, and hosts by `hw_id=`, `datacenter=`, `status=`. Disks are real image files made with qemu-img, `locked`
 *   for `diskLockMs` after creation. A transfer is `initializing` for `transferInitMs`, then
 *   serves the disk with qemu-nbd behind an imageio ticket. Finalize: `finalizing_success` →
 *   `finished_success` (disk `ok`). Cancel: `cancelled_user` → `finalizing_failure` →
 *   `finished_failure` (disk `illegal`, then removable). The disk stays `locked` until its
 *   transfer has ended, so removing it right after a cancel is a 409: poll the transfer first.
 *   A transfer whose ticket sees no request for its inactivity timeout is `paused_system` and
 *   its ticket removed. Disk removal and VM import are asynchronous too.
 * - imageio: writes land in the image at once, but are safe only once the connection that made
 *   them flushed: a 500, a dropped or idle-closed connection, a connection closed unflushed, or
 *   the end of the ticket (finalize, cancel, pause) while a connection holds unflushed writes
 *   undoes them (the image is put back as it was at that connection's last flush).
 *
 * @example
 * ```ts ignore
 * import { startOvirt } from "./mod.ts";
 * import { TempDir } from "../../src/tmpdir.ts";
 * await using dir = await TempDir.create();
 * await using ovirt = await startOvirt({ dir: dir.path });
 * const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(ovirt.caFile)] });
 * // ... POST ${ovirt.engineUrl.replace(/\/api$/, "")}/sso/oauth/token ...
 * client.close();
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { Engine } from "./_engine.ts";
import { Imageio } from "./_imageio.ts";
import { type CertificateFiles, makeCa, makeServerCertificate } from "./_tls.ts";

export type { CertificateFiles } from "./_tls.ts";

/** Options of {@linkcode startOvirt}. */
export interface OvirtOptions {
  /** Where disks, certificates, sockets live (a TempDir path); a subdirectory is used. */
  dir: string;
  /**
   * The password of `admin@internal`.
   * @default "test-password"
   */
  password?: string;
  /**
   * The storage domains (all data domains of one data center, "Default").
   * @default [{ name: "data", available: 100 GiB, type: "nfs" }]
   */
  storageDomains?: Array<{ name: string; available: number; type?: "nfs" | "iscsi" }>;
  /**
   * The clusters of the data center. An architecture of `"undefined"` is a cluster without
   * hosts, where the engine refuses VMs.
   * @default [{ name: "Default", architecture: "x86_64" }]
   */
  clusters?: Array<{ name: string; architecture?: string }>;
  /**
   * The hosts of the data center, each with vdsm's hardware id (the `/etc/vdsm/vdsm.id` of that
   * host; a fresh UUID when not given) and a status (`up`, `maintenance`, ...). The one imageio
   * server stands for every host's daemon. A transfer is served by the host the client asks
   * for (it must be up), else by the first host that is up.
   * @default [{ name: "host1", status: "up" }]
   */
  hosts?: Array<{ name: string; hwId?: string; status?: string }>;
  /**
   * Names of VMs that already exist.
   * @default []
   */
  existingVms?: string[];
  /**
   * How long an SSO token is valid, in milliseconds.
   * @default 3600000
   */
  tokenLifetimeMs?: number;
  /**
   * Inactivity timeout of imageio tickets, in seconds: idle connections are closed, and an
   * idle transfer is paused, after it.
   * @default the `inactivity_timeout` the client asks for (60 when it asks none)
   */
  ticketInactivityTimeout?: number;
  /**
   * `max_writers` in imageio's OPTIONS answer.
   * @default 8
   */
  maxWriters?: number;
  /**
   * The imageio daemon also serves a local unix socket (a fresh abstract name, like the real
   * `\0/org/ovirt/imageio`) and names it in OPTIONS: a daemon on the client's own host.
   * @default false (a daemon on another host, reached over HTTPS only)
   */
  unixSocket?: boolean;
  /**
   * How long a new disk stays `locked` (and how long removals and VM imports take), in ms.
   * @default 200
   */
  diskLockMs?: number;
  /**
   * How long a transfer stays `initializing` (and how long finalize and cancel take), in ms.
   * @default 200
   */
  transferInitMs?: number;
}

/** Faults to inject. Settable at any time: `ovirt.faults.fail500Once = true`. */
export interface Faults {
  /**
   * imageio: close a connection in the middle of a PUT once this many body bytes arrived
   * (counted over all PUTs from when it is set; fires once, then is cleared). The
   * connection's unflushed writes, the partial one included, are lost.
   */
  dropConnectionAfterBytes?: number;
  /**
   * imageio: answer the next PUT with 500 (its body is read and dropped; the connection stays
   * open) and lose the writes made on that connection since its last flush. Cleared once used.
   */
  fail500Once?: boolean;
  /** imageio: delay every response by this many milliseconds. */
  slowMs?: number;
  /**
   * imageio: the daemon names this unix socket in OPTIONS instead of its own (one nobody
   * listens on, or another daemon's that does not hold the ticket: a daemon on another host).
   */
  advertiseUnixSocket?: string;
  /** engine: finalize ends in `finished_failure` (disk `illegal`). */
  failFinalize?: boolean;
  /** engine: transfers go to `paused_system` (their ticket is removed). */
  pauseTransfer?: boolean;
}

/** imageio counters, over the daemon and the proxy. */
export interface OvirtStats {
  /** Body bytes received by PUT. */
  putBytes: number;
  /** PUT requests (whatever their outcome). */
  putRequests: number;
  /** PATCH zero requests. */
  zeroRequests: number;
  /** Bytes zeroed by PATCH zero. */
  zeroBytes: number;
  /** PATCH flush requests (PUT `flush=y` and zero `flush: true` count in implicitFlushes). */
  flushRequests: number;
  /** Connections accepted (TLS, and plain over the local socket). */
  connections: number;
  /** Of those, connections over the daemon's local unix socket. */
  unixConnections: number;
  /** Most connections open at once. */
  maxConcurrentConnections: number;
  /** Bytes of unflushed writes that were lost (undone). */
  droppedBytes: number;
  /** Flushes made by PUT `flush=y` or PATCH zero `flush: true`. */
  implicitFlushes: number;
}

/** The running servers. */
export interface Ovirt extends AsyncDisposable {
  /** `https://127.0.0.1:PORT/ovirt-engine/api`. */
  engineUrl: string;
  /** PEM of the test CA that signed both servers' certificates. */
  caFile: string;
  /** A file holding the password (no trailing newline). */
  passwordFile: string;
  /** The imageio daemon's local socket (an abstract name), with `unixSocket: true`. */
  unixSocket: string | undefined;
  /** Faults to inject, read on every request. */
  faults: Faults;
  /** The disks; `path` is the image file (qcow2 for cow). */
  disks(): Array<{
    id: string;
    name: string;
    format: "raw" | "cow";
    sparse: boolean;
    provisionedSize: number;
    status: string;
    path: string;
  }>;
  /** The hosts, with their engine ids. */
  hosts(): Array<{ id: string; name: string; hwId: string; status: string }>;
  /**
   * The image transfers, finished ones included, with the host that serves each and whether
   * the client asked for it.
   */
  transfers(): Array<{
    id: string;
    phase: string;
    diskId: string;
    hostId: string;
    hostAsked: boolean;
  }>;
  /** The VMs, those of `existingVms` (with an empty OVF) included. */
  vms(): Array<{ id: string; name: string; ovf: string }>;
  /** imageio counters. */
  stats(): OvirtStats;
}

/**
 * Starts the engine and the imageio daemon (and proxy) on 127.0.0.1.
 *
 * @param options Directory, password, storage, timings.
 * @returns The servers; dispose them (`await using`) to stop every process and remove every
 * file they made.
 */
export async function startOvirt(options: OvirtOptions): Promise<Ovirt> {
  const root = await Deno.makeTempDir({ dir: options.dir, prefix: "ovirt-" });
  const cleanup: Array<() => Promise<void>> = [
    () => Deno.remove(root, { recursive: true }).catch(() => {}),
  ];
  let unwound: Promise<void> | undefined;
  const unwind = () =>
    unwound ??= (async () => {
      for (const f of [...cleanup].reverse()) await f();
    })();
  try {
    const ca = await makeCa(root, "ovirt");
    const server = await makeServerCertificate(root, "server", ca);
    const password = options.password ?? "test-password";
    const passwordFile = join(root, "password");
    await Deno.writeTextFile(passwordFile, password, { mode: 0o600 });
    const faults: Faults = {};
    const maxWriters = options.maxWriters ?? 8;
    const imageio = await Imageio.start({
      certFile: server.certFile,
      keyFile: server.keyFile,
      dir: root,
      maxWriters,
      defaultIdleSec: options.ticketInactivityTimeout ?? 60,
      faults: () => ovirt.faults,
      ...(options.unixSocket
        ? { unixSocket: `\0/vmshift-test-imageio/${crypto.randomUUID()}` }
        : {}),
    });
    cleanup.push(() => imageio[Symbol.asyncDispose]());
    const engine = await Engine.start({
      root,
      certFile: server.certFile,
      keyFile: server.keyFile,
      password,
      storageDomains: (options.storageDomains ?? [{ name: "data", available: 100 * 2 ** 30 }])
        .map((d) => ({ name: d.name, available: d.available, type: d.type ?? "nfs" })),
      clusters: (options.clusters ?? [{ name: "Default" }])
        .map((c) => ({ name: c.name, architecture: c.architecture ?? "x86_64" })),
      hosts: (options.hosts ?? [{ name: "host1" }]).map((h) => ({
        name: h.name,
        hwId: h.hwId ?? crypto.randomUUID(),
        status: h.status ?? "up",
      })),
      existingVms: options.existingVms ?? [],
      tokenLifetimeMs: options.tokenLifetimeMs ?? 3_600_000,
      ticketInactivityTimeout: options.ticketInactivityTimeout,
      maxWriters,
      diskLockMs: options.diskLockMs ?? 200,
      transferInitMs: options.transferInitMs ?? 200,
      faults: () => ovirt.faults,
      imageio,
    });
    cleanup.push(() => engine[Symbol.asyncDispose]());
    const ovirt: Ovirt = {
      engineUrl: engine.url,
      caFile: ca.caFile,
      passwordFile,
      unixSocket: imageio.unixSocket,
      faults,
      disks: () =>
        engine.disks().map((d) => ({
          id: d.id,
          name: d.name,
          format: d.format,
          sparse: d.sparse,
          provisionedSize: d.provisionedSize,
          status: d.status,
          path: d.path,
        })),
      hosts: () => engine.hosts().map((h) => ({ ...h })),
      transfers: () =>
        engine.transfers().map((t) => ({
          id: t.id,
          phase: t.phase,
          diskId: t.disk.id,
          hostId: t.host.id,
          hostAsked: t.hostAsked,
        })),
      vms: () => engine.vms().map((v) => ({ id: v.id, name: v.name, ovf: v.ovf })),
      stats: () => ({ ...imageio.counters }),
      [Symbol.asyncDispose]: unwind,
    };
    return ovirt;
  } catch (e) {
    await unwind();
    throw e;
  }
}

/**
 * Makes a server certificate for `127.0.0.1` and `localhost` signed by ANOTHER CA than the
 * servers' (a new one, `NAME-ca.pem`), so that tests can check a client refuses it.
 *
 * @param dir Where the files go (the caller removes them).
 * @param name Prefix of the file names.
 * @returns The certificate, its key, and the other CA.
 */
export async function makeCertificate(dir: string, name: string): Promise<CertificateFiles> {
  const ca = await makeCa(dir, `${name}-other`);
  return await makeServerCertificate(dir, name, ca);
}
