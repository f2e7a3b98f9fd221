/**
 * Local disk files, shared by the outputs that write into a directory (`-o local`, `-o qemu`):
 * option checks, the file names (`NAME-sda`, as virt-v2v names them), creation, the copy
 * target of each file, and removal of everything created unless the output was committed.
 *
 * Why vmshift's own copy engine and not nbdcopy for local targets (measured on this project's
 * 2-CPU machines, 2-4 GiB of data, see the README's benchmark section): nbdcopy can only read
 * the converted disk through the overlay's qemu-nbd, whose NBD client reads the backing source
 * over one connection: nbdcopy from the overlay took 3.4 s where the same nbdcopy straight from
 * the source took 1.8 s. The copy engine reads around the overlay (only what conversion wrote
 * comes through it), which brings a whole vmshift run level with a standalone nbdcopy from the
 * source for raw output (1.00x) and within 1.2x for qcow2, with progress and the zero handling
 * of every other output. The files are then written in process, with no server hop: raw files
 * with positional writes, sparse qcow2 through our own writer (`qcow2_writer.ts`), which with
 * in-place reads of a local source (`src/local_image.ts`) brought both to qemu-img convert's
 * speed. A preallocated qcow2 (`-oa preallocated`: qemu lays out every cluster) is still created
 * by qemu-img and written through qemu-nbd.
 *
 * @module
 */

import { join, resolve } from "node:path";
import type { CopyTarget } from "../copy.ts";
import { UsageError } from "../errors.ts";
import type { RunContext } from "../input/types.ts";
import type { Server } from "../process.ts";
import { createImage } from "../qemu_img.ts";
import { serveQemuNbd } from "../qemu_nbd.ts";
import { diskName, type Vm } from "../vm.ts";
import { parseDiskOptions } from "./_options.ts";
import { fileTarget, qcow2Target } from "./file_target.ts";
import { Qcow2Writer } from "./qcow2_writer.ts";
import { nbdTarget } from "./nbd_target.ts";
import type { Output, OutputCli, OutputSession, PreparedOutput } from "./types.ts";

/** The options every directory output takes. */
export interface DirOptions {
  /** The output directory (absolute). */
  dir: string;
  /** raw or qcow2. */
  format: "raw" | "qcow2";
  /** Whether disks are preallocated. */
  preallocated: boolean;
  /** `-on`, when given. */
  name?: string;
}

/**
 * Checks `-os`, `-of`, `-oa` for an output that writes files into a directory.
 *
 * @param cli The parsed output options.
 * @returns The checked options.
 * @throws {UsageError} For a missing `-os` or a bad value.
 */
export function parseDirOptions(cli: OutputCli): DirOptions {
  if (!cli.storage) {
    throw new UsageError(`-o ${cli.mode} needs the output directory: -os DIR`);
  }
  for (const [flag, value] of [["-oc", cli.conn], ["-op", cli.passwordFile]] as const) {
    if (value !== undefined) throw new UsageError(`-o ${cli.mode} does not take ${flag}`);
  }
  if (cli.options.length) {
    throw new UsageError(`-o ${cli.mode} takes no -oo options, got "${cli.options[0]![0]}"`);
  }
  const { format, preallocated } = parseDiskOptions(cli);
  return {
    dir: resolve(cli.storage),
    format,
    preallocated,
    ...(cli.name !== undefined ? { name: cli.name } : {}),
  };
}

/**
 * Checks that a path is an existing, writable directory.
 *
 * @param dir The directory.
 * @throws {Error} Naming the directory and the problem.
 */
export async function checkDirectory(dir: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such directory" : String(e);
    throw new Error(`Cannot write to "${dir}": ${why}`);
  }
  if (!st.isDirectory) throw new Error(`Cannot write to "${dir}": not a directory`);
  // access(2) would lie for root on a read-only mount; try it.
  const probe = join(dir, `.vmshift-probe-${Deno.pid}`);
  try {
    (await Deno.open(probe, { write: true, createNew: true })).close();
    await Deno.remove(probe);
  } catch (e) {
    const why = e instanceof Deno.errors.PermissionDenied ? "permission denied" : String(e);
    throw new Error(`Cannot write to "${dir}": ${why}`);
  }
}

/** Disk files being written, with their servers. */
export class DiskFiles implements AsyncDisposable {
  /** Paths of the disk files, in disk order. */
  readonly paths: string[];
  /** Copy targets, in disk order. */
  readonly targets: CopyTarget[] = [];
  readonly #servers: Server[] = [];
  readonly #images: Qcow2Writer[] = [];
  readonly #created: string[] = [];
  #committed = false;

  private constructor(paths: string[]) {
    this.paths = paths;
  }

  /**
   * Creates one empty disk file per source disk and serves each for writing. Refuses to
   * overwrite anything: all names are checked before the first file is created.
   *
   * @param vm The VM (its name is the `-on` name).
   * @param opts Directory, format, allocation.
   * @param ctx Run context.
   * @param extraFiles Other files the output will write (metadata), checked too.
   * @returns The files; dispose to stop the servers (and remove the files unless committed).
   */
  static async create(
    vm: Vm,
    opts: DirOptions,
    ctx: RunContext,
    extraFiles: string[] = [],
  ): Promise<DiskFiles> {
    await checkDirectory(opts.dir);
    const paths = vm.disks.map((d) => join(opts.dir, `${vm.name}-${diskName(d.index)}`));
    for (const p of [...paths, ...extraFiles]) {
      const exists = await Deno.lstat(p).then(() => true, () => false);
      if (exists) {
        throw new Error(`Cannot write "${p}": the file exists (remove it or choose -on NAME)`);
      }
    }
    const files = new DiskFiles(paths);
    try {
      for (const [i, disk] of vm.disks.entries()) {
        const path = paths[i]!;
        if (opts.format === "qcow2" && !opts.preallocated) {
          // Sparse qcow2 is written in process: no server between the copy and the file.
          const image = await Qcow2Writer.create(path, disk.virtualSize);
          files.#created.push(path);
          files.#images.push(image);
          files.targets.push(qcow2Target(image));
          continue;
        }
        await createImage(path, {
          format: opts.format,
          size: disk.virtualSize,
          preallocated: opts.preallocated,
          signal: ctx.signal,
        });
        files.#created.push(path);
        if (opts.format === "raw") {
          // Raw files are written directly: no server between the copy and the file.
          files.targets.push(fileTarget(path));
          continue;
        }
        const server = await serveQemuNbd(path, {
          socket: ctx.dir.join(`out-${diskName(i)}.sock`),
          format: opts.format,
          discard: !opts.preallocated,
          name: `qemu-nbd (target "${path}")`,
          signal: ctx.signal,
        });
        files.#servers.push(server);
        files.targets.push(
          nbdTarget(path, server.uri, { readsZeroes: true, preallocated: opts.preallocated }),
        );
      }
    } catch (e) {
      await files[Symbol.asyncDispose]();
      throw e;
    }
    return files;
  }

  /**
   * Records a metadata file written next to the disks, so it is removed if the run fails.
   * @param path The file.
   */
  created(path: string): void {
    this.#created.push(path);
  }

  /** Stops the servers and finishes the qcow2 images written in process, flushing the files;
   * after this, disposing keeps the files. */
  async commit(): Promise<void> {
    for (const image of this.#images.splice(0)) await image.close();
    await this.#stopServers();
    this.#committed = true;
  }

  async #stopServers(): Promise<void> {
    for (const s of this.#servers.splice(0)) await s.stop();
    for (const image of this.#images.splice(0)) await image.abort();
  }

  /** Stops the servers and, unless committed, removes every file created. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#stopServers();
    if (!this.#committed) {
      for (const p of this.#created.splice(0)) await Deno.remove(p).catch(() => {});
    }
  }
}

/** The metadata file a directory output writes beside the disks. */
export interface Metadata {
  /** File name suffix after the VM name, e.g. `.xml`. */
  suffix: string;
  /** File mode. */
  mode: number;
  /** Renders the file from the VM and its disk files. */
  render(vm: Vm, disks: Array<{ path: string; format: "raw" | "qcow2" }>): string;
}

/**
 * Builds an output that writes the disks into `-os DIR` and one metadata file beside them.
 *
 * @param mode The mode name.
 * @param metadata The metadata file.
 * @returns The output.
 */
export function directoryOutput(mode: string, metadata: Metadata): Output {
  return {
    mode,
    parseOptions(cli: OutputCli): PreparedOutput {
      const opts = parseDirOptions(cli);
      return {
        description: `-o ${mode} -os ${opts.dir}`,
        async setup(vm, ctx): Promise<OutputSession> {
          const metaPath = join(opts.dir, `${vm.name}${metadata.suffix}`);
          const files = await DiskFiles.create(vm, opts, ctx, [metaPath]);
          return {
            targets: files.targets,
            async finalize() {
              await files.commit();
              const disks = files.paths.map((path) => ({ path, format: opts.format }));
              files.created(metaPath);
              await Deno.writeTextFile(metaPath, metadata.render(vm, disks), {
                createNew: true,
                mode: metadata.mode,
              });
              return [...files.paths, metaPath];
            },
            [Symbol.asyncDispose]: () => files[Symbol.asyncDispose](),
          };
        },
      };
    },
  };
}
