/**
 * The command line, spelled as virt-v2v spells it, so that scripts written for virt-v2v run
 * with vmshift. virt-v2v's two-letter options take one dash (`-os`, `-oo`); `node:util`
 * `parseArgs` only knows one-letter short options, so those are rewritten to their long form
 * (`--os`) before parsing, and both spellings work.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { UsageError } from "./errors.ts";
import { parseMacIp, type RootChoice, type StaticIp } from "./convert/mod.ts";
import type { InputCli } from "./input/types.ts";
import type { OutputCli } from "./output/types.ts";

/** The whole command line, parsed. */
export interface Cli {
  /** Input options, or undefined when no `-i` was given. */
  input?: InputCli;
  /** Output options, or undefined when no `-o` was given. */
  output?: OutputCli;
  /** `--machine-readable`. */
  machineReadable: boolean;
  /** `--print-source`. */
  printSource: boolean;
  /** `-v`. */
  verbose: boolean;
  /** `-x`: trace external commands. */
  trace: boolean;
  /** `-q`. */
  quiet: boolean;
  /** `-h` / `--help`. */
  help: boolean;
  /** `--parallel N`: copy up to N disks at once. */
  parallel: number;
  /** `-V` / `--version`. */
  version: boolean;
  /** Convert the guest (false with `--no-convert`). */
  convert: boolean;
  /** `--root`: which operating system to convert. */
  root: RootChoice;
  /** Trim filesystems after conversion (false with `--no-fstrim`). */
  fstrim: boolean;
  /** `--mac MAC:ip:ADDR,GW,LEN,DNS...`: static IPs for the new NICs (Windows guests). */
  staticIps: StaticIp[];
}

/** Options with two letters after one dash, as virt-v2v spells them. */
const TWO_LETTER = new Set([
  "ic",
  "if",
  "io",
  "ip",
  "it",
  "oa",
  "oc",
  "of",
  "on",
  "oo",
  "op",
  "os",
]);

const OPTIONS = {
  i: { type: "string", short: "i" },
  ic: { type: "string" },
  if: { type: "string" },
  io: { type: "string", multiple: true },
  ip: { type: "string" },
  it: { type: "string" },
  o: { type: "string", short: "o" },
  oa: { type: "string" },
  oc: { type: "string" },
  of: { type: "string" },
  on: { type: "string" },
  oo: { type: "string", multiple: true },
  op: { type: "string" },
  os: { type: "string" },
  bandwidth: { type: "string" },
  "bandwidth-file": { type: "string" },
  parallel: { type: "string" },
  root: { type: "string" },
  "no-fstrim": { type: "boolean" },
  mac: { type: "string", multiple: true },
  "no-convert": { type: "boolean" },
  "machine-readable": { type: "boolean" },
  "print-source": { type: "boolean" },
  verbose: { type: "boolean", short: "v" },
  x: { type: "boolean", short: "x" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
} as const;

/**
 * Parses vmshift's arguments.
 *
 * @param argv The arguments, without the program name.
 * @returns The parsed command line.
 * @throws {UsageError} For unknown options, missing values and bad values.
 * @example
 * ```ts
 * import { parseCli } from "./cli.ts";
 * const cli = parseCli(["-i", "disk", "g.img", "-o", "local", "-os", "/tmp"]);
 * if (cli.output?.storage !== "/tmp") throw new Error();
 * ```
 */
export function parseCli(argv: readonly string[]): Cli {
  const args: string[] = [];
  let rest = false;
  for (const a of argv) {
    if (rest) args.push(a);
    else if (a === "--") {
      rest = true;
      args.push(a);
    } else if (/^-[a-z]{2}$/.test(a) && TWO_LETTER.has(a.slice(1))) args.push(`-${a}`);
    else if (/^-[a-z]{2,}$/.test(a)) {
      // One dash and several letters that are not a virt-v2v option: parseArgs would read it as
      // a bundle of one-letter flags (-xq); only accept that for flags that exist.
      if ([...a.slice(1)].every((c) => "vxqhV".includes(c))) args.push(a);
      else throw new UsageError(`Unknown option "${a}": see vmshift --help`);
    } else args.push(a);
  }

  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(explain(e));
  }
  const v = parsed.values;
  const cli: Cli = {
    machineReadable: v["machine-readable"] ?? false,
    printSource: v["print-source"] ?? false,
    verbose: v.verbose ?? false,
    trace: v.x ?? false,
    quiet: v.quiet ?? false,
    help: v.help ?? false,
    version: v.version ?? false,
    parallel: v.parallel === undefined ? 1 : parsePositive("--parallel", v.parallel),
    convert: !(v["no-convert"] ?? false),
    root: parseRoot(v.root ?? "ask"),
    fstrim: !(v["no-fstrim"] ?? false),
    staticIps: parseMacs(v.mac ?? []),
  };

  const inputOnly = ["ic", "if", "io", "ip", "it"] as const;
  const outputOnly = ["oa", "oc", "of", "on", "oo", "op", "os"] as const;
  if (v.i === undefined) {
    const stray = inputOnly.find((k) => v[k] !== undefined);
    if (stray) throw new UsageError(`-${stray} needs an input mode: -i MODE`);
  }
  if (v.o === undefined) {
    const stray = outputOnly.find((k) => v[k] !== undefined);
    if (stray) throw new UsageError(`-${stray} needs an output mode: -o MODE`);
  }

  if (v.i !== undefined) {
    const input: InputCli = {
      mode: v.i,
      args: parsed.positionals,
      options: (v.io ?? []).map((kv) => keyValue("-io", kv, true)),
    };
    if (v.ic !== undefined) input.conn = v.ic;
    if (v.if !== undefined) input.format = v.if;
    if (v.it !== undefined) input.transport = v.it;
    if (v.ip !== undefined) input.passwordFile = v.ip;
    if (v.bandwidth !== undefined) input.bandwidth = parseRate(v.bandwidth);
    if (v["bandwidth-file"] !== undefined) input.bandwidthFile = v["bandwidth-file"];
    cli.input = input;
  } else if (parsed.positionals.length) {
    throw new UsageError(
      `Unexpected argument "${
        parsed.positionals[0]
      }": give the input mode first, e.g. -i disk FILE`,
    );
  } else if (v.bandwidth !== undefined) {
    throw new UsageError(`--bandwidth needs an input mode: -i MODE`);
  } else if (v["bandwidth-file"] !== undefined) {
    throw new UsageError(`--bandwidth-file needs an input mode: -i MODE`);
  }

  if (v.o !== undefined) {
    const output: OutputCli = {
      mode: v.o,
      options: (v.oo ?? []).map((kv) => keyValue("-oo", kv, false)),
    };
    if (v.oa !== undefined) output.allocation = v.oa;
    if (v.oc !== undefined) output.conn = v.oc;
    if (v.of !== undefined) output.format = v.of;
    if (v.on !== undefined) output.name = checkName(v.on);
    if (v.op !== undefined) output.passwordFile = v.op;
    if (v.os !== undefined) output.storage = v.os;
    cli.output = output;
  }
  return cli;
}

/** Parses every `--mac`; the `network:`/`bridge:` forms are accepted and have no effect yet. */
function parseMacs(specs: readonly string[]): StaticIp[] {
  const out: StaticIp[] = [];
  for (const spec of specs) {
    try {
      const ip = parseMacIp(spec);
      if (ip) out.push(ip);
    } catch (e) {
      throw new UsageError(e instanceof Error ? e.message : String(e));
    }
  }
  return out;
}

/**
 * Checks `--root`: `ask`, `single`, `first` or a device such as `/dev/sda2`.
 *
 * @param s The value.
 * @returns The choice.
 * @throws {UsageError} For anything else.
 */
export function parseRoot(s: string): RootChoice {
  if (s === "ask" || s === "single" || s === "first") return s;
  if (/^\/dev\/\S+$/.test(s)) return s as `/dev/${string}`;
  throw new UsageError(`Bad --root "${s}": expected ask, single, first or a device like /dev/sda2`);
}

function parsePositive(flag: string, s: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`Bad ${flag} "${s}": expected a whole number from 1`);
  }
  return n;
}

function keyValue(flag: string, kv: string, needValue: boolean): [string, string] {
  const eq = kv.indexOf("=");
  if (eq === 0) throw new UsageError(`Bad ${flag} option "${kv}": expected KEY=VALUE`);
  if (eq < 0) {
    if (needValue) throw new UsageError(`Bad ${flag} option "${kv}": expected KEY=VALUE`);
    return [kv, ""];
  }
  return [kv.slice(0, eq), kv.slice(eq + 1)];
}

/**
 * Parses a `--bandwidth` rate in bits per second, with an optional k/M/G suffix. The suffixes
 * are powers of 1024, as nbdkit's rate filter reads them: virt-v2v hands the string to nbdkit,
 * so `10M` means the same here as there (and as in a `--bandwidth-file`).
 *
 * @param s The rate, e.g. `100M`.
 * @returns Bits per second.
 * @throws {UsageError} When it is not a positive rate.
 */
export function parseRate(s: string): number {
  const m = s.match(/^(\d+(?:\.\d+)?)([kKmMgG]?)$/);
  const n = m
    ? Number(m[1]) * ({ "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 }[m[2]!.toLowerCase()] ?? 1)
    : 0;
  if (!m || !(n >= 1)) {
    throw new UsageError(`Bad --bandwidth "${s}": expected bits per second, e.g. 100M`);
  }
  return Math.round(n);
}

/**
 * Checks a VM name given with `-on`: it becomes part of file names.
 *
 * @param name The name.
 * @returns The name.
 * @throws {UsageError} For an empty name or one with `/` or control characters.
 */
export function checkName(name: string): string {
  // deno-lint-ignore no-control-regex
  if (name === "" || name === "." || name === ".." || /[/\x00-\x1f]/.test(name)) {
    throw new UsageError(
      `Bad -on "${name}": a VM name must not be empty or contain "/" or control characters`,
    );
  }
  return name;
}

function explain(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const code = (e as { code?: string }).code;
  // "Option '-h, --help' does not take an argument": name the long form.
  const quoted = msg.match(/'([^']+)'/)?.[1] ?? "";
  const opt = quoted.match(/--[\w-]+/)?.[0] ?? quoted.match(/-\w/)?.[0] ?? quoted;
  // Show the option the way the user typed it: --os came from -os.
  const shown = opt.replace(/^--([a-z]{2})$/, (all, k) => (TWO_LETTER.has(k) ? `-${k}` : all));
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `Unknown option "${shown}": see vmshift --help`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return msg.includes("does not take an argument")
        ? `Option "${shown}" takes no value: see vmshift --help`
        : `Option "${shown}" needs a value: see vmshift --help`;
    default:
      return msg;
  }
}

/** The `--help` text. */
export const HELP = `vmshift: move a virtual machine from VMware to KVM

Usage:
  vmshift -i INPUT [input options] SOURCE... -o OUTPUT [output options]

vmshift reads a VM from the source without ever writing to it, converts the guest so that
it boots on KVM with virtio (Linux: VMware Tools removed, virtio in the initramfs, bootloader,
fstab and network fixed), copies only the data that matters (no zeroes, no unallocated or
deleted space) and writes it to the target. Options are spelled as
virt-v2v spells them.

Examples:
  # A local disk image to raw files and a libvirt XML in /var/tmp/out
  vmshift -i disk guest.qcow2 -o local -os /var/tmp/out
  # The same, as qcow2, with a boot script for qemu
  vmshift -i disk guest.vmdk -o qemu -os /var/tmp/out -of qcow2 -on newname
  # Read everything and throw it away (test a source, measure reading)
  vmshift -i disk guest.img -o null
  # An OVA into oVirt, through imageio
  vmshift -i ova guest.ova -o rhv -oc https://engine.example/ovirt-engine/api \
      -op password.txt -os data -oo rhv-cafile=ca.pem -oo rhv-cluster=Default

Input:
  -i disk FILE        A disk image: raw, qcow2 or vmdk (format detected)
  -i ova FILE.ova     A VMware OVA: a tar file, or a directory holding an unpacked OVA
  -i vmx FILE.vmx     A VMware VM from its .vmx and .vmdk files (any VMDK subformat)
  -i vmx -it ssh ssh://USER@HOST[:PORT]/PATH/guest.vmx
                      The same, read over SSH (flat VMDKs; -ip FILE for a password)
  -i vsphere -ic vpx://USER@VCENTER/DC/CLUSTER/HOST -ip FILE VM
                      A VM on vCenter (esx://USER@ESXI: on one host), by name or moref,
                      through the vSphere API; also -i libvirt -ic vpx://... VM.
                      -it https (default) or vddk; -io vsphere-cafile=CA.pem,
                      -io vsphere-snapshot=NAME, -io vddk-*=...; ?no_verify=1 skips TLS checks
  -ic URI             Input connection URI (remote inputs)
  -if FORMAT          Input format, instead of detecting it (raw, qcow2, vmdk)
  -io KEY=VALUE       Input option (may repeat)
  -ip FILE            Read the input password from FILE (never on the command line)
  -it TRANSPORT       Input transport
  --bandwidth BPS     Limit the network read rate in bits/s, e.g. 100M (remote inputs)
  --bandwidth-file FILE
                      Read the rate limit from FILE; changes apply while running
  --print-source      Print the source VM and stop

Output:
  -o local -os DIR    Disk files and a libvirt domain XML in DIR
  -o qemu -os DIR     Disk files and a shell script that boots the VM with qemu in DIR
  -o null             Read everything, write nothing
  -o rhv -oc URL -op FILE -os DOMAIN
                      Upload to oVirt/RHV through imageio and create the VM (also spelled
                      rhv-upload, ovirt, ovirt-upload). URL: https://ENGINE/ovirt-engine/api
                      -oo rhv-cafile=CA.pem  the engine's CA (TLS is always verified)
                      -oo rhv-cluster=NAME   the cluster (default "Default")
                      -oo rhv-direct[=false] the imageio daemon only (or the proxy only)
                      -oo rhv-disk-uuid=UUID the disk's id (once per disk, in order)
  -of raw|qcow2       Output disk format (default raw)
  -oa sparse|preallocated
                      Output allocation (default sparse)
  -on NAME            Name of the VM on the target (default: from the source)
  -oc URI             Output connection URI (remote outputs)
  -op FILE            Read the output password from FILE
  -os STORAGE         Output storage: a directory, a storage domain
  -oo KEY[=VALUE]     Output option (may repeat)
  --parallel N        Copy up to N disks at once (default 1)

Conversion (the guest is changed in an overlay, never in the source):
  --root ask|single|first|DEVICE
                      Which operating system to convert when the disks hold several
                      (default ask: asks on a terminal, fails otherwise)
  --no-fstrim         Do not trim the filesystems (copies deleted data too)
  --mac MAC:ip:ADDR,GW,LEN,DNS...
                      Static IPv4 settings for the NIC with that MAC, applied at the first
                      boot (Windows guests; by default the old NIC's static settings)
  --no-convert        Copy the disks unchanged (data disks, guests converted already)

Messages:
  -q, --quiet         Print nothing but errors
  -v, --verbose       Print debug messages
  -x                  Print every external command vmshift runs
  --machine-readable  One JSON object per line on stdout; alone, list capabilities
  -h, --help          This help
  -V, --version       The version

Exit codes:
  0    the VM is fully in place on the target
  1    the migration failed; what vmshift created on the target was removed
  2    the command line is wrong; nothing was done
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM; cleaned up either way
`;
