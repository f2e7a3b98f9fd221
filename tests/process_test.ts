import { assert, assertEquals, assertRejects, assertStringIncludes } from "./_assert.ts";
import {
  CommandError,
  killAll,
  liveCount,
  run,
  startServer,
  takeDeadServers,
} from "../src/process.ts";
import { TempDir } from "../src/tmpdir.ts";
import { Nbdkit } from "../src/nbdkit.ts";

Deno.test("run returns stdout", async () => {
  assertEquals(await run("sh", ["-c", "echo out; echo err >&2"]), "out\n");
});

Deno.test("run fails with the program, exit code and stderr in the message", async () => {
  const e = await assertRejects(
    () => run("sh", ["-c", "echo 'bad thing happened' >&2; exit 3"], { what: "Cannot frob" }),
    CommandError,
  );
  assertEquals(e.code, 3);
  assertEquals(e.message, "Cannot frob: sh failed with exit code 3: bad thing happened");
});

Deno.test("a program that is not installed is named, with what to do", async () => {
  await assertRejects(
    () => run("vmshift-no-such-program", []),
    Error,
    'Cannot run "vmshift-no-such-program": not installed (run scripts/setup.sh)',
  );
});

Deno.test("run stops the program when aborted", async () => {
  const ac = new AbortController();
  const p = run("sleep", ["30"], { signal: ac.signal });
  setTimeout(() => ac.abort(new Error("enough")), 50);
  await assertRejects(() => p, Error, "enough");
  assertEquals(liveCount(), 0);
});

Deno.test("a server that exits before it is ready: its stderr is in the error", async () => {
  await using dir = await TempDir.create();
  await assertRejects(
    () =>
      startServer("sh", ["-c", "echo 'no such export' >&2; exit 1"], {
        socket: dir.join("x.sock"),
        name: "fake-server",
      }),
    Error,
    "Cannot start fake-server exited with code 1: no such export",
  );
  assertEquals(await takeDeadServers(), [], "already reported");
  assertEquals(liveCount(), 0);
});

Deno.test("a server that never gets ready is stopped after the timeout", async () => {
  await using dir = await TempDir.create();
  await assertRejects(
    () =>
      startServer("sleep", ["30"], {
        socket: dir.join("never.sock"),
        name: "sleepy",
        timeoutMs: 200,
      }),
    Error,
    "Cannot start sleepy: not ready after 200 ms",
  );
  assertEquals(liveCount(), 0);
});

Deno.test("disposing a server stops it and removes its socket", async () => {
  await using dir = await TempDir.create();
  const socket = dir.join("k.sock");
  let pid: number;
  {
    await using server = await new Nbdkit("memory").addArg("size", "1M").serve(socket);
    pid = server.pid;
    assert((await Deno.stat(socket)).isSocket);
  }
  await assertRejects(() => Deno.stat(socket), Deno.errors.NotFound);
  await assertRejects(() => Deno.stat(`/proc/${pid}`), Deno.errors.NotFound);
});

Deno.test("a server that dies is reported once, with how it died", async () => {
  await using dir = await TempDir.create();
  await using server = await new Nbdkit("memory").addArg("size", "1M").serve(dir.join("d.sock"), {
    name: "nbdkit (victim)",
  });
  Deno.kill(server.pid, "SIGKILL");
  await server.status;
  assert(server.died);
  const dead = await takeDeadServers();
  assertEquals(dead.length, 1);
  assertStringIncludes(dead[0]!, "nbdkit (victim) was killed by SIGKILL");
  assertEquals(await takeDeadServers(), []);
});

Deno.test("killAll stops every running child", async () => {
  await using dir = await TempDir.create();
  const server = await new Nbdkit("memory").addArg("size", "1M").serve(dir.join("a.sock"));
  killAll();
  await server.status;
  await server.stop();
  assertEquals(liveCount(), 0);
});

Deno.test("temporary directories of dead runs are swept; live ones are kept", async () => {
  const base = Deno.env.get("TMPDIR") || "/tmp";
  const stale = `${base}/vmshift-999999999-test`;
  await Deno.mkdir(stale, { recursive: true });
  const mine = `${base}/vmshift-${Deno.pid}-keep`;
  await Deno.mkdir(mine, { recursive: true });
  try {
    await using _dir = await TempDir.create();
    await assertRejects(() => Deno.stat(stale), Deno.errors.NotFound);
    assert((await Deno.stat(mine)).isDirectory);
  } finally {
    await Deno.remove(mine, { recursive: true });
  }
});
