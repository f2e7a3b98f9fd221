/**
 * The oVirt test servers are as strict as the real ones: each point of shared/OVIRT-FACTS.md
 * that a client could get wrong is answered the way the real engine or daemon answers it.
 *
 * @module
 */

import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "../_assert.ts";
import { run } from "../../src/process.ts";
import { TempDir } from "../../src/tmpdir.ts";
import { makeCertificate, type Ovirt, type OvirtOptions, startOvirt } from "./mod.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** JSON of the engine, loosely typed. */
// deno-lint-ignore no-explicit-any
type Json = any;

/** Servers, a TLS client trusting their CA, and a logged-in engine session. */
class Env implements AsyncDisposable {
  readonly dir: TempDir;
  readonly ovirt: Ovirt;
  readonly ca: string;
  readonly client: Deno.HttpClient;
  token = "";

  private constructor(dir: TempDir, ovirt: Ovirt, ca: string) {
    this.dir = dir;
    this.ovirt = ovirt;
    this.ca = ca;
    this.client = Deno.createHttpClient({ caCerts: [ca] });
  }

  static async start(options: Partial<OvirtOptions> = {}, login = true): Promise<Env> {
    const dir = await TempDir.create();
    const ovirt = await startOvirt({
      diskLockMs: 50,
      transferInitMs: 50,
      ...options,
      dir: dir.path,
    });
    const env = new Env(dir, ovirt, await Deno.readTextFile(ovirt.caFile));
    if (login) env.token = (await env.login()).json.access_token;
    return env;
  }

  /** The engine's base URL (`.../ovirt-engine`). */
  get base(): string {
    return this.ovirt.engineUrl.replace(/\/api$/, "");
  }

  async login(password?: string, extra: Record<string, string> = {}) {
    const pw = password ?? (await Deno.readTextFile(this.ovirt.passwordFile));
    return await this.fetch(`${this.base}/sso/oauth/token`, {
      method: "POST",
      headers: { Accept: "application/json" },
      body: new URLSearchParams({
        grant_type: "password",
        scope: "ovirt-app-api",
        username: "admin@internal",
        password: pw,
        ...extra,
      }),
    });
  }

  /** A fetch through the client; reads the whole body. */
  async fetch(url: string, init: RequestInit = {}) {
    const r = await fetch(url, { ...init, client: this.client });
    const bytes = await r.bytes();
    const text = new TextDecoder().decode(bytes);
    let json: Json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: r.status, headers: r.headers, text, json, bytes };
  }

  /** An engine API call with the usual headers. */
  api(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    return this.fetch(`${this.ovirt.engineUrl}${path}`, {
      method,
      headers: {
        Accept: "application/json",
        Version: "4",
        Authorization: `Bearer ${this.token}`,
        ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
        ...headers,
      },
      ...(body !== undefined
        ? { body: typeof body === "string" ? body : JSON.stringify(body) }
        : {}),
    });
  }

  /** Polls until `pick(json)` is one of `wanted`. */
  async poll(path: string, pick: (j: Json) => string, wanted: string[]): Promise<Json> {
    const deadline = Date.now() + 10_000;
    while (true) {
      const r = await this.api("GET", path);
      assertEquals(r.status, 200, r.text);
      if (wanted.includes(pick(r.json))) return r.json;
      if (Date.now() > deadline) throw new Error(`${path}: still ${pick(r.json)}`);
      await sleep(20);
    }
  }

  async newDisk(extra: Record<string, unknown> = {}): Promise<Json> {
    const r = await this.api("POST", "/disks", {
      name: "disk",
      provisioned_size: 4 * MiB,
      format: "raw",
      sparse: true,
      storage_domains: { storage_domain: [{ name: "data" }] },
      ...extra,
    });
    assertEquals(r.status, 201, r.text);
    assertEquals(r.json.status, "locked");
    return await this.poll(`/disks/${r.json.id}`, (j) => j.status, ["ok"]);
  }

  async newTransfer(diskId: string): Promise<Json> {
    const r = await this.api("POST", "/imagetransfers", {
      disk: { id: diskId },
      direction: "upload",
      format: "raw",
      inactivity_timeout: 3600,
    });
    assertEquals(r.status, 201, r.text);
    assertEquals(r.json.phase, "initializing");
    assertEquals(r.json.transfer_url, undefined);
    return await this.poll(`/imagetransfers/${r.json.id}`, (j) => j.phase, ["transferring"]);
  }

  async finalize(transferId: string): Promise<Json> {
    const r = await this.api("POST", `/imagetransfers/${transferId}/finalize`, {});
    assertEquals(r.status, 200, r.text);
    return await this.poll(`/imagetransfers/${transferId}`, (j) => j.phase, [
      "finished_success",
      "finished_failure",
    ]);
  }

  /** A raw TLS connection to the daemon of a transfer. */
  async raw(transferUrl: string): Promise<RawHttp> {
    const u = new URL(transferUrl);
    const conn = await Deno.connectTls({
      hostname: u.hostname,
      port: Number(u.port),
      caCerts: [this.ca],
    });
    return new RawHttp(conn, u.pathname);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.client.close();
    await this.ovirt[Symbol.asyncDispose]();
    await this.dir[Symbol.asyncDispose]();
  }
}

/** One HTTP/1.1 connection by hand: what fetch cannot say (chunked bodies, idle sockets). */
class RawHttp {
  readonly conn: Deno.TlsConn;
  readonly path: string;
  #buf = new Uint8Array(0);

  constructor(conn: Deno.TlsConn, path: string) {
    this.conn = conn;
    this.path = path;
  }

  async send(head: string, body: Uint8Array = new Uint8Array(0)): Promise<void> {
    const h = new TextEncoder().encode(head);
    const all = new Uint8Array(h.length + body.length);
    all.set(h);
    all.set(body, h.length);
    let done = 0;
    try {
      while (done < all.length) done += await this.conn.write(all.subarray(done));
    } catch (e) {
      // The server hung up in the middle (a fault): response() then says so with null.
      if (!(e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset)) {
        throw e;
      }
    }
  }

  /** Sends a request with a body and Content-Length. */
  async request(
    method: string,
    target: string,
    body?: Uint8Array | string,
    headers: Record<string, string> = {},
  ) {
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    let head = `${method} ${target} HTTP/1.1\r\nHost: localhost\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    if (bytes) head += `Content-Length: ${bytes.length}\r\n`;
    await this.send(head + "\r\n", bytes);
    return await this.response();
  }

  put(offset: number, data: Uint8Array, flush: "y" | "n" = "n") {
    return this.request("PUT", `${this.path}?flush=${flush}`, data, {
      "Content-Range": `bytes ${offset}-${offset + data.length - 1}/*`,
    });
  }

  patch(msg: unknown) {
    return this.request("PATCH", this.path, JSON.stringify(msg), {
      "Content-Type": "application/json",
    });
  }

  /** Reads one response; null when the server closed the connection. */
  async response(): Promise<
    { status: number; headers: Map<string, string>; body: string } | null
  > {
    let end: number;
    while ((end = findHeadEnd(this.#buf)) < 0) {
      if (!(await this.#more())) return null;
    }
    const head = new TextDecoder().decode(this.#buf.subarray(0, end)).split("\r\n");
    this.#buf = this.#buf.slice(end + 4);
    const status = Number(head[0]!.split(" ")[1]);
    const headers = new Map<string, string>();
    for (const line of head.slice(1)) {
      const i = line.indexOf(":");
      headers.set(line.slice(0, i).toLowerCase(), line.slice(i + 1).trim());
    }
    const length = Number(headers.get("content-length") ?? 0);
    while (this.#buf.length < length) {
      if (!(await this.#more())) return null;
    }
    const body = new TextDecoder().decode(this.#buf.subarray(0, length));
    this.#buf = this.#buf.slice(length);
    return { status, headers, body };
  }

  /** True when the server closed the connection (end of stream, or reset). */
  async closedByServer(): Promise<boolean> {
    try {
      return !(await this.#more());
    } catch {
      return true;
    }
  }

  async #more(): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch (e) {
      if (e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.UnexpectedEof) {
        return false;
      }
      throw e;
    }
    if (n === null) return false;
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Closed by the server.
    }
  }
}

function findHeadEnd(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff || 1;
  return out;
}

/** An OVF as virt-v2v writes it for oVirt (the parts the engine reads). */
function ovf(name: string, diskIds: string[]): string {
  const disks = diskIds.map((id, i) =>
    `<Disk ovf:diskId="${id}" ovf:size="1" ovf:capacity="4194304" ovf:fileRef="${id}" ` +
    `ovf:volume-format="RAW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO" ` +
    `ovf:boot="${i === 0 ? "True" : "False"}"/>`
  ).join("");
  return `<?xml version="1.0" encoding="UTF-8"?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="0.9">
  <!-- generated by the tests -->
  <References/>
  <NetworkSection><Info>List of networks</Info></NetworkSection>
  <DiskSection><Info>List of Virtual Disks</Info>${disks}</DiskSection>
  <VirtualSystem ovf:id="${crypto.randomUUID()}">
    <Name>${name}</Name>
    <TemplateId>00000000-0000-0000-0000-000000000000</TemplateId>
  </VirtualSystem>
</ovf:Envelope>`;
}

/** Reads a disk image as the guest sees it (qcow2 converted to raw). */
async function readImage(path: string, format: "raw" | "cow", dir: TempDir): Promise<Uint8Array> {
  if (format === "raw") return await Deno.readFile(path);
  const out = dir.join(`read-${crypto.randomUUID()}.raw`);
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", path, out]);
  const data = await Deno.readFile(out);
  await Deno.remove(out);
  return data;
}

// --- SSO and the API's manners -------------------------------------------------------------

Deno.test("sso: the password grant gives an expiring bearer token; wrong passwords and Basic auth are refused", async () => {
  await using env = await Env.start({ tokenLifetimeMs: 400 }, false);
  const ok = await env.login();
  assertEquals(ok.status, 200, ok.text);
  assertEquals(ok.json.token_type, "Bearer");
  assertMatch(ok.json.exp, /^\d+$/);
  env.token = ok.json.access_token;

  const wrong = await env.login("not-the-password");
  assertEquals(wrong.status, 400);
  assertEquals(wrong.json.error_code, "access_denied");
  assertStringIncludes(wrong.json.error, "Cannot authenticate user 'admin@internal'");
  const noScope = await env.login(undefined, { scope: "" });
  assertEquals(noScope.status, 400);

  assertEquals((await env.api("GET", "/storagedomains")).status, 200);
  const basic = await env.api("GET", "/storagedomains", undefined, {
    Authorization: `Basic ${btoa("admin@internal:test-password")}`,
  });
  assertEquals(basic.status, 401);
  assertEquals(
    (await env.api("GET", "/storagedomains", undefined, { Authorization: "" })).status,
    401,
  );

  await sleep(500);
  assertEquals((await env.api("GET", "/storagedomains")).status, 401, "token expired");

  env.token = (await env.login()).json.access_token;
  const logout = await env.fetch(`${env.base}/services/sso-logout?token=${env.token}`);
  assertEquals(logout.status, 200);
  assertEquals((await env.api("GET", "/storagedomains")).status, 401, "token revoked");
});

Deno.test("api: JSON only with Accept: application/json, Version 4, JSON bodies", async () => {
  await using env = await Env.start();
  assertEquals(
    (await env.api("GET", "/vms", undefined, { Accept: "application/xml" })).status,
    406,
  );
  assertEquals((await env.api("GET", "/vms", undefined, { Version: "3" })).status, 400);
  const form = await env.api("POST", "/disks", "name=x", {
    "Content-Type": "application/x-www-form-urlencoded",
  });
  assertEquals(form.status, 415);
  const malformed = await env.api("POST", "/disks", "{not json");
  assertEquals(malformed.status, 400);
  assert(typeof malformed.json.detail === "string");
  const badSearch = await env.api("GET", "/vms?search=colour%3Dblue");
  assertEquals(badSearch.status, 400);
});

Deno.test("storage: search by name and storage.name; sizes are strings; empty collections are {}", async () => {
  await using env = await Env.start({
    storageDomains: [
      { name: "data", available: 50 * GiB },
      { name: "block", available: 10 * GiB, type: "iscsi" },
    ],
    clusters: [{ name: "Default" }, { name: "nohosts", architecture: "undefined" }],
    existingVms: ["taken"],
  });
  const sd = await env.api("GET", "/storagedomains?search=name%3Ddata");
  assertEquals(sd.json.storage_domain.length, 1);
  const d = sd.json.storage_domain[0];
  assertEquals([d.name, d.type, d.available, d.storage.type], [
    "data",
    "data",
    String(50 * GiB),
    "nfs",
  ]);
  const block = await env.api("GET", "/storagedomains?search=name%3Dbl*");
  assertEquals(block.json.storage_domain[0].storage.type, "iscsi");
  assertEquals((await env.api("GET", "/storagedomains?search=name%3Dnone")).json, {});
  const quoted = await env.api(
    "GET",
    `/storagedomains?search=${encodeURIComponent('name="DATA"')}`,
  );
  assertEquals(quoted.json.storage_domain[0].name, "data", "quoted, case-insensitive");

  const dcs = await env.api("GET", "/datacenters?search=storage.name%3Ddata");
  assertEquals(dcs.json.data_center.length, 1);
  const dc = dcs.json.data_center[0];
  assertEquals((await env.api("GET", "/datacenters?search=storage.name%3Dnone")).json, {});
  const clusters = await env.api("GET", `/datacenters/${dc.id}/clusters`);
  assertEquals(
    clusters.json.cluster.map((c: Json) => [c.name, c.cpu.architecture]),
    [["Default", "x86_64"], ["nohosts", "undefined"]],
  );
  const byName = await env.api("GET", "/clusters?search=name%3DDefault");
  assertEquals(byName.json.cluster[0].data_center.id, dc.id);

  assertEquals((await env.api("GET", "/vms?search=name%3Dtaken")).json.vm[0].name, "taken");
  assertEquals((await env.api("GET", "/vms?search=name%3Dfree")).json, {});
});

// --- disks -----------------------------------------------------------------------------------

Deno.test("disks: created locked, then ok, as real image files; DELETE removes the file", async () => {
  await using env = await Env.start();
  const raw = await env.newDisk({ name: "raw", provisioned_size: "8388608" });
  assertEquals([raw.provisioned_size, raw.format, raw.sparse, raw.status], [
    "8388608",
    "raw",
    "true",
    "ok",
  ]);
  const cow = await env.newDisk({ name: "cow", format: "cow", sparse: "true" });
  const pre = await env.newDisk({ name: "pre", sparse: false, provisioned_size: MiB });
  const files = env.ovirt.disks();
  assertEquals(files.map((f) => [f.name, f.status]), [["raw", "ok"], ["cow", "ok"], ["pre", "ok"]]);
  const info = JSON.parse(
    await run("qemu-img", ["info", "--output=json", "-f", "qcow2", files[1]!.path]),
  );
  assertEquals([info.format, info["virtual-size"]], ["qcow2", 4 * MiB]);
  assertEquals((await Deno.stat(files[2]!.path)).blocks! * 512 >= MiB, true, "preallocated");

  const del = await env.api("DELETE", `/disks/${raw.id}`);
  assertEquals(del.status, 200, del.text);
  const deadline = Date.now() + 5000;
  while ((await env.api("GET", `/disks/${raw.id}`)).status !== 404) {
    assert(Date.now() < deadline, "the disk is still there");
    await sleep(20);
  }
  await assertRejects(() => Deno.stat(files[0]!.path), Deno.errors.NotFound);
  assertEquals(
    (await env.api("GET", `/disks/${raw.id}`)).json.detail,
    `Entity not found: ${raw.id}`,
  );
  await env.api("DELETE", `/disks/${cow.id}`);
  await env.api("DELETE", `/disks/${pre.id}`);
});

Deno.test("disks: the engine refuses what it would refuse", async () => {
  await using env = await Env.start({
    storageDomains: [
      { name: "data", available: 10 * GiB },
      { name: "block", available: 10 * GiB, type: "iscsi" },
    ],
  });
  const domain = { storage_domains: { storage_domain: [{ name: "data" }] } };
  const add = (body: Record<string, unknown>) => env.api("POST", "/disks", body);

  const big = await add({ provisioned_size: 11 * GiB, format: "raw", sparse: false, ...domain });
  assertEquals(big.status, 400);
  assertStringIncludes(
    big.json.detail,
    "Cannot add Virtual Disk. Low disk space on Storage Domain data.",
  );
  // Thin provisioning: a sparse disk larger than the free space is fine.
  const thin = await add({ provisioned_size: 11 * GiB, format: "raw", sparse: true, ...domain });
  assertEquals(thin.status, 201, thin.text);

  const rawSparseBlock = await add({
    provisioned_size: MiB,
    format: "raw",
    sparse: true,
    storage_domains: { storage_domain: [{ name: "block" }] },
  });
  assertEquals(rawSparseBlock.status, 400);
  assertStringIncludes(rawSparseBlock.json.detail, "RAW Sparse");

  assertEquals((await add({ format: "raw", ...domain })).json.reason, "Incomplete parameters");
  assertEquals((await add({ provisioned_size: MiB, ...domain })).status, 400);
  assertEquals((await add({ provisioned_size: MiB, format: "qcow2", ...domain })).status, 400);
  assertEquals((await add({ provisioned_size: "lots", format: "raw", ...domain })).status, 400);
  assertEquals((await add({ provisioned_size: MiB, format: "raw" })).status, 400);
  const unknown = await add({
    provisioned_size: MiB,
    format: "raw",
    storage_domains: { storage_domain: [{ id: crypto.randomUUID() }] },
  });
  assertEquals(unknown.status, 400);
  const id = crypto.randomUUID();
  assertEquals((await add({ id, provisioned_size: MiB, format: "raw", ...domain })).status, 201);
  assertEquals((await add({ id, provisioned_size: MiB, format: "raw", ...domain })).status, 409);
  assertEquals(
    (await add({ id: "nope", provisioned_size: MiB, format: "raw", ...domain })).status,
    400,
  );
});

// --- transfers -------------------------------------------------------------------------------

Deno.test("transfer: initializing, transferring, finalize; the data lands in the image; the ticket ends", async () => {
  await using env = await Env.start();
  for (const format of ["raw", "cow"] as const) {
    const disk = await env.newDisk({ format, sparse: true, provisioned_size: 4 * MiB });
    const locked = await env.api("POST", "/imagetransfers", {
      disk: { id: disk.id },
      format: "raw",
    });
    assertEquals(locked.status, 201);
    const again = await env.api("POST", "/imagetransfers", {
      disk: { id: disk.id },
      format: "raw",
    });
    assertEquals(again.status, 409, "the disk is locked by the first transfer");
    await env.poll(`/imagetransfers/${locked.json.id}`, (j) => j.phase, ["transferring"]);
    const t = await env.api("GET", `/imagetransfers/${locked.json.id}`);
    assertMatch(t.json.transfer_url, /^https:\/\/127\.0\.0\.1:\d+\/images\/[0-9a-f-]{36}$/);
    assertMatch(t.json.proxy_url, /^https:\/\/127\.0\.0\.1:\d+\/images\/[0-9a-f-]{36}$/);
    assertEquals((await env.api("GET", `/disks/${disk.id}`)).json.status, "locked");
    assertEquals((await env.api("DELETE", `/disks/${disk.id}`)).status, 409);

    const a = pattern(MiB, 1);
    const b = pattern(64 * 1024, 2);
    const put = await env.fetch(`${t.json.transfer_url}?flush=n`, {
      method: "PUT",
      headers: { "Content-Range": `bytes 0-${MiB - 1}/*` },
      body: a,
    });
    assertEquals(put.status, 200, put.text);
    // Through the proxy too, on another connection: both flush their own writes.
    const viaProxy = await env.raw(t.json.proxy_url);
    assertEquals((await viaProxy.put(3 * MiB, b))?.status, 200);
    assertEquals(
      (await viaProxy.patch({ op: "zero", offset: MiB, size: MiB, flush: false }))?.status,
      200,
    );
    assertEquals((await viaProxy.patch({ op: "flush" }))?.status, 200);
    viaProxy.close();
    const flush = await env.fetch(t.json.transfer_url, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ op: "flush" }),
    });
    assertEquals(flush.status, 200);
    const back = await env.fetch(t.json.transfer_url, {
      headers: { Range: `bytes=${3 * MiB}-${3 * MiB + 9}` },
    });
    assertEquals(back.status, 206);
    assertEquals(back.headers.get("content-range"), `bytes ${3 * MiB}-${3 * MiB + 9}/${4 * MiB}`);
    assertBytesEqual(back.bytes, b.subarray(0, 10));

    const done = await env.finalize(t.json.id);
    assertEquals(done.phase, "finished_success");
    assertEquals((await env.api("GET", `/disks/${disk.id}`)).json.status, "ok");
    const gone = await env.fetch(t.json.transfer_url, { method: "OPTIONS" });
    assertEquals(gone.status, 403, "the ticket ends with the transfer");
    assertStringIncludes(gone.text, "No such ticket");

    const image = await readImage(
      env.ovirt.disks().find((d) => d.id === disk.id)!.path,
      format,
      env.dir,
    );
    assertEquals(image.length, 4 * MiB);
    assertBytesEqual(image.subarray(0, MiB), a);
    assertBytesEqual(image.subarray(MiB, 3 * MiB), new Uint8Array(2 * MiB));
    assertBytesEqual(image.subarray(3 * MiB, 3 * MiB + b.length), b);
  }
  const s = env.ovirt.stats();
  assertEquals([s.putRequests, s.putBytes, s.zeroRequests, s.zeroBytes, s.flushRequests], [
    4,
    2 * (MiB + 64 * 1024),
    2,
    2 * MiB,
    4,
  ]);
  assertEquals(s.droppedBytes, 0);
});

Deno.test("transfer: cancel ends in finished_failure; the disk is illegal, locked until then, then removable", async () => {
  await using env = await Env.start({ transferInitMs: 200 });
  const disk = await env.newDisk();
  const t = await env.newTransfer(disk.id);
  const cancel = await env.api("POST", `/imagetransfers/${t.id}/cancel`, {});
  assertEquals(cancel.status, 200);
  assertEquals((await env.api("DELETE", `/disks/${disk.id}`)).status, 409, "still locked");
  const done = await env.poll(`/imagetransfers/${t.id}`, (j) => j.phase, ["finished_failure"]);
  assertEquals(done.phase, "finished_failure");
  assertEquals((await env.api("GET", `/disks/${disk.id}`)).json.status, "illegal");
  assertEquals((await env.fetch(t.transfer_url, { method: "OPTIONS" })).status, 403);
  assertEquals((await env.api("POST", `/imagetransfers/${t.id}/finalize`, {})).status, 409);
  assertEquals(
    (await env.api("POST", `/imagetransfers/${t.id}/cancel`)).status,
    415,
    "needs a body",
  );
  assertEquals((await env.api("DELETE", `/disks/${disk.id}`)).status, 200);
});

Deno.test("hosts: searched by hw_id, datacenter and status; a transfer goes to the host asked for, which must be up", async () => {
  await using env = await Env.start({
    hosts: [
      { name: "host1", status: "maintenance" },
      { name: "host2", hwId: "4c4c4544-0042-3910-8035-b3c04f4e3232" },
      { name: "host3" },
    ],
  });
  const [host1, host2, host3] = env.ovirt.hosts();
  const search = async (q: string) => {
    const r = await env.api("GET", `/hosts?search=${encodeURIComponent(q)}`);
    assertEquals(r.status, 200, r.text);
    return (r.json.host ?? []).map((h: { name: string }) => h.name);
  };
  assertEquals(
    await search(`hw_id=${host2!.hwId} and datacenter=Default and status=Up`),
    ["host2"],
  );
  assertEquals(await search(`hw_id=${host1!.hwId} and datacenter=Default and status=Up`), []);
  assertEquals(await search(`hw_id=${host2!.hwId} and datacenter=Other`), []);
  assertEquals(await search("status=up"), ["host2", "host3"]);
  const listed = await env.api("GET", "/hosts");
  assertEquals(listed.json.host[0].status, "maintenance");
  assertEquals((await env.api("GET", "/hosts?search=hwid%3Dx")).status, 400, "unknown field");

  const disk = await env.newDisk();
  const refuse = async (host: unknown, detail: string) => {
    const r = await env.api("POST", "/imagetransfers", { disk: { id: disk.id }, host });
    assertEquals(r.status, 400, r.text);
    assertStringIncludes(r.json.detail, detail);
  };
  await refuse({ id: host1!.id }, "Host host1 is not in Up status");
  await refuse({ id: crypto.randomUUID() }, "Host doesn't exist");
  const asked = await env.api("POST", "/imagetransfers", {
    disk: { id: disk.id },
    host: { id: host3!.id },
  });
  assertEquals(asked.status, 201, asked.text);
  assertEquals(asked.json.host.id, host3!.id);
  const other = await env.newDisk();
  const any = await env.api("POST", "/imagetransfers", { disk: { id: other.id } });
  assertEquals(any.json.host.id, host2!.id, "the first host that is up");
  assertEquals(
    env.ovirt.transfers().map((t) => [t.hostId, t.hostAsked]),
    [[host3!.id, true], [host2!.id, false]],
  );
});

Deno.test("hosts: with no host up, the engine refuses transfers", async () => {
  await using env = await Env.start({ hosts: [{ name: "host1", status: "non_responsive" }] });
  const disk = await env.newDisk();
  const r = await env.api("POST", "/imagetransfers", { disk: { id: disk.id } });
  assertEquals(r.status, 400, r.text);
  assertStringIncludes(r.json.detail, "There is no active host in the Data Center");
});

// --- imageio ----------------------------------------------------------------------------------

Deno.test("imageio: OPTIONS, info, extents and checksum answer as the daemon does", async () => {
  await using env = await Env.start({ maxWriters: 4 });
  const disk = await env.newDisk({ provisioned_size: 8 * MiB });
  const t = await env.newTransfer(disk.id);
  const opts = await env.fetch(t.transfer_url, { method: "OPTIONS" });
  assertEquals(opts.status, 200);
  assertEquals(opts.headers.get("allow"), "OPTIONS,GET,PUT,PATCH");
  assertEquals(opts.json, {
    features: ["checksum", "extents", "flush", "zero"],
    max_readers: 8,
    max_writers: 4,
  });
  const star = await env.fetch(t.transfer_url.replace(/[^/]+$/, "*"), { method: "OPTIONS" });
  assertEquals(star.json.features, ["checksum", "extents", "flush", "zero"]);
  const info = await env.fetch(new URL("/info/", t.transfer_url).href);
  assertEquals(info.json, { version: "2.5.3" });

  const data = pattern(MiB, 5);
  assertEquals(
    (await env.fetch(`${t.transfer_url}?flush=y`, {
      method: "PUT",
      headers: { "Content-Range": `bytes ${2 * MiB}-${3 * MiB - 1}/*` },
      body: data,
    })).status,
    200,
  );
  const extents = (await env.fetch(`${t.transfer_url}/extents?context=zero`)).json;
  assertEquals(extents.reduce((n: number, e: Json) => n + e.length, 0), 8 * MiB);
  const dataExtent = extents.find((e: Json) => e.start <= 2 * MiB && e.start + e.length > 2 * MiB);
  assertEquals(dataExtent.zero, false);
  assertEquals(extents[extents.length - 1].zero, true);
  assertEquals((await env.fetch(`${t.transfer_url}/extents?context=dirty`)).status, 404);

  // blkhash: H(H(block 1) + ... + H(block N)), 4 MiB blocks.
  const image = new Uint8Array(8 * MiB);
  image.set(data, 2 * MiB);
  const h = async (b: Uint8Array<ArrayBuffer>) =>
    new Uint8Array(await crypto.subtle.digest("SHA-1", b));
  const blocks = [await h(image.subarray(0, 4 * MiB)), await h(image.subarray(4 * MiB))];
  const joined = new Uint8Array(40);
  joined.set(blocks[0]!);
  joined.set(blocks[1]!, 20);
  const expected = [...await h(joined)].map((x) => x.toString(16).padStart(2, "0")).join("");
  const sum = await env.fetch(`${t.transfer_url}/checksum?algorithm=sha1`);
  assertEquals(sum.json, { algorithm: "sha1", block_size: 4 * MiB, checksum: expected });
  assertEquals((await env.fetch(`${t.transfer_url}/checksum?algorithm=crc7`)).status, 400);
});

Deno.test("imageio: unknown tickets are 403, ranges past the end 416, bad requests 400", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk({ provisioned_size: MiB });
  const t = await env.newTransfer(disk.id);
  const unknown = t.transfer_url.replace(/[^/]+$/, crypto.randomUUID());
  const forbidden = await env.fetch(unknown, { method: "PUT", body: new Uint8Array(10) });
  assertEquals(forbidden.status, 403);
  assertStringIncludes(
    forbidden.text,
    "You are not allowed to access this resource: No such ticket",
  );

  const past = await env.fetch(`${t.transfer_url}?flush=n`, {
    method: "PUT",
    headers: { "Content-Range": `bytes ${MiB - 10}-${MiB + 9}/*` },
    body: new Uint8Array(20),
  });
  assertEquals(past.status, 416);
  assertEquals(past.headers.get("content-range"), `bytes */${MiB}`);
  const zeroPast = await env.fetch(t.transfer_url, {
    method: "PATCH",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ op: "zero", offset: MiB, size: 1 }),
  });
  assertEquals([zeroPast.status, zeroPast.headers.get("content-range")], [416, `bytes */${MiB}`]);
  const readPast = await env.fetch(t.transfer_url, { headers: { Range: `bytes=${MiB}-` } });
  assertEquals(readPast.status, 416);

  const c = await env.raw(t.transfer_url);
  assertEquals((await c.patch({ op: "trim", size: 10 }))?.status, 400, "unknown op");
  assertEquals((await c.patch({ op: "zero" }))?.status, 400, "zero needs a size");
  assertEquals((await c.request("PATCH", c.path, "{oops"))?.status, 400, "malformed JSON");
  // A PUT refused before its body was read closes the connection (with Connection: close).
  const badFlush = await c.request("PUT", `${c.path}?flush=maybe`, "x");
  assertEquals([badFlush?.status, badFlush?.headers.get("connection")], [400, "close"]);
  assert(await c.closedByServer());
  c.close();
  const badRange = await env.raw(t.transfer_url);
  const r = await badRange.request("PUT", c.path, "x", { "Content-Range": "bytes=0-0" });
  assertEquals(r?.status, 400);
  badRange.close();

  // Chunked bodies are refused, and the connection is closed (its body cannot be skipped).
  const chunky = await env.raw(t.transfer_url);
  await chunky.send(
    `PUT ${c.path}?flush=n HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n` +
      "5\r\nhello\r\n0\r\n\r\n",
  );
  const chunked = await chunky.response();
  assertEquals(chunked?.status, 400);
  assertStringIncludes(chunked!.body, "Transfer-Encoding");
  assert(await chunky.closedByServer());
  chunky.close();

  const noLength = await env.raw(t.transfer_url);
  await noLength.send(`PUT ${noLength.path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  assertEquals((await noLength.response())?.status, 400);
  noLength.close();
});

Deno.test("imageio: keep-alive serves many requests; an idle connection is closed after the inactivity timeout, and the transfer pauses", async () => {
  await using env = await Env.start({ ticketInactivityTimeout: 1 });
  const disk = await env.newDisk();
  const t = await env.newTransfer(disk.id);
  const c = await env.raw(t.transfer_url);
  for (let i = 0; i < 5; i++) {
    assertEquals((await c.request("OPTIONS", c.path))?.status, 200);
  }
  const before = Date.now();
  assert(await c.closedByServer(), "the idle connection is closed");
  const waited = Date.now() - before;
  assert(waited >= 900 && waited < 3000, `closed after ${waited} ms`);
  c.close();
  assertEquals(env.ovirt.stats().connections, 1);
  const paused = await env.poll(`/imagetransfers/${t.id}`, (j) => j.phase, ["paused_system"]);
  assertEquals(paused.phase, "paused_system");
  assertEquals((await env.fetch(t.transfer_url, { method: "OPTIONS" })).status, 403);
});

// --- flush is per connection; faults -----------------------------------------------------------

Deno.test("imageio: flush is per connection; a 500 loses that connection's unflushed writes only", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk({ provisioned_size: 4 * MiB });
  const t = await env.newTransfer(disk.id);
  const a = await env.raw(t.transfer_url);
  const b = await env.raw(t.transfer_url);
  const one = pattern(MiB, 1);
  const two = pattern(MiB, 2);
  const three = pattern(MiB, 3);
  const four = pattern(MiB, 4);
  assertEquals((await a.put(0, one))?.status, 200);
  assertEquals((await a.patch({ op: "flush" }))?.status, 200);
  assertEquals((await a.put(MiB, two))?.status, 200);
  assertEquals((await b.put(3 * MiB, four))?.status, 200);
  // Another connection's flush does not make a's writes safe.
  assertEquals((await b.patch({ op: "flush" }))?.status, 200);
  env.ovirt.faults.fail500Once = true;
  const failed = await a.put(2 * MiB, three);
  assertEquals(failed?.status, 500);
  assertEquals(env.ovirt.faults.fail500Once, false, "fires once");
  // The connection stays usable; what was lost reads back as before (zeroes).
  const lost = await a.request("GET", a.path, undefined, { Range: `bytes=${MiB}-${MiB + 3}` });
  assertEquals([lost?.status, lost?.body], [206, "\0\0\0\0"]);
  assertEquals((await a.put(2 * MiB, three))?.status, 200);
  assertEquals((await a.patch({ op: "flush" }))?.status, 200);
  a.close();
  b.close();
  assertEquals((await env.finalize(t.id)).phase, "finished_success");
  const image = await Deno.readFile(env.ovirt.disks()[0]!.path);
  assertBytesEqual(image.subarray(0, MiB), one);
  assertBytesEqual(image.subarray(MiB, 2 * MiB), new Uint8Array(MiB));
  assertBytesEqual(image.subarray(2 * MiB, 3 * MiB), three);
  assertBytesEqual(image.subarray(3 * MiB), four);
  assertEquals(env.ovirt.stats().droppedBytes, MiB);
});

Deno.test("imageio: writes not flushed before the connection closes, or before finalize, are lost", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk({ provisioned_size: 2 * MiB });
  const t = await env.newTransfer(disk.id);
  const closed = await env.raw(t.transfer_url);
  assertEquals((await closed.put(0, pattern(MiB, 7)))?.status, 200);
  closed.close();
  const open = await env.raw(t.transfer_url);
  assertEquals((await open.put(MiB, pattern(MiB, 8)))?.status, 200);
  // Still open and unflushed when the transfer is finalized.
  assertEquals((await env.finalize(t.id)).phase, "finished_success");
  assertEquals((await open.request("OPTIONS", open.path))?.status, 403);
  open.close();
  const image = await Deno.readFile(env.ovirt.disks()[0]!.path);
  assertBytesEqual(image, new Uint8Array(2 * MiB));
  assertEquals(env.ovirt.stats().droppedBytes, 2 * MiB);
});

Deno.test("imageio: on a preallocated disk, lost writes and zeroes keep the space allocated", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk({ sparse: false, provisioned_size: 2 * MiB });
  const t = await env.newTransfer(disk.id);
  const c = await env.raw(t.transfer_url);
  assertEquals((await c.put(0, pattern(MiB, 3)))?.status, 200);
  assertEquals((await c.patch({ op: "zero", offset: MiB, size: MiB, flush: true }))?.status, 200);
  assertEquals((await c.put(MiB, pattern(MiB, 4)))?.status, 200);
  env.ovirt.faults.fail500Once = true;
  assertEquals((await c.put(0, pattern(4096, 5)))?.status, 500);
  c.close();
  assertEquals((await env.finalize(t.id)).phase, "finished_success");
  const path = env.ovirt.disks()[0]!.path;
  const image = await Deno.readFile(path);
  assertBytesEqual(image.subarray(0, MiB), pattern(MiB, 3));
  assertBytesEqual(image.subarray(MiB), new Uint8Array(MiB));
  assert((await Deno.stat(path)).blocks! * 512 >= 2 * MiB, "still preallocated");
  assertEquals(env.ovirt.stats().droppedBytes, MiB);
});

Deno.test("faults: dropConnectionAfterBytes cuts a PUT short and loses the connection's unflushed writes", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk({ provisioned_size: 2 * MiB });
  const t = await env.newTransfer(disk.id);
  const c = await env.raw(t.transfer_url);
  assertEquals((await c.put(0, pattern(MiB, 1), "y"))?.status, 200, "flushed: safe");
  env.ovirt.faults.dropConnectionAfterBytes = 100_000;
  assertEquals(await c.put(MiB, pattern(MiB, 2)), null, "no answer: the connection was dropped");
  c.close();
  assertEquals(env.ovirt.faults.dropConnectionAfterBytes, undefined, "fires once");
  const again = await env.raw(t.transfer_url);
  const back = await again.request("GET", again.path, undefined, {
    Range: `bytes=${MiB}-${MiB + 1}`,
  });
  assertEquals(back?.body, "\0\0");
  assertEquals((await again.put(MiB, pattern(MiB, 2)))?.status, 200);
  assertEquals((await again.patch({ op: "flush" }))?.status, 200);
  again.close();
  assertEquals((await env.finalize(t.id)).phase, "finished_success");
  const image = await Deno.readFile(env.ovirt.disks()[0]!.path);
  assertBytesEqual(image.subarray(0, MiB), pattern(MiB, 1));
  assertBytesEqual(image.subarray(MiB), pattern(MiB, 2));
});

Deno.test("faults: slowMs delays responses; failFinalize fails the transfer; pauseTransfer pauses it", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk();
  const t = await env.newTransfer(disk.id);
  env.ovirt.faults.slowMs = 300;
  const start = Date.now();
  assertEquals((await env.fetch(t.transfer_url, { method: "OPTIONS" })).status, 200);
  assert(Date.now() - start >= 290, "slow");
  delete env.ovirt.faults.slowMs;

  env.ovirt.faults.failFinalize = true;
  assertEquals((await env.finalize(t.id)).phase, "finished_failure");
  assertEquals((await env.api("GET", `/disks/${disk.id}`)).json.status, "illegal");
  env.ovirt.faults.failFinalize = false;

  const disk2 = await env.newDisk();
  const t2 = await env.newTransfer(disk2.id);
  env.ovirt.faults.pauseTransfer = true;
  await env.poll(`/imagetransfers/${t2.id}`, (j) => j.phase, ["paused_system"]);
  const deadline = Date.now() + 5000;
  while ((await env.fetch(t2.transfer_url, { method: "OPTIONS" })).status !== 403) {
    assert(Date.now() < deadline, "the ticket of a paused transfer goes");
    await sleep(20);
  }
  const t3 = await env.api("POST", "/imagetransfers", { disk: { id: (await env.newDisk()).id } });
  await env.poll(`/imagetransfers/${t3.json.id}`, (j) => j.phase, ["paused_system"]);
  env.ovirt.faults.pauseTransfer = false;
  assertEquals((await env.api("POST", `/imagetransfers/${t2.id}/cancel`, {})).status, 200);
  await env.poll(`/imagetransfers/${t2.id}`, (j) => j.phase, ["finished_failure"]);
  assertEquals(env.ovirt.transfers().map((x) => x.phase), [
    "finished_failure",
    "finished_failure",
    "paused_system",
  ]);
});

// --- VMs ------------------------------------------------------------------------------------------

Deno.test("vms: created from an OVF naming existing disks, with a job to poll by correlation id", async () => {
  await using env = await Env.start({
    existingVms: ["taken"],
    clusters: [{ name: "Default" }, { name: "nohosts", architecture: "undefined" }],
  });
  const disk = await env.newDisk();
  const cluster = (await env.api("GET", "/clusters?search=name%3DDefault")).json.cluster[0];
  const add = (name: string, disks: string[], extra: Record<string, unknown> = {}, cid = "c1") =>
    env.api("POST", `/vms?correlation_id=${cid}`, {
      cluster: { id: cluster.id },
      initialization: { configuration: { type: "ova", data: ovf(name, disks) } },
      ...extra,
    });

  assertEquals((await add("taken", [disk.id])).status, 409);
  assertEquals((await add("has space", [disk.id])).status, 400);
  assertEquals((await add("guest", [crypto.randomUUID()])).status, 400);
  const notXml = await env.api("POST", "/vms", {
    cluster: { id: cluster.id },
    initialization: { configuration: { type: "ova", data: "<ovf:Envelope><oops></ovf:Envelope>" } },
  });
  assertEquals(notXml.status, 400);
  assertStringIncludes(notXml.json.detail, "OVF");
  assertEquals((await add("guest", [disk.id], { cluster: { name: "nohosts" } })).status, 400);
  assertEquals((await add("guest", [disk.id], { cluster: { name: "nowhere" } })).status, 400);

  const vm = await add("guest", [disk.id], {}, "job-1");
  assertEquals(vm.status, 201, vm.text);
  assertEquals(vm.json.name, "guest");
  const jobs = await env.api("GET", "/jobs?search=correlation_id%3Djob-1");
  assertEquals(jobs.json.job.length, 1);
  assertEquals(jobs.json.job[0].status, "started");
  assertEquals(typeof jobs.json.job[0].start_time, "number");
  await env.poll("/jobs?search=correlation_id%3Djob-1", (j) => j.job[0].status, ["finished"]);
  assertEquals((await env.api("GET", "/jobs?search=correlation_id%3Dnone")).json, {});
  assertEquals((await env.api("GET", "/vms?search=name%3Dguest")).json.vm[0].status, "down");
  assertEquals((await add("guest", [disk.id])).status, 409, "the name is now in use");
  const vms = env.ovirt.vms();
  assertEquals(vms.map((v) => v.name), ["taken", "guest"]);
  assertStringIncludes(vms[1]!.ovf, disk.id);
});

// --- TLS, runner, clean-up ------------------------------------------------------------------------

Deno.test("tls: a client that trusts the test CA refuses a certificate from another CA", async () => {
  await using env = await Env.start({}, false);
  const other = await makeCertificate(env.dir.path, "impostor");
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(other.certFile),
    key: await Deno.readTextFile(other.keyFile),
    onListen: () => {},
    onError: () => new Response("error", { status: 500 }),
  }, () => new Response("impostor"));
  try {
    await assertRejects(() =>
      fetch(`https://127.0.0.1:${server.addr.port}/`, { client: env.client })
    );
    const trusting = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(other.caFile)] });
    const ok = await fetch(`https://localhost:${server.addr.port}/`, { client: trusting });
    assertEquals(await ok.text(), "impostor");
    trusting.close();
    // And the engine's certificate is good for the test CA, by address and by name.
    assertEquals((await env.login()).status, 200);
  } finally {
    await server.shutdown();
  }
});

Deno.test("main.ts prints a ready line, serves, and cleans up on SIGTERM", async () => {
  await using dir = await TempDir.create();
  const readyFile = dir.join("ready.json");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./main.ts", import.meta.url).pathname,
      "--dir",
      dir.path,
      "--ready-file",
      readyFile,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const ready = JSON.parse(out.split("\n")[0]!);
  assertEquals(JSON.parse(await Deno.readTextFile(readyFile)), ready);
  assertEquals([ready.storageDomain, ready.cluster], ["data", "Default"]);
  const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(ready.caFile)] });
  const r = await fetch(ready.engineUrl.replace(/\/api$/, "/sso/oauth/token"), {
    client,
    method: "POST",
    headers: { Accept: "application/json" },
    body: new URLSearchParams({
      grant_type: "password",
      scope: "ovirt-app-api",
      username: "admin@internal",
      password: await Deno.readTextFile(ready.passwordFile),
    }),
  });
  assertEquals(r.status, 200);
  await r.body?.cancel();
  client.close();
  child.kill("SIGTERM");
  while (!(await reader.read()).done) { /* drain */ }
  const [status, stderr] = await Promise.all([child.status, new Response(child.stderr).text()]);
  assertEquals(status.code, 0, stderr);
  assertEquals([...Deno.readDirSync(dir.path)], [], "everything removed");
});

Deno.test("dispose stops every process and removes every file, even mid-transfer", async () => {
  await using env = await Env.start();
  const disk = await env.newDisk();
  const t = await env.newTransfer(disk.id);
  const c = await env.raw(t.transfer_url);
  assertEquals((await c.put(0, pattern(4096, 1)))?.status, 200);
  const running = await run("pgrep", ["-f", env.dir.path]).catch(() => "");
  assert(running.trim() !== "", "qemu-nbd runs while the transfer does");
  await env.ovirt[Symbol.asyncDispose]();
  c.close();
  assertEquals(await run("pgrep", ["-f", env.dir.path]).catch(() => ""), "");
  assertEquals([...Deno.readDirSync(env.dir.path)], []);
});
