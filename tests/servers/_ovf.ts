/**
 * Just enough XML for the engine test server to read the OVF of a new VM the way the engine
 * does: it must be well-formed XML whose root is an OVF `Envelope`; the VM's name is the
 * `Name` of its `VirtualSystem` (or `Content`), and its disks are the `Disk` elements of the
 * disk section, named by `ovf:diskId` (the disk's id).
 *
 * @module
 */

/** What the engine takes from an OVF. */
export interface OvfSummary {
  /** The VM's name, when the OVF gives one. */
  name?: string;
  /** The disk ids, in order. */
  diskIds: string[];
}

interface Element {
  name: string;
  attrs: Map<string, string>;
  text: string;
}

/**
 * Checks that `text` is a well-formed OVF envelope and reads the VM name and disk ids.
 *
 * @param text The OVF document.
 * @returns Name and disk ids.
 * @throws {SyntaxError} When it is not well-formed XML or not an OVF envelope.
 */
export function parseOvf(text: string): OvfSummary {
  const stack: Element[] = [];
  const summary: OvfSummary = { diskIds: [] };
  let roots = 0;
  let i = 0;
  const fail = (why: string): never => {
    const line = text.slice(0, i).split("\n").length;
    throw new SyntaxError(`${why} (line ${line})`);
  };
  while (i < text.length) {
    const lt = text.indexOf("<", i);
    const chunk = lt < 0 ? text.slice(i) : text.slice(i, lt);
    if (chunk.trim()) {
      if (!stack.length) fail("Text outside the root element");
      stack[stack.length - 1]!.text += decode(chunk, fail);
    }
    if (lt < 0) break;
    i = lt;
    if (text.startsWith("<?", i)) {
      const end = text.indexOf("?>", i);
      if (end < 0) fail("Unterminated processing instruction");
      i = end + 2;
    } else if (text.startsWith("<!--", i)) {
      const end = text.indexOf("-->", i);
      if (end < 0) fail("Unterminated comment");
      i = end + 3;
    } else if (text.startsWith("<![CDATA[", i)) {
      const end = text.indexOf("]]>", i);
      if (end < 0) fail("Unterminated CDATA section");
      if (!stack.length) fail("CDATA outside the root element");
      stack[stack.length - 1]!.text += text.slice(i + 9, end);
      i = end + 3;
    } else if (text.startsWith("<!", i)) {
      const end = text.indexOf(">", i);
      if (end < 0 || roots) fail("Misplaced declaration");
      i = end + 1;
    } else if (text.startsWith("</", i)) {
      const m = /^<\/([A-Za-z_][\w.:-]*)\s*>/.exec(text.slice(i, i + 300));
      if (!m) fail("Malformed end tag");
      const open = stack.pop();
      if (!open || open.name !== m![1]) {
        fail(`End tag </${m![1]}> does not match <${open?.name ?? ""}>`);
      }
      close(open!, stack, summary);
      i += m![0].length;
    } else {
      const m = /^<([A-Za-z_][\w.:-]*)/.exec(text.slice(i, i + 300));
      if (!m) fail("Malformed start tag");
      const el: Element = { name: m![1]!, attrs: new Map(), text: "" };
      i += m![0].length;
      while (true) {
        const ws = /^\s*/.exec(text.slice(i))![0].length;
        i += ws;
        if (text.startsWith("/>", i) || text.startsWith(">", i)) break;
        if (!ws) fail(`Malformed attributes of <${el.name}>`);
        const a = /^([A-Za-z_][\w.:-]*)\s*=\s*("([^"<]*)"|'([^'<]*)')/.exec(text.slice(i));
        if (!a) fail(`Malformed attribute of <${el.name}>`);
        if (el.attrs.has(a![1]!)) fail(`Duplicate attribute ${a![1]} of <${el.name}>`);
        el.attrs.set(a![1]!, decode(a![3] ?? a![4] ?? "", fail));
        i += a![0].length;
      }
      if (!stack.length && roots++) fail("More than one root element");
      open(el, stack, summary, fail);
      if (text.startsWith("/>", i)) {
        close(el, stack, summary);
        i += 2;
      } else {
        stack.push(el);
        i += 1;
      }
    }
  }
  if (stack.length) fail(`Unclosed element <${stack[stack.length - 1]!.name}>`);
  if (!roots) fail("No root element");
  return summary;
}

function local(name: string): string {
  return name.slice(name.indexOf(":") + 1);
}

function open(el: Element, stack: Element[], summary: OvfSummary, fail: (w: string) => never) {
  if (!stack.length && local(el.name) !== "Envelope") {
    fail(`The root element is <${el.name}>, not an OVF Envelope`);
  }
  if (local(el.name) === "Disk") {
    for (const [k, v] of el.attrs) {
      if (local(k) === "diskId") summary.diskIds.push(v);
    }
  }
}

function close(el: Element, stack: Element[], summary: OvfSummary): void {
  const parent = stack[stack.length - 1];
  if (
    local(el.name) === "Name" && parent &&
    (local(parent.name) === "VirtualSystem" || local(parent.name) === "Content") &&
    summary.name === undefined
  ) {
    summary.name = el.text.trim();
  }
}

function decode(s: string, fail: (w: string) => never): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);|&/g, (all, ref: string | undefined) => {
    if (!ref) fail("Bare & in text");
    if (ref!.startsWith("#x")) return String.fromCodePoint(parseInt(ref!.slice(2), 16));
    if (ref!.startsWith("#")) return String.fromCodePoint(parseInt(ref!.slice(1), 10));
    const named: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };
    return named[ref!] ?? fail(`Unknown entity ${all}`);
  });
}
