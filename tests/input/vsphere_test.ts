/**
 * Unit tests of `-i vsphere`: the `-ic` URI, the command line, the device parser, and the exact
 * nbdkit commands built for `-it https` and `-it vddk` (Debian ships no vddk plugin, so the vddk
 * command is pinned here; `tests/integration/vsphere_vddk_test.ts` runs it where it exists).
 */

import { assertEquals, assertStringIncludes, assertThrows } from "../_assert.ts";
import { UsageError } from "../../src/errors.ts";
import { parseXml } from "../../src/input/_xml.ts";
import { curlDiskCommand, vddkDiskCommand } from "../../src/input/vsphere/disk_servers.ts";
import { parseDevices, parseVmProperties } from "../../src/input/vsphere/hardware.ts";
import { parseVsphereUri } from "../../src/input/vsphere/uri.ts";
import {
  nbdDescriptor,
  parseVsphereOptions,
  vddkOptions,
} from "../../src/input/vsphere/vsphere.ts";
import type { InputCli } from "../../src/input/types.ts";

const SOCKET = "/run/v/in-sda.sock";
const HEAD = ["--foreground", "--exit-with-parent", "--unix", SOCKET, "--readonly"];

Deno.test("vpx:// and esx:// URIs: user, port, datacenter path, no_verify; passwords refused", () => {
  assertEquals(
    parseVsphereUri("vpx://administrator%40vsphere.local@vc.example:8443/F/DC/C/h1?no_verify=1"),
    {
      scheme: "vpx",
      host: "vc.example",
      port: 8443,
      user: "administrator@vsphere.local",
      path: ["F", "DC", "C", "h1"],
      noVerify: true,
    },
  );
  assertEquals(parseVsphereUri("esx://root@[::1]"), {
    scheme: "esx",
    host: "::1",
    port: 443,
    user: "root",
    path: [],
    noVerify: false,
  });
  const e = assertThrows(() => parseVsphereUri("vpx://root:hunter2@vc/DC"), UsageError);
  assertStringIncludes(e.message, "do not put the password in the URI");
  assertEquals(e.message.includes("hunter2"), false);
  assertThrows(() => parseVsphereUri("qemu:///system"), UsageError, "expected vpx://");
  assertThrows(() => parseVsphereUri("vpx://root@vc:99999/DC"), UsageError, "invalid port");
});

function cli(extra: Partial<InputCli>): InputCli {
  return {
    mode: "vsphere",
    conn: "vpx://admin%40vsphere.local@vc/DC/Cluster/h1",
    passwordFile: "/root/pw",
    args: ["web01"],
    options: [],
    ...extra,
  };
}

Deno.test("-i vsphere options: what is missing or contradictory is a usage error naming it", () => {
  assertThrows(
    () => parseVsphereOptions(cli({ passwordFile: undefined } as never)),
    UsageError,
    "-ip FILE",
  );
  assertThrows(
    () => parseVsphereOptions(cli({ args: [] })),
    UsageError,
    "needs the VM's name or moref",
  );
  assertThrows(() => parseVsphereOptions(cli({ transport: "ssh" })), UsageError, "-it https");
  assertThrows(
    () => parseVsphereOptions(cli({ options: [["vddk-libdir", "/opt/vddk"]] })),
    UsageError,
    "is for -it vddk",
  );
  assertThrows(
    () => parseVsphereOptions(cli({ options: [["nosuch", "1"]] })),
    UsageError,
    'does not know -io "nosuch"',
  );
  assertThrows(
    () =>
      parseVsphereOptions(
        cli({ conn: "vpx://u@vc/DC?no_verify=1", options: [["vsphere-cafile", "/ca.pem"]] }),
      ),
    UsageError,
    "contradict",
  );
  assertThrows(
    () => parseVsphereOptions(cli({ conn: "vpx://vc/DC" })),
    UsageError,
    "names no user",
  );
  assertEquals(parseVsphereOptions(cli({ conn: "esx://esxi" })).user, "root");
});

Deno.test("-it https: nbdkit curl with cookie=+FILE, the CA or sslverify=false, rate outermost", () => {
  const url = "https://vc/folder/web01/web01-flat.vmdk?dcPath=DC&dsName=ds1";
  assertEquals(
    curlDiskCommand(url, { cookieFile: "/run/v/cookie", caFile: "/etc/ca.pem" }).args(SOCKET),
    [
      ...HEAD,
      "--filter=retry",
      "curl",
      `url=${url}`,
      "cookie=+/run/v/cookie",
      "protocols=https",
      "cainfo=/etc/ca.pem",
    ],
  );
  assertEquals(
    curlDiskCommand(url, {
      cookieFile: "/run/v/cookie",
      noVerify: true,
      bandwidth: 20971520,
      bandwidthFile: "/etc/rate",
    }).args(SOCKET),
    [
      ...HEAD,
      "--filter=rate",
      "--filter=retry",
      "curl",
      `url=${url}`,
      "cookie=+/run/v/cookie",
      "protocols=https",
      "sslverify=false",
      "rate=20971520",
      "rate-file=/etc/rate",
    ],
  );
  assertThrows(() => curlDiskCommand(url, { cookieFile: "/c", bandwidth: 0 }), RangeError);
});

Deno.test("-it vddk: the exact nbdkit command for each option set, filters in their fixed order", () => {
  const base = parseVsphereOptions(cli({ transport: "vddk" }));
  const vm = { moref: { type: "VirtualMachine", value: "vm-42" } };
  const disk = { fileName: "[ds 1] web01/web01.vmdk" };
  const thumb = "AA:BB:CC";
  assertEquals(vddkDiskCommand(vddkOptions(base, vm, disk, thumb)).args(SOCKET), [
    ...HEAD,
    "--filter=cow",
    "--filter=blocksize",
    "--filter=retry",
    "vddk",
    "server=vc",
    "user=admin@vsphere.local",
    "password=+/root/pw",
    "thumbprint=AA:BB:CC",
    "vm=moref=vm-42",
    "file=[ds 1] web01/web01.vmdk",
  ]);

  const all = parseVsphereOptions(cli({
    transport: "vddk",
    conn: "vpx://admin%40vsphere.local@vc:8443/DC",
    bandwidth: 1048576,
    options: [
      ["vddk-libdir", "/opt/vmware-vix-disklib-distrib"],
      ["vddk-thumbprint", "11:22:33"],
      ["vddk-transports", "nbdssl:nbd"],
      ["vddk-config", "/etc/vddk.conf"],
      ["vddk-cookie", "vmware_soap_session=abc"],
      ["vddk-nfchostport", "902"],
      ["vddk-port", "443"],
      ["vddk-snapshot", "snapshot-7"],
    ],
  }));
  assertEquals(all.vddk.thumbprint, "11:22:33");
  assertEquals(
    vddkDiskCommand(vddkOptions(all, vm, disk, all.vddk.thumbprint!)).args(SOCKET),
    [
      ...HEAD,
      "--filter=rate",
      "--filter=cow",
      "--filter=blocksize",
      "--filter=retry",
      "vddk",
      "server=vc",
      "user=admin@vsphere.local",
      "password=+/root/pw",
      "thumbprint=11:22:33",
      "vm=moref=vm-42",
      "file=[ds 1] web01/web01.vmdk",
      "libdir=/opt/vmware-vix-disklib-distrib",
      "transports=nbdssl:nbd",
      "config=/etc/vddk.conf",
      "cookie=vmware_soap_session=abc",
      "nfchostport=902",
      "port=443",
      "snapshot=snapshot-7",
      "rate=1048576",
    ],
  );

  // The URI's port goes to VDDK when -io vddk-port does not say; a snapshot read by name
  // becomes its moref.
  const snap = parseVsphereOptions(cli({ transport: "vddk", conn: "esx://root@esxi:8443" }));
  const o = vddkOptions(snap, vm, disk, thumb, {
    type: "VirtualMachineSnapshot",
    value: "snapshot-3",
  });
  assertEquals([o.port, o.snapshot, o.user], ["8443", "snapshot-3", "root"]);
});

const DEVICES =
  `<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ArrayOfVirtualDevice">
<VirtualDevice xsi:type="VirtualIDEController"><key>200</key><busNumber>0</busNumber></VirtualDevice>
<VirtualDevice xsi:type="VirtualAHCIController"><key>15000</key><busNumber>0</busNumber></VirtualDevice>
<VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>0</busNumber></VirtualDevice>
<VirtualDevice xsi:type="VirtualLsiLogicController"><key>1001</key><busNumber>1</busNumber></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>16000</key><deviceInfo><label>Hard disk 3</label></deviceInfo>
  <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web/web_2.vmdk</fileName></backing>
  <controllerKey>15000</controllerKey><unitNumber>0</unitNumber><capacityInKB>1024</capacityInKB></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2001</key>
  <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web/web_1.vmdk</fileName></backing>
  <controllerKey>1001</controllerKey><unitNumber>0</unitNumber><capacityInBytes>2097152</capacityInBytes></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2000</key>
  <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web/web-000001.vmdk</fileName>
  <parent xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web/web.vmdk</fileName></parent></backing>
  <controllerKey>1000</controllerKey><unitNumber>1</unitNumber><capacityInBytes>4194304</capacityInBytes></VirtualDevice>
<VirtualDevice xsi:type="VirtualCdrom"><key>3000</key><deviceInfo><label>CD/DVD drive 1</label></deviceInfo><controllerKey>200</controllerKey></VirtualDevice>
<VirtualDevice xsi:type="VirtualVmxnet3"><key>4000</key><macAddress>00:50:56:AA:BB:CC</macAddress>
  <backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName></backing></VirtualDevice>
<VirtualDevice xsi:type="VirtualE1000e"><key>4001</key><macAddress>00:50:56:00:00:01</macAddress>
  <backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>x</switchUuid><portgroupKey>dvportgroup-9</portgroupKey></port></backing></VirtualDevice>
</val>`;

Deno.test("devices: disks on their controllers in SCSI, SATA, IDE order; NICs; drives skipped", () => {
  const d = parseDevices(parseXml(DEVICES).children);
  assertEquals(
    d.disks.map((x) => [x.fileName, x.bus, x.controllerBus, x.unit, x.capacity, x.hasParent]),
    [
      ["[ds1] web/web-000001.vmdk", "scsi", 0, 1, 4194304, true],
      ["[ds1] web/web_1.vmdk", "scsi", 1, 0, 2097152, false],
      ["[ds1] web/web_2.vmdk", "sata", 0, 0, 1048576, false],
    ],
  );
  assertEquals(d.disks[1]!.datastore, "ds1");
  assertEquals(d.disks[1]!.path, "web/web_1.vmdk");
  assertEquals(d.nics, [
    { type: "VirtualVmxnet3", model: "vmxnet3", mac: "00:50:56:aa:bb:cc", network: "VM Network" },
    {
      type: "VirtualE1000e",
      model: "e1000e",
      mac: "00:50:56:00:00:01",
      portgroupKey: "dvportgroup-9",
    },
  ]);
  assertEquals(d.skipped, ["CD/DVD drive 1"]);
});

Deno.test("VM properties: power state, the snapshot tree, firmware, secure boot, parent folder", () => {
  const val = (xml: string) =>
    parseXml(`<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ${xml}</val>`);
  const props = new Map([
    ["name", val(`xsi:type="xsd:string">web01`)],
    ["parent", val(`xsi:type="ManagedObjectReference" type="Folder">group-v4`)],
    ["runtime.powerState", val(`xsi:type="VirtualMachinePowerState">poweredOn`)],
    ["config.hardware.numCPU", val(`xsi:type="xsd:int">4`)],
    ["config.hardware.numCoresPerSocket", val(`xsi:type="xsd:int">2`)],
    ["config.hardware.memoryMB", val(`xsi:type="xsd:int">2048`)],
    ["config.firmware", val(`xsi:type="xsd:string">efi`)],
    [
      "config.bootOptions",
      val(`xsi:type="VirtualMachineBootOptions"><efiSecureBootEnabled>true</efiSecureBootEnabled>`),
    ],
    [
      "snapshot",
      val(
        `xsi:type="VirtualMachineSnapshotInfo"><rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>a</name>` +
          `<childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-2</snapshot><name>b</name></childSnapshotList></rootSnapshotList>`,
      ),
    ],
    ["config.hardware.device", parseXml(DEVICES)],
  ]);
  const vm = parseVmProperties({ type: "VirtualMachine", value: "vm-7" }, props);
  assertEquals(vm.parent, { type: "Folder", value: "group-v4" });
  assertEquals([vm.name, vm.powerState, vm.cpus, vm.coresPerSocket, vm.memoryMiB], [
    "web01",
    "poweredOn",
    4,
    2,
    2048,
  ]);
  assertEquals([vm.firmware, vm.secureBoot], ["efi", true]);
  assertEquals(vm.snapshots.map((s) => [s.name, s.moref.value]), [["a", "snapshot-1"], [
    "b",
    "snapshot-2",
  ]]);
  assertEquals(vm.disks.length, 3);
});

Deno.test("split disks: qemu's descriptor names an NBD export per extent file, keeps types, offsets and ZERO extents, has no blank line", () => {
  const extent = (
    access: "RW" | "RDONLY",
    sectors: number,
    type: string,
    path?: string,
    offset = 0,
  ) => ({
    access,
    sectors,
    type,
    offset,
    line: 1,
    ...(path ? { fileName: path.slice(4), path } : {}),
  });
  const { text, opened } = nbdDescriptor({
    descriptor: {
      version: 1,
      cid: "0badf00d",
      createType: "twoGbMaxExtentFlat",
      extents: [],
      ddb: { adaptertype: "lsilogic" },
      header: {},
    },
    extents: [
      extent("RW", 2048, "FLAT", "/vm/g-f001.vmdk"),
      extent("RW", 1024, "ZERO"),
      extent("RW", 3072, "FLAT", "/vm/g-f002.vmdk", 8),
      extent("RDONLY", 512, "FLAT", "/vm/g-f002.vmdk", 3080),
    ],
  }, (path) => `/run/v/${path.slice(4, -5)}.sock`);
  assertEquals(
    text,
    [
      "# Disk DescriptorFile",
      "# vmshift: the extents are NBD exports of the datastore's files",
      "version=1",
      "CID=0badf00d",
      "parentCID=ffffffff",
      'createType="twoGbMaxExtentFlat"',
      'RW 2048 FLAT "nbd+unix:///?socket=/run/v/g-f001.sock" 0',
      "RW 1024 ZERO",
      'RW 3072 FLAT "nbd+unix:///?socket=/run/v/g-f002.sock" 8',
      'RDONLY 512 FLAT "nbd+unix:///?socket=/run/v/g-f002.sock" 3080',
      "",
    ].join("\n"),
  );
  // qemu opens a file for RW extents with one only (it skips ZERO and RDONLY lines).
  assertEquals(opened, 2);
  assertThrows(
    () =>
      nbdDescriptor({
        descriptor: { version: 1, createType: "vmfs", extents: [], ddb: {}, header: {} },
        extents: [extent("RW", 8, "VMFS", "/vm/g-flat.vmdk")],
      }, () => '/tmp/a "b?.sock'),
    Error,
    "odd characters",
  );
});
