/**
 * The live status page of `vmshift schedule --listen`, in a real headless Chromium (Debian's
 * `chromium`, driven by playwright-core): it loads, updates while migrations run, and shows a
 * failure. The runs are stand-ins for vmshift (tests/plan/_fake_vmshift.ts) that take a few
 * seconds, report progress like vmshift, and fail on demand.
 *
 * @module
 */

import { chromium } from "playwright-core";
import { assert, assertEquals } from "../_assert.ts";
import { MAIN, processesMentioning, readUntil, Sandbox } from "./_harness.ts";

const FAKE = new URL("../plan/_fake_vmshift.ts", import.meta.url).pathname;
const CHROMIUM = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

async function writePlan(sb: Sandbox): Promise<string> {
  const plan = `${sb.work}/plan.yaml`;
  await Deno.writeTextFile(
    plan,
    `defaults: { input: { mode: disk, args: [x.img] }, output: { mode: "null" }, convert: false }
retry: { attempts: 1 }
limits: { total: 2 }
vms: [{ name: alpha }, { name: broken }, { name: gamma }]
`,
  );
  return plan;
}

function startScheduler(sb: Sandbox, args: string[], ms: number): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", ...args],
    env: {
      ...sb.env,
      VMSHIFT_CHILD: `${Deno.execPath()} run -A ${FAKE}`,
      FAKE_LOG: `${sb.work}/runs.log`,
      FAKE_MS: String(ms),
      FAKE_FAIL: "broken",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test({
  name: "the status page loads in Chromium, updates while a migration runs, and shows a failure",
  ignore: !haveChromium,
  async fn() {
    await using sb = await Sandbox.create();
    const plan = await writePlan(sb);
    // Runs long enough that alpha still runs once Chromium is up, even on a loaded machine
    // (CI once took over 10 s to get there with 6 s runs).
    const child = startScheduler(sb, [plan, "--listen", "127.0.0.1:0"], 20_000);
    const stderr = new Response(child.stderr).text();
    const seen = await readUntil(child, (l) => l.includes("Status page: "));
    const url = seen.lines.at(-1)!.match(/(http:\/\/127\.0\.0\.1:\d+\/)/)![1]!;
    const profile = `${sb.work}/chromium-profile`;
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox"],
    });
    try {
      const page = await browser.newPage();
      await page.goto(url);
      const row = (vm: string) => page.locator(`tr[data-vm="${vm}"]`);
      await row("alpha").locator("td", { hasText: "running" }).waitFor({ timeout: 60_000 });
      // The page updates on its own: alpha's progress grows while it runs.
      const progress = async () =>
        Number((await row("alpha").locator("td.progress").textContent())!.trim().replace("%", ""));
      const first = await progress();
      let later = first;
      for (let i = 0; i < 40 && later <= first; i++) {
        await page.waitForTimeout(250);
        later = await progress();
      }
      assert(later > first, `alpha's progress stayed at ${first}%`);
      // Rate and ETA of a running VM are shown.
      assert(/\/s$/.test((await row("alpha").locator("td").nth(3).textContent())!));
      // The failure, with vmshift's reason.
      await page.locator('tr[data-vm="broken"].failed').waitFor({ timeout: 60_000 });
      const reason = await row("broken").locator("td.reason").textContent();
      assert(reason!.includes("the target refused the write"), reason!);
      // The chart draws the throughput.
      await page.waitForFunction(
        "(document.getElementById('line').getAttribute('points') || '').split(' ').length >= 2",
      );
      assert((await page.locator("#summary").textContent())!.includes("1 failed"));
    } finally {
      await browser.close();
    }
    const status = await child.status;
    await seen.rest;
    const err = await stderr;
    assertEquals(status.code, 1, err);
    assertEquals(await processesMentioning(profile), [], "Chromium left running");
    await sb.assertNothingLeft();
  },
});

Deno.test("the status page is read-only, and needs a token when given one or bound elsewhere", async () => {
  await using sb = await Sandbox.create();
  const plan = await writePlan(sb);
  // Bound to all interfaces without a token: refused before anything runs.
  const open = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "schedule", plan, "--listen", "0.0.0.0:0"],
    env: sb.env,
    stdin: "null",
  }).output();
  assertEquals(open.code, 2);
  assert(new TextDecoder().decode(open.stderr).includes("needs a token"));

  const tokenFile = `${sb.work}/token`;
  await Deno.writeTextFile(tokenFile, "s3cret-token\n");
  const child = startScheduler(sb, [
    plan,
    "--listen",
    "127.0.0.1:0",
    "--listen-token-file",
    tokenFile,
  ], 1500);
  const stderr = new Response(child.stderr).text();
  const seen = await readUntil(child, (l) => l.includes("Status page: "));
  const line = seen.lines.at(-1)!;
  assert(!line.includes("s3cret"), "the token is printed");
  const base = line.match(/(http:\/\/127\.0\.0\.1:\d+\/)/)![1]!;
  const get = async (path: string, init?: RequestInit) => {
    const r = await fetch(base + path, init);
    await r.body?.cancel();
    return r.status;
  };
  assertEquals(await get("api/status"), 401);
  assertEquals(await get("api/status?token=wrong"), 401);
  assertEquals(await get("api/status?token=s3cret-token"), 200);
  assertEquals(await get("", { headers: { authorization: "Bearer s3cret-token" } }), 200);
  assertEquals(await get("api/status?token=s3cret-token", { method: "POST" }), 405);
  assertEquals(await get("api/status?token=s3cret-token", { method: "DELETE" }), 405);
  await child.status;
  await seen.rest;
  await stderr;
  await sb.assertNothingLeft();
});
