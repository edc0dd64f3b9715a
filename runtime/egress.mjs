// The egress policy of function code: which addresses its outbound connections may reach.
//
// The check runs when a socket connects, on the address it is about to connect to, after name
// resolution: `0x7f000001`, `2130706433`, `[::ffff:127.0.0.1]`, a name that resolves to a private
// address and a name that changes its answer between two lookups (DNS rebinding) all meet the
// same check, on the address actually used. One chokepoint, `net.Socket.prototype.connect`, serves
// every client in the thread: `http`, `https`, `fetch` (Node's undici connects through `net`/`tls`)
// and the npm packages built on them.
//
// Plain JavaScript on purpose: the vm2 worker imports it as it is, and the server imports it to
// validate its configuration.
import dns from "node:dns";
import net from "node:net";
import os from "node:os";

/**
 * @typedef {object} EgressOptions
 * @property {"public-only" | "allow-all"} [policy] `public-only` (the default) denies the ranges
 *   of `DENIED_RANGES` and local sockets; `allow-all` denies only what `deny` names.
 * @property {string[]} [allow] Addresses, CIDRs or host names (`api.internal`, `*.corp.example`)
 *   reachable even when private. A host name is matched against the name the code asked for.
 * @property {string[]} [deny] Addresses, CIDRs or host names never reachable; wins over `allow`.
 * @property {number} [servicePort] The service's own port: never reachable on a local address,
 *   whatever the lists say, so function code cannot call the service's API.
 */

/**
 * What `public-only` denies (IANA special-purpose registries): nothing here is a public service.
 * An IPv6 address that embeds an IPv4 one is judged as that IPv4 address (see `IPV4_EMBEDDINGS`).
 */
const DENIED_RANGES = [
  "0.0.0.0/8", // "this network", the unspecified address
  "10.0.0.0/8", // private
  "100.64.0.0/10", // carrier-grade NAT
  "127.0.0.0/8", // loopback
  "169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
  "172.16.0.0/12", // private
  "192.0.0.0/24", // IETF protocol assignments
  "192.0.2.0/24", // documentation
  "192.88.99.0/24", // 6to4 relay anycast
  "192.168.0.0/16", // private
  "198.18.0.0/15", // benchmarking
  "198.51.100.0/24", // documentation
  "203.0.113.0/24", // documentation
  "224.0.0.0/4", // multicast
  "240.0.0.0/4", // reserved, broadcast
  "::/128", // unspecified
  "::1/128", // loopback
  "64:ff9b:1::/48", // local-use NAT64
  "100::/64", // discard
  "2001::/32", // Teredo
  "2001:db8::/32", // documentation
  "fc00::/7", // unique local (private)
  "fe80::/10", // link-local
  "fec0::/10", // site-local (deprecated)
  "ff00::/8", // multicast
];

export class EgressDeniedError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "EgressDeniedError";
    this.code = "EGRESS_DENIED";
  }
}

/**
 * An IP address as a number, or undefined when `text` is not one. Brackets and an IPv6 zone
 * (`fe80::1%eth0`) are dropped; the text must otherwise be canonical (what `net.isIP` accepts:
 * the odd spellings like `0x7f000001` are names, resolved before they are judged).
 * @param {string} text
 * @returns {{family: 4 | 6, value: bigint} | undefined}
 */
export function parseIp(text) {
  const address = String(text).replace(/^\[(.*)\]$/, "$1").replace(/%.*$/, "");
  const family = net.isIP(address);
  if (family === 4) return { family, value: address.split(".").reduce((n, part) => (n << 8n) | BigInt(part), 0n) };
  if (family !== 6) return undefined;
  // A trailing dotted quad (`::ffff:127.0.0.1`) is the last two 16-bit groups.
  const quad = /\d+\.\d+\.\d+\.\d+$/.exec(address)?.[0];
  const v4 = quad && parseIp(quad).value;
  const hex = quad ? `${address.slice(0, -quad.length)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}` : address;
  const [head, tail] = hex.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  return { family, value: groups.reduce((n, group) => (n << 16n) | BigInt(`0x${group}`), 0n) };
}

/**
 * A CIDR (`10.0.0.0/8`, `fc00::/7`) or a single address, or undefined when `text` is neither.
 * @param {string} text
 */
export function parseCidr(text) {
  const [address, bits, ...extra] = String(text).trim().split("/");
  const ip = parseIp(address);
  if (!ip || extra.length > 0) return undefined;
  const width = ip.family === 4 ? 32 : 128;
  const prefix = bits === undefined ? width : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix >= 0 && prefix <= width)) return undefined;
  const shift = BigInt(width - prefix);
  return { family: ip.family, shift, base: ip.value >> shift };
}

/** @param {{family: number, shift: bigint, base: bigint}} range @param {{family: number, value: bigint}} ip */
const inRange = (range, ip) => range.family === ip.family && ip.value >> range.shift === range.base;

/** IPv6 ranges whose addresses carry an IPv4 address, and where it sits: `[range, shift]`. */
const IPV4_EMBEDDINGS = [
  [parseCidr("::ffff:0:0/96"), 0n], // IPv4-mapped: ::ffff:127.0.0.1
  [parseCidr("::/96"), 0n], // IPv4-compatible (deprecated): ::127.0.0.1, also :: and ::1
  [parseCidr("::ffff:0:0:0/96"), 0n], // IPv4-translated (SIIT)
  [parseCidr("64:ff9b::/96"), 0n], // NAT64
  [parseCidr("2002::/16"), 80n], // 6to4
];

/** The address a connection really goes to: an embedded IPv4 address rather than its IPv6 wrapping. */
function effectiveIp(ip) {
  if (ip.family !== 6) return ip;
  const embedding = IPV4_EMBEDDINGS.find(([range]) => inRange(range, ip));
  return embedding ? { family: 4, value: (ip.value >> embedding[1]) & 0xffffffffn } : ip;
}

const HOST_PATTERN = /^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$/;

/**
 * Parses an allow or deny list. Throws a `TypeError` naming the first entry that is neither an
 * address, a CIDR nor a host name.
 * @param {string[]} entries
 */
export function parseEgressList(entries = []) {
  const ranges = [];
  const hosts = [];
  for (const entry of entries) {
    const range = parseCidr(entry);
    const host = String(entry).trim().toLowerCase().replace(/\.$/, "");
    if (range) ranges.push(range);
    else if (HOST_PATTERN.test(host) && !/^[\d.]+$/.test(host)) hosts.push(host);
    else throw new TypeError(`${JSON.stringify(entry)} is not an IP address, a CIDR or a host name`);
  }
  /** @param {{family: number, value: bigint}} ip @param {string | undefined} hostname */
  return (ip, hostname) => {
    const name = hostname?.toLowerCase().replace(/\.$/, "");
    const target = effectiveIp(ip);
    return (
      ranges.some((range) => inRange(range, ip) || inRange(range, target)) ||
      (name !== undefined && hosts.some((host) => (host.startsWith("*.") ? name.endsWith(host.slice(1)) : name === host)))
    );
  };
}

const isPubliclyDenied = parseEgressList(DENIED_RANGES);
const isLoopbackOrUnspecified = parseEgressList(["127.0.0.0/8", "0.0.0.0/32", "::1", "::"]);

/**
 * The policy as a function: the reason a connection is denied, or undefined when it may go ahead.
 * Throws a `TypeError` for an invalid option.
 * @param {EgressOptions} [options]
 * @example
 *   const check = createEgressPolicy({ allow: ["10.1.2.3"] })
 *   check("10.1.2.3", 443)        // undefined
 *   check("169.254.169.254", 80)  // EgressDeniedError
 */
export function createEgressPolicy(options = {}) {
  const policy = options.policy ?? "public-only";
  if (policy !== "public-only" && policy !== "allow-all") throw new TypeError(`policy must be public-only or allow-all, got ${JSON.stringify(policy)}`);
  const isAllowed = parseEgressList(options.allow);
  const isDenied = parseEgressList(options.deny);
  // This machine's own addresses: the service's port on any of them is its API.
  const isLocal = parseEgressList(Object.values(os.networkInterfaces()).flatMap((list) => list ?? []).map((entry) => entry.address).filter(parseIp));
  const denied = (address, why) => new EgressDeniedError(`connection to ${address} is not allowed by the egress policy: ${why}`);

  /**
   * @param {string} address the IP address the socket would connect to
   * @param {number | string} port
   * @param {string} [hostname] the name the code asked for, when it asked for a name
   * @returns {EgressDeniedError | undefined}
   */
  return function check(address, port, hostname) {
    const shown = hostname ? `${hostname} (${address})` : address;
    const ip = parseIp(address);
    if (!ip) return denied(shown, "not an IP address");
    if (options.servicePort !== undefined && Number(port) === options.servicePort && (isLoopbackOrUnspecified(ip) || isLocal(ip))) {
      return denied(`${shown} port ${port}`, "function code cannot call this service's own API");
    }
    if (isDenied(ip, hostname)) return denied(shown, "the address is in FUNCTIONS_EGRESS_DENY");
    if (policy === "allow-all" || isAllowed(ip, hostname) || !isPubliclyDenied(ip)) return undefined;
    return denied(shown, "loopback, private, link-local and reserved addresses are denied (FUNCTIONS_EGRESS_ALLOW lists exceptions)");
  };
}

/**
 * Puts the policy on every outbound connection of this thread, once, before any function code
 * runs. For a host name the lookup is wrapped (the caller's own `lookup` included) so each resolved
 * address is checked and only allowed ones are connected to; an IP literal is checked directly, as
 * Node connects to it without a lookup; a local socket (`socketPath`) is only allowed by `allow-all`.
 * The replaced method cannot be reassigned by code that reaches the prototype.
 * @param {EgressOptions} [options]
 * @param {{ onConnect?: (socket: net.Socket) => void }} [hooks] `onConnect` sees every socket the
 *   policy lets connect (the vm2 worker ends a run's own sockets with the run).
 */
export function installEgressGuard(options = {}, hooks = {}) {
  const check = createEgressPolicy(options);
  const allowsLocalSockets = options.policy === "allow-all";
  const connect = net.Socket.prototype.connect;
  const systemLookup = dns.lookup;
  // `net.createConnection` hands `connect` its arguments already normalised, flagged by this symbol.
  const normalizedFlag = Object.getOwnPropertySymbols(net._normalizeArgs([{}]))[0];

  function guardedLookup(port, lookup) {
    return function lookupAndCheck(hostname, lookupOptions, callback) {
      // Every address, so an allowed one is used even when a denied one comes first (`localhost`: ::1).
      lookup(hostname, { ...lookupOptions, all: true }, (error, address, family) => {
        if (error) return callback(error);
        const found = Array.isArray(address) ? address : [{ address, family }];
        const allowed = found.filter((entry) => !check(entry?.address, port, hostname));
        if (allowed.length === 0) return callback(check(found[0]?.address, port, hostname));
        if (lookupOptions?.all) callback(null, allowed);
        else callback(null, allowed[0].address, allowed[0].family);
      });
    };
  }

  function guardedConnect(...args) {
    const [given, callback] = Array.isArray(args[0]) && args[0][normalizedFlag] ? args[0] : net._normalizeArgs(args);
    // Read the caller's options once: a getter cannot answer one host to the check, another to net.
    const socketOptions = {};
    for (const key in given) socketOptions[key] = given[key];
    const { path, host = "localhost", port, lookup } = socketOptions;
    let error;
    if (path) {
      if (!allowsLocalSockets) error = new EgressDeniedError("connection to a local socket is not allowed by the egress policy");
    } else if (net.isIP(host)) {
      error = check(host, port);
    } else {
      socketOptions.lookup = guardedLookup(port, typeof lookup === "function" ? lookup : systemLookup);
    }
    if (error) {
      // Fails like a refused connection does: asynchronously, through the socket's 'error'.
      process.nextTick(() => this.destroy(error));
      return this;
    }
    hooks.onConnect?.(this);
    return connect.call(this, net._normalizeArgs(callback ? [socketOptions, callback] : [socketOptions]));
  }

  Object.defineProperty(net.Socket.prototype, "connect", { value: guardedConnect, writable: false, configurable: false, enumerable: true });
}

/**
 * Node's `fetch` reports every network failure as "fetch failed", the reason in `cause`: this one
 * puts an egress denial in the message, so a function's error answer says what happened.
 * @param {typeof fetch} fetchFn
 * @returns {typeof fetch}
 */
export function explainEgressDenials(fetchFn) {
  return (...args) =>
    fetchFn(...args).catch((error) => {
      if (!(error?.cause instanceof EgressDeniedError)) throw error;
      throw new TypeError(`fetch failed: ${error.cause.message}`, { cause: error.cause });
    });
}
