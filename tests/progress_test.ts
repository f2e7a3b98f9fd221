import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { formatBytes, formatDuration, Reporter } from "../src/progress.ts";

function capture(voice: "human" | "machine" | "quiet", terminal = true) {
  const out: string[] = [];
  const err: string[] = [];
  let t = 0;
  const r = new Reporter({
    voice,
    terminal,
    out: (l) => out.push(l),
    err: (s) => err.push(s),
    now: () => t,
  });
  return { r, out, err, tick: (ms: number) => (t += ms) };
}

Deno.test("human voice: stage messages with elapsed time, progress line on the terminal", () => {
  const { r, out, err, tick } = capture("human");
  tick(1500);
  r.message("Copying disk 1/1");
  assertEquals(out, ["[   1.5] Copying disk 1/1"]);
  r.progress(1, 1, { done: 0, total: 100 * 1024 * 1024, dataBytes: 0 });
  tick(2000);
  r.progress(1, 1, { done: 50 * 1024 * 1024, total: 100 * 1024 * 1024, dataBytes: 0 });
  const line = err.at(-1)!;
  assertMatch(line, /\( 50\.0%\) 50\.0 MiB of 100\.0 MiB, 25\.0 MiB\/s, ETA 0:02/);
  r.progressDone();
  assertEquals(err.at(-1), "\r\x1b[K");
});

Deno.test("human voice off a terminal draws no progress line", () => {
  const { r, err } = capture("human", false);
  r.progress(1, 1, { done: 1, total: 2, dataBytes: 1 });
  assertEquals(err, []);
});

Deno.test("machine voice: one JSON object per line, progress at most once a second", () => {
  const { r, out, tick } = capture("machine");
  r.message("hello");
  r.progress(1, 2, { done: 0, total: 1000, dataBytes: 0 });
  tick(200);
  r.progress(1, 2, { done: 100, total: 1000, dataBytes: 100 });
  tick(1000);
  r.progress(1, 2, { done: 500, total: 1000, dataBytes: 400 });
  r.progress(1, 2, { done: 1000, total: 1000, dataBytes: 400 });
  const objs = out.map((l) => JSON.parse(l));
  assertEquals(objs.map((o) => o.type), ["message", "progress", "progress", "progress"]);
  const p = objs[2];
  assertEquals([p.disk, p.disks, p.percent, p.bytes, p.total, p.data_bytes], [
    1,
    2,
    50,
    500,
    1000,
    400,
  ]);
  assert(p.rate > 0 && typeof p.eta === "number");
  assertEquals(objs[3].percent, 100);
});

Deno.test("quiet voice prints only errors", () => {
  const { r, out, err } = capture("quiet");
  r.message("x");
  r.info("y");
  r.progress(1, 1, { done: 1, total: 2, dataBytes: 1 });
  assertEquals(out, []);
  r.error("boom");
  assertEquals(err, ["vmshift: error: boom\n"]);
});

Deno.test("formatBytes and formatDuration", () => {
  assertEquals(formatBytes(0), "0 B");
  assertEquals(formatBytes(1023), "1023 B");
  assertEquals(formatBytes(1024), "1.0 KiB");
  assertEquals(formatBytes(5 * 1024 ** 4), "5.0 TiB");
  assertEquals(formatDuration(59), "0:59");
  assertEquals(formatDuration(61), "1:01");
  assertEquals(formatDuration(3600), "1:00:00");
});
