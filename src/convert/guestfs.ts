/**
 * A typed binding of libguestfs (`libguestfs.so.0`, 1.48) through Deno FFI: one
 * {@linkcode Guestfs} object per handle, with the calls the conversion and the test-image
 * scripts need.
 *
 * How calls run:
 * - Short calls (`exists`, `augGet`, `vfsType`...) are plain synchronous FFI calls on the
 *   caller's thread; they return values, not promises.
 * - Long calls (`launch`, `mount`, `command`, `fstrim`, `readFile`...) return promises and run on
 *   one worker thread per handle (`node:worker_threads`, started on the first long call), so
 *   timers and progress keep going. A worker is used instead of `nonblocking: true` FFI
 *   symbols because libguestfs (≥ 1.37) keeps both the last error and the error handler per
 *   thread: a call made on Deno's blocking-call pool would print its error to stderr and leave
 *   nothing to read. The worker always runs on the same thread, installs its own error
 *   handler there, and so reports the exact message and errno.
 * - Calls on one handle are serialized: long calls queue up in order; a short call made while a
 *   long call is queued or running throws instead of racing it.
 * - The worker keeps Deno alive only while a long call runs.
 * - `launch(signal)`, {@linkcode Guestfs.kill} and `close()` during a call stop the appliance by
 *   SIGKILLing its qemu, found in /proc by a per-handle marker on the appliance's kernel command
 *   line (`vmshift.guestfs=UUID`, which the kernel ignores). `guestfs_get_pid` cannot serve:
 *   it waits for the handle's lock, which the running call holds.
 *
 * Every failing call throws {@linkcode GuestfsError}, whose message names the call:
 * `libguestfs mount: mount: /dev/sda9: No such file or directory`.
 *
 * The module never chooses a backend or forces TCG: `LIBGUESTFS_BACKEND` and
 * `LIBGUESTFS_BACKEND_SETTINGS` from the environment apply as usual.
 *
 * @example
 * ```ts ignore
 * import { Guestfs } from "./guestfs.ts";
 *
 * await using g = Guestfs.create();
 * g.addDrive("overlay.qcow2", { format: "qcow2", discard: "besteffort" });
 * await g.launch(AbortSignal.timeout(600_000));
 * for (const root of await g.inspectOs()) {
 *   console.log(g.inspectGetDistro(root), g.inspectGetMajorVersion(root));
 * }
 * ```
 *
 * @module
 */

import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

// ---------------------------------------------------------------------------------------------
// FFI definitions (signatures from guestfs.h). Strings, string lists and optargs structs are
// all passed as "buffer": NUL-terminated bytes, a NULL-terminated pointer array, or the struct.

const GUESTFS_SYMBOLS = {
  guestfs_create: { parameters: [], result: "pointer" },
  guestfs_close: { parameters: ["pointer"], result: "void" },
  guestfs_set_error_handler: { parameters: ["pointer", "function", "pointer"], result: "void" },
  guestfs_last_errno: { parameters: ["pointer"], result: "i32" },
  guestfs_set_event_callback: {
    parameters: ["pointer", "function", "u64", "i32", "pointer"],
    result: "i32",
  },
  guestfs_set_pgroup: { parameters: ["pointer", "i32"], result: "i32" },
  guestfs_set_verbose: { parameters: ["pointer", "i32"], result: "i32" },
  guestfs_get_verbose: { parameters: ["pointer"], result: "i32" },
  guestfs_set_trace: { parameters: ["pointer", "i32"], result: "i32" },
  guestfs_get_trace: { parameters: ["pointer"], result: "i32" },
  guestfs_set_tmpdir: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_get_append: { parameters: ["pointer"], result: "pointer" },
  guestfs_set_append: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_add_drive_opts_argv: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_launch: { parameters: ["pointer"], result: "i32" },
  guestfs_shutdown: { parameters: ["pointer"], result: "i32" },
  guestfs_feature_available: { parameters: ["pointer", "buffer"], result: "i32" },
  // inspection
  guestfs_inspect_os: { parameters: ["pointer"], result: "pointer" },
  guestfs_inspect_get_roots: { parameters: ["pointer"], result: "pointer" },
  guestfs_inspect_get_type: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_distro: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_major_version: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_inspect_get_minor_version: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_inspect_get_product_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_product_variant: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_package_format: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_package_management: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  guestfs_inspect_get_arch: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_hostname: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_osinfo: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_mountpoints: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_filesystems: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_drive_mappings: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_inspect_get_windows_systemroot: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  guestfs_inspect_get_windows_system_hive: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  guestfs_inspect_get_windows_software_hive: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  guestfs_inspect_get_windows_current_control_set: {
    parameters: ["pointer", "buffer"],
    result: "pointer",
  },
  // block devices and filesystems
  guestfs_list_devices: { parameters: ["pointer"], result: "pointer" },
  guestfs_list_partitions: { parameters: ["pointer"], result: "pointer" },
  guestfs_list_filesystems: { parameters: ["pointer"], result: "pointer" },
  guestfs_list_md_devices: { parameters: ["pointer"], result: "pointer" },
  guestfs_lvs: { parameters: ["pointer"], result: "pointer" },
  guestfs_list_ldm_volumes: { parameters: ["pointer"], result: "pointer" },
  guestfs_blkid: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_vfs_type: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_vfs_uuid: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_vfs_label: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_mount: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_mount_ro: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_umount: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_umount_all: { parameters: ["pointer"], result: "i32" },
  guestfs_sync: { parameters: ["pointer"], result: "i32" },
  guestfs_part_disk: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_mkfs_opts_argv: {
    parameters: ["pointer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  guestfs_set_label: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_luks_format: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  guestfs_fstrim_argv: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  // files
  guestfs_read_file: { parameters: ["pointer", "buffer", "buffer"], result: "pointer" },
  guestfs_pread: {
    parameters: ["pointer", "buffer", "i32", "i64", "buffer"],
    result: "pointer",
  },
  guestfs_cat: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_write: { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" },
  guestfs_upload: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_download: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_exists: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_is_file: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_is_dir: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_is_symlink: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_readlink: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_filesize: { parameters: ["pointer", "buffer"], result: "i64" },
  guestfs_ls: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_glob_expand: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_mv: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_cp: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_rm: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_rm_f: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_rm_rf: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_mkdir_p: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_ln_sf: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_chmod: { parameters: ["pointer", "i32", "buffer"], result: "i32" },
  guestfs_touch: { parameters: ["pointer", "buffer"], result: "i32" },
  // Augeas
  guestfs_aug_init: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  guestfs_aug_load: { parameters: ["pointer"], result: "i32" },
  guestfs_aug_get: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_aug_set: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_aug_match: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_aug_ls: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_aug_rm: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_aug_insert: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  guestfs_aug_save: { parameters: ["pointer"], result: "i32" },
  guestfs_aug_close: { parameters: ["pointer"], result: "i32" },
  guestfs_aug_transform_argv: {
    parameters: ["pointer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  // commands inside the guest
  guestfs_command: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_command_lines: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_sh: { parameters: ["pointer", "buffer"], result: "pointer" },
  guestfs_sh_lines: { parameters: ["pointer", "buffer"], result: "pointer" },
  // Windows registry hives (hivex inside the appliance)
  guestfs_hivex_open_argv: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  guestfs_hivex_close: { parameters: ["pointer"], result: "i32" },
  guestfs_hivex_commit: { parameters: ["pointer", "buffer"], result: "i32" },
  guestfs_hivex_root: { parameters: ["pointer"], result: "i64" },
  guestfs_hivex_node_name: { parameters: ["pointer", "i64"], result: "pointer" },
  guestfs_hivex_node_children: { parameters: ["pointer", "i64"], result: "pointer" },
  guestfs_hivex_node_get_child: { parameters: ["pointer", "i64", "buffer"], result: "i64" },
  guestfs_hivex_node_parent: { parameters: ["pointer", "i64"], result: "i64" },
  guestfs_hivex_node_values: { parameters: ["pointer", "i64"], result: "pointer" },
  guestfs_hivex_node_get_value: { parameters: ["pointer", "i64", "buffer"], result: "i64" },
  guestfs_hivex_value_key: { parameters: ["pointer", "i64"], result: "pointer" },
  guestfs_hivex_value_type: { parameters: ["pointer", "i64"], result: "i64" },
  guestfs_hivex_value_string: { parameters: ["pointer", "i64"], result: "pointer" },
  guestfs_hivex_value_value: { parameters: ["pointer", "i64", "buffer"], result: "pointer" },
  guestfs_hivex_node_set_value: {
    parameters: ["pointer", "i64", "buffer", "i64", "buffer", "usize"],
    result: "i32",
  },
  guestfs_hivex_node_add_child: { parameters: ["pointer", "i64", "buffer"], result: "i64" },
  guestfs_hivex_node_delete_child: { parameters: ["pointer", "i64"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const LIBC_SYMBOLS = {
  free: { parameters: ["pointer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/** `void (*guestfs_error_handler_cb) (guestfs_h *g, void *opaque, const char *msg)` */
const ERROR_CALLBACK = {
  parameters: ["pointer", "pointer", "pointer"],
  result: "void",
} as const satisfies Deno.UnsafeCallbackDefinition;

/** `guestfs_event_callback`: g, opaque, event, handle, flags, buf, buf_len, array, array_len. */
const EVENT_CALLBACK = {
  parameters: ["pointer", "pointer", "u64", "i32", "i32", "pointer", "usize", "pointer", "usize"],
  result: "void",
} as const satisfies Deno.UnsafeCallbackDefinition;

const EVENT_APPLIANCE = 0x10;
const EVENT_LIBRARY = 0x20;
const EVENT_TRACE = 0x40;
const EVENT_WARNING = 0x200;

/** Name of the flag in `workerData` that makes this module run as a handle's worker. */
const WORKER_FLAG = "vmshiftGuestfsWorker";

type FnName = keyof typeof GUESTFS_SYMBOLS;

interface Libs {
  gfs: Deno.DynamicLibrary<typeof GUESTFS_SYMBOLS>;
  libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;
}

let loaded: Libs | undefined;

/** Opens libguestfs and libc once per thread. */
function load(): Libs {
  loaded ??= {
    gfs: Deno.dlopen("libguestfs.so.0", GUESTFS_SYMBOLS),
    libc: Deno.dlopen("libc.so.6", LIBC_SYMBOLS),
  };
  return loaded;
}

// ---------------------------------------------------------------------------------------------
// Marshalling, shared by the caller's thread and the worker thread.

/** Optional-argument structs (`struct guestfs_*_argv`): fields in header order, bit i = field i. */
const OPTARGS = {
  add_drive: [
    ["readonly", "int"],
    ["format", "string"],
    ["iface", "string"],
    ["name", "string"],
    ["label", "string"],
    ["protocol", "string"],
    ["server", "strings"],
    ["username", "string"],
    ["secret", "string"],
    ["cachemode", "string"],
    ["discard", "string"],
    ["copyonread", "int"],
    ["blocksize", "int"],
  ],
  fstrim: [["offset", "int64"], ["length", "int64"], ["minimumfreeextent", "int64"]],
  mkfs: [
    ["blocksize", "int"],
    ["features", "string"],
    ["inode", "int"],
    ["sectorsize", "int"],
    ["label", "string"],
  ],
  aug_transform: [["remove", "int"]],
  hivex_open: [["verbose", "int"], ["debug", "int"], ["write", "int"], ["unsafe", "int"]],
} as const;

type OptValue = string | number | boolean | readonly string[] | undefined;

/** An optargs struct to build, as plain data so that it can be posted to the worker. */
interface OptArgs {
  readonly optargs: keyof typeof OPTARGS;
  readonly values: Readonly<Record<string, OptValue>>;
}

/** The `size_t *size_r` out-parameter of `guestfs_read_file`. */
interface SizeOut {
  readonly sizeOut: true;
}

/** One argument after the handle; `null` is a NULL pointer (an omitted string). */
type Arg = string | number | boolean | readonly string[] | Uint8Array | OptArgs | SizeOut | null;

/** How to read a return value and tell an error. */
type Kind = "int" | "bool" | "string" | "strings" | "bytes" | "int64" | "handles";

interface KindValue {
  int: number;
  bool: boolean;
  string: string;
  strings: string[];
  bytes: Uint8Array;
  int64: number;
  handles: number[];
}

type Outcome =
  | { readonly ok: true; readonly value: KindValue[Kind] }
  | { readonly ok: false; readonly message: string; readonly errno: number };

/** Where the error handler of one thread puts the message of the call in progress. */
interface ErrorSlot {
  message: string | undefined;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Copies bytes into an ArrayBuffer of their own, so that their address is stable. */
function ownBuffer(bytes: Uint8Array, extra = 0): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(new ArrayBuffer(bytes.byteLength + extra));
  out.set(bytes);
  return out;
}

function cString(s: string): Uint8Array<ArrayBuffer> {
  return ownBuffer(encoder.encode(s), 1);
}

function address(buf: BufferSource, keep: unknown[]): bigint {
  keep.push(buf);
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
}

/** A NULL-terminated `char *const *`. */
function cStringArray(list: readonly string[], keep: unknown[]): BigUint64Array<ArrayBuffer> {
  const array = new BigUint64Array(new ArrayBuffer(8 * (list.length + 1)));
  list.forEach((s, i) => array[i] = address(cString(s), keep));
  keep.push(array);
  return array;
}

/** Builds `struct guestfs_NAME_argv` with C layout on x86_64: int 4 bytes, the rest 8. */
function optargsStruct(spec: OptArgs, keep: unknown[]): Uint8Array<ArrayBuffer> {
  const fields = OPTARGS[spec.optargs];
  let offset = 8; // uint64_t bitmask
  const offsets = fields.map(([, type]) => {
    const size = type === "int" ? 4 : 8;
    offset = Math.ceil(offset / size) * size;
    const at = offset;
    offset += size;
    return at;
  });
  const struct = new Uint8Array(new ArrayBuffer(Math.ceil(offset / 8) * 8));
  const view = new DataView(struct.buffer);
  let bitmask = 0n;
  fields.forEach(([name, type], i) => {
    const value = spec.values[name];
    const at = offsets[i];
    if (value === undefined || at === undefined) return;
    bitmask |= 1n << BigInt(i);
    if (type === "int") view.setInt32(at, Number(value), true);
    else if (type === "int64") view.setBigInt64(at, BigInt(Number(value)), true);
    else if (type === "string") view.setBigUint64(at, address(cString(String(value)), keep), true);
    else {
      const list = Array.isArray(value) ? value as readonly string[] : [String(value)];
      view.setBigUint64(at, address(cStringArray(list, keep), keep), true);
    }
  });
  view.setBigUint64(0, bitmask, true);
  keep.push(struct);
  return struct;
}

function isOptArgs(a: Arg): a is OptArgs {
  return typeof a === "object" && a !== null && "optargs" in a;
}

function isSizeOut(a: Arg): a is SizeOut {
  return typeof a === "object" && a !== null && "sizeOut" in a;
}

/** Throws a TypeError for strings libguestfs would see cut short. */
function checkArgs(call: string, args: readonly Arg[]): void {
  const check = (s: unknown) => {
    if (typeof s === "string" && s.includes("\0")) {
      throw new TypeError(`Cannot pass a string with a NUL byte to libguestfs ${call}`);
    }
  };
  for (const a of args) {
    if (Array.isArray(a)) a.forEach(check);
    else if (typeof a === "object" && isOptArgs(a)) {
      for (const v of Object.values(a.values)) {
        if (Array.isArray(v)) v.forEach(check);
        else check(v);
      }
    } else check(a);
  }
}

function readCStrings(libs: Libs, p: Deno.PointerObject): string[] {
  const view = new Deno.UnsafePointerView(p);
  const out: string[] = [];
  for (let i = 0;; i++) {
    const s = view.getPointer(i * 8);
    if (s === null) break;
    out.push(Deno.UnsafePointerView.getCString(s));
    libs.libc.symbols.free(s);
  }
  libs.libc.symbols.free(p);
  return out;
}

/**
 * Calls one libguestfs function on the current thread and reads its result. Returned strings
 * and lists are copied and freed. On failure, the message is what this thread's error handler
 * stored in `slot`, and errno is this thread's `guestfs_last_errno`.
 */
function invoke(
  libs: Libs,
  g: Deno.PointerObject,
  slot: ErrorSlot,
  fn: FnName,
  args: readonly Arg[],
  kind: Kind,
): Outcome {
  const keep: unknown[] = [];
  let sizeOut: BigUint64Array<ArrayBuffer> | undefined;
  const cArgs = args.map((a) => {
    if (a === null) return null;
    if (typeof a === "string") return cString(a);
    if (typeof a === "number") return a;
    if (typeof a === "boolean") return a ? 1 : 0;
    if (a instanceof Uint8Array) return ownBuffer(a, a.byteLength === 0 ? 1 : 0);
    if (Array.isArray(a)) return cStringArray(a, keep);
    if (isSizeOut(a as Arg)) return sizeOut = new BigUint64Array(new ArrayBuffer(8));
    return optargsStruct(a as OptArgs, keep);
  });
  slot.message = undefined;
  const call = libs.gfs.symbols[fn] as unknown as (...a: unknown[]) => unknown;
  const r = call(g, ...cArgs);
  keep.length = 0;
  const fail = (): Outcome => ({
    ok: false,
    message: (slot.message ?? "unknown error").trimEnd(),
    errno: libs.gfs.symbols.guestfs_last_errno(g),
  });
  switch (kind) {
    case "int":
    case "bool":
    case "int64": {
      const n = Number(r);
      if (n === -1) return fail();
      return { ok: true, value: kind === "bool" ? n !== 0 : n };
    }
    case "string": {
      const p = r as Deno.PointerValue;
      if (p === null) return fail();
      const s = Deno.UnsafePointerView.getCString(p);
      libs.libc.symbols.free(p);
      return { ok: true, value: s };
    }
    case "strings": {
      const p = r as Deno.PointerValue;
      if (p === null) return fail();
      return { ok: true, value: readCStrings(libs, p) };
    }
    case "handles": {
      // struct guestfs_hivex_{node,value}_list { uint32_t len; struct { int64_t h; } *val; }
      const p = r as Deno.PointerValue;
      if (p === null) return fail();
      const list = new Deno.UnsafePointerView(p);
      const len = list.getUint32(0);
      const val = list.getPointer(8);
      const handles: number[] = [];
      if (val !== null) {
        const items = new Deno.UnsafePointerView(val);
        for (let i = 0; i < len; i++) handles.push(Number(items.getBigInt64(i * 8)));
        libs.libc.symbols.free(val);
      }
      libs.libc.symbols.free(p);
      return { ok: true, value: handles };
    }
    case "bytes": {
      const p = r as Deno.PointerValue;
      if (p === null) return fail();
      const bytes = new Uint8Array(Number(sizeOut?.[0] ?? 0n));
      if (bytes.byteLength > 0) Deno.UnsafePointerView.copyInto(p, bytes);
      libs.libc.symbols.free(p);
      return { ok: true, value: bytes };
    }
  }
}

function pairs(list: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < list.length; i += 2) out.push([list[i] ?? "", list[i + 1] ?? ""]);
  return out;
}

/** `guestfs_add_drive_opts_argv` → `add_drive`, as libguestfs names calls in its messages. */
function callName(fn: FnName): string {
  return fn.replace(/^guestfs_/, "").replace(/(_opts)?_argv$/, "");
}

// ---------------------------------------------------------------------------------------------
// The worker thread: runs long calls synchronously, always on the same thread.

interface WorkerInit {
  readonly [WORKER_FLAG]: true;
  readonly handle: bigint;
}

interface Request {
  readonly id: number;
  readonly fn: FnName;
  readonly args: readonly Arg[];
  readonly kind: Kind;
}

type Reply = { readonly id: number } & (Outcome | { readonly ok: "crash"; readonly error: string });

function isWorkerInit(data: unknown): data is WorkerInit {
  return typeof data === "object" && data !== null && WORKER_FLAG in data;
}

function runWorker(init: WorkerInit): void {
  const port = parentPort;
  const g = Deno.UnsafePointer.create(init.handle);
  if (port === null || g === null) return;
  const libs = load();
  const slot: ErrorSlot = { message: undefined };
  // Lives as long as this thread; libguestfs calls it only from this thread.
  const onError = new Deno.UnsafeCallback(ERROR_CALLBACK, (_g, _opaque, msg) => {
    slot.message = msg === null ? undefined : Deno.UnsafePointerView.getCString(msg);
  });
  libs.gfs.symbols.guestfs_set_error_handler(g, onError.pointer, null);
  port.on("message", (req: Request) => {
    let reply: Reply;
    try {
      reply = { id: req.id, ...invoke(libs, g, slot, req.fn, req.args, req.kind) };
    } catch (e) {
      reply = { id: req.id, ok: "crash", error: e instanceof Error ? e.message : String(e) };
    }
    const transfer = reply.ok === true && reply.value instanceof Uint8Array
      ? [reply.value.buffer as ArrayBuffer]
      : [];
    port.postMessage(reply, transfer);
  });
}

if (!isMainThread && isWorkerInit(workerData)) runWorker(workerData);

// ---------------------------------------------------------------------------------------------
// Process exit: close what is still open, before libguestfs' own atexit handler would call
// back into JavaScript that is being torn down.

const openHandles = new Set<Guestfs>();

function closeAllOnUnload(): void {
  for (const g of openHandles) g.close();
}

function track(g: Guestfs, open: boolean): void {
  const before = openHandles.size;
  if (open) openHandles.add(g);
  else openHandles.delete(g);
  if (before === 0 && openHandles.size > 0) addEventListener("unload", closeAllOnUnload);
  if (before > 0 && openHandles.size === 0) removeEventListener("unload", closeAllOnUnload);
}

/** SIGKILLs the qemu children of this process whose command line carries `marker`. */
function killAppliance(marker: string): void {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync("/proc")];
  } catch {
    return;
  }
  for (const { name } of entries) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== Deno.pid) continue;
      if (!Deno.readTextFileSync(`/proc/${name}/cmdline`).includes(marker)) continue;
      Deno.kill(Number(name), "SIGKILL");
    } catch {
      // The process is gone, or not ours to read.
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * A libguestfs call failed. The message is libguestfs' own error, prefixed with the call:
 * `libguestfs cat: cat: /etc/nope: No such file or directory`.
 */
export class GuestfsError extends Error {
  /** The libguestfs call that failed, without the `guestfs_` prefix, e.g. `mount`. */
  readonly call: string;
  /** The errno libguestfs reported with the error (`guestfs_last_errno`), or 0. */
  readonly errno: number;

  /**
   * Makes the error of one failed call.
   *
   * @param call The failed call, e.g. `mount`.
   * @param detail libguestfs' error message.
   * @param errno The errno libguestfs reported, or 0.
   */
  constructor(call: string, detail: string, errno = 0) {
    super(`libguestfs ${call}: ${detail}`);
    this.name = "GuestfsError";
    this.call = call;
    this.errno = errno;
  }
}

/** Options of {@linkcode Guestfs.addDrive} (`guestfs_add_drive_opts`). */
export interface AddDriveOptions {
  /** Disk format (`raw`, `qcow2`...). @default probed by qemu, which is unsafe for raw */
  format?: string;
  /** Add the drive read-only (writes go to a throw-away overlay). @default false */
  readonly?: boolean;
  /** `file`, `nbd`, `ssh`... @default "file" */
  protocol?: string;
  /** Servers for network protocols, e.g. `unix:/tmp/nbd.sock`. */
  server?: string[];
  /** Whether discards (fstrim) reach the image. @default "disable" */
  discard?: "disable" | "enable" | "besteffort";
  /** `unsafe` skips flushes: for scratch disks only. @default "writeback" */
  cachemode?: "writeback" | "unsafe";
  /** The name inspection reports for this drive (e.g. the source's `sda`). */
  name?: string;
  /** A label: the drive then also appears as `/dev/disk/guestfs/LABEL`. */
  label?: string;
}

/** Options of {@linkcode mkfs}. */
export interface MkfsOptions {
  /** Block size in bytes. */
  blocksize?: number;
  /** Filesystem features (`mke2fs -O`). */
  features?: string;
  /** Inode size in bytes. */
  inode?: number;
  /** Sector size in bytes. */
  sectorsize?: number;
  /** Filesystem label. */
  label?: string;
}

/** Options of {@linkcode Guestfs.create}. */
export interface GuestfsOptions {
  /** Debug messages of libguestfs and the appliance (`-v`). @default LIBGUESTFS_DEBUG */
  verbose?: boolean;
  /** Trace every libguestfs call (`-x`). @default LIBGUESTFS_TRACE */
  trace?: boolean;
  /** Directory for libguestfs' temporary files. @default TMPDIR or /tmp */
  tmpdir?: string;
  /**
   * Receives libguestfs log and trace lines when verbose or trace is on, one line a call
   * (`libguestfs: ...`, `libguestfs: trace: ...`, appliance console lines). Without it,
   * libguestfs prints them to stderr.
   */
  onLog?: (line: string) => void;
}

/** Flags of {@linkcode Guestfs.augInit} (`AUG_*` in augeas.h). */
export const AUG_FLAGS = {
  /** Keep the original file as `.augsave`. */
  saveBackup: 1,
  /** Save changes to `.augnew` instead of the file. */
  saveNewfile: 2,
  /** Type-check lenses (slow). */
  typeCheck: 4,
  /** Do not use the standard lens load path. */
  noStdinc: 8,
  /** Make save a no-op; `/augeas/events/saved` lists what would change. */
  saveNoop: 16,
  /** Do not load the tree; use {@linkcode Guestfs.augTransform} and `augLoad`. */
  noLoad: 32,
} as const;

interface Inflight {
  readonly id: number;
  readonly resolve: (reply: Reply) => void;
  readonly reject: (error: Error) => void;
}

/**
 * One libguestfs handle. Create it with {@linkcode Guestfs.create}, add drives, launch, then
 * work on the guest; dispose of it with `await using` (shuts the appliance down cleanly) or
 * {@linkcode Guestfs.close}.
 *
 * @example
 * ```ts ignore
 * import { Guestfs } from "./guestfs.ts";
 *
 * await using g = Guestfs.create({ verbose: true, onLog: console.error });
 * g.addDrive("disk.img", { format: "raw" });
 * await g.launch();
 * await g.mount("/dev/sda1", "/");
 * console.log(await g.cat("/etc/fstab"));
 * ```
 */
export class Guestfs implements AsyncDisposable, Disposable {
  #libs: Libs;
  #g: Deno.PointerObject;
  #slot: ErrorSlot = { message: undefined };
  #onError: Deno.UnsafeCallback<typeof ERROR_CALLBACK>;
  #onEvent: Deno.UnsafeCallback<typeof EVENT_CALLBACK> | undefined;
  #applianceLine = "";
  #onLog: ((line: string) => void) | undefined;
  /** Put on the appliance's kernel command line to find its qemu process in /proc. */
  #marker = `vmshift.guestfs=${crypto.randomUUID()}`;
  #worker: Worker | undefined;
  #inflight: Inflight | undefined;
  #nextId = 1;
  #tail: Promise<unknown> = Promise.resolve();
  #pending = 0;
  #launched = false;
  #closing = false;
  #done = Promise.withResolvers<void>();
  #finalized = false;
  #workerExit: Promise<unknown> = Promise.resolve();

  private constructor(libs: Libs, g: Deno.PointerObject, options: GuestfsOptions) {
    this.#libs = libs;
    this.#g = g;
    const slot = this.#slot;
    this.#onError = new Deno.UnsafeCallback(ERROR_CALLBACK, (_g, _opaque, msg) => {
      slot.message = msg === null ? undefined : Deno.UnsafePointerView.getCString(msg);
    });
    // Also stops libguestfs printing errors on stderr (for calls on this thread).
    libs.gfs.symbols.guestfs_set_error_handler(g, this.#onError.pointer, null);
    this.#onLog = options.onLog;
  }

  /**
   * Creates a handle (`guestfs_create`): reads the LIBGUESTFS_* environment, puts the
   * appliance in its own process group (so ^C reaches vmshift, which then shuts it down),
   * and applies the options.
   *
   * @param options Logging and the temporary directory.
   * @returns A handle in the config state: add drives, then {@linkcode Guestfs.launch}.
   * @throws {GuestfsError} If libguestfs cannot create a handle or rejects an option.
   */
  static create(options: GuestfsOptions = {}): Guestfs {
    const libs = load();
    const g = libs.gfs.symbols.guestfs_create();
    if (g === null) throw new GuestfsError("create", "cannot create a libguestfs handle");
    const h = new Guestfs(libs, g, options);
    track(h, true);
    try {
      h.#setup(options);
    } catch (e) {
      h.close();
      throw e;
    }
    return h;
  }

  #setup(options: GuestfsOptions): void {
    const s = this.#libs.gfs.symbols;
    const verbose = options.verbose ?? s.guestfs_get_verbose(this.#g) > 0;
    const trace = options.trace ?? s.guestfs_get_trace(this.#g) > 0;
    if (this.#onLog && (verbose || trace)) {
      // Thread-safe: long calls raise events on the worker thread.
      const onEvent = Deno.UnsafeCallback.threadSafe(
        EVENT_CALLBACK,
        (_g, _opaque, event, _handle, _flags, buf, len) => this.#event(Number(event), buf, len),
      );
      onEvent.unref();
      this.#onEvent = onEvent;
      const events = EVENT_APPLIANCE | EVENT_LIBRARY | EVENT_TRACE | EVENT_WARNING;
      if (s.guestfs_set_event_callback(this.#g, onEvent.pointer, BigInt(events), 0, null) < 0) {
        throw new GuestfsError("set_event_callback", this.#slot.message ?? "failed");
      }
    }
    this.#call("guestfs_set_verbose", [verbose], "int");
    this.#call("guestfs_set_trace", [trace], "int");
    this.#call("guestfs_set_pgroup", [1], "int");
    if (options.tmpdir !== undefined) this.#call("guestfs_set_tmpdir", [options.tmpdir], "int");
    const append = s.guestfs_get_append(this.#g);
    const current = append === null ? "" : Deno.UnsafePointerView.getCString(append);
    this.#call("guestfs_set_append", [`${current} ${this.#marker}`.trim()], "int");
  }

  #event(event: number, buf: Deno.PointerValue, len: number | bigint): void {
    const n = Number(len);
    const bytes = new Uint8Array(n);
    if (buf !== null && n > 0) Deno.UnsafePointerView.copyInto(buf, bytes);
    const text = decoder.decode(bytes);
    if (event === EVENT_APPLIANCE) {
      const lines = (this.#applianceLine + text).split("\n");
      this.#applianceLine = lines.pop() ?? "";
      for (const line of lines) this.#log(line.replace(/\r$/, ""));
      return;
    }
    const prefix = event === EVENT_TRACE
      ? "libguestfs: trace: "
      : event === EVENT_WARNING
      ? "libguestfs: warning: "
      : "libguestfs: ";
    for (const line of text.replace(/\n$/, "").split("\n")) this.#log(prefix + line);
  }

  #log(line: string): void {
    try {
      this.#onLog?.(line);
    } catch {
      // A logger must not throw into libguestfs.
    }
  }

  /** Whether {@linkcode Guestfs.launch} succeeded and the appliance has not been shut down. */
  get launched(): boolean {
    return this.#launched;
  }

  /** Whether {@linkcode Guestfs.close} was called. */
  get closed(): boolean {
    return this.#closing;
  }

  #assertOpen(call: string): void {
    if (this.#closing) throw new Error(`Cannot call ${call}: the libguestfs handle is closed`);
  }

  /** A short call on this thread. */
  #call<K extends Kind>(fn: FnName, args: readonly Arg[], kind: K): KindValue[K] {
    const call = callName(fn);
    this.#assertOpen(call);
    if (this.#pending > 0) {
      throw new Error(
        `Cannot call ${call}: another libguestfs call on this handle has not finished`,
      );
    }
    checkArgs(call, args);
    const out = invoke(this.#libs, this.#g, this.#slot, fn, args, kind);
    if (!out.ok) throw new GuestfsError(call, out.message, out.errno);
    return out.value as KindValue[K];
  }

  /**
   * A long call, queued behind the others and run on the worker thread. `around` may set
   * things up just before the call is posted; the function it returns sees the reply first.
   */
  #run<K extends Kind>(
    fn: FnName,
    args: readonly Arg[],
    kind: K,
    around?: () => (reply: Reply) => void,
  ): Promise<KindValue[K]> {
    const call = callName(fn);
    try {
      this.#assertOpen(call);
      checkArgs(call, args);
    } catch (e) {
      return Promise.reject(e);
    }
    this.#pending++;
    const task = async (): Promise<KindValue[K]> => {
      try {
        this.#assertOpen(call);
        const sees = around?.();
        const reply = await this.#post(fn, args, kind);
        sees?.(reply);
        if (reply.ok === "crash") throw new Error(`libguestfs ${call}: ${reply.error}`);
        if (!reply.ok) throw new GuestfsError(call, reply.message, reply.errno);
        return reply.value as KindValue[K];
      } finally {
        // Before the caller's continuation runs, so that it may make short calls at once.
        if (--this.#pending === 0 && this.#closing) this.#finalize();
      }
    };
    const result = this.#tail.then(task);
    this.#tail = result.catch(() => {});
    return result;
  }

  #post(fn: FnName, args: readonly Arg[], kind: Kind): Promise<Reply> {
    const worker = this.#ensureWorker();
    const { promise, resolve, reject } = Promise.withResolvers<Reply>();
    const id = this.#nextId++;
    this.#inflight = { id, resolve, reject };
    worker.ref();
    worker.postMessage({ id, fn, args, kind } satisfies Request);
    return promise;
  }

  #ensureWorker(): Worker {
    if (this.#worker) return this.#worker;
    const init: WorkerInit = {
      [WORKER_FLAG]: true,
      handle: BigInt(Deno.UnsafePointer.value(this.#g)),
    };
    const worker = new Worker(new URL(import.meta.url), { workerData: init });
    worker.unref();
    const settle = (fn: (i: Inflight) => void) => {
      const inflight = this.#inflight;
      this.#inflight = undefined;
      worker.unref();
      if (inflight) fn(inflight);
    };
    worker.on("message", (reply: Reply) => {
      if (reply.id === this.#inflight?.id) settle((i) => i.resolve(reply));
    });
    worker.on("error", (e: unknown) => {
      const error = e instanceof Error ? e : new Error(String(e));
      settle((i) => i.reject(new Error(`libguestfs worker thread failed: ${error.message}`)));
    });
    worker.on("exit", (code: number) => {
      if (this.#worker === worker) this.#worker = undefined;
      settle((i) => i.reject(new Error(`libguestfs worker thread exited with code ${code}`)));
    });
    this.#worker = worker;
    return worker;
  }

  // --- lifecycle -------------------------------------------------------------------------------

  /**
   * Adds a disk image (`guestfs_add_drive_opts`). Call before {@linkcode Guestfs.launch}; the
   * first drive becomes `/dev/sda` in the appliance.
   *
   * @param path The image file, or for network protocols the export name.
   * @param options Format, read-only, discard, protocol and servers...
   * @throws {GuestfsError} If libguestfs rejects the drive (e.g. the file does not exist).
   */
  addDrive(path: string, options: AddDriveOptions = {}): void {
    const values: Record<string, OptValue> = {
      readonly: options.readonly,
      format: options.format,
      name: options.name,
      label: options.label,
      protocol: options.protocol,
      server: options.server,
      cachemode: options.cachemode,
      discard: options.discard,
    };
    this.#call("guestfs_add_drive_opts_argv", [path, { optargs: "add_drive", values }], "int");
  }

  /**
   * Starts the appliance (`guestfs_launch`): about 12 s under TCG, 2–3 s with KVM.
   *
   * @param signal Aborts the launch: the appliance's qemu is killed so that the call returns
   * at once, and the promise rejects with `signal.reason`. (Only the direct backend starts
   * qemu as a child of this process; with libvirt the launch runs to its end first.)
   * @returns When the appliance is ready.
   * @throws {GuestfsError} If the appliance fails to start.
   */
  launch(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    let timer: ReturnType<typeof setInterval> | undefined;
    const onAbort = () => {
      // qemu may not be running yet (supermin still building the appliance): keep looking.
      killAppliance(this.#marker);
      timer = setInterval(() => killAppliance(this.#marker), 100);
    };
    return this.#run("guestfs_launch", [], "int", () => {
      signal?.throwIfAborted();
      signal?.addEventListener("abort", onAbort, { once: true });
      return (reply) => {
        signal?.removeEventListener("abort", onAbort);
        clearInterval(timer);
        if (reply.ok === true) this.#launched = true;
        if (signal?.aborted) throw signal.reason;
      };
    }).then(() => {});
  }

  /**
   * Syncs the disks and stops the appliance cleanly (`guestfs_shutdown`). Call it (or use
   * `await using`) before trusting what was written.
   *
   * @returns When qemu has exited.
   * @throws {GuestfsError} If the sync failed or qemu exited with an error: writes may be lost.
   */
  async shutdown(): Promise<void> {
    await this.#run("guestfs_shutdown", [], "int");
    this.#launched = false;
  }

  /**
   * Kills the appliance's qemu at once (SIGKILL), e.g. on ^C: the running call, if any, fails
   * soon after, and so do later calls; close the handle next. Safe at any time, even while a
   * long call runs (unlike `guestfs_get_pid`, which waits for the handle's lock). Does nothing
   * with the libvirt backend, whose qemu is not a child of this process.
   */
  kill(): void {
    killAppliance(this.#marker);
  }

  /**
   * Closes the handle (`guestfs_close`), killing the appliance if it still runs: prefer
   * {@linkcode Guestfs.shutdown} first, or `await using`. Closing twice does nothing. If a long
   * call is still running, its appliance is killed so that it fails, and the handle is
   * released once it has returned; calls queued behind it reject.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#pending > 0) killAppliance(this.#marker);
    else this.#finalize();
  }

  #finalize(): void {
    if (this.#finalized) return;
    this.#finalized = true;
    track(this, false);
    const worker = this.#worker;
    this.#worker = undefined;
    if (worker) {
      worker.removeAllListeners();
      this.#workerExit = worker.terminate();
    }
    this.#libs.gfs.symbols.guestfs_close(this.#g);
    this.#onError.close();
    this.#onEvent?.close();
    if (this.#applianceLine !== "") this.#log(this.#applianceLine);
    this.#launched = false;
    this.#done.resolve();
  }

  /**
   * Shuts the appliance down cleanly if it runs, then closes the handle.
   *
   * @returns When the handle and its worker thread are gone.
   * @throws {GuestfsError} If the shutdown failed (the handle is closed all the same).
   */
  async [Symbol.asyncDispose](): Promise<void> {
    let failure: unknown;
    if (this.#launched && !this.#closing && this.#pending === 0) {
      try {
        await this.shutdown();
      } catch (e) {
        failure = e;
      }
    }
    this.close();
    await this.#done.promise;
    await this.#workerExit;
    if (failure !== undefined) throw failure;
  }

  /** Closes the handle, as {@linkcode Guestfs.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Whether the appliance supports all these optional groups (`guestfs_feature_available`),
   * e.g. `["ntfs3g"]`, `["xfs"]`. Needs a launched handle.
   *
   * @param groups Group names from `guestfs_available`'s list.
   * @returns True if all are available.
   */
  available(groups: string[]): boolean {
    return this.#call("guestfs_feature_available", [groups], "bool");
  }

  // --- inspection ------------------------------------------------------------------------------

  /**
   * Inspects the disks for operating systems (`guestfs_inspect_os`).
   *
   * @returns The root filesystem of each OS found, e.g. `["/dev/sda2"]`; empty if none.
   */
  inspectOs(): Promise<string[]> {
    return this.#run("guestfs_inspect_os", [], "strings");
  }

  /**
   * The roots found by the last {@linkcode Guestfs.inspectOs} (`guestfs_inspect_get_roots`).
   *
   * @returns Root devices.
   */
  inspectGetRoots(): string[] {
    return this.#call("guestfs_inspect_get_roots", [], "strings");
  }

  /**
   * The OS type (`guestfs_inspect_get_type`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns `linux`, `windows`, `freebsd`... or `unknown`.
   */
  inspectGetType(root: string): string {
    return this.#call("guestfs_inspect_get_type", [root], "string");
  }

  /**
   * The distribution (`guestfs_inspect_get_distro`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns `debian`, `rhel`, `ubuntu`, `windows`... or `unknown`.
   */
  inspectGetDistro(root: string): string {
    return this.#call("guestfs_inspect_get_distro", [root], "string");
  }

  /**
   * The OS major version (`guestfs_inspect_get_major_version`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The major version, 0 if unknown.
   */
  inspectGetMajorVersion(root: string): number {
    return this.#call("guestfs_inspect_get_major_version", [root], "int");
  }

  /**
   * The OS minor version (`guestfs_inspect_get_minor_version`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The minor version, 0 if unknown.
   */
  inspectGetMinorVersion(root: string): number {
    return this.#call("guestfs_inspect_get_minor_version", [root], "int");
  }

  /**
   * The product name (`guestfs_inspect_get_product_name`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The product name, e.g. `Debian GNU/Linux 12 (bookworm)`, or `unknown`.
   */
  inspectGetProductName(root: string): string {
    return this.#call("guestfs_inspect_get_product_name", [root], "string");
  }

  /**
   * The product variant (`guestfs_inspect_get_product_variant`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns For Windows `Client` or `Server`, else `unknown`.
   */
  inspectGetProductVariant(root: string): string {
    return this.#call("guestfs_inspect_get_product_variant", [root], "string");
  }

  /**
   * The package format (`guestfs_inspect_get_package_format`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns `deb`, `rpm`... or `unknown`.
   */
  inspectGetPackageFormat(root: string): string {
    return this.#call("guestfs_inspect_get_package_format", [root], "string");
  }

  /**
   * The package manager (`guestfs_inspect_get_package_management`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns `apt`, `dnf`, `yum`, `zypper`... or `unknown`.
   */
  inspectGetPackageManagement(root: string): string {
    return this.#call("guestfs_inspect_get_package_management", [root], "string");
  }

  /**
   * The architecture (`guestfs_inspect_get_arch`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The guest architecture, e.g. `x86_64`, `i386`.
   */
  inspectGetArch(root: string): string {
    return this.#call("guestfs_inspect_get_arch", [root], "string");
  }

  /**
   * The hostname (`guestfs_inspect_get_hostname`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The guest's hostname, or `unknown`.
   */
  inspectGetHostname(root: string): string {
    return this.#call("guestfs_inspect_get_hostname", [root], "string");
  }

  /**
   * The libosinfo id (`guestfs_inspect_get_osinfo`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns The libosinfo short id, e.g. `debian12`, `win10`, or `unknown`.
   */
  inspectGetOsinfo(root: string): string {
    return this.#call("guestfs_inspect_get_osinfo", [root], "string");
  }

  /**
   * The guest's mountpoints (`guestfs_inspect_get_mountpoints`), from its fstab or drive
   * letters. Mount them shortest mountpoint first.
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns `[mountpoint, device]` pairs, e.g. `["/", "/dev/sda2"]`.
   */
  inspectGetMountpoints(root: string): [mountpoint: string, device: string][] {
    return pairs(this.#call("guestfs_inspect_get_mountpoints", [root], "strings"));
  }

  /**
   * The OS's filesystems (`guestfs_inspect_get_filesystems`).
   *
   * @param root A root from {@linkcode Guestfs.inspectOs}.
   * @returns All filesystems that belong to this OS, swap included.
   */
  inspectGetFilesystems(root: string): string[] {
    return this.#call("guestfs_inspect_get_filesystems", [root], "strings");
  }

  /**
   * Windows drive letters (`guestfs_inspect_get_drive_mappings`).
   *
   * @param root A Windows root from {@linkcode Guestfs.inspectOs}.
   * @returns `[driveLetter, device]` pairs, e.g. `["C", "/dev/sda2"]`.
   */
  inspectGetDriveMappings(root: string): [letter: string, device: string][] {
    return pairs(this.#call("guestfs_inspect_get_drive_mappings", [root], "strings"));
  }

  /**
   * The Windows system root (`guestfs_inspect_get_windows_systemroot`).
   *
   * @param root A Windows root from {@linkcode Guestfs.inspectOs}.
   * @returns The system root, e.g. `/Windows`.
   */
  inspectGetWindowsSystemroot(root: string): string {
    return this.#call("guestfs_inspect_get_windows_systemroot", [root], "string");
  }

  /**
   * The SYSTEM hive (`guestfs_inspect_get_windows_system_hive`).
   *
   * @param root A Windows root from {@linkcode Guestfs.inspectOs}.
   * @returns The path of the SYSTEM hive, e.g. `/Windows/System32/config/SYSTEM`.
   */
  inspectGetWindowsSystemHive(root: string): string {
    return this.#call("guestfs_inspect_get_windows_system_hive", [root], "string");
  }

  /**
   * The SOFTWARE hive (`guestfs_inspect_get_windows_software_hive`).
   *
   * @param root A Windows root from {@linkcode Guestfs.inspectOs}.
   * @returns The path of the SOFTWARE hive.
   */
  inspectGetWindowsSoftwareHive(root: string): string {
    return this.#call("guestfs_inspect_get_windows_software_hive", [root], "string");
  }

  /**
   * The current control set (`guestfs_inspect_get_windows_current_control_set`).
   *
   * @param root A Windows root from {@linkcode Guestfs.inspectOs}.
   * @returns The current control set, e.g. `ControlSet001`.
   */
  inspectGetWindowsCurrentControlSet(root: string): string {
    return this.#call("guestfs_inspect_get_windows_current_control_set", [root], "string");
  }

  // --- block devices and filesystems ---------------------------------------------------------

  /**
   * Lists block devices (`guestfs_list_devices`).
   *
   * @returns The appliance's block devices, e.g. `["/dev/sda", "/dev/sdb"]`.
   */
  listDevices(): string[] {
    return this.#call("guestfs_list_devices", [], "strings");
  }

  /**
   * Lists partitions (`guestfs_list_partitions`).
   *
   * @returns All partitions, e.g. `["/dev/sda1", "/dev/sda2"]`.
   */
  listPartitions(): string[] {
    return this.#call("guestfs_list_partitions", [], "strings");
  }

  /**
   * Lists filesystems on all devices, partitions and LVs (`guestfs_list_filesystems`).
   *
   * @returns `[device, vfsType]` pairs; the type is `unknown` or `swap` where no filesystem.
   */
  async listFilesystems(): Promise<[device: string, vfsType: string][]> {
    return pairs(await this.#run("guestfs_list_filesystems", [], "strings"));
  }

  /**
   * Lists software RAID devices (`guestfs_list_md_devices`).
   *
   * @returns e.g. `["/dev/md127"]`; empty if none.
   */
  listMdDevices(): string[] {
    return this.#call("guestfs_list_md_devices", [], "strings");
  }

  /**
   * Lists LVM logical volumes (`guestfs_lvs`). Needs the `lvm2` group (see {@link available}).
   *
   * @returns e.g. `["/dev/VG/root"]`; empty if none.
   */
  lvs(): string[] {
    return this.#call("guestfs_lvs", [], "strings");
  }

  /**
   * Lists Windows dynamic disk (LDM) volumes (`guestfs_list_ldm_volumes`). Needs the `ldm`
   * group (see {@link available}).
   *
   * @returns e.g. `["/dev/mapper/ldm_vol_Volume1"]`; empty if none.
   */
  listLdmVolumes(): string[] {
    return this.#call("guestfs_list_ldm_volumes", [], "strings");
  }

  /**
   * Probes a device with blkid (`guestfs_blkid`).
   *
   * @param device e.g. `/dev/sda1`.
   * @returns blkid's tags: `TYPE`, `UUID`, `LABEL`, `PART_ENTRY_*`...
   */
  blkid(device: string): Record<string, string> {
    return Object.fromEntries(pairs(this.#call("guestfs_blkid", [device], "strings")));
  }

  /**
   * The filesystem type (`guestfs_vfs_type`).
   *
   * @param device A device or mountable, e.g. `/dev/sda1`.
   * @returns The filesystem type, e.g. `ext4`, `xfs`, `ntfs`, `swap`.
   */
  vfsType(device: string): string {
    return this.#call("guestfs_vfs_type", [device], "string");
  }

  /**
   * The filesystem UUID (`guestfs_vfs_uuid`).
   *
   * @param device A device or mountable.
   * @returns The filesystem UUID, or `""` if it has none.
   */
  vfsUuid(device: string): string {
    return this.#call("guestfs_vfs_uuid", [device], "string");
  }

  /**
   * The filesystem label (`guestfs_vfs_label`).
   *
   * @param device A device or mountable.
   * @returns The filesystem label, or `""` if it has none.
   */
  vfsLabel(device: string): string {
    return this.#call("guestfs_vfs_label", [device], "string");
  }

  /**
   * Mounts a filesystem read-write inside the appliance (`guestfs_mount`).
   *
   * @param device e.g. `/dev/sda1`.
   * @param mountpoint An existing directory in what is already mounted, `/` first.
   */
  async mount(device: string, mountpoint: string): Promise<void> {
    await this.#run("guestfs_mount", [device, mountpoint], "int");
  }

  /**
   * Mounts a filesystem read-only (`guestfs_mount_ro`).
   *
   * @param device e.g. `/dev/sda1`.
   * @param mountpoint An existing directory in what is already mounted.
   */
  async mountRo(device: string, mountpoint: string): Promise<void> {
    await this.#run("guestfs_mount_ro", [device, mountpoint], "int");
  }

  /**
   * Unmounts one filesystem (`guestfs_umount`).
   *
   * @param pathOrDevice The mountpoint or the device.
   */
  async umount(pathOrDevice: string): Promise<void> {
    await this.#run("guestfs_umount", [pathOrDevice], "int");
  }

  /** Unmounts every filesystem (`guestfs_umount_all`). */
  async umountAll(): Promise<void> {
    await this.#run("guestfs_umount_all", [], "int");
  }

  /** Flushes the appliance's caches to the disks (`guestfs_sync`). */
  async sync(): Promise<void> {
    await this.#run("guestfs_sync", [], "int");
  }

  /**
   * Discards unused blocks of a mounted filesystem (`guestfs_fstrim`). The discards reach the
   * image only if its drive was added with `discard`.
   *
   * @param mountpoint A mountpoint, e.g. `/`.
   */
  async fstrim(mountpoint: string): Promise<void> {
    await this.#run("guestfs_fstrim_argv", [mountpoint, { optargs: "fstrim", values: {} }], "int");
  }

  /**
   * Creates one partition over the whole device (`guestfs_part_disk`).
   *
   * @param device e.g. `/dev/sda`.
   * @param parttype `mbr` or `gpt`.
   */
  async partDisk(device: string, parttype: "mbr" | "gpt"): Promise<void> {
    await this.#run("guestfs_part_disk", [device, parttype], "int");
  }

  /**
   * Makes a filesystem (`guestfs_mkfs`).
   *
   * @param fstype e.g. `ext4`, `xfs`, `vfat`, `ntfs`.
   * @param device e.g. `/dev/sda1`.
   * @param options Block size, features, label...
   */
  async mkfs(fstype: string, device: string, options: MkfsOptions = {}): Promise<void> {
    const values: Record<string, OptValue> = { ...options };
    await this.#run(
      "guestfs_mkfs_opts_argv",
      [fstype, device, { optargs: "mkfs", values }],
      "int",
    );
  }

  /**
   * Formats a device as LUKS (`guestfs_luks_format`), for test images. libguestfs' trace
   * shows the key as `***`; error messages never include it.
   *
   * @param device e.g. `/dev/sda1`.
   * @param key The passphrase.
   * @param keyslot The key slot, 0–7.
   */
  async luksFormat(device: string, key: string, keyslot: number): Promise<void> {
    await this.#run("guestfs_luks_format", [device, key, keyslot], "int");
  }

  /**
   * Sets a filesystem label (`guestfs_set_label`).
   *
   * @param device e.g. `/dev/sda1`.
   * @param label The new label.
   */
  setLabel(device: string, label: string): void {
    this.#call("guestfs_set_label", [device, label], "int");
  }

  // --- files -----------------------------------------------------------------------------------

  /**
   * Reads a whole file from the guest (`guestfs_read_file`).
   *
   * @param path Path in the guest.
   * @returns Its bytes.
   */
  readFile(path: string): Promise<Uint8Array> {
    return this.#run("guestfs_read_file", [path, { sizeOut: true }], "bytes");
  }

  /**
   * Reads part of a file (`guestfs_pread`), e.g. the header of a file too big to read whole.
   *
   * @param path Path in the guest.
   * @param count How many bytes, at most about 2 MiB.
   * @param offset Where to start.
   * @returns The bytes read; fewer than `count` at the end of the file.
   */
  pread(path: string, count: number, offset: number): Promise<Uint8Array> {
    return this.#run("guestfs_pread", [path, count, offset, { sizeOut: true }], "bytes");
  }

  /**
   * Reads a text file from the guest (`guestfs_cat`); stops at the first NUL byte.
   *
   * @param path Path in the guest.
   * @returns Its text, decoded as UTF-8.
   */
  cat(path: string): Promise<string> {
    return this.#run("guestfs_cat", [path], "string");
  }

  /**
   * Writes a whole file in the guest (`guestfs_write`), creating or truncating it. The protocol
   * limits one write to about 2 MiB: use {@linkcode Guestfs.upload} for larger files.
   *
   * @param path Path in the guest.
   * @param content Bytes, or text written as UTF-8.
   */
  async write(path: string, content: Uint8Array | string): Promise<void> {
    const bytes = typeof content === "string" ? encoder.encode(content) : content;
    await this.#run("guestfs_write", [path, bytes, bytes.byteLength], "int");
  }

  /**
   * Copies a local file into the guest (`guestfs_upload`), with no size limit.
   *
   * @param localPath File on this host.
   * @param path Destination in the guest.
   */
  async upload(localPath: string, path: string): Promise<void> {
    await this.#run("guestfs_upload", [localPath, path], "int");
  }

  /**
   * Copies a file out of the guest (`guestfs_download`), with no size limit.
   *
   * @param path File in the guest.
   * @param localPath Destination on this host.
   */
  async download(path: string, localPath: string): Promise<void> {
    await this.#run("guestfs_download", [path, localPath], "int");
  }

  /**
   * Tests for existence (`guestfs_exists`).
   *
   * @param path Path in the guest.
   * @returns Whether anything exists there (symlinks are followed).
   */
  exists(path: string): boolean {
    return this.#call("guestfs_exists", [path], "bool");
  }

  /**
   * Tests for a regular file (`guestfs_is_file`).
   *
   * @param path Path in the guest.
   * @returns Whether it is a regular file (a symlink is not).
   */
  isFile(path: string): boolean {
    return this.#call("guestfs_is_file", [path], "bool");
  }

  /**
   * Tests for a directory (`guestfs_is_dir`).
   *
   * @param path Path in the guest.
   * @returns Whether it is a directory (a symlink is not).
   */
  isDir(path: string): boolean {
    return this.#call("guestfs_is_dir", [path], "bool");
  }

  /**
   * Tests for a symbolic link (`guestfs_is_symlink`).
   *
   * @param path Path in the guest.
   * @returns Whether it is a symbolic link.
   */
  isSymlink(path: string): boolean {
    return this.#call("guestfs_is_symlink", [path], "bool");
  }

  /**
   * Reads a symbolic link (`guestfs_readlink`).
   *
   * @param path A symbolic link in the guest.
   * @returns Its target, as stored.
   */
  readlink(path: string): string {
    return this.#call("guestfs_readlink", [path], "string");
  }

  /**
   * The size of a file (`guestfs_filesize`).
   *
   * @param path A file in the guest.
   * @returns Its size in bytes.
   */
  filesize(path: string): number {
    return this.#call("guestfs_filesize", [path], "int64");
  }

  /**
   * Lists a directory (`guestfs_ls`).
   *
   * @param dir A directory in the guest.
   * @returns Its entries without `.` and `..`, sorted.
   */
  ls(dir: string): string[] {
    return this.#call("guestfs_ls", [dir], "strings");
  }

  /**
   * Expands a shell glob in the guest (`guestfs_glob_expand`).
   *
   * @param pattern e.g. `/boot/vmlinuz-*`.
   * @returns The matching paths, sorted; empty if none.
   */
  globExpand(pattern: string): string[] {
    return this.#call("guestfs_glob_expand", [pattern], "strings");
  }

  /**
   * Moves or renames a file (`guestfs_mv`).
   *
   * @param src Path in the guest.
   * @param dest New path.
   */
  mv(src: string, dest: string): void {
    this.#call("guestfs_mv", [src, dest], "int");
  }

  /**
   * Copies a file (`guestfs_cp`).
   *
   * @param src A file in the guest.
   * @param dest Where to copy it.
   */
  cp(src: string, dest: string): void {
    this.#call("guestfs_cp", [src, dest], "int");
  }

  /**
   * Removes a file (`guestfs_rm`).
   *
   * @param path A file in the guest; it must exist.
   */
  rm(path: string): void {
    this.#call("guestfs_rm", [path], "int");
  }

  /**
   * Removes a file if it exists (`guestfs_rm_f`).
   *
   * @param path A file in the guest; no error if it does not exist.
   */
  rmF(path: string): void {
    this.#call("guestfs_rm_f", [path], "int");
  }

  /**
   * Removes recursively (`guestfs_rm_rf`).
   *
   * @param path A file or directory tree in the guest, removed recursively.
   */
  rmRf(path: string): void {
    this.#call("guestfs_rm_rf", [path], "int");
  }

  /**
   * Creates a directory and its parents (`guestfs_mkdir_p`).
   *
   * @param path A directory to create in the guest, with its parents.
   */
  mkdirP(path: string): void {
    this.#call("guestfs_mkdir_p", [path], "int");
  }

  /**
   * Creates or replaces a symbolic link (`ln -sf`).
   *
   * @param target What the link points to.
   * @param link Path of the link.
   */
  lnSf(target: string, link: string): void {
    this.#call("guestfs_ln_sf", [target, link], "int");
  }

  /**
   * Changes permissions (`guestfs_chmod`).
   *
   * @param mode Permission bits, e.g. `0o644`.
   * @param path Path in the guest.
   */
  chmod(mode: number, path: string): void {
    this.#call("guestfs_chmod", [mode, path], "int");
  }

  /**
   * Creates a file or updates its times (`guestfs_touch`).
   *
   * @param path A file in the guest to create or update the times of.
   */
  touch(path: string): void {
    this.#call("guestfs_touch", [path], "int");
  }

  // --- Augeas ----------------------------------------------------------------------------------

  /**
   * Opens Augeas on the guest tree (`guestfs_aug_init`); loads every known file unless
   * `AUG_FLAGS.noLoad`.
   *
   * @param root The directory to treat as `/`, usually `/`.
   * @param flags A sum of {@linkcode AUG_FLAGS}.
   */
  async augInit(root: string, flags: number): Promise<void> {
    await this.#run("guestfs_aug_init", [root, flags], "int");
  }

  /** Loads (or reloads) the files Augeas knows (`guestfs_aug_load`). */
  async augLoad(): Promise<void> {
    await this.#run("guestfs_aug_load", [], "int");
  }

  /**
   * Reads one Augeas node (`guestfs_aug_get`).
   *
   * @param path An Augeas path matching one node, e.g. `/files/etc/hosts/1/canonical`.
   * @returns Its value.
   */
  augGet(path: string): string {
    return this.#call("guestfs_aug_get", [path], "string");
  }

  /**
   * Sets one Augeas node (`guestfs_aug_set`).
   *
   * @param path An Augeas path; the node is created if missing.
   * @param value The new value.
   */
  augSet(path: string, value: string): void {
    this.#call("guestfs_aug_set", [path, value], "int");
  }

  /**
   * Finds Augeas nodes (`guestfs_aug_match`).
   *
   * @param path An Augeas path expression.
   * @returns The matching node paths.
   */
  augMatch(path: string): string[] {
    return this.#call("guestfs_aug_match", [path], "strings");
  }

  /**
   * Lists an Augeas node's children (`guestfs_aug_ls`).
   *
   * @param path An Augeas path.
   * @returns The paths of its children.
   */
  augLs(path: string): string[] {
    return this.#call("guestfs_aug_ls", [path], "strings");
  }

  /**
   * Removes Augeas nodes and their children (`guestfs_aug_rm`).
   *
   * @param path An Augeas path expression.
   * @returns How many nodes were removed.
   */
  augRm(path: string): number {
    return this.#call("guestfs_aug_rm", [path], "int");
  }

  /**
   * Inserts a sibling node (`guestfs_aug_insert`).
   *
   * @param path An Augeas path matching one node.
   * @param label The new node's label.
   * @param before Insert before the node rather than after it.
   */
  augInsert(path: string, label: string, before: boolean): void {
    this.#call("guestfs_aug_insert", [path, label, before], "int");
  }

  /** Writes the changed files back (`guestfs_aug_save`). */
  augSave(): void {
    this.#call("guestfs_aug_save", [], "int");
  }

  /** Closes Augeas (`guestfs_aug_close`). */
  augClose(): void {
    this.#call("guestfs_aug_close", [], "int");
  }

  /**
   * Adds (or removes) a lens transform for one file (`guestfs_aug_transform`); then call
   * {@linkcode Guestfs.augLoad}.
   *
   * @param lens e.g. `Grub.lns`.
   * @param file e.g. `/boot/grub/menu.lst`.
   * @param remove Remove the transform instead. @default false
   */
  augTransform(lens: string, file: string, remove = false): void {
    const values: Record<string, OptValue> = { remove: remove ? true : undefined };
    this.#call(
      "guestfs_aug_transform_argv",
      [lens, file, { optargs: "aug_transform", values }],
      "int",
    );
  }

  // --- Windows registry hives ------------------------------------------------------------------

  /**
   * Opens a registry hive file of the mounted guest (`guestfs_hivex_open`); one hive at a time
   * per handle. Node and value handles are numbers, valid until {@linkcode Guestfs.hivexClose}.
   *
   * @param path The hive in the guest, e.g. `/Windows/System32/config/SYSTEM`.
   * @param options `write` opens it for changes, kept in the appliance until
   *   {@linkcode Guestfs.hivexCommit}. @default { write: false }
   */
  async hivexOpen(path: string, options: { write?: boolean } = {}): Promise<void> {
    const values: Record<string, OptValue> = { write: options.write ? true : undefined };
    await this.#run("guestfs_hivex_open_argv", [path, { optargs: "hivex_open", values }], "int");
  }

  /** Closes the open hive (`guestfs_hivex_close`), dropping uncommitted changes. */
  async hivexClose(): Promise<void> {
    await this.#run("guestfs_hivex_close", [], "int");
  }

  /**
   * Writes the changes of the open hive back to its file (`guestfs_hivex_commit`).
   *
   * @param path Write to this file instead of the opened one.
   */
  async hivexCommit(path?: string): Promise<void> {
    await this.#run("guestfs_hivex_commit", [path ?? null], "int");
  }

  /**
   * The root node of the open hive (`guestfs_hivex_root`).
   *
   * @returns Its node handle.
   */
  hivexRoot(): number {
    return this.#call("guestfs_hivex_root", [], "int64");
  }

  /**
   * The name of a node (`guestfs_hivex_node_name`).
   *
   * @param node A node handle.
   * @returns Its name as stored (Windows compares names without case).
   */
  hivexNodeName(node: number): string {
    return this.#call("guestfs_hivex_node_name", [node], "string");
  }

  /**
   * The subkeys of a node (`guestfs_hivex_node_children`).
   *
   * @param node A node handle.
   * @returns Their node handles.
   */
  hivexNodeChildren(node: number): number[] {
    return this.#call("guestfs_hivex_node_children", [node], "handles");
  }

  /**
   * One subkey by name, compared without case (`guestfs_hivex_node_get_child`).
   *
   * @param node A node handle.
   * @param name The subkey's name.
   * @returns Its node handle, or `undefined` if there is none.
   */
  hivexNodeGetChild(node: number, name: string): number | undefined {
    const child = this.#call("guestfs_hivex_node_get_child", [node, name], "int64");
    return child === 0 ? undefined : child;
  }

  /**
   * The parent of a node (`guestfs_hivex_node_parent`).
   *
   * @param node A node handle other than the root.
   * @returns The parent's node handle.
   */
  hivexNodeParent(node: number): number {
    return this.#call("guestfs_hivex_node_parent", [node], "int64");
  }

  /**
   * The values of a node (`guestfs_hivex_node_values`).
   *
   * @param node A node handle.
   * @returns Their value handles.
   */
  hivexNodeValues(node: number): number[] {
    return this.#call("guestfs_hivex_node_values", [node], "handles");
  }

  /**
   * One value by name, compared without case (`guestfs_hivex_node_get_value`).
   *
   * @param node A node handle.
   * @param key The value's name; `""` for the default value.
   * @returns Its value handle, or `undefined` if there is none.
   */
  hivexNodeGetValue(node: number, key: string): number | undefined {
    const value = this.#call("guestfs_hivex_node_get_value", [node, key], "int64");
    return value === 0 ? undefined : value;
  }

  /**
   * The name of a value (`guestfs_hivex_value_key`).
   *
   * @param value A value handle.
   * @returns Its name; `""` for the default value.
   */
  hivexValueKey(value: number): string {
    return this.#call("guestfs_hivex_value_key", [value], "string");
  }

  /**
   * The type of a value (`guestfs_hivex_value_type`).
   *
   * @param value A value handle.
   * @returns The `REG_*` type number, e.g. 1 (`REG_SZ`), 4 (`REG_DWORD`).
   */
  hivexValueType(value: number): number {
    return this.#call("guestfs_hivex_value_type", [value], "int64");
  }

  /**
   * A string value, decoded from UTF-16LE (`guestfs_hivex_value_string`).
   *
   * @param value A value handle of type `REG_SZ`, `REG_EXPAND_SZ` (or a string stored in
   *   another type).
   * @returns The string as UTF-8.
   */
  hivexValueString(value: number): string {
    return this.#call("guestfs_hivex_value_string", [value], "string");
  }

  /**
   * The raw bytes of a value (`guestfs_hivex_value_value`).
   *
   * @param value A value handle.
   * @returns The bytes as stored (little-endian numbers, UTF-16LE strings).
   */
  hivexValueValue(value: number): Uint8Array {
    return this.#call("guestfs_hivex_value_value", [value, { sizeOut: true }], "bytes");
  }

  /**
   * Creates or replaces one value (`guestfs_hivex_node_set_value`); needs a hive opened with
   * `write`.
   *
   * @param node A node handle.
   * @param key The value's name; `""` for the default value.
   * @param type The `REG_*` type number.
   * @param data The raw bytes (see `windows/_registry.ts` for the encodings).
   */
  hivexNodeSetValue(node: number, key: string, type: number, data: Uint8Array): void {
    this.#call(
      "guestfs_hivex_node_set_value",
      [node, key, type, data, data.byteLength],
      "int",
    );
  }

  /**
   * Adds a subkey (`guestfs_hivex_node_add_child`); needs a hive opened with `write`.
   *
   * @param parent A node handle.
   * @param name The new subkey's name; it must not exist yet.
   * @returns The new node's handle.
   */
  hivexNodeAddChild(parent: number, name: string): number {
    return this.#call("guestfs_hivex_node_add_child", [parent, name], "int64");
  }

  /**
   * Deletes a subkey and everything under it (`guestfs_hivex_node_delete_child`).
   *
   * @param node A node handle other than the root.
   */
  hivexNodeDeleteChild(node: number): void {
    this.#call("guestfs_hivex_node_delete_child", [node], "int");
  }

  // --- inside the guest ------------------------------------------------------------------------

  /**
   * Runs a program from the mounted guest, chrooted into it (`guestfs_command`). Needs a
   * mounted guest root that contains the program and its libraries.
   *
   * @param argv Program and arguments, e.g. `["/sbin/update-initramfs", "-u"]`.
   * @returns Its standard output.
   * @throws {GuestfsError} If it cannot run or exits non-zero (stderr is in the message).
   */
  command(argv: string[]): Promise<string> {
    return this.#run("guestfs_command", [argv], "string");
  }

  /**
   * As {@linkcode Guestfs.command}, split into lines.
   *
   * @param argv Program and arguments.
   * @returns Its standard output, one string a line.
   */
  commandLines(argv: string[]): Promise<string[]> {
    return this.#run("guestfs_command_lines", [argv], "strings");
  }

  /**
   * Runs a shell command with the guest's `/bin/sh` (`guestfs_sh`).
   *
   * @param command The command line.
   * @returns Its standard output.
   */
  sh(command: string): Promise<string> {
    return this.#run("guestfs_sh", [command], "string");
  }

  /**
   * As {@linkcode Guestfs.sh}, split into lines.
   *
   * @param command The command line.
   * @returns Its standard output, one string a line.
   */
  shLines(command: string): Promise<string[]> {
    return this.#run("guestfs_sh_lines", [command], "strings");
  }
}
