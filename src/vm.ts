/**
 * The VM model: what an input learns about the source VM, what conversion adds, and what an
 * output needs to recreate the VM on KVM. Inputs fill in what their source describes and leave
 * the rest undefined; outputs choose sensible defaults for what is missing.
 *
 * @module
 */

/** Firmware the guest boots with. */
export type Firmware = "bios" | "uefi";

/** Bus a disk is attached to, on the source or on the target. */
export type DiskBus = "ide" | "sata" | "scsi" | "nvme" | "virtio-blk" | "virtio-scsi";

/** NIC model, on the source or on the target. */
export type NicModel = "e1000" | "e1000e" | "vmxnet3" | "rtl8139" | "virtio" | "unknown";

/** One disk of the VM. */
export interface Disk {
  /** Position of the disk in the VM (0 for the first disk: `sda`). */
  index: number;
  /** Human name of where the disk came from, for messages (a path, a datastore path). */
  source: string;
  /** Size the guest sees, in bytes. */
  virtualSize: number;
  /** The bus on the source, when known. */
  bus?: DiskBus;
  /** The disk's format on the source, when known (raw, qcow2, vmdk). */
  sourceFormat?: string;
}

/** One network interface of the VM. */
export interface Nic {
  /** MAC address, lower case, colon separated, when known. */
  mac?: string;
  /** The network or port group it was connected to on the source. */
  network?: string;
  /** The model on the source. */
  model?: NicModel;
}

/** What vmshift knows about a VM. */
export interface Vm {
  /** Name; the output uses `-on` if given, else this. */
  name: string;
  /** Memory in bytes. */
  memory: number;
  /** Virtual CPUs. */
  vcpus: number;
  /** CPU topology, when the source gives one. */
  cpuTopology?: { sockets: number; cores: number; threads: number };
  /** Firmware; undefined when the input cannot tell (conversion inspects the guest). */
  firmware?: Firmware;
  /** Secure boot enabled on the source. */
  secureBoot?: boolean;
  /** The source's guest OS identifier (e.g. VMware `guestOS`), when known. */
  guestOs?: string;
  /**
   * The VM generation ID (a UUID), when the source has one (VMware `vm.genid`/`vm.genidX`), so
   * that the target can give the guest the same one (Windows Active Directory relies on it).
   */
  genid?: string;
  /** Disks, in order: index 0 is the boot disk. */
  disks: Disk[];
  /** Network interfaces. */
  nics: Nic[];
  /**
   * Set by conversion when the guest has drivers only for emulated devices (a Windows guest
   * without virtio-win drivers): outputs then attach disks on SATA and NICs as e1000.
   * Undefined means virtio.
   */
  targetDevices?: { disk: "virtio-blk" | "sata"; nic: "virtio" | "e1000" };
}

/** Default memory for inputs that cannot tell (`-i disk`): 2 GiB, as virt-v2v uses. */
export const DEFAULT_MEMORY = 2 * 1024 * 1024 * 1024;

/** Default vCPUs for inputs that cannot tell. */
export const DEFAULT_VCPUS = 1;

/**
 * The Linux-style name of the disk at a position for a virtio-blk target: 0 → `vda`,
 * 25 → `vdz`, 26 → `vdaa`.
 *
 * @param index Disk position.
 * @param prefix `vd` (virtio-blk) or `sd`.
 * @returns The device name.
 * @example
 * ```ts
 * import { diskName } from "./vm.ts";
 * if (diskName(27, "sd") !== "sdab") throw new Error();
 * ```
 */
export function diskName(index: number, prefix: "vd" | "sd" | "hd" = "sd"): string {
  let n = index;
  let s = "";
  do {
    s = String.fromCharCode(97 + (n % 26)) + s;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return prefix + s;
}
