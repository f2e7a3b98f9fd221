/**
 * Test guests built by our own scripts and cached outside the checkout.
 *
 * | name           | builder                                | what it is                           |
 * | -------------- | -------------------------------------- | ------------------------------------ |
 * | `debian12`     | `scripts/make_debian_guest.sh`         | bootable Debian 12 as VMware leaves it (~3 min to build) |
 * | `phony-debian` | `scripts/make_phony_guest.sh … debian` | inspectable, not bootable (~20 s)    |
 * | `phony-fedora` | `scripts/make_phony_guest.sh … fedora` | inspectable, not bootable (~20 s)    |
 * | `phony-rhel`   | `scripts/make_phony_guest.sh … rhel`   | inspectable RHEL 9 with stand-ins for rpm, dracut, lsinitrd, grub2-mkconfig, grub2-probe, grubby: convertible, not bootable (~20 s) |
 * | `phony-win10`, `phony-srv2019`, `phony-srv2022`, `phony-win7x86`, `phony-hibernated`, `phony-bitlocker` | `scripts/make_windows_guest.ts … VARIANT` | inspectable Windows, not bootable (~20 s) |
 * | `phony-virtio-win-iso` | `scripts/make_virtio_win_iso.ts`     | the phony virtio-win tree as an ISO (~1 s) |
 *
 * Images live in `$VMSHIFT_GUEST_CACHE` (default `/var/cache/vmshift/guests`), named
 * `<name>-<key>.img` where the key is the start of the SHA-256 of the builder script and of
 * the files it builds with (`inputs`): editing them rebuilds its guests, and a fresh clone of the repository (CI) reuses what an earlier
 * run on the same machine built. A build runs under a per-name lock file, so concurrent tests
 * wait for one build instead of racing; the builder writes a temporary file and renames it, so
 * an image that exists is complete.
 *
 * A cached image is a shared, read-only source: never boot it without `-snapshot`, never
 * open it writable with libguestfs, never convert "in place". Copy it or put a qcow2 overlay
 * on it (vmshift itself never writes to its source).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** What the Windows builder is made of besides itself (its hives come from our own code). */
const WINDOWS_INPUTS = ["scripts/_regf.ts", "src/convert/windows/registry.ts"] as const;

const BUILDERS = {
  "debian12": { script: "make_debian_guest.sh", args: [] },
  "phony-debian": { script: "make_phony_guest.sh", args: ["debian"] },
  "phony-fedora": { script: "make_phony_guest.sh", args: ["fedora"] },
  "phony-rhel": { script: "make_phony_guest.sh", args: ["rhel"] },
  "phony-win10": { script: "make_windows_guest.ts", args: ["win10"], inputs: WINDOWS_INPUTS },
  "phony-srv2019": { script: "make_windows_guest.ts", args: ["srv2019"], inputs: WINDOWS_INPUTS },
  "phony-srv2022": { script: "make_windows_guest.ts", args: ["srv2022"], inputs: WINDOWS_INPUTS },
  "phony-win7x86": { script: "make_windows_guest.ts", args: ["win7x86"], inputs: WINDOWS_INPUTS },
  "phony-hibernated": {
    script: "make_windows_guest.ts",
    args: ["hibernated"],
    inputs: WINDOWS_INPUTS,
  },
  "phony-bitlocker": {
    script: "make_windows_guest.ts",
    args: ["bitlocker"],
    inputs: WINDOWS_INPUTS,
  },
  // Not a guest: the phony virtio-win tree as an ISO, cached the same way.
  "phony-virtio-win-iso": {
    script: "make_virtio_win_iso.ts",
    args: [],
    inputs: ["scripts/make_virtio_win_tree.ts"],
  },
} as const satisfies Record<
  string,
  { script: string; args: readonly string[]; inputs?: readonly string[] }
>;

/** The test guests that {@linkcode guestImage} can build. */
export type GuestName = keyof typeof BUILDERS;

/** Options for {@linkcode guestImage}. */
export interface GuestImageOptions {
  /** Stops the build (the builder then removes its partial output). */
  signal?: AbortSignal;
}

/**
 * The directory that holds the cached images.
 *
 * @returns `$VMSHIFT_GUEST_CACHE`, or `/var/cache/vmshift/guests` when unset.
 */
export function guestCacheDir(): string {
  return Deno.env.get("VMSHIFT_GUEST_CACHE") ?? "/var/cache/vmshift/guests";
}

/**
 * The cache key of a guest: the first 16 hex digits of the SHA-256 of its builder script.
 *
 * @param name The guest.
 * @returns 16 lower-case hex digits.
 *
 * @example
 * ```ts
 * import { guestCacheKey } from "./_guests.ts";
 * const key = await guestCacheKey("phony-debian");
 * if (!/^[0-9a-f]{16}$/.test(key)) throw new Error("bad key");
 * ```
 */
export async function guestCacheKey(name: GuestName): Promise<string> {
  const builder = BUILDERS[name];
  const parts = [await Deno.readFile(builderPath(name))];
  for (const input of "inputs" in builder ? builder.inputs : []) {
    parts.push(await Deno.readFile(fileURLToPath(new URL(`../${input}`, import.meta.url))));
  }
  const script = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (script.set(p, at), at + p.length), 0);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", script));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Returns the path of a cached test guest image, building it first when it is missing.
 * Must run as root (the Debian builder uses debootstrap, loop devices and mounts).
 *
 * The image is shared by every test and every checkout on the machine: treat it as
 * read-only (boot it with `-snapshot`, open it read-only, or put an overlay on it).
 *
 * @param name The guest.
 * @param options Abort signal.
 * @returns The absolute path of the raw image.
 * @throws {Error} When the builder fails; the message quotes the end of its output.
 *
 * @example
 * ```ts ignore
 * import { guestImage } from "./_guests.ts";
 * const disk = await guestImage("phony-debian");
 * ```
 */
export async function guestImage(
  name: GuestName,
  options: GuestImageOptions = {},
): Promise<string> {
  const dir = guestCacheDir();
  const key = await guestCacheKey(name);
  const image = `${dir}/${name}-${key}.img`;
  if (await isFile(image)) return image;

  await Deno.mkdir(dir, { recursive: true });
  using lock = await Deno.open(`${dir}/${name}.lock`, { create: true, write: true });
  await lock.lock(true); // waits while another test or checkout builds this guest
  try {
    if (await isFile(image)) return image; // built while we waited
    await removeStale(dir, name, key);
    await build(name, image, options.signal);
    await Deno.chmod(image, 0o444);
    return image;
  } finally {
    await lock.unlock();
  }
}

function builderPath(name: GuestName): string {
  return fileURLToPath(new URL(`../scripts/${BUILDERS[name].script}`, import.meta.url));
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Removes images of this guest built by older versions of its builder, and leftovers. The
 * newest image of another version stays: another checkout on this machine (a CI run of main
 * while a branch changes the builder) may be using it right now.
 */
async function removeStale(dir: string, name: string, key: string): Promise<void> {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const image = new RegExp(`^${escaped}-([0-9a-f]{16})\\.img$`);
  const partial = new RegExp(`^\\.${escaped}-[0-9a-f]{16}\\.img\\.partial\\.\\d+$`);
  const others: Array<{ path: string; mtime: number }> = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    const m = image.exec(entry.name);
    if (partial.test(entry.name)) await Deno.remove(path).catch(() => {});
    else if (m && m[1] !== key) {
      const mtime = (await Deno.stat(path).catch(() => undefined))?.mtime?.getTime() ?? 0;
      others.push({ path, mtime });
    }
  }
  others.sort((a, b) => b.mtime - a.mtime);
  for (const { path } of others.slice(1)) await Deno.remove(path).catch(() => {});
}

/** Runs the builder, forwarding its progress to stderr; the builder renames into `out`. */
async function build(name: GuestName, out: string, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  const { args } = BUILDERS[name];
  const script = builderPath(name);
  const env: Record<string, string> = {
    LIBGUESTFS_BACKEND: Deno.env.get("LIBGUESTFS_BACKEND") ?? "direct",
    LIBGUESTFS_BACKEND_SETTINGS: Deno.env.get("LIBGUESTFS_BACKEND_SETTINGS") ?? "force_tcg",
  };
  // setsid: the builder leads its own process group, so an abort stops debootstrap & co.
  // too; pdeathsig: it is told to stop (and clean up) if this test process dies.
  const runner = script.endsWith(".ts") ? [Deno.execPath(), "run", "-A"] : ["bash"];
  const child = new Deno.Command("setpriv", {
    args: ["--pdeathsig", "SIGTERM", "--", "setsid", ...runner, script, out, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env,
  }).spawn();
  const onAbort = () => {
    try {
      Deno.kill(-child.pid, "SIGTERM");
    } catch {
      // Already gone.
    }
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  let tail = "";
  const forward = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      await Deno.stderr.write(chunk);
      tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4000);
    }
  };
  try {
    const started = Date.now();
    const [status] = await Promise.all([
      child.status,
      forward(child.stdout),
      forward(child.stderr),
    ]);
    signal?.throwIfAborted();
    if (!status.success) {
      const last = tail.trim().split("\n").slice(-10).join("\n");
      throw new Error(`Cannot build test guest "${name}": ${script} failed:\n${last}`);
    }
    const seconds = Math.round((Date.now() - started) / 1000);
    console.error(`test guest "${name}" built in ${seconds} s: ${out}`);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}
