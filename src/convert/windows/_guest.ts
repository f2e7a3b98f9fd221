/**
 * What every Windows conversion step works on: the mounted guest, what inspection and the
 * registry say about it, and where to report.
 *
 * @module
 */

import type { Vm } from "../../vm.ts";
import type { Guestfs } from "../guestfs.ts";
import type { ConversionReport } from "../report.ts";

/** A static IPv4 configuration for the NIC with a MAC (`--mac MAC:ip:ADDR,GW,LEN,DNS...`). */
export interface StaticIp {
  /** The NIC's MAC address, lower case, colon separated. */
  mac: string;
  /** The address, e.g. `192.168.122.50`. */
  address: string;
  /** The default gateway, or `""` for none. */
  gateway: string;
  /** The prefix length, e.g. 24. */
  prefix: number;
  /** DNS servers, in order. */
  dns: string[];
}

/** A Windows guest, mounted at `/` in the appliance. */
export interface WindowsGuest {
  /** The libguestfs handle. */
  g: Guestfs;
  /** The root filesystem, e.g. `/dev/sda2`. */
  root: string;
  /** The VM (its NICs give the MACs). */
  vm: Vm;
  /** Where changes and problems go. */
  report: ConversionReport;
  /** Stops the conversion. */
  signal: AbortSignal;
  /** Debug messages (`-v`). */
  debug?: ((line: string) => void) | undefined;
  /** `%SystemRoot%` as a guest path with its real case, e.g. `/Windows`. */
  systemroot: string;
  /** The SYSTEM hive, e.g. `/Windows/System32/config/SYSTEM`. */
  systemHive: string;
  /** The SOFTWARE hive. */
  softwareHive: string;
  /** The control set Windows boots with, e.g. `ControlSet001`. */
  controlSet: string;
  /** Major and minor version: 6.1 is Windows 7 / 2008 R2, 10.0 is Windows 10/11/2016+. */
  major: number;
  /** Minor version. */
  minor: number;
  /** Build number (`CurrentBuildNumber`), which tells Windows 11 from 10 and the servers apart. */
  build: number;
  /** `Client` or `Server` (inspection's product variant, `InstallationType`). */
  variant: string;
  /** `x86_64` or `i386`. */
  arch: string;
  /** Product name, e.g. `Windows Server 2019 Standard`. */
  product: string;
  /**
   * The virtio-win directory, or undefined when none was found. For an ISO, a host directory
   * holding the part of the ISO this guest needs (see `copyFromIso`).
   */
  virtioWin: string | undefined;
  /** The virtio-win ISO that {@linkcode virtioWin} was copied from, for messages. */
  virtioWinIso?: string | undefined;
  /** Static IP settings given with `--mac`, by MAC. */
  staticIps: StaticIp[];
}

/**
 * The path of a file or directory of the guest with its real case: Windows names are not
 * case sensitive, the appliance's NTFS driver is.
 *
 * @param g The handle.
 * @param path A path with any case, from `/`.
 * @returns The path as it exists, or undefined when some part is missing.
 */
export function realPath(g: Guestfs, path: string): string | undefined {
  let real = "";
  for (const part of path.split("/").filter((p) => p !== "")) {
    const dir = real === "" ? "/" : real;
    if (!g.isDir(dir)) return undefined;
    const found = g.ls(dir).find((e) => e.toLowerCase() === part.toLowerCase());
    if (found === undefined) return undefined;
    real = `${real}/${found}`;
  }
  return real === "" ? "/" : real;
}

/** Turns a guest path into a Windows path on drive C:, e.g. `/Windows` → `C:\Windows`. */
export function windowsPath(path: string): string {
  return `C:${path.replaceAll("/", "\\")}`;
}
