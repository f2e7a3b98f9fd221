/**
 * `-i vsphere -ic vpx://USER@VCENTER/DC/CLUSTER/HOST VMNAME` (and `esx://USER@ESXI`), also
 * spelled as virt-v2v spells it, `-i libvirt -ic vpx://... VMNAME`: a VM read from vCenter or
 * ESXi through the vSphere API, without libvirt.
 *
 * 1. Connect over HTTPS, checking the server's certificate against the system's CAs or
 *    `-io vsphere-cafile=CA.pem` (not at all only with `?no_verify=1` in the URI), and log in
 *    with the user of the URI and the password of `-ip FILE` ({@linkcode VimClient}).
 * 2. Find the VM by name, or by moref (`vm-42`), in the datacenter the URI names or in the
 *    whole inventory; read its hardware, power state and snapshots in one call
 *    ({@linkcode parseVmProperties}), and the datacenter it is in.
 * 3. Refuse a running VM and one with snapshots, saying what to do, unless a snapshot is asked
 *    for (`-io vsphere-snapshot=NAME`): then its disks as the snapshot holds them are read.
 * 4. Serve each disk read-only over NBD:
 *    - `-it https` (default): the VMDK descriptor is read from the datastore's `/folder` URL
 *      with the session cookie and checked as `-i vmx` checks it ({@linkcode readVmdk}); each
 *      extent file is served by nbdkit's curl plugin; a disk that is one flat file is served as
 *      it is, any other (monolithicSparse, streamOptimized, twoGbMaxExtentFlat/Sparse, extents
 *      with offsets or ZERO extents) is read through qemu's vmdk driver on top of them;
 *    - `-it vddk`: nbdkit's vddk plugin, with the server's SHA-1 thumbprint computed from the
 *      certificate vmshift saw unless `-io vddk-thumbprint=` gives it.
 * 5. When the session is disposed, the servers stop and vmshift logs out.
 *
 * @module
 */

import { posix } from "node:path";
import { fsReason, UsageError } from "../../errors.ts";
import { NbdClient } from "../../nbd/client.ts";
import { nbdkitHas } from "../../nbdkit.ts";
import type { Server } from "../../process.ts";
import { serveQemuNbd } from "../../qemu_nbd.ts";
import { type Disk, diskName, type Firmware, type Nic, type Vm } from "../../vm.ts";
import type { Input, InputCli, InputSession, PreparedInput, RunContext } from "../types.ts";
import { type FileAccess, readVmdk, type VmdkInfo } from "../vmdk.ts";
import { notRemotelyReadable } from "../vmx_ssh.ts";
import { HttpsClient, type TlsCheck, TlsTrustError } from "./_http.ts";
import { type Moref, morefOf, VimClient, VimFault } from "./_soap.ts";
import {
  curlDiskCommand,
  type RateLimit,
  vddkDiskCommand,
  type VddkDiskOptions,
} from "./disk_servers.ts";
import {
  parseDevices,
  parseVmProperties,
  VM_PROPERTIES,
  type VsphereDisk,
  type VsphereVm,
} from "./hardware.ts";
import { parseVsphereUri, redact, type VsphereUri } from "./uri.ts";

/** The `-io` keys of `-i vsphere`, each with what it takes. */
export const VSPHERE_OPTIONS: Readonly<Record<string, string>> = {
  "vsphere-cafile": "the CA certificates (PEM) to verify the server with",
  "vsphere-snapshot": "read this snapshot (name or moref) of a running VM or one with snapshots",
  "vddk-libdir": "-it vddk: the VDDK directory",
  "vddk-thumbprint": "-it vddk: the server's SHA-1 thumbprint (computed when omitted)",
  "vddk-transports": "-it vddk: VDDK transports, e.g. nbdssl:nbd",
  "vddk-config": "-it vddk: a VDDK configuration file",
  "vddk-cookie": "-it vddk: a vCenter session cookie",
  "vddk-nfchostport": "-it vddk: the NFC port",
  "vddk-port": "-it vddk: the server's port",
  "vddk-snapshot": "-it vddk: read this snapshot (moref)",
};

/** The command line of `-i vsphere`, checked. */
export interface VsphereOptions {
  /** The server. */
  uri: VsphereUri;
  /** The user. */
  user: string;
  /** `-ip`: the password file. */
  passwordFile: string;
  /** The VM's name or moref. */
  vm: string;
  /** `-it`. */
  transport: "https" | "vddk";
  /** `-io vsphere-cafile=`. */
  caFile?: string;
  /** `-io vsphere-snapshot=`. */
  snapshot?: string;
  /** `-io vddk-*`, without the `vddk-` prefix. */
  vddk: Partial<
    Record<
      | "libdir"
      | "thumbprint"
      | "transports"
      | "config"
      | "cookie"
      | "nfchostport"
      | "port"
      | "snapshot",
      string
    >
  >;
  /** `--bandwidth`, `--bandwidth-file`. */
  rate: RateLimit;
}

/**
 * Checks the command line of `-i vsphere` (or `-i libvirt -ic vpx://...`).
 *
 * @param cli The input options.
 * @returns The checked options.
 * @throws {UsageError} For a missing or bad `-ic`, `-ip`, VM name, `-it` or `-io`.
 * @example
 * ```ts
 * import { parseVsphereOptions } from "./vsphere.ts";
 * const o = parseVsphereOptions({
 *   mode: "vsphere",
 *   conn: "vpx://admin%40vsphere.local@vc/DC/Cluster/esx1?no_verify=1",
 *   passwordFile: "/root/pw",
 *   args: ["web01"],
 *   options: [],
 * });
 * if (o.user !== "admin@vsphere.local" || o.transport !== "https" || !o.uri.noVerify) {
 *   throw new Error();
 * }
 * ```
 */
export function parseVsphereOptions(cli: InputCli): VsphereOptions {
  const how = `vmshift -i ${cli.mode} -ic vpx://USER@VCENTER/DATACENTER/CLUSTER/HOST -ip ` +
    "PASSWORD_FILE VMNAME";
  if (cli.conn === undefined) throw new UsageError(`-i ${cli.mode} needs the server: ${how}`);
  const uri = parseVsphereUri(cli.conn);
  if (cli.args.length !== 1) {
    throw new UsageError(
      cli.args.length === 0
        ? `-i ${cli.mode} needs the VM's name or moref: ${how}`
        : `-i ${cli.mode} takes one VM, got ${cli.args.length}: ${
          cli.args.map((a) => `"${a}"`).join(" ")
        }`,
    );
  }
  if (cli.format !== undefined) {
    throw new UsageError(`-i ${cli.mode} does not take -if: the disks' formats come from vSphere`);
  }
  const user = uri.user ?? (uri.scheme === "esx" ? "root" : undefined);
  if (user === undefined) {
    throw new UsageError(
      `-ic "${redact(cli.conn)}" names no user: vpx://USER@VCENTER/..., e.g. ` +
        "vpx://administrator%40vsphere.local@vcenter/DC/Cluster/host",
    );
  }
  if (cli.passwordFile === undefined) {
    throw new UsageError(
      `-i ${cli.mode} needs the password of "${user}" in a file: -ip FILE ` +
        "(vmshift never takes a password on the command line)",
    );
  }
  const transport = cli.transport ?? "https";
  if (transport !== "https" && transport !== "vddk") {
    throw new UsageError(
      `-i ${cli.mode} cannot use -it ${transport}: it reads disks with -it https (the default) ` +
        "or -it vddk",
    );
  }
  const out: VsphereOptions = {
    uri,
    user,
    passwordFile: posix.resolve(cli.passwordFile),
    vm: cli.args[0]!,
    transport,
    vddk: {},
    rate: {
      ...(cli.bandwidth !== undefined ? { bandwidth: cli.bandwidth } : {}),
      ...(cli.bandwidthFile !== undefined
        ? { bandwidthFile: posix.resolve(cli.bandwidthFile) }
        : {}),
    },
  };
  for (const [key, value] of cli.options) {
    if (!(key in VSPHERE_OPTIONS)) {
      throw new UsageError(
        `-i ${cli.mode} does not know -io "${key}": it takes ${
          Object.keys(VSPHERE_OPTIONS).join(", ")
        }`,
      );
    }
    if (value === "") throw new UsageError(`-io ${key} needs a value: -io ${key}=VALUE`);
    if (key.startsWith("vddk-")) {
      if (transport !== "vddk") {
        throw new UsageError(`-io ${key} is for -it vddk; this run reads disks over HTTPS`);
      }
      out.vddk[key.slice(5) as keyof VsphereOptions["vddk"]] = value;
    } else if (key === "vsphere-cafile") out.caFile = posix.resolve(value);
    else out.snapshot = value;
  }
  if (out.caFile !== undefined && uri.noVerify) {
    throw new UsageError(
      "-io vsphere-cafile and ?no_verify=1 contradict each other: give the CA to check the " +
        "server with, or skip the check, not both",
    );
  }
  if (out.snapshot !== undefined && out.vddk.snapshot !== undefined) {
    throw new UsageError("Give -io vsphere-snapshot or -io vddk-snapshot, not both");
  }
  return out;
}

/** The `-i vsphere` input. */
export const vsphereInput: Input = {
  mode: "vsphere",
  parseOptions(cli: InputCli): PreparedInput {
    return prepare(parseVsphereOptions(cli), cli.mode);
  },
};

/**
 * The `-i libvirt` input: only libvirt's VMware URIs (`vpx://`, `esx://`), which vmshift reads
 * through the vSphere API itself, as `-i vsphere`.
 */
export const libvirtInput: Input = {
  mode: "libvirt",
  parseOptions(cli: InputCli): PreparedInput {
    if (cli.conn !== undefined && !/^(vpx|esx):\/\//i.test(cli.conn)) {
      throw new UsageError(
        `-i libvirt reads only VMware servers (-ic vpx://... or esx://...), got -ic ` +
          `"${redact(cli.conn)}": vmshift talks to vSphere directly, not through libvirt`,
      );
    }
    return prepare(parseVsphereOptions(cli), cli.mode);
  },
};

function prepare(options: VsphereOptions, mode: string): PreparedInput {
  const server = options.uri.port === 443
    ? options.uri.host
    : `${options.uri.host}:${options.uri.port}`;
  return {
    description: `-i ${mode} -it ${options.transport} ${options.uri.scheme}://${server} ` +
      `"${options.vm}"`,
    remote: true,
    open: (ctx) => openVsphere(options, ctx),
  };
}

/**
 * Opens a VM on vCenter or ESXi and serves its disks.
 *
 * @param options The checked command line.
 * @param ctx The run context.
 * @returns The session; disposing it stops the servers and logs out.
 * @throws {Error} When the server cannot be reached or trusted, the login fails, the VM is not
 * found, runs, has snapshots, or a disk cannot be read; the message says which and what to do.
 */
export async function openVsphere(
  options: VsphereOptions,
  ctx: RunContext,
): Promise<InputSession> {
  const { uri } = options;
  const shown = uri.port === 443 ? uri.host : `${uri.host}:${uri.port}`;
  const kind = uri.scheme === "vpx" ? "vCenter" : "ESXi";
  let password: string;
  try {
    password = (await Deno.readTextFile(options.passwordFile)).replace(/\r?\n$/, "");
  } catch (e) {
    throw new Error(`Cannot read the password file "${options.passwordFile}": ${fsReason(e)}`);
  }
  let tls: TlsCheck = { verify: true };
  if (uri.noVerify) tls = { verify: false };
  else if (options.caFile) {
    try {
      tls = { verify: true, ca: await Deno.readTextFile(options.caFile) };
    } catch (e) {
      throw new Error(`Cannot read the CA file "${options.caFile}": ${fsReason(e)}`);
    }
  }
  if (uri.noVerify) ctx.warning(`The TLS certificate of "${shown}" is not checked (no_verify=1)`);

  await using stack = new AsyncDisposableStack();
  const http = new HttpsClient(uri.host, uri.port, tls);
  stack.defer(() => http.close());
  const cannot = (what: string, e: unknown): Error => {
    if (ctx.signal.aborted) return ctx.signal.reason;
    let detail = e instanceof Error ? e.message : String(e);
    if (e instanceof TlsTrustError) {
      detail += options.caFile
        ? `; is "${options.caFile}" the CA that signed it?`
        : "; give the CA that signed it with -io vsphere-cafile=CA.pem (or, at your own risk, " +
          "add ?no_verify=1 to the -ic URI)";
    }
    return new Error(`${what}: ${detail}`, { cause: e });
  };

  let client: VimClient;
  try {
    client = await VimClient.connect(http, { signal: ctx.signal, debug: ctx.debug });
  } catch (e) {
    throw cannot(`Cannot connect to ${kind} "${shown}"`, e);
  }
  ctx.debug(
    `vsphere: ${shown}: ${client.content.fullName || client.content.apiType} ` +
      `(API ${client.content.apiVersion}), certificate SHA-1 ${http.thumbprint ?? "?"}`,
  );
  try {
    await client.login(options.user, password);
  } catch (e) {
    if (e instanceof VimFault && e.fault === "InvalidLogin") {
      throw new Error(
        `Cannot log in to ${kind} "${shown}" as "${options.user}": the user name or the ` +
          `password (from "${options.passwordFile}") is wrong`,
      );
    }
    throw cannot(`Cannot log in to ${kind} "${shown}" as "${options.user}"`, e);
  }
  stack.defer(() => client.logout());
  ctx.debug(`vsphere: logged in as "${options.user}"`);

  const vm = await findVm(client, options, ctx, `${kind} "${shown}"`);
  const datacenter = await datacenterOf(client, vm);
  ctx.debug(
    `vsphere: VM "${vm.name}" (${vm.moref.value}) in datacenter "${datacenter}", ` +
      `${vm.powerState}, ${vm.snapshots.length} snapshot(s), ${vm.disks.length} disk(s)`,
  );

  // The disks to read: the VM's own, or a snapshot's.
  let disks = vm.disks;
  let snapshot: Moref | undefined;
  const wanted = options.snapshot ?? options.vddk.snapshot;
  if (wanted !== undefined) {
    const s = vm.snapshots.find((s) => s.moref.value === wanted) ??
      vm.snapshots.find((s) => s.name === wanted);
    if (!s) {
      throw new Error(
        `VM "${vm.name}" has no snapshot "${wanted}"${
          vm.snapshots.length
            ? `: it has ${vm.snapshots.map((s) => `"${s.name}" (${s.moref.value})`).join(", ")}`
            : ": it has none"
        }`,
      );
    }
    snapshot = s.moref;
    const [props] = await client.retrieve([s.moref], ["config.hardware.device"]);
    disks = parseDevices(props?.props.get("config.hardware.device")?.children ?? []).disks;
    ctx.debug(`vsphere: reading snapshot "${s.name}" (${s.moref.value})`);
  } else {
    refuseUnsafe(vm);
  }
  for (const label of vm.skipped) {
    ctx.warning(`${label} of VM "${vm.name}" is skipped: vmshift copies hard disks only`);
  }
  if (disks.length === 0) throw new Error(`VM "${vm.name}" has no disks`);

  const nics = await nicsOf(client, vm);
  const served: Array<{ disk: VsphereDisk; uri: string; size: number }> = [];
  if (options.transport === "https") {
    const cookieFile = ctx.dir.join("vsphere-cookie");
    // The cookie is a secret: only this user may read it, and it never goes on a command line.
    await Deno.writeTextFile(cookieFile, client.cookie!, { mode: 0o600 });
    stack.defer(() => Deno.remove(cookieFile).catch(() => {}));
    for (const [index, disk] of disks.entries()) {
      if (disk.hasParent) {
        throw new Error(
          `Cannot read "${disk.fileName}" over HTTPS: it is a snapshot's delta disk; read the ` +
            `VM with -it vddk${snapshot ? "" : ", or consolidate its snapshots first"}`,
        );
      }
      const files = datastoreFiles(client, datacenter, disk.datastore, ctx.signal);
      const vmdk = await readVmdk(`/${disk.path}`, files, { signal: ctx.signal });
      for (const w of vmdk.warnings) ctx.warning(w);
      ctx.debug(
        `vsphere: disk ${index + 1}: "${disk.fileName}" on ${disk.bus}, ` +
          `${vmdk.descriptor.createType}, ${vmdk.virtualSize} bytes`,
      );
      const s = stack.use(
        await serveHttpsDisk(disk, vmdk, index, {
          client,
          datacenter,
          cookieFile,
          options,
          ctx,
        }),
      );
      served.push({ disk, uri: s.uri, size: vmdk.virtualSize });
    }
  } else {
    await checkVddk(options);
    if (options.vddk.cookie !== undefined) {
      ctx.warning(
        "-io vddk-cookie is passed to nbdkit on its command line, which other local users can " +
          "read (nbdkit's vddk plugin has no file form for it); prefer the password of -ip",
      );
    }
    const thumbprint = options.vddk.thumbprint ?? http.thumbprint;
    if (!thumbprint) {
      throw new Error(
        `Cannot compute the SHA-1 thumbprint of "${shown}": give it with -io vddk-thumbprint=`,
      );
    }
    for (const [index, disk] of disks.entries()) {
      const cmdOptions = vddkOptions(options, vm, disk, thumbprint, snapshot);
      const socket = ctx.dir.join(`in-${diskName(index)}.sock`);
      ctx.debug(
        `vsphere: disk ${index + 1}: nbdkit ${vddkDiskCommand(cmdOptions).args(socket).join(" ")}`,
      );
      const server = stack.use(
        await vddkDiskCommand(cmdOptions).serve(socket, {
          name: `nbdkit (vddk "${disk.fileName}")`,
          env: { LANG: "C" },
          signal: ctx.signal,
        }),
      );
      const size = await probeSize(server, ctx.signal);
      served.push({ disk, uri: server.uri, size });
    }
  }

  const model: Vm = {
    name: vm.name,
    memory: vm.memoryMiB * 1024 * 1024,
    vcpus: vm.cpus,
    disks: served.map(({ disk, size }, index): Disk => ({
      index,
      source: disk.fileName,
      virtualSize: size,
      bus: disk.bus,
      sourceFormat: "vmdk",
    })),
    nics,
  };
  const firmware: Firmware | undefined = vm.firmware === "efi"
    ? "uefi"
    : vm.firmware === "bios"
    ? "bios"
    : undefined;
  if (firmware) model.firmware = firmware;
  if (vm.secureBoot !== undefined && firmware === "uefi") model.secureBoot = vm.secureBoot;
  if (vm.guestId) model.guestOs = vm.guestId;
  if (vm.coresPerSocket && vm.cpus % vm.coresPerSocket === 0) {
    model.cpuTopology = {
      sockets: vm.cpus / vm.coresPerSocket,
      cores: vm.coresPerSocket,
      threads: 1,
    };
  }
  const owned = stack.move();
  return {
    vm: model,
    uris: served.map((s) => s.uri),
    [Symbol.asyncDispose]: () => owned.disposeAsync(),
  };
}

/** Refuses a VM that runs or has snapshots: its disks change under the copy, or are deltas. */
function refuseUnsafe(vm: VsphereVm): void {
  if (vm.powerState !== "poweredOff") {
    throw new Error(
      `Cannot migrate VM "${vm.name}": it is ${
        vm.powerState === "poweredOn" ? "powered on" : vm.powerState
      }; shut it down first (or copy a snapshot of it with -io vsphere-snapshot=NAME)`,
    );
  }
  if (vm.snapshots.length) {
    throw new Error(
      `Cannot migrate VM "${vm.name}": it has snapshots (${
        vm.snapshots.map((s) => `"${s.name}"`).join(", ")
      }); consolidate (delete) all snapshots in vSphere first, or copy one of them with ` +
        "-io vsphere-snapshot=NAME",
    );
  }
}

/** Finds the VM by name (in the URI's datacenter, if it names one), else by moref. */
async function findVm(
  client: VimClient,
  options: VsphereOptions,
  ctx: RunContext,
  where: string,
): Promise<VsphereVm> {
  let container = client.content.rootFolder;
  let scope = where;
  if (options.uri.scheme === "vpx" && options.uri.path.length) {
    const dc = await findDatacenter(client, options.uri.path);
    if (!dc) {
      throw new Error(
        `Cannot find the datacenter of -ic path "/${options.uri.path.join("/")}" on ${where}: ` +
          `no datacenter "${options.uri.path[0]}"`,
      );
    }
    container = dc.ref;
    scope = `datacenter "${dc.path}" of ${where}`;
  }
  const started = performance.now();
  const all = await client.retrieveAll(container, "VirtualMachine", ["name"]);
  const named = all.filter((o) => o.props.get("name")?.text === options.vm);
  ctx.debug(
    `vsphere: ${all.length} VMs listed in ${Math.round(performance.now() - started)} ms, ` +
      `${named.length} named "${options.vm}"`,
  );
  let ref: Moref | undefined;
  if (named.length > 1) {
    throw new Error(
      `${named.length} VMs are named "${options.vm}" in ${scope} (${
        named.map((o) => o.obj.value).join(", ")
      }): give the moref of the one to migrate instead of its name, or the datacenter in -ic`,
    );
  }
  if (named.length === 1) ref = named[0]!.obj;
  else if (all.some((o) => o.obj.value === options.vm)) {
    ref = { type: "VirtualMachine", value: options.vm };
  }
  if (!ref) {
    throw new Error(`Cannot find VM "${options.vm}" in ${scope}: no VM has that name or moref`);
  }
  let props;
  try {
    [props] = await client.retrieve([ref], [...VM_PROPERTIES]);
  } catch (e) {
    if (e instanceof VimFault && e.fault === "ManagedObjectNotFound") props = undefined;
    else throw e;
  }
  if (!props) throw new Error(`Cannot find VM "${options.vm}" in ${scope}: it is gone`);
  return parseVmProperties(ref, props.props);
}

/** The datacenter named by the start of an `-ic` path (with its folders). */
async function findDatacenter(
  client: VimClient,
  path: string[],
): Promise<{ ref: Moref; path: string } | undefined> {
  for (let n = path.length; n >= 1; n--) {
    const p = path.slice(0, n).map((s) => s.replaceAll("/", "%2f")).join("/");
    const ref = await client.findByInventoryPath(p);
    if (ref?.type === "Datacenter") return { ref, path: p };
  }
  return undefined;
}

/** The inventory path of the VM's datacenter (`dcPath`), e.g. `Folder/DC`. */
async function datacenterOf(client: VimClient, vm: VsphereVm): Promise<string> {
  let ref = vm.parent;
  const names: string[] = [];
  let inDatacenter = false;
  for (let depth = 0; ref && depth < 64; depth++) {
    const [o] = await client.retrieve([ref], ["name", "parent"]);
    if (!o) break;
    const name = o.props.get("name")?.text ?? "";
    if (ref.type === "Datacenter") inDatacenter = true;
    const parent = o.props.get("parent");
    if (inDatacenter && parent) names.unshift(name);
    ref = parent ? morefOf(parent) : undefined;
  }
  if (!inDatacenter) {
    throw new Error(`Cannot find the datacenter of VM "${vm.name}": it is in none`);
  }
  return names.join("/");
}

/** The NICs, with distributed port groups named. */
async function nicsOf(client: VimClient, vm: VsphereVm): Promise<Nic[]> {
  const keys = vm.nics.flatMap((n) => n.portgroupKey ? [n.portgroupKey] : []);
  const names = new Map<string, string>();
  if (keys.length) {
    const pgs = await client.retrieveAll(
      client.content.rootFolder,
      "DistributedVirtualPortgroup",
      ["key", "name"],
    );
    for (const pg of pgs) {
      const key = pg.props.get("key")?.text;
      const name = pg.props.get("name")?.text;
      if (key && name) names.set(key, name);
    }
  }
  return vm.nics.map((n) => {
    const nic: Nic = { model: n.model };
    if (n.mac) nic.mac = n.mac;
    const network = n.network ?? (n.portgroupKey && (names.get(n.portgroupKey) ?? n.portgroupKey));
    if (network) nic.network = network;
    return nic;
  });
}

/**
 * The HTTPS URL of a file in a datastore: `https://SERVER/folder/PATH?dcPath=DC&dsName=DS`.
 *
 * @param server `host` or `host:port` (IPv6 in brackets).
 * @param datacenter The datacenter's inventory path.
 * @param datastore The datastore's name.
 * @param path The path in the datastore.
 * @returns The URL.
 * @example
 * ```ts
 * import { datastoreUrl } from "./vsphere.ts";
 * const u = datastoreUrl("vc", "DC 1", "ds 1", "web 01/web 01.vmdk");
 * if (u !== "https://vc/folder/web%2001/web%2001.vmdk?dcPath=DC%201&dsName=ds%201") throw new Error();
 * ```
 */
export function datastoreUrl(
  server: string,
  datacenter: string,
  datastore: string,
  path: string,
): string {
  return `https://${server}${datastorePath(datacenter, datastore, path)}`;
}

function datastorePath(datacenter: string, datastore: string, path: string): string {
  const p = path.replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
  return `/folder/${p}?dcPath=${encodeURIComponent(datacenter)}&dsName=${
    encodeURIComponent(datastore)
  }`;
}

/**
 * A {@linkcode FileAccess} on a datastore over HTTPS with the session cookie: `HEAD` for the
 * size, ranged `GET`s for the descriptor and headers. Paths are `/PATH` in the datastore.
 *
 * @param client The logged-in client.
 * @param datacenter The datacenter's inventory path.
 * @param datastore The datastore's name.
 * @param signal Stops the requests.
 * @returns The file access; paths are shown as `[datastore] path`.
 */
export function datastoreFiles(
  client: VimClient,
  datacenter: string,
  datastore: string,
  signal?: AbortSignal,
): FileAccess {
  const headers = () => ({ cookie: client.cookie ?? "" });
  const fail = (status: number, path: string): never => {
    if (status === 404) throw new Deno.errors.NotFound(`no such file: ${path}`);
    if (status === 401 || status === 403) {
      throw new Deno.errors.PermissionDenied(`the server refused access (HTTP ${status})`);
    }
    throw new Error(`the server answered HTTP ${status}`);
  };
  return {
    async stat(path) {
      const res = await client.http.request({
        method: "HEAD",
        path: datastorePath(datacenter, datastore, path),
        headers: headers(),
        ...(signal ? { signal } : {}),
      });
      if (res.status !== 200) fail(res.status, path);
      const length = Number(res.headers["content-length"]);
      if (!Number.isSafeInteger(length)) {
        throw new Error("the server gives no size for it (no Content-Length)");
      }
      return { size: length, isFile: true };
    },
    async read(path, offset, length) {
      if (length === 0) return new Uint8Array(0);
      const res = await client.http.request({
        method: "GET",
        path: datastorePath(datacenter, datastore, path),
        headers: { ...headers(), range: `bytes=${offset}-${offset + length - 1}` },
        maxBytes: length + 1024 * 1024,
        ...(signal ? { signal } : {}),
      });
      if (res.status === 416) return new Uint8Array(0);
      if (res.status === 206) return res.body.subarray(0, length);
      if (res.status === 200) return res.body.subarray(offset, offset + length);
      return fail(res.status, path);
    },
    display: (path) => `[${datastore}] ${path.replace(/^\/+/, "")}`,
  };
}

interface HttpsServeContext {
  client: VimClient;
  datacenter: string;
  cookieFile: string;
  options: VsphereOptions;
  ctx: RunContext;
}

/**
 * Serves one disk over HTTPS, in one of three shapes:
 *
 * - one flat file holding exactly the disk (`vmfs`, `monolithicFlat`): nbdkit curl on it, and
 *   nothing else;
 * - a hosted sparse file with its descriptor inside (`monolithicSparse`, `streamOptimized`):
 *   nbdkit curl on it, read by qemu's vmdk driver (qemu-nbd);
 * - a descriptor with several extent files, or with offsets or ZERO extents
 *   (`twoGbMaxExtentFlat`, `twoGbMaxExtentSparse`): one nbdkit curl export per extent file,
 *   put together by qemu's vmdk driver, as `-i vmx` does with the local files
 *   ({@linkcode serveSplitDisk}).
 *
 * Every shape streams: nbdkit curl makes one ranged GET per NBD read, qemu reads what the copy
 * asks for; nothing is held but the requests in flight.
 */
async function serveHttpsDisk(
  disk: VsphereDisk,
  vmdk: VmdkInfo,
  index: number,
  s: HttpsServeContext,
): Promise<AsyncDisposable & { uri: string }> {
  const embedded = vmdk.embedded && vmdk.extents.length === 1;
  const single = !vmdk.embedded && !notRemotelyReadable({ path: `/${disk.path}`, vmdk });
  if (!embedded && !single) return await serveSplitDisk(disk, vmdk, index, s);
  // A flat disk: its one extent; a hosted sparse disk: the file itself, read by qemu.
  const extent = embedded ? vmdk.path : vmdk.extents[0]!.path!;
  await using stack = new AsyncDisposableStack();
  const socket = s.ctx.dir.join(`in-${diskName(index)}${embedded ? "-file" : ""}.sock`);
  const curl = stack.use(await serveDatastoreFile(disk, extent, socket, index, s));
  const fileSize = await probeSize(curl, s.ctx.signal, `"${disk.fileName}"`);
  let top: Server = curl;
  if (embedded) {
    const qemuFile = `json:${
      JSON.stringify({
        driver: "vmdk",
        file: { driver: "nbd", server: { type: "unix", path: socket }, "read-only": true },
        backing: null,
      })
    }`;
    top = stack.use(
      await serveQemuNbd(qemuFile, {
        socket: s.ctx.dir.join(`in-${diskName(index)}.sock`),
        format: "vmdk",
        readOnly: true,
        name: `qemu-nbd (vmdk "${disk.fileName}")`,
        signal: s.ctx.signal,
      }),
    );
  } else if (fileSize !== vmdk.virtualSize) {
    throw new Error(
      `Cannot read "${disk.fileName}" over HTTPS: its extent holds ${fileSize} bytes, not the ` +
        `${vmdk.virtualSize} of the disk`,
    );
  }
  const owned = stack.move();
  return { uri: top.uri, [Symbol.asyncDispose]: () => owned.disposeAsync() };
}

/** nbdkit curl on one file of the disk's datastore, with the cookie and the rate limit. */
async function serveDatastoreFile(
  disk: VsphereDisk,
  path: string,
  socket: string,
  index: number,
  s: HttpsServeContext,
): Promise<Server> {
  const { host, port } = s.options.uri;
  const server = `${host.includes(":") ? `[${host}]` : host}${port === 443 ? "" : `:${port}`}`;
  const url = datastoreUrl(server, s.datacenter, disk.datastore, path);
  const cmd = curlDiskCommand(url, {
    cookieFile: s.cookieFile,
    ...(s.options.caFile ? { caFile: s.options.caFile } : {}),
    noVerify: s.options.uri.noVerify,
    ...s.options.rate,
  });
  // The arguments hold no secret: the cookie goes in as cookie=+FILE.
  s.ctx.debug(`vsphere: disk ${index + 1}: nbdkit ${cmd.args(socket).join(" ")}`);
  return await cmd.serve(socket, {
    name: `nbdkit (curl "${posix.basename(path)}")`,
    signal: s.ctx.signal,
  });
}

/**
 * A descriptor for qemu's vmdk driver whose extents are NBD exports: each extent that has a file
 * names `nbd+unix:///?socket=SOCKET` instead, with the same access, size, type and offset; ZERO
 * extents stay as they are. Without blank lines: qemu 7.2's vmdk driver reads the extent line
 * after a blank line twice, and then opens one extent more than there are `extents.N` options
 * for.
 *
 * @param vmdk The disk, as {@linkcode readVmdk} read it.
 * @param socketOf The socket serving an extent's file (by its path in the datastore).
 * @returns The descriptor's text, and how many extents qemu opens a file for (each needs its
 * `extents.N` option).
 * @throws {Error} For a socket path that cannot go in an NBD URI as it is.
 * @example
 * ```ts
 * import { nbdDescriptor } from "./vsphere.ts";
 * const { text, opened } = nbdDescriptor({
 *   descriptor: { version: 1, cid: "0badf00d", createType: "twoGbMaxExtentSparse", extents: [], ddb: {}, header: {} },
 *   extents: [
 *     { access: "RW", sectors: 4194304, type: "SPARSE", fileName: "g-s001.vmdk", path: "/g/g-s001.vmdk", offset: 0, line: 6 },
 *     { access: "RW", sectors: 2048, type: "SPARSE", fileName: "g-s002.vmdk", path: "/g/g-s002.vmdk", offset: 0, line: 7 },
 *   ],
 * }, (path) => `/run/vmshift/${path.slice(3, -5)}.sock`);
 * if (opened !== 2 || !text.includes('RW 2048 SPARSE "nbd+unix:///?socket=/run/vmshift/g-s002.sock"\n')) {
 *   throw new Error(text);
 * }
 * ```
 */
export function nbdDescriptor(
  vmdk: Pick<VmdkInfo, "descriptor" | "extents">,
  socketOf: (path: string) => string,
): { text: string; opened: number } {
  const lines = [
    "# Disk DescriptorFile",
    "# vmshift: the extents are NBD exports of the datastore's files",
    "version=1",
    `CID=${vmdk.descriptor.cid ?? "fffffffe"}`,
    "parentCID=ffffffff",
    `createType="${vmdk.descriptor.createType}"`,
  ];
  let opened = 0;
  for (const e of vmdk.extents) {
    if (e.path === undefined) {
      lines.push(`${e.access} ${e.sectors} ${e.type}`);
      continue;
    }
    const socket = socketOf(e.path);
    // A URI query value, inside double quotes in the descriptor: only plain path characters.
    if (!/^\/[\w./-]+$/.test(socket)) {
      throw new Error(`Cannot name socket "${socket}" in a VMDK descriptor: odd characters in it`);
    }
    const offset = e.type === "FLAT" ? ` ${e.offset}` : "";
    lines.push(`${e.access} ${e.sectors} ${e.type} "nbd+unix:///?socket=${socket}"${offset}`);
    if (e.access === "RW" && QEMU_FILE_EXTENTS.has(e.type)) opened++;
  }
  return { text: lines.join("\n") + "\n", opened };
}

/** Extent types qemu's vmdk driver opens a file for (it skips the others, and non-RW lines). */
const QEMU_FILE_EXTENTS = new Set(["FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"]);

/**
 * Serves a disk whose descriptor names several extent files (`twoGbMaxExtentFlat`'s
 * `-fNNN.vmdk`, `twoGbMaxExtentSparse`'s `-sNNN.vmdk`), or an extent with an offset or ZERO
 * extents.
 *
 * Each extent file gets its own nbdkit curl export, and qemu's vmdk driver (qemu-nbd) reads a
 * copy of the descriptor whose extents name those exports: it then reads FLAT and SPARSE
 * extents, grain tables and all, exactly as it reads the local files of `-i vmx`. Debian's
 * nbdkit has no way to concatenate remote exports (its split plugin takes local files only,
 * and no filter joins plugins), and a flat-only concatenation would still leave the sparse
 * extents to decode: qemu does both.
 *
 * How the exports reach qemu: the vmdk driver opens each extent by the file name in the
 * descriptor, joined to the descriptor's directory, and passes that name to the child it opens
 * even when `extents.N` options say more, so the NBD driver cannot be given a server there (it
 * refuses a file name with one). A name that is an NBD URI (`nbd+unix:///?socket=PATH`) opens
 * the export by itself; qemu keeps it whole only when the descriptor's directory is empty,
 * which it is for a descriptor opened by a relative file name: so qemu-nbd runs in the
 * descriptor's directory and opens `disk.vmdk`. `extents.N.driver=raw` makes qemu take each
 * extent's bytes as they are, never probing them.
 *
 * `--bandwidth` is applied by each extent's nbdkit, as for a single file: what crosses the
 * network is what is limited. The copy reads the disk front to back, so one extent is read at a
 * time except where parallel requests straddle two extent files, for which the two limits add up.
 */
async function serveSplitDisk(
  disk: VsphereDisk,
  vmdk: VmdkInfo,
  index: number,
  s: HttpsServeContext,
): Promise<AsyncDisposable & { uri: string }> {
  await using stack = new AsyncDisposableStack();
  const dir = s.ctx.dir.join(`in-${diskName(index)}-vmdk`);
  await Deno.mkdir(dir, { mode: 0o700 });
  stack.defer(() => Deno.remove(dir, { recursive: true }).catch(() => {}));
  const sockets = new Map<string, string>();
  for (const [i, e] of vmdk.extents.entries()) {
    if (e.path === undefined || sockets.has(e.path)) continue;
    const socket = s.ctx.dir.join(`in-${diskName(index)}-e${i}.sock`);
    const curl = stack.use(await serveDatastoreFile(disk, e.path, socket, index, s));
    const size = await probeSize(curl, s.ctx.signal, `"${posix.basename(e.path)}"`);
    if (e.fileSize !== undefined && size !== e.fileSize) {
      throw new Error(
        `Cannot read "${disk.fileName}" over HTTPS: its extent "${posix.basename(e.path)}" ` +
          `is served as ${size} bytes, not the ${e.fileSize} the server announced`,
      );
    }
    sockets.set(e.path, socket);
  }
  const { text, opened } = nbdDescriptor(vmdk, (path) => sockets.get(path)!);
  await Deno.writeTextFile(posix.join(dir, "disk.vmdk"), text);
  const extents: Record<string, { driver: "raw" }> = {};
  for (let n = 0; n < opened; n++) extents[String(n)] = { driver: "raw" };
  const qemuFile = `json:${
    JSON.stringify({
      driver: "vmdk",
      file: { driver: "file", filename: "disk.vmdk" },
      extents,
      backing: null,
    })
  }`;
  s.ctx.debug(`vsphere: disk ${index + 1}: qemu-nbd ${qemuFile} in ${dir}`);
  const qemu = stack.use(
    await serveQemuNbd(qemuFile, {
      socket: s.ctx.dir.join(`in-${diskName(index)}.sock`),
      format: "vmdk",
      readOnly: true,
      cwd: dir,
      name: `qemu-nbd (vmdk "${disk.fileName}")`,
      signal: s.ctx.signal,
    }),
  );
  const size = await probeSize(qemu, s.ctx.signal, `"${disk.fileName}"`);
  if (size !== vmdk.virtualSize) {
    throw new Error(
      `Cannot read "${disk.fileName}" over HTTPS: qemu reads ${size} bytes from its extents, ` +
        `not the ${vmdk.virtualSize} its descriptor gives`,
    );
  }
  const owned = stack.move();
  return { uri: qemu.uri, [Symbol.asyncDispose]: () => owned.disposeAsync() };
}

/** Opens an export once: its size, and nbdkit's own words if it cannot open it. */
async function probeSize(server: Server, signal: AbortSignal, what?: string): Promise<number> {
  try {
    const probe = await NbdClient.connect(server.uri, { name: server.name, signal });
    const size = probe.size;
    await probe.close();
    return size;
  } catch (e) {
    signal.throwIfAborted();
    await new Promise((r) => setTimeout(r, 50));
    const said = server.stderr.trim().split("\n").filter((l) => l.trim()).slice(-3).join("; ");
    throw new Error(
      `Cannot open ${what ?? server.name} with ${server.name}: ${said || (e as Error).message}`,
      { cause: e },
    );
  }
}

async function checkVddk(options: VsphereOptions): Promise<void> {
  if (options.vddk.libdir !== undefined) {
    const st = await Deno.stat(options.vddk.libdir).catch(() => undefined);
    if (!st?.isDirectory) {
      throw new Error(`-io vddk-libdir=${options.vddk.libdir} is not a directory`);
    }
  }
  if (!(await nbdkitHas("plugin", "vddk"))) {
    throw new Error(
      "Cannot use -it vddk: nbdkit has no vddk plugin here (nbdkit --dump-plugin vddk fails); " +
        "install nbdkit's vddk plugin and VMware's VDDK, or read the disks with -it https",
    );
  }
  for (const f of ["cow", "blocksize", "retry"]) {
    if (!(await nbdkitHas("filter", f))) {
      throw new Error(`Cannot use -it vddk: nbdkit has no ${f} filter`);
    }
  }
}

/**
 * The vddk plugin's options for one disk.
 *
 * @param options The checked command line.
 * @param vm The VM.
 * @param disk The disk.
 * @param thumbprint The server's SHA-1 thumbprint.
 * @param snapshot The snapshot to read, if any.
 * @returns The options of {@linkcode vddkDiskCommand}.
 */
export function vddkOptions(
  options: VsphereOptions,
  vm: Pick<VsphereVm, "moref">,
  disk: Pick<VsphereDisk, "fileName">,
  thumbprint: string,
  snapshot?: Moref,
): VddkDiskOptions {
  const v = options.vddk;
  const out: VddkDiskOptions = {
    server: options.uri.host,
    user: options.user,
    passwordFile: options.passwordFile,
    thumbprint,
    moref: vm.moref.value,
    file: disk.fileName,
    ...options.rate,
  };
  if (v.libdir !== undefined) out.libdir = v.libdir;
  if (v.transports !== undefined) out.transports = v.transports;
  if (v.config !== undefined) out.config = v.config;
  if (v.cookie !== undefined) out.cookie = v.cookie;
  if (v.nfchostport !== undefined) out.nfchostport = v.nfchostport;
  const port = v.port ?? (options.uri.port !== 443 ? String(options.uri.port) : undefined);
  if (port !== undefined) out.port = port;
  const snap = v.snapshot ?? snapshot?.value;
  if (snap !== undefined) out.snapshot = snap;
  return out;
}
