import { assert } from "../_assert.ts";
import { parsePlan } from "../../src/plan/plan.ts";
import { renderReport } from "../../src/plan/report.ts";
import type { VmRow } from "../../src/plan/state.ts";

function row(name: string, o: Partial<VmRow>): VmRow {
  return {
    name,
    state: "pending",
    attempts: 0,
    failures: 0,
    reason: null,
    runId: null,
    pid: null,
    owner: null,
    notBefore: 0,
    leaseUntil: 0,
    bytes: 0,
    dataBytes: 0,
    virtualSize: 0,
    percent: 0,
    rate: 0,
    eta: null,
    startedAt: null,
    finishedAt: null,
    seconds: null,
    details: null,
    ...o,
  };
}

Deno.test("the report shows sizes, conversion changes, warnings and failures, escaped", () => {
  const plan = parsePlan(
    `defaults: { input: { mode: disk, args: [x] }, output: { mode: "null" } }
vms: [{ name: db }, { name: "<i>app&co" }]`,
    "p.yaml",
  );
  const html = renderReport(plan, [
    row("db", {
      state: "done",
      attempts: 2,
      virtualSize: 1 << 30,
      dataBytes: 256 << 20,
      seconds: 125,
      details: JSON.stringify({
        warnings: ["--bandwidth has no effect on -i disk"],
        conversion: {
          guest: { product: "Debian 12", distro: "debian", version: "12", arch: "x86_64" },
          changes: ["removed VMware Tools (open-vm-tools)"],
          problems: [],
          trimmed: ["/"],
        },
        result: {
          disks: [{ size: 1 << 30, data_bytes: 256 << 20, zero_bytes: 1 << 20, skipped_bytes: 5 }],
        },
      }),
    }),
    row("<i>app&co", { state: "failed", attempts: 3, reason: "Copying disk 1 failed: <EIO>" }),
  ], new Date("2026-01-01T00:00:00Z"));
  assert(html.includes("1 done, 1 failed, 0 pending"), html);
  assert(html.includes("<td>2:05</td>"));
  assert(html.includes("256.0 MiB (25.0 % of the virtual size)"));
  assert(html.includes("<li>removed VMware Tools (open-vm-tools)</li>"));
  assert(html.includes("Debian 12 (debian 12, x86_64)"));
  assert(html.includes("<li>--bandwidth has no effect on -i disk</li>"));
  assert(html.includes("Copying disk 1 failed: &lt;EIO&gt;"));
  assert(
    html.includes("&lt;i&gt;app&amp;co") && !html.includes("<i>app&co"),
    "names are escaped",
  );
  assert(!/<script/i.test(html));
});
