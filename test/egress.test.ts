/**
 * The egress policy (runtime/egress.mjs): which addresses function code may connect to, and the
 * guard that checks every connection of a thread after name resolution.
 */
import { createServer, type Server } from "node:http";
import { networkInterfaces } from "node:os";
import { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEgressPolicy, EgressDeniedError, parseCidr, parseIp } from "../runtime/egress.mjs";

describe("addresses and CIDRs", () => {
  it("parses IPv4 and IPv6 addresses, with brackets, zones and trailing dotted quads", () => {
    expect(parseIp("127.0.0.1")).toEqual({ family: 4, value: 0x7f000001n });
    expect(parseIp("[::1]")).toEqual({ family: 6, value: 1n });
    expect(parseIp("fe80::1%eth0")).toEqual({ family: 6, value: 0xfe80n << 112n | 1n });
    expect(parseIp("::ffff:127.0.0.1")).toEqual(parseIp("::ffff:7f00:1"));
    expect(parseIp("1::")).toEqual({ family: 6, value: 1n << 112n });
  });

  it("leaves spellings that are not canonical addresses to name resolution", () => {
    for (const text of ["0x7f000001", "2130706433", "127.1", "017700000001", "localhost", "", "::g"]) expect(parseIp(text)).toBeUndefined();
  });

  it("parses CIDRs and single addresses, and rejects malformed ones", () => {
    expect(parseCidr("10.0.0.0/8")).toEqual({ family: 4, shift: 24n, base: 10n });
    expect(parseCidr("10.1.2.3")).toEqual({ family: 4, shift: 0n, base: 0x0a010203n });
    expect(parseCidr("fc00::/7")?.shift).toBe(121n);
    for (const text of ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/8/8", "10.0.0.0/-1", "example.com/8"]) expect(parseCidr(text)).toBeUndefined();
  });
});

describe("the default policy (public-only)", () => {
  const check = createEgressPolicy();

  it.each([
    ["127.0.0.1", "loopback"],
    ["127.255.255.254", "loopback"],
    ["0.0.0.0", "unspecified"],
    ["10.20.30.40", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["100.64.0.1", "carrier-grade NAT"],
    ["169.254.169.254", "cloud metadata"],
    ["224.0.0.1", "multicast"],
    ["255.255.255.255", "broadcast"],
    ["198.18.0.1", "benchmarking"],
    ["::1", "IPv6 loopback"],
    ["::", "IPv6 unspecified"],
    ["fe80::1", "IPv6 link-local"],
    ["fe80::1%eth0", "IPv6 link-local with a zone"],
    ["fc00::1", "unique local"],
    ["fd12:3456::1", "unique local"],
    ["ff02::1", "IPv6 multicast"],
    ["::ffff:127.0.0.1", "IPv4-mapped loopback"],
    ["::ffff:7f00:1", "IPv4-mapped loopback, hex"],
    ["::ffff:a9fe:a9fe", "IPv4-mapped metadata"],
    ["::127.0.0.1", "IPv4-compatible loopback"],
    ["::ffff:0:a00:1", "IPv4-translated private"],
    ["64:ff9b::7f00:1", "NAT64 of loopback"],
    ["64:ff9b::a9fe:a9fe", "NAT64 of metadata"],
    ["2002:7f00:1::1", "6to4 of loopback"],
  ])("denies %s (%s)", (address) => {
    const error = check(address, 80);
    expect(error).toBeInstanceOf(EgressDeniedError);
    expect(error?.message).toContain(`connection to ${address} is not allowed by the egress policy`);
    expect(error?.message).toContain("FUNCTIONS_EGRESS_ALLOW");
  });

  it.each(["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])("allows the public address %s", (address) => {
    expect(check(address, 443)).toBeUndefined();
  });

  it("denies what is not an IP address", () => {
    expect(check("localhost", 80)?.message).toContain("not an IP address");
  });

  it("names the host asked for beside the address it resolved to", () => {
    expect(check("127.0.0.1", 80, "localtest.me")?.message).toContain("connection to localtest.me (127.0.0.1)");
  });
});

describe("allow and deny lists", () => {
  it("FUNCTIONS_EGRESS_ALLOW opens addresses, CIDRs and host names, in every spelling of the address", () => {
    const check = createEgressPolicy({ allow: ["127.0.0.1", "10.0.0.0/8", "fd00::/8", "api.internal", "*.corp.example"] });
    for (const address of ["127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "::ffff:a01:203", "fd00::5"]) expect(check(address, 80)).toBeUndefined();
    expect(check("192.168.0.10", 80, "api.internal")).toBeUndefined();
    expect(check("192.168.0.11", 80, "billing.corp.example")).toBeUndefined();
    expect(check("192.168.0.11", 80, "corp.example")).toBeInstanceOf(EgressDeniedError);
    expect(check("127.0.0.2", 80)).toBeInstanceOf(EgressDeniedError);
  });

  it("FUNCTIONS_EGRESS_DENY closes more, and wins over the allow list", () => {
    const check = createEgressPolicy({ allow: ["10.0.0.0/8"], deny: ["10.9.0.0/16", "203.0.114.0/24", "*.tracker.example"] });
    expect(check("10.9.1.1", 80)?.message).toContain("FUNCTIONS_EGRESS_DENY");
    expect(check("203.0.114.7", 80)).toBeInstanceOf(EgressDeniedError);
    expect(check("8.8.8.8", 80, "ads.tracker.example")).toBeInstanceOf(EgressDeniedError);
    expect(check("10.8.1.1", 80)).toBeUndefined();
  });

  it("allow-all drops the default ranges but keeps the deny list", () => {
    const check = createEgressPolicy({ policy: "allow-all", deny: ["169.254.169.254"] });
    expect(check("127.0.0.1", 80)).toBeUndefined();
    expect(check("10.0.0.1", 80)).toBeUndefined();
    expect(check("169.254.169.254", 80)).toBeInstanceOf(EgressDeniedError);
  });

  it("the service's own port stays closed on every local address, whatever the lists say", () => {
    const localAddresses = Object.values(networkInterfaces()).flatMap((list) => list ?? []).map((entry) => entry.address);
    for (const options of [{ allow: ["127.0.0.0/8", "::1", ...localAddresses] }, { policy: "allow-all" as const }]) {
      const check = createEgressPolicy({ ...options, servicePort: 4000 });
      for (const address of ["127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "::1", "0.0.0.0", ...localAddresses]) {
        expect(check(address, 4000)?.message).toContain("this service's own API");
        expect(check(address, "4000")).toBeInstanceOf(EgressDeniedError);
      }
      expect(check("127.0.0.1", 4001)).toBeUndefined();
    }
  });

  it("rejects an invalid entry or policy by name", () => {
    expect(() => createEgressPolicy({ allow: ["10.0.0.0/40"] })).toThrow('"10.0.0.0/40" is not an IP address, a CIDR or a host name');
    expect(() => createEgressPolicy({ deny: ["999.1.1.1"] })).toThrow(TypeError);
    expect(() => createEgressPolicy({ allow: ["http://example.com"] })).toThrow(TypeError);
    expect(() => createEgressPolicy({ policy: "open" as never })).toThrow("policy must be public-only or allow-all");
  });
});

/**
 * The guard on a real thread: a worker installs it and connects to a server of this test on
 * 127.0.0.1 in every way function code could, answering what each connection attempt gave.
 */
describe("the connect-time guard", () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = createServer((_req, res) => res.end("reached"));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  const ATTEMPTS = `
    const http = require("node:http");
    const get = (target) => new Promise((resolve) => {
      http.get(target, (res) => { res.resume(); resolve("reached " + res.statusCode); })
        .on("error", (error) => resolve(error.name + ": " + error.message));
    });
    const fetchText = (url) => fetch(url).then((r) => r.text(), (error) => "fetch: " + (error.cause?.message ?? error.message));
    async function attempts(port) {
      return {
        ip: await get("http://127.0.0.1:" + port),
        name: await get("http://localhost:" + port),
        hex: await get({ host: "0x7f000001", port }),
        decimal: await get({ host: "2130706433", port }),
        mapped: await get("http://[::ffff:127.0.0.1]:" + port),
        rebinding: await get({ host: "rebind.example", port, lookup: (host, options, callback) => options.all ? callback(null, [{ address: "127.0.0.1", family: 4 }]) : callback(null, "127.0.0.1", 4) }),
        socketPath: await get({ socketPath: "/var/run/docker.sock", path: "/" }),
        fetch: await fetchText("http://127.0.0.1:" + port),
      };
    }`;

  function inWorker(options: object): Promise<Record<string, string>> {
    const source = `${ATTEMPTS}
      const { workerData, parentPort } = require("node:worker_threads");
      import(workerData.module).then(({ installEgressGuard }) => {
        installEgressGuard(workerData.options);
        return attempts(workerData.port);
      }).then((result) => parentPort.postMessage(result), (error) => parentPort.postMessage({ error: String(error) }));`;
    const worker = new Worker(source, { eval: true, workerData: { module: new URL("../runtime/egress.mjs", import.meta.url).href, options, port } });
    return new Promise((resolve, reject) => {
      worker.once("message", (result) => void worker.terminate().then(() => resolve(result)));
      worker.once("error", reject);
    });
  }

  it("denies every spelling of loopback, rebinding lookups, local sockets and fetch by default", async () => {
    const result = await inWorker({});
    for (const [attempt, outcome] of Object.entries(result)) {
      expect(outcome, attempt).toMatch(/^(EgressDeniedError: |fetch: )connection to .* not allowed by the egress policy/);
    }
    expect(result.rebinding).toContain("rebind.example (127.0.0.1)");
  });

  it("lets the allow list through, except the service's own port", async () => {
    const allowed = await inWorker({ allow: ["127.0.0.1"], servicePort: port + 1 });
    for (const attempt of ["ip", "name", "hex", "decimal", "mapped", "rebinding"]) expect(allowed[attempt], attempt).toBe("reached 200");
    expect(allowed.fetch).toBe("reached");
    expect(allowed.socketPath).toContain("local socket is not allowed");

    const ownPort = await inWorker({ allow: ["127.0.0.1"], servicePort: port });
    expect(ownPort.ip).toContain("function code cannot call this service's own API");
    expect(ownPort.fetch).toContain("function code cannot call this service's own API");
  });
});
