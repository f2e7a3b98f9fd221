/**
 * Positional file I/O and memory maps through libc (Deno FFI), for the local copy path.
 *
 * Why not `Deno.FsFile`: it has no positional read or write (a seek and a write are two calls,
 * so one handle cannot serve two requests at once), its asynchronous write copies every buffer
 * into a fresh allocation, and its synchronous calls run on the one JavaScript thread. Here
 * `pread` and `pwrite` run on Deno's blocking thread pool (`nonblocking` FFI calls), several at
 * once on one descriptor, straight from and into the caller's memory; and `mmap` lets the copy
 * engine hand the page cache of a local source image to `pwrite` without copying it into a
 * buffer first: one memory copy per byte, as qemu-img convert does.
 *
 * libc is opened on first use, so runs that never copy a local file never need `--allow-ffi`.
 *
 * @module
 */

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;
const PROT_READ = 1;
const MAP_SHARED = 1;
const MADV_DONTNEED = 4;
const PAGE = 4096;
/** The span of one ArrayBuffer over a mapped file. */
const WINDOW = 2 ** 30;
/** The kernel's errno values the messages name. */
const ERRNO: Record<number, string> = {
  1: "operation not permitted",
  2: "no such file or directory",
  5: "input/output error",
  9: "bad file descriptor",
  12: "out of memory",
  13: "permission denied",
  21: "is a directory",
  22: "invalid argument",
  27: "file too large",
  28: "no space left on device",
  30: "read-only file system",
};

function load() {
  return Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    pread: {
      parameters: ["i32", "pointer", "usize", "i64"],
      result: "isize",
      nonblocking: true,
    },
    pwrite: {
      parameters: ["i32", "pointer", "usize", "i64"],
      result: "isize",
      nonblocking: true,
    },
    fdatasync: { parameters: ["i32"], result: "i32", nonblocking: true },
    mmap: {
      parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
      result: "pointer",
    },
    munmap: { parameters: ["pointer", "usize"], result: "i32" },
    madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  });
}

let lib: ReturnType<typeof load> | undefined;
function libc(): ReturnType<typeof load>["symbols"] {
  lib ??= load();
  return lib.symbols;
}

/**
 * The calling thread's errno, as words. Only meaningful right after a synchronous call: a
 * nonblocking call ran on another thread, whose errno this thread cannot see.
 */
function lastError(): string {
  const p = libc().__errno_location();
  const n = p ? new Deno.UnsafePointerView(p).getInt32() : 0;
  return ERRNO[n] ?? `errno ${n}`;
}

/** A file opened through libc, read and written at explicit positions. */
export class PosixFile {
  /** The path, for messages. */
  readonly path: string;
  #fd: number;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /**
   * Opens an existing file.
   *
   * @param path The file.
   * @param mode `read`, `write` or `readwrite`.
   * @returns The open file; close it with {@linkcode PosixFile.close}.
   * @throws {Error} Naming the file and the reason.
   * @example
   * ```ts
   * import { PosixFile } from "./libc.ts";
   * const path = Deno.makeTempFileSync();
   * const f = PosixFile.open(path, "readwrite");
   * await f.pwrite(new TextEncoder().encode("hello"), 3);
   * const back = new Uint8Array(5);
   * await f.pread(back, 3);
   * f.close();
   * Deno.removeSync(path);
   * if (new TextDecoder().decode(back) !== "hello") throw new Error();
   * ```
   */
  static open(path: string, mode: "read" | "write" | "readwrite"): PosixFile {
    const flags = { read: O_RDONLY, write: O_WRONLY, readwrite: O_RDWR }[mode] | O_CLOEXEC;
    const fd = libc().open(new TextEncoder().encode(`${path}\0`), flags, 0);
    if (fd < 0) throw new Error(`Cannot open "${path}": ${lastError()}`);
    return new PosixFile(path, fd);
  }

  /**
   * Writes all of `data` at `position`, without moving any file offset.
   *
   * @param data The bytes (a JavaScript buffer or a view of mapped memory); keep it alive and
   *   unchanged until the promise settles.
   * @param position Byte offset in the file.
   */
  async pwrite(data: Uint8Array, position: number): Promise<void> {
    for (let done = 0; done < data.length;) {
      const n = await this.#io("pwrite", data.subarray(done), position + done);
      if (n <= 0) {
        throw new Error(
          `Cannot write "${this.path}" at ${position + done}: ${
            n === 0 ? "no progress" : "write failed (disk full or I/O error)"
          }`,
        );
      }
      done += n;
    }
  }

  /**
   * Fills `into` with the file's bytes at `position`; past the end of the file reads zeroes.
   *
   * @param into Where the bytes go.
   * @param position Byte offset in the file.
   */
  async pread(into: Uint8Array, position: number): Promise<void> {
    for (let done = 0; done < into.length;) {
      const n = await this.#io("pread", into.subarray(done), position + done);
      if (n < 0) throw new Error(`Cannot read "${this.path}" at ${position + done}: read failed`);
      if (n === 0) {
        into.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** One `pread` or `pwrite` call on the thread pool: the byte count, or -1. */
  async #io(call: "pread" | "pwrite", buf: Uint8Array, position: number): Promise<number> {
    const pointer = Deno.UnsafePointer.of(buf as Uint8Array<ArrayBuffer>);
    return Number(
      await libc()[call](this.#open(), pointer, BigInt(buf.length), BigInt(position)),
    );
  }

  /** Makes everything written durable (`fdatasync`). */
  async sync(): Promise<void> {
    if (await libc().fdatasync(this.#open()) !== 0) {
      throw new Error(`Cannot flush "${this.path}": fdatasync failed`);
    }
  }

  /** Closes the file; safe to call twice. Wait for pending reads and writes first. */
  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }

  #open(): number {
    if (this.#fd < 0) throw new Error(`"${this.path}" is closed`);
    return this.#fd;
  }
}

/**
 * A read-only shared memory map of a whole file: views of it read the page cache directly.
 */
export class MappedFile implements Disposable {
  /** The path, for messages. */
  readonly path: string;
  /** The file size in bytes, as mapped. */
  readonly size: number;
  #base: Deno.PointerValue;
  #windows = new Map<number, ArrayBuffer>();

  private constructor(path: string, size: number, base: Deno.PointerValue) {
    this.path = path;
    this.size = size;
    this.#base = base;
  }

  /**
   * Maps a file read-only. The file is never written through the map (`PROT_READ`).
   *
   * @param path The file.
   * @returns The map; dispose it (after every view is done with) to unmap.
   * @throws {Error} Naming the file and the reason.
   * @example
   * ```ts
   * import { MappedFile } from "./libc.ts";
   * const path = Deno.makeTempFileSync();
   * Deno.writeTextFileSync(path, "abcdef");
   * using map = MappedFile.open(path);
   * const text = new TextDecoder().decode(map.view(2, 3));
   * Deno.removeSync(path);
   * if (text !== "cde") throw new Error(text);
   * ```
   */
  static open(path: string): MappedFile {
    const size = Deno.statSync(path).size;
    const fd = libc().open(new TextEncoder().encode(`${path}\0`), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) throw new Error(`Cannot open "${path}": ${lastError()}`);
    try {
      if (size === 0) return new MappedFile(path, 0, null);
      const base = libc().mmap(null, BigInt(size), PROT_READ, MAP_SHARED, fd, 0n);
      // MAP_FAILED is (void *) -1.
      if (base === null || Deno.UnsafePointer.value(base) === 0xffffffffffffffffn) {
        throw new Error(`Cannot map "${path}": ${lastError()}`);
      }
      return new MappedFile(path, size, base);
    } finally {
      // The map keeps the file referenced; the descriptor is no longer needed.
      libc().close(fd);
    }
  }

  /**
   * A view of `length` bytes at `offset`. Valid until the map is disposed; reading it after
   * that crashes the process, so views must not outlive the map.
   *
   * @param offset Byte offset in the file.
   * @param length Byte count; `offset + length` must be within the file.
   * @returns The bytes, read from the page cache as they are touched.
   */
  view(offset: number, length: number): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(
        `"${this.path}": range ${offset}+${length} is outside the file (${this.size} bytes)`,
      );
    }
    if (length === 0) return new Uint8Array(0);
    if (this.#base === null) throw new Error(`"${this.path}" is unmapped`);
    // Views of one ArrayBuffer per GiB of the file: an ArrayBuffer per view made V8 account
    // each view's bytes as new external memory and collect garbage over and over (measured:
    // a third of a local copy's CPU time in V8's threads).
    const window = Math.floor(offset / WINDOW);
    if (Math.floor((offset + length - 1) / WINDOW) === window) {
      let buffer = this.#windows.get(window);
      if (!buffer) {
        const at = Deno.UnsafePointer.offset(this.#base, window * WINDOW)!;
        buffer = Deno.UnsafePointerView.getArrayBuffer(
          at,
          Math.min(WINDOW, this.size - window * WINDOW),
        );
        this.#windows.set(window, buffer);
      }
      return new Uint8Array(buffer, offset - window * WINDOW, length);
    }
    const at = Deno.UnsafePointer.offset(this.#base, offset)!;
    return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(at, length));
  }

  /**
   * Drops a view's pages from this process's memory (they stay in the page cache, and are
   * mapped again if read again). Without it, every page the copy touched would count in the
   * process's resident size until the end: the whole disk's data.
   *
   * @param view A view returned by {@linkcode MappedFile.view}, no longer in use.
   */
  release(view: Uint8Array): void {
    if (this.#base === null || view.length === 0) return;
    const at = Deno.UnsafePointer.value(Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>));
    const start = at - (at % BigInt(PAGE));
    const length = Number(at - start) + view.length;
    libc().madvise(Deno.UnsafePointer.create(start), BigInt(length), MADV_DONTNEED);
  }

  /** Unmaps the file; safe to call twice. */
  [Symbol.dispose](): void {
    if (this.#base === null) return;
    libc().munmap(this.#base, BigInt(this.size));
    this.#base = null;
    this.#windows.clear();
  }
}
