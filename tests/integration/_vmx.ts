/**
 * Helpers of the conversion tests: ESXi VM directories around test guest images (a VMX and,
 * per disk, an ESXi descriptor whose flat extent is a symlink to the read-only, cached image),
 * and a converting run that returns vmshift's conversion report.
 *
 * @module
 */

import { join } from "node:path";
import { esxiDescriptor, vmwareVmx } from "../../scripts/make_vmware_fixture.ts";
import { assert, assertEquals } from "../_assert.ts";
import type { Sandbox } from "./_harness.ts";

/** Options of {@linkcode vmxAround}. */
export interface VmxAroundOptions {
  /** The NIC's MAC (one vmxnet3 NIC). */
  mac: string;
  /**
   * VMware's guest OS identifier.
   * @default "debian12-64"
   */
  guestOS?: string;
}

/**
 * Makes `sb.work/NAME/NAME.vmx` around disk images.
 *
 * @param sb The test's sandbox.
 * @param name The VM's name.
 * @param images The disks, in order (scsi0:0, scsi0:1, ...).
 * @param options The NIC's MAC and the guest OS.
 * @returns The VMX's path.
 */
export async function vmxAround(
  sb: Sandbox,
  name: string,
  images: string[],
  options: VmxAroundOptions,
): Promise<string> {
  const dir = join(sb.work, name);
  await Deno.mkdir(dir);
  const disks = [];
  for (const [i, image] of images.entries()) {
    const base = i === 0 ? name : `${name}_${i}`;
    await Deno.symlink(image, join(dir, `${base}-flat.vmdk`));
    const size = (await Deno.stat(image)).size;
    await Deno.writeTextFile(
      join(dir, `${base}.vmdk`),
      esxiDescriptor(`${base}-flat.vmdk`, size, i),
    );
    disks.push({ device: `scsi0:${i}`, fileName: `${base}.vmdk` });
  }
  const vmx = join(dir, `${name}.vmx`);
  await Deno.writeTextFile(
    vmx,
    vmwareVmx({
      name,
      platform: "esxi",
      vcpus: 1,
      memoryMiB: 1024,
      firmware: "bios",
      secureBoot: false,
      guestOS: options.guestOS ?? "debian12-64",
      genid: false,
      extraLines: [],
      disks,
      nics: [{ network: "VM Network", mac: options.mac, model: "vmxnet3", addressType: "static" }],
    }),
  );
  return vmx;
}

/** The `conversion` object of a `--machine-readable` run. */
export interface ConversionResult {
  /** The report as vmshift printed it (`guest`, `changes`, `problems`, `trimmed`). */
  // deno-lint-ignore no-explicit-any
  report: any;
  /** Its changes, one per line. */
  changes: string;
}

/**
 * Runs vmshift with conversion and `--machine-readable`, asserts that it succeeded, and
 * returns its conversion report.
 *
 * @param sb The test's sandbox.
 * @param args vmshift's arguments (input and output).
 * @returns The report and its changes as text.
 */
export async function convertAndReport(sb: Sandbox, args: string[]): Promise<ConversionResult> {
  const r = await sb.run([...args, "--machine-readable"], { convert: true });
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const report = lines.find((l) => l.type === "conversion");
  assert(report, r.stdout);
  return { report, changes: report.changes.join("\n") };
}
