/**
 * `-i disk FILE`: a single local disk image (raw, qcow2 or vmdk; the format is detected, or
 * given with `-if`). There is no VM description, so the VM gets the file's name, 2 GiB of
 * memory, one vCPU and one NIC on the "default" network, as with virt-v2v.
 *
 * The image is served read-only by qemu-nbd, which decodes the format and reports allocation.
 *
 * @module
 */

import { basename, extname, resolve } from "node:path";
import { fsReason, UsageError } from "../errors.ts";
import { LocalImage } from "../local_image.ts";
import { imageInfo } from "../qemu_img.ts";
import { serveQemuNbd } from "../qemu_nbd.ts";
import { DEFAULT_MEMORY, DEFAULT_VCPUS, type Vm } from "../vm.ts";
import type { Input, InputCli, InputSession, PreparedInput, RunContext } from "./types.ts";

/** Formats vmshift reads with `-i disk`. */
export const DISK_FORMATS = ["raw", "qcow2", "vmdk"] as const;

/** The `-i disk` input. */
export const diskInput: Input = {
  mode: "disk",
  parseOptions(cli: InputCli): PreparedInput {
    if (cli.args.length !== 1) {
      throw new UsageError(
        cli.args.length === 0
          ? `-i disk needs the disk image: vmshift -i disk FILE -o ...`
          : `-i disk takes one disk image, got ${cli.args.length}: ${
            cli.args.map((a) => `"${a}"`).join(" ")
          }`,
      );
    }
    for (const flag of ["conn", "transport", "passwordFile"] as const) {
      if (cli[flag] !== undefined) {
        throw new UsageError(`-i disk does not take ${flagName[flag]}`);
      }
    }
    if (cli.options.length) {
      throw new UsageError(`-i disk takes no -io options, got "${cli.options[0]![0]}"`);
    }
    if (cli.format !== undefined && !(DISK_FORMATS as readonly string[]).includes(cli.format)) {
      throw new UsageError(
        `Unsupported input format "${cli.format}": -if takes ${DISK_FORMATS.join(", ")}`,
      );
    }
    const file = resolve(cli.args[0]!);
    const format = cli.format;
    return {
      description: `-i disk ${file}`,
      open: (ctx) => openDisk(file, format, ctx),
    };
  },
};

const flagName = { conn: "-ic", transport: "-it", passwordFile: "-ip" } as const;

async function openDisk(
  file: string,
  givenFormat: string | undefined,
  ctx: RunContext,
): Promise<InputSession> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(file);
  } catch (e) {
    throw new Error(`Cannot open disk "${file}": ${fsReason(e)}`);
  }
  if (!stat.isFile && !stat.isBlockDevice) {
    throw new Error(`Cannot open disk "${file}": not a file or block device`);
  }
  try {
    (await Deno.open(file, { read: true })).close();
  } catch (e) {
    throw new Error(`Cannot open disk "${file}": ${fsReason(e)}`);
  }
  const info = await imageInfo(file, {
    signal: ctx.signal,
    ...(givenFormat ? { format: givenFormat } : {}),
  });
  if (!(DISK_FORMATS as readonly string[]).includes(info.format)) {
    throw new Error(
      `Cannot open disk "${file}": unsupported format "${info.format}" (vmshift reads ${
        DISK_FORMATS.join(", ")
      })`,
    );
  }
  if (info.backingFile) {
    throw new Error(
      `Cannot open disk "${file}": it has a backing file "${info.backingFile}"; ` +
        `convert it to a standalone image first (qemu-img convert)`,
    );
  }
  ctx.debug(`disk "${file}": format ${info.format}, virtual size ${info.virtualSize}`);
  const server = await serveQemuNbd(file, {
    socket: ctx.dir.join("in-sda.sock"),
    format: info.format,
    readOnly: true,
    name: `qemu-nbd (source "${file}")`,
    signal: ctx.signal,
  });
  const name = basename(file, extname(file)) || "vmshift-guest";
  const vm: Vm = {
    name,
    memory: DEFAULT_MEMORY,
    vcpus: DEFAULT_VCPUS,
    disks: [{ index: 0, source: file, virtualSize: info.virtualSize, sourceFormat: info.format }],
    nics: [{ network: "default" }],
  };
  return {
    vm,
    uris: [server.uri],
    files: [LocalImage.canRead(info.format) ? { path: file, format: info.format } : undefined],
    [Symbol.asyncDispose]: () => server.stop(),
  };
}
