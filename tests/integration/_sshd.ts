/**
 * A real OpenSSH server as a test peer, on 127.0.0.1 and a free port, with its own host keys,
 * its own configuration and its own user, and an ssh-agent to go with it.
 *
 * - The user `vmshift-test` is created once (`useradd`, shell `nologin`) and keeps its password
 *   in `/var/lib/vmshift-test/password` (mode 0600), so that several test files may start
 *   servers at once; the password is set with `chpasswd` reading a file, never on a command
 *   line. The server only lets that user in, and only for SFTP (`ForceCommand internal-sftp`).
 * - The server runs as PID 1 of its own PID namespace (`unshare --pid --fork`), under
 *   `setpriv --pdeathsig`: when it dies, the kernel kills every per-connection child with it,
 *   and it dies if the test process dies.
 * - It is ready once its port answers with an `SSH-2.0-` banner.
 *
 * `startSshd(dir)` makes `dir` traversable (mode 0711) so that the test user can read the
 * authorized keys and the files the test serves; put served files in {@linkcode Sshd.dataDir}
 * (mode 0755) with mode 0644.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { run, type ServerOptions, startServer } from "../../src/process.ts";

/** The test user. */
export const TEST_USER = "vmshift-test";
const STATE_DIR = "/var/lib/vmshift-test";
const PASSWORD_STATE = `${STATE_DIR}/password`;
const LOCK = `${STATE_DIR}/lock`;

/** A running test sshd; dispose it to stop it and every process it started. */
export interface Sshd extends AsyncDisposable {
  /** Always `127.0.0.1`. */
  host: string;
  /** The port it listens on. */
  port: number;
  /** The test user. */
  user: string;
  /** The test user's password. */
  password: string;
  /** A file holding the password (mode 0600, no newline). */
  passwordFile: string;
  /** The client's private key (ed25519, no passphrase), authorized for the user. */
  clientKey: string;
  /** A known_hosts file with the server's ed25519, ecdsa and rsa keys, as `[host]:port`. */
  knownHosts: string;
  /** SHA256 fingerprint of the server's ed25519 key, as OpenSSH prints it. */
  hostKeyFingerprint: string;
  /** A known_hosts file with a *wrong* ed25519 key for the same `[host]:port`. */
  otherKnownHosts: string;
  /** A directory (mode 0755) whose files the test user can read. */
  dataDir: string;
  /** The host key files (private; `.pub` beside each), by type. */
  hostKeys: { ed25519: string; ecdsa: string; rsa: string };
  /** The host pid of the sshd listener (PID 1 of its namespace). */
  pid: number;
  /**
   * An `ssh://` URI for a path on this server.
   * @param path Absolute path.
   */
  uri(path: string): string;
}

/** Options for {@linkcode startSshd}. */
export interface SshdOptions {
  /** Aborts the start. */
  signal?: AbortSignal;
  /** Extra lines for sshd_config, read before the defaults (e.g. `PasswordAuthentication no`). */
  config?: string[];
}

/**
 * Starts a test sshd.
 *
 * @param dir A private scratch directory of the test; the server's files go in `dir/sshd`.
 * @param options Abort signal, extra configuration.
 * @returns The running server.
 */
export async function startSshd(dir: string, options: SshdOptions = {}): Promise<Sshd> {
  const password = await ensureTestUser(dir);
  await Deno.chmod(dir, 0o711);
  const home = join(dir, "sshd");
  const dataDir = join(dir, "data");
  await Deno.mkdir(home, { mode: 0o711 });
  await Deno.mkdir(dataDir, { mode: 0o755 });
  await Deno.chmod(dataDir, 0o755);
  await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 }); // privilege separation

  const hostKeys = {
    ed25519: join(home, "host_ed25519"),
    ecdsa: join(home, "host_ecdsa"),
    rsa: join(home, "host_rsa"),
  };
  const clientKey = join(home, "client_ed25519");
  const otherKey = join(home, "other_ed25519");
  await Promise.all([
    keygen(hostKeys.ed25519, ["-t", "ed25519"]),
    keygen(hostKeys.ecdsa, ["-t", "ecdsa", "-b", "256"]),
    keygen(hostKeys.rsa, ["-t", "rsa", "-b", "2048"]),
    keygen(clientKey, ["-t", "ed25519"]),
    keygen(otherKey, ["-t", "ed25519"]),
  ]);
  const authorizedKeys = join(home, "authorized_keys");
  await Deno.writeTextFile(authorizedKeys, await Deno.readTextFile(`${clientKey}.pub`), {
    mode: 0o644,
  });
  await Deno.chmod(authorizedKeys, 0o644);
  const passwordFile = join(home, "password");
  await Deno.writeTextFile(passwordFile, password, { mode: 0o600 });

  const host = "127.0.0.1";
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = freePort();
    const config = join(home, "sshd_config");
    await Deno.writeTextFile(
      config,
      [
        // sshd takes the first value it reads for a keyword: the test's lines come first.
        ...(options.config ?? []),
        `Port ${port}`,
        `ListenAddress ${host}`,
        `HostKey ${hostKeys.ed25519}`,
        `HostKey ${hostKeys.ecdsa}`,
        `HostKey ${hostKeys.rsa}`,
        `PidFile ${join(home, "sshd.pid")}`,
        `AuthorizedKeysFile ${authorizedKeys}`,
        `StrictModes no`,
        `UsePAM no`,
        `PasswordAuthentication yes`,
        `KbdInteractiveAuthentication no`,
        `PubkeyAuthentication yes`,
        `PermitRootLogin no`,
        `AllowUsers ${TEST_USER}`,
        `AllowTcpForwarding no`,
        `X11Forwarding no`,
        `PrintMotd no`,
        `Subsystem sftp internal-sftp`,
        `ForceCommand internal-sftp`,
        `MaxStartups 100`,
        "",
      ].join("\n"),
    );
    let peer: Namespaced;
    try {
      peer = await startNamespaced(["/usr/sbin/sshd", "-D", "-e", "-f", config], {
        socket: join(home, "no-socket"), // sshd listens on TCP; nothing to remove
        ready: () => answersSsh(host, port),
        name: "sshd (test peer)",
        timeoutMs: 15_000,
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (e) {
      lastError = e;
      if (/Address already in use|Bind to port/.test(String(e))) continue;
      throw e;
    }

    const lines = await Promise.all(
      Object.values(hostKeys).map(async (k) => {
        const [type, b64] = (await Deno.readTextFile(`${k}.pub`)).trim().split(/\s+/);
        return `[${host}]:${port} ${type} ${b64}`;
      }),
    );
    const knownHosts = join(home, "known_hosts");
    await Deno.writeTextFile(knownHosts, lines.join("\n") + "\n");
    const [, otherB64] = (await Deno.readTextFile(`${otherKey}.pub`)).trim().split(/\s+/);
    const otherKnownHosts = join(home, "other_known_hosts");
    await Deno.writeTextFile(otherKnownHosts, `[${host}]:${port} ssh-ed25519 ${otherB64}\n`);
    const [, edB64] = (await Deno.readTextFile(`${hostKeys.ed25519}.pub`)).trim().split(/\s+/);
    const hostKeyFingerprint = "SHA256:" +
      createHash("sha256").update(Buffer.from(edB64!, "base64")).digest("base64").replace(
        /=+$/,
        "",
      );

    return {
      host,
      port,
      user: TEST_USER,
      password,
      passwordFile,
      clientKey,
      knownHosts,
      hostKeyFingerprint,
      otherKnownHosts,
      dataDir,
      hostKeys,
      pid: peer.pid,
      uri: (path: string) => `ssh://${TEST_USER}@${host}:${port}${path}`,
      [Symbol.asyncDispose]: () => peer.stop(),
    };
  }
  throw lastError;
}

/** A running ssh-agent; dispose it to stop it. */
export interface SshAgent extends AsyncDisposable {
  /** Its socket, for `SSH_AUTH_SOCK`. */
  socket: string;
}

/**
 * Starts an ssh-agent on a socket in `dir` and adds keys to it.
 *
 * @param dir A private scratch directory.
 * @param keys Private key files without passphrase.
 * @returns The agent.
 */
export async function startSshAgent(dir: string, keys: readonly string[]): Promise<SshAgent> {
  const socket = join(dir, "agent.sock");
  // ssh-agent is set-group-id on Debian, so the kernel drops the parent-death signal when it
  // starts: it runs under a shell that keeps it, as PID 1 of a namespace that dies with it.
  const agent = await startNamespaced(
    ["sh", "-c", 'ssh-agent -D -a "$1" >/dev/null & wait', "sh", socket],
    { socket, name: "ssh-agent (test)" },
  );
  try {
    for (const key of keys) await run("ssh-add", ["-q", key], { env: { SSH_AUTH_SOCK: socket } });
  } catch (e) {
    await agent.stop();
    throw e;
  }
  return {
    socket,
    [Symbol.asyncDispose]: async () => {
      await agent.stop();
      await Deno.remove(socket).catch(() => {});
    },
  };
}

/**
 * Pids of processes whose command line mentions a path (servers started on files in it).
 * @param path The path.
 * @returns Pids.
 */
export async function pidsMentioning(path: string): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`);
      if (cmd.includes(path)) out.push(Number(e.name));
    } catch { /* gone */ }
  }
  return out;
}

/** A program running as PID 1 of its own PID namespace. */
interface Namespaced {
  /** Host pid of the program (PID 1 of the namespace). */
  pid: number;
  /** Kills the program and so every process of the namespace, and waits until all are gone. */
  stop(): Promise<void>;
}

/**
 * Starts a program as PID 1 of a new PID namespace (`unshare --pid --fork --kill-child`),
 * under `setpriv --pdeathsig` (process.ts `dieWithParent`): when the test process dies,
 * unshare dies, the kernel kills the program, and with it every process it started, whatever
 * session or process group they moved to.
 */
async function startNamespaced(
  argv: string[],
  options: Omit<ServerOptions, "dieWithParent">,
): Promise<Namespaced> {
  const server = await startServer(
    "unshare",
    ["--pid", "--fork", "--kill-child=SIGKILL", "--", ...argv],
    { ...options, dieWithParent: true },
  );
  let pid: number;
  let namespace: string;
  try {
    pid = await childOf(server.pid);
    namespace = await Deno.readLink(`/proc/${pid}/ns/pid`);
  } catch (e) {
    await server.stop();
    throw e;
  }
  return {
    pid,
    async stop() {
      // unshare ignores SIGTERM while it waits; killing PID 1 of the namespace ends it all.
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* already gone */ }
      await server.stop();
      await waitNamespaceEmpty(namespace);
    },
  };
}

async function ensureTestUser(dir: string): Promise<string> {
  // One test file at a time creates the user and its password; the others wait and read it.
  await Deno.mkdir(STATE_DIR, { recursive: true, mode: 0o700 });
  using lock = await Deno.open(LOCK, { create: true, write: true, mode: 0o600 });
  await lock.lock(true);
  try {
    let exists = true;
    await run("id", ["-u", TEST_USER]).catch(() => (exists = false));
    if (!exists) {
      await run("useradd", [
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "vmshift test peer (SFTP only)",
        TEST_USER,
      ]);
    }
    let password: string | undefined;
    if (exists) password = await Deno.readTextFile(PASSWORD_STATE).catch(() => undefined);
    if (!password) {
      password = Buffer.from(crypto.getRandomValues(new Uint8Array(18))).toString("base64url");
      const input = join(dir, "chpasswd.in");
      await Deno.writeTextFile(input, `${TEST_USER}:${password}\n`, { mode: 0o600 });
      try {
        await run("sh", ["-c", 'exec chpasswd < "$1"', "sh", input], {
          what: `Cannot set the password of "${TEST_USER}"`,
        });
      } finally {
        await Deno.remove(input);
      }
      await Deno.writeTextFile(PASSWORD_STATE, password, { mode: 0o600 });
    }
    return password;
  } finally {
    await lock.unlock();
  }
}

async function keygen(file: string, args: string[]): Promise<void> {
  await run("ssh-keygen", ["-q", ...args, "-N", "", "-C", "", "-f", file]);
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** True once the port answers with an SSH-2.0 banner. */
async function answersSsh(host: string, port: number): Promise<boolean> {
  const conn = await Deno.connect({ hostname: host, port });
  try {
    const buf = new Uint8Array(256);
    let text = "";
    const deadline = setTimeout(() => conn.close(), 2000);
    try {
      while (!text.includes("\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    } finally {
      clearTimeout(deadline);
    }
    return text.startsWith("SSH-2.0-");
  } finally {
    try {
      conn.close();
    } catch { /* closed by the deadline */ }
  }
}

/** The pid of a process's only child (unshare's forked sshd). */
async function childOf(pid: number): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const children = await Deno.readTextFile(`/proc/${pid}/task/${pid}/children`).catch(() => "");
    const first = children.trim().split(/\s+/)[0];
    if (first) return Number(first);
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`Cannot find the sshd started by unshare (pid ${pid})`);
}

async function waitNamespaceEmpty(namespace: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (true) {
    const left: number[] = [];
    for await (const e of Deno.readDir("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      const ns = await Deno.readLink(`/proc/${e.name}/ns/pid`).catch(() => "");
      if (ns === namespace) left.push(Number(e.name));
    }
    if (left.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`sshd left processes behind: ${left.join(" ")}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
