/**
 * NBD readiness probe: a server is ready once it answers the fixed newstyle greeting. The probe
 * then ends the handshake politely with NBD_OPT_ABORT, so that neither qemu-nbd nor nbdkit
 * logs a broken connection.
 *
 * @module
 */

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const NBD_FLAG_C_FIXED_NEWSTYLE = 1;
const NBD_OPT_ABORT = 2;

/**
 * Connects to an NBD server on a unix socket and checks its greeting.
 *
 * @param socket Path of the unix socket.
 * @returns True when an NBD server answered.
 */
export async function nbdReady(socket: string): Promise<boolean> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    const greeting = await readExactly(conn, 18);
    if (!greeting) return false;
    const view = new DataView(greeting.buffer);
    if (view.getBigUint64(0) !== NBDMAGIC || view.getBigUint64(8) !== IHAVEOPT) return false;
    const out = new Uint8Array(4 + 16);
    const w = new DataView(out.buffer);
    w.setUint32(0, NBD_FLAG_C_FIXED_NEWSTYLE);
    w.setBigUint64(4, IHAVEOPT);
    w.setUint32(12, NBD_OPT_ABORT);
    w.setUint32(16, 0);
    await conn.write(out);
    // The server acknowledges the abort (or just closes); either way it was ready.
    await readExactly(conn, 20).catch(() => null);
    return true;
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(buf.subarray(got));
    if (r === null) return null;
    got += r;
  }
  return buf;
}
