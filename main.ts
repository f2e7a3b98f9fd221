/**
 * vmshift: move virtual machines off VMware onto KVM.
 *
 * The command-line entry: parse the arguments, run the pipeline, turn the outcome into an exit
 * code (0 only when the VM is fully in place on the target; see {@linkcode EXIT}).
 *
 * @module
 */

import { HELP, parseCli } from "./src/cli.ts";
import { isSubcommand, PLAN_HELP } from "./src/plan/help.ts";
import { EXIT, InterruptedError, UsageError } from "./src/errors.ts";
import { INPUT_MODES } from "./src/input/mod.ts";
import { OUTPUT_MODES } from "./src/output/mod.ts";
import { migrate } from "./src/pipeline.ts";
import { killAll, traceCommands } from "./src/process.ts";
import { Reporter } from "./src/progress.ts";
import denoJson from "./deno.json" with { type: "json" };

/** The version, from deno.json. */
export const VERSION: string = denoJson.version;

/**
 * What `--machine-readable` alone prints, one per line, the way virt-v2v lists its features,
 * so that management tools probing virt-v2v can probe vmshift.
 */
export const CAPABILITIES: readonly string[] = [
  "vmshift",
  "virt-v2v",
  ...INPUT_MODES.map((m) => `input:${m}`),
  // -i vsphere -it vddk: nbdkit's vddk plugin (when it and VMware's VDDK are installed).
  "vddk",
  ...OUTPUT_MODES.map((m) => `output:${m}`),
  "convert:linux",
  "convert:windows",
  "mac-ip-option",
  "bandwidth-option",
];

/**
 * Runs vmshift with the given arguments.
 *
 * @param argv Arguments without the program name.
 * @returns The exit code.
 */
export async function main(argv: readonly string[]): Promise<number> {
  // `vmshift plan|schedule|status PLAN`; a command line with -i is always one migration.
  if (isSubcommand(argv)) {
    const { runSubcommand } = await import("./src/plan/cli.ts");
    return await runSubcommand(argv);
  }
  let cli;
  try {
    cli = parseCli(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`vmshift: error: ${e.message}`);
      return EXIT.usage;
    }
    throw e;
  }
  if (cli.help) {
    console.log(HELP + "\n" + PLAN_HELP);
    return EXIT.ok;
  }
  if (cli.version) {
    console.log(cli.machineReadable ? JSON.stringify({ version: VERSION }) : `vmshift ${VERSION}`);
    return EXIT.ok;
  }
  if (cli.machineReadable && !cli.input && !cli.output) {
    console.log(CAPABILITIES.join("\n"));
    return EXIT.ok;
  }

  const reporter = new Reporter({
    voice: cli.machineReadable ? "machine" : cli.quiet ? "quiet" : "human",
    verbose: cli.verbose,
  });
  if (cli.trace) traceCommands((argv) => reporter.debugAlways(`+ ${argv.join(" ")}`));

  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (sig: "SIGINT" | "SIGTERM") => () => {
    interrupts++;
    if (interrupts === 1) {
      reporter.warning(`${sig} received: stopping and cleaning up`);
      controller.abort(new InterruptedError(sig));
    } else {
      // A second interrupt: stop waiting for a clean unwind.
      killAll();
      Deno.exit(sig === "SIGINT" ? EXIT.sigint : EXIT.sigterm);
    }
  };
  const handlers = { SIGINT: onSignal("SIGINT"), SIGTERM: onSignal("SIGTERM") };
  for (const [sig, h] of Object.entries(handlers)) Deno.addSignalListener(sig as Deno.Signal, h);
  // A run started by `vmshift schedule` stops (and cleans up) when its scheduler dies, so that
  // the VM the scheduler's successor retries is not migrated twice.
  const scheduler = Number(Deno.env.get("VMSHIFT_SCHEDULER_PID"));
  const parentWatch = scheduler ? watchParent(scheduler, handlers.SIGTERM) : undefined;
  try {
    await migrate(cli, reporter, controller.signal);
    return EXIT.ok;
  } catch (e) {
    const reason = controller.signal.aborted ? controller.signal.reason : e;
    if (reason instanceof InterruptedError) {
      reporter.error(`${reason.message}; everything vmshift created was removed`);
      return reason.signal === "SIGINT" ? EXIT.sigint : EXIT.sigterm;
    }
    if (e instanceof UsageError) {
      reporter.error(e.message);
      return EXIT.usage;
    }
    reporter.error(e instanceof Error ? e.message : String(e));
    if (cli.verbose && e instanceof Error && e.stack) reporter.debug(e.stack);
    return EXIT.failure;
  } finally {
    clearInterval(parentWatch);
    for (const [sig, h] of Object.entries(handlers)) {
      Deno.removeSignalListener(sig as Deno.Signal, h);
    }
    killAll();
  }
}

/**
 * Calls `onDeath` once this process's parent is no longer `parent` (it died, perhaps even
 * before this process got here: compared with the pid the parent gave, not with the parent
 * found at start).
 * @param parent The scheduler's process id.
 * @param onDeath What to do.
 * @returns The polling interval, to clear.
 */
function watchParent(
  parent: number,
  onDeath: () => void,
): ReturnType<typeof setInterval> | undefined {
  const ppid = () => {
    try {
      // /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
      const stat = Deno.readTextFileSync("/proc/self/stat");
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      return undefined;
    }
  };
  if (ppid() === undefined) return undefined;
  if (ppid() !== parent) {
    queueMicrotask(onDeath);
    return undefined;
  }
  const t = setInterval(() => {
    if (ppid() !== parent) {
      clearInterval(t);
      onDeath();
    }
  }, 250);
  Deno.unrefTimer(t);
  return t;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
