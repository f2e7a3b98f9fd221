/**
 * Test certificates, made with `openssl` at start: a CA, and server certificates it signs for
 * `IP:127.0.0.1` and `DNS:localhost`. EC P-256 keys, so that making them takes milliseconds.
 *
 * @module
 */

import { join } from "node:path";
import { run } from "../../src/process.ts";

/** A certificate authority: its certificate (PEM) and the key that signs with it. */
export interface CertificateAuthority {
  /** The CA certificate (PEM): what a client trusts. */
  caFile: string;
  /** The CA's private key. */
  keyFile: string;
}

/** A server certificate and its key, and the CA that signed it. */
export interface CertificateFiles {
  /** The server certificate (PEM). */
  certFile: string;
  /** Its private key (PEM, PKCS#8). */
  keyFile: string;
  /** The certificate of the CA that signed it (PEM). */
  caFile: string;
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/**
 * Makes a certificate authority in `dir`: `NAME-ca.pem` and `NAME-ca.key`.
 *
 * @param dir The directory.
 * @param name Prefix of the file names and the CA's common name.
 * @returns The CA's files.
 */
export async function makeCa(dir: string, name: string): Promise<CertificateAuthority> {
  const caFile = join(dir, `${name}-ca.pem`);
  const keyFile = join(dir, `${name}-ca.key`);
  await run("openssl", [
    "req",
    "-x509",
    ...EC,
    "-keyout",
    keyFile,
    "-out",
    caFile,
    "-days",
    "7",
    "-subj",
    `/O=vmshift tests/CN=${name} test CA`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ], { what: `Cannot make the test CA "${name}"` });
  return { caFile, keyFile };
}

/**
 * Makes a server certificate for `127.0.0.1` and `localhost`, signed by `ca`: `NAME.pem` and
 * `NAME.key` in `dir`.
 *
 * @param dir The directory.
 * @param name Prefix of the file names.
 * @param ca The signing CA.
 * @returns The certificate, its key and the CA certificate.
 */
export async function makeServerCertificate(
  dir: string,
  name: string,
  ca: CertificateAuthority,
): Promise<CertificateFiles> {
  const certFile = join(dir, `${name}.pem`);
  const keyFile = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  await Deno.writeTextFile(
    ext,
    [
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      "",
    ].join("\n"),
  );
  await run("openssl", [
    "req",
    "-new",
    ...EC,
    "-keyout",
    keyFile,
    "-out",
    csr,
    "-subj",
    `/O=vmshift tests/CN=localhost`,
  ], { what: `Cannot make the key of "${name}"` });
  const serial = "0x" + [...crypto.getRandomValues(new Uint8Array(8))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    ca.caFile,
    "-CAkey",
    ca.keyFile,
    "-set_serial",
    serial,
    "-days",
    "7",
    "-extfile",
    ext,
    "-out",
    certFile,
  ], { what: `Cannot sign the certificate of "${name}"` });
  await Deno.remove(csr);
  await Deno.remove(ext);
  return { certFile, keyFile, caFile: ca.caFile };
}
