import { assertEquals } from "../_assert.ts";
import { deviceMap, remapDevices } from "../../src/convert/_devices.ts";
import type { Disk } from "../../src/vm.ts";

function disks(...buses: Array<Disk["bus"] | undefined>): { disks: Disk[] } {
  return {
    disks: buses.map((bus, index) => ({
      index,
      source: `d${index}`,
      virtualSize: 1,
      ...(bus ? { bus } : {}),
    })),
  };
}

Deno.test("deviceMap maps sdX and xvdX by position to vdX", () => {
  const map = deviceMap(disks("scsi", "scsi", "scsi"));
  assertEquals(map.get("sda"), "vda");
  assertEquals(map.get("sdc"), "vdc");
  assertEquals(map.get("xvdb"), "vdb");
  assertEquals(map.get("sdd"), undefined);
});

Deno.test("deviceMap counts hdX among the IDE disks only", () => {
  const map = deviceMap(disks("scsi", "ide", "ide"));
  assertEquals(map.get("hda"), "vdb");
  assertEquals(map.get("hdb"), "vdc");
  assertEquals(map.get("sda"), "vda");
});

Deno.test("deviceMap maps hdX by position when the bus is unknown", () => {
  assertEquals(deviceMap(disks(undefined, undefined)).get("hdb"), "vdb");
});

Deno.test("remapDevices rewrites partitions and whole disks, and lists each change once", () => {
  const r = remapDevices(
    "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 none swap sw 0 0\n# /dev/sda1 again\n",
    deviceMap(disks("scsi")),
  );
  assertEquals(
    r.text,
    "/dev/vda1 / ext4 defaults 0 1\n/dev/vda2 none swap sw 0 0\n# /dev/vda1 again\n",
  );
  assertEquals(r.changes, ["/dev/sda1 → /dev/vda1", "/dev/sda2 → /dev/vda2"]);
  assertEquals(r.unknown, []);
});

Deno.test("remapDevices leaves UUID=, LABEL=, mapper and LVM names alone", () => {
  const text = "UUID=1234 / ext4\nLABEL=boot /boot ext4\n/dev/mapper/vg-root /srv xfs\n" +
    "/dev/vg0/lv_sda /x ext4\n/dev/sdaa1 /y ext4\n";
  const r = remapDevices(text, deviceMap(disks("scsi")));
  assertEquals(r.text, text);
  assertEquals(r.changes, []);
  assertEquals(r.unknown, ["/dev/sdaa1"]);
});

Deno.test("remapDevices reports names with no disk on the target and keeps them", () => {
  const r = remapDevices("root=/dev/sdc3 resume=/dev/sda2", deviceMap(disks("scsi")));
  assertEquals(r.text, "root=/dev/sdc3 resume=/dev/vda2");
  assertEquals(r.unknown, ["/dev/sdc3"]);
});

Deno.test("remapDevices rewrites LVM filter patterns", () => {
  const r = remapDevices('filter = [ "a|^/dev/sda[0-9]*$|", "r|.*|" ]', deviceMap(disks("scsi")));
  assertEquals(r.text, 'filter = [ "a|^/dev/vda[0-9]*$|", "r|.*|" ]');
});
