/**
 * `-i vmx FILE.vmx`: a VMware VM from its `.vmx` file and its VMDK disks, read in place from a
 * local directory or an NFS mount of the datastore (VMware Workstation, Fusion, ESXi).
 *
 * 1. The VMX is read and parsed ({@linkcode parseVmx}, {@linkcode vmFromVmx}): name, memory,
 *    CPUs and topology, firmware and secure boot, guest OS, generation ID, hard disks on their
 *    buses, NICs with MAC, network and model. CD-ROMs and floppies are reported (a warning per
 *    drive) and not copied.
 * 2. Each disk's `fileName` is taken relative to the VMX's directory, and the disk is checked
 *    before anything is served ({@linkcode readVmdk}): not a snapshot, every extent file there,
 *    readable and as large as the descriptor says.
 * 3. Each disk is served read-only by qemu-nbd, whose vmdk driver reads every subformat
 *    (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse/Flat, streamOptimized, ESXi's
 *    vmfs), from the descriptor. qemu's idea of the disk's size must be the descriptor's.
 *
 * The transport (how files are read and disks served) is a {@linkcode VmxTransport}; this
 * module has the local one. `-it ssh` (`vmx_ssh.ts`: SFTP, nbdkit's ssh plugin) plugs in at
 * {@linkcode VMX_TRANSPORTS}.
 *
 * @module
 */

import { posix, resolve } from "node:path";
import { UsageError } from "../errors.ts";
import { imageInfo } from "../qemu_img.ts";
import { serveQemuNbd } from "../qemu_nbd.ts";
import { type Disk, diskName, type Vm } from "../vm.ts";
import type { Input, InputCli, InputSession, PreparedInput, RunContext } from "./types.ts";
import { type FileAccess, fileError, localFiles, readVmdk, type VmdkInfo } from "./vmdk.ts";
import {
  decodeVmx,
  parseVmx,
  vmFromVmx,
  type VmxDisk,
  type VmxModel,
  type VmxSkippedDevice,
} from "./vmx_parser.ts";
import { prepareSsh } from "./vmx_ssh.ts";

/** A VMX file larger than this is not one (VMware's are a few KiB). */
const MAX_VMX = 4 * 1024 * 1024;

/** A disk of the VM, found in the VMX and checked. */
export interface VmxSourceDisk {
  /** Its position in the VM (0: the boot disk). */
  index: number;
  /** What the VMX says of it. */
  vmx: VmxDisk;
  /** The descriptor's path, resolved against the VMX's directory. */
  path: string;
  /** The descriptor and extents, checked. */
  vmdk: VmdkInfo;
}

/** A VMX read and its disks checked, before anything is served. */
export interface VmxSource {
  /** The VMX's path, as the transport reads it. */
  vmxPath: string;
  /** What the VMX says of the VM. */
  model: VmxModel;
  /** The hard disks, boot disk first. */
  disks: VmxSourceDisk[];
}

/** A disk being served. */
export interface ServedDisk extends AsyncDisposable {
  /** The read-only NBD URI serving the disk's raw guest data. */
  uri: string;
  /** The size the server gives the disk, in bytes. */
  virtualSize: number;
  /** The local file holding the guest data as it is, when the copy may read it in place. */
  file?: { path: string; format: string };
}

/**
 * How `-i vmx` reaches the VM's files: reads them, and serves each checked disk read-only
 * over NBD. Disposing it closes whatever connection it holds (not the disks it served: each
 * {@linkcode ServedDisk} is disposed on its own, first).
 */
export interface VmxTransport extends AsyncDisposable {
  /** Reads the VMX and the VMDK descriptors and headers. */
  readonly files: FileAccess;
  /**
   * Serves one disk, read-only.
   * @param disk The checked disk.
   * @param ctx The run context (socket directory, signal, messages).
   * @returns The server.
   */
  serveDisk(disk: VmxSourceDisk, ctx: RunContext): Promise<ServedDisk>;
}

/** A transport whose options were checked, ready to connect. */
export interface PreparedVmxTransport {
  /** The VMX's path, as the transport's {@linkcode FileAccess} reads it. */
  vmxPath: string;
  /** How the VMX is named in messages (the argument as given). */
  vmxName: string;
  /** One line for messages, e.g. `-i vmx /vms/guest/guest.vmx`. */
  description: string;
  /** Files are read over a network (`--bandwidth` applies). */
  remote: boolean;
  /**
   * Connects.
   * @param ctx The run context.
   * @returns The transport.
   */
  connect(ctx: RunContext): Promise<VmxTransport>;
}

/**
 * HOOK for `-it ssh` (and other transports): `-it NAME` → a function that checks the command
 * line (`-ic`, `-ip`, the argument: a local path or an `ssh://` URI) and prepares the
 * transport. A transport gives a {@linkcode FileAccess} (SFTP for SSH) through which the VMX
 * and the disks are read and checked with the same code as local files, and serves each disk
 * (e.g. nbdkit's ssh plugin on the flat extents of {@linkcode VmxSourceDisk.vmdk}).
 *
 * Without `-it`, {@linkcode prepareLocal} is used.
 */
export const VMX_TRANSPORTS: Record<string, (cli: InputCli) => PreparedVmxTransport> = {
  ssh: prepareSsh,
};

/** The `-i vmx` input. */
export const vmxInput: Input = {
  mode: "vmx",
  parseOptions(cli: InputCli): PreparedInput {
    if (cli.args.length !== 1) {
      throw new UsageError(
        cli.args.length === 0
          ? `-i vmx needs the VMX file: vmshift -i vmx FILE.vmx -o ...`
          : `-i vmx takes one VMX file, got ${cli.args.length}: ${
            cli.args.map((a) => `"${a}"`).join(" ")
          }`,
      );
    }
    if (cli.format !== undefined) {
      throw new UsageError("-i vmx does not take -if: the disks' formats come from the VMX");
    }
    let prepared: PreparedVmxTransport;
    if (cli.transport === undefined) {
      prepared = prepareLocal(cli);
    } else {
      const make = VMX_TRANSPORTS[cli.transport];
      if (!make) {
        throw new UsageError(
          cli.transport === "vddk"
            ? "-i vmx cannot use -it vddk: VDDK reads from vCenter or ESXi (-i vsphere)"
            : `-i vmx cannot use -it ${cli.transport} yet: give the path of a local .vmx ` +
              "file (on a local disk or an NFS mount of the datastore)",
        );
      }
      prepared = make(cli);
    }
    return {
      description: prepared.description,
      remote: prepared.remote,
      async open(ctx) {
        await using stack = new AsyncDisposableStack();
        const transport = stack.use(await prepared.connect(ctx));
        const session = stack.use(
          await openVmx(prepared.vmxPath, transport, ctx, { name: prepared.vmxName }),
        );
        // The session owns the transport: the servers stop first, then the connection closes.
        const owned = stack.move();
        return {
          vm: session.vm,
          uris: session.uris,
          [Symbol.asyncDispose]: () => owned.disposeAsync(),
        };
      },
    };
  },
};

/**
 * The local transport: files read directly, disks served by qemu-nbd from the descriptor.
 *
 * @param cli The input options (the VMX path; no `-ic`, `-ip`, `-io`).
 * @returns The prepared transport.
 * @throws {UsageError} For options a local VMX does not take.
 */
export function prepareLocal(cli: InputCli): PreparedVmxTransport {
  for (const [flag, name] of [["conn", "-ic"], ["passwordFile", "-ip"]] as const) {
    if (cli[flag] !== undefined) {
      throw new UsageError(`-i vmx does not take ${name} without -it ssh`);
    }
  }
  if (cli.options.length) {
    throw new UsageError(`-i vmx takes no -io options, got "${cli.options[0]![0]}"`);
  }
  const given = cli.args[0]!;
  const vmxPath = resolve(given);
  return {
    vmxPath,
    vmxName: given,
    description: `-i vmx ${vmxPath}`,
    remote: false,
    connect: () => Promise.resolve(localTransport()),
  };
}

/**
 * A transport on local files: qemu-nbd serves each disk from its descriptor, read-only.
 *
 * @returns The transport (disposing it does nothing).
 */
export function localTransport(): VmxTransport {
  return {
    files: localFiles,
    serveDisk: serveLocalDisk,
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

async function serveLocalDisk(disk: VmxSourceDisk, ctx: RunContext): Promise<ServedDisk> {
  // qemu's vmdk driver opens the extents the descriptor names, relative to it, read-only.
  // "backing": null: never open a parent, even one the checks missed.
  const qemuFile = `json:${
    JSON.stringify({
      driver: "vmdk",
      file: { driver: "file", filename: disk.path, "read-only": true },
      backing: null,
    })
  }`;
  const info = await imageInfo(qemuFile, { format: "vmdk", signal: ctx.signal }).catch((e) => {
    throw new Error(
      `Cannot read "${disk.path}": qemu cannot open it: ${e instanceof Error ? e.message : e}`,
    );
  });
  const server = await serveQemuNbd(qemuFile, {
    socket: ctx.dir.join(`in-${diskName(disk.index)}.sock`),
    format: "vmdk",
    readOnly: true,
    name: `qemu-nbd (source "${disk.path}")`,
    signal: ctx.signal,
  });
  // One flat extent from its start (monolithicFlat, VMFS): a raw file the copy reads in place.
  const [only, ...more] = disk.vmdk.extents;
  const flat = !more.length && only?.path !== undefined && only.offset === 0 &&
    ["FLAT", "VMFS"].includes(only.type.toUpperCase());
  return {
    uri: server.uri,
    virtualSize: info.virtualSize,
    ...(flat ? { file: { path: only.path!, format: "raw" } } : {}),
    [Symbol.asyncDispose]: () => server.stop(),
  };
}

/** Options of {@linkcode readVmxSource} and {@linkcode openVmx}. */
export interface OpenVmxOptions {
  /**
   * How the VMX is named in messages.
   * @default the transport's display of its path
   */
  name?: string;
}

/**
 * Reads a VMX through a transport's files and checks every disk, serving nothing. Warnings
 * (odd values, drives not copied, disks not closed cleanly) go to `ctx.warning`.
 *
 * @param vmxPath The VMX, as `files` reads it.
 * @param files How to read files.
 * @param ctx The run context.
 * @param options How to name the VMX.
 * @returns The VM and its checked disks.
 * @throws {SyntaxError} For a malformed VMX: `Cannot parse "guest.vmx" line 12: ...`.
 * @throws {Error} For a VMX that cannot be read, has no disks (`"guest.vmx" has no disks`), or
 * a disk that is missing, unreadable, truncated or a snapshot (see {@linkcode readVmdk}).
 */
export async function readVmxSource(
  vmxPath: string,
  files: FileAccess,
  ctx: RunContext,
  options: OpenVmxOptions = {},
): Promise<VmxSource> {
  const name = options.name ?? files.display?.(vmxPath) ?? vmxPath;
  const fail = (detail: string): never => {
    throw new Error(`Cannot read "${name}": ${detail}`);
  };
  let st: { size: number; isFile: boolean };
  try {
    st = await files.stat(vmxPath);
  } catch (e) {
    return fail(fileError(e));
  }
  if (!st.isFile) fail("not a regular file");
  if (st.size > MAX_VMX) fail(`it is ${st.size} bytes: too large for a VMX file`);
  let bytes: Uint8Array;
  try {
    bytes = await files.read(vmxPath, 0, st.size);
  } catch (e) {
    return fail(fileError(e));
  }
  const vmx = parseVmx(decodeVmx(bytes, name), name);
  ctx.debug(`vmx: "${name}": ${vmx.size} keys`);
  const model = vmFromVmx(vmx, {
    defaultName: posix.basename(vmxPath).replace(/\.vmx$/i, "") || "vmshift-guest",
  });
  for (const w of model.warnings) ctx.warning(w);
  for (const s of model.skipped) ctx.warning(skippedMessage(s));
  if (model.disks.length === 0) throw new Error(`"${name}" has no disks`);

  const dir = posix.dirname(vmxPath);
  const disks: VmxSourceDisk[] = [];
  for (const [index, d] of model.disks.entries()) {
    ctx.signal.throwIfAborted();
    const path = resolveDiskPath(dir, d.fileName);
    ctx.debug(`vmx: disk ${index + 1}: ${d.device} (line ${d.line}) "${d.fileName}" → ${path}`);
    const vmdk = await readVmdk(path, files, { signal: ctx.signal });
    for (const w of vmdk.warnings) ctx.warning(w);
    ctx.debug(
      `vmx: disk ${index + 1}: ${vmdk.descriptor.createType}, ${vmdk.virtualSize} bytes, ` +
        `files: ${vmdk.files.map((f) => `"${posix.basename(f)}"`).join(", ")}`,
    );
    disks.push({ index, vmx: d, path, vmdk });
  }
  return { vmxPath, model, disks };
}

/**
 * Opens a VMX through a transport: reads and checks it ({@linkcode readVmxSource}), serves
 * every disk, and checks that each server gives the disk the size of its descriptor.
 *
 * @param vmxPath The VMX, as the transport reads it.
 * @param transport How files are read and disks served.
 * @param ctx The run context.
 * @param options How to name the VMX.
 * @returns The session; disposing it stops the servers (not the transport).
 */
export async function openVmx(
  vmxPath: string,
  transport: VmxTransport,
  ctx: RunContext,
  options: OpenVmxOptions = {},
): Promise<InputSession> {
  const source = await readVmxSource(vmxPath, transport.files, ctx, options);
  await using stack = new AsyncDisposableStack();
  const uris: string[] = [];
  const files: Array<{ path: string; format: string } | undefined> = [];
  const show = (p: string) => transport.files.display?.(p) ?? p;
  for (const disk of source.disks) {
    const served = stack.use(await transport.serveDisk(disk, ctx));
    if (served.virtualSize !== disk.vmdk.virtualSize) {
      throw new Error(
        `Cannot read "${show(disk.path)}": qemu reads a ${served.virtualSize}-byte disk, but ` +
          `its descriptor gives ${disk.vmdk.virtualSize} bytes`,
      );
    }
    uris.push(served.uri);
    files.push(served.file);
  }
  const vm = vmFromSource(source, show);
  const servers = stack.move();
  return {
    vm,
    uris,
    files,
    [Symbol.asyncDispose]: () => servers.disposeAsync(),
  };
}

/**
 * The VM model of a checked VMX.
 *
 * @param source The VMX and its disks.
 * @param show How paths are named (the disks' `source`).
 * @returns The VM.
 */
export function vmFromSource(source: VmxSource, show: (path: string) => string = (p) => p): Vm {
  const m = source.model;
  const vm: Vm = {
    name: m.name,
    memory: m.memory,
    vcpus: m.vcpus,
    firmware: m.firmware,
    disks: source.disks.map((d): Disk => ({
      index: d.index,
      source: show(d.path),
      virtualSize: d.vmdk.virtualSize,
      bus: d.vmx.bus,
      sourceFormat: "vmdk",
    })),
    nics: m.nics,
  };
  if (m.cpuTopology) vm.cpuTopology = m.cpuTopology;
  if (m.secureBoot !== undefined) vm.secureBoot = m.secureBoot;
  if (m.guestOs) vm.guestOs = m.guestOs;
  if (m.genid) vm.genid = m.genid;
  return vm;
}

/**
 * Where a disk's `fileName` points: relative names are relative to the VMX's directory.
 *
 * @param vmxDir The VMX's directory (POSIX).
 * @param fileName The `fileName` value.
 * @returns The absolute path.
 * @example
 * ```ts
 * import { resolveDiskPath } from "./vmx.ts";
 * if (resolveDiskPath("/vms/web", "web.vmdk") !== "/vms/web/web.vmdk") throw new Error();
 * if (resolveDiskPath("/vms/web", "/ds/x.vmdk") !== "/ds/x.vmdk") throw new Error();
 * ```
 */
export function resolveDiskPath(vmxDir: string, fileName: string): string {
  return posix.isAbsolute(fileName) ? posix.normalize(fileName) : posix.join(vmxDir, fileName);
}

function skippedMessage(s: VmxSkippedDevice): string {
  const what = s.kind === "cdrom" ? "CD-ROM" : s.kind === "floppy" ? "floppy drive" : "device";
  const file = s.fileName ? ` ("${s.fileName}")` : "";
  return `${what} ${s.device}${file} is skipped: vmshift copies hard disks only`;
}
