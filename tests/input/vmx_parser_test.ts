/**
 * The VMX syntax (quoting, `|XX` escapes, case, repeated keys, comments, encodings, malformed
 * lines) and what vmFromVmx reads from it (memory, CPUs, firmware, disks in order, CD-ROMs,
 * NICs), on hand-written files and on the test fixture's ESXi- and Workstation-shaped ones.
 */

import { assert, assertEquals, assertThrows } from "../_assert.ts";
import {
  decodeVmx,
  parseVmx,
  vmFromVmx,
  VMX_DEFAULT_MEMORY,
  type VmxModel,
} from "../../src/input/vmx_parser.ts";
import { FIXTURE_GENID, vmwareVmx, vmxQuote } from "../../scripts/make_vmware_fixture.ts";

const MiB = 1024 * 1024;

function model(text: string): VmxModel {
  return vmFromVmx(parseVmx(text, "guest.vmx"), { defaultName: "guest" });
}

// ---------------------------------------------------------------------------------------------
// Syntax

Deno.test("key = value lines: spacing, tabs, comments, blank lines, CR-LF, a #! first line", () => {
  const vmx = parseVmx(
    [
      "#!/usr/bin/vmware",
      '.encoding = "UTF-8"',
      "",
      "   # an indented comment",
      'displayName="web"',
      'memSize\t=\t"2048"\r',
      '  numvcpus   =   "4"  ',
      'annotation = ""',
      'guestinfo.x = "a # not a comment" # a comment',
      "",
    ].join("\n"),
    "guest.vmx",
  );
  assertEquals(vmx.get("displayName"), "web");
  assertEquals(vmx.get("memSize"), "2048");
  assertEquals(vmx.get("numvcpus"), "4");
  assertEquals(vmx.get("annotation"), "");
  assertEquals(vmx.get("guestinfo.x"), "a # not a comment");
  assertEquals(vmx.get(".encoding"), "UTF-8");
  assertEquals(vmx.size, 6);
  assertEquals(vmx.line("memsize"), 6);
});

Deno.test("|XX escapes: quotes, pipes, any byte, multi-byte characters; a bare | stays", () => {
  const vmx = parseVmx(
    [
      'a = "Some |7Ctext|7C to test the |22escaping|22: |7C|7C|22|22 |45|73|63|61|70|65|64|21"',
      'b = "caf|C3|A9 |e2|82|ac"',
      'c = "a | b |zz |7"',
      'd = "line|0Abreak|09tab |23hash"',
    ].join("\n"),
    "guest.vmx",
  );
  assertEquals(vmx.get("a"), 'Some |text| to test the "escaping": ||"" Escaped!');
  assertEquals(vmx.get("b"), "café €");
  assertEquals(vmx.get("c"), "a | b |zz |7");
  assertEquals(vmx.get("d"), "line\nbreak\ttab #hash");
});

Deno.test("keys are case-insensitive; the last spelling is kept", () => {
  const vmx = parseVmx('MemSize = "1024"\nSCSI0:0.FileName = "a.vmdk"\n', "g.vmx");
  for (const k of ["memsize", "MEMSIZE", "memSize"]) assertEquals(vmx.get(k), "1024");
  assertEquals(vmx.get("scsi0:0.filename"), "a.vmdk");
  assert(vmx.has("Scsi0:0.fileName"));
  assert(!vmx.has("scsi0:1.fileName"));
  assertEquals(vmx.entries().map((e) => e.key), ["MemSize", "SCSI0:0.FileName"]);
});

Deno.test("a repeated key takes its last value, and is reported", () => {
  const text = 'memSize = "1024"\ndisplayName = "a"\nmemsize = "2048"\nMEMSIZE = "4096"\n';
  const vmx = parseVmx(text, "g.vmx");
  assertEquals(vmx.get("memSize"), "4096");
  assertEquals(vmx.line("memSize"), 4);
  assertEquals(vmx.duplicates, [{ key: "MEMSIZE", lines: [1, 3, 4] }]);
  // The map's order follows the winning line.
  assertEquals(vmx.entries().map((e) => e.line), [2, 4]);
  const m = vmFromVmx(vmx);
  assertEquals(m.memory, 4096 * MiB);
  assert(m.warnings.some((w) => w.includes("MEMSIZE on lines 1, 3, 4: the last one counts")));
});

Deno.test("unquoted one-word values (as Packer writes them) are accepted", () => {
  const vmx = parseVmx("numvcpus = 2\nfirmware=efi\n", "g.vmx");
  assertEquals([vmx.get("numvcpus"), vmx.get("firmware")], ["2", "efi"]);
});

Deno.test("malformed lines: the file and line are named, the line's text is not", () => {
  const cases: Array<[string, string]> = [
    ["displayName", 'line 2: expected KEY = "VALUE" (no "=")'],
    ['= "x"', 'line 2: expected KEY = "VALUE" (no key)'],
    ['displayName = "secret', 'line 2: expected KEY = "VALUE" (the value has no closing quote)'],
    ['displayName = "a" b', 'line 2: expected KEY = "VALUE" (text after the closing quote)'],
    ['displayName = "a""b"', 'line 2: expected KEY = "VALUE" (text after the closing quote)'],
    ["displayName = two words", 'line 2: expected KEY = "VALUE" (the value must be quoted)'],
    ["displayName =", 'line 2: expected KEY = "VALUE" (no value)'],
    ['display Name = "x"', 'line 2: expected KEY = "VALUE" (a key cannot hold spaces or quotes)'],
  ];
  for (const [line, message] of cases) {
    const e = assertThrows(
      () => parseVmx(`config.version = "8"\n${line}\nmemSize = "1"\n`, "guest.vmx"),
      SyntaxError,
    );
    assertEquals(e.message, `Cannot parse "guest.vmx" ${message}`);
    assert(!e.message.includes("secret"));
  }
  // The example of the error from the issue: line 12.
  const lines = Array.from({ length: 11 }, (_, i) => `k${i} = "v"`);
  assertThrows(
    () => parseVmx([...lines, "garbage"].join("\n"), "guest.vmx"),
    SyntaxError,
    'Cannot parse "guest.vmx" line 12: expected KEY = "VALUE"',
  );
});

Deno.test("a VMDK given instead of a VMX is named as such", () => {
  for (const head of ["# Disk DescriptorFile\nversion=1\n", "KDMV\x01\x00\x00\x00"]) {
    assertThrows(
      () => parseVmx(head, "guest.vmdk"),
      SyntaxError,
      'Cannot parse "guest.vmdk": it is a VMDK disk image, not a VMX file',
    );
  }
});

Deno.test("decodeVmx: .encoding is applied; UTF-8 by default, windows-1252 for old files", () => {
  const enc = new TextEncoder();
  const cat = (...parts: Array<string | number[]>) =>
    new Uint8Array(parts.flatMap((p) => typeof p === "string" ? [...enc.encode(p)] : p));
  // windows-1252, declared.
  assertEquals(
    parseVmx(
      decodeVmx(cat('.encoding = "windows-1252"\ndisplayName = "Caf', [0xe9], '"\n'), "g.vmx"),
      "g.vmx",
    ).get("displayName"),
    "Café",
  );
  // Shift_JIS, declared (a Japanese Workstation).
  assertEquals(
    parseVmx(
      decodeVmx(
        cat('.encoding = "Shift_JIS"\ndisplayName = "', [0x83, 0x65, 0x83, 0x58], '"\n'),
        "g.vmx",
      ),
      "g.vmx",
    ).get("displayName"),
    "テス",
  );
  // UTF-8 with a byte order mark, undeclared.
  assertEquals(
    parseVmx(decodeVmx(cat([0xef, 0xbb, 0xbf], 'displayName = "Café"\n'), "g.vmx"), "g.vmx")
      .get("displayName"),
    "Café",
  );
  // Not UTF-8 and undeclared: windows-1252.
  assertEquals(
    parseVmx(decodeVmx(cat('displayName = "Caf', [0xe9], '"\n'), "g.vmx"), "g.vmx").get(
      "displayName",
    ),
    "Café",
  );
  assertThrows(
    () => decodeVmx(cat('.encoding = "klingon"\n'), "g.vmx"),
    SyntaxError,
    'Cannot read "g.vmx": unknown character set .encoding = "klingon"',
  );
});

Deno.test("vmxQuote and parseVmx round-trip any text", () => {
  for (const s of ['a "quoted" |piped| #hash', "tab\tnewline\nbell\x07", "", "plain", "é ü 日本"]) {
    assertEquals(parseVmx(`k = ${vmxQuote(s)}\n`, "g.vmx").get("k"), s);
  }
});

// ---------------------------------------------------------------------------------------------
// The VM

Deno.test("memory, vCPUs, topology, guest OS, name", () => {
  const m = model(
    'displayName = "db |7C prod"\nmemSize = "3072"\nnumvcpus = "8"\ncpuid.coresPerSocket = "4"\n' +
      'guestOS = "windows2019srvNext-64"\n',
  );
  assertEquals(m.name, "db | prod");
  assertEquals(m.memory, 3072 * MiB);
  assertEquals(m.vcpus, 8);
  assertEquals(m.cpuTopology, { sockets: 2, cores: 4, threads: 1 });
  assertEquals(m.guestOs, "windows2019srvNext-64");
  assertEquals(m.firmware, "bios");
  assertEquals(m.warnings, []);
});

Deno.test("defaults: VMware's 32 MiB, one vCPU, BIOS, the file's name", () => {
  const m = model('config.version = "8"\n');
  assertEquals([m.name, m.memory, m.vcpus, m.firmware], ["guest", VMX_DEFAULT_MEMORY, 1, "bios"]);
  assertEquals(m.cpuTopology, undefined);
  assert(m.warnings.some((w) => w.includes("no memSize")));
  assertEquals(vmFromVmx(parseVmx("", "x.vmx")).name, "vmshift-guest");
});

Deno.test("a topology that does not divide the vCPUs is ignored with a warning", () => {
  const m = model('memSize = "1024"\nnumvcpus = "6"\ncpuid.coresPerSocket = "4"\n');
  assertEquals(m.cpuTopology, undefined);
  assert(m.warnings.some((w) => w.includes('"guest.vmx" line 3: cpuid.coresPerSocket = 4')));
});

Deno.test("firmware: efi is UEFI, with or without secure boot; bios, absent, unknown are BIOS", () => {
  const mem = 'memSize = "1024"\n';
  assertEquals(model(`${mem}firmware = "efi"\n`).firmware, "uefi");
  assertEquals(model(`${mem}firmware = "EFI"\n`).secureBoot, undefined);
  const sb = model(`${mem}firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n`);
  assertEquals([sb.firmware, sb.secureBoot], ["uefi", true]);
  assertEquals(
    model(`${mem}firmware = "efi"\nuefi.secureBoot.enabled = "false"\n`).secureBoot,
    false,
  );
  assertEquals(model(`${mem}firmware = "bios"\n`).firmware, "bios");
  const odd = model(`${mem}firmware = "coreboot"\n`);
  assertEquals(odd.firmware, "bios");
  assert(odd.warnings.some((w) => w.includes('unknown firmware "coreboot"')));
  const biosSb = model(`${mem}uefi.secureBoot.enabled = "TRUE"\n`);
  assertEquals(biosSb.secureBoot, undefined);
  assert(biosSb.warnings.some((w) => w.includes("the firmware is BIOS")));
});

Deno.test("vm.genid and vm.genidX make the generation ID, as virt-v2v lays it out", () => {
  // The values of a Windows 11 VM on ESXi 8.
  const m = model(
    'memSize = "1024"\nvm.genid = "3571897048718482545"\nvm.genidX = "2627911129287880091"\n',
  );
  assertEquals(m.genid, "eb219c71-ed70-3191-9bed-7fb23f377824");
  // Negative (signed 64-bit) values, as the fixture writes them.
  const n = model(
    `memSize = "1024"\nvm.genid = "${FIXTURE_GENID.lo}"\nvm.genidX = "${FIXTURE_GENID.hi}"\n`,
  );
  assertEquals(n.genid, FIXTURE_GENID.uuid);
  assertEquals(model('memSize = "1024"\nvm.genid = "1"\n').genid, undefined);
  const bad = model('memSize = "1024"\nvm.genid = "x"\nvm.genidX = "1"\n');
  assertEquals(bad.genid, undefined);
  assert(bad.warnings.some((w) => w.includes("invalid vm.genid")));
});

Deno.test("malformed values vmshift needs: the file and line are named", () => {
  assertThrows(
    () => model('displayName = "x"\nmemSize = "lots"\n'),
    SyntaxError,
    'Cannot parse "guest.vmx" line 2: memSize must be a whole number, not "lots"',
  );
  assertThrows(() => model('numvcpus = "0"\n'), SyntaxError, "line 1: numvcpus must be positive");
  assertThrows(
    () => model('memSize = "1024"\nscsi0:0.fileName = "a.vmdk"\nscsi0:0.present = "maybe"\n'),
    SyntaxError,
    'Cannot parse "guest.vmx" line 3: scsi0:0.present must be TRUE or FALSE, not "maybe"',
  );
});

Deno.test("disks: SCSI, NVMe, SATA, IDE, each by controller then unit; buses recorded", () => {
  const m = model(`memSize = "1024"
ide0:0.present = "TRUE"
ide0:0.fileName = "ide.vmdk"
sata0:2.present = "TRUE"
sata0:2.fileName = "sata2.vmdk"
scsi1:0.present = "TRUE"
scsi1:0.deviceType = "scsi-hardDisk"
scsi1:0.fileName = "s10.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "s01.vmdk"
scsi0:10.present = "TRUE"
scsi0:10.fileName = "s010.vmdk"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "/vmfs/volumes/ds2/guest/nvme.vmdk"
scsi0:0.present = "TRUE"
scsi0:0.deviceType = "disk"
scsi0:0.fileName = "s00.vmdk"
scsi0.virtualDev = "pvscsi"
ide1:1.present = "TRUE"
ide1:1.deviceType = "ata-hardDisk"
ide1:1.fileName = "ide11.vmdk"
`);
  assertEquals(
    m.disks.map((d) => [d.device, d.bus, d.controller, d.unit, d.fileName]),
    [
      ["scsi0:0", "scsi", 0, 0, "s00.vmdk"],
      ["scsi0:1", "scsi", 0, 1, "s01.vmdk"],
      ["scsi0:10", "scsi", 0, 10, "s010.vmdk"],
      ["scsi1:0", "scsi", 1, 0, "s10.vmdk"],
      ["nvme0:0", "nvme", 0, 0, "/vmfs/volumes/ds2/guest/nvme.vmdk"],
      ["sata0:2", "sata", 0, 2, "sata2.vmdk"],
      ["ide0:0", "ide", 0, 0, "ide.vmdk"],
      ["ide1:1", "ide", 1, 1, "ide11.vmdk"],
    ],
  );
  assertEquals(m.disks[0]!.controllerModel, "pvscsi");
  assertEquals(m.disks[0]!.deviceType, "disk");
  assertEquals(m.disks[0]!.line, 17);
  assertEquals(m.skipped, []);
});

Deno.test("bios.hddOrder puts the boot disk first", () => {
  const m = model(`memSize = "1024"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "data.vmdk"
sata0:0.present = "TRUE"
sata0:0.fileName = "boot.vmdk"
bios.hddOrder = "sata0:0"
`);
  assertEquals(m.disks.map((d) => d.fileName), ["boot.vmdk", "data.vmdk"]);
});

Deno.test("a device is there when present = TRUE; FALSE on its controller removes it", () => {
  const m = model(`memSize = "1024"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "a.vmdk"
scsi0:1.present = "FALSE"
scsi0:1.fileName = "gone.vmdk"
scsi1.present = "FALSE"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "orphan.vmdk"
scsi0:2.fileName = "no-present-key.vmdk"
scsi0:3.present = "TRUE"
`);
  assertEquals(m.disks.map((d) => d.fileName), ["a.vmdk"]);
  assertEquals(m.warnings, [
    "scsi1:0 is on controller scsi1, which is not present: ignored",
    'scsi0:2 has no scsi0:2.present = "TRUE": ignored, as VMware ignores it',
    "scsi0:3 has no fileName: ignored",
  ]);
});

Deno.test("CD-ROMs of every kind and on every bus are recognised, skipped, never disks", () => {
  const m = model(`memSize = "1024"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "guest.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "debian-12.iso"
ide1:1.present = "TRUE"
ide1:1.deviceType = "atapi-cdrom"
ide1:1.fileName = "/dev/cdrom"
sata0:0.present = "TRUE"
sata0:0.deviceType = "CDROM-RAW"
sata0:0.fileName = "auto detect"
scsi0:1.present = "TRUE"
scsi0:1.deviceType = "cdrom-image"
scsi0:1.fileName = "/vmfs/volumes/ds1/iso/win.iso"
sata0:1.present = "TRUE"
sata0:1.deviceType = "cdrom-image"
sata0:2.present = "FALSE"
sata0:2.deviceType = "cdrom-image"
floppy0.present = "TRUE"
floppy0.fileName = "/dev/fd0"
floppy1.present = "FALSE"
scsi0:2.present = "TRUE"
scsi0:2.deviceType = "scsi-passthru"
scsi0:2.fileName = "/vmfs/devices/genscsi/mpx.vmhba32:C0:T0:L0"
`);
  assertEquals(m.disks.map((d) => d.fileName), ["guest.vmdk"]);
  assertEquals(m.skipped, [
    {
      device: "scsi0:1",
      kind: "cdrom",
      deviceType: "cdrom-image",
      fileName: "/vmfs/volumes/ds1/iso/win.iso",
    },
    {
      device: "scsi0:2",
      kind: "other",
      deviceType: "scsi-passthru",
      fileName: "/vmfs/devices/genscsi/mpx.vmhba32:C0:T0:L0",
    },
    { device: "sata0:0", kind: "cdrom", deviceType: "CDROM-RAW", fileName: "auto detect" },
    { device: "sata0:1", kind: "cdrom", deviceType: "cdrom-image" },
    { device: "ide1:0", kind: "cdrom", deviceType: "cdrom-image", fileName: "debian-12.iso" },
    { device: "ide1:1", kind: "cdrom", deviceType: "atapi-cdrom", fileName: "/dev/cdrom" },
    { device: "floppy0", kind: "floppy", fileName: "/dev/fd0" },
  ]);
  assert(m.warnings.some((w) => w.includes('scsi0:2 is a "scsi-passthru" device')));
});

Deno.test("NICs: MACs by address type, networks, models, order by number", () => {
  const m = model(`memSize = "1024"
ethernet10.present = "TRUE"
ethernet10.virtualDev = "e1000"
ethernet10.networkName = "Ten"
ethernet2.present = "TRUE"
ethernet2.virtualDev = "E1000E"
ethernet2.addressType = "static"
ethernet2.address = "00:50:56:3F:00:02"
ethernet2.generatedAddress = "00:50:56:aa:aa:aa"
ethernet2.networkName = "DMZ |22A|22"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:9a:3c:00"
ethernet1.present = "TRUE"
ethernet1.connectionType = "nat"
ethernet1.addressType = "generated"
ethernet1.generatedAddress = "00:0c:29:4c:59:e1"
ethernet3.present = "TRUE"
ethernet3.connectionType = "custom"
ethernet3.vnet = "vmnet2"
ethernet3.virtualDev = "vlance"
ethernet3.generatedAddress = "not a mac"
ethernet4.present = "FALSE"
ethernet4.networkName = "gone"
ethernet5.networkName = "no present key"
ethernet6.pciSlotNumber = "-1"
`);
  assertEquals(m.nics, [
    { mac: "00:50:56:9a:3c:00", network: "VM Network", model: "vmxnet3" },
    { mac: "00:0c:29:4c:59:e1", network: "ethernet1" },
    { mac: "00:50:56:3f:00:02", network: 'DMZ "A"', model: "e1000e" },
    { network: "vmnet2", model: "unknown" },
    { network: "Ten", model: "e1000" },
  ]);
  assert(m.warnings.some((w) => w.includes('ethernet3 has an invalid MAC address "not a mac"')));
});

Deno.test("the fixture's ESXi VMX: every field vmshift reads, among the keys it ignores", () => {
  const text = vmwareVmx({
    name: "web01",
    platform: "esxi",
    vcpus: 4,
    coresPerSocket: 2,
    memoryMiB: 4096,
    firmware: "efi",
    secureBoot: true,
    guestOS: "windows2019srvNext-64",
    disks: [
      { device: "scsi0:0", fileName: "web01.vmdk" },
      { device: "nvme0:0", fileName: "web01_1.vmdk" },
      { device: "sata0:1", fileName: "web01_2.vmdk" },
    ],
    cdrom: { device: "sata0:0", iso: "win.iso" },
    nics: [
      { network: "VM Network", mac: "00:50:56:9a:3c:00", model: "vmxnet3", addressType: "vpx" },
      { network: "Backup", mac: "00:50:56:9a:3c:01", model: "e1000e", addressType: "static" },
    ],
    genid: true,
    extraLines: [],
  });
  const m = vmFromVmx(parseVmx(text, "web01.vmx"));
  assertEquals(m, {
    name: "web01",
    memory: 4096 * MiB,
    vcpus: 4,
    cpuTopology: { sockets: 2, cores: 2, threads: 1 },
    firmware: "uefi",
    secureBoot: true,
    guestOs: "windows2019srvNext-64",
    genid: FIXTURE_GENID.uuid,
    disks: [
      {
        device: "scsi0:0",
        bus: "scsi",
        controller: 0,
        unit: 0,
        fileName: "web01.vmdk",
        deviceType: "scsi-hardDisk",
        controllerModel: "pvscsi",
        line: m.disks[0]!.line,
      },
      {
        device: "nvme0:0",
        bus: "nvme",
        controller: 0,
        unit: 0,
        fileName: "web01_1.vmdk",
        line: m.disks[1]!.line,
      },
      {
        device: "sata0:1",
        bus: "sata",
        controller: 0,
        unit: 1,
        fileName: "web01_2.vmdk",
        line: m.disks[2]!.line,
      },
    ],
    skipped: [{
      device: "sata0:0",
      kind: "cdrom",
      deviceType: "cdrom-image",
      fileName: "/vmfs/volumes/64f1c2a7-1b2c3d4e-5f60-a0b1c2d3e4f5/iso/win.iso",
    }],
    nics: [
      { mac: "00:50:56:9a:3c:00", network: "VM Network", model: "vmxnet3" },
      { mac: "00:50:56:9a:3c:01", network: "Backup", model: "e1000e" },
    ],
    warnings: [],
  });
});

Deno.test("the fixture's Workstation VMX: custom vnets, generated MACs, an IDE CD-ROM", () => {
  const text = vmwareVmx({
    name: "desk",
    platform: "workstation",
    vcpus: 1,
    memoryMiB: 1024,
    firmware: "bios",
    secureBoot: false,
    guestOS: "ubuntu-64",
    disks: [{ device: "scsi0:0", fileName: "desk.vmdk" }],
    cdrom: { device: "ide1:0", iso: "ubuntu.iso" },
    nics: [{
      network: "vmnet8",
      mac: "00:0c:29:9a:3c:00",
      model: "e1000",
      addressType: "generated",
    }],
    genid: false,
    extraLines: ['ethernet0.linkStatePropagation.enable = "TRUE"'],
  });
  const m = vmFromVmx(parseVmx(text, "desk.vmx"));
  assertEquals([m.name, m.firmware, m.genid, m.secureBoot], ["desk", "bios", undefined, undefined]);
  assertEquals(m.nics, [{ mac: "00:0c:29:9a:3c:00", network: "vmnet8", model: "e1000" }]);
  assertEquals(m.skipped.map((s) => [s.device, s.kind, s.fileName]), [
    ["ide1:0", "cdrom", "ubuntu.iso"],
  ]);
});
