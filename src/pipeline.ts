/**
 * The pipeline, as one straight line (after virt-v2v's `v2v.ml`): choose the modes and check
 * their options, open the source, put a qcow2 overlay in front of every disk, set up the
 * target, copy every disk, finalize. Every resource is acquired with `await using` on the line
 * that creates it, so a failure or an interrupt at any point unwinds in reverse order: the
 * output removes what it created, servers stop, the temporary directory goes.
 *
 * @module
 */

import type { Cli } from "./cli.ts";
import { convert } from "./convert/mod.ts";
import { copyDisk, type CopyResult } from "./copy.ts";
import { UsageError } from "./errors.ts";
import { selectInput } from "./input/mod.ts";
import type { InputSession, RunContext } from "./input/types.ts";
import { selectOutput } from "./output/mod.ts";
import { takeDeadServers } from "./process.ts";
import { formatBytes } from "./progress.ts";
import type { Reporter } from "./progress.ts";
import { createOverlay } from "./qemu_img.ts";
import { serveQemuNbd } from "./qemu_nbd.ts";
import { TempDir } from "./tmpdir.ts";
import { diskName, type Vm } from "./vm.ts";

/**
 * Runs one migration.
 *
 * @param cli The parsed command line (with `-i`).
 * @param reporter Where messages and progress go.
 * @param signal Aborted on SIGINT/SIGTERM.
 * @throws {UsageError} For option errors, before anything is done.
 * @throws {Error} For any failure; everything created was removed by then.
 */
export async function migrate(cli: Cli, reporter: Reporter, signal: AbortSignal): Promise<void> {
  if (!cli.input) throw new UsageError("No input: give -i MODE, e.g. -i disk FILE");
  const input = selectInput(cli.input.mode).parseOptions(cli.input);
  if (!cli.printSource && !cli.output) {
    throw new UsageError("No output: give -o MODE, e.g. -o local -os DIR");
  }
  // Output options are checked before anything is done, to catch errors early.
  const output = cli.printSource || !cli.output
    ? undefined
    : selectOutput(cli.output.mode).parseOptions(cli.output);
  if ((cli.input.bandwidth !== undefined || cli.input.bandwidthFile) && !input.remote) {
    reporter.warning(
      `--bandwidth has no effect on -i ${cli.input.mode}: it limits remote transfers`,
    );
  }

  await using dir = await TempDir.create();
  const ctx: RunContext = {
    dir,
    signal,
    debug: (m) => reporter.debug(m),
    warning: (m) => reporter.warning(m),
  };
  reporter.message(`Setting up the source: ${input.description}`);
  await using source = await input.open(ctx);
  if (!output) {
    printSource(source, cli, reporter);
    return;
  }
  const vm: Vm = { ...source.vm, name: cli.output?.name ?? source.vm.name };

  reporter.message("Creating an overlay to protect the source from being modified");
  const overlays: string[] = [];
  for (const [i, uri] of source.uris.entries()) {
    const path = dir.join(`overlay-${diskName(i)}.qcow2`);
    await createOverlay(path, uri, vm.disks[i]!.virtualSize, { signal });
    overlays.push(path);
  }

  if (cli.convert) {
    const report = await convert(vm, overlays, ctx, {
      root: cli.root,
      fstrim: cli.fstrim,
      message: (m) => reporter.message(m),
      verbose: cli.verbose,
      trace: cli.trace,
      staticIps: cli.staticIps,
      // --root ask asks only where someone can answer.
      ...(Deno.stdin.isTerminal() ? { ask: (question: string) => prompt(question) } : {}),
    });
    reporter.conversion(report);
    if (report.devices) vm.targetDevices = report.devices;
  }

  reporter.message(`Setting up the destination: ${output.description}`);
  await using target = await output.setup(vm, ctx);

  // Disks are copied one after the other, or up to --parallel at once.
  const results: CopyResult[] = new Array(overlays.length);
  let nextDisk = 0;
  // The first disk that fails stops the others.
  const stopLanes = new AbortController();
  const laneSignal = AbortSignal.any([signal, stopLanes.signal]);
  const copyNext = async (): Promise<void> => {
    while (nextDisk < overlays.length && !laneSignal.aborted) {
      const i = nextDisk++;
      reporter.message(
        `Copying disk ${i + 1}/${overlays.length} (${formatBytes(vm.disks[i]!.virtualSize)})`,
      );
      await using server = await serveQemuNbd(overlays[i]!, {
        socket: dir.join(`overlay-${diskName(i)}.sock`),
        format: "qcow2",
        readOnly: true,
        allocationDepth: true,
        name: `qemu-nbd (overlay of disk ${i + 1})`,
        signal,
      });
      try {
        results[i] = await copyDisk(server.uri, target.targets[i]!, {
          signal: laneSignal,
          backingUri: source.uris[i]!,
          ...(source.files?.[i] ? { backingFile: source.files[i] } : {}),
          onProgress: (p) => reporter.progress(i + 1, overlays.length, p),
        });
      } catch (e) {
        if (stopLanes.signal.aborted && !signal.aborted) return; // another disk failed first
        stopLanes.abort();
        throw await explainCopyFailure(e, i, signal);
      } finally {
        reporter.progressDone();
      }
      const r = results[i]!;
      reporter.debug(
        `disk ${i + 1}: ${r.dataBytes} bytes of data (${r.localBytes} read in place), ` +
          `${r.zeroBytes} zeroed, ` +
          `${r.skippedBytes} skipped; copied in ${r.copySeconds.toFixed(2)} s, ` +
          `flushed in ${r.flushSeconds.toFixed(2)} s`,
      );
    }
  };
  const lanes = Array.from({ length: Math.min(cli.parallel, overlays.length) }, copyNext);
  const settled = await Promise.allSettled(lanes);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (failed) {
    // Undo the target now, so that the error can say what was cleaned up.
    const undone = signal.aborted ? "" : await target.abort?.().catch(() => "");
    if (!undone) throw failed.reason;
    const msg = failed.reason instanceof Error ? failed.reason.message : String(failed.reason);
    throw new Error(`${msg} (cleaned up: ${undone})`, { cause: failed.reason });
  }

  reporter.message("Creating output metadata");
  const created = await target.finalize();
  const data = results.reduce((n, r) => n + r.dataBytes, 0);
  reporter.message("Finishing off");
  for (const f of created) reporter.info(`    ${f}`);
  reporter.info(
    `Copied ${formatBytes(data)} of data from ${
      formatBytes(vm.disks.reduce((n, d) => n + d.virtualSize, 0))
    } of disks`,
  );
  reporter.result({
    vm: vm.name,
    created,
    disks: results.map((r) => ({
      size: r.size,
      data_bytes: r.dataBytes,
      zero_bytes: r.zeroBytes,
      skipped_bytes: r.skippedBytes,
    })),
    seconds: Math.round(reporter.elapsed * 10) / 10,
  });
}

async function explainCopyFailure(e: unknown, i: number, signal: AbortSignal): Promise<unknown> {
  if (signal.aborted) return signal.reason ?? e;
  const dead = await takeDeadServers();
  const msg = e instanceof Error ? e.message : String(e);
  return new Error(
    `Copying disk ${i + 1} failed: ${msg}${dead.length ? ` (${dead.join("; ")})` : ""}`,
    { cause: e },
  );
}

function printSource(source: InputSession, cli: Cli, reporter: Reporter): void {
  const vm = source.vm;
  if (cli.machineReadable) {
    reporter.result({ source: vm });
    return;
  }
  const topology = vm.cpuTopology;
  const lines = [
    `    source name: ${vm.name}`,
    ...(vm.genid ? [`       VM genid: ${vm.genid}`] : []),
    ...(vm.guestOs ? [`       guest OS: ${vm.guestOs}`] : []),
    `         memory: ${vm.memory} (bytes)`,
    `       nr vCPUs: ${vm.vcpus}`,
    ...(topology
      ? [
        `   CPU topology: sockets: ${topology.sockets} cores/socket: ${topology.cores} ` +
        `threads/core: ${topology.threads}`,
      ]
      : []),
    `       firmware: ${vm.firmware ?? "unknown"}${vm.secureBoot ? " (secure boot)" : ""}`,
    `disks:`,
    ...vm.disks.map((d) =>
      `\t${d.index} [${d.sourceFormat ?? "?"}] ${d.source} (${formatBytes(d.virtualSize)})${
        d.bus ? ` [${d.bus}]` : ""
      }`
    ),
    `NICs:`,
    ...vm.nics.map((n) =>
      `\tNetwork "${n.network ?? "default"}"${n.mac ? ` mac: ${n.mac}` : ""}${
        n.model ? ` [${n.model}]` : ""
      }`
    ),
  ];
  // --print-source output is the point of the run: printed even with -q.
  console.log(lines.join("\n"));
}
