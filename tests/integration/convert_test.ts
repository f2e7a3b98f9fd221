/**
 * Conversion end to end, with guests built by our own scripts (`tests/_guests.ts`):
 *
 * - a real Debian 12 guest, left as VMware leaves it, is migrated from a VMX with `-o qemu`;
 *   the result boots under qemu with virtio-blk and virtio-net to a login prompt with its
 *   static address on the right NIC, while the unconverted source, given the same virtio
 *   hardware, does not boot;
 * - phony guests and hand-made disks give each conversion error: no operating system, several,
 *   an encrypted root, an unsupported distribution, no tool to rebuild the initramfs.
 *
 * Every run must leave nothing behind, and the sources are checked unchanged.
 *
 * @module
 */

import { join } from "node:path";
import { assert, assertEquals } from "../_assert.ts";
import { bootUntil } from "../_boot.ts";
import { guestImage } from "../_guests.ts";
import { Guestfs } from "../../src/convert/guestfs.ts";
import { run } from "../../src/process.ts";
import { allocated, type RunResult, Sandbox, sha256 } from "./_harness.ts";
import { convertAndReport, vmxAround } from "./_vmx.ts";

Deno.env.set("LIBGUESTFS_BACKEND", "direct");
Deno.env.set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");

const GiB = 1024 ** 3;
const MAC = "00:50:56:aa:bb:cc";

function failsWith(r: RunResult, text: string | RegExp): void {
  assertEquals(r.code, 1, r.stderr);
  const ok = typeof text === "string" ? r.stderr.includes(text) : text.test(r.stderr);
  assert(ok, `expected ${text} in:\n${r.stderr}`);
}

async function emptyDir(dir: string): Promise<string[]> {
  const left: string[] = [];
  for await (const e of Deno.readDir(dir)) left.push(e.name);
  return left;
}

Deno.test({
  name: "a Debian guest from VMware is converted, boots on virtio, and the source does not",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const image = await guestImage("debian12");
    const before = await sha256(image);
    await using sb = await Sandbox.create();
    const vmx = await vmxAround(sb, "debian12", [image], { mac: MAC });
    const out = join(sb.work, "out");
    await Deno.mkdir(out);

    // The unconverted source, on the hardware KVM gives it, runs meanwhile: both are slow
    // under TCG and independent.
    const sourceBoot = bootUntil(image, {
      format: "raw",
      bus: "virtio-blk",
      nic: "virtio",
      mac: MAC,
      want: /login:/,
      fail: /ALERT! .* does not exist|Kernel panic/,
      timeoutMs: 10 * 60_000,
      snapshot: true,
    });

    const { report, changes } = await convertAndReport(sb, [
      "-i",
      "vmx",
      vmx,
      "-o",
      "qemu",
      "-os",
      out,
    ]);

    await t.step("the report says what changed", () => {
      assertEquals(report.guest.distro, "debian");
      assert(/Removed VMware Tools packages: .*open-vm-tools/.test(changes), changes);
      assert(changes.includes("/etc/fstab: /dev/sda1 → /dev/vda1"), changes);
      assert(/Rebuilt \/boot\/initrd\.img-/.test(changes), changes);
      assert(changes.includes("Regenerated /boot/grub/grub.cfg"), changes);
      assert(changes.includes("/etc/udev/rules.d/70-persistent-net.rules"), changes);
      assert(changes.includes("keeps the name ens192"), changes);
      assert(changes.includes("/etc/X11/xorg.conf"), changes);
      assertEquals(report.problems, []);
      assert(report.trimmed.some((s: string) => s.startsWith("/dev/sda1 (ext4)")), report.trimmed);
    });

    const disk = join(out, "debian12-sda");
    await t.step("deleted data is not copied", async () => {
      const src = await allocated(image);
      const dst = await allocated(disk);
      assert(dst < src - 0.8 * GiB, `copy holds ${dst} bytes, source ${src}`);
    });

    await t.step(
      "the copy has no open-vm-tools, and fstab and grub name virtio devices",
      async () => {
        await using g = Guestfs.create();
        g.addDrive(disk, { format: "raw", readonly: true });
        await g.launch();
        await g.mountRo("/dev/sda1", "/");
        const status = await g.cat("/var/lib/dpkg/status");
        assert(!/^Package: open-vm-tools$/m.test(status), "open-vm-tools still installed");
        const fstab = await g.cat("/etc/fstab");
        assert(/^\/dev\/vda1\s+\/\s/m.test(fstab) && !fstab.includes("/dev/sda"), fstab);
        const grub = await g.cat("/boot/grub/grub.cfg");
        assert(grub.includes("root=/dev/vda1") && !grub.includes("/dev/sd"), grub);
        assert(grub.includes("set root='hd0,msdos1'"), grub);
        const modules = await g.cat("/etc/initramfs-tools/modules");
        assert(modules.includes("virtio_blk"), modules);
      },
    );

    await t.step(
      "the converted guest boots with virtio to a login prompt, its NIC configured",
      async () => {
        const script = join(out, "debian12.sh");
        const boot = await bootScript(script, /login:/, 10 * 60_000);
        assert(
          boot.matched,
          `no login prompt after ${boot.seconds} s:\n${boot.console.slice(-3000)}`,
        );
        assert(/VMSHIFT-REPORT: .*ens192.*10\.0\.2\.15\/24/.test(boot.console), boot.console);
        assert(/VMSHIFT-REPORT: .*\/dev\/vda1/.test(boot.console), boot.console);
      },
    );

    await t.step("the unconverted source does not boot on the same virtio hardware", async () => {
      const boot = await sourceBoot;
      assert(!boot.matched, "the unconverted guest booted on virtio");
      assertEquals(boot.reason, "fail", boot.console.slice(-2000));
      assert(/ALERT!\s+\/dev\/sda1 does not exist/.test(boot.console), boot.console.slice(-2000));
    });

    await t.step("the source is unchanged and nothing is left behind", async () => {
      assertEquals(await sha256(image), before);
      await sb.assertNothingLeft();
    });
  },
});

/** Runs an `-o qemu` boot script (TCG, in a network namespace of its own) until `want` shows. */
async function bootScript(
  script: string,
  want: RegExp,
  timeoutMs: number,
): Promise<{ matched: boolean; console: string; seconds: number }> {
  const start = performance.now();
  const child = new Deno.Command("setpriv", {
    args: ["--pdeathsig", "KILL", "--", "unshare", "--net", "--", script],
    env: { QEMU_ACCEL: "tcg" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let console = "";
  let matched = false;
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    const dec = new TextDecoder();
    for await (const chunk of child.stdout) {
      console += dec.decode(chunk, { stream: true });
      if (want.test(console)) {
        matched = true;
        break;
      }
    }
  } finally {
    clearTimeout(timer);
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await child.stderr.cancel();
  }
  return { matched, console, seconds: Math.round((performance.now() - start) / 1000) };
}

Deno.test({
  name: "conversion errors are clear, exit 1, and leave nothing behind",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const debian = await guestImage("phony-debian");
    const fedora = await guestImage("phony-fedora");
    const sums = [await sha256(debian), await sha256(fedora)];
    await using sb = await Sandbox.create();
    const out = join(sb.work, "out");
    await Deno.mkdir(out);
    const migrate = (args: string[]) =>
      sb.run([...args, "-o", "local", "-os", out], { convert: true });

    await t.step("a disk without an operating system", async () => {
      const data = join(sb.work, "data.img");
      await run("qemu-img", ["create", "-f", "raw", data, "64M"]);
      failsWith(await migrate(["-i", "disk", data]), "No operating system found on the disks");
    });

    await t.step("no tool to rebuild the initramfs", async () => {
      const r = await migrate(["-i", "disk", debian]);
      failsWith(r, "Cannot rebuild the initramfs: the guest has none of update-initramfs");
    });

    const both = await vmxAround(sb, "two", [debian, fedora], { mac: MAC });
    await t.step("several operating systems and no --root to choose", async () => {
      // No --root is --root ask, which fails where nobody can answer (stdin is not a terminal).
      for (const root of [[], ["--root", "single"]]) {
        const r = await migrate(["-i", "vmx", both, ...root]);
        failsWith(r, /several operating systems \(\/dev\/sda\d \(.*Debian.*\), \/dev\/sdb\d/);
        assert(r.stderr.includes("--root"), r.stderr);
      }
    });

    await t.step("--root first and --root DEVICE choose", async () => {
      const first = await migrate(["-i", "vmx", both, "--root", "first"]);
      assert(/Converting .*Debian/.test(first.stdout), first.stdout);
      const fedoraRoot = await migrate(["-i", "vmx", both, "--root", "/dev/sdb2"]);
      assert(/Converting .*Fedora/.test(fedoraRoot.stdout), fedoraRoot.stdout + fedoraRoot.stderr);
      failsWith(fedoraRoot, "Cannot rebuild the initramfs");
      failsWith(
        await migrate(["-i", "vmx", both, "--root", "/dev/sdc1"]),
        "--root /dev/sdc1: no operating system there",
      );
    });

    await t.step("an encrypted root", async () => {
      const luks = join(sb.work, "luks.img");
      await makeDisk(luks, async (g) => {
        await g.partDisk("/dev/sda", "mbr");
        await g.luksFormat("/dev/sda1", "not-the-key-of-anything", 0);
      });
      failsWith(await migrate(["-i", "disk", luks]), /encrypted \(LUKS on \/dev\/sda1\)/);
    });

    await t.step("an unsupported distribution", async () => {
      const arch = join(sb.work, "arch.img");
      await makeDisk(arch, async (g) => {
        await g.partDisk("/dev/sda", "mbr");
        await g.mkfs("ext4", "/dev/sda1");
        await g.mount("/dev/sda1", "/");
        for (const d of ["/etc", "/bin", "/usr/bin", "/boot"]) g.mkdirP(d);
        await g.write("/etc/os-release", 'NAME="Arch Linux"\nID=arch\nPRETTY_NAME="Arch Linux"\n');
        await g.write("/etc/arch-release", "");
        await g.write("/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n");
        await g.write("/etc/hostname", "arch\n");
      });
      failsWith(
        await migrate(["-i", "disk", arch]),
        /Unsupported guest: .*distribution "archlinux"/,
      );
    });

    await t.step("nothing was created, nothing is left, the sources are unchanged", async () => {
      assertEquals(await emptyDir(out), []);
      await sb.assertNothingLeft();
      assertEquals([await sha256(debian), await sha256(fedora)], sums);
    });
  },
});

/** Makes a 256 MiB raw disk and lets `fill` shape it through libguestfs. */
async function makeDisk(path: string, fill: (g: Guestfs) => Promise<void>): Promise<void> {
  await run("qemu-img", ["create", "-f", "raw", path, "256M"]);
  await using g = Guestfs.create();
  g.addDrive(path, { format: "raw" });
  await g.launch();
  await fill(g);
  await g.shutdown();
}
