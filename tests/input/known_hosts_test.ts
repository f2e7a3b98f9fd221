import { Buffer } from "node:buffer";
import { join } from "node:path";
import { assert, assertEquals } from "../_assert.ts";
import { run } from "../../src/process.ts";
import {
  checkHostKey,
  entryMatches,
  fingerprint,
  keyBlobType,
  knownHostsLine,
  knownKeyTypes,
  parseKnownHosts,
} from "../../src/input/known_hosts.ts";

/** A key blob in SSH wire format: the type string, then some key bytes. */
function blob(type: string, fill: number): Uint8Array {
  const t = new TextEncoder().encode(type);
  const out = new Uint8Array(4 + t.length + 4 + 32);
  const v = new DataView(out.buffer);
  v.setUint32(0, t.length);
  out.set(t, 4);
  v.setUint32(4 + t.length, 32);
  out.fill(fill, 8 + t.length);
  return out;
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64");
const ED_A = blob("ssh-ed25519", 1);
const ED_B = blob("ssh-ed25519", 2);
const RSA_A = blob("ssh-rsa", 3);

Deno.test("parseKnownHosts skips comments, blank and malformed lines, and keeps markers", () => {
  const entries = parseKnownHosts(
    [
      "# comment",
      "",
      `esxi.lab,10.0.0.5 ssh-ed25519 ${b64(ED_A)} root@esxi`,
      "garbage",
      `@revoked * ssh-rsa ${b64(RSA_A)}`,
      `@cert-authority *.lab ssh-ed25519 ${b64(ED_B)}`,
      `@bogus h ssh-ed25519 ${b64(ED_B)}`,
    ].join("\n"),
  );
  assertEquals(entries.map((e) => [e.line, e.marker ?? "", e.hosts, e.keyType]), [
    [3, "", "esxi.lab,10.0.0.5", "ssh-ed25519"],
    [5, "@revoked", "*", "ssh-rsa"],
    [6, "@cert-authority", "*.lab", "ssh-ed25519"],
  ]);
});

Deno.test("host patterns: ports, wildcards, negation, case", () => {
  const [plain, bracket, wild] = parseKnownHosts(
    [
      `Esxi.LAB ssh-ed25519 ${b64(ED_A)}`,
      `[esxi.lab]:2222 ssh-ed25519 ${b64(ED_A)}`,
      `*.lab,!bad.lab ssh-ed25519 ${b64(ED_A)}`,
    ].join("\n"),
  );
  assert(entryMatches(plain!, "esxi.lab", 22));
  assert(!entryMatches(plain!, "esxi.lab", 2222), "a plain name is for port 22 only");
  assert(entryMatches(bracket!, "ESXI.lab", 2222));
  assert(!entryMatches(bracket!, "esxi.lab", 22));
  assert(entryMatches(wild!, "a.lab", 22));
  assert(!entryMatches(wild!, "bad.lab", 22), "a matching negation wins");
  assert(!entryMatches(wild!, "a.lab.example", 22));
});

Deno.test("hashed entries written by ssh-keygen -H match their host and port only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "known_hosts");
    await Deno.writeTextFile(
      file,
      `[127.0.0.1]:2222 ssh-ed25519 ${b64(ED_A)}\nesxi.lab ssh-ed25519 ${b64(ED_B)}\n`,
    );
    await run("ssh-keygen", ["-q", "-H", "-f", file]);
    const [a, b] = parseKnownHosts(await Deno.readTextFile(file));
    assert(a!.hosts.startsWith("|1|") && b!.hosts.startsWith("|1|"));
    assert(entryMatches(a!, "127.0.0.1", 2222));
    assert(!entryMatches(a!, "127.0.0.1", 22));
    assert(entryMatches(b!, "esxi.lab", 22));
    assert(!entryMatches(b!, "esxi.lab2", 22));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkHostKey: known, changed, unknown with other types, revoked", () => {
  const entries = parseKnownHosts(
    [
      `[h]:2222 ssh-ed25519 ${b64(ED_A)}`,
      `[other]:2222 ssh-rsa ${b64(RSA_A)}`,
      `[h]:2222 ssh-rsa ${b64(blob("ssh-rsa", 9))}`,
      `@revoked * ssh-ed25519 ${b64(blob("ssh-ed25519", 7))}`,
    ].join("\n"),
  );
  assertEquals(checkHostKey(entries, "h", 2222, ED_A), { status: "known", line: 1 });
  assertEquals(checkHostKey(entries, "h", 2222, ED_B), { status: "changed", line: 1 });
  assertEquals(checkHostKey(entries, "h", 2222, blob("ecdsa-sha2-nistp256", 4)), {
    status: "unknown",
    knownTypes: ["ssh-ed25519", "ssh-rsa"],
  });
  assertEquals(checkHostKey(entries, "new", 22, ED_A), { status: "unknown", knownTypes: [] });
  assertEquals(checkHostKey(entries, "h", 2222, blob("ssh-ed25519", 7)), {
    status: "revoked",
    line: 4,
  });
  assertEquals(knownKeyTypes(entries, "h", 2222), ["ssh-ed25519", "ssh-rsa"]);
});

Deno.test("fingerprint and known_hosts line agree with ssh-keygen", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const key = join(dir, "k");
    await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key]);
    const pub = (await Deno.readTextFile(`${key}.pub`)).trim().split(/\s+/);
    const keyBlob = new Uint8Array(Buffer.from(pub[1]!, "base64"));
    assertEquals(keyBlobType(keyBlob), "ssh-ed25519");
    const listed = await run("ssh-keygen", ["-l", "-E", "sha256", "-f", `${key}.pub`]);
    assertEquals(fingerprint(keyBlob), listed.split(" ")[1]);
    assertEquals(knownHostsLine("H", 2222, keyBlob), `[h]:2222 ssh-ed25519 ${pub[1]}`);
    assertEquals(knownHostsLine("h", 22, keyBlob), `h ssh-ed25519 ${pub[1]}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
