import { assertEquals, assertThrows } from "./_assert.ts";
import { parseCli, parseRate } from "../src/cli.ts";
import { UsageError } from "../src/errors.ts";

Deno.test("two-letter options take one dash, as in virt-v2v", () => {
  const cli = parseCli([
    "-i",
    "disk",
    "guest.img",
    "-o",
    "local",
    "-os",
    "/var/tmp",
    "-of",
    "qcow2",
    "-oa",
    "preallocated",
    "-on",
    "new",
    "-oo",
    "rhv-direct",
    "-oo",
    "rhv-cafile=/ca.pem",
  ]);
  assertEquals(cli.input?.mode, "disk");
  assertEquals(cli.input?.args, ["guest.img"]);
  assertEquals(cli.output?.storage, "/var/tmp");
  assertEquals(cli.output?.format, "qcow2");
  assertEquals(cli.output?.allocation, "preallocated");
  assertEquals(cli.output?.name, "new");
  assertEquals(cli.output?.options, [["rhv-direct", ""], ["rhv-cafile", "/ca.pem"]]);
});

Deno.test("two-letter options also take two dashes", () => {
  const cli = parseCli(["-i", "disk", "g", "--ic", "vpx://x", "--io", "a=b", "-o", "null"]);
  assertEquals(cli.input?.conn, "vpx://x");
  assertEquals(cli.input?.options, [["a", "b"]]);
});

Deno.test("input options: -ic -if -io -ip -it", () => {
  const cli = parseCli([
    "-i",
    "vmx",
    "-it",
    "ssh",
    "-ic",
    "ssh://root@h/x.vmx",
    "-if",
    "raw",
    "-ip",
    "pw.txt",
    "-io",
    "k=v=w",
    "x.vmx",
  ]);
  assertEquals(cli.input, {
    mode: "vmx",
    args: ["x.vmx"],
    conn: "ssh://root@h/x.vmx",
    format: "raw",
    transport: "ssh",
    passwordFile: "pw.txt",
    options: [["k", "v=w"]],
  });
});

Deno.test("flags: -v -x -q, bundled or not, --machine-readable, --print-source", () => {
  const cli = parseCli(["-vx", "-q", "--machine-readable", "--print-source", "-i", "disk", "f"]);
  assertEquals(
    [cli.verbose, cli.trace, cli.quiet, cli.machineReadable, cli.printSource],
    [true, true, true, true, true],
  );
  assertEquals(parseCli(["--help"]).help, true);
  assertEquals(parseCli(["-h"]).help, true);
  assertEquals(parseCli(["-V"]).version, true);
  assertEquals(parseCli(["--version"]).version, true);
});

Deno.test("unknown options are refused, spelled as the user typed them", () => {
  const e1 = assertThrows(() => parseCli(["-ox", "a"]), UsageError);
  assertEquals(e1.message, 'Unknown option "-ox": see vmshift --help');
  const e2 = assertThrows(() => parseCli(["--frobnicate"]), UsageError);
  assertEquals(e2.message, 'Unknown option "--frobnicate": see vmshift --help');
});

Deno.test("an option without its value is refused by name", () => {
  const e = assertThrows(() => parseCli(["-i", "disk", "f", "-o", "local", "-os"]), UsageError);
  assertEquals(e.message, 'Option "-os" needs a value: see vmshift --help');
});

Deno.test("output options without -o, input options without -i, are refused", () => {
  assertEquals(
    assertThrows(() => parseCli(["-os", "/tmp"]), UsageError).message,
    "-os needs an output mode: -o MODE",
  );
  assertEquals(
    assertThrows(() => parseCli(["-ic", "x"]), UsageError).message,
    "-ic needs an input mode: -i MODE",
  );
  assertEquals(
    assertThrows(() => parseCli(["guest.img"]), UsageError).message,
    'Unexpected argument "guest.img": give the input mode first, e.g. -i disk FILE',
  );
});

Deno.test("-io needs KEY=VALUE; -oo takes a bare key", () => {
  assertThrows(() => parseCli(["-i", "disk", "-io", "novalue", "f"]), UsageError);
  assertEquals(parseCli(["-o", "null", "-oo", "flag"]).output?.options, [["flag", ""]]);
});

Deno.test("-on refuses names that cannot be file names", () => {
  for (const bad of ["", "a/b", "..", "x\ny"]) {
    assertThrows(() => parseCli(["-o", "null", "-on", bad]), UsageError, "Bad -on");
  }
});

Deno.test("--bandwidth takes bits per second with k/M/G", () => {
  assertEquals(parseRate("100M"), 100 * 2 ** 20);
  assertEquals(parseRate("1.5k"), 1536);
  assertEquals(parseRate("42"), 42);
  for (const bad of ["", "0", "-5", "10X", "fast"]) assertThrows(() => parseRate(bad), UsageError);
  assertEquals(parseCli(["-i", "disk", "f", "--bandwidth", "1G"]).input?.bandwidth, 2 ** 30);
  assertEquals(
    parseCli(["-i", "disk", "f", "--bandwidth-file", "/r"]).input?.bandwidthFile,
    "/r",
  );
  assertThrows(() => parseCli(["--bandwidth-file", "/r"]), UsageError, "needs an input mode");
});

Deno.test("arguments after -- are positional", () => {
  assertEquals(parseCli(["-i", "disk", "--", "-weird-name.img"]).input?.args, [
    "-weird-name.img",
  ]);
});

Deno.test("--parallel takes a whole number from 1", () => {
  assertEquals(parseCli(["-o", "null"]).parallel, 1);
  assertEquals(parseCli(["--parallel", "3", "-o", "null"]).parallel, 3);
  for (const bad of ["0", "1.5", "x"]) {
    assertThrows(() => parseCli(["--parallel", bad]), UsageError, "Bad --parallel");
  }
  assertThrows(() => parseCli(["--parallel", "-1"]), UsageError, '"--parallel" needs a value');
  assertThrows(() => parseCli(["--help=x"]), UsageError, '"--help" takes no value');
});
