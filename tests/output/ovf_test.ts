/**
 * The OVF of `-o rhv`, parsed back with xmllint: well-formed, escaped, disks named by the
 * engine's ids, sizes, formats, CPU, memory, NICs, firmware and OS type.
 */

import { assertEquals, assertThrows } from "../_assert.ts";
import { biosType, createOvf, type OvfOptions, ovirtOs } from "../../src/output/ovf.ts";
import type { Vm } from "../../src/vm.ts";
import { parseOvf } from "../servers/_ovf.ts";

const GiB = 1024 ** 3;

const vm: Vm = {
  name: "web1",
  memory: 4 * GiB,
  vcpus: 4,
  cpuTopology: { sockets: 2, cores: 2, threads: 1 },
  firmware: "uefi",
  guestOs: "rhel8_64Guest",
  disks: [
    { index: 0, source: "web1.vmdk", virtualSize: 1.5 * GiB },
    { index: 1, source: "web1_1.vmdk", virtualSize: 10 * GiB },
  ],
  nics: [
    { mac: "00:50:56:aa:bb:cc", network: "VM Network", model: "vmxnet3" },
    { mac: "00:50:56:aa:bb:cd" },
  ],
};

const disks = [
  { diskId: "d-0", imageId: "i-0", virtualSize: 1.5 * GiB, actualSize: 300 * 1024 ** 2 },
  { diskId: "d-1", imageId: "i-1", virtualSize: 10 * GiB },
];

const options: OvfOptions = {
  vmId: "vm-id",
  storageDomainId: "sd-id",
  dataCenterId: "dc-id",
  format: "raw",
  preallocated: false,
  creationTime: new Date(Date.UTC(2024, 0, 2, 3, 4, 5)),
  uuid: (() => {
    let n = 0;
    return () => `uuid-${++n}`;
  })(),
};

/** Runs xmllint on a document: `--noout` when no expression, else `--xpath string(...)`. */
async function xmllint(doc: string, expr?: string): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".ovf" });
  try {
    await Deno.writeTextFile(file, doc);
    const args = expr === undefined ? ["--noout", file] : ["--xpath", expr, file];
    const out = await new Deno.Command("xmllint", { args }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success && !(expr !== undefined && out.code === 10)) {
      throw new Error(`xmllint failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return text.trim();
  } finally {
    await Deno.remove(file);
  }
}

/** `//a/b` with local names, so that the namespaces do not matter. */
function path(...steps: string[]): string {
  return steps.map((s) => {
    const [el, pred] = s.split("[");
    return `/*[local-name()='${el}']${pred ? `[${pred}` : ""}`;
  }).join("");
}

function attr(name: string): string {
  return `@*[local-name()='${name}']`;
}

const str = (doc: string, expr: string) => xmllint(doc, `string(${expr})`);

Deno.test("the OVF is well-formed and names each disk by disk id and image id", async () => {
  const ovf = createOvf(vm, disks, options);
  await xmllint(ovf);
  assertEquals(await str(ovf, `count(/${path("Envelope", "References", "File")})`), "2");
  for (const [i, d] of disks.entries()) {
    const file = `/${path("Envelope", "References", `File[${i + 1}]`)}`;
    assertEquals(await str(ovf, `${file}/${attr("href")}`), `${d.diskId}/${d.imageId}`);
    assertEquals(await str(ovf, `${file}/${attr("id")}`), d.imageId);
    const disk = `/${path("Envelope", "DiskSection", `Disk[${i + 1}]`)}`;
    assertEquals(await str(ovf, `${disk}/${attr("diskId")}`), d.diskId);
    assertEquals(await str(ovf, `${disk}/${attr("fileRef")}`), `${d.diskId}/${d.imageId}`);
    assertEquals(await str(ovf, `${disk}/${attr("volume-format")}`), "RAW");
    assertEquals(await str(ovf, `${disk}/${attr("volume-type")}`), "Sparse");
    assertEquals(await str(ovf, `${disk}/${attr("disk-interface")}`), "VirtIO");
    assertEquals(await str(ovf, `${disk}/${attr("boot")}`), i === 0 ? "True" : "False");
    assertEquals(await str(ovf, `${disk}/${attr("capacity")}`), String(d.virtualSize));
  }
  const disk0 = `/${path("Envelope", "DiskSection", "Disk[1]")}`;
  // 1.5 GiB rounds up to 2; 300 MiB of data to 1; an unknown actual size is empty.
  assertEquals(await str(ovf, `${disk0}/${attr("size")}`), "2");
  assertEquals(await str(ovf, `${disk0}/${attr("actual_size")}`), "1");
  assertEquals(
    await str(ovf, `/${path("Envelope", "DiskSection", "Disk[2]")}/${attr("actual_size")}`),
    "",
  );

  const hw = `/${path("Envelope", "VirtualSystem", "VirtualHardwareSection")}`;
  const item = (type: string, n = 1) =>
    `(${hw}/*[local-name()='Item'][*[local-name()='ResourceType']='${type}'])[${n}]`;
  const field = (it: string, name: string) => str(ovf, `${it}/*[local-name()='${name}']`);
  for (const [i, d] of disks.entries()) {
    const it = item("17", i + 1);
    assertEquals(await field(it, "InstanceId"), d.imageId);
    assertEquals(await field(it, "HostResource"), `${d.diskId}/${d.imageId}`);
    assertEquals(await field(it, "StorageId"), "sd-id");
    assertEquals(await field(it, "StoragePoolId"), "dc-id");
    assertEquals(await field(it, "Parent"), "00000000-0000-0000-0000-000000000000");
    assertEquals(await field(it, "Caption"), `Drive ${i + 1}`);
    assertEquals(await field(it, "BootOrder"), i === 0 ? "1" : "");
  }
  assertEquals(await field(item("3"), "num_of_sockets"), "2");
  assertEquals(await field(item("3"), "cpu_per_socket"), "2");
  assertEquals(await field(item("3"), "threads_per_cpu"), "1");
  assertEquals(await field(item("4"), "VirtualQuantity"), "4096");
  assertEquals(await field(item("4"), "AllocationUnits"), "MegaBytes");
  assertEquals(await field(item("10", 1), "MACAddress"), "00:50:56:aa:bb:cc");
  assertEquals(await field(item("10", 1), "Connection"), "VM Network");
  assertEquals(await field(item("10", 1), "ResourceSubType"), "3");
  assertEquals(await field(item("10", 2), "Connection"), "ovirtmgmt");
  assertEquals(await field(item("10", 2), "Name"), "eth1");
  assertEquals(
    await str(ovf, `count(/${path("Envelope", "NetworkSection", "Network")})`),
    "2",
  );

  const sys = `/${path("Envelope", "VirtualSystem")}`;
  assertEquals(await str(ovf, `${sys}/${attr("id")}`), "vm-id");
  assertEquals(await str(ovf, `${sys}/*[local-name()='Name']`), "web1");
  assertEquals(await str(ovf, `${sys}/*[local-name()='BiosType']`), "2");
  assertEquals(await str(ovf, `${sys}/*[local-name()='Origin']`), "1");
  assertEquals(await str(ovf, `${sys}/*[local-name()='CreationDate']`), "2024/01/02 03:04:05");
  const os = `${sys}/*[local-name()='OperatingSystemSection']`;
  assertEquals(await str(ovf, `${os}/*[local-name()='Description']`), "rhel_8x64");
});

Deno.test("a guest without virtio drivers gets a SATA disk and e1000 NICs", async () => {
  const nicType = "string(//*[local-name()='Item'][*[local-name()='ResourceType']='10'][1]" +
    "/*[local-name()='ResourceSubType'])";
  const disk = `/${path("Envelope", "DiskSection", "Disk[1]")}/${attr("disk-interface")}`;
  const virtio = createOvf(vm, disks, options);
  assertEquals([await str(virtio, disk), await xmllint(virtio, nicType)], ["VirtIO", "3"]);
  const emulated = createOvf(
    { ...vm, targetDevices: { disk: "sata", nic: "e1000" } },
    disks,
    options,
  );
  assertEquals([await str(emulated, disk), await xmllint(emulated, nicType)], ["SATA", "2"]);
});

Deno.test("the engine test server reads the VM name and disk ids from the OVF", () => {
  const summary = parseOvf(createOvf(vm, disks, options));
  assertEquals(summary, { name: "web1", diskIds: ["d-0", "d-1"] });
});

Deno.test("qcow2 disks are COW and preallocated raw disks Preallocated", async () => {
  const cow = createOvf(vm, disks, { ...options, format: "qcow2" });
  const pre = createOvf(vm, disks, { ...options, preallocated: true });
  const disk = `/${path("Envelope", "DiskSection", "Disk[1]")}`;
  assertEquals(await str(cow, `${disk}/${attr("volume-format")}`), "COW");
  assertEquals(await str(pre, `${disk}/${attr("volume-type")}`), "Preallocated");
  assertEquals(await str(pre, `${disk}/${attr("format")}`), "http://en.wikipedia.org/wiki/Byte");
});

Deno.test("every value is escaped", async () => {
  const nasty = `a<b>&"c"'d'`;
  const weird: Vm = {
    ...vm,
    name: nasty,
    guestOs: `x" ovirt:id="99`,
    nics: [{ network: `net & <"more">`, mac: "00:11:22:33:44:55" }],
  };
  const ovf = createOvf(weird, disks, options);
  await xmllint(ovf);
  const sys = `/${path("Envelope", "VirtualSystem")}`;
  assertEquals(await str(ovf, `${sys}/*[local-name()='Name']`), nasty);
  assertEquals(
    await str(ovf, `/${path("Envelope", "NetworkSection", "Network")}/${attr("name")}`),
    `net & <"more">`,
  );
  assertEquals(parseOvf(ovf).name, nasty);
});

Deno.test("BIOS types: q35 SeaBIOS, q35 OVMF, secure boot, and 0 off x86_64", () => {
  assertEquals(biosType({ firmware: "bios" }), 1);
  assertEquals(biosType({}), 1);
  assertEquals(biosType({ firmware: "uefi" }), 2);
  assertEquals(biosType({ firmware: "uefi", secureBoot: true }), 3);
  assertEquals(biosType({ firmware: "uefi" }, "ppc64"), 0);
});

Deno.test("guest OS ids map to oVirt OS types, other_linux when unknown", () => {
  assertEquals(ovirtOs("rhel7_64Guest"), { name: "rhel_7x64", id: 24 });
  assertEquals(ovirtOs("centos8_64Guest"), { name: "rhel_8x64" });
  assertEquals(ovirtOs("windows2019srv_64Guest"), { name: "windows_2019x64" });
  assertEquals(ovirtOs("windows2019srvNext_64Guest"), { name: "windows_2022" });
  assertEquals(ovirtOs("windows9Server64Guest"), { name: "windows_2016x64", id: 29 });
  assertEquals(ovirtOs("windows9_64Guest"), { name: "windows_10x64", id: 27 });
  assertEquals(ovirtOs("winNetEnterprise64Guest"), { name: "windows_10x64", id: 27 });
  assertEquals(ovirtOs("debian11_64Guest"), { name: "debian_7", id: 1300 });
  assertEquals(ovirtOs("ubuntu64Guest"), { name: "ubuntu_14_04", id: 1256 });
  assertEquals(ovirtOs("rhel_9x64"), { name: "rhel_9x64" });
  assertEquals(ovirtOs("otherLinux64Guest"), { name: "other_linux", id: 5 });
  assertEquals(ovirtOs(undefined), { name: "other_linux", id: 5 });
});

Deno.test("an OVF for a different number of disks than the VM's is refused", () => {
  assertThrows(() => createOvf(vm, disks.slice(0, 1), options), RangeError, "2 disks");
});
