/**
 * A migration plan: the VMs to move, each with its input and output settings (shared defaults
 * keep a plan short), maintenance windows, priorities, dependencies and concurrency limits.
 * Written in JSON or YAML; `schema/plan.schema.json` describes it for editors.
 *
 * Checking is strict and names the VM and the field of every problem
 * (`vms[2] "app1": after: no VM named "db9" in the plan`), and checks each VM's options the
 * way a single `vmshift -i ... -o ...` run would, so that a plan that validates does not fail
 * later on a typo.
 *
 * @module
 */

import YAML from "yaml";
import { parseCli, parseRate } from "../cli.ts";
import { errorMessage, UsageError } from "../errors.ts";
import { selectInput } from "../input/mod.ts";
import { selectOutput } from "../output/mod.ts";
import type { InputCli } from "../input/types.ts";
import type { OutputCli } from "../output/types.ts";
import { type Cron, parseCron } from "./cron.ts";

/** One problem in a plan. */
export interface PlanIssue {
  /** The VM's name (or `vms[N]` when it has none); absent for plan-wide fields. */
  vm?: string;
  /** The field, as a path: `input.mode`, `windows[0].cron`. */
  field: string;
  /** What is wrong. */
  message: string;
}

/** A plan that does not hold together; {@linkcode PlanError.issues} lists every problem. */
export class PlanError extends Error {
  /** Every problem found. */
  readonly issues: PlanIssue[];

  /**
   * @param file The plan file.
   * @param issues The problems.
   */
  constructor(file: string, issues: PlanIssue[]) {
    super(`Plan "${file}" is not valid:\n${issues.map((i) => `  ${formatIssue(i)}`).join("\n")}`);
    this.name = "PlanError";
    this.issues = issues;
  }
}

/**
 * One issue as a line.
 * @param i The issue.
 * @returns E.g. `vm "db1": input.mode: ...`.
 */
export function formatIssue(i: PlanIssue): string {
  return `${i.vm !== undefined ? `vm "${i.vm}": ` : ""}${i.field}: ${i.message}`;
}

/**
 * The input side of a plan entry: the `-i` options of one run, as the command line has them,
 * with `-io` options keyed by name.
 */
export type PlanInput = Omit<InputCli, "options"> & { options: Record<string, string> };

/**
 * The output side of a plan entry: the `-o` options of one run, as the command line has them,
 * with `-oo` options keyed by name.
 */
export type PlanOutput = Omit<OutputCli, "options"> & { options: Record<string, string> };

/** A VM of the plan, with the defaults applied. */
export interface PlanVm {
  name: string;
  input: PlanInput;
  output: PlanOutput;
  /** Convert the guest (false: `--no-convert`). */
  convert: boolean;
  /** `--root`, when given. */
  root?: string;
  /** Higher goes first. */
  priority: number;
  /** VMs that must be done before this one starts. */
  after: string[];
  /** The source host, for `limits.perSourceHost` (default: the host of `input.conn` or of an `ssh://` source). */
  sourceHost?: string;
  /** The datastore, for `limits.perDatastore`. */
  datastore?: string;
  /** Bytes to copy, as estimated for the window fit (default: the size of the input files). */
  size?: number;
}

/** A maintenance window. */
export interface PlanWindow {
  name: string;
  cron: Cron;
  /** Milliseconds. */
  durationMs: number;
  /** `--bandwidth` for runs in this window, bits/s. */
  bandwidth?: number;
}

/** Concurrency limits; absent means no limit. */
export interface PlanLimits {
  total: number;
  perSourceHost?: number;
  perDatastore?: number;
  perStorageDomain?: number;
}

/** A checked plan. */
export interface Plan {
  /** The file it came from. */
  file: string;
  windows: PlanWindow[];
  limits: PlanLimits;
  retry: { attempts: number; backoffMs: number; maxBackoffMs: number };
  /** Bytes/s assumed for the window fit before any rate was measured. */
  assumedRate?: number;
  vms: PlanVm[];
}

const TOP = ["version", "defaults", "windows", "limits", "retry", "assumedRate", "vms"];
const VM_KEYS = [
  "name",
  "input",
  "output",
  "convert",
  "root",
  "priority",
  "after",
  "sourceHost",
  "datastore",
  "size",
];
const INPUT_KEYS = ["mode", "args", "conn", "format", "transport", "passwordFile", "options"];
const OUTPUT_KEYS = [
  "mode",
  "conn",
  "format",
  "allocation",
  "storage",
  "passwordFile",
  "name",
  "options",
];

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Reads and checks a plan file.
 *
 * @param file A `.json`, `.yaml` or `.yml` file.
 * @returns The checked plan.
 * @throws {PlanError} Listing every problem.
 */
export async function loadPlan(file: string): Promise<Plan> {
  let text;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new PlanError(file, [{ field: "(file)", message: `cannot read: ${errorMessage(e)}` }]);
  }
  return parsePlan(text, file);
}

/**
 * Parses and checks a plan.
 *
 * @param text JSON or YAML (JSON when the file name ends in `.json`).
 * @param file The file name, for messages.
 * @returns The checked plan.
 * @throws {PlanError} Listing every problem.
 * @example
 * ```ts
 * import { parsePlan } from "./plan.ts";
 * const plan = parsePlan(`
 * defaults: { output: { mode: "null" } }
 * vms:
 *   - { name: db, input: { mode: disk, args: [db.img] } }
 * `, "plan.yaml");
 * if (plan.vms[0]!.output.mode !== "null") throw new Error();
 * ```
 */
export function parsePlan(text: string, file: string): Plan {
  let doc: unknown;
  try {
    doc = file.endsWith(".json") ? JSON.parse(text) : YAML.parse(text, { uniqueKeys: true });
  } catch (e) {
    throw new PlanError(file, [{ field: "(file)", message: errorMessage(e).split("\n")[0]! }]);
  }
  const issues: PlanIssue[] = [];
  const plan = check(doc, file, issues);
  if (issues.length) throw new PlanError(file, issues);
  return plan;
}

function check(doc: unknown, file: string, issues: PlanIssue[]): Plan {
  const add = (field: string, message: string, vm?: string) =>
    issues.push(vm === undefined ? { field, message } : { vm, field, message });
  const plan: Plan = {
    file,
    windows: [],
    limits: { total: 1 },
    retry: { attempts: 3, backoffMs: 30_000, maxBackoffMs: 600_000 },
    vms: [],
  };
  if (!isObj(doc)) {
    add("(top)", "expected an object with a vms list");
    return plan;
  }
  unknownKeys(doc, TOP, "", add);
  if (doc.version !== undefined && doc.version !== 1) add("version", "expected 1");

  // Windows.
  if (doc.windows !== undefined) {
    if (!Array.isArray(doc.windows)) add("windows", "expected a list");
    else {
      doc.windows.forEach((w, i) => {
        const at = `windows[${i}]`;
        if (!isObj(w)) return add(at, "expected an object with cron and duration");
        unknownKeys(w, ["name", "cron", "duration", "bandwidth"], `${at}.`, add);
        const name = w.name === undefined ? `window ${i + 1}` : w.name;
        if (typeof name !== "string") add(`${at}.name`, "expected a string");
        let cron: Cron | undefined;
        if (typeof w.cron !== "string") {
          add(`${at}.cron`, 'expected a cron expression: "0 22 * * *"');
        } else {
          try {
            cron = parseCron(w.cron);
          } catch (e) {
            add(`${at}.cron`, errorMessage(e));
          }
        }
        const durationMs = duration(w.duration, `${at}.duration`, add, true);
        let bandwidth: number | undefined;
        if (w.bandwidth !== undefined) {
          bandwidth = rate(w.bandwidth, `${at}.bandwidth`, add);
        }
        if (cron && durationMs !== undefined) {
          const win: PlanWindow = { name: String(name), cron, durationMs };
          if (bandwidth !== undefined) win.bandwidth = bandwidth;
          plan.windows.push(win);
        }
      });
    }
  }

  // Limits.
  if (doc.limits !== undefined) {
    if (!isObj(doc.limits)) add("limits", "expected an object");
    else {
      const l = doc.limits;
      const keys = ["total", "perSourceHost", "perDatastore", "perStorageDomain"] as const;
      unknownKeys(l, keys, "limits.", add);
      for (const k of keys) {
        if (l[k] === undefined) continue;
        const n = l[k];
        if (typeof n !== "number" || !Number.isInteger(n) || n < 1) {
          add(`limits.${k}`, "expected a whole number from 1");
        } else plan.limits[k] = n;
      }
    }
  }

  // Retry.
  if (doc.retry !== undefined) {
    if (!isObj(doc.retry)) add("retry", "expected an object");
    else {
      const r = doc.retry;
      unknownKeys(r, ["attempts", "backoff", "maxBackoff"], "retry.", add);
      if (r.attempts !== undefined) {
        if (typeof r.attempts !== "number" || !Number.isInteger(r.attempts) || r.attempts < 1) {
          add("retry.attempts", "expected a whole number from 1");
        } else plan.retry.attempts = r.attempts;
      }
      const b = duration(r.backoff, "retry.backoff", add, false);
      if (b !== undefined) plan.retry.backoffMs = b;
      const mb = duration(r.maxBackoff, "retry.maxBackoff", add, false);
      if (mb !== undefined) plan.retry.maxBackoffMs = mb;
    }
  }
  if (doc.assumedRate !== undefined) {
    const r = size(doc.assumedRate, "assumedRate", add);
    if (r !== undefined) plan.assumedRate = r;
  }

  // Defaults.
  let defaults: Obj = {};
  if (doc.defaults !== undefined) {
    if (!isObj(doc.defaults)) add("defaults", "expected an object");
    else {
      defaults = doc.defaults;
      unknownKeys(defaults, VM_KEYS.filter((k) => k !== "name" && k !== "after"), "defaults.", add);
      for (const side of ["input", "output"] as const) {
        const d = defaults[side];
        if (d === undefined) continue;
        if (!isObj(d)) add(`defaults.${side}`, "expected an object");
        else unknownKeys(d, side === "input" ? INPUT_KEYS : OUTPUT_KEYS, `defaults.${side}.`, add);
      }
    }
  }

  // VMs.
  if (!Array.isArray(doc.vms)) {
    add("vms", "expected a list of VMs");
    return plan;
  }
  if (doc.vms.length === 0) add("vms", "the plan has no VMs");
  const seen = new Set<string>();
  const afterOf = new Map<string, string[]>();
  doc.vms.forEach((raw, i) => {
    const label = isObj(raw) && typeof raw.name === "string" && raw.name ? raw.name : `vms[${i}]`;
    const vmAdd = (field: string, message: string) => add(field, message, label);
    if (!isObj(raw)) return vmAdd("(vm)", "expected an object with name, input and output");
    unknownKeys(raw, VM_KEYS, "", vmAdd);
    if (typeof raw.name !== "string" || raw.name === "") {
      return vmAdd("name", "expected a non-empty string");
    }
    if (seen.has(raw.name)) vmAdd("name", "another VM of the plan has this name");
    seen.add(raw.name);
    const merged: Obj = { ...defaults, ...raw };
    const input = side(defaults.input, raw.input, "input", INPUT_KEYS, vmAdd);
    const output = side(defaults.output, raw.output, "output", OUTPUT_KEYS, vmAdd);
    const vm: PlanVm = {
      name: raw.name,
      input: input as unknown as PlanInput,
      output: output as unknown as PlanOutput,
      convert: true,
      priority: 0,
      after: [],
    };
    if (merged.convert !== undefined) {
      if (typeof merged.convert !== "boolean") vmAdd("convert", "expected true or false");
      else vm.convert = merged.convert;
    }
    if (merged.root !== undefined) {
      if (typeof merged.root !== "string") vmAdd("root", "expected a string");
      else vm.root = merged.root;
    }
    if (merged.priority !== undefined) {
      if (typeof merged.priority !== "number" || !Number.isInteger(merged.priority)) {
        vmAdd("priority", "expected a whole number (higher goes first)");
      } else vm.priority = merged.priority;
    }
    if (raw.after !== undefined) {
      const a = typeof raw.after === "string" ? [raw.after] : raw.after;
      if (!Array.isArray(a) || a.some((x) => typeof x !== "string")) {
        vmAdd("after", "expected a VM name or a list of VM names");
      } else vm.after = a as string[];
    }
    for (const k of ["sourceHost", "datastore"] as const) {
      if (merged[k] === undefined) continue;
      if (typeof merged[k] !== "string") vmAdd(k, "expected a string");
      else vm[k] = merged[k] as string;
    }
    if (merged.size !== undefined) {
      const s = size(merged.size, "size", vmAdd);
      if (s !== undefined) vm.size = s;
    }
    if (vm.sourceHost === undefined) {
      // The host of -ic, or of an ssh:// source (-i vmx -it ssh).
      const uri = typeof input.conn === "string"
        ? input.conn
        : Array.isArray(input.args) && /^\w+:\/\//.test(String(input.args[0]))
        ? String(input.args[0])
        : undefined;
      const host = uri === undefined ? undefined : hostOf(uri);
      if (host) vm.sourceHost = host;
    }
    if (typeof input.mode === "string" && typeof output.mode === "string") {
      // The options are checked as one vmshift run would check them.
      checkRun(vm, vmAdd);
    }
    afterOf.set(vm.name, vm.after);
    plan.vms.push(vm);
  });

  // Dependencies name VMs of the plan and make no cycle.
  for (const vm of plan.vms) {
    for (const dep of vm.after) {
      if (!seen.has(dep)) add("after", `no VM named "${dep}" in the plan`, vm.name);
      else if (dep === vm.name) add("after", "a VM cannot wait for itself", vm.name);
    }
  }
  const cycle = findCycle(afterOf);
  if (cycle) add("after", `dependencies make a cycle: ${cycle.join(" -> ")}`, cycle[0]);
  return plan;
}

function side(
  defaults: unknown,
  own: unknown,
  name: "input" | "output",
  keys: string[],
  add: (field: string, message: string) => void,
): Obj {
  const out: Obj = { options: {} };
  if (own !== undefined && !isObj(own)) {
    add(name, "expected an object");
    own = {};
  }
  if (own === undefined && defaults === undefined) {
    add(name, `missing: give ${name}.mode here or in defaults.${name}`);
    return out;
  }
  const d = isObj(defaults) ? defaults : {};
  const o = (own ?? {}) as Obj;
  unknownKeys(o, keys, `${name}.`, add);
  const merged: Obj = { ...d, ...o };
  // Options merge key by key, so a VM can add one -oo to the defaults.
  const opts: Record<string, string> = {};
  for (const [src, where] of [[d.options, `defaults.${name}`], [o.options, name]] as const) {
    if (src === undefined) continue;
    if (!isObj(src)) {
      add(`${where}.options`, "expected an object of KEY: VALUE");
      continue;
    }
    for (const [k, v] of Object.entries(src)) {
      if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") {
        opts[k] = String(v);
      } else add(`${where}.options.${k}`, "expected a string");
    }
  }
  for (const k of keys) {
    if (k === "options" || merged[k] === undefined) continue;
    if (k === "args") {
      const a = merged.args;
      if (!Array.isArray(a) || a.some((x) => typeof x !== "string")) {
        add(`${name}.args`, "expected a list of strings");
      } else out.args = a;
    } else if (typeof merged[k] !== "string") add(`${name}.${k}`, "expected a string");
    else out[k] = merged[k];
  }
  if (out.mode === undefined && merged.mode === undefined) {
    add(`${name}.mode`, `missing: give ${name}.mode here or in defaults.${name}`);
  }
  if (name === "input" && out.args === undefined) out.args = [];
  out.options = opts;
  return out;
}

function checkRun(vm: PlanVm, add: (field: string, message: string) => void): void {
  let cli;
  try {
    cli = parseCli(childArgs(vm));
  } catch (e) {
    return add("(options)", errorMessage(e));
  }
  try {
    selectInput(cli.input!.mode).parseOptions(cli.input!);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    add(/input mode/i.test(e.message) ? "input.mode" : "input", e.message);
  }
  try {
    selectOutput(cli.output!.mode).parseOptions(cli.output!);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    add(/output mode/i.test(e.message) ? "output.mode" : "output", e.message);
  }
}

/**
 * The command line of one VM's migration (without `--machine-readable` and `--bandwidth`,
 * which the scheduler adds).
 *
 * @param vm The VM.
 * @returns Arguments for vmshift.
 * @example
 * ```ts
 * import { childArgs } from "./plan.ts";
 * const args = childArgs({
 *   name: "db", convert: false, priority: 0, after: [],
 *   input: { mode: "disk", args: ["db.img"], options: {} },
 *   output: { mode: "local", storage: "/out", options: { "rhv-direct": "" } },
 * });
 * if (args.join(" ") !== "-i disk -o local -os /out -oo rhv-direct -on db --no-convert -- db.img") {
 *   throw new Error(args.join(" "));
 * }
 * ```
 */
export function childArgs(vm: PlanVm): string[] {
  const a: string[] = ["-i", vm.input.mode];
  const i = vm.input;
  if (i.conn !== undefined) a.push("-ic", i.conn);
  if (i.format !== undefined) a.push("-if", i.format);
  if (i.transport !== undefined) a.push("-it", i.transport);
  if (i.passwordFile !== undefined) a.push("-ip", i.passwordFile);
  for (const [k, v] of Object.entries(i.options)) a.push("-io", `${k}=${v}`);
  const o = vm.output;
  a.push("-o", o.mode);
  if (o.conn !== undefined) a.push("-oc", o.conn);
  if (o.format !== undefined) a.push("-of", o.format);
  if (o.allocation !== undefined) a.push("-oa", o.allocation);
  if (o.storage !== undefined) a.push("-os", o.storage);
  if (o.passwordFile !== undefined) a.push("-op", o.passwordFile);
  for (const [k, v] of Object.entries(o.options)) a.push("-oo", v === "" ? k : `${k}=${v}`);
  // The VM keeps the plan's name on the target unless output.name says otherwise.
  a.push("-on", o.name ?? vm.name);
  if (!vm.convert) a.push("--no-convert");
  if (vm.root !== undefined) a.push("--root", vm.root);
  a.push("--", ...i.args);
  return a;
}

/**
 * The target storage of a VM, for `limits.perStorageDomain`: the output mode and `-os`.
 * @param vm The VM.
 * @returns E.g. `rhv:data`.
 */
export function storageDomain(vm: PlanVm): string {
  return `${vm.output.mode}:${vm.output.storage ?? ""}`;
}

function hostOf(uri: string): string | undefined {
  try {
    return new URL(uri).hostname || undefined;
  } catch {
    return undefined;
  }
}

function unknownKeys(
  o: Obj,
  known: readonly string[],
  prefix: string,
  add: (field: string, message: string) => void,
): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) {
      add(`${prefix}${k}`, `unknown field; expected one of ${known.join(", ")}`);
    }
  }
}

/**
 * Parses a duration: a number of seconds, or `90s`, `45m`, `6h`, `1d`, or combined `1h30m`.
 *
 * @param s The duration.
 * @returns Milliseconds, or undefined when it is not a duration.
 * @example
 * ```ts
 * import { parseDuration } from "./plan.ts";
 * if (parseDuration("1h30m") !== 5_400_000) throw new Error();
 * ```
 */
export function parseDuration(s: unknown): number | undefined {
  if (typeof s === "number") return s > 0 && Number.isFinite(s) ? s * 1000 : undefined;
  if (typeof s !== "string" || !/^(\d+(\.\d+)?[smhd])+$/.test(s)) return undefined;
  let ms = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)) {
    ms += Number(m[1]) * { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] as "s"];
  }
  return ms > 0 ? ms : undefined;
}

function duration(
  v: unknown,
  field: string,
  add: (field: string, message: string) => void,
  required: boolean,
): number | undefined {
  if (v === undefined) {
    if (required) add(field, 'missing: how long the window stays open, e.g. "6h"');
    return undefined;
  }
  const ms = parseDuration(v);
  if (ms === undefined) add(field, `expected a duration like "90s", "45m", "6h" or "1h30m"`);
  return ms;
}

function rate(
  v: unknown,
  field: string,
  add: (field: string, message: string) => void,
): number | undefined {
  try {
    return parseRate(String(v));
  } catch {
    add(field, 'expected bits per second, e.g. "100M"');
    return undefined;
  }
}

function size(
  v: unknown,
  field: string,
  add: (field: string, message: string) => void,
): number | undefined {
  let bytes = NaN;
  if (typeof v === "number") bytes = v;
  else if (typeof v === "string") {
    const m = v.match(/^(\d+(?:\.\d+)?)([KMGT]?)(?:i?B)?$/i);
    if (m) bytes = Number(m[1]) * 1024 ** (m[2] ? "KMGT".indexOf(m[2].toUpperCase()) + 1 : 0);
  }
  if (!(bytes > 0) || !Number.isFinite(bytes)) {
    add(field, 'expected bytes, e.g. 1073741824 or "1G"');
    return undefined;
  }
  return Math.round(bytes);
}

function findCycle(after: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 1 | 2>();
  const path: string[] = [];
  const visit = (n: string): string[] | undefined => {
    if (state.get(n) === 2) return undefined;
    if (state.get(n) === 1) return [...path.slice(path.indexOf(n)), n];
    state.set(n, 1);
    path.push(n);
    for (const d of after.get(n) ?? []) {
      if (d === n || !after.has(d)) continue;
      const c = visit(d);
      if (c) return c;
    }
    path.pop();
    state.set(n, 2);
    return undefined;
  };
  for (const n of after.keys()) {
    const c = visit(n);
    if (c) return c;
  }
  return undefined;
}
