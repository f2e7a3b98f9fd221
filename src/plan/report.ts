/**
 * The HTML report of a plan (`vmshift report PLAN`): per VM its state, attempts, duration,
 * bytes read and written, data against virtual size, what the conversion changed (and could
 * not do), and the warnings of its last run. One self-contained file, no scripts, every value
 * escaped.
 *
 * @module
 */

import { formatBytes, formatDuration } from "../progress.ts";
import type { Plan } from "./plan.ts";
import type { VmRow } from "./state.ts";

interface Details {
  warnings?: string[];
  conversion?: {
    guest?: { product?: string; distro?: string; version?: string; arch?: string } | null;
    changes?: string[];
    problems?: string[];
    trimmed?: string[];
  };
  result?: { disks?: Array<Record<string, number>> };
}

/**
 * Escapes text for HTML.
 * @param s The text.
 * @returns It, with `&<>"'` escaped.
 * @example
 * ```ts
 * import { escapeHtml } from "./report.ts";
 * if (escapeHtml(`<a href="x">`) !== "&lt;a href=&quot;x&quot;&gt;") throw new Error();
 * ```
 */
export function escapeHtml(s: string): string {
  const names: Record<string, string> = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#39;",
  };
  return s.replace(/[&<>"']/g, (c) => names[c]!);
}

/**
 * Renders the report.
 *
 * @param plan The plan.
 * @param rows Its state.
 * @param now When the report is made.
 * @returns The HTML document.
 */
export function renderReport(plan: Plan, rows: VmRow[], now: Date): string {
  const e = escapeHtml;
  const byName = new Map(rows.map((r) => [r.name, r]));
  const vms = plan.vms.map((vm) => byName.get(vm.name)).filter((r): r is VmRow => !!r);
  const count = (s: string) => vms.filter((r) => r.state === s).length;
  const total = (f: (r: VmRow) => number) => vms.reduce((n, r) => n + f(r), 0);
  const sections = vms.map((r) => {
    let d: Details = {};
    try {
      d = r.details ? JSON.parse(r.details) : {};
    } catch { /* an old or damaged row: shown without details */ }
    const disks = d.result?.disks ?? [];
    const zero = disks.reduce((n, x) => n + (x.zero_bytes ?? 0), 0);
    const skipped = disks.reduce((n, x) => n + (x.skipped_bytes ?? 0), 0);
    const c = d.conversion;
    const list = (title: string, items: string[] | undefined) =>
      items?.length
        ? `<h4>${e(title)}</h4><ul>${items.map((i) => `<li>${e(i)}</li>`).join("")}</ul>`
        : "";
    const guest = c?.guest
      ? `<p>Guest: ${
        e(`${c.guest.product ?? ""} (${c.guest.distro ?? ""} ${c.guest.version ?? ""}, ${
          c.guest.arch ?? ""
        })`)
      }</p>`
      : "";
    return `<section class="vm ${e(r.state)}" id="vm-${e(r.name)}">
<h3>${e(r.name)} <span class="state">${e(r.state)}</span></h3>
<table>
<tr><th>Attempts</th><td>${r.attempts}</td></tr>
<tr><th>Duration</th><td>${r.seconds !== null ? e(formatDuration(r.seconds)) : "—"}</td></tr>
<tr><th>Virtual size</th><td>${e(formatBytes(r.virtualSize))}</td></tr>
<tr><th>Data read and written</th><td>${e(formatBytes(r.dataBytes))}${
      r.virtualSize
        ? ` (${((r.dataBytes / r.virtualSize) * 100).toFixed(1)} % of the virtual size)`
        : ""
    }</td></tr>
<tr><th>Zeroed without writing data</th><td>${e(formatBytes(zero))}</td></tr>
<tr><th>Skipped (holes)</th><td>${e(formatBytes(skipped))}</td></tr>
${r.reason ? `<tr><th>Reason</th><td class="reason">${e(r.reason)}</td></tr>` : ""}
</table>
${c ? `<h4>Conversion</h4>${guest}` : "<p>Not converted (copied as is).</p>"}
${list("Changed", c?.changes)}${list("Could not be done", c?.problems)}${
      list("Trimmed", c?.trimmed)
    }
${list("Warnings", d.warnings)}
</section>`;
  });
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vmshift report: ${e(plan.file)}</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
.vm { border-left: 4px solid #888; padding-left: 1em; margin: 1.5em 0; }
.vm.done { border-color: #2a2; } .vm.failed { border-color: #c22; }
.state { font-size: 70%; font-weight: normal; color: #555; }
th { text-align: left; padding-right: 1em; font-weight: normal; color: #555; }
</style></head><body>
<h1>vmshift report</h1>
<p>Plan <code>${e(plan.file)}</code>, ${e(now.toISOString())}</p>
<p id="summary">${count("done")} done, ${count("failed")} failed, ${count("pending")} pending, ${
    count("running")
  } running. ${e(formatBytes(total((r) => r.dataBytes)))} of data copied from ${
    e(formatBytes(total((r) => r.virtualSize)))
  } of disks in ${e(formatDuration(total((r) => r.seconds ?? 0)))} of migration time.</p>
${sections.join("\n")}
</body></html>
`;
}
