/**
 * A small vSphere API (vim25 SOAP) client: just what the vSphere input needs. It logs in with a
 * user and password, keeps the session cookie (`vmware_soap_session`), reads properties with the
 * PropertyCollector (`RetrievePropertiesEx`, paged), lists VMs through a ContainerView, finds
 * inventory paths with the SearchIndex, and logs out.
 *
 * Requests are SOAP 1.1 envelopes POSTed to `/sdk`; answers are parsed with `_xml.ts`. A SOAP
 * fault becomes a {@linkcode VimFault} carrying the fault's type (`InvalidLogin`,
 * `ManagedObjectNotFound`, ...). The password and the cookie are never part of an error
 * message or a log line.
 *
 * @module
 */

import { child, children, childText, parseXml, type XmlElement } from "../_xml.ts";
import type { HttpsClient } from "./_http.ts";

/** A managed object reference: a type and an id, e.g. `VirtualMachine` `vm-42`. */
export interface Moref {
  /** The managed object's type. */
  type: string;
  /** Its id on this server. */
  value: string;
}

/** The parts of the ServiceContent vmshift uses. */
export interface ServiceContent {
  /** `VirtualCenter` or `HostAgent` (ESXi). */
  apiType: string;
  /** E.g. `7.0.3.0`. */
  apiVersion: string;
  /** The product, e.g. `VMware vCenter Server 7.0.3 build-...`. */
  fullName: string;
  /** The inventory's root folder. */
  rootFolder: Moref;
  /** The PropertyCollector. */
  propertyCollector: Moref;
  /** The ViewManager. */
  viewManager: Moref;
  /** The SessionManager. */
  sessionManager: Moref;
  /** The SearchIndex. */
  searchIndex: Moref;
}

/** One object's properties, by property path; absent properties are not in the map. */
export interface ObjectProperties {
  /** The object. */
  obj: Moref;
  /** Property path → value element (`<val>`). */
  props: Map<string, XmlElement>;
}

/** A SOAP fault from the server. */
export class VimFault extends Error {
  /** The fault's type, e.g. `InvalidLogin`, `ManagedObjectNotFound`, `NotAuthenticated`. */
  readonly fault: string;

  /**
   * @param fault The fault type.
   * @param message The server's fault string.
   */
  constructor(fault: string, message: string) {
    super(message ? `${fault}: ${message}` : fault);
    this.name = "VimFault";
    this.fault = fault;
  }
}

const ENVELOPE_START = '<?xml version="1.0" encoding="UTF-8"?>' +
  '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ' +
  'xmlns:xsd="http://www.w3.org/2001/XMLSchema" ' +
  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>';
const ENVELOPE_END = "</soapenv:Body></soapenv:Envelope>";

/**
 * Escapes text for XML content and attribute values.
 *
 * @param s The text.
 * @returns The escaped text.
 * @example
 * ```ts
 * import { xmlEscape } from "./_soap.ts";
 * if (xmlEscape(`a<b & "c"`) !== "a&lt;b &amp; &quot;c&quot;") throw new Error();
 * ```
 */
export function xmlEscape(s: string): string {
  return s.replace(
    /[<>&"']/g,
    (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!,
  );
}

/**
 * A managed object reference as a SOAP element.
 *
 * @param tag The element name, e.g. `_this`.
 * @param ref The reference.
 * @returns The XML.
 */
export function morefXml(tag: string, ref: Moref): string {
  return `<${tag} type="${xmlEscape(ref.type)}">${xmlEscape(ref.value)}</${tag}>`;
}

/**
 * Reads a managed object reference from an element (`<obj type="VirtualMachine">vm-1</obj>`).
 *
 * @param el The element.
 * @returns The reference.
 */
export function morefOf(el: XmlElement): Moref {
  // `<val xsi:type="ManagedObjectReference" type="Folder">`: the unprefixed one.
  return { type: el.qattrs.get("type") ?? el.attrs.get("type") ?? "", value: el.text.trim() };
}

/**
 * The `xsi:type` of an element (whatever its prefix), else its name.
 *
 * @param el The element.
 * @returns The type, without a prefix, e.g. `VirtualDisk`.
 */
export function xsiType(el: XmlElement): string {
  for (const [k, v] of el.qattrs) if (k.endsWith(":type")) return v.replace(/^.*:/, "");
  return el.name;
}

/** Options of {@linkcode VimClient.connect}. */
export interface VimConnectOptions {
  /** Stops every request. */
  signal?: AbortSignal;
  /** Debug messages (never with secrets). */
  debug?: (message: string) => void;
}

/** A connection to vCenter or ESXi, logged in or not. */
export class VimClient {
  /** The HTTPS client, for file access with the session cookie. */
  readonly http: HttpsClient;
  /** The ServiceContent. */
  readonly content: ServiceContent;
  readonly #signal: AbortSignal | undefined;
  readonly #debug: (message: string) => void;
  #cookie: string | undefined;
  #action: string;

  private constructor(http: HttpsClient, content: ServiceContent, options: VimConnectOptions) {
    this.http = http;
    this.content = content;
    this.#signal = options.signal;
    this.#debug = options.debug ?? (() => {});
    // Speak the server's version: newer properties (secure boot) only exist from 6.5 on.
    this.#action = `urn:vim25/${content.apiVersion.split(".").slice(0, 2).join(".") || "6.0"}`;
  }

  /**
   * Connects: reads the ServiceContent (which needs no login).
   *
   * @param http The HTTPS client.
   * @param options Signal, debug.
   * @returns The client.
   * @throws {Error} When the server does not answer as vSphere does.
   */
  static async connect(http: HttpsClient, options: VimConnectOptions = {}): Promise<VimClient> {
    const body = await call(
      http,
      "urn:vim25/6.0",
      undefined,
      options.signal,
      "RetrieveServiceContent",
      morefXml("_this", { type: "ServiceInstance", value: "ServiceInstance" }),
    );
    const rv = child(body, "returnval");
    const about = rv && child(rv, "about");
    const ref = (name: string): Moref => {
      const el = rv && child(rv, name);
      if (!el) {
        throw new Error(`the server's ServiceContent has no ${name}: is it vCenter or ESXi?`);
      }
      return morefOf(el);
    };
    const content: ServiceContent = {
      apiType: (about && childText(about, "apiType")) ?? "",
      apiVersion: (about && childText(about, "apiVersion")) ?? "",
      fullName: (about && childText(about, "fullName")) ?? "",
      rootFolder: ref("rootFolder"),
      propertyCollector: ref("propertyCollector"),
      viewManager: ref("viewManager"),
      sessionManager: ref("sessionManager"),
      searchIndex: ref("searchIndex"),
    };
    return new VimClient(http, content, options);
  }

  /** The session cookie, `vmware_soap_session="..."`, once logged in. A secret. */
  get cookie(): string | undefined {
    return this.#cookie;
  }

  /**
   * Logs in.
   *
   * @param user The user name.
   * @param password The password (never logged).
   * @throws {VimFault} `InvalidLogin` for a wrong user or password.
   */
  async login(user: string, password: string): Promise<void> {
    const cookies: string[] = [];
    await call(
      this.http,
      this.#action,
      undefined,
      this.#signal,
      "Login",
      morefXml("_this", this.content.sessionManager) +
        `<userName>${xmlEscape(user)}</userName><password>${xmlEscape(password)}</password>`,
      cookies,
    );
    const session = cookies.map((c) => c.split(";")[0]!.trim()).find((c) =>
      c.startsWith("vmware_soap_session=")
    );
    if (!session) throw new Error("the server logged in but gave no session cookie");
    this.#cookie = session;
  }

  /** Logs out, if logged in; errors are ignored (the session expires anyway). */
  async logout(): Promise<void> {
    if (!this.#cookie) return;
    try {
      await this.#call("Logout", morefXml("_this", this.content.sessionManager));
      this.#debug("vsphere: logged out");
    } catch (e) {
      this.#debug(`vsphere: logout failed: ${e instanceof Error ? e.message : e}`);
    } finally {
      this.#cookie = undefined;
    }
  }

  /**
   * Reads properties of objects (`RetrievePropertiesEx`, following its pages).
   *
   * @param objects The objects, all of one type.
   * @param paths The property paths, e.g. `config.hardware.numCPU`.
   * @returns One entry per object that exists.
   * @throws {VimFault} E.g. `ManagedObjectNotFound` when an object does not exist.
   */
  async retrieve(objects: Moref[], paths: string[]): Promise<ObjectProperties[]> {
    if (objects.length === 0) return [];
    const type = objects[0]!.type;
    const spec = `<specSet><propSet><type>${xmlEscape(type)}</type>${
      paths.map((p) => `<pathSet>${xmlEscape(p)}</pathSet>`).join("")
    }</propSet>${
      objects.map((o) => `<objectSet>${morefXml("obj", o)}<skip>false</skip></objectSet>`).join("")
    }</specSet>`;
    return await this.#retrievePaged(spec);
  }

  /**
   * Reads a property of every object of a type under a folder or datacenter, through a
   * ContainerView (destroyed afterwards).
   *
   * @param container The folder or datacenter to look under, recursively.
   * @param type The type, e.g. `VirtualMachine`.
   * @param paths The property paths.
   * @returns One entry per object.
   */
  async retrieveAll(container: Moref, type: string, paths: string[]): Promise<ObjectProperties[]> {
    const created = await this.#call(
      "CreateContainerView",
      morefXml("_this", this.content.viewManager) + morefXml("container", container) +
        `<type>${xmlEscape(type)}</type><recursive>true</recursive>`,
    );
    const view = morefOf(child(created, "returnval")!);
    try {
      const spec = `<specSet><propSet><type>${xmlEscape(type)}</type>${
        paths.map((p) => `<pathSet>${xmlEscape(p)}</pathSet>`).join("")
      }</propSet><objectSet>${morefXml("obj", view)}<skip>true</skip>` +
        `<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type>` +
        `<path>view</path><skip>false</skip></selectSet></objectSet></specSet>`;
      return await this.#retrievePaged(spec);
    } finally {
      await this.#call("DestroyView", morefXml("_this", view)).catch(() => {});
    }
  }

  /**
   * Finds an object by its inventory path (`SearchIndex.FindByInventoryPath`), e.g.
   * `Folder/DC` or `DC/vm/web01`.
   *
   * @param path The inventory path.
   * @returns The object, or undefined.
   */
  async findByInventoryPath(path: string): Promise<Moref | undefined> {
    const body = await this.#call(
      "FindByInventoryPath",
      morefXml("_this", this.content.searchIndex) +
        `<inventoryPath>${xmlEscape(path)}</inventoryPath>`,
    );
    const rv = child(body, "returnval");
    return rv ? morefOf(rv) : undefined;
  }

  async #retrievePaged(specSet: string): Promise<ObjectProperties[]> {
    const out: ObjectProperties[] = [];
    let body = await this.#call(
      "RetrievePropertiesEx",
      morefXml("_this", this.content.propertyCollector) + specSet + "<options/>",
    );
    while (true) {
      const rv = child(body, "returnval");
      if (!rv) break;
      for (const o of children(rv, "objects")) {
        const props = new Map<string, XmlElement>();
        for (const p of children(o, "propSet")) {
          const name = childText(p, "name");
          const val = child(p, "val");
          if (name && val) props.set(name, val);
        }
        out.push({ obj: morefOf(child(o, "obj")!), props });
      }
      const token = childText(rv, "token");
      if (!token) break;
      body = await this.#call(
        "ContinueRetrievePropertiesEx",
        morefXml("_this", this.content.propertyCollector) + `<token>${xmlEscape(token)}</token>`,
      );
    }
    return out;
  }

  #call(method: string, args: string): Promise<XmlElement> {
    return call(this.http, this.#action, this.#cookie, this.#signal, method, args);
  }
}

/** Posts one SOAP call and returns the response element (`<MethodResponse>`). */
async function call(
  http: HttpsClient,
  action: string,
  cookie: string | undefined,
  signal: AbortSignal | undefined,
  method: string,
  args: string,
  setCookies?: string[],
): Promise<XmlElement> {
  const res = await http.request({
    method: "POST",
    path: "/sdk",
    headers: {
      "content-type": "text/xml; charset=utf-8",
      soapaction: action,
      ...(cookie ? { cookie } : {}),
    },
    body: `${ENVELOPE_START}<${method} xmlns="urn:vim25">${args}</${method}>${ENVELOPE_END}`,
    ...(signal ? { signal } : {}),
  });
  const text = new TextDecoder().decode(res.body);
  let envelope: XmlElement;
  try {
    envelope = parseXml(text);
  } catch {
    throw new Error(
      `${method}: the server answered HTTP ${res.status} with no SOAP response: is this ` +
        "vCenter or ESXi?",
    );
  }
  const body = child(envelope, "Body");
  const fault = body && child(body, "Fault");
  if (fault) {
    const detail = child(fault, "detail");
    const first = detail?.children[0];
    const type = first ? xsiType(first).replace(/Fault$/, "") : "ServerFault";
    throw new VimFault(type, childText(fault, "faultstring") ?? "");
  }
  const response = body && child(body, `${method}Response`);
  if (!response) {
    throw new Error(`${method}: the server answered HTTP ${res.status} without a response`);
  }
  const sc = res.headers["set-cookie"];
  if (setCookies && sc) setCookies.push(...(Array.isArray(sc) ? sc : [sc]));
  return response;
}
