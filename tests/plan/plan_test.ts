import Ajv2020 from "ajv/dist/2020.js";
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { childArgs, parsePlan, PlanError, type PlanIssue } from "../../src/plan/plan.ts";
import { openWindowStart, parseCron } from "../../src/plan/cron.ts";

// The engine password and CA files the rhv output reads when its options are checked.
const FILES = Deno.makeTempDirSync({ prefix: "vmshift-plan-test-" });
Deno.writeTextFileSync(`${FILES}/pw`, "secret\n");
Deno.writeTextFileSync(
  `${FILES}/ca.pem`,
  "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
);
globalThis.addEventListener("unload", () => Deno.removeSync(FILES, { recursive: true }));

const GOOD = `
version: 1
defaults:
  input: { mode: disk }
  output:
    mode: rhv
    conn: https://engine.example/ovirt-engine/api
    passwordFile: ${FILES}/pw
    storage: data
    options: { rhv-cafile: ${FILES}/ca.pem }
  convert: false
windows:
  - { name: night, cron: "0 22 * * 1-5", duration: 6h, bandwidth: 100M }
limits: { total: 4, perSourceHost: 2, perStorageDomain: 3 }
retry: { attempts: 2, backoff: 10s }
assumedRate: 50M
vms:
  - name: db
    input: { args: [db.img] }
    priority: 10
    size: 2G
  - name: app
    input: { mode: vmx, transport: ssh, args: ["ssh://root@esx1.example/vmfs/app/app.vmx"] }
    output: { options: { rhv-cluster: Prod } }
    after: db
`;

function issuesOf(text: string, file = "p.yaml"): PlanIssue[] {
  try {
    parsePlan(text, file);
  } catch (e) {
    if (e instanceof PlanError) return e.issues;
    throw e;
  }
  throw new Error("the plan was accepted");
}

Deno.test("a plan applies defaults; a VM's options merge key by key", () => {
  const plan = parsePlan(GOOD, "p.yaml");
  assertEquals(plan.limits, { total: 4, perSourceHost: 2, perStorageDomain: 3 });
  assertEquals(plan.retry, { attempts: 2, backoffMs: 10_000, maxBackoffMs: 600_000 });
  assertEquals(plan.assumedRate, 50 * 2 ** 20);
  assertEquals(plan.windows[0]!.durationMs, 6 * 3600_000);
  assertEquals(plan.windows[0]!.bandwidth, 100 * 2 ** 20);
  const [db, app] = plan.vms;
  assertEquals(db!.size, 2 * 2 ** 30);
  assertEquals(db!.priority, 10);
  assertEquals(db!.output.storage, "data");
  assertEquals(app!.output.options, { "rhv-cafile": `${FILES}/ca.pem`, "rhv-cluster": "Prod" });
  assertEquals(app!.after, ["db"]);
  assertEquals(app!.sourceHost, "esx1.example");
  assertEquals(
    childArgs(app!).join(" "),
    `-i vmx -it ssh -o rhv -oc https://engine.example/ovirt-engine/api -os data -op ${FILES}/pw ` +
      `-oo rhv-cafile=${FILES}/ca.pem -oo rhv-cluster=Prod -on app --no-convert ` +
      "-- ssh://root@esx1.example/vmfs/app/app.vmx",
  );
});

Deno.test("JSON plans are read as JSON", () => {
  const plan = parsePlan(
    JSON.stringify({
      vms: [{ name: "x", input: { mode: "disk", args: ["x"] }, output: { mode: "null" } }],
    }),
    "p.json",
  );
  assertEquals(plan.vms[0]!.name, "x");
  assertEquals(issuesOf("{ vms: [", "p.json")[0]!.field, "(file)");
});

Deno.test("every error names the VM and the field", () => {
  const issues = issuesOf(`
defaults: { output: { mode: "null" } }
windows:
  - { cron: "0 25 * * *", duration: soon }
limits: { total: 0 }
vms:
  - { name: db, input: { mode: floppy, args: [x] } }
  - { name: app, input: { mode: disk, args: [y] }, after: [db9], priority: high, colour: red }
  - { name: app, input: { mode: disk, args: [z] }, output: { mode: local, storage: /o, format: vhd } }
  - { input: { mode: disk, args: [z] } }
`);
  const got = issues.map((i) => `${i.vm ?? "-"} ${i.field}`);
  for (
    const want of [
      "- windows[0].cron",
      "- windows[0].duration",
      "- limits.total",
      "db input.mode",
      "app after",
      "app priority",
      "app colour",
      "app name",
      "app output",
      "vms[3] name",
    ]
  ) assert(got.includes(want), `missing "${want}" in ${JSON.stringify(got)}`);
  const cron = issues.find((i) => i.field === "windows[0].cron")!;
  assert(cron.message.includes('hour "25"'), cron.message);
  const dep = issues.find((i) => i.field === "after")!;
  assertEquals(dep.message, 'no VM named "db9" in the plan');
  const e = assertThrows(() => parsePlan("vms: []", "plan.yaml"), PlanError);
  assert(e.message.startsWith('Plan "plan.yaml" is not valid:\n  vms: the plan has no VMs'));
});

Deno.test("a missing input is reported, not guessed", () => {
  const issues = issuesOf(`vms: [{ name: a, output: { mode: "null" } }]`);
  assertEquals(issues.map((i) => [i.vm, i.field]), [["a", "input"]]);
});

Deno.test("dependency cycles are named", () => {
  const issues = issuesOf(`
defaults: { input: { mode: disk, args: [x] }, output: { mode: "null" } }
vms: [{ name: a, after: c }, { name: b, after: a }, { name: c, after: b }, { name: d, after: d }]
`);
  assert(issues.some((i) => i.message === "dependencies make a cycle: a -> c -> b -> a"));
  assert(issues.some((i) => i.vm === "d" && i.message === "a VM cannot wait for itself"));
});

Deno.test("each VM's options are checked as one vmshift run checks them", () => {
  const issues = issuesOf(`
vms: [{ name: a, input: { mode: disk, args: [x] }, output: { mode: local } }]
`);
  assertEquals(issues.length, 1);
  assertEquals([issues[0]!.vm, issues[0]!.field], ["a", "output"]);
  assert(issues[0]!.message.includes("-os"), issues[0]!.message);
});

Deno.test("cron: fields are checked; a window open at a time is found", () => {
  assertThrows(() => parseCron("* * *"), SyntaxError, "expected 5 fields");
  assertThrows(() => parseCron("*/0 * * * *"), SyntaxError);
  const c = parseCron("0 22 * * 1-5");
  // Thursday 2026-01-01 22:59 is inside a 1 h window opened at 22:00; 23:00 is not.
  assertEquals(
    openWindowStart(c, 3600_000, new Date("2026-01-01T22:59:59Z"))?.toISOString(),
    "2026-01-01T22:00:00.000Z",
  );
  assertEquals(openWindowStart(c, 3600_000, new Date("2026-01-01T23:00:00Z")), undefined);
  // Saturday: no window.
  assertEquals(openWindowStart(c, 3600_000, new Date("2026-01-03T22:30:00Z")), undefined);
  // Overnight windows span midnight.
  assertEquals(
    openWindowStart(c, 6 * 3600_000, new Date("2026-01-02T03:00:00Z"))?.toISOString(),
    "2026-01-01T22:00:00.000Z",
  );
});

Deno.test("the JSON Schema accepts the example plan and rejects what the checker rejects", async () => {
  const schema = JSON.parse(
    await Deno.readTextFile(new URL("../../schema/plan.schema.json", import.meta.url)),
  );
  const ajv = new Ajv2020.default({ allErrors: true, allowUnionTypes: true });
  const validate = ajv.compile(schema);
  const YAML = (await import("yaml")).default;
  const good = YAML.parse(GOOD);
  assert(validate(good), JSON.stringify(validate.errors));
  for (
    const bad of [
      { vms: [] },
      { vms: [{ name: "a", colour: "red" }] },
      { vms: [{ name: "a" }], limits: { total: 0 } },
      { vms: [{ name: "a" }], windows: [{ cron: "0 22 * * *", duration: "soon" }] },
    ]
  ) {
    assert(!validate(bad), JSON.stringify(bad));
    assertThrows(() => parsePlan(JSON.stringify(bad), "p.json"), PlanError);
  }
  // The example plan in the repository validates both ways.
  // (Its password and CA files are not on this machine: the checker says so, for each VM.)
  const example = await Deno.readTextFile(new URL("../../examples/plan.yaml", import.meta.url));
  assert(validate(YAML.parse(example)), JSON.stringify(validate.errors));
  const issues = issuesOf(example);
  assertEquals(issues.map((i) => i.vm), ["db1", "app1", "web1"]);
  assert(issues.every((i) => i.field === "output" && i.message.includes("no such file")));
});
