/**
 * What makes a Windows guest unsafe or impossible to convert, checked before anything in it
 * is changed. (A BitLocker-encrypted system volume is refused earlier, in `../mod.ts`: without
 * the key, inspection cannot even find Windows on it.)
 *
 * @module
 */

import { realPath, type WindowsGuest } from "./_guest.ts";
import { withHive } from "./registry.ts";

/**
 * Refuses a guest that is hibernated (or shut down with Fast Startup, which hibernates the
 * kernel session), that runs a Windows version vmshift has no drivers layout for, or whose
 * architecture is not x86; warns when a group policy forbids installing devices.
 *
 * @param guest The mounted guest.
 * @throws {Error} With what to do, when the guest must not be converted.
 */
export async function checkWindows(guest: WindowsGuest): Promise<void> {
  const { g, major, minor, arch, product } = guest;
  if (arch !== "x86_64" && arch !== "i386") {
    throw new Error(`Unsupported guest: ${product} for ${arch}; vmshift converts x86 Windows`);
  }
  if (major < 6 || (major === 6 && minor < 1)) {
    throw new Error(
      `Unsupported guest: ${product} (Windows ${major}.${minor}); vmshift converts Windows 7 ` +
        "and Windows Server 2008 R2 and later, for which virtio-win has drivers",
    );
  }

  const fastStartup = await withHive(
    g,
    guest.systemHive,
    false,
    (h) =>
      h.getDword([guest.controlSet, "Control", "Session Manager", "Power"], "HiberbootEnabled"),
  );
  const hiberfil = realPath(g, "/hiberfil.sys");
  if (hiberfil !== undefined && g.isFile(hiberfil)) {
    // Windows writes "HIBR" (or "hibr", "WAKE", "RSTR" on older releases) at the start of
    // hiberfil.sys while it holds a session to resume, and zeroes it when it resumes.
    const magic = new TextDecoder().decode(await g.pread(hiberfil, 4, 0)).toUpperCase();
    if (["HIBR", "WAKE", "RSTR"].includes(magic)) {
      throw new Error(
        fastStartup === 1
          ? `${product} was shut down with Fast Startup on, which hibernates it: its disks are ` +
            "not clean and changing them would lose data. Start it on VMware, turn Fast Startup " +
            'off (Control Panel, Power Options, "Choose what the power buttons do") or run ' +
            '"shutdown /s /t 0", then migrate it again'
          : `${product} is hibernated: its disks are not clean and changing them would lose ` +
            'data. Start it on VMware and shut it down fully ("shutdown /s /t 0"), then migrate ' +
            "it again",
      );
    }
  }

  const policy = ["Policies", "Microsoft", "Windows", "DeviceInstall", "Restrictions"];
  const denied = await withHive(
    g,
    guest.softwareHive,
    false,
    (h) =>
      ["DenyUnspecified", "DenyDeviceIDs", "DenyDeviceClasses", "DenyAll"].filter((name) =>
        h.getDword(policy, name) === 1
      ),
  );
  if (denied.length) {
    guest.report.problem(
      `A group policy forbids installing devices (HKLM\\SOFTWARE\\${policy.join("\\")}: ` +
        `${denied.join(", ")}): Windows may not install the virtio drivers and may not find ` +
        "its disk on the first boot. Lift the policy before migrating, or allow the virtio " +
        "devices (PCI\\VEN_1AF4)",
    );
  }
}
