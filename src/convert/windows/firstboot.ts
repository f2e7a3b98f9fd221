/**
 * First-boot actions: what can only be done by Windows itself, run once as SYSTEM at the
 * first boot on KVM, before anyone logs in, each step logged to
 * `C:\Windows\vmshift-firstboot.log` (which stays for the administrator to read):
 *
 * 1. install the staged virtio drivers with pnputil;
 * 2. uninstall VMware Tools with the command from its Uninstall key;
 * 3. install the QEMU guest agent;
 * 4. bring every disk online and writable (Windows leaves non-boot disks offline after a bus
 *    change, by its SAN policy), and set the SAN policy to OnlineAll;
 * 5. re-apply static IPv4 settings to the new NICs, found by MAC;
 * 6. remove themselves.
 *
 * The mechanism is a machine startup script of the local Group Policy
 * (`%SystemRoot%\System32\GroupPolicy`): Windows runs those as SYSTEM during boot, before the
 * logon screen, and waits for them, on every release from Windows 7 to Server 2025, with no
 * program of ours in the guest. The alternatives need more: a service needs a service
 * executable (cmd.exe is not one: the service manager kills it after 30 s), which we would
 * have to ship for every architecture, as virt-v2v ships rhsrvany; a scheduled task is
 * stored in an undocumented binary registry format; `RunOnce` runs only when someone logs on,
 * and as that user. The script is registered where the Group Policy client reads it
 * (`gpt.ini` and `Machine\Scripts\scripts.ini`) and in the registry cache it builds from
 * them, so that it runs whether or not the client reprocesses the local policy at that boot.
 * An existing local policy is kept: our script is added after its scripts, and its files are
 * restored when ours removes itself.
 *
 * @module
 */

import { realPath, type StaticIp, type WindowsGuest, windowsPath } from "./_guest.ts";
import type { InstalledDrivers } from "./virtio.ts";
import type { VmwareTools } from "./vmware.ts";
import { type Hive, withHive } from "./registry.ts";

/** Where the first-boot files go in the guest. */
export const FIRSTBOOT_DIR = "/Program Files/vmshift/firstboot";

/** The Group Policy client-side extension that runs scripts, with its tool extension. */
const SCRIPTS_CSE =
  "[{42B5FAAE-6536-11D2-AE5A-0000F87571E3}{40B6664F-4972-11D1-A7CA-0000F87571E3}]";

/** What the first boot will do. */
export interface FirstbootPlan {
  /** From {@linkcode installVirtioDrivers}. */
  drivers: InstalledDrivers;
  /** From {@linkcode findVmwareTools}. */
  vmwareTools: VmwareTools | undefined;
  /** Static IPs to apply, by MAC. */
  staticIps: StaticIp[];
}

function prefixToMask(prefix: number): string {
  const bits = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (bits >>> s) & 255).join(".");
}

function maskToPrefix(mask: string): number | undefined {
  const parts = mask.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) return undefined;
  const bits = parts.reduce((a, p) => (a << 8) | p, 0) >>> 0;
  const prefix = bits.toString(2).replace(/0+$/, "").length;
  return prefixToMask(prefix) === mask ? prefix : undefined;
}

/**
 * Parses virt-v2v's `--mac MAC:ip:ADDR,GW,LEN,DNS,...`; other `--mac` forms (`network:`,
 * `bridge:`) are not IP settings and give undefined.
 *
 * @param spec The option's value.
 * @returns The static IP, or undefined for another form.
 * @throws {RangeError} For a malformed `ip:` form.
 *
 * @example
 * ```ts
 * import { parseMacIp } from "./firstboot.ts";
 * const ip = parseMacIp("52:54:00:12:34:56:ip:192.168.1.10,192.168.1.1,24,192.168.1.2");
 * if (ip?.prefix !== 24 || ip.dns[0] !== "192.168.1.2") throw new Error();
 * ```
 */
export function parseMacIp(spec: string): StaticIp | undefined {
  const m = /^((?:[0-9a-f]{2}:){5}[0-9a-f]{2}):(ip|network|bridge):(.*)$/i.exec(spec);
  if (!m) {
    throw new RangeError(
      `Bad --mac "${spec}": expected MAC:ip:ADDR,GW,LEN,DNS... (or MAC:network:NAME)`,
    );
  }
  if (m[2]!.toLowerCase() !== "ip") return undefined;
  const [address = "", gateway = "", len = "", ...dns] = m[3]!.split(",");
  const ipv4 = /^(\d{1,3})(\.\d{1,3}){3}$/;
  const prefix = len === "" ? 24 : Number(len);
  if (
    !ipv4.test(address) || (gateway !== "" && !ipv4.test(gateway)) ||
    !Number.isInteger(prefix) || prefix < 1 || prefix > 32 || dns.some((d) => !ipv4.test(d))
  ) {
    throw new RangeError(
      `Bad --mac "${spec}": expected MAC:ip:ADDR,GW,LEN,DNS... with IPv4 addresses and a prefix length 1-32`,
    );
  }
  return { mac: m[1]!.toLowerCase(), address, gateway, prefix, dns };
}

/**
 * The static IPv4 settings of the guest's old NICs (`Tcpip\Parameters\Interfaces`), matched
 * to the VM's MACs: only when there is exactly one static interface and one NIC can vmshift
 * tell which is which; otherwise the report says what to pass with `--mac`.
 *
 * @param guest The mounted guest.
 * @returns The settings to re-apply; empty when none or ambiguous.
 */
export async function staticIpsFromGuest(guest: WindowsGuest): Promise<StaticIp[]> {
  const interfaces = [guest.controlSet, "Services", "Tcpip", "Parameters", "Interfaces"];
  const found = await withHive(guest.g, guest.systemHive, false, (h: Hive) => {
    const out: Omit<StaticIp, "mac">[] = [];
    for (const id of h.children(interfaces)) {
      const key = [...interfaces, id];
      if (h.getDword(key, "EnableDHCP") !== 0) continue;
      const list = (name: string) => {
        const v = h.get(key, name);
        if (v && "multiSz" in v) return [...v.multiSz];
        if (v && "sz" in v) return v.sz.split(/[ ,]+/).filter((s) => s !== "");
        return [];
      };
      const address = list("IPAddress")[0];
      const mask = list("SubnetMask")[0];
      if (!address || address === "0.0.0.0" || !mask) continue;
      out.push({
        address,
        prefix: maskToPrefix(mask) ?? 24,
        gateway: list("DefaultGateway")[0] ?? "",
        dns: list("NameServer"),
      });
    }
    return out;
  });
  const macs = guest.vm.nics.map((n) => n.mac).filter((m): m is string => m !== undefined);
  if (!found.length) return [];
  if (found.length === 1 && macs.length === 1) return [{ mac: macs[0]!, ...found[0]! }];
  guest.report.problem(
    `The guest has ${found.length} static IPv4 configurations (${
      found.map((f) => `${f.address}/${f.prefix}`).join(", ")
    }) and ${macs.length} NICs: vmshift cannot tell which goes where; give each with ` +
      "--mac MAC:ip:ADDR,GW,LEN,DNS...",
  );
  return [];
}

function psQuote(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

/** The PowerShell that applies one static IP, waiting for Plug and Play to add the NIC. */
function ipScript(ip: StaticIp): string {
  const mac = ip.mac.toUpperCase();
  return [
    `$mac = ${psQuote(mac)}`,
    "$nic = $null",
    "for ($i = 0; $i -lt 60 -and -not $nic; $i++) {",
    "  $nic = Get-WmiObject Win32_NetworkAdapterConfiguration | Where-Object { $_.MACAddress -eq $mac }",
    "  if (-not $nic) { Start-Sleep -Seconds 5 }",
    "}",
    'if (-not $nic) { Write-Output "no NIC with MAC $mac"; exit 1 }',
    `$r = $nic.EnableStatic(@(${psQuote(ip.address)}), @(${psQuote(prefixToMask(ip.prefix))}))`,
    'Write-Output "EnableStatic: $($r.ReturnValue)"',
    ...(ip.gateway
      ? [
        `$r = $nic.SetGateways(@(${psQuote(ip.gateway)}), @([uint16]1))`,
        'Write-Output "SetGateways: $($r.ReturnValue)"',
      ]
      : []),
    ...(ip.dns.length
      ? [
        `$r = $nic.SetDNSServerSearchOrder(@(${ip.dns.map(psQuote).join(", ")}))`,
        'Write-Output "SetDNSServerSearchOrder: $($r.ReturnValue)"',
      ]
      : []),
    "",
  ].join("\r\n");
}

/** The first-boot batch file. */
function batchScript(guest: WindowsGuest, plan: FirstbootPlan, restore: string[]): string {
  const dir = windowsPath(FIRSTBOOT_DIR);
  const lines = [
    "@echo off",
    "rem vmshift: first boot on KVM. Runs once as SYSTEM, as a Group Policy startup script,",
    "rem then removes itself. Each step is logged to %SystemRoot%\\vmshift-firstboot.log.",
    "setlocal EnableExtensions",
    'set "LOG=%SystemRoot%\\vmshift-firstboot.log"',
    `set "HERE=${dir}"`,
    'call :log "vmshift first boot: start"',
  ];
  const step = (what: string, ...commands: string[]) => {
    lines.push(`call :log "step: ${what}"`);
    for (const c of commands) {
      lines.push(`${c} >> "%LOG%" 2>&1`);
      lines.push('call :log "  exit code %ERRORLEVEL%"');
    }
  };
  const staged = plan.drivers.staged && windowsPath(plan.drivers.staged);
  if (staged) {
    step(
      "install the staged virtio drivers",
      guest.major >= 10
        ? `pnputil.exe /add-driver "${staged}\\*.inf" /install`
        : `pnputil.exe -i -a "${staged}\\*.inf"`,
    );
  }
  if (plan.vmwareTools) step("uninstall VMware Tools", plan.vmwareTools.uninstall);
  if (plan.drivers.agentMsi) {
    step(
      "install the QEMU guest agent",
      `msiexec.exe /i "${
        windowsPath(plan.drivers.agentMsi)
      }" /qn /norestart /l*v "%SystemRoot%\\vmshift-qemu-ga.log"`,
    );
  }
  // Windows 8 / 2012 and later: the Storage module, whose output does not depend on the
  // display language. Windows 7 / 2008 R2: diskpart, one disk at a time (its "list disk"
  // output is localized: only English and "Disc"-spelling locales are matched).
  const modern = guest.major > 6 || (guest.major === 6 && guest.minor >= 2);
  step(
    "bring all disks online",
    'diskpart.exe /s "%HERE%\\san.txt"',
    modern
      ? 'powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "Get-Disk | Where-Object { $_.IsOffline } | Set-Disk -IsOffline $false; Get-Disk | Where-Object { $_.IsReadOnly } | Set-Disk -IsReadOnly $false"'
      : `for /f "tokens=2" %%d in ('diskpart.exe /s "%HERE%\\list.txt" ^| findstr /r /c:"^ *Dis[ck] [0-9]"') do (` +
        `(echo select disk %%d& echo online disk noerr& echo attributes disk clear readonly noerr) > "%TEMP%\\vmshift-disk.txt"& ` +
        `diskpart.exe /s "%TEMP%\\vmshift-disk.txt")`,
  );
  plan.staticIps.forEach((ip, i) => {
    step(
      `set ${ip.address}/${ip.prefix} on the NIC ${ip.mac}`,
      `powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%HERE%\\ip${i}.ps1"`,
    );
  });
  lines.push('call :log "step: remove the first-boot script"');
  lines.push(...restore.map((c) => `${c} >> "%LOG%" 2>&1`));
  lines.push(
    'call :log "vmshift first boot: done"',
    // Delete this directory once this script has exited.
    `start "" /b cmd.exe /c "ping -n 5 127.0.0.1 >nul & rd /s /q "${
      windowsPath("/Program Files/vmshift")
    }""`,
    "exit /b 0",
    "",
    ":log",
    'echo %DATE% %TIME% %~1>> "%LOG%"',
    "goto :eof",
    "",
  );
  return lines.join("\r\n");
}

/** UTF-16LE with a byte order mark, as Windows writes scripts.ini. */
function utf16File(text: string): Uint8Array {
  const out = new Uint8Array(2 + text.length * 2);
  const view = new DataView(out.buffer);
  view.setUint16(0, 0xfeff, true);
  for (let i = 0; i < text.length; i++) view.setUint16(2 + i * 2, text.charCodeAt(i), true);
  return out;
}

function utf16Text(bytes: Uint8Array): string {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const start = bytes[0] === 0xff && bytes[1] === 0xfe ? 2 : 0;
  if (start === 0) return new TextDecoder().decode(bytes);
  let s = "";
  for (let i = start; i + 1 < bytes.length; i += 2) {
    s += String.fromCharCode(view.getUint16(i, true));
  }
  return s;
}

/**
 * Writes the first-boot script and registers it as a startup script of the local Group
 * Policy.
 *
 * @param guest The mounted guest.
 * @param plan What to do at the first boot.
 */
export async function installFirstboot(guest: WindowsGuest, plan: FirstbootPlan): Promise<void> {
  const { g, report } = guest;
  const dir = FIRSTBOOT_DIR;
  g.mkdirP(dir);
  const script = `${dir}/firstboot.cmd`;
  const gpDir = `${
    realPath(g, `${guest.systemroot}/System32`) ?? `${guest.systemroot}/System32`
  }/GroupPolicy`;
  const restore: string[] = [];

  // gpt.ini: the policy's version (the client reprocesses a policy whose version changed) and
  // the extensions it uses.
  g.mkdirP(`${gpDir}/Machine/Scripts/Startup`);
  const gptPath = realPath(g, `${gpDir}/gpt.ini`);
  let gpt = "[General]\r\ngPCMachineExtensionNames=\r\nVersion=0\r\n";
  if (gptPath) {
    gpt = await g.cat(gptPath);
    g.cp(gptPath, `${dir}/gpt.ini.orig`);
    restore.push(`copy /y "%HERE%\\gpt.ini.orig" "${windowsPath(gptPath)}"`);
  } else {
    restore.push(`del /f "${windowsPath(`${gpDir}/gpt.ini`)}"`);
  }
  gpt = gpt.replace(/^Version=(\d+)/m, (_, v) => `Version=${Number(v) + 1}`);
  if (!/^Version=/m.test(gpt)) gpt += "Version=1\r\n";
  gpt = gpt.replace(
    /^gPCMachineExtensionNames=(.*)$/m,
    (line, names: string) =>
      names.includes(SCRIPTS_CSE.slice(1, 39))
        ? line
        : `gPCMachineExtensionNames=${SCRIPTS_CSE}${names}`,
  );
  if (!/^gPCMachineExtensionNames=/m.test(gpt)) {
    gpt = gpt.replace(
      /^\[General\]\r?\n/m,
      `[General]\r\ngPCMachineExtensionNames=${SCRIPTS_CSE}\r\n`,
    );
  }
  await g.write(`${gpDir}/gpt.ini`, gpt);

  // scripts.ini: our script after the policy's own startup scripts.
  const iniPath = realPath(g, `${gpDir}/Machine/Scripts/scripts.ini`);
  let ini = "";
  if (iniPath) {
    ini = utf16Text(await g.readFile(iniPath));
    g.cp(iniPath, `${dir}/scripts.ini.orig`);
    restore.push(`copy /y "%HERE%\\scripts.ini.orig" "${windowsPath(iniPath)}"`);
  } else {
    restore.push(`del /f /a "${windowsPath(`${gpDir}/Machine/Scripts/scripts.ini`)}"`);
  }
  const startup = /^\[Startup\]\r?\n((?:(?!\[).*\r?\n?)*)/m.exec(ini);
  const used = startup
    ? [...startup[1]!.matchAll(/^(\d+)CmdLine=/gm)].map((m) => Number(m[1]))
    : [];
  const index = used.length ? Math.max(...used) + 1 : 0;
  const entry = `${index}CmdLine=${windowsPath(script)}\r\n${index}Parameters=\r\n`;
  ini = startup
    ? ini.replace(startup[0], `${startup[0].replace(/\r?\n?$/, "\r\n")}${entry}`)
    : `${ini}${ini && !ini.endsWith("\n") ? "\r\n" : ""}[Startup]\r\n${entry}`;
  await g.write(`${gpDir}/Machine/Scripts/scripts.ini`, utf16File(ini));

  // The registry cache the Group Policy client builds from those files, read at startup by
  // the script runner (gpscript.exe).
  const cacheKeys: string[] = [];
  await withHive(g, guest.softwareHive, true, (h) => {
    const gp = ["Microsoft", "Windows", "CurrentVersion", "Group Policy"];
    for (
      const base of [[...gp, "Scripts", "Startup"], [
        ...gp,
        "State",
        "Machine",
        "Scripts",
        "Startup",
      ]]
    ) {
      const n = h.children(base).filter((c) => /^\d+$/.test(c)).length;
      h.set([...base, String(n)], {
        "GPO-ID": { sz: "LocalGPO" },
        "SOM-ID": { sz: "Local" },
        FileSysPath: { sz: windowsPath(`${gpDir}/Machine`) },
        DisplayName: { sz: "Local Group Policy" },
        GPOName: { sz: "Local Group Policy" },
        PSScriptOrder: { dword: 1 },
      });
      h.set([...base, String(n), "0"], {
        Script: { sz: windowsPath(script) },
        Parameters: { sz: "" },
        IsPowershell: { dword: 0 },
        ExecTime: { qword: 0n },
      });
      cacheKeys.push(`HKLM\\SOFTWARE\\${[...base, String(n)].join("\\")}`);
    }
  });
  restore.push(...cacheKeys.map((k) => `reg.exe delete "${k}" /f`));

  await g.write(`${dir}/san.txt`, "san policy=OnlineAll\r\n");
  await g.write(`${dir}/list.txt`, "list disk\r\n");
  for (const [i, ip] of plan.staticIps.entries()) await g.write(`${dir}/ip${i}.ps1`, ipScript(ip));
  await g.write(script, batchScript(guest, plan, restore));

  const steps = [
    ...(plan.drivers.staged ? ["install the staged drivers with pnputil"] : []),
    ...(plan.vmwareTools ? [`uninstall VMware Tools (${plan.vmwareTools.uninstall})`] : []),
    ...(plan.drivers.agentMsi ? ["install the QEMU guest agent"] : []),
    "bring all disks online",
    ...plan.staticIps.map((ip) => `set ${ip.address}/${ip.prefix} on the NIC ${ip.mac}`),
  ];
  report.changed(
    `Added a first-boot script (${windowsPath(script)}, a local Group Policy startup script run ` +
      `as SYSTEM before logon, logged to C:\\Windows\\vmshift-firstboot.log) that will: ${
        steps.join("; ")
      }`,
  );
}
