/**
 * The live status page of a running scheduler (`vmshift schedule PLAN --listen HOST:PORT`):
 * every VM's state, progress, rate and ETA, and a chart of the plan's throughput over time.
 *
 * Read-only: `GET /` (the page) and `GET /api/status` (JSON, which the page polls every
 * second); every other method is refused. Bound to loopback by default; bound elsewhere it
 * needs a token (read from a file, never from the command line), given as `?token=` to the
 * page, which passes it on to the API, or as `Authorization: Bearer TOKEN`.
 *
 * @module
 */

import type { VmRow } from "./state.ts";

/** What the page shows. */
export interface Snapshot {
  plan: string;
  vms: VmRow[];
  /** [ms since the epoch, bytes/s of all runs]. */
  samples: Array<[number, number]>;
  /** The open window, if any. */
  window: { name: string; end: number | null } | null;
}

/** Options of {@linkcode serveStatus}. */
export interface StatusOptions {
  hostname: string;
  port: number;
  /** Required on every request when set. */
  token?: string;
  /** The current state. */
  snapshot: () => Promise<Snapshot>;
  /** Called once listening, with the port. */
  onListen?: (port: number) => void;
}

/**
 * Whether a host name is a loopback address.
 * @param host The host.
 * @returns True for 127.0.0.0/8, ::1 and localhost.
 * @example
 * ```ts
 * import { isLoopback } from "./status_page.ts";
 * if (!isLoopback("127.0.0.1") || isLoopback("0.0.0.0")) throw new Error();
 * ```
 */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" ||
    /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Serves the page until the signal aborts.
 * @param o Address, token, and where the state comes from.
 * @param signal Stops the server.
 * @returns The server.
 */
export function serveStatus(o: StatusOptions, signal: AbortSignal): Deno.HttpServer {
  const headers = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-security-policy":
      "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
  };
  return Deno.serve({
    hostname: o.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: o.port,
    signal,
    onListen: ({ port }) => o.onListen?.(port),
  }, async (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("read-only\n", {
        status: 405,
        headers: { ...headers, allow: "GET, HEAD" },
      });
    }
    const url = new URL(req.url);
    if (o.token !== undefined) {
      const given = url.searchParams.get("token") ??
        req.headers.get("authorization")?.replace(/^Bearer /, "");
      if (!given || !timingSafeEqual(given, o.token)) {
        return new Response("a token is needed: ?token=TOKEN\n", { status: 401, headers });
      }
    }
    if (url.pathname === "/") {
      return new Response(PAGE, {
        headers: { ...headers, "content-type": "text/html; charset=utf-8" },
      });
    }
    if (url.pathname === "/api/status") {
      const s = await o.snapshot();
      const body = {
        plan: s.plan,
        window: s.window,
        samples: s.samples,
        vms: s.vms.map((r) => ({
          name: r.name,
          state: r.state,
          attempts: r.attempts,
          percent: r.percent,
          bytes: r.bytes,
          rate: r.rate,
          eta: r.eta,
          reason: r.reason,
          seconds: r.seconds,
          virtual_size: r.virtualSize,
        })),
      };
      return new Response(JSON.stringify(body), {
        headers: { ...headers, "content-type": "application/json" },
      });
    }
    return new Response("not found\n", { status: 404, headers });
  });
}

function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** The page: plain HTML, a table and an SVG chart, filled by polling /api/status. */
const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vmshift</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
tr.failed td { color: #b00; } tr.done td { color: #060; }
.bar { display: inline-block; width: 8em; height: .8em; background: #ddd; }
.bar > span { display: block; height: 100%; background: #48c; }
#chart { border: 1px solid #ccc; }
</style></head><body>
<h1>vmshift <span id="plan"></span></h1>
<p id="summary">Loading…</p>
<table id="vms"><thead><tr><th>VM</th><th>State</th><th>Progress</th><th>Rate</th><th>ETA</th>
<th>Attempts</th><th>Reason</th></tr></thead><tbody></tbody></table>
<h2>Throughput</h2>
<svg id="chart" width="600" height="150" viewBox="0 0 600 150"><polyline id="line" fill="none"
 stroke="#48c" stroke-width="2" points=""/><text id="peak" x="4" y="14" font-size="12"></text></svg>
<p id="updated"></p>
<script>
const token = new URLSearchParams(location.search).get("token");
const api = "api/status" + (token ? "?token=" + encodeURIComponent(token) : "");
const bytes = (n) => { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : Math.round(n)) + " " + u[i]; };
const dur = (s) => { s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(s % 60).padStart(2, "0"); };
function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.append(td); return td; }
async function update() {
  try {
    const r = await fetch(api, { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    const s = await r.json();
    document.getElementById("plan").textContent = s.plan;
    const body = document.querySelector("#vms tbody");
    body.replaceChildren();
    const count = {};
    for (const v of s.vms) {
      count[v.state] = (count[v.state] || 0) + 1;
      const row = document.createElement("tr");
      row.className = v.state; row.dataset.vm = v.name;
      cell(row, v.name); cell(row, v.state);
      const p = cell(row, ""); const bar = document.createElement("span"); bar.className = "bar";
      const fill = document.createElement("span"); fill.style.width = v.percent + "%"; bar.append(fill);
      p.append(bar, " " + v.percent.toFixed(0) + "%"); p.className = "progress";
      cell(row, v.state === "running" ? bytes(v.rate) + "/s" : "");
      cell(row, v.state === "running" && v.eta != null ? dur(v.eta) : "");
      cell(row, String(v.attempts));
      cell(row, v.reason || "").className = "reason";
      body.append(row);
    }
    document.getElementById("summary").textContent = ["done", "running", "pending", "failed"]
      .map((k) => (count[k] || 0) + " " + k).join(", ") +
      (s.window ? "; window " + s.window.name + (s.window.end ? " until " + new Date(s.window.end).toISOString() : "") : "; no window open");
    const pts = s.samples;
    if (pts.length) {
      const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
      const peak = Math.max(1, ...pts.map((p) => p[1]));
      document.getElementById("line").setAttribute("points", pts.map((p) =>
        ((p[0] - t0) / (t1 - t0) * 596 + 2).toFixed(1) + "," + (148 - p[1] / peak * 130).toFixed(1)).join(" "));
      document.getElementById("peak").textContent = "peak " + bytes(peak) + "/s";
    }
    document.getElementById("updated").textContent = "Updated " + new Date().toISOString();
  } catch (e) {
    document.getElementById("updated").textContent = "Cannot update: " + e.message;
  }
}
update(); setInterval(update, 1000);
</script></body></html>`;
