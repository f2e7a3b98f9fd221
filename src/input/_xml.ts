/**
 * A small, strict, non-validating XML parser for the descriptors inputs read (OVF). It builds
 * a tree of elements and checks well-formedness: one root, matching end tags, quoted and unique
 * attributes, known entity references, nothing but comments and processing instructions around
 * the root. Errors are `SyntaxError`s that give the line and column.
 *
 * Names are matched by their local part: `ovf:Envelope`, `Envelope` and `x:Envelope` are all
 * `Envelope`, and so are attributes (`ovf:id` is `id`). OVF documents in the wild bind the same
 * namespaces to different prefixes, or put attributes in no namespace at all; the local names are
 * what carries the meaning.
 *
 * Document type declarations are refused: an OVA comes from outside, and a DTD is the way to
 * make a parser fetch files or expand entities without end. OVF documents never have one.
 *
 * @module
 */

/** One element of a parsed document. */
export interface XmlElement {
  /** Local name, without the namespace prefix. */
  readonly name: string;
  /** The name as written, with its prefix (for messages). */
  readonly qname: string;
  /** Attributes by local name; when two attributes share a local name, the first wins. */
  readonly attrs: ReadonlyMap<string, string>;
  /**
   * Attributes by their names as written, with their prefixes (`xsi:type`, `type`): for
   * documents where a prefixed and an unprefixed attribute share a local name (SOAP).
   */
  readonly qattrs: ReadonlyMap<string, string>;
  /** Child elements, in document order. */
  readonly children: readonly XmlElement[];
  /** The text directly inside this element (not inside its children), entities decoded. */
  readonly text: string;
  /** Line of the start tag, from 1. */
  readonly line: number;
}

interface MutableElement {
  name: string;
  qname: string;
  attrs: Map<string, string>;
  qattrs: Map<string, string>;
  children: MutableElement[];
  text: string;
  line: number;
}

const NAME_RE =
  /[A-Za-z_:\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u02FF\u0370-\u037D\u037F-\u1FFF\u200C-\u200D\u2070-\u218F\u2C00-\u2FEF\u3001-\uD7FF\uF900-\uFDCF\uFDF0-\uFFFD][-A-Za-z0-9_:.\u00B7\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u037D\u037F-\u1FFF\u200C-\u200D\u203F-\u2040\u2070-\u218F\u2C00-\u2FEF\u3001-\uD7FF\uF900-\uFDCF\uFDF0-\uFFFD]*/y;
const PREDEFINED: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/**
 * Parses an XML document.
 *
 * @param text The document (a leading byte order mark is allowed).
 * @returns The root element.
 * @throws {SyntaxError} When the document is not well-formed XML, or has a DTD; the message
 * says what is wrong and where, e.g. `line 3, column 5: end tag "</b>" does not match "<a>"`.
 * @example
 * ```ts
 * import { child, parseXml } from "./_xml.ts";
 * const root = parseXml(`<o:Envelope xmlns:o="urn:x"><o:Name a="1 &amp; 2">vm</o:Name></o:Envelope>`);
 * const name = child(root, "Name");
 * if (root.name !== "Envelope" || name?.text !== "vm" || name.attrs.get("a") !== "1 & 2") {
 *   throw new Error("unexpected");
 * }
 * ```
 */
export function parseXml(text: string): XmlElement {
  return new Parser(text).document();
}

/**
 * The first child element with a local name.
 *
 * @param el The parent.
 * @param name Local name.
 * @returns The child, or undefined.
 */
export function child(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}

/**
 * Every child element with a local name.
 *
 * @param el The parent.
 * @param name Local name.
 * @returns The children, in document order.
 */
export function children(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}

/**
 * The trimmed text of the first child element with a local name.
 *
 * @param el The parent.
 * @param name Local name of the child.
 * @returns Its text, or undefined when there is no such child or it is empty.
 */
export function childText(el: XmlElement, name: string): string | undefined {
  const t = child(el, name)?.text.trim();
  return t ? t : undefined;
}

class Parser {
  readonly #s: string;
  #i = 0;
  #lineAt = { index: 0, line: 1 };

  constructor(text: string) {
    this.#s = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  }

  document(): XmlElement {
    let root: MutableElement | undefined;
    const s = this.#s;
    while (true) {
      this.#skipSpace();
      if (this.#i >= s.length) break;
      if (s.startsWith("<?", this.#i)) {
        this.#pi();
      } else if (s.startsWith("<!--", this.#i)) {
        this.#comment();
      } else if (s.startsWith("<!DOCTYPE", this.#i)) {
        this.#fail("document type declarations (DTDs) are not allowed");
      } else if (s[this.#i] === "<" && !root) {
        root = this.#element();
      } else if (s[this.#i] === "<") {
        this.#fail("content after the root element");
      } else {
        this.#fail(root ? "text after the root element" : "text before the root element");
      }
    }
    if (!root) this.#fail(s.trim() ? "no root element" : "empty document");
    return root;
  }

  /** Parses an element starting at `<`, with everything inside it, iteratively. */
  #element(): MutableElement {
    const s = this.#s;
    const stack: MutableElement[] = [];
    let root: MutableElement | undefined;
    while (true) {
      // At a start tag.
      const el = this.#startTag();
      if (stack.length) stack.at(-1)!.children.push(el);
      else root = el;
      if (s.startsWith("/>", this.#i)) {
        this.#i += 2;
        if (!stack.length) return root!;
      } else {
        this.#i++; // ">"
        stack.push(el);
      }
      // Content until the next start tag, or until the stack empties.
      while (stack.length) {
        const lt = s.indexOf("<", this.#i);
        if (lt < 0) {
          this.#i = s.length;
          this.#fail(`element "<${stack.at(-1)!.qname}>" is not closed`);
        }
        if (lt > this.#i) stack.at(-1)!.text += this.#decode(this.#i, lt);
        this.#i = lt;
        if (s.startsWith("</", lt)) {
          this.#endTag(stack.pop()!);
        } else if (s.startsWith("<!--", lt)) {
          this.#comment();
        } else if (s.startsWith("<![CDATA[", lt)) {
          const end = s.indexOf("]]>", lt + 9);
          if (end < 0) this.#fail("CDATA section is not closed");
          stack.at(-1)!.text += s.slice(lt + 9, end);
          this.#i = end + 3;
        } else if (s.startsWith("<?", lt)) {
          this.#pi();
        } else if (s.startsWith("<!", lt)) {
          this.#fail("unexpected markup declaration inside an element");
        } else {
          break; // a child's start tag
        }
      }
      if (!stack.length) return root!;
    }
  }

  #startTag(): MutableElement {
    const line = this.#line(this.#i);
    this.#i++; // "<"
    const qname = this.#name("element name");
    const attrs = new Map<string, string>();
    const qattrs = new Map<string, string>();
    const seen = new Set<string>();
    const s = this.#s;
    while (true) {
      const hadSpace = this.#skipSpace();
      if (s.startsWith("/>", this.#i) || s[this.#i] === ">") break;
      if (this.#i >= s.length) this.#fail(`start tag "<${qname}" is not closed`);
      if (!hadSpace) this.#fail(`expected a space, ">" or "/>" in the start tag of "<${qname}>"`);
      const an = this.#name("attribute name");
      this.#skipSpace();
      if (s[this.#i] !== "=") this.#fail(`expected "=" after attribute "${an}"`);
      this.#i++;
      this.#skipSpace();
      const q = s[this.#i];
      if (q !== '"' && q !== "'") this.#fail(`the value of attribute "${an}" is not quoted`);
      const end = s.indexOf(q, this.#i + 1);
      if (end < 0) this.#fail(`the value of attribute "${an}" is not closed`);
      const lt = s.indexOf("<", this.#i + 1);
      if (lt >= 0 && lt < end) {
        this.#i = lt;
        this.#fail(`"<" in the value of attribute "${an}"`);
      }
      // Attribute value normalisation: literal white space becomes a space.
      const value = this.#decode(this.#i + 1, end).replace(/[\t\n\r]/g, " ");
      if (seen.has(an)) this.#fail(`attribute "${an}" appears twice`);
      seen.add(an);
      const local = localName(an);
      if (an !== "xmlns" && !an.startsWith("xmlns:")) {
        if (!attrs.has(local)) attrs.set(local, value);
        qattrs.set(an, value);
      }
      this.#i = end + 1;
    }
    return { name: localName(qname), qname, attrs, qattrs, children: [], text: "", line };
  }

  #endTag(open: MutableElement): void {
    const start = this.#i;
    this.#i += 2;
    const qname = this.#name("element name");
    this.#skipSpace();
    if (this.#s[this.#i] !== ">") this.#fail(`end tag "</${qname}" is not closed`);
    if (qname !== open.qname) {
      this.#i = start;
      this.#fail(`end tag "</${qname}>" does not match "<${open.qname}>" (line ${open.line})`);
    }
    this.#i++;
  }

  #name(what: string): string {
    NAME_RE.lastIndex = this.#i;
    const m = NAME_RE.exec(this.#s);
    if (!m) this.#fail(`expected an ${what}`);
    this.#i += m[0].length;
    return m[0];
  }

  #comment(): void {
    const end = this.#s.indexOf("-->", this.#i + 4);
    if (end < 0) this.#fail("comment is not closed");
    this.#i = end + 3;
  }

  #pi(): void {
    const end = this.#s.indexOf("?>", this.#i + 2);
    if (end < 0) this.#fail("processing instruction is not closed");
    this.#i = end + 2;
  }

  /** Skips white space; true if there was any. */
  #skipSpace(): boolean {
    const start = this.#i;
    const s = this.#s;
    while (this.#i < s.length) {
      const c = s.charCodeAt(this.#i);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) break;
      this.#i++;
    }
    return this.#i > start;
  }

  /** Decodes entity and character references in `s[from, to)`. */
  #decode(from: number, to: number): string {
    const s = this.#s;
    let amp = s.indexOf("&", from);
    if (amp < 0 || amp >= to) return s.slice(from, to);
    let out = "";
    let pos = from;
    while (amp >= 0 && amp < to) {
      out += s.slice(pos, amp);
      const semi = s.indexOf(";", amp);
      if (semi < 0 || semi >= to) {
        this.#i = amp;
        this.#fail(`"&" is not the start of a reference (write "&amp;")`);
      }
      const ref = s.slice(amp + 1, semi);
      let ch: string | undefined;
      if (ref.startsWith("#")) {
        const code = /^#x[0-9a-fA-F]{1,6}$/.test(ref)
          ? parseInt(ref.slice(2), 16)
          : /^#[0-9]{1,7}$/.test(ref)
          ? parseInt(ref.slice(1), 10)
          : NaN;
        if (
          code === 0x9 || code === 0xa || code === 0xd || (code >= 0x20 && code <= 0xd7ff) ||
          (code >= 0xe000 && code <= 0xfffd) || (code >= 0x10000 && code <= 0x10ffff)
        ) {
          ch = String.fromCodePoint(code);
        }
      } else {
        ch = PREDEFINED[ref];
      }
      if (ch === undefined) {
        this.#i = amp;
        this.#fail(`unknown reference "&${ref};"`);
      }
      out += ch;
      pos = semi + 1;
      amp = s.indexOf("&", pos);
    }
    return out + s.slice(pos, to);
  }

  /** The line of an index; counted on from the last index asked for, so parsing stays linear. */
  #line(index: number): number {
    if (index < this.#lineAt.index) this.#lineAt = { index: 0, line: 1 };
    let { line } = this.#lineAt;
    const s = this.#s;
    for (
      let p = s.indexOf("\n", this.#lineAt.index);
      p >= 0 && p < index;
      p = s.indexOf("\n", p + 1)
    ) {
      line++;
    }
    this.#lineAt = { index, line };
    return line;
  }

  #fail(message: string): never {
    const i = Math.min(this.#i, this.#s.length);
    const line = this.#line(i);
    const column = i - (this.#s.lastIndexOf("\n", i - 1) + 1) + 1;
    throw new SyntaxError(`line ${line}, column ${column}: ${message}`);
  }
}

function localName(qname: string): string {
  const colon = qname.indexOf(":");
  return colon < 0 ? qname : qname.slice(colon + 1);
}
