/**
 * Network: the virtio NIC must come up with the settings the VMware NIC had, static addresses
 * included.
 *
 * On VMware a NIC is named by its PCI slot (`ens192`, `ens224`) or by a persistent-net rule
 * tied to its MAC and driver (`DRIVERS=="vmxnet3"`). On KVM the virtio NIC sits in another
 * slot, so the same guest would call it `ens3` or `enp1s0`, and every configuration file written
 * for `ens192` (ifupdown's `interfaces`, `ifcfg-*`, netplan, NetworkManager) would apply to
 * nothing. Renaming the configuration to the new name would need to know the PCI slot the
 * target hypervisor will choose, which differs between outputs. So vmshift does it the other
 * way round, as migration tools do in practice:
 *
 * 1. the MAC bindings tied to the VMware NICs are dropped: persistent-net rules, `HWADDR=` in
 *    `ifcfg-*` files, `mac-address=` in NetworkManager connections;
 * 2. the interface names the configuration uses are collected from all four kinds of files;
 * 3. each name is pinned on the virtio NIC that replaces the VMware one, with a systemd `.link`
 *    file (or a udev rule on guests without systemd-udevd) matching the NIC's MAC address,
 *    which the migration preserves. With no MAC known and a single NIC, the match is "the
 *    virtio NIC". The pin is written before the initramfs is rebuilt, so the initramfs names
 *    the NIC the same way.
 *
 * The configuration files then apply unchanged.
 *
 * @module
 */

import type { Nic } from "../../vm.ts";
import { editText, type LinuxGuest, readText } from "./_guest.ts";

/** A NIC as the guest's configuration knows it. */
export interface GuestNic {
  /** Interface name, e.g. `ens192`. */
  name: string;
  /** MAC address (lower case), when a file binds the name to one. */
  mac?: string;
}

/** What {@linkcode dropPersistentNetRules} found. */
export interface RulesEdit {
  /** The file without the rules that named NICs. */
  text: string;
  /** The names and MACs those rules bound. */
  nics: GuestNic[];
}

const MAC = /([0-9a-f]{2}(?::[0-9a-f]{2}){5})/i;

/**
 * Removes, from a udev rules file, every rule that gives a network interface its name (they
 * bind names to the VMware NICs' MACs and drivers).
 *
 * @param text The rules file.
 * @returns The remaining text and the bindings removed.
 * @example
 * ```ts
 * import { dropPersistentNetRules } from "./network.ts";
 * const r = dropPersistentNetRules(
 *   'SUBSYSTEM=="net", ATTR{address}=="00:50:56:aa:bb:cc", DRIVERS=="vmxnet3", NAME="ens192"\n',
 * );
 * if (r.text !== "" || r.nics[0]?.name !== "ens192") throw new Error();
 * ```
 */
export function dropPersistentNetRules(text: string): RulesEdit {
  const nics: GuestNic[] = [];
  const kept = text.split("\n").filter((line) => {
    if (/^\s*#/.test(line) || !/SUBSYSTEM\s*==\s*"net"/.test(line)) return true;
    const name = /\bNAME\s*:?=\s*"([^"]+)"/.exec(line)?.[1];
    if (!name) return true;
    const mac = /ATTRS?\{address\}\s*==\s*"([^"]+)"/.exec(line)?.[1]?.toLowerCase();
    nics.push(mac && MAC.test(mac) ? { name, mac } : { name });
    return false;
  });
  return { text: kept.join("\n"), nics };
}

/**
 * Interface names and MACs in an `ifcfg-*` file, and the file without its `HWADDR=` line.
 *
 * @param text The file.
 * @returns The file without the MAC binding, and the NIC it configures.
 * @example
 * ```ts
 * import { editIfcfg } from "./network.ts";
 * const r = editIfcfg('DEVICE=ens192\nHWADDR="00:50:56:AA:BB:CC"\nBOOTPROTO=none\n', "ens192");
 * if (r.text.includes("HWADDR") || r.nic.mac !== "00:50:56:aa:bb:cc") throw new Error();
 * ```
 */
export function editIfcfg(text: string, fallbackName: string): { text: string; nic: GuestNic } {
  let mac: string | undefined;
  const kept = text.split("\n").filter((line) => {
    const m = /^\s*HWADDR\s*=\s*["']?([^"'\s]+)/.exec(line);
    if (!m) return true;
    mac = m[1]!.toLowerCase();
    return false;
  });
  const name = /^\s*DEVICE\s*=\s*["']?([^"'\s]+)/m.exec(text)?.[1] ?? fallbackName;
  return { text: kept.join("\n"), nic: mac ? { name, mac } : { name } };
}

/**
 * Interface names in ifupdown's `interfaces` file.
 *
 * @param text The file.
 * @returns The names, `lo` excluded.
 * @example
 * ```ts
 * import { ifupdownNames } from "./network.ts";
 * if (ifupdownNames("auto lo\niface lo inet loopback\niface ens192 inet static\n").join() !== "ens192") throw new Error();
 * ```
 */
export function ifupdownNames(text: string): string[] {
  const names = [
    ...[...text.matchAll(/^\s*iface\s+(\S+)/gm)].map((m) => m[1]!),
    ...[...text.matchAll(/^\s*(?:auto|allow-hotplug)\s+(.+)$/gm)].flatMap((m) =>
      m[1]!.trim().split(/\s+/)
    ),
  ];
  return [...new Set(names)].filter((n) => n !== "lo");
}

/**
 * Interface names (and MACs they are matched by) in a netplan file's `ethernets:` section.
 *
 * @param text The YAML file.
 * @returns The NICs.
 * @example
 * ```ts
 * import { netplanNics } from "./network.ts";
 * const y = "network:\n  ethernets:\n    ens192:\n      addresses: [10.0.0.2/24]\n";
 * if (netplanNics(y)[0]?.name !== "ens192") throw new Error();
 * ```
 */
export function netplanNics(text: string): GuestNic[] {
  const nics: GuestNic[] = [];
  const lines = text.split("\n");
  let section = -1; // indentation of "ethernets:", or -1 outside it
  let item = -1;
  for (const line of lines) {
    if (/^\s*(#|$)/.test(line)) continue;
    const indent = line.length - line.trimStart().length;
    if (/^\s*ethernets:\s*$/.test(line)) {
      section = indent;
      item = -1;
      continue;
    }
    if (section < 0) continue;
    if (indent <= section) {
      section = -1;
      continue;
    }
    const key = /^\s*([A-Za-z0-9_.-]+):\s*$/.exec(line)?.[1];
    if (key && (item < 0 || indent === item)) {
      item = indent;
      nics.push({ name: key });
      continue;
    }
    const mac = /^\s*macaddress:\s*["']?([0-9A-Fa-f:]{17})/.exec(line)?.[1];
    const setName = /^\s*set-name:\s*["']?([^"'\s]+)/.exec(line)?.[1];
    const last = nics.at(-1);
    if (last && mac) last.mac = mac.toLowerCase();
    if (last && setName) last.name = setName;
  }
  return nics;
}

/**
 * The NIC a NetworkManager keyfile configures, and the file without its MAC binding.
 *
 * @param text The `.nmconnection` file.
 * @returns The new text and the NIC (undefined when the file names no interface).
 * @example
 * ```ts
 * import { editNmConnection } from "./network.ts";
 * const r = editNmConnection("[connection]\ninterface-name=ens192\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n");
 * if (r.text.includes("mac-address") || r.nic?.mac !== "00:50:56:aa:bb:cc") throw new Error();
 * ```
 */
export function editNmConnection(text: string): { text: string; nic?: GuestNic } {
  let mac: string | undefined;
  const kept = text.split("\n").filter((line) => {
    const m = /^\s*mac-address\s*=\s*([0-9A-Fa-f:]{17})/.exec(line);
    if (!m) return true;
    mac = m[1]!.toLowerCase();
    return false;
  });
  const name = /^\s*interface-name\s*=\s*(\S+)/m.exec(text)?.[1];
  if (!name) return mac ? { text: kept.join("\n"), nic: { name: "", mac } } : { text };
  return { text: kept.join("\n"), nic: mac ? { name, mac } : { name } };
}

/** A name to pin and how to recognise its NIC on the target. */
export interface Pin {
  /** The interface name the configuration uses. */
  name: string;
  /** The NIC's MAC, or undefined for "the only virtio NIC". */
  mac?: string;
}

/**
 * Pairs the guest's interface names with the VM's NICs: by MAC where a file bound the name to
 * a MAC that the VM has, then the remaining names in natural order with the remaining NICs in
 * VM order (VMware gives slot numbers in NIC order: ens192, ens224, ens256...).
 *
 * @param names The guest's NICs, as found in its files.
 * @param vmNics The VM's NICs, in order.
 * @returns The pins, and the names that could not be paired.
 * @example
 * ```ts
 * import { pairNics } from "./network.ts";
 * const r = pairNics([{ name: "ens224" }, { name: "ens192" }], [{ mac: "a" }, { mac: "b" }]);
 * if (r.pins.map((p) => `${p.name}=${p.mac}`).join() !== "ens192=a,ens224=b") throw new Error();
 * ```
 */
export function pairNics(
  names: readonly GuestNic[],
  vmNics: readonly Nic[],
): { pins: Pin[]; unpaired: string[] } {
  const byName = new Map<string, GuestNic>();
  for (const n of names) {
    if (!n.name || !isPhysicalName(n.name)) continue;
    const mac = n.mac ?? byName.get(n.name)?.mac;
    byName.set(n.name, mac ? { name: n.name, mac } : { name: n.name });
  }
  const pins: Pin[] = [];
  const freeNics = [...vmNics];
  const rest: GuestNic[] = [];
  for (const n of byName.values()) {
    const i = n.mac ? freeNics.findIndex((v) => v.mac === n.mac) : -1;
    if (i >= 0) {
      pins.push({ name: n.name, mac: n.mac! });
      freeNics.splice(i, 1);
    } else rest.push(n);
  }
  rest.sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));
  const unpaired: string[] = [];
  for (const n of rest) {
    const nic = freeNics.shift();
    if (nic?.mac) pins.push({ name: n.name, mac: nic.mac });
    else if (nic && vmNics.length === 1 && rest.length === 1) pins.push({ name: n.name });
    else unpaired.push(n.name);
  }
  return { pins, unpaired };
}

/** Names of real NICs (not bridges, bonds, VLANs, aliases or wildcards). */
function isPhysicalName(name: string): boolean {
  return /^(eth|ens|enp|eno|enx|em|p\d)[0-9a-z]*$/.test(name);
}

/**
 * A systemd `.link` file that gives a NIC its old name.
 *
 * @param pin The name and MAC.
 * @returns The file's text.
 */
export function linkFile(pin: Pin): string {
  return [
    "# Written by vmshift: the NIC this guest knew on VMware keeps its name on KVM,",
    "# so that its network configuration (static addresses included) still applies.",
    "[Match]",
    pin.mac ? `MACAddress=${pin.mac}` : "Driver=virtio_net",
    "",
    "[Link]",
    `Name=${pin.name}`,
    "",
  ].join("\n");
}

/**
 * A udev rule that gives a NIC its old name (guests without systemd-udevd).
 *
 * @param pin The name and MAC.
 * @returns The rule line.
 */
export function udevRule(pin: Pin): string {
  const match = pin.mac ? `ATTR{address}=="${pin.mac}"` : `DRIVERS=="virtio_net"`;
  return `SUBSYSTEM=="net", ACTION=="add", ${match}, NAME="${pin.name}"`;
}

const RULES = [
  "/etc/udev/rules.d/70-persistent-net.rules",
  "/etc/udev/rules.d/75-persistent-net-generator.rules",
];

/**
 * Drops VMware MAC bindings and pins the interface names on the virtio NICs.
 *
 * @param guest The mounted guest.
 */
export async function fixNetwork(guest: LinuxGuest): Promise<void> {
  const { g, report } = guest;
  const found: GuestNic[] = [];

  for (const file of RULES) {
    let nics: GuestNic[] = [];
    await editText(g, file, (text) => {
      const r = dropPersistentNetRules(text);
      nics = r.nics;
      return r.text;
    });
    if (nics.length) {
      found.push(...nics);
      report.changed(
        `${file}: removed the rules binding ${nics.map(describe).join(", ")} to the VMware NICs`,
      );
    }
  }
  for (const dir of ["/etc/sysconfig/network-scripts", "/etc/sysconfig/network"]) {
    if (!g.isDir(dir)) continue;
    for (const file of g.globExpand(`${dir}/ifcfg-*`)) {
      const base = file.slice(file.lastIndexOf("/ifcfg-") + 7);
      if (base === "lo" || base.includes(".") || base.includes("~")) continue;
      let nic: GuestNic = { name: base };
      const changed = await editText(g, file, (text) => {
        const r = editIfcfg(text, base);
        nic = r.nic;
        return r.text;
      });
      found.push(nic);
      if (changed) report.changed(`${file}: removed HWADDR (${nic.mac})`);
    }
  }
  const ifupdown = [
    "/etc/network/interfaces",
    ...(g.isDir("/etc/network/interfaces.d") ? g.globExpand("/etc/network/interfaces.d/*") : []),
  ];
  for (const file of ifupdown) {
    const text = await readText(g, file);
    if (text !== undefined) found.push(...ifupdownNames(text).map((name) => ({ name })));
  }
  if (g.isDir("/etc/netplan")) {
    for (const file of g.globExpand("/etc/netplan/*.yaml")) {
      found.push(...netplanNics((await readText(g, file)) ?? ""));
    }
  }
  const nmDir = "/etc/NetworkManager/system-connections";
  if (g.isDir(nmDir)) {
    for (const file of g.ls(nmDir).map((f) => `${nmDir}/${f}`)) {
      let nic: GuestNic | undefined;
      const changed = await editText(g, file, (text) => {
        const r = editNmConnection(text);
        nic = r.nic;
        return r.text;
      });
      if (nic?.name) found.push(nic);
      if (changed) report.changed(`${file}: removed mac-address (${nic?.mac})`);
    }
  }

  const { pins, unpaired } = pairNics(found, guest.vm.nics);
  for (const name of unpaired) {
    report.problem(
      `Interface ${name}: cannot tell which NIC of the VM it is; its configuration may not apply`,
    );
  }
  if (!pins.length) return;
  // systemd-udevd reads .link files; it is often a symlink (to udevadm), hence exists().
  const systemd = ["/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"]
    .some((p) => g.exists(p));
  if (systemd) {
    g.mkdirP("/etc/systemd/network");
    for (const pin of pins) {
      const file = `/etc/systemd/network/70-vmshift-${pin.name}.link`;
      await g.write(file, linkFile(pin));
      const which = pin.mac ? `with MAC ${pin.mac}` : "(the only one)";
      report.changed(`${file}: the virtio NIC ${which} keeps the name ${pin.name}`);
    }
  } else {
    const file = "/etc/udev/rules.d/70-vmshift-net.rules";
    await g.write(file, `# Written by vmshift\n${pins.map(udevRule).join("\n")}\n`);
    report.changed(`${file}: the virtio NICs keep their names: ${pins.map(describe).join(", ")}`);
  }
}

function describe(n: GuestNic): string {
  return n.mac ? `${n.name} (${n.mac})` : n.name;
}
