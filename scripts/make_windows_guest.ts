/**
 * Builds a "phony" Windows guest for conversion tests: not bootable, but libguestfs
 * inspection takes it for a Windows guest that ran on VMware, and the conversion finds there
 * what it reads and changes. One libguestfs appliance launch (~15 s under TCG).
 *
 *     deno run -A scripts/make_windows_guest.ts OUT.img VARIANT
 *
 * OUT.img: raw, 512 MiB virtual, MBR, one NTFS partition (sda1) holding:
 * - `Windows/System32/cmd.exe`: a PE header only (inspection reads the architecture from it);
 * - `Windows/System32/config/SYSTEM` and `SOFTWARE`: hives written by our own regf writer
 *   (`scripts/_regf.ts`) and filled with `hivexregedit --merge`: the product name and version
 *   (`Microsoft\Windows NT\CurrentVersion`), `Select\Current`, the computer name, VMware's
 *   services and drivers (vmci, vmxnet3, vm3dmp, vmhgfs, vmmouse, vmusbmouse, vmmemctl,
 *   vsock, pvscsi, VMTools), a static IPv4 address on the vmxnet3 NIC, VMware Tools in the
 *   Uninstall key (with the `MsiExec.exe /I` that VMware writes there), `DevicePath`;
 *   Windows 8 and later also the `DriverDatabase` key, older ones `CriticalDeviceDatabase`;
 * - `Windows/System32/drivers/*.sys` of VMware, `Program Files/VMware/VMware Tools`;
 * - `hiberfil.sys`, zero-filled (Windows keeps it when hibernation is on but not in use).
 *
 * Variants:
 *
 * | variant      | what                                                              |
 * | ------------ | ----------------------------------------------------------------- |
 * | `win10`      | Windows 10 Pro, x86_64, build 19045                               |
 * | `srv2019`    | Windows Server 2019 Standard, build 17763                         |
 * | `srv2022`    | Windows Server 2022 Standard, build 20348, with a group policy that forbids installing devices |
 * | `win7x86`    | Windows 7 Professional SP1, 32-bit (i386), version 6.1            |
 * | `hibernated` | `win10` with Fast Startup on and a hibernation file in use ("HIBR") |
 * | `bitlocker`  | a partition that starts with a BitLocker volume header, no NTFS   |
 *
 * libguestfs runs with LIBGUESTFS_BACKEND=direct and, unless LIBGUESTFS_BACKEND_SETTINGS is
 * set, force_tcg, because KVM hangs on our build machines. The image is written to a
 * temporary file next to OUT and renamed, so that an OUT that exists is complete.
 *
 * @module
 */

import { Guestfs } from "../src/convert/guestfs.ts";
import { regFile, type RegValue } from "../src/convert/windows/registry.ts";
import { emptyHive } from "./_regf.ts";

/** The variants this script builds. */
export const VARIANTS = [
  "win10",
  "srv2019",
  "srv2022",
  "win7x86",
  "hibernated",
  "bitlocker",
] as const;

/** One variant. */
export type Variant = typeof VARIANTS[number];

interface Product {
  name: string;
  major: number;
  minor: number;
  build: string;
  type: "Client" | "Server";
  edition: string;
  arch: "x86_64" | "i386";
}

const PRODUCTS: Record<Exclude<Variant, "bitlocker">, Product> = {
  win10: {
    name: "Windows 10 Pro",
    major: 10,
    minor: 0,
    build: "19045",
    type: "Client",
    edition: "Professional",
    arch: "x86_64",
  },
  hibernated: {
    name: "Windows 10 Pro",
    major: 10,
    minor: 0,
    build: "19045",
    type: "Client",
    edition: "Professional",
    arch: "x86_64",
  },
  srv2019: {
    name: "Windows Server 2019 Standard",
    major: 10,
    minor: 0,
    build: "17763",
    type: "Server",
    edition: "ServerStandard",
    arch: "x86_64",
  },
  srv2022: {
    name: "Windows Server 2022 Standard",
    major: 10,
    minor: 0,
    build: "20348",
    type: "Server",
    edition: "ServerStandard",
    arch: "x86_64",
  },
  win7x86: {
    name: "Windows 7 Professional",
    major: 6,
    minor: 1,
    build: "7601",
    type: "Client",
    edition: "Professional",
    arch: "i386",
  },
};

/** VMware Tools' product code, as its MSI registers it. */
export const VMWARE_TOOLS_GUID = "{A4A6C5A9-1F3B-4D7A-9E2C-3B0F1D2E4C5A}";
/** The GUID of the phony guest's one network interface. */
export const NIC_GUID = "{6B8F1C2D-3E4A-4B5C-8D9E-0F1A2B3C4D5E}";
/** The static address the phony guest's NIC has. */
export const STATIC_IP = {
  address: "192.168.122.50",
  mask: "255.255.255.0",
  gateway: "192.168.122.1",
  dns: ["192.168.122.2", "192.168.122.3"],
};

/** VMware's services in the phony guest, with their start type. */
export const VMWARE_SERVICES: Record<string, { start: number; type: number; image: string }> = {
  vmci: { start: 0, type: 1, image: "System32\\drivers\\vmci.sys" },
  vmxnet3ndis6: { start: 3, type: 1, image: "System32\\drivers\\vmxnet3.sys" },
  vm3dmp: { start: 3, type: 1, image: "System32\\drivers\\vm3dmp.sys" },
  vmhgfs: { start: 1, type: 2, image: "System32\\drivers\\vmhgfs.sys" },
  vmmouse: { start: 3, type: 1, image: "System32\\drivers\\vmmouse.sys" },
  vmusbmouse: { start: 3, type: 1, image: "System32\\drivers\\vmusbmouse.sys" },
  vmmemctl: { start: 2, type: 1, image: "System32\\drivers\\vmmemctl.sys" },
  vsock: { start: 1, type: 1, image: "System32\\drivers\\vsock.sys" },
  pvscsi: { start: 0, type: 1, image: "System32\\drivers\\pvscsi.sys" },
  VMTools: {
    start: 2,
    type: 0x10,
    image: '"C:\\Program Files\\VMware\\VMware Tools\\vmtoolsd.exe"',
  },
};

/** A PE header that `file` (and so libguestfs inspection) reads as a console program. */
function peStub(arch: "x86_64" | "i386"): Uint8Array {
  const b = new Uint8Array(1024);
  const v = new DataView(b.buffer);
  b.set([0x4d, 0x5a], 0); // MZ
  v.setUint32(0x3c, 0x80, true);
  b.set([0x50, 0x45, 0, 0], 0x80); // PE\0\0
  v.setUint16(0x84, arch === "x86_64" ? 0x8664 : 0x014c, true);
  v.setUint16(0x86, 0, true); // sections
  v.setUint16(0x94, arch === "x86_64" ? 0xf0 : 0xe0, true); // optional header size
  v.setUint16(0x96, 0x0022, true); // executable, large address aware
  v.setUint16(0x98, arch === "x86_64" ? 0x20b : 0x10b, true); // PE32+ / PE32
  v.setUint16(0x98 + 68, 3, true); // subsystem: console
  return b;
}

function systemKeys(variant: Variant, p: Product): Record<string, Record<string, RegValue>> {
  const cs = "ControlSet001";
  const keys: Record<string, Record<string, RegValue>> = {
    "Select": {
      Current: { dword: 1 },
      Default: { dword: 1 },
      LastKnownGood: { dword: 1 },
    },
    [`${cs}\\Control\\ComputerName\\ComputerName`]: { ComputerName: { sz: "PHONY-WIN" } },
    [`${cs}\\Control\\Session Manager\\Power`]: {
      HiberbootEnabled: { dword: variant === "hibernated" ? 1 : 0 },
    },
    [`${cs}\\Services\\Tcpip\\Parameters`]: {
      Hostname: { sz: "phony-win" },
    },
    [`${cs}\\Services\\Tcpip\\Parameters\\Interfaces\\${NIC_GUID}`]: {
      EnableDHCP: { dword: 0 },
      IPAddress: { multiSz: [STATIC_IP.address] },
      SubnetMask: { multiSz: [STATIC_IP.mask] },
      DefaultGateway: { multiSz: [STATIC_IP.gateway] },
      NameServer: { sz: STATIC_IP.dns.join(",") },
    },
    [`${cs}\\Services\\disk`]: {
      Type: { dword: 1 },
      Start: { dword: 0 },
      ErrorControl: { dword: 1 },
      ImagePath: { expandSz: "System32\\drivers\\disk.sys" },
    },
  };
  for (const [name, s] of Object.entries(VMWARE_SERVICES)) {
    keys[`${cs}\\Services\\${name}`] = {
      Type: { dword: s.type },
      Start: { dword: s.start },
      ErrorControl: { dword: 1 },
      ImagePath: { expandSz: s.image },
      DisplayName: { sz: `VMware ${name}` },
    };
  }
  if (p.major >= 10 || (p.major === 6 && p.minor >= 2)) {
    keys["DriverDatabase\\DeviceIds\\PCI"] = {};
    keys["DriverDatabase\\DriverInfFiles"] = {};
    keys["DriverDatabase\\DriverPackages"] = {};
  } else {
    keys[`${cs}\\Control\\CriticalDeviceDatabase\\pci#ven_15ad&dev_07c0`] = {
      Service: { sz: "pvscsi" },
      ClassGUID: { sz: "{4D36E97B-E325-11CE-BFC1-08002BE10318}" },
    };
  }
  return keys;
}

function softwareKeys(variant: Variant, p: Product): Record<string, Record<string, RegValue>> {
  const version: Record<string, RegValue> = {
    ProductName: { sz: p.name },
    CurrentVersion: { sz: p.major >= 10 ? "6.3" : `${p.major}.${p.minor}` },
    CurrentBuildNumber: { sz: p.build },
    CurrentBuild: { sz: p.build },
    InstallationType: { sz: p.type },
    EditionID: { sz: p.edition },
    SystemRoot: { sz: "C:\\Windows" },
  };
  if (p.major >= 10) {
    version.CurrentMajorVersionNumber = { dword: p.major };
    version.CurrentMinorVersionNumber = { dword: p.minor };
  }
  const keys: Record<string, Record<string, RegValue>> = {
    "Microsoft\\Windows NT\\CurrentVersion": version,
    "Microsoft\\Windows\\CurrentVersion": {
      DevicePath: { expandSz: "%SystemRoot%\\inf" },
      ProgramFilesDir: { sz: "C:\\Program Files" },
    },
    [`Microsoft\\Windows\\CurrentVersion\\Uninstall\\${VMWARE_TOOLS_GUID}`]: {
      DisplayName: { sz: "VMware Tools" },
      Publisher: { sz: "VMware, Inc." },
      DisplayVersion: { sz: "12.3.5.22544099" },
      UninstallString: { expandSz: `MsiExec.exe /I${VMWARE_TOOLS_GUID}` },
    },
    "VMware, Inc.\\VMware Tools": {
      InstallPath: { sz: "C:\\Program Files\\VMware\\VMware Tools\\" },
    },
  };
  if (variant === "srv2022") {
    keys["Policies\\Microsoft\\Windows\\DeviceInstall\\Restrictions"] = {
      DenyUnspecified: { dword: 1 },
    };
  }
  return keys;
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Writes a hive from our empty one and a .reg file merged into it. */
async function buildHive(
  work: string,
  name: "SYSTEM" | "SOFTWARE",
  keys: Record<string, Record<string, RegValue>>,
): Promise<string> {
  const hive = `${work}/${name}`;
  const prefix = `HKEY_LOCAL_MACHINE\\${name}`;
  await Deno.writeFile(hive, emptyHive(`CMI-CreateHive{${name}}`));
  await Deno.writeTextFile(`${work}/${name}.reg`, regFile(prefix, keys));
  await run("hivexregedit", ["--merge", "--prefix", prefix, hive, `${work}/${name}.reg`]);
  return hive;
}

/**
 * Builds one variant.
 *
 * @param out The image to write.
 * @param variant Which guest.
 */
export async function makeWindowsGuest(out: string, variant: Variant): Promise<void> {
  Deno.env.set("LIBGUESTFS_BACKEND", Deno.env.get("LIBGUESTFS_BACKEND") ?? "direct");
  if (Deno.env.get("LIBGUESTFS_BACKEND_SETTINGS") === undefined) {
    Deno.env.set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
  }
  const dir = out.includes("/") ? out.slice(0, out.lastIndexOf("/")) || "/" : ".";
  const tmp = `${dir}/.${out.slice(out.lastIndexOf("/") + 1)}.partial.${Deno.pid}`;
  const work = await Deno.makeTempDir({ prefix: "vmshift-windows-guest-" });
  try {
    {
      using f = await Deno.open(tmp, { create: true, write: true, truncate: true });
      await f.truncate(512 * 1024 * 1024);
    }
    await using g = Guestfs.create();
    g.addDrive(tmp, { format: "raw", cachemode: "unsafe" });
    await g.launch();
    await g.partDisk("/dev/sda", "mbr");
    if (variant === "bitlocker") {
      // A BitLocker (Windows 7 and later) volume: a boot sector whose OEM name is "-FVE-FS-"
      // and that points (at byte 176) to FVE metadata starting with the same signature,
      // which is what blkid looks for.
      const header = new Uint8Array(128 * 1024);
      const view = new DataView(header.buffer);
      const signature = new TextEncoder().encode("-FVE-FS-");
      header.set([0xeb, 0x58, 0x90], 0);
      header.set(signature, 3);
      view.setUint16(11, 512, true); // bytes per sector
      header[13] = 8; // sectors per cluster
      view.setBigUint64(176, 0x10000n, true); // first FVE metadata block
      header.set([0x55, 0xaa], 510);
      header.set(signature, 0x10000);
      view.setUint16(0x10008, 0x40, true); // metadata header size
      view.setUint16(0x1000a, 2, true); // metadata version (Windows 7+)
      await Deno.writeFile(`${work}/bde`, header);
      await g.upload(`${work}/bde`, "/dev/sda1");
    } else {
      const p = PRODUCTS[variant];
      await g.mkfs("ntfs", "/dev/sda1");
      await g.mount("/dev/sda1", "/");
      for (
        const d of [
          "/Windows/System32/config",
          "/Windows/System32/drivers",
          "/Windows/INF",
          "/Windows/Temp",
          "/Program Files/VMware/VMware Tools",
          "/ProgramData",
          "/Users/Public",
        ]
      ) g.mkdirP(d);
      await g.write("/Windows/System32/cmd.exe", peStub(p.arch));
      await g.write("/Windows/System32/ntoskrnl.exe", peStub(p.arch));
      for (const s of Object.values(VMWARE_SERVICES)) {
        if (s.image.endsWith(".sys")) {
          await g.write(`/Windows/${s.image.replaceAll("\\", "/")}`, "phony");
        }
      }
      await g.write("/Windows/System32/drivers/disk.sys", "phony");
      await g.write("/Program Files/VMware/VMware Tools/vmtoolsd.exe", peStub(p.arch));
      const hiber = new Uint8Array(64 * 1024);
      if (variant === "hibernated") hiber.set(new TextEncoder().encode("HIBR"), 0);
      await g.write("/hiberfil.sys", hiber);
      await g.upload(
        await buildHive(work, "SYSTEM", systemKeys(variant, p)),
        "/Windows/System32/config/SYSTEM",
      );
      await g.upload(
        await buildHive(work, "SOFTWARE", softwareKeys(variant, p)),
        "/Windows/System32/config/SOFTWARE",
      );
      await g.umountAll();
      // Check that inspection sees what the tests expect.
      const roots = await g.inspectOs();
      const root = roots[0];
      if (roots.length !== 1 || root === undefined) {
        throw new Error(`inspection found ${roots.length} roots`);
      }
      const seen = [
        g.inspectGetType(root),
        g.inspectGetProductName(root),
        g.inspectGetArch(root),
        `${g.inspectGetMajorVersion(root)}.${g.inspectGetMinorVersion(root)}`,
      ];
      const want = ["windows", p.name, p.arch, `${p.major}.${p.minor}`];
      if (seen.join("|") !== want.join("|")) {
        throw new Error(`inspection sees ${seen.join(", ")}; expected ${want.join(", ")}`);
      }
    }
    await g.shutdown();
    await Deno.rename(tmp, out);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

if (import.meta.main) {
  const [out, variant] = Deno.args;
  if (!out || !VARIANTS.includes(variant as Variant) || Deno.args.length !== 2) {
    console.error(`usage: make_windows_guest.ts OUT.img ${VARIANTS.join("|")}`);
    Deno.exit(2);
  }
  const started = Date.now();
  await makeWindowsGuest(out, variant as Variant);
  console.error(
    `make_windows_guest: ${variant} built in ${Math.round((Date.now() - started) / 1000)} s`,
  );
}
