/** OVA manifests: parsing ovftool's lines, and hashing files and ranges of files in chunks. */

import { createHash } from "node:crypto";
import { assertEquals, assertRejects } from "../_assert.ts";
import { hashFile, parseManifest } from "../../src/input/ova_manifest.ts";

Deno.test("manifest lines of every algorithm ovftool writes, with CRLF and odd names", () => {
  const sha1 = "A".repeat(40);
  const sha256 = "0123456789abcdef".repeat(4);
  const sha512 = "f".repeat(128);
  const m = parseManifest(
    `SHA1(guest.ovf)= ${sha1}\r\n` +
      `SHA256(guest-disk1.vmdk)=${sha256}\n` +
      `SHA512(disk (1).vmdk) = ${sha512}\n` +
      `\n` +
      `MD5(guest.ovf)= ${"0".repeat(32)}\n` +
      `SHA256(short.vmdk)= abcd\n`,
  );
  assertEquals(m.entries, [
    { algorithm: "SHA1", file: "guest.ovf", digest: sha1.toLowerCase() },
    { algorithm: "SHA256", file: "guest-disk1.vmdk", digest: sha256 },
    { algorithm: "SHA512", file: "disk (1).vmdk", digest: sha512 },
  ]);
  assertEquals(m.unparsed, [`MD5(guest.ovf)= ${"0".repeat(32)}`, "SHA256(short.vmdk)= abcd"]);
});

Deno.test("hashFile hashes a whole file, or a range of it, across chunk boundaries", async () => {
  const path = await Deno.makeTempFile();
  try {
    const data = Uint8Array.from({ length: 9 * 1024 * 1024 + 17 }, (_, i) => (i * 31 + 7) & 0xff);
    await Deno.writeFile(path, data);
    const expect = (bytes: Uint8Array, alg: string) => createHash(alg).update(bytes).digest("hex");
    assertEquals(await hashFile(path, "SHA256"), expect(data, "sha256"));
    assertEquals(await hashFile(path, "SHA1"), expect(data, "sha1"));
    const offset = 1536;
    const length = 5 * 1024 * 1024 + 3;
    assertEquals(
      await hashFile(path, "SHA512", { offset, length }),
      expect(data.subarray(offset, offset + length), "sha512"),
    );
    await assertRejects(
      () => hashFile(path, "SHA1", { offset: data.length - 10, length: 20 }),
      Error,
      `ends at byte ${data.length}, before byte ${data.length + 10}`,
    );
    const ac = new AbortController();
    ac.abort(new Error("stop"));
    await assertRejects(() => hashFile(path, "SHA1", { signal: ac.signal }), Error, "stop");
  } finally {
    await Deno.remove(path);
  }
});
