import { assert, assertEquals } from "../_assert.ts";
import { assertSameContent, MAIN, processesMentioning, readUntil, Sandbox } from "./_harness.ts";
import { makeTestImage } from "../../scripts/make_test_image.ts";
import { startOvirt } from "../servers/mod.ts";

const FAKE = new URL("../plan/_fake_vmshift.ts", import.meta.url).pathname;

Deno.test("plan validate: an invalid plan exits 1 and names each VM and field", async () => {
  await using sb = await Sandbox.create();
  const plan = `${sb.work}/plan.yaml`;
  await Deno.writeTextFile(
    plan,
    `vms:
  - { name: db, input: { mode: disk, args: [a] }, output: { mode: local } }
  - { name: app, input: { mode: disk, args: [b] }, output: { mode: "null" }, after: [dbx] }
`,
  );
  const r = await sb.run(["plan", "validate", plan]);
  assertEquals(r.code, 1, r.stderr);
  assert(
    r.stderr.includes(`vm "db": output: -o local needs the output directory: -os DIR`),
    r.stderr,
  );
  assert(r.stderr.includes(`vm "app": after: no VM named "dbx" in the plan`), r.stderr);
  const u = await sb.run(["plan", "check", plan]);
  assertEquals(u.code, 2);
  assert(u.stderr.includes("needs validate or show"), u.stderr);
  // A migration's command line is untouched: "status" after -i is a disk file.
  const m = await sb.run(["-i", "disk", "status", "-o", "null"]);
  assertEquals(m.code, 1);
  assert(m.stderr.includes('status": no such file'), m.stderr);
  await sb.assertNothingLeft();
});

Deno.test("schedule migrates every VM of a plan with real vmshift runs; status shows them done", async () => {
  await using sb = await Sandbox.create();
  const out = `${sb.work}/out`;
  await Deno.mkdir(out);
  const vms = ["db", "app", "web"];
  for (const [i, n] of vms.entries()) {
    await makeTestImage(`${sb.work}/${n}.img`, {
      format: "raw",
      virtualSize: 16 << 20,
      dataBytes: 1 << 20,
      seed: i + 1,
    });
  }
  const plan = `${sb.work}/plan.json`;
  await Deno.writeTextFile(
    plan,
    JSON.stringify({
      defaults: {
        input: { mode: "disk" },
        output: { mode: "local", storage: out },
        convert: false,
      },
      limits: { total: 2 },
      vms: vms.map((n) => ({
        name: n,
        input: { args: [`${sb.work}/${n}.img`] },
        ...(n === "app" ? { after: "db" } : {}),
      })),
    }),
  );
  const r = await sb.run(["schedule", plan]);
  assertEquals(r.code, 0, r.stdout + r.stderr);
  assert(r.stdout.includes("3 done, 0 failed, 0 pending"), r.stdout);
  for (const n of vms) await assertSameContent(`${sb.work}/${n}.img`, `${out}/${n}-sda`);
  const s = await sb.run(["status", plan, "--machine-readable"]);
  assertEquals(s.code, 0, s.stderr);
  const st = JSON.parse(s.stdout);
  assertEquals(
    st.vms.map((
      v: { name: string; state: string; attempts: number },
    ) => [v.name, v.state, v.attempts]),
    [
      ["db", "done", 1],
      ["app", "done", 1],
      ["web", "done", 1],
    ],
  );
  assertEquals(st.vms[0].virtual_size, 16 << 20);
  // Scheduling a finished plan again migrates nothing twice.
  const again = await sb.run(["schedule", plan]);
  assertEquals(again.code, 0);
  assert(!again.stdout.includes("started"), again.stdout);
  const table = await sb.run(["status", plan]);
  assert(/^db\s+done\s+1\s+16\.0 MiB/m.test(table.stdout), table.stdout);
  await sb.assertNothingLeft();
});

Deno.test("a failing VM fails with vmshift's reason and a non-zero exit; the others go on", async () => {
  await using sb = await Sandbox.create();
  await makeTestImage(`${sb.work}/ok.img`, {
    format: "raw",
    virtualSize: 16 << 20,
    dataBytes: 1 << 20,
  });
  const plan = `${sb.work}/plan.yaml`;
  await Deno.writeTextFile(
    plan,
    `defaults: { output: { mode: "null" }, convert: false }
retry: { attempts: 2, backoff: 0.1 }
vms:
  - { name: gone, input: { mode: disk, args: [${sb.work}/missing.img] } }
  - { name: ok, input: { mode: disk, args: [${sb.work}/ok.img] } }
`,
  );
  const r = await sb.run(["schedule", plan]);
  assertEquals(r.code, 1, r.stdout + r.stderr);
  assert(r.stdout.includes("1 done, 1 failed, 0 pending"), r.stdout);
  const st = JSON.parse((await sb.run(["status", plan, "--machine-readable"])).stdout);
  const gone = st.vms.find((v: { name: string }) => v.name === "gone");
  assertEquals([gone.state, gone.attempts], ["failed", 2]);
  assert(gone.reason.includes("missing.img"), gone.reason);
  const rep = await sb.run(["report", plan, "--output", `${sb.work}/report.html`]);
  assertEquals(rep.code, 0, rep.stderr);
  const html = await Deno.readTextFile(`${sb.work}/report.html`);
  assert(html.includes("1 done, 1 failed, 0 pending"), html);
  assert(html.includes("16.0 MiB") && html.includes("missing.img"), html);
  await sb.assertNothingLeft();
});

Deno.test("a scheduler killed mid-migration: the next one stops the orphan, retries it, never does a VM twice", async () => {
  await using sb = await Sandbox.create();
  const log = `${sb.work}/runs.log`;
  const plan = `${sb.work}/plan.yaml`;
  // This test's children, told apart from those of tests running beside it by their disk.
  const disk = `${sb.work}/x.img`;
  await Deno.writeTextFile(
    plan,
    `defaults: { input: { mode: disk, args: ["${disk}"] }, output: { mode: "null" }, convert: false }
limits: { total: 2 }
vms: [{ name: a }, { name: b }, { name: c }]
`,
  );
  const env = (ms: number) => ({
    ...sb.env,
    VMSHIFT_CHILD: `${Deno.execPath()} run -A ${FAKE}`,
    FAKE_LOG: log,
    FAKE_MS: String(ms),
    FAKE_OUTLIVE: "1",
  });
  const first = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", plan],
    env: env(60_000),
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const seen = await readUntil(first, (l) => l.includes("b: started"));
  // A second scheduler on the same state refuses while the first lives.
  const second = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", plan],
    env: env(100),
    stdin: "null",
  }).output();
  assertEquals(second.code, 1);
  assert(new TextDecoder().decode(second.stderr).includes("Another scheduler"));
  // Wait until both children run, then kill the scheduler without letting it clean up.
  for (
    let i = 0;
    i < 100 && (await readLog(log)).filter((l) => l.startsWith("start")).length < 2;
    i++
  ) {
    await new Promise((r) => setTimeout(r, 50));
  }
  first.kill("SIGKILL");
  await first.status;
  await seen.rest;
  const orphans = await processesMentioning(disk);
  assertEquals(orphans.length, 2, "the children outlive a killed scheduler");

  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", plan],
    env: env(100),
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(r.stdout);
  assertEquals(r.code, 0, stdout);
  assert(stdout.includes("stopped the run a previous scheduler left"), stdout);
  const lines = await readLog(log);
  for (const n of ["a", "b"]) assert(lines.includes(`stopped ${n}`), lines.join("\n"));
  for (const n of ["a", "b", "c"]) {
    assertEquals(lines.filter((l) => l === `done ${n}`).length, 1, `${n}: ${lines.join(", ")}`);
  }
  const st = JSON.parse((await sb.run(["status", plan, "--machine-readable"])).stdout);
  assertEquals(st.vms.map((v: { attempts: number; state: string }) => [v.state, v.attempts]), [
    ["done", 2],
    ["done", 2],
    ["done", 1],
  ]);
  assertEquals(await processesMentioning(disk), []);
  await sb.assertNothingLeft();
});

async function readLog(path: string): Promise<string[]> {
  try {
    return (await Deno.readTextFile(path)).trim().split("\n");
  } catch {
    return [];
  }
}

Deno.test("a window opens with Deno.cron and its end stops the run, which waits for the next window", async () => {
  // Windows open at every minute for 15 s. Start after second 20, so that no window is open
  // and only Deno.cron firing at the next minute can start the run (this takes up to a minute).
  const sec = new Date().getUTCSeconds();
  if (sec < 20) await new Promise((r) => setTimeout(r, (20 - sec) * 1000));
  await using sb = await Sandbox.create();
  const log = `${sb.work}/runs.log`;
  const plan = `${sb.work}/plan.yaml`;
  await Deno.writeTextFile(
    plan,
    `defaults: { input: { mode: disk, args: [x.img] }, output: { mode: "null" }, convert: false }
windows: [{ name: every-minute, cron: "* * * * *", duration: 15s }]
vms: [{ name: slow }]
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", plan],
    env: {
      ...sb.env,
      VMSHIFT_CHILD: `${Deno.execPath()} run -A ${FAKE}`,
      FAKE_LOG: log,
      FAKE_MS: "600000",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const seen = await readUntil(child, (l) => l.includes("slow: stopped:"));
  const text = seen.lines.join("\n");
  assert(text.includes("No window is open; the next opens"), text);
  const started = seen.lines.find((l) => l.includes("slow: started"))!;
  const stopped = seen.lines.at(-1)!;
  // Started at a minute's start (by the cron), stopped at its 15th second.
  assert(/\[\d\d:\d\d:0[0-2]\] slow: started/.test(started), started);
  assert(/\[\d\d:\d\d:1[5-7]\] slow: stopped: the window closed/.test(stopped), stopped);
  assertEquals(await readLog(log), ["start slow", "stopped slow"]);
  const st = JSON.parse((await sb.run(["status", plan, "--machine-readable"])).stdout);
  assertEquals([st.vms[0].state, st.vms[0].attempts, st.vms[0].failures], ["pending", 1, 0]);
  assert(st.vms[0].reason.startsWith("the window closed; cleaned up, left for the next window"));
  child.kill("SIGTERM");
  assertEquals((await child.status).code, 143);
  await seen.rest;
  await sb.assertNothingLeft();
});

Deno.test("a plan into the oVirt test servers with -o rhv: each VM created once, a failing one leaves nothing", async () => {
  await using sb = await Sandbox.create();
  await using ovirt = await startOvirt({ dir: sb.work, existingVms: ["taken"] });
  const names = ["db", "app", "web", "taken"];
  for (const [i, n] of names.entries()) {
    await makeTestImage(`${sb.work}/${n}.qcow2`, {
      format: "qcow2",
      virtualSize: 16 << 20,
      dataBytes: 1 << 20,
      seed: i + 7,
    });
  }
  const plan = `${sb.work}/plan.yaml`;
  await Deno.writeTextFile(
    plan,
    `defaults:
  input: { mode: disk }
  output:
    mode: rhv
    conn: ${ovirt.engineUrl}
    passwordFile: ${ovirt.passwordFile}
    storage: data
    options: { rhv-cafile: ${ovirt.caFile}, rhv-cluster: Default }
  convert: false
limits: { total: 3, perStorageDomain: 2 }
retry: { attempts: 1 }
vms:
${names.map((n) => `  - { name: ${n}, input: { args: [${sb.work}/${n}.qcow2] } }`).join("\n")}
`,
  );
  const r = await sb.run(["schedule", plan]);
  assertEquals(r.code, 1, r.stdout + r.stderr);
  assert(r.stdout.includes("3 done, 1 failed, 0 pending"), r.stdout);
  for (const n of ["db", "app", "web"]) {
    assertEquals(ovirt.vms().filter((v) => v.name === n).length, 1, `${n} on the engine`);
  }
  // One disk per migrated VM, with the source's content; none left of the failed one.
  const disks = ovirt.disks();
  assertEquals(disks.length, 3, JSON.stringify(disks.map((d) => d.name)));
  for (const d of disks) {
    const vm = names.find((n) => d.name.startsWith(n))!;
    await assertSameContent(`${sb.work}/${vm}.qcow2`, d.path);
  }
  const st = JSON.parse((await sb.run(["status", plan, "--machine-readable"])).stdout);
  const taken = st.vms.find((v: { name: string }) => v.name === "taken");
  assertEquals(taken.state, "failed");
  assert(/taken/.test(taken.reason) && /exist/i.test(taken.reason), taken.reason);
  await sb.assertNothingLeft();
});
