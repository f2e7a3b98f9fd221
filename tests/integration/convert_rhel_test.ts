/**
 * The RHEL-family conversion end to end, on the phony RHEL 9 guest (`phony-rhel` in
 * `tests/_guests.ts`): no real RHEL guest can be built here (no RHEL or Fedora mirror), so the
 * guest carries sh stand-ins for rpm, dracut, lsinitrd, grub2-mkconfig, grub2-probe and grubby
 * that behave as the real tools do for what vmshift asks, and log their argv to
 * /var/log/vmshift-standins.log. The conversion runs them inside the guest as it would run the
 * real ones; the test reads the converted disk and checks what was run and what changed.
 *
 * @module
 */

import { join } from "node:path";
import { assert, assertEquals } from "../_assert.ts";
import { guestImage } from "../_guests.ts";
import { Guestfs } from "../../src/convert/guestfs.ts";

import { Sandbox, sha256 } from "./_harness.ts";
import { convertAndReport, vmxAround } from "./_vmx.ts";

Deno.env.set("LIBGUESTFS_BACKEND", "direct");
Deno.env.set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");

/** The VM's MAC: not the one in ifcfg's HWADDR (the .link file must follow the VM's). */
const MAC = "00:50:56:12:34:56";
const KVER = "5.14.0-362.8.1.el9_3.x86_64";
const KVER_OLD = "5.14.0-284.11.1.el9_2.x86_64";
const DRIVERS = "virtio_pci virtio_blk virtio_scsi virtio_net";

Deno.test({
  name: "a RHEL 9 guest is converted with its own rpm, dracut, grub2-mkconfig and grubby",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const image = await guestImage("phony-rhel");
    const before = await sha256(image);
    await using sb = await Sandbox.create();
    const vmx = await vmxAround(sb, "rhel9", [image], { mac: MAC, guestOS: "rhel9-64" });
    const out = join(sb.work, "out");
    await Deno.mkdir(out);

    const { report, changes } = await convertAndReport(sb, [
      "-i",
      "vmx",
      vmx,
      "-o",
      "local",
      "-os",
      out,
    ]);

    await t.step("the report says what changed, and no problems", () => {
      assertEquals(report.guest.distro, "rhel");
      assert(changes.includes("Removed VMware Tools packages: open-vm-tools"), changes);
      assert(changes.includes("/etc/fstab: /dev/sda2 → /dev/vda2"), changes);
      assert(changes.includes("/etc/fstab: /dev/sda1 → /dev/vda1"), changes);
      assert(changes.includes("/etc/dracut.conf.d/90-vmshift-virtio.conf"), changes);
      for (const v of [KVER, KVER_OLD]) {
        assert(changes.includes(`Rebuilt /boot/initramfs-${v}.img with dracut`), changes);
      }
      assert(changes.includes("Regenerated /boot/grub2/grub.cfg with grub2-mkconfig"), changes);
      assert(changes.includes("/boot/grub2/grub.cfg: /dev/sda2 → /dev/vda2"), changes);
      assert(changes.includes("/etc/default/grub: /dev/sda2 → /dev/vda2"), changes);
      assert(
        changes.includes("ifcfg-ens192: removed HWADDR (00:50:56:aa:bb:cc)"),
        changes,
      );
      assert(changes.includes(`with MAC ${MAC} keeps the name ens192`), changes);
      assert(changes.includes("/etc/X11/xorg.conf"), changes);
      assert(changes.includes("/.autorelabel"), changes);
      assertEquals(report.problems, []);
    });

    await using g = Guestfs.create();
    g.addDrive(join(out, "rhel9-sda"), { format: "raw", readonly: true });
    await g.launch();
    await g.mountRo("/dev/sda2", "/");
    await g.mountRo("/dev/sda1", "/boot");
    const log = (await g.cat("/var/log/vmshift-standins.log")).split("\n");

    await t.step("rpm removed open-vm-tools", async () => {
      assert(log.includes("rpm -qa --qf %{NAME}\\n"), log.join("\n"));
      assert(log.includes("rpm -e open-vm-tools"), log.join("\n"));
      const pkgs = (await g.cat("/var/lib/vmshift-standins/rpm-packages")).split("\n");
      assert(!pkgs.includes("open-vm-tools") && pkgs.includes("kernel-core"), pkgs.join());
    });

    await t.step(
      "dracut rebuilt each initramfs with the virtio drivers, and kept them",
      async () => {
        for (const v of [KVER, KVER_OLD]) {
          const image = `/boot/initramfs-${v}.img`;
          assert(
            log.includes(`dracut -f --add-drivers "${DRIVERS}" ${image} ${v}`),
            log.join("\n"),
          );
          assert(log.includes(`lsinitrd ${image}`), log.join("\n"));
          const listing = await g.cat(image);
          for (const d of ["block/virtio_blk", "virtio/virtio_pci", "scsi/virtio_scsi"]) {
            assert(
              listing.includes(`usr/lib/modules/${v}/kernel/drivers/${d}.ko.xz`),
              listing,
            );
          }
        }
        const conf = await g.cat("/etc/dracut.conf.d/90-vmshift-virtio.conf");
        assert(conf.includes(`add_drivers+=" ${DRIVERS} "`), conf);
      },
    );

    await t.step("grub.cfg was regenerated and names virtio devices", async () => {
      assert(log.includes("grub2-mkconfig -o /boot/grub2/grub.cfg"), log.join("\n"));
      const cfg = await g.cat("/boot/grub2/grub.cfg");
      assert(cfg.includes(`linux\t/vmlinuz-${KVER} root=/dev/vda2 ro`), cfg);
      assert(cfg.includes(`initrd\t/initramfs-${KVER_OLD}.img`), cfg);
      assert(!cfg.includes("/dev/sd"), cfg);
      const grub = await g.cat("/etc/default/grub");
      assert(grub.includes("root=/dev/vda2") && !grub.includes("/dev/sd"), grub);
    });

    await t.step(
      "grubby was asked, and the pinned kernel (with virtio) stays the default",
      async () => {
        assert(log.includes("grubby --default-kernel"), log.join("\n"));
        assert(!log.some((l) => l.startsWith("grubby --set-default")), log.join("\n"));
        assertEquals(
          (await g.cat("/var/lib/vmshift-standins/default-kernel")).trim(),
          `/boot/vmlinuz-${KVER_OLD}`,
        );
      },
    );

    await t.step("fstab, network, X and SELinux", async () => {
      const fstab = await g.cat("/etc/fstab");
      assert(/^\/dev\/vda2\s+\/\s/m.test(fstab) && /^\/dev\/vda1\s+\/boot\s/m.test(fstab), fstab);
      assert(!fstab.includes("/dev/sd"), fstab);
      const ifcfg = await g.cat("/etc/sysconfig/network-scripts/ifcfg-ens192");
      assert(!ifcfg.includes("HWADDR"), ifcfg);
      assert(ifcfg.includes("IPADDR=10.0.2.15") && ifcfg.includes("DEVICE=ens192"), ifcfg);
      const link = await g.cat("/etc/systemd/network/70-vmshift-ens192.link");
      assert(link.includes(`MACAddress=${MAC}`) && link.includes("Name=ens192"), link);
      assert(!g.exists("/etc/udev/rules.d/70-vmshift-net.rules"));
      assert(g.isFile("/.autorelabel"));
      const xorg = await g.cat("/etc/X11/xorg.conf");
      assert(xorg.includes('Driver      "modesetting"') && !xorg.includes("vmware"), xorg);
    });

    await t.step("nothing but the stand-ins ran", () => {
      const tools = new Set(log.filter(Boolean).map((l) => l.split(" ")[0]));
      assertEquals([...tools].sort(), [
        "dracut",
        "grub2-mkconfig",
        "grub2-probe",
        "grubby",
        "lsinitrd",
        "rpm",
      ]);
    });

    await g.shutdown();

    await t.step("the source is unchanged and nothing is left behind", async () => {
      assertEquals(await sha256(image), before);
      await sb.assertNothingLeft();
    });
  },
});

Deno.test({
  name: "a RHEL 9 guest whose default kernel lacks virtio boots the one that has it (-i disk)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const cached = await guestImage("phony-rhel");
    await using sb = await Sandbox.create();
    // A copy (the cached image is read-only): the newest kernel loses virtio_blk and is made
    // the default.
    const image = join(sb.work, "newest.img");
    await Deno.copyFile(cached, image);
    await Deno.chmod(image, 0o644);
    {
      await using g = Guestfs.create();
      g.addDrive(image, { format: "raw" });
      await g.launch();
      await g.mount("/dev/sda2", "/");
      await g.mount("/dev/sda1", "/boot");
      g.rm(`/usr/lib/modules/${KVER}/kernel/drivers/block/virtio_blk.ko.xz`);
      await g.write("/var/lib/vmshift-standins/default-kernel", `/boot/vmlinuz-${KVER}\n`);
      await g.shutdown();
    }
    const before = await sha256(image);
    const out = join(sb.work, "out");
    await Deno.mkdir(out);

    const { report, changes } = await convertAndReport(sb, [
      "-i",
      "disk",
      image,
      "-o",
      "local",
      "-os",
      out,
    ]);

    await t.step("the report names the kernel without virtio and the new default", () => {
      assertEquals(report.problems, [
        `Kernel ${KVER} lacks virtio_blk: it cannot boot on KVM`,
      ]);
      assert(
        changes.includes(
          `Default kernel: /boot/vmlinuz-${KVER_OLD} (was /boot/vmlinuz-${KVER})`,
        ),
        changes,
      );
      assert(!changes.includes(`Rebuilt /boot/initramfs-${KVER}.img`), changes);
      assert(changes.includes("(the only one) keeps the name ens192"), changes);
    });

    await using g = Guestfs.create();
    g.addDrive(join(out, "newest-sda"), { format: "raw", readonly: true });
    await g.launch();
    await g.mountRo("/dev/sda2", "/");
    await g.mountRo("/dev/sda1", "/boot");
    const log = (await g.cat("/var/log/vmshift-standins.log")).split("\n");

    await t.step(
      "only the kernel with virtio was rebuilt, and grubby made it the default",
      async () => {
        assert(!log.some((l) => l.startsWith("dracut") && l.includes(KVER)), log.join("\n"));
        assert(
          log.includes(
            `dracut -f --add-drivers "${DRIVERS}" /boot/initramfs-${KVER_OLD}.img ${KVER_OLD}`,
          ),
          log.join("\n"),
        );
        assert(log.includes(`grubby --set-default /boot/vmlinuz-${KVER_OLD}`), log.join("\n"));
        assertEquals(
          (await g.cat("/var/lib/vmshift-standins/default-kernel")).trim(),
          `/boot/vmlinuz-${KVER_OLD}`,
        );
      },
    );

    await t.step("without a MAC, the name is pinned on the virtio NIC", async () => {
      const link = await g.cat("/etc/systemd/network/70-vmshift-ens192.link");
      assert(link.includes("Driver=virtio_net") && link.includes("Name=ens192"), link);
      assert(!link.includes("MACAddress"), link);
    });

    await g.shutdown();

    await t.step("the source is unchanged and nothing is left behind", async () => {
      assertEquals(await sha256(image), before);
      await sb.assertNothingLeft();
    });
  },
});
