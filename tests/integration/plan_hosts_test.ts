/**
 * Several schedulers sharing one plan through a real PostgreSQL server on 127.0.0.1: one is
 * killed in the middle of a migration, and every VM still ends migrated exactly once.
 *
 * The runs are stand-ins for vmshift (tests/plan/_fake_vmshift.ts) that log what they do, so
 * that "exactly once" can be counted; like vmshift, they stop when their scheduler dies.
 * `VMSHIFT_HOSTS_REPEAT=20` repeats the scenario (the issue's target).
 *
 * @module
 */

import { assert, assertEquals } from "../_assert.ts";
import { MAIN, processesMentioning, readUntil, Sandbox } from "./_harness.ts";
import { TestPostgres } from "./_postgres.ts";

const FAKE = new URL("../plan/_fake_vmshift.ts", import.meta.url).pathname;
const REPEAT = Number(Deno.env.get("VMSHIFT_HOSTS_REPEAT") ?? "1");
const VMS = 12;

Deno.test({
  name: "three schedulers share a plan through PostgreSQL; one killed mid-run; each VM done once",
  ignore: TestPostgres.binDir() === undefined,
  async fn() {
    await using pg = await TestPostgres.start();
    await using sb = await Sandbox.create();
    const plan = `${sb.work}/plan.yaml`;
    // This test's children, told apart from those of tests running beside it by their disk.
    const disk = `${sb.work}/x.img`;
    await Deno.writeTextFile(
      plan,
      `defaults: { input: { mode: disk, args: ["${disk}"] }, output: { mode: "null" }, convert: false }
limits: { total: 2, perSourceHost: 3 }
vms:
${
        Array.from({ length: VMS }, (_, i) =>
          `  - { name: vm${i + 1}, sourceHost: esx${i % 2}${i === 0 ? ", priority: 9" : ""} }`)
          .join("\n")
      }
`,
    );
    for (let rep = 1; rep <= REPEAT; rep++) {
      const log = `${sb.work}/runs-${rep}.log`;
      const args = [
        "run",
        "-A",
        MAIN,
        "schedule",
        plan,
        "--state",
        pg.url,
        "--plan-id",
        `plan-${rep}`,
        "--lease",
        "3s",
      ];
      const env = {
        ...sb.env,
        VMSHIFT_CHILD: `${Deno.execPath()} run -A ${FAKE}`,
        FAKE_LOG: log,
        FAKE_MS: "400",
      };
      const spawn = () =>
        new Deno.Command(Deno.execPath(), {
          args,
          env,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        })
          .spawn();
      const victim = spawn();
      const seen = await readUntil(victim, (l) => l.includes(": started"));
      const others = [spawn(), spawn()];
      // Kill the first scheduler while its run goes on, without a chance to clean up.
      await new Promise((r) => setTimeout(r, 150));
      victim.kill("SIGKILL");
      await victim.status;
      await seen.rest;
      const outs = await Promise.all(others.map((c) => c.output()));
      const dec = new TextDecoder();
      for (const o of outs) assertEquals(o.code, 0, dec.decode(o.stdout) + dec.decode(o.stderr));
      const killedVm = seen.lines.find((l) => l.includes(": started"))!.match(
        /\] (\S+): started/,
      )![1]!;
      const lines = (await Deno.readTextFile(log)).trim().split("\n");
      for (let i = 1; i <= VMS; i++) {
        assertEquals(
          lines.filter((l) => l === `done vm${i}`).length,
          1,
          `repetition ${rep}: vm${i} done ${
            lines.filter((l) => l === `done vm${i}`).length
          } times\n${lines.join("\n")}\n${outs.map((o) => dec.decode(o.stdout)).join("\n---\n")}`,
        );
      }
      // The killed scheduler's run stopped with it, and its VM was reclaimed by another host.
      assert(lines.includes(`orphaned ${killedVm}`), lines.join("\n"));
      assert(
        outs.some((o) => dec.decode(o.stdout).includes(`${killedVm}: reclaimed from`)),
        "nobody reclaimed the killed scheduler's VM",
      );
      const st = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          MAIN,
          "status",
          plan,
          "--state",
          pg.url,
          "--plan-id",
          `plan-${rep}`,
          "--machine-readable",
        ],
        env: sb.env,
      }).output();
      const vms = JSON.parse(dec.decode(st.stdout)).vms as Array<
        { name: string; state: string; attempts: number }
      >;
      assert(vms.every((v) => v.state === "done"), JSON.stringify(vms));
      assertEquals(vms.find((v) => v.name === killedVm)!.attempts, 2);
      assertEquals(await processesMentioning(disk), []);
    }
    await sb.assertNothingLeft();
  },
});
