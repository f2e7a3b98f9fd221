/**
 * VMware's vCenter simulator for the tests: `tests/vcsim/main.go` (govmomi's simulator library,
 * from Debian's `golang-github-vmware-govmomi-dev`), built once with Debian's `golang-go` in
 * GOPATH mode and cached outside the checkout by a hash of its source and of the Go and govmomi
 * versions (`/var/cache/vmshift/vcsim-HASH`, or `~/.cache/vmshift/` where that is not
 * writable), then started on 127.0.0.1 over TLS with a test CA, one user and a password file,
 * and datastores backed by directories of fixture VMs.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { run } from "../../src/process.ts";
import { assert, assertEquals } from "../_assert.ts";
import { makeCa, makeServerCertificate } from "../servers/_tls.ts";
import type { RunResult, Sandbox } from "./_harness.ts";

const SOURCE = fileURLToPath(new URL("../vcsim/main.go", import.meta.url));
const GOPATH_SYSTEM = "/usr/share/gocode";

/** A disk of a simulated VM. */
export interface SimDisk {
  /** `pvscsi`, `lsilogic`, `sata`, `ide`, `nvme`. */
  controller: string;
  /** The controller's bus number. */
  bus: number;
  /** The unit. */
  unit: number;
  /** The descriptor's path in the datastore. */
  file: string;
  /** The capacity in bytes. */
  capacity: number;
}

/** A simulated VM (what its .vmx says, since vcsim does not read it). */
export interface SimVm {
  name: string;
  datastore: string;
  /** The .vmx's path in the datastore; it and `NAME.nvram`, `vmware.log` must exist. */
  vmx: string;
  cpus: number;
  coresPerSocket?: number;
  memoryMB: number;
  firmware?: "bios" | "efi";
  secureBoot?: boolean;
  guestId?: string;
  disks: SimDisk[];
  nics: Array<{ model: string; mac: string; network: string }>;
  powerOn?: boolean;
  snapshot?: string;
}

/** Options of {@linkcode startVcsim}. */
export interface VcsimOptions {
  /** Datastores: name → directory. */
  datastores: Record<string, string>;
  /** The VMs to register. */
  vms: SimVm[];
  /** This many more VMs of vcsim's own. @default 0 */
  generate?: number;
  /**
   * `vpx`: a vCenter (datacenter `DC0`, a cluster, distributed port groups), user
   * `administrator@vsphere.local`; `esx`: a standalone ESXi host (datacenter `ha-datacenter`,
   * one host), user `root`.
   * @default "vpx"
   */
  model?: "vpx" | "esx";
}

/** A running simulator. */
export interface Vcsim extends AsyncDisposable {
  /** `127.0.0.1:PORT`. */
  server: string;
  /** The port. */
  port: number;
  /** The user. */
  user: string;
  /** The password (for checking it never shows). */
  password: string;
  /** A file holding the password. */
  passwordFile: string;
  /** The test CA that signed the server's certificate. */
  caFile: string;
  /** The datacenter's name. */
  datacenter: string;
  /** VM name → moref. */
  morefs: Record<string, string>;
  /** `vpx://USER@127.0.0.1:PORT/DC` (`esx://root@127.0.0.1:PORT` for `esx`), URL-encoded user. */
  uri(path?: string, query?: string): string;
  /** /folder requests, refused ones, sessions used and still logged in. */
  stats(): Promise<
    { folderRequests: number; unauthorized: number; sessionsUsed: number; sessionsActive: number }
  >;
  /** The simulator's process id. */
  pid: number;
}

let building: Promise<string> | undefined;

/**
 * Builds the simulator (once per source hash; cached across checkouts) and returns its path.
 *
 * @returns The binary.
 */
export function vcsimBinary(): Promise<string> {
  building ??= build();
  return building;
}

async function cacheRoot(): Promise<string> {
  for (
    const dir of ["/var/cache/vmshift", join(Deno.env.get("HOME") ?? "/tmp", ".cache/vmshift")]
  ) {
    try {
      await Deno.mkdir(dir, { recursive: true });
      const probe = join(dir, `.probe-${Deno.pid}`);
      await Deno.writeTextFile(probe, "");
      await Deno.remove(probe);
      return dir;
    } catch { /* not writable: try the next */ }
  }
  throw new Error("No writable cache directory for the simulator");
}

async function build(): Promise<string> {
  const source = await Deno.readFile(SOURCE);
  const versions = await run("dpkg-query", [
    "-W",
    "-f=${Version} ",
    "golang-go",
    "golang-github-vmware-govmomi-dev",
  ]);
  const data = new Uint8Array([...source, ...new TextEncoder().encode(versions)]);
  const hash = [...new Uint8Array(await crypto.subtle.digest("SHA-256", data))]
    .slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
  const root = await cacheRoot();
  const bin = join(root, `vcsim-${hash}`);
  if (await Deno.stat(bin).then((s) => s.isFile, () => false)) return bin;
  // Test files run in parallel: one builds, the others wait on the lock and find the binary.
  using lock = await Deno.open(join(root, "vcsim.lock"), { create: true, write: true });
  await lock.lock(true);
  if (await Deno.stat(bin).then((s) => s.isFile, () => false)) return bin;
  const work = await Deno.makeTempDir({ prefix: "vmshift-vcsim-build-" });
  try {
    const tmp = `${bin}.tmp-${Deno.pid}`;
    await run("go", ["build", "-o", tmp, SOURCE], {
      env: {
        GO111MODULE: "off",
        GOPATH: `${work}:${GOPATH_SYSTEM}`,
        GOCACHE: join(root, "gocache"),
        GOFLAGS: "",
        HOME: Deno.env.get("HOME") ?? work,
      },
      what: "Cannot build the vCenter simulator (tests/vcsim/main.go)",
    });
    await Deno.rename(tmp, bin);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
  return bin;
}

/**
 * Starts the simulator.
 *
 * @param dir A scratch directory (certificates, config, password).
 * @param options Datastores and VMs.
 * @returns The running simulator; dispose it to stop it.
 */
export async function startVcsim(dir: string, options: VcsimOptions): Promise<Vcsim> {
  const bin = await vcsimBinary();
  const ca = await makeCa(dir, "vcsim");
  const cert = await makeServerCertificate(dir, "vcsim", ca);
  const model = options.model ?? "vpx";
  const user = model === "esx" ? "root" : "administrator@vsphere.local";
  const password = `pw-${crypto.randomUUID()}`;
  const passwordFile = join(dir, "vcsim-password");
  await Deno.writeTextFile(passwordFile, password + "\n", { mode: 0o600 });
  const config = join(dir, "vcsim.json");
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      user,
      passwordFile,
      cert: cert.certFile,
      key: cert.keyFile,
      datastores: Object.entries(options.datastores).map(([name, d]) => ({ name, dir: d })),
      vms: options.vms,
      generate: options.generate ?? 0,
      model,
    }),
  );
  const child = new Deno.Command(bin, {
    args: [config],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    // vcsim's own datastores are temporary directories: keep them in the scratch directory.
    env: { TMPDIR: dir },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    line += value;
  }
  reader.releaseLock();
  const drained = child.stdout.cancel().catch(() => {});
  if (!line.includes("\n")) {
    await child.stdin.close().catch(() => {});
    await child.status;
    throw new Error(`The vCenter simulator did not start: ${await stderr}`);
  }
  const ready = JSON.parse(line) as {
    url: string;
    datacenter: string;
    vms: Record<string, string>;
  };
  const url = new URL(ready.url);
  const port = Number(url.port);
  const server = `127.0.0.1:${port}`;
  const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(ca.caFile)] });
  return {
    server,
    port,
    user,
    password,
    passwordFile,
    caFile: ca.caFile,
    datacenter: ready.datacenter,
    morefs: ready.vms,
    pid: child.pid,
    uri: (path = model === "esx" ? "" : `/${ready.datacenter}`, query = "") =>
      `${model}://${encodeURIComponent(user)}@${server}${path}${query ? `?${query}` : ""}`,
    async stats() {
      const res = await fetch(`https://${server}/vmshift-test/stats`, { client });
      return await res.json();
    },
    async [Symbol.asyncDispose]() {
      client.close();
      await child.stdin.close().catch(() => {});
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await child.status;
      clearTimeout(timer);
      await stderr;
      await drained;
    },
  };
}

/**
 * What vcsim wants next to a .vmx it registers: `NAME.nvram` and `vmware.log`.
 *
 * @param vmxDir The VM's directory.
 * @param name The VM's name.
 */
export async function addVcsimFiles(vmxDir: string, name: string): Promise<void> {
  await Deno.writeFile(join(vmxDir, `${name}.nvram`), new Uint8Array(0));
  await Deno.writeFile(join(vmxDir, "vmware.log"), new Uint8Array(0));
}

// --- helpers the vSphere tests share ----------------------------------------------------------

/**
 * A raw disk image for a fixture VM: random data in the ranges given, zeroes elsewhere (sparse).
 *
 * @param path The file to write.
 * @param size Its size.
 * @param data `[offset, length]` ranges of random data.
 * @returns The path.
 */
export async function rawImage(
  path: string,
  size: number,
  data: Array<[number, number]>,
): Promise<string> {
  using f = await Deno.open(path, { create: true, write: true, truncate: true });
  for (const [offset, length] of data) {
    const buf = new Uint8Array(length);
    for (let i = 0; i < length; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));
    await f.seek(offset, Deno.SeekMode.Start);
    for (let n = 0; n < length;) n += await f.write(buf.subarray(n));
  }
  await f.truncate(size);
  return path;
}

/**
 * The options that log vmshift in to the simulator.
 *
 * @param sim The simulator.
 * @param passwordFile The password file (default: the right one).
 * @returns `-ic`, `-ip` and `-io vsphere-cafile=`.
 */
export function login(sim: Vcsim, passwordFile = sim.passwordFile): string[] {
  return ["-ic", sim.uri(), "-ip", passwordFile, "-io", `vsphere-cafile=${sim.caFile}`];
}

/**
 * Asserts that neither the password nor the session cookie shows in a run's output.
 *
 * @param r The run.
 * @param sim The simulator.
 */
export function assertNoSecret(r: RunResult, sim: Vcsim): void {
  for (const out of [r.stdout, r.stderr]) {
    assert(!out.includes(sim.password), "the password was shown");
    assert(!out.includes("vmware_soap_session"), "the session cookie was shown");
  }
}

/**
 * Migrates a simulated VM to `-o local` in the sandbox with `-v -x`; checks it succeeded and
 * showed no secret.
 */
export async function migrateToLocal(
  sb: Sandbox,
  sim: Vcsim,
  vm: string,
): Promise<{ r: RunResult; out: string }> {
  const out = join(sb.work, "out");
  await Deno.mkdir(out);
  const r = await sb.run([
    "-i",
    "vsphere",
    ...login(sim),
    vm,
    "-o",
    "local",
    "-os",
    out,
    "-v",
    "-x",
  ]);
  assertEquals(r.code, 0, r.stderr);
  assertNoSecret(r, sim);
  return { r, out };
}
