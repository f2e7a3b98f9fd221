/**
 * Tests of the libvirt domain XML generator. Documents are validated against libvirt's own
 * RELAX NG schema (`/usr/share/libvirt/schemas/domain.rng`, shipped by Debian's `libvirt0`,
 * which libguestfs depends on) and read back with XPath, both through `xmllint` (Debian
 * `libxml2-utils`).
 */

import { assert, assertEquals, assertThrows } from "../_assert.ts";
import {
  isWindowsGuest,
  libvirtXml,
  type TargetDisk,
  xmlAttr,
  xmlText,
} from "../../src/output/libvirt_xml.ts";
import { run } from "../../src/process.ts";
import { TempDir } from "../../src/tmpdir.ts";
import type { Vm } from "../../src/vm.ts";

const SCHEMA = "/usr/share/libvirt/schemas/domain.rng";

function vmWith(overrides: Partial<Vm> = {}, diskCount = 1): Vm {
  return {
    name: "guest",
    memory: 2 * 1024 ** 3,
    vcpus: 2,
    disks: Array.from({ length: diskCount }, (_, index) => ({
      index,
      source: `[ds1] guest/guest_${index}.vmdk`,
      virtualSize: 1024 ** 3,
    })),
    nics: [{ mac: "00:50:56:aa:bb:cc", network: "VM Network" }, {}],
    ...overrides,
  };
}

function targets(count: number, format: "raw" | "qcow2" = "qcow2"): TargetDisk[] {
  return Array.from({ length: count }, (_, i) => ({ path: `/var/lib/vms/guest-${i}`, format }));
}

/** A written document that XPath queries can read back. */
class Doc {
  readonly path: string;
  constructor(path: string) {
    this.path = path;
  }

  static async write(dir: TempDir, xml: string): Promise<Doc> {
    const path = dir.join(`domain-${crypto.randomUUID()}.xml`);
    await Deno.writeTextFile(path, xml);
    return new Doc(path);
  }

  /** The XPath expression's value as a string (wrap node sets in `string()` or `count()`). */
  async get(expr: string): Promise<string> {
    const out = await run("xmllint", ["--xpath", expr, this.path]);
    return out.endsWith("\n") ? out.slice(0, -1) : out;
  }

  async count(expr: string): Promise<number> {
    return Number(await this.get(`count(${expr})`));
  }

  /** Validates against libvirt's domain schema; throws with xmllint's complaint if invalid. */
  async validate(): Promise<void> {
    await run("xmllint", ["--noout", "--relaxng", SCHEMA, this.path], {
      what: "The domain XML does not validate",
    });
  }
}

Deno.test("libvirt XML validates against libvirt's domain schema", async () => {
  await using dir = await TempDir.create();
  const cases: Array<[string, string]> = [
    ["bios", libvirtXml(vmWith(), targets(1))],
    ["uefi", libvirtXml(vmWith({ firmware: "uefi" }), targets(1))],
    ["secure boot", libvirtXml(vmWith({ firmware: "uefi", secureBoot: true }), targets(1))],
    [
      "topology, windows, raw",
      libvirtXml(
        vmWith({
          vcpus: 8,
          cpuTopology: { sockets: 2, cores: 2, threads: 2 },
          guestOs: "windows2019srv-64",
        }, 3),
        targets(3, "raw"),
      ),
    ],
    ["no virtio, 8 disks", libvirtXml(vmWith({}, 8), targets(8), { virtio: false })],
    ["no disks, no NICs", libvirtXml(vmWith({ nics: [] }, 0), [])],
    [
      "hostile values",
      libvirtXml(
        vmWith({
          name: `</name><evil/>&amp; 'x' "y" ]]> <!-- z`,
          nics: [{ network: `net' evil='1` }, { network: "<net>&" }],
        }),
        [{ path: `/tmp/it's "a" <dir>/&amp;/$(id)/\`id\`/disk`, format: "raw" }],
      ),
    ],
  ];
  for (const [what, xml] of cases) {
    const doc = await Doc.write(dir, xml);
    try {
      await doc.validate();
    } catch (e) {
      throw new Error(`Case "${what}" does not validate:\n${xml}`, { cause: e });
    }
  }
});

Deno.test("libvirt XML describes the VM's memory, CPUs, lifecycle and devices", async () => {
  await using dir = await TempDir.create();
  const vm = vmWith({
    name: "web01",
    memory: 3 * 1024 ** 3 + 512, // not a whole KiB: rounded up, never down
    vcpus: 4,
    cpuTopology: { sockets: 2, cores: 2, threads: 1 },
    guestOs: "debian12-64",
  }, 2);
  const doc = await Doc.write(dir, libvirtXml(vm, targets(2)));

  assertEquals(await doc.get("string(/domain/@type)"), "kvm");
  assertEquals(await doc.get("string(/domain/name)"), "web01");
  assertEquals(await doc.get("string(/domain/memory/@unit)"), "KiB");
  assertEquals(await doc.get("string(/domain/memory)"), String(3 * 1024 ** 2 + 1));
  assertEquals(await doc.get("string(/domain/currentMemory)"), String(3 * 1024 ** 2 + 1));
  assertEquals(await doc.get("string(/domain/vcpu)"), "4");
  assertEquals(await doc.get("string(/domain/cpu/topology/@sockets)"), "2");
  assertEquals(await doc.get("string(/domain/cpu/topology/@cores)"), "2");
  assertEquals(await doc.get("string(/domain/cpu/topology/@threads)"), "1");

  assertEquals(await doc.get("string(/domain/os/type)"), "hvm");
  assertEquals(await doc.get("string(/domain/os/type/@arch)"), "x86_64");
  assertEquals(await doc.get("string(/domain/os/type/@machine)"), "q35");
  assertEquals(await doc.count("/domain/features/acpi"), 1);
  assertEquals(await doc.count("/domain/features/apic"), 1);
  assertEquals(await doc.get("string(/domain/clock/@offset)"), "utc");
  assertEquals(await doc.get("string(/domain/on_poweroff)"), "destroy");
  assertEquals(await doc.get("string(/domain/on_reboot)"), "restart");
  assertEquals(await doc.get("string(/domain/on_crash)"), "restart");

  assertEquals(await doc.count("/domain/devices/disk"), 2);
  for (const [i, dev] of [[1, "vda"], [2, "vdb"]] as const) {
    const disk = `/domain/devices/disk[${i}]`;
    assertEquals(await doc.get(`string(${disk}/@type)`), "file");
    assertEquals(await doc.get(`string(${disk}/@device)`), "disk");
    assertEquals(await doc.get(`string(${disk}/driver/@name)`), "qemu");
    assertEquals(await doc.get(`string(${disk}/driver/@type)`), "qcow2");
    assertEquals(await doc.get(`string(${disk}/driver/@cache)`), "none");
    assertEquals(await doc.get(`string(${disk}/driver/@discard)`), "unmap");
    assertEquals(await doc.get(`string(${disk}/source/@file)`), `/var/lib/vms/guest-${i - 1}`);
    assertEquals(await doc.get(`string(${disk}/target/@dev)`), dev);
    assertEquals(await doc.get(`string(${disk}/target/@bus)`), "virtio");
  }
  // The first disk boots, as bootindex=1 does in the QEMU script.
  assertEquals(await doc.get("string(/domain/devices/disk[1]/boot/@order)"), "1");
  assertEquals(await doc.count("/domain/devices/disk[2]/boot"), 0);

  assertEquals(await doc.count("/domain/devices/interface[@type='network']"), 2);
  const nic1 = "/domain/devices/interface[1]";
  assertEquals(await doc.get(`string(${nic1}/source/@network)`), "VM Network");
  assertEquals(await doc.get(`string(${nic1}/model/@type)`), "virtio");
  assertEquals(await doc.get(`string(${nic1}/mac/@address)`), "00:50:56:aa:bb:cc");
  const nic2 = "/domain/devices/interface[2]";
  assertEquals(await doc.get(`string(${nic2}/source/@network)`), "default");
  assertEquals(await doc.count(`${nic2}/mac`), 0, "an unknown MAC is left to libvirt");

  assertEquals(await doc.get("string(/domain/devices/rng/@model)"), "virtio");
  assertEquals(await doc.get("string(/domain/devices/rng/backend)"), "/dev/urandom");
  assertEquals(await doc.get("string(/domain/devices/memballoon/@model)"), "virtio");
  assertEquals(await doc.get("string(/domain/devices/serial/@type)"), "pty");
  assertEquals(await doc.get("string(/domain/devices/console/target/@type)"), "serial");
  assertEquals(await doc.get("string(/domain/devices/video/model/@type)"), "vga");
  assertEquals(await doc.get("string(/domain/devices/graphics/@type)"), "vnc");
  assertEquals(await doc.get("string(/domain/devices/graphics/@autoport)"), "yes");
  assertEquals(await doc.get("string(/domain/devices/graphics/@listen)"), "127.0.0.1");
  assertEquals(await doc.get("string(/domain/devices/input/@type)"), "tablet");
  assertEquals(await doc.get("string(/domain/devices/input/@bus)"), "usb");
});

Deno.test("libvirt XML escapes hostile names, paths and networks", async () => {
  await using dir = await TempDir.create();
  const name = `</name><evil/>&amp; 'x' "y" ]]> <!-- z`;
  const path = `/tmp/it's "a" <dir>/&amp;/$(id)/\`id\`/tab\there/line\nbreak/ünï 日本`;
  const network = `net' evil='1"><evil/>`;
  const xml = libvirtXml(vmWith({ name, nics: [{ network }] }), [{ path, format: "raw" }]);
  const doc = await Doc.write(dir, xml);
  assertEquals(await doc.count("//evil"), 0);
  assertEquals(await doc.count("//@evil"), 0);
  assertEquals(await doc.count("/domain/*[not(self::name)]//comment()"), 0);
  assertEquals(await doc.get("string(/domain/name)"), name);
  // Tab and newline come back as they were: they are written as character references.
  assertEquals(await doc.get("string(/domain/devices/disk/source/@file)"), path);
  assertEquals(await doc.get("string(/domain/devices/interface/source/@network)"), network);
});

Deno.test("libvirt XML asks for EFI firmware for UEFI guests and secure boot only when on", async () => {
  await using dir = await TempDir.create();

  const bios = await Doc.write(dir, libvirtXml(vmWith(), targets(1)));
  assertEquals(await bios.count("/domain/os/@firmware"), 0);
  assertEquals(await bios.count("/domain/os/firmware | /domain/os/loader"), 0);
  assertEquals(await bios.count("/domain/features/smm"), 0);

  // Secure boot is a UEFI feature: on a BIOS guest it means nothing.
  const biosSecure = libvirtXml(vmWith({ firmware: "bios", secureBoot: true }), targets(1));
  assertEquals(biosSecure, libvirtXml(vmWith({ firmware: "bios" }), targets(1)));

  const uefi = await Doc.write(dir, libvirtXml(vmWith({ firmware: "uefi" }), targets(1)));
  assertEquals(await uefi.get("string(/domain/os/@firmware)"), "efi");
  assertEquals(await uefi.get("string(/domain/os/type/@machine)"), "q35");
  assertEquals(
    await uefi.get("string(/domain/os/firmware/feature[@name='secure-boot']/@enabled)"),
    "no",
  );
  assertEquals(await uefi.count("/domain/os/loader[@secure='yes']"), 0);
  assertEquals(await uefi.count("/domain/features/smm"), 0);

  const secure = await Doc.write(
    dir,
    libvirtXml(vmWith({ firmware: "uefi", secureBoot: true }), targets(1)),
  );
  assertEquals(await secure.get("string(/domain/os/@firmware)"), "efi");
  assertEquals(
    await secure.get("string(/domain/os/firmware/feature[@name='secure-boot']/@enabled)"),
    "yes",
  );
  assertEquals(
    await secure.get("string(/domain/os/firmware/feature[@name='enrolled-keys']/@enabled)"),
    "yes",
  );
  assertEquals(await secure.get("string(/domain/os/loader/@secure)"), "yes");
  assertEquals(await secure.get("string(/domain/features/smm/@state)"), "on");
});

Deno.test("libvirt XML without virtio puts disks on SATA and NICs on e1000", async () => {
  await using dir = await TempDir.create();
  const doc = await Doc.write(dir, libvirtXml(vmWith({}, 8), targets(8), { virtio: false }));
  assertEquals(await doc.count("/domain/devices/disk/target[@bus='sata']"), 8);
  assertEquals(await doc.count("/domain/devices/disk/target[@bus='virtio']"), 0);
  assertEquals(await doc.get("string(/domain/devices/disk[1]/target/@dev)"), "sda");
  assertEquals(await doc.get("string(/domain/devices/disk[8]/target/@dev)"), "sdh");
  assertEquals(await doc.count("/domain/devices/interface/model[@type='e1000']"), 2);
  assertEquals(await doc.count("//*[@model='virtio' or @type='virtio']"), 0);
  assertEquals(await doc.count("/domain/devices/rng"), 0);
  assertEquals(await doc.get("string(/domain/devices/memballoon/@model)"), "none");
});

Deno.test("libvirt XML can put disks on virtio and NICs on e1000 (no netkvm for the guest)", async () => {
  await using dir = await TempDir.create();
  const doc = await Doc.write(dir, libvirtXml(vmWith({}, 2), targets(2), { nic: "e1000" }));
  assertEquals(await doc.count("/domain/devices/disk/target[@bus='virtio']"), 2);
  assertEquals(await doc.count("/domain/devices/interface/model[@type='e1000']"), 2);
  assertEquals(await doc.count("/domain/devices/interface/model[@type='virtio']"), 0);
});

Deno.test("libvirt XML keeps Windows clocks in local time", async () => {
  await using dir = await TempDir.create();
  for (const guestOs of ["windows9-64", "winNetEnterprise", "Microsoft Windows Server 2019"]) {
    const doc = await Doc.write(dir, libvirtXml(vmWith({ guestOs }), targets(1)));
    assertEquals(await doc.get("string(/domain/clock/@offset)"), "localtime", guestOs);
  }
  for (const guestOs of ["debian12-64", "rhel9_64Guest", "other"]) {
    assert(!isWindowsGuest(vmWith({ guestOs })), guestOs);
  }
  assert(!isWindowsGuest(vmWith()));
});

Deno.test("libvirt XML makes relative disk paths absolute", () => {
  const xml = libvirtXml(vmWith(), [{ path: "out/guest-sda", format: "raw" }]);
  assert(xml.includes(`<source file=${xmlAttr(`${Deno.cwd()}/out/guest-sda`)}/>`), xml);
});

Deno.test("libvirt XML refuses VMs it cannot describe", () => {
  assertThrows(() => libvirtXml(vmWith({}, 2), targets(1)), RangeError, "per disk (2), got 1");
  assertThrows(
    () =>
      libvirtXml(vmWith({ vcpus: 3, cpuTopology: { sockets: 2, cores: 2, threads: 1 } }, 0), []),
    RangeError,
    "is not 3 vCPUs",
  );
  assertThrows(() => libvirtXml(vmWith({ vcpus: 0 }, 0), []), RangeError, `"0"`);
  assertThrows(() => libvirtXml(vmWith({ memory: 0 }, 0), []), RangeError, "memory");
  assertThrows(
    () => libvirtXml(vmWith({ nics: [{ mac: "00:50:56:aa:bb:cc'/><evil" }] }, 0), []),
    TypeError,
    "Invalid MAC address",
  );
  assertThrows(() => libvirtXml(vmWith({ name: "" }, 0), []), TypeError, "empty");
  assertThrows(() => libvirtXml(vmWith({ name: "a\nb" }, 0), []), TypeError, "line breaks");
  assertThrows(
    () => libvirtXml(vmWith(), [{ path: "/tmp/bell\x07", format: "raw" }]),
    TypeError,
    "U+0007",
  );
  assertThrows(() => xmlText("lone \ud800 surrogate"), TypeError, "U+D800");
  assertEquals(xmlText("pair \ud83d\ude00 ok"), "pair \ud83d\ude00 ok");
});
