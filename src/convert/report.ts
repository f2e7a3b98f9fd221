/**
 * The conversion report: what conversion changed in the guest and what it could not do. It is
 * printed at the end of the conversion (one JSON object with `--machine-readable`), so that the
 * person who migrated the VM knows what to look at before handing it back.
 *
 * @module
 */

/** What conversion found out about the guest. */
export interface GuestInfo {
  /** libguestfs's root device, e.g. `/dev/sda1`. */
  root: string;
  /** `linux`, `windows`, ... */
  type: string;
  /** `debian`, `ubuntu`, `rhel`, `fedora`, ... */
  distro: string;
  /** Major and minor version. */
  version: string;
  /** The product name, e.g. `Debian GNU/Linux 12 (bookworm)`. */
  product: string;
  /** Architecture, e.g. `x86_64`. */
  arch: string;
}

/** The disk bus and NIC model the output must give the converted guest. */
export interface TargetDevices {
  /** `virtio-blk`, or `sata` for a guest without virtio drivers. */
  disk: "virtio-blk" | "sata";
  /** `virtio`, or `e1000` for a guest without virtio drivers. */
  nic: "virtio" | "e1000";
}

/** Collects what conversion did. */
export class ConversionReport {
  /** The guest, once inspected. */
  guest?: GuestInfo;
  /** Changes made, in order, each a sentence. */
  readonly changes: string[] = [];
  /** Things that could not be done; the guest may still boot, but look at these. */
  readonly problems: string[] = [];
  /** Filesystems trimmed, with what happened. */
  readonly trimmed: string[] = [];
  /**
   * The devices the converted guest has drivers for, when conversion chose them (Windows
   * without virtio-win gets emulated ones); undefined means virtio.
   */
  devices?: TargetDevices;
  readonly #log: ((line: string) => void) | undefined;

  /**
   * @param log Called with every change and problem as it happens (for `-v`).
   */
  constructor(log?: (line: string) => void) {
    this.#log = log;
  }

  /**
   * Records a change.
   * @param text What changed, e.g. `Removed open-vm-tools`.
   */
  changed(text: string): void {
    this.changes.push(text);
    this.#log?.(`conversion: ${text}`);
  }

  /**
   * Records something that could not be done.
   * @param text What and why.
   */
  problem(text: string): void {
    this.problems.push(text);
    this.#log?.(`conversion problem: ${text}`);
  }

  /**
   * The report as lines for a terminal.
   * @returns The lines.
   */
  lines(): string[] {
    const g = this.guest;
    return [
      ...(g ? [`Guest: ${g.product} (${g.distro} ${g.version}, ${g.arch}) on ${g.root}`] : []),
      ...(this.changes.length ? ["Changes:", ...this.changes.map((c) => `  - ${c}`)] : []),
      ...(this.problems.length
        ? ["Could not be done:", ...this.problems.map((c) => `  - ${c}`)]
        : []),
      ...(this.trimmed.length ? ["Trimmed:", ...this.trimmed.map((c) => `  - ${c}`)] : []),
      ...(this.devices ? [`Devices: ${this.devices.disk} disks, ${this.devices.nic} NICs`] : []),
    ];
  }

  /**
   * The report as one JSON-friendly object.
   * @returns `{ guest, changes, problems, trimmed }`.
   */
  toJSON(): Record<string, unknown> {
    return {
      guest: this.guest ?? null,
      changes: this.changes,
      problems: this.problems,
      trimmed: this.trimmed,
      ...(this.devices ? { devices: this.devices } : {}),
    };
  }
}
