import { assertEquals } from "../../_assert.ts";
import {
  dropPersistentNetRules,
  editIfcfg,
  editNmConnection,
  ifupdownNames,
  linkFile,
  netplanNics,
  pairNics,
  udevRule,
} from "../../../src/convert/linux/network.ts";

Deno.test("dropPersistentNetRules removes naming rules and keeps comments and other rules", () => {
  const text = [
    "# This file was automatically generated",
    "",
    "# PCI device 0x15ad:0x07b0 (vmxnet3)",
    'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:50:56:AA:BB:CC", ' +
    'ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"',
    'SUBSYSTEM=="block", KERNEL=="sd*", NAME="disk"',
    'SUBSYSTEM=="net", ACTION=="add", KERNEL=="eth*", RUN+="/bin/true"',
  ].join("\n");
  const r = dropPersistentNetRules(text);
  assertEquals(r.nics, [{ name: "eth0", mac: "00:50:56:aa:bb:cc" }]);
  assertEquals(r.text.includes("eth0"), false);
  assertEquals(r.text.includes('NAME="disk"'), true);
  assertEquals(r.text.includes("RUN+="), true);
  assertEquals(r.text.includes("# PCI device"), true);
});

Deno.test("editIfcfg drops HWADDR and reads DEVICE", () => {
  const r = editIfcfg("DEVICE=eth0\nHWADDR=00:50:56:AA:BB:CC\nIPADDR=10.0.0.5\n", "ens192");
  assertEquals(r.text, "DEVICE=eth0\nIPADDR=10.0.0.5\n");
  assertEquals(r.nic, { name: "eth0", mac: "00:50:56:aa:bb:cc" });
  assertEquals(editIfcfg("BOOTPROTO=dhcp\n", "ens192").nic, { name: "ens192" });
});

Deno.test("ifupdownNames finds iface, auto and allow-hotplug names but not lo", () => {
  const text = "auto lo ens192\niface lo inet loopback\nallow-hotplug ens224\n" +
    "iface ens192 inet static\n  address 10.0.2.15/24\n";
  assertEquals(ifupdownNames(text), ["ens192", "ens224"]);
});

Deno.test("netplanNics reads ethernets, set-name and macaddress", () => {
  const yaml = [
    "network:",
    "  version: 2",
    "  ethernets:",
    "    ens192:",
    "      addresses: [10.0.0.2/24]",
    "      routes:",
    "        - to: default",
    "          via: 10.0.0.1",
    "    lan1:",
    "      match:",
    "        macaddress: 00:50:56:AA:BB:01",
    "      set-name: lan1",
    "  bridges:",
    "    br0:",
    "      interfaces: [ens192]",
  ].join("\n");
  assertEquals(netplanNics(yaml), [
    { name: "ens192" },
    { name: "lan1", mac: "00:50:56:aa:bb:01" },
  ]);
});

Deno.test("editNmConnection drops mac-address and reads interface-name", () => {
  const r = editNmConnection(
    "[connection]\nid=wired\ninterface-name=ens192\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n",
  );
  assertEquals(r.text.includes("mac-address"), false);
  assertEquals(r.nic, { name: "ens192", mac: "00:50:56:aa:bb:cc" });
  assertEquals(editNmConnection("[connection]\nid=x\n").nic, undefined);
});

Deno.test("pairNics pairs by MAC first, then by natural order", () => {
  const r = pairNics(
    [{ name: "ens256" }, { name: "ens1000" }, { name: "eth9", mac: "00:50:56:00:00:02" }],
    [{ mac: "00:50:56:00:00:01" }, { mac: "00:50:56:00:00:02" }, { mac: "00:50:56:00:00:03" }],
  );
  assertEquals(r.pins, [
    { name: "eth9", mac: "00:50:56:00:00:02" },
    { name: "ens256", mac: "00:50:56:00:00:01" },
    { name: "ens1000", mac: "00:50:56:00:00:03" },
  ]);
  assertEquals(r.unpaired, []);
});

Deno.test("pairNics matches the only NIC without a MAC by driver, and reports the rest", () => {
  assertEquals(pairNics([{ name: "ens192" }], [{}]).pins, [{ name: "ens192" }]);
  const r = pairNics([{ name: "ens192" }, { name: "ens224" }], [{}, {}]);
  assertEquals(r.pins, []);
  assertEquals(r.unpaired, ["ens192", "ens224"]);
});

Deno.test("pairNics ignores bridges, bonds, VLANs and duplicates", () => {
  const r = pairNics(
    [{ name: "br0" }, { name: "bond0" }, { name: "ens192.10" }, { name: "ens192" }, {
      name: "ens192",
    }],
    [{ mac: "m" }],
  );
  assertEquals(r.pins, [{ name: "ens192", mac: "m" }]);
});

Deno.test("linkFile and udevRule match by MAC, or by the virtio driver without one", () => {
  const byMac = linkFile({ name: "ens192", mac: "00:50:56:aa:bb:cc" });
  assertEquals(byMac.includes("[Match]\nMACAddress=00:50:56:aa:bb:cc\n"), true);
  assertEquals(byMac.includes("[Link]\nName=ens192\n"), true);
  assertEquals(linkFile({ name: "eth0" }).includes("Driver=virtio_net"), true);
  assertEquals(
    udevRule({ name: "eth0", mac: "00:50:56:aa:bb:cc" }),
    'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:50:56:aa:bb:cc", NAME="eth0"',
  );
});
