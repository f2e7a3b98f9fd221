/**
 * VMware's `.vmx` files: the syntax ({@linkcode parseVmx}) and what a VMX says about its VM
 * ({@linkcode vmFromVmx}).
 *
 * VMware never published the format; these are the rules VMware's products follow and write,
 * as libvirt's and virt-v2v's parsers understood them from files in the wild:
 *
 * - one `key = "value"` a line; spaces around `=` are optional;
 * - values are quoted; a value's `"`, `|`, `#` and control characters are written as `|XX`,
 *   two hex digits naming the byte (`|22` is `"`, `|7C` is `|`). Unquoted values of one word
 *   (`numvcpus = 2`) are accepted too: Packer writes them;
 * - keys are compared case-insensitively (`memSize`, `memsize`); they are namespaced with dots
 *   (`scsi0:0.fileName`);
 * - a key that appears twice takes its last value;
 * - `#` starts a comment line (the first line is sometimes `#!/usr/bin/vmware`); blank lines
 *   are ignored; CR-LF line ends are accepted;
 * - `.encoding` names the character set of the file (`UTF-8`, `windows-1252`, `Shift_JIS`,
 *   ...); {@linkcode decodeVmx} applies it.
 *
 * {@linkcode vmFromVmx} then reads the VM: name, memory, CPUs and topology, firmware, secure
 * boot, guest OS, VM generation ID, hard disks (`scsiX:Y`, `sataX:Y`, `nvmeX:Y`, `ideX:Y`) with
 * their files, removable drives (CD-ROMs, floppies: reported, never copied) and NICs. It reads
 * no file: the disks' paths are as the VMX writes them, usually relative to its directory.
 *
 * Both functions are pure, so that the local input, the SSH transport and tests share them.
 *
 * @module
 */

import type { Firmware, Nic, NicModel } from "../vm.ts";

/** One `key = "value"` line of a VMX file. */
export interface VmxEntry {
  /** The key as written (the last occurrence's spelling). */
  key: string;
  /** The value, escapes decoded. */
  value: string;
  /** The line number of the (last) occurrence, from 1. */
  line: number;
}

/**
 * A parsed VMX file: a map from case-insensitive keys to values, in file order, which
 * remembers where each key was written so that errors can name the line.
 */
export class Vmx {
  /** The file's name for messages, e.g. `guest.vmx`. */
  readonly name: string;
  readonly #entries: Map<string, VmxEntry>;
  readonly #duplicates: Array<{ key: string; lines: number[] }>;

  /**
   * @param name The file's name for messages.
   * @param entries The lines, in file order; a later key replaces an earlier one.
   */
  constructor(name: string, entries: Iterable<VmxEntry> = []) {
    this.name = name;
    this.#entries = new Map();
    const seen = new Map<string, number[]>();
    for (const e of entries) {
      const k = e.key.toLowerCase();
      const lines = seen.get(k);
      if (lines) lines.push(e.line);
      else seen.set(k, [e.line]);
      // Delete first, so that the map's order is the order of the winning lines.
      this.#entries.delete(k);
      this.#entries.set(k, e);
    }
    this.#duplicates = [...seen].filter(([, lines]) => lines.length > 1).map(([k, lines]) => ({
      key: this.#entries.get(k)!.key,
      lines,
    }));
  }

  /** How many distinct keys there are. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Keys written more than once, with every line they were written on. The last one counts.
   */
  get duplicates(): ReadonlyArray<{ key: string; lines: number[] }> {
    return this.#duplicates;
  }

  /**
   * The value of a key.
   * @param key The key, in any case.
   * @returns The value, or undefined when the key is absent.
   */
  get(key: string): string | undefined {
    return this.#entries.get(key.toLowerCase())?.value;
  }

  /**
   * Whether a key is present.
   * @param key The key, in any case.
   * @returns True when present.
   */
  has(key: string): boolean {
    return this.#entries.has(key.toLowerCase());
  }

  /**
   * The line a key was (last) written on.
   * @param key The key, in any case.
   * @returns The line number from 1, or undefined when absent.
   */
  line(key: string): number | undefined {
    return this.#entries.get(key.toLowerCase())?.line;
  }

  /**
   * Every entry, in the order of the lines that set them.
   * @returns The entries.
   */
  entries(): VmxEntry[] {
    return [...this.#entries.values()];
  }

  /**
   * A boolean value: `TRUE`/`FALSE` in any case (also `yes`/`no`, `1`/`0`).
   * @param key The key.
   * @returns The value, or undefined when absent.
   * @throws {SyntaxError} When the value is not a boolean; the message names the line.
   */
  bool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    const t = v.trim().toLowerCase();
    if (t === "true" || t === "yes" || t === "1") return true;
    if (t === "false" || t === "no" || t === "0") return false;
    throw this.#invalid(key, "TRUE or FALSE");
  }

  /**
   * A whole number value (decimal, optionally signed).
   * @param key The key.
   * @returns The value, or undefined when absent.
   * @throws {SyntaxError} When the value is not a whole number; the message names the line.
   */
  int(key: string): number | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    const t = v.trim();
    if (!/^[+-]?\d+$/.test(t) || !Number.isSafeInteger(Number(t))) {
      throw this.#invalid(key, "a whole number");
    }
    return Number(t);
  }

  #invalid(key: string, want: string): SyntaxError {
    const e = this.#entries.get(key.toLowerCase())!;
    return new SyntaxError(
      `Cannot parse "${this.name}" line ${e.line}: ${e.key} must be ${want}, not "${e.value}"`,
    );
  }
}

/**
 * Decodes the bytes of a VMX file into text, in the character set its `.encoding` key names
 * (read from the ASCII bytes first). Without `.encoding`, the text is taken as UTF-8, or as
 * windows-1252 (what VMware Workstation on Windows wrote before it added `.encoding`) when it
 * is not valid UTF-8. A UTF-8 byte order mark is dropped.
 *
 * @param bytes The file's contents.
 * @param name The file's name, for messages.
 * @returns The text.
 * @throws {SyntaxError} When `.encoding` names a character set that is not known.
 * @example
 * ```ts
 * import { decodeVmx } from "./vmx_parser.ts";
 * const bytes = new Uint8Array([
 *   ...new TextEncoder().encode('.encoding = "windows-1252"\ndisplayName = "caf'),
 *   0xe9,
 *   ...new TextEncoder().encode('"\n'),
 * ]);
 * if (!decodeVmx(bytes, "x.vmx").includes('"café"')) throw new Error();
 * ```
 */
export function decodeVmx(bytes: Uint8Array, name: string): string {
  let body = bytes;
  if (body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf) body = body.subarray(3);
  const label = encodingOf(new TextDecoder("latin1").decode(body));
  if (label !== undefined) {
    let decoder: TextDecoder;
    try {
      decoder = new TextDecoder(label);
    } catch {
      throw new SyntaxError(`Cannot read "${name}": unknown character set .encoding = "${label}"`);
    }
    return decoder.decode(body);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(body);
  } catch {
    return new TextDecoder("windows-1252").decode(body);
  }
}

/** The `.encoding` value of a VMX's text, if it has one. */
function encodingOf(text: string): string | undefined {
  return text.match(/^[ \t]*\.encoding[ \t]*=[ \t]*"([^"\r\n]*)"/im)?.[1];
}

/**
 * Parses the text of a VMX file.
 *
 * @param text The file's text (see {@linkcode decodeVmx} for bytes).
 * @param name The file's name, for messages.
 * @returns The keys and values.
 * @throws {SyntaxError} For a line that is not `KEY = "VALUE"`, a comment or blank:
 * `Cannot parse "guest.vmx" line 12: expected KEY = "VALUE"`, with what is wrong; and for a
 * disk image given instead of a VMX. The line's text is not quoted (values may be secrets).
 * @example
 * ```ts
 * import { parseVmx } from "./vmx_parser.ts";
 * const vmx = parseVmx('# comment\nMemSize = "2048"\nannotation = "a |22b|22 |7C c"\n', "g.vmx");
 * if (vmx.get("memsize") !== "2048") throw new Error();
 * if (vmx.get("ANNOTATION") !== 'a "b" | c') throw new Error();
 * ```
 */
export function parseVmx(text: string, name: string): Vmx {
  if (text.startsWith("KDMV") || text.startsWith("COWD") || /^# Disk DescriptorFile/.test(text)) {
    throw new SyntaxError(
      `Cannot parse "${name}": it is a VMDK disk image, not a VMX file (give vmshift the .vmx ` +
        `file of the VM)`,
    );
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const charset = encodingOf(text) ?? "utf-8";
  const entries: VmxEntry[] = [];
  const lines = text.split("\n");
  for (const [i, raw] of lines.entries()) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    if (trimmed === "\x00".repeat(trimmed.length)) continue; // NUL padding at the end
    const fail = (detail?: string): never => {
      throw new SyntaxError(
        `Cannot parse "${name}" line ${i + 1}: expected KEY = "VALUE"${
          detail ? ` (${detail})` : ""
        }`,
      );
    };
    const m = trimmed.match(/^([^\s="#]+)\s*=\s*(.*)$/s);
    if (!m) {
      fail(
        !trimmed.includes("=")
          ? 'no "="'
          : /^=/.test(trimmed)
          ? "no key"
          : "a key cannot hold spaces or quotes",
      );
    }
    const key = m![1]!;
    const rest = m![2]!;
    let value: string;
    if (rest.startsWith('"')) {
      // A quote inside a value is written |22, so the first quote after the opening one ends it.
      const end = rest.indexOf('"', 1);
      if (end < 0) fail("the value has no closing quote");
      const after = rest.slice(end + 1).trim();
      if (after !== "" && !after.startsWith("#")) fail("text after the closing quote");
      value = unescapeValue(rest.slice(1, end), charset);
    } else {
      // Packer writes some values without quotes: one word, nothing else.
      if (rest === "") fail("no value");
      if (/[\s"]/.test(rest)) fail("the value must be quoted");
      value = unescapeValue(rest, charset);
    }
    entries.push({ key, value, line: i + 1 });
  }
  return new Vmx(name, entries);
}

/**
 * Decodes `|XX` escapes. Runs of escaped bytes are decoded together in the file's character
 * set, so that an escaped multi-byte character comes out whole; a `|` not followed by two hex
 * digits stands for itself.
 */
function unescapeValue(s: string, charset: string): string {
  if (!s.includes("|")) return s;
  let out = "";
  let bytes: number[] = [];
  const flush = () => {
    if (!bytes.length) return;
    const b = new Uint8Array(bytes);
    out += bytes.every((x) => x < 0x80)
      ? String.fromCharCode(...bytes)
      : safeDecoder(charset).decode(b);
    bytes = [];
  };
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "|" && /^[0-9a-f]{2}$/i.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      flush();
      out += s[i];
    }
  }
  flush();
  return out;
}

function safeDecoder(charset: string): TextDecoder {
  try {
    return new TextDecoder(charset);
  } catch {
    return new TextDecoder("utf-8");
  }
}

// ---------------------------------------------------------------------------------------------
// The VM

/** A hard disk the VMX attaches. */
export interface VmxDisk {
  /** The device's key prefix, e.g. `scsi0:0`. */
  device: string;
  /** The bus of its controller. */
  bus: "scsi" | "sata" | "nvme" | "ide";
  /** The controller's number (`scsi0` → 0). */
  controller: number;
  /** The unit on the controller (`scsi0:1` → 1). */
  unit: number;
  /** `fileName` as written: the VMDK descriptor, usually relative to the VMX's directory. */
  fileName: string;
  /** `deviceType` as written, when given. */
  deviceType?: string;
  /** The controller's model (`scsi0.virtualDev`: `pvscsi`, `lsilogic`, ...), when given. */
  controllerModel?: string;
  /** The line of `fileName`, for messages. */
  line: number;
}

/** A removable drive (CD-ROM, floppy) or another device vmshift does not copy. */
export interface VmxSkippedDevice {
  /** The device's key prefix, e.g. `ide1:0` or `floppy0`. */
  device: string;
  /** What it is. */
  kind: "cdrom" | "floppy" | "other";
  /** `deviceType` as written, when given. */
  deviceType?: string;
  /** `fileName` as written (an ISO image, a host device, `auto detect`), when given. */
  fileName?: string;
}

/** What {@linkcode vmFromVmx} reads from a VMX. */
export interface VmxModel {
  /** `displayName`, else the fallback name. */
  name: string;
  /** `memSize` MiB in bytes (VMware's default, 32 MiB, when absent). */
  memory: number;
  /** `numvcpus` (1 when absent). */
  vcpus: number;
  /** From `cpuid.coresPerSocket`, when it divides the vCPUs. */
  cpuTopology?: { sockets: number; cores: number; threads: number };
  /** `firmware = "efi"` → `uefi`; otherwise BIOS. */
  firmware: Firmware;
  /** `uefi.secureBoot.enabled`, for UEFI guests. */
  secureBoot?: boolean;
  /** `guestOS`, e.g. `debian12-64`, `windows9srv-64`. */
  guestOs?: string;
  /**
   * The VM generation ID as a UUID, from `vm.genid` and `vm.genidX` (as virt-v2v computes it,
   * see qemu's `docs/specs/vmgenid.txt`); undefined unless both are present.
   */
  genid?: string;
  /** Hard disks, boot disk first: `bios.hddOrder`, then SCSI, NVMe, SATA, IDE, by controller and unit. */
  disks: VmxDisk[];
  /** CD-ROMs, floppies and other drives that are not copied, in device order. */
  skipped: VmxSkippedDevice[];
  /** NICs, by `ethernetN` number. */
  nics: Nic[];
  /** Things that are odd but not fatal, for the user. */
  warnings: string[];
}

/** Options of {@linkcode vmFromVmx}. */
export interface VmFromVmxOptions {
  /**
   * The name when the VMX has no `displayName`, e.g. the VMX file's base name.
   * @default "vmshift-guest"
   */
  defaultName?: string;
}

/** VMware's default memory when `memSize` is absent: 32 MiB. */
export const VMX_DEFAULT_MEMORY = 32 * 1024 * 1024;

const BUS_RANK: Record<VmxDisk["bus"], number> = { scsi: 0, nvme: 1, sata: 2, ide: 3 };
const CDROM_TYPES = new Set(["cdrom-image", "atapi-cdrom", "cdrom-raw"]);
const DISK_TYPES = new Set(["disk", "plaindisk", "rawdisk", "scsi-harddisk", "ata-harddisk"]);
const NIC_MODELS: Record<string, NicModel> = {
  e1000: "e1000",
  e1000e: "e1000e",
  vmxnet3: "vmxnet3",
};
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

/**
 * Reads what a VMX says about its VM.
 *
 * As in VMware, a device exists only when its `present` is TRUE, and not when its
 * controller's `present` is FALSE (a disk left out for want of `present` is warned about).
 * Hard disks are `scsiX:Y`, `sataX:Y`, `nvmeX:Y` and `ideX:Y` devices with a `fileName` and a
 * `deviceType` that is absent or a disk type (`scsi-hardDisk`, `ata-hardDisk`, `disk`, ...).
 * CD-ROMs (`cdrom-image`, `atapi-cdrom`, `cdrom-raw`), floppies and other device types are
 * listed in `skipped`. A NIC's MAC is `address` when `addressType` is `static`, else
 * `generatedAddress`; its network is `networkName`, else `vnet` for a `custom` connection, else
 * the device name (`ethernet0`), as virt-v2v names it.
 *
 * @param vmx The parsed VMX.
 * @param options The name to use when the VMX has none.
 * @returns The VM.
 * @throws {SyntaxError} When a value vmshift needs is malformed (`memSize = "lots"`); the
 * message names the file and line.
 * @example
 * ```ts
 * import { parseVmx, vmFromVmx } from "./vmx_parser.ts";
 * const vm = vmFromVmx(parseVmx(`
 * displayName = "web"
 * memSize = "2048"
 * numvcpus = "4"
 * cpuid.coresPerSocket = "2"
 * firmware = "efi"
 * scsi0.present = "TRUE"
 * scsi0:0.present = "TRUE"
 * scsi0:0.fileName = "web.vmdk"
 * ide1:0.present = "TRUE"
 * ide1:0.deviceType = "cdrom-image"
 * ide1:0.fileName = "debian.iso"
 * ethernet0.present = "TRUE"
 * ethernet0.virtualDev = "vmxnet3"
 * ethernet0.networkName = "VM Network"
 * ethernet0.addressType = "generated"
 * ethernet0.generatedAddress = "00:0C:29:12:34:56"
 * `, "web.vmx"));
 * if (vm.memory !== 2 ** 31 || vm.cpuTopology?.sockets !== 2 || vm.firmware !== "uefi") {
 *   throw new Error();
 * }
 * if (vm.disks[0]?.fileName !== "web.vmdk" || vm.skipped[0]?.kind !== "cdrom") throw new Error();
 * if (vm.nics[0]?.mac !== "00:0c:29:12:34:56") throw new Error();
 * ```
 */
export function vmFromVmx(vmx: Vmx, options: VmFromVmxOptions = {}): VmxModel {
  const warnings: string[] = [];
  const at = (key: string) => `"${vmx.name}" line ${vmx.line(key)}`;
  for (const d of vmx.duplicates) {
    warnings.push(
      `"${vmx.name}" sets ${d.key} on lines ${d.lines.join(", ")}: the last one counts`,
    );
  }

  const name = vmx.get("displayName")?.trim() || options.defaultName || "vmshift-guest";

  const memMiB = vmx.int("memSize");
  if (memMiB !== undefined && memMiB <= 0) {
    throw new SyntaxError(
      `Cannot parse "${vmx.name}" line ${vmx.line("memSize")}: memSize must be positive`,
    );
  }
  const memory = memMiB === undefined ? VMX_DEFAULT_MEMORY : memMiB * 1024 * 1024;
  if (memMiB === undefined) {
    warnings.push(`"${vmx.name}" has no memSize: taking VMware's default, 32 MiB`);
  }

  const vcpus = vmx.int("numvcpus") ?? 1;
  if (vcpus <= 0) {
    throw new SyntaxError(
      `Cannot parse "${vmx.name}" line ${vmx.line("numvcpus")}: numvcpus must be positive`,
    );
  }
  let cpuTopology: VmxModel["cpuTopology"];
  const cores = vmx.int("cpuid.coresPerSocket");
  if (cores !== undefined) {
    if (cores > 0 && vcpus % cores === 0) {
      cpuTopology = { sockets: vcpus / cores, cores, threads: 1 };
    } else {
      warnings.push(
        `${at("cpuid.coresPerSocket")}: cpuid.coresPerSocket = ${cores} does not divide ` +
          `numvcpus = ${vcpus}: CPU topology ignored`,
      );
    }
  }

  const fw = vmx.get("firmware")?.trim().toLowerCase();
  let firmware: Firmware = "bios";
  if (fw === "efi") firmware = "uefi";
  else if (fw !== undefined && fw !== "bios") {
    warnings.push(`${at("firmware")}: unknown firmware "${fw}": taking BIOS`);
  }
  const secure = vmx.bool("uefi.secureBoot.enabled");

  const guestOs = vmx.get("guestOS")?.trim() || undefined;
  const genid = genidOf(vmx, warnings);

  // Devices: group "bus C:U.property" keys by device.
  const devices = new Map<string, Map<string, string>>();
  for (const e of vmx.entries()) {
    const m = e.key.match(/^(scsi|sata|nvme|ide)(\d+):(\d+)\.(.+)$/i);
    if (!m) continue;
    const dev = `${m[1]!.toLowerCase()}${Number(m[2])}:${Number(m[3])}`;
    let props = devices.get(dev);
    if (!props) devices.set(dev, props = new Map());
    props.set(m[4]!.toLowerCase(), e.key);
  }

  const disks: VmxDisk[] = [];
  const skipped: VmxSkippedDevice[] = [];
  for (const [dev, props] of devices) {
    const m = dev.match(/^(\w+?)(\d+):(\d+)$/)!;
    const bus = m[1] as VmxDisk["bus"];
    const controller = Number(m[2]);
    const unit = Number(m[3]);
    const key = (p: string) => props.get(p) ?? `${dev}.${p}`;
    // As in VMware, a device is there only when its present key says so.
    const present = vmx.bool(key("present"));
    if (present === false) continue;
    if (present === undefined) {
      if (vmx.get(key("fileName"))) {
        warnings.push(`${dev} has no ${dev}.present = "TRUE": ignored, as VMware ignores it`);
      }
      continue;
    }
    if (vmx.bool(`${bus}${controller}.present`) === false) {
      warnings.push(
        `${dev} is on controller ${bus}${controller}, which is not present: ignored`,
      );
      continue;
    }
    const deviceType = vmx.get(key("deviceType"))?.trim();
    const fileName = vmx.get(key("fileName"));
    const type = deviceType?.toLowerCase();
    if (type !== undefined && CDROM_TYPES.has(type)) {
      skipped.push({
        device: dev,
        kind: "cdrom",
        deviceType: deviceType!,
        ...opt("fileName", fileName),
      });
      continue;
    }
    if (type !== undefined && !DISK_TYPES.has(type)) {
      skipped.push({
        device: dev,
        kind: "other",
        deviceType: deviceType!,
        ...opt("fileName", fileName),
      });
      warnings.push(`${dev} is a "${deviceType}" device: vmshift does not copy it`);
      continue;
    }
    if (fileName === undefined || fileName.trim() === "") {
      warnings.push(`${dev} has no fileName: ignored`);
      continue;
    }
    const disk: VmxDisk = {
      device: dev,
      bus,
      controller,
      unit,
      fileName,
      line: vmx.line(key("fileName"))!,
    };
    if (deviceType) disk.deviceType = deviceType;
    const model = vmx.get(`${bus}${controller}.virtualDev`)?.trim();
    if (model) disk.controllerModel = model;
    disks.push(disk);
  }

  for (const e of vmx.entries()) {
    const m = e.key.match(/^floppy(\d+)\.present$/i);
    if (!m || vmx.bool(e.key) !== true) continue;
    const dev = `floppy${Number(m[1])}`;
    const fileName = vmx.get(`${dev}.fileName`);
    skipped.push({ device: dev, kind: "floppy", ...opt("fileName", fileName) });
  }

  const hddOrder = (vmx.get("bios.hddOrder") ?? "").toLowerCase().split(",").map((s) => s.trim())
    .filter(Boolean);
  const firstRank = (d: VmxDisk) => {
    const i = hddOrder.indexOf(d.device);
    return i < 0 ? hddOrder.length : i;
  };
  disks.sort((a, b) =>
    firstRank(a) - firstRank(b) || BUS_RANK[a.bus] - BUS_RANK[b.bus] ||
    a.controller - b.controller || a.unit - b.unit
  );
  skipped.sort((a, b) =>
    deviceOrder(a.device) - deviceOrder(b.device) || (a.device < b.device ? -1 : 1)
  );

  const nics = nicsOf(vmx, warnings);

  const model: VmxModel = { name, memory, vcpus, firmware, disks, skipped, nics, warnings };
  if (cpuTopology) model.cpuTopology = cpuTopology;
  if (firmware === "uefi" && secure !== undefined) model.secureBoot = secure;
  if (firmware === "bios" && secure) {
    warnings.push(
      `${at("uefi.secureBoot.enabled")}: secure boot is on but the firmware is BIOS: ignored`,
    );
  }
  if (guestOs) model.guestOs = guestOs;
  if (genid) model.genid = genid;
  return model;
}

function opt<K extends string>(k: K, v: string | undefined): { [P in K]?: string } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: string };
}

/** Devices in the disks' order (SCSI, NVMe, SATA, IDE), then floppies. */
function deviceOrder(dev: string): number {
  const m = dev.match(/^([a-z]+)(\d+)(?::(\d+))?$/);
  if (!m) return 1e9;
  const bus = BUS_RANK[m[1] as VmxDisk["bus"]] ?? 9;
  return bus * 1e6 + Number(m[2]) * 1e3 + Number(m[3] ?? 0);
}

function nicsOf(vmx: Vmx, warnings: string[]): Nic[] {
  const ports = new Set<number>();
  for (const e of vmx.entries()) {
    const m = e.key.match(/^ethernet(\d+)\./i);
    if (m) ports.add(Number(m[1]));
  }
  const nics: Nic[] = [];
  for (const port of [...ports].sort((a, b) => a - b)) {
    const ns = `ethernet${port}`;
    if (vmx.bool(`${ns}.present`) !== true) continue;
    const nic: Nic = {};
    const addressType = vmx.get(`${ns}.addressType`)?.trim().toLowerCase();
    const raw = addressType === "static"
      ? vmx.get(`${ns}.address`) ?? vmx.get(`${ns}.generatedAddress`)
      : vmx.get(`${ns}.generatedAddress`) ?? vmx.get(`${ns}.address`);
    const mac = raw?.trim();
    if (mac && MAC_RE.test(mac)) nic.mac = mac.toLowerCase();
    else if (mac) warnings.push(`${ns} has an invalid MAC address "${mac}": ignored`);
    const connection = vmx.get(`${ns}.connectionType`)?.trim().toLowerCase();
    nic.network = vmx.get(`${ns}.networkName`)?.trim() ||
      (connection === "custom" ? vmx.get(`${ns}.vnet`)?.trim() : undefined) || ns;
    const dev = vmx.get(`${ns}.virtualDev`)?.trim().toLowerCase();
    if (dev) nic.model = NIC_MODELS[dev] ?? "unknown";
    nics.push(nic);
  }
  return nics;
}

/**
 * The VM generation ID: `vm.genid` (low 64 bits) and `vm.genidX` (high 64 bits), signed
 * decimal, laid out as a UUID the way virt-v2v does it, so that Windows guests keep their
 * generation ID across the migration.
 */
function genidOf(vmx: Vmx, warnings: string[]): string | undefined {
  const lo = vmx.get("vm.genid")?.trim();
  const hi = vmx.get("vm.genidX")?.trim();
  if (lo === undefined || hi === undefined) return undefined;
  let s: string;
  try {
    s = [lo, hi].map((v) => {
      if (!/^[+-]?\d+$/.test(v)) throw new SyntaxError(v);
      return BigInt.asUintN(64, BigInt(v)).toString(16).padStart(16, "0");
    }).join("");
  } catch {
    warnings.push(`"${vmx.name}" has an invalid vm.genid or vm.genidX: generation ID ignored`);
    return undefined;
  }
  const sub = (i: number, n: number) => s.slice(i, i + n);
  return `${sub(8, 8)}-${sub(4, 4)}-${sub(0, 4)}-${sub(30, 2)}${sub(28, 2)}-` +
    `${sub(26, 2)}${sub(24, 2)}${sub(22, 2)}${sub(20, 2)}${sub(18, 2)}${sub(16, 2)}`;
}
