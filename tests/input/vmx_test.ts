/**
 * `-i vmx` through a transport, as `-it ssh` will plug in: the VMX and descriptors read from
 * an in-memory FileAccess (an ESXi datastore), disks "served" by a fake that records what it
 * was asked. The real local transport is tested end to end in tests/integration/vmx_test.ts.
 */

import { assert, assertEquals, assertRejects } from "../_assert.ts";
import type { RunContext } from "../../src/input/types.ts";
import {
  openVmx,
  readVmxSource,
  type ServedDisk,
  type VmxSourceDisk,
  type VmxTransport,
} from "../../src/input/vmx.ts";
import { TempDir } from "../../src/tmpdir.ts";
import { FIXTURE_GENID, vmwareMac, vmwareVmx } from "../../scripts/make_vmware_fixture.ts";
import { type MemFile, memFiles } from "./_mem_files.ts";

const GiB = 1024 * 1024 * 1024;

function esxiDescriptor(flat: string, sectors: number): string {
  return `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW ${sectors} VMFS "${flat}"

# The Disk Data Base
#DDB

ddb.adapterType = "pvscsi"
ddb.thinProvisioned = "1"
`;
}

/** An ESXi VM on a datastore: two thin disks, a CD-ROM, two NICs. */
function datastore(): Record<string, MemFile> {
  const vmx = vmwareVmx({
    name: "app01",
    platform: "esxi",
    vcpus: 2,
    memoryMiB: 8192,
    firmware: "efi",
    secureBoot: false,
    guestOS: "rhel9-64",
    disks: [
      { device: "scsi0:0", fileName: "app01.vmdk" },
      { device: "scsi0:1", fileName: "/ds/other/app01_1.vmdk" },
    ],
    cdrom: { device: "sata0:0", iso: "rhel-9.iso" },
    nics: [
      { network: "Prod", mac: vmwareMac(0), model: "vmxnet3", addressType: "vpx" },
      { network: "Backup", mac: vmwareMac(1), model: "vmxnet3", addressType: "vpx" },
    ],
    genid: true,
    extraLines: [],
  });
  return {
    "/ds/app01/app01.vmx": vmx,
    "/ds/app01/app01.vmdk": esxiDescriptor("app01-flat.vmdk", 40 * GiB / 512),
    "/ds/app01/app01-flat.vmdk": { size: 40 * GiB },
    "/ds/other/app01_1.vmdk": esxiDescriptor("app01_1-flat.vmdk", 100 * GiB / 512),
    "/ds/other/app01_1-flat.vmdk": { size: 100 * GiB },
  };
}

/** A transport on in-memory files whose disks are "served" by a recording fake. */
function fakeTransport(
  files: Record<string, MemFile>,
  serve: (disk: VmxSourceDisk) => { virtualSize: number } = (d) => ({
    virtualSize: d.vmdk.virtualSize,
  }),
) {
  const log: string[] = [];
  const transport: VmxTransport = {
    files: memFiles(files),
    serveDisk(disk: VmxSourceDisk): Promise<ServedDisk> {
      log.push(
        `serve ${disk.index} ${disk.path} [${disk.vmdk.extents.map((e) => e.path).join(", ")}]`,
      );
      return Promise.resolve({
        uri: `nbd+unix:///?socket=/fake/${disk.index}`,
        virtualSize: serve(disk).virtualSize,
        [Symbol.asyncDispose]: () => {
          log.push(`stop ${disk.index}`);
          return Promise.resolve();
        },
      });
    },
    [Symbol.asyncDispose]: () => {
      log.push("close");
      return Promise.resolve();
    },
  };
  return { transport, log };
}

async function context(): Promise<{ ctx: RunContext; warnings: string[]; dir: TempDir }> {
  const dir = await TempDir.create();
  const warnings: string[] = [];
  return {
    ctx: {
      dir,
      signal: new AbortController().signal,
      debug: () => {},
      warning: (m) => warnings.push(m),
    },
    warnings,
    dir,
  };
}

Deno.test("a transport's files: the VM, its disks checked and served in order, then stopped", async () => {
  const { ctx, warnings, dir } = await context();
  await using _dir = dir;
  const { transport, log } = fakeTransport(datastore());
  {
    await using session = await openVmx("/ds/app01/app01.vmx", transport, ctx);
    assertEquals(session.uris, ["nbd+unix:///?socket=/fake/0", "nbd+unix:///?socket=/fake/1"]);
    assertEquals(session.vm, {
      name: "app01",
      memory: 8 * GiB,
      vcpus: 2,
      firmware: "uefi",
      disks: [
        {
          index: 0,
          source: "[ds] app01/app01.vmdk",
          virtualSize: 40 * GiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        },
        {
          index: 1,
          source: "[ds] other/app01_1.vmdk",
          virtualSize: 100 * GiB,
          bus: "scsi",
          sourceFormat: "vmdk",
        },
      ],
      nics: [
        { mac: vmwareMac(0), network: "Prod", model: "vmxnet3" },
        { mac: vmwareMac(1), network: "Backup", model: "vmxnet3" },
      ],
      guestOs: "rhel9-64",
      genid: FIXTURE_GENID.uuid,
    });
  }
  assertEquals(log, [
    "serve 0 /ds/app01/app01.vmdk [/ds/app01/app01-flat.vmdk]",
    "serve 1 /ds/other/app01_1.vmdk [/ds/other/app01_1-flat.vmdk]",
    "stop 1",
    "stop 0",
  ]);
  assertEquals(warnings, [
    'CD-ROM sata0:0 ("/vmfs/volumes/64f1c2a7-1b2c3d4e-5f60-a0b1c2d3e4f5/iso/rhel-9.iso") is ' +
    "skipped: vmshift copies hard disks only",
  ]);
});

Deno.test("a server that disagrees with the descriptor on the size fails; what was served stops", async () => {
  const { ctx, dir } = await context();
  await using _dir = dir;
  const { transport, log } = fakeTransport(
    datastore(),
    (d) => ({ virtualSize: d.index === 1 ? d.vmdk.virtualSize - 512 : d.vmdk.virtualSize }),
  );
  await assertRejects(
    () => openVmx("/ds/app01/app01.vmx", transport, ctx),
    Error,
    `Cannot read "[ds] other/app01_1.vmdk": qemu reads a ${100 * GiB - 512}-byte disk, but its ` +
      `descriptor gives ${100 * GiB} bytes`,
  );
  assertEquals(log.filter((l) => l.startsWith("stop")), ["stop 1", "stop 0"]);
});

Deno.test("every disk is checked before any is served", async () => {
  const { ctx, dir } = await context();
  await using _dir = dir;
  const files = datastore();
  delete files["/ds/other/app01_1-flat.vmdk"];
  const { transport, log } = fakeTransport(files);
  await assertRejects(
    () => openVmx("/ds/app01/app01.vmx", transport, ctx),
    Error,
    'Cannot read "[ds] other/app01_1-flat.vmdk": extent 1 of "[ds] other/app01_1.vmdk" ' +
      "(descriptor line 9): no such file",
  );
  assertEquals(log, []);
});

Deno.test("readVmxSource names the VMX as the caller shows it", async () => {
  const { ctx, dir } = await context();
  await using _dir = dir;
  const files = memFiles({ "/ds/x/x.vmx": 'memSize = "1024"\nbogus line\n' });
  await assertRejects(
    () => readVmxSource("/ds/x/x.vmx", files, ctx),
    SyntaxError,
    'Cannot parse "[ds] x/x.vmx" line 2: expected KEY = "VALUE"',
  );
  await assertRejects(
    () => readVmxSource("/ds/x/y.vmx", files, ctx, { name: "esx:y.vmx" }),
    Error,
    'Cannot read "esx:y.vmx": no such file',
  );
  const empty = memFiles({ "/ds/x/x.vmx": 'memSize = "1024"\n' });
  const e = await assertRejects(() => readVmxSource("/ds/x/x.vmx", empty, ctx), Error);
  assertEquals(e.message, '"[ds] x/x.vmx" has no disks');
  assert(!(e instanceof SyntaxError));
});
