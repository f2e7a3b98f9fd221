/**
 * `-i vmx -it ssh ssh://USER@HOST[:PORT]/PATH/guest.vmx`: a VMware VM read in place from an
 * ESXi host (or any SSH server holding the VM's directory), as virt-v2v's
 * `virt-v2v -i vmx -it ssh ssh://root@esxi/vmfs/volumes/datastore1/guest/guest.vmx`.
 *
 * 1. One SSH session ({@linkcode openSsh}) checks the host key, logs in and reads the VMX and
 *    the VMDK descriptors over SFTP, through {@linkcode sftpFiles}: the same checks as for
 *    local files ({@linkcode readVmxSource}, {@linkcode readVmdk}).
 * 2. The host key the session verified is written to the run's private `known_hosts`, so that
 *    nbdkit trusts exactly that key.
 * 3. Each disk's flat extent is served read-only by nbdkit's ssh plugin
 *    ({@linkcode serveSshDisk}), with `--bandwidth` / `--bandwidth-file` as its rate filter.
 *    Only disks whose data is one flat file can be read so (monolithicFlat, ESXi's `vmfs`,
 *    twoGbMaxExtentFlat under 2 GiB): sparse formats need qemu's vmdk driver on the file, which
 *    reads only locally; such disks are refused with what to do instead.
 *
 * The SSH session stays open until the input session is disposed, after the servers stop.
 *
 * @module
 */

import { posix } from "node:path";
import { UsageError } from "../errors.ts";
import { NbdClient } from "../nbd/client.ts";
import { diskName } from "../vm.ts";
import { formatSshUri, openSsh, parseSshUri, sshInputOptions, type SshSession } from "./ssh.ts";
import { serveSshDisk, type ServeSshDiskOptions, sshDiskArgs } from "./ssh_disk.ts";
import type { InputCli, RunContext } from "./types.ts";
import type { FileAccess } from "./vmdk.ts";
import type { PreparedVmxTransport, ServedDisk, VmxSourceDisk, VmxTransport } from "./vmx.ts";

/**
 * Checks the command line of `-i vmx -it ssh` and prepares the transport: the argument is the
 * VMX's `ssh://` URI; `-ip FILE` and the `-io ssh-*` options (see {@linkcode sshInputOptions})
 * give the credentials and the known_hosts file.
 *
 * @param cli The input options.
 * @returns The prepared transport (remote: `--bandwidth` applies).
 * @throws {UsageError} For `-ic`, an argument that is not an `ssh://` URI, or other `-io`.
 * @example
 * ```ts
 * import { prepareSsh } from "./vmx_ssh.ts";
 * const t = prepareSsh({
 *   mode: "vmx",
 *   transport: "ssh",
 *   args: ["ssh://root@esxi/vmfs/volumes/ds1/web/web.vmx"],
 *   options: [],
 * });
 * if (!t.remote || t.vmxPath !== "/vmfs/volumes/ds1/web/web.vmx") throw new Error();
 * ```
 */
export function prepareSsh(cli: InputCli): PreparedVmxTransport {
  if (cli.conn !== undefined) {
    throw new UsageError(
      "-i vmx -it ssh does not take -ic: give the VMX as an ssh:// URI, as in " +
        "vmshift -i vmx -it ssh ssh://root@esxi/vmfs/volumes/datastore1/guest/guest.vmx",
    );
  }
  const given = cli.args[0]!;
  if (!/^ssh:\/\//i.test(given)) {
    throw new UsageError(
      `-i vmx -it ssh needs the VMX as an ssh:// URI, got "${given}": ` +
        "ssh://USER@HOST[:PORT]/PATH/guest.vmx",
    );
  }
  const target = parseSshUri(given);
  const { ssh, rest } = sshInputOptions(cli);
  if (rest.length) {
    throw new UsageError(
      `-i vmx -it ssh takes only the ssh-* -io options, got "${rest[0]![0]}"`,
    );
  }
  const shown = formatSshUri(target, target.path);
  const bandwidth = {
    ...(cli.bandwidth !== undefined ? { bandwidth: cli.bandwidth } : {}),
    ...(cli.bandwidthFile !== undefined ? { bandwidthFile: posix.resolve(cli.bandwidthFile) } : {}),
  };
  return {
    vmxPath: target.path,
    vmxName: shown,
    description: `-i vmx -it ssh ${shown}`,
    remote: true,
    async connect(ctx: RunContext): Promise<VmxTransport> {
      const session = await openSsh(given, {
        ...ssh,
        signal: ctx.signal,
        debug: ctx.debug,
        warning: ctx.warning,
      });
      try {
        ctx.debug(
          `vmx: ssh: ${session.server}: host key ${session.hostKey.fingerprint} ` +
            `(${session.hostKey.status}), logged in by ${session.authMethod}`,
        );
        const knownHosts = ctx.dir.join("known_hosts");
        await session.writeKnownHosts(knownHosts);
        return {
          files: sftpFiles(session),
          serveDisk: (disk, ctx) =>
            serveFlatDisk(session, disk, ctx, { ...ssh, ...bandwidth, knownHosts }),
          [Symbol.asyncDispose]: () => session.close(),
        };
      } catch (e) {
        await session.close();
        throw e;
      }
    },
  };
}

/**
 * A {@linkcode FileAccess} over an SSH session's SFTP channel. Missing and unreadable files
 * throw `Deno.errors.NotFound` and `Deno.errors.PermissionDenied`; paths are shown as
 * `ssh://` URIs.
 *
 * @param session The open session.
 * @returns The file access.
 */
export function sftpFiles(session: SshSession): FileAccess {
  return {
    stat: (path) => session.stat(path).catch((e) => Promise.reject(denoError(e))),
    read: (path, offset, length) =>
      session.read(path, offset, length).catch((e) => Promise.reject(denoError(e))),
    display: (path) => formatSshUri(session.target, path),
  };
}

/** SFTP's status codes as Deno's errors, so that messages say "no such file". */
function denoError(e: unknown): unknown {
  const code = (e as { cause?: { code?: unknown } })?.cause?.code;
  const message = e instanceof Error ? e.message : String(e);
  if (code === 2) return new Deno.errors.NotFound(message, { cause: e });
  if (code === 3) return new Deno.errors.PermissionDenied(message, { cause: e });
  return e;
}

/**
 * Why a disk cannot be served over SSH as one flat file, or undefined when it can.
 *
 * @param disk The checked disk (its descriptor's path and what was read of it).
 * @returns The reason, to follow `Cannot read "guest.vmdk" over SSH: `.
 */
export function notRemotelyReadable(
  disk: Pick<VmxSourceDisk, "path" | "vmdk">,
): string | undefined {
  const v = disk.vmdk;
  const name = posix.basename(disk.path);
  const copyLocally = "copy the VM's directory to this host and use -i vmx FILE.vmx";
  const sparse = v.embedded || v.extents.some((e) => e.type === "SPARSE");
  if (sparse) {
    const converted = name.replace(/\.vmdk$/i, "") + "-esx.vmdk";
    return `${v.descriptor.createType} disks can only be read locally; ${copyLocally}, or ` +
      `convert the disk to a flat VMDK on the ESXi host (vmkfstools -i ${name} -d thin ` +
      `${converted}) and point the VMX at "${converted}"`;
  }
  const data = v.extents.filter((e) => e.type !== "ZERO");
  if (data.length === 1 && v.extents.length > 1) {
    return `it has ZERO extents besides its flat file, and only a disk that is one flat file ` +
      `can be read over SSH; ${copyLocally}`;
  }
  if (data.length !== 1) {
    return `its data is split over ${data.length} extent files (${v.descriptor.createType}), ` +
      `and only a disk in one flat file can be read over SSH; ${copyLocally}, or convert it on ` +
      `the ESXi host with vmkfstools -i ${name} -d thin NEW.vmdk`;
  }
  const e = data[0]!;
  if (e.offset !== 0 || e.fileSize !== e.sectors * 512) {
    return `its flat extent "${posix.basename(e.path!)}" holds ${e.fileSize} bytes from offset ` +
      `${e.offset * 512}, not exactly the ${e.sectors * 512} bytes of the disk; ${copyLocally}`;
  }
  return undefined;
}

async function serveFlatDisk(
  session: SshSession,
  disk: VmxSourceDisk,
  ctx: RunContext,
  options: Omit<ServeSshDiskOptions, "socket" | "name" | "signal">,
): Promise<ServedDisk> {
  const shown = formatSshUri(session.target, disk.path);
  const why = notRemotelyReadable(disk);
  if (why) throw new Error(`Cannot read "${shown}" over SSH: ${why}`);
  const extent = disk.vmdk.extents[0]!.path!;
  const uri = formatSshUri(session.target, extent);
  await using stack = new AsyncDisposableStack();
  const socket = ctx.dir.join(`in-${diskName(disk.index)}.sock`);
  // The arguments hold no secret: the password goes in as password=+FILE.
  ctx.debug(`vmx: disk ${disk.index + 1}: nbdkit ${sshDiskArgs(uri, socket, options).join(" ")}`);
  const server = await serveSshDisk(uri, {
    ...options,
    socket,
    name: `nbdkit (ssh "${uri}")`,
    signal: ctx.signal,
  });
  stack.defer(() => server.stop());
  const probe = await NbdClient.connect(server.uri, { name: server.name, signal: ctx.signal });
  const virtualSize = probe.size;
  await probe.close();
  const owned = stack.move();
  return {
    uri: server.uri,
    virtualSize,
    [Symbol.asyncDispose]: () => owned.disposeAsync(),
  };
}
