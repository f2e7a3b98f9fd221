/**
 * Boots a disk image under qemu (TCG) and watches its serial console, for tests that check
 * whether a guest boots on some virtual hardware.
 *
 * The guest gets 1 GiB of memory, one CPU, no display, its first serial port on qemu's
 * stdout, user-mode networking with no route out (`restrict=on`) when it has a NIC, and
 * `-no-reboot`: a guest that panics or reboots makes qemu exit. TCG always: KVM hangs on our
 * machines (see DESIGN.md).
 *
 * qemu runs under `setpriv --pdeathsig SIGKILL`, so it dies with the test process, and is
 * killed and reaped before {@linkcode bootUntil} returns or throws. With `snapshot` (the
 * default) qemu's `-snapshot` puts every write in a temporary file it has already unlinked:
 * the disk is opened for reading only, which makes booting a shared cached image safe.
 *
 * @module
 */

/** Disk controllers {@linkcode bootUntil} can attach the disk to. */
export type BootBus = "virtio-blk" | "virtio-scsi" | "sata" | "ide" | "scsi";

/** Network cards {@linkcode bootUntil} can give the guest. */
export type BootNic = "virtio" | "e1000" | "vmxnet3";

/** Options for {@linkcode bootUntil}. */
export interface BootOptions {
  /**
   * The disk's format.
   * @default "raw"
   */
  format?: "raw" | "qcow2";
  /**
   * The controller the disk sits on:
   * - `virtio-blk`: virtio-blk-pci (`/dev/vda`), needs virtio_blk + virtio_pci;
   * - `virtio-scsi`: virtio-scsi-pci (`/dev/sda`), needs virtio_scsi + virtio_pci;
   * - `sata`: ICH9 AHCI (`/dev/sda`, driver ahci), VMware's SATA controller;
   * - `ide`: the PIIX IDE of the `pc` machine (`/dev/sda`, driver ata_piix);
   * - `scsi`: VMware paravirtual SCSI, pvscsi (`/dev/sda`, driver vmw_pvscsi).
   */
  bus: BootBus;
  /**
   * The network card, on qemu's user network (10.0.2.0/24, gateway 10.0.2.2, no route out):
   * `virtio` (virtio_net), `e1000`, or `vmxnet3` (VMware's). Absent: no network card.
   */
  nic?: BootNic;
  /** The NIC's MAC address, e.g. `00:50:56:aa:bb:cc`. @default qemu's, 52:54:00:12:34:56 */
  mac?: string;
  /** Stop, matched, once the console output matches this. */
  want: RegExp;
  /** Stop, not matched, once the console output matches this. */
  fail?: RegExp;
  /** Stop, not matched, after this many milliseconds. */
  timeoutMs: number;
  /** Kills qemu and rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Boot with `-snapshot`: the disk is never written.
   * @default true
   */
  snapshot?: boolean;
  /**
   * The guest's memory in MiB.
   * @default 1024
   */
  memoryMiB?: number;
}

/** What {@linkcode bootUntil} saw. */
export interface BootResult {
  /** True when `want` matched (before `fail`, the timeout, or qemu's exit). */
  matched: boolean;
  /** Why the boot stopped. `exit`: the guest powered off, rebooted or panicked. */
  reason: "want" | "fail" | "timeout" | "exit";
  /** The serial console output, with terminal escape sequences and carriage returns removed. */
  console: string;
  /** Seconds from starting qemu to the end. */
  seconds: number;
}

/**
 * Boots `disk` under qemu with TCG and reads the serial console until `want` matches (then
 * `matched` is true), `fail` matches, the timeout passes, or qemu exits; then kills qemu.
 *
 * Patterns are tested against the whole console output so far, cleaned of escape sequences
 * (systemd colours its status lines) and carriage returns.
 *
 * @param disk The disk image to boot (the only disk, first boot device).
 * @param options Hardware, patterns, timeout.
 * @returns Whether `want` matched, why it stopped, the console output and the time taken.
 * @throws {Error} When qemu cannot start or fails (exits non-zero) on its own; the message
 * quotes qemu's stderr.
 *
 * @example
 * ```ts ignore
 * import { bootUntil } from "./_boot.ts";
 * const r = await bootUntil("/var/cache/vmshift/guests/debian12-0123456789abcdef.img", {
 *   bus: "sata",
 *   nic: "e1000",
 *   want: /login:/,
 *   fail: /Gave up waiting for root|Kernel panic/,
 *   timeoutMs: 300_000,
 * });
 * if (!r.matched) throw new Error(`No login prompt:\n${r.console}`);
 * ```
 */
export async function bootUntil(disk: string, options: BootOptions): Promise<BootResult> {
  options.signal?.throwIfAborted();
  const args = qemuArgs(disk, options);
  const started = performance.now();
  const child = new Deno.Command("setpriv", {
    args: ["--pdeathsig", "SIGKILL", "--", "qemu-system-x86_64", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  let output = "";
  let stderr = "";
  let settle!: (reason: BootResult["reason"]) => void;
  const stopped = new Promise<BootResult["reason"]>((resolve) => settle = resolve);

  const readConsole = (async () => {
    const decoder = new TextDecoder();
    let raw = "";
    for await (const chunk of child.stdout) {
      raw += decoder.decode(chunk, { stream: true });
      // Clean only complete lines' worth: an escape sequence may be split across chunks.
      const cut = raw.lastIndexOf("\n") + 1;
      if (cut > 0) {
        output += clean(raw.slice(0, cut));
        raw = raw.slice(cut);
      }
      const text = output + clean(raw);
      if (options.want.test(text)) settle("want");
      else if (options.fail?.test(text)) settle("fail");
    }
    output += clean(raw);
  })();
  const readStderr = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      stderr = (stderr + decoder.decode(chunk, { stream: true })).slice(-8000);
    }
  })();

  const timer = setTimeout(() => settle("timeout"), options.timeoutMs);
  const onAbort = () => settle("timeout");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  child.status.then(() => settle("exit"));

  let reason: BootResult["reason"];
  try {
    reason = await stopped;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await Promise.all([child.status, readConsole, readStderr]);
  }
  options.signal?.throwIfAborted();

  // The console may have matched in its last bytes, read after qemu exited.
  const status = await child.status;
  if (reason === "exit" && status.success) {
    if (options.want.test(output)) reason = "want";
    else if (options.fail?.test(output)) reason = "fail";
  }
  if (reason === "exit" && !status.success) {
    const detail = stderr.trim().split("\n").slice(-5).join("\n");
    throw new Error(
      `Cannot boot "${disk}": qemu-system-x86_64 failed with exit code ${status.code}: ${detail}`,
    );
  }
  return {
    matched: reason === "want",
    reason,
    console: output,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
}

/** The qemu command line for {@linkcode bootUntil}, without the program. */
export function qemuArgs(disk: string, options: BootOptions): string[] {
  const format = options.format ?? "raw";
  const args = [
    "-machine",
    "pc,accel=tcg",
    "-m",
    String(options.memoryMiB ?? 1024),
    "-nodefaults",
    "-display",
    "none",
    "-no-reboot",
    "-monitor",
    "none",
    "-serial",
    "stdio",
  ];
  if (options.snapshot ?? true) args.push("-snapshot");
  // The file name goes through qemu's option parser: a comma must be doubled.
  const file = disk.replaceAll(",", ",,");
  const cache = options.snapshot ?? true ? ",cache=unsafe" : "";
  args.push("-drive", `file=${file},format=${format},if=none,id=disk0${cache}`);
  switch (options.bus) {
    case "virtio-blk":
      args.push("-device", "virtio-blk-pci,drive=disk0,bootindex=0");
      break;
    case "virtio-scsi":
      args.push(
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-device",
        "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0",
      );
      break;
    case "sata":
      args.push(
        "-device",
        "ahci,id=ahci0",
        "-device",
        "ide-hd,drive=disk0,bus=ahci0.0,bootindex=0",
      );
      break;
    case "ide":
      args.push("-device", "ide-hd,drive=disk0,bus=ide.0,bootindex=0");
      break;
    case "scsi":
      args.push(
        "-device",
        "pvscsi,id=scsi0",
        "-device",
        "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0",
      );
      break;
  }
  if (options.nic) {
    const model = { virtio: "virtio-net-pci", e1000: "e1000", vmxnet3: "vmxnet3" }[options.nic];
    args.push("-netdev", "user,id=net0,restrict=on");
    args.push("-device", `${model},netdev=net0${options.mac ? `,mac=${options.mac}` : ""}`);
  }
  return args;
}

/** Terminal escape sequences. */
const ESCAPES = new RegExp(
  [
    String.raw`\x1b\[[0-?]*[ -/]*[@-~]`, // CSI: colours, cursor movement
    String.raw`\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)`, // OSC: window titles
    String.raw`\x1b[()][0-9A-Za-z]|\x1b[=>78cM]`, // charset selection, keypad, save/restore
  ].join("|"),
  "g",
);

/** Removes terminal escape sequences and carriage returns. */
function clean(text: string): string {
  return text.replace(ESCAPES, "").replaceAll("\r", "");
}
