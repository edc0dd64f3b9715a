/**
 * The security layers of docs/security.md, over real HTTP against the built server: the egress
 * policy, the narrowed builtins, the decompression cap, secrets kept from function code, input
 * hardening and the optional API key.
 *
 * After every case the service still answers, a bystander workspace still runs, and no answer of
 * the case contained the HTTP process's canary secret or a host path.
 */
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import { gzipSync, brotliCompressSync } from "node:zlib";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startServer, type Reply, type RunningServer } from "./harness.ts";
import { hasPython } from "../fixtures/python.ts";

const CANARY = `canary-${randomUUID()}`;
const BUFFER_LIMIT = 8 * 1024 * 1024;

/** Answers `reached`; `/bomb` answers 16 MiB of zeros gzipped to a few KiB. */
let target: Server;
let targetPort: number;
/** Requests to /hang get no answer: counted when they arrive and when their connection closes. */
const hanging = { opened: 0, closed: 0 };
let server: RunningServer;
/** Every answer of the current case, checked for leaks after it. */
let answers: Reply[] = [];

beforeAll(async () => {
  const bomb = gzipSync(Buffer.alloc(2 * BUFFER_LIMIT));
  target = createServer((req, res) => {
    if (req.url === "/bomb") res.writeHead(200, { "content-encoding": "gzip" }).end(bomb);
    else if (req.url === "/hang") {
      hanging.opened++;
      req.socket.once("close", () => hanging.closed++);
    } else res.end("reached");
  });
  await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve));
  targetPort = (target.address() as { port: number }).port;
  server = await startServer({ SECRET_CANARY: CANARY, FUNCTIONS_BUFFER_MAX_SIZE: String(BUFFER_LIMIT), FUNCTIONS_RUN_TIMEOUT: "5000" });
  expect((await server.deploy("bystander", { functions: { ping: { code: "return 'pong'" } } })).status).toBe(200);
});

afterAll(async () => {
  await server?.stop();
  await new Promise((resolve) => target?.close(resolve));
});

afterEach(async () => {
  expect((await server.run("bystander", "ping", {})).body.result).toBe("pong");
  for (const answer of answers) expectNoLeak(answer);
  answers = [];
});

function expectNoLeak(answer: Reply): void {
  const text = JSON.stringify(answer.body);
  for (const secret of [CANARY, process.cwd(), server.storageDir, "/work/", "node_modules", "node:internal", "file://"]) {
    expect(text, `answer ${text.slice(0, 300)} contains ${secret}`).not.toContain(secret);
  }
}

async function deploy(target: RunningServer, workspace: string, functions: Record<string, string>): Promise<void> {
  const specs = Object.fromEntries(Object.entries(functions).map(([name, code]) => [name, { code, parameters: { url: {}, data: {} } }]));
  const reply = await target.deploy(workspace, { functions: specs });
  expect(reply.status, JSON.stringify(reply.body)).toBe(200);
}

async function run(target: RunningServer, workspace: string, fn: string, parameters: Record<string, unknown> = {}): Promise<Reply> {
  const reply = await target.run(workspace, fn, parameters);
  answers.push(reply);
  return reply;
}

/** A run that failed with a FunctionError whose message matches `pattern`. */
async function expectRefused(target: RunningServer, workspace: string, fn: string, parameters: Record<string, unknown>, pattern: RegExp): Promise<void> {
  const reply = await run(target, workspace, fn, parameters);
  expect(reply.status, JSON.stringify(reply.body)).toBe(500);
  expect(reply.body.error).toBe("FunctionError");
  expect(reply.body.message).toMatch(pattern);
}

/** Three ways out: fetch, http, https; each answers the body it read. */
const CLIENTS = {
  viaFetch: "return await (await fetch(url)).text();",
  viaHttp: "return await new Promise((resolve, reject) => require('http').get(url, (res) => { let text = ''; res.on('data', (c) => (text += c)); res.on('end', () => resolve(text)); }).on('error', reject));",
  viaHttps: "return await new Promise((resolve, reject) => require('https').get(url.replace('http:', 'https:'), (res) => resolve(res.statusCode)).on('error', reject));",
};
const DENIED = /not allowed by the egress policy/;

describe("egress policy (default: public addresses only)", () => {
  beforeAll(() => deploy(server, "egress", CLIENTS));

  it.each(["viaFetch", "viaHttp", "viaHttps"])("%s cannot reach a server on 127.0.0.1", async (fn) => {
    await expectRefused(server, "egress", fn, { url: `http://127.0.0.1:${targetPort}/` }, DENIED);
  });

  it.each([
    ["a hexadecimal address", "http://0x7f000001:PORT/"],
    ["a decimal address", "http://2130706433:PORT/"],
    ["an IPv4-mapped IPv6 address", "http://[::ffff:127.0.0.1]:PORT/"],
    ["IPv6 loopback", "http://[::1]:PORT/"],
    ["a name that resolves to loopback", "http://localhost:PORT/"],
    ["the unspecified address", "http://0.0.0.0:PORT/"],
    ["the cloud metadata service", "http://169.254.169.254/latest/meta-data/"],
    ["a private address", "http://10.0.0.1:PORT/"],
  ])("catches %s", async (_label, url) => {
    for (const fn of ["viaFetch", "viaHttp"]) await expectRefused(server, "egress", fn, { url: url.replace("PORT", String(targetPort)) }, DENIED);
  });

  it("catches a lookup that answers a private address (DNS rebinding) and local sockets", async () => {
    await deploy(server, "rebinding", {
      rebind: "return await new Promise((resolve, reject) => require('http').get({ host: 'rebind.example', port: Number(url), lookup: (h, o, cb) => (o.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)) }, resolve).on('error', reject));",
      socket: "return await new Promise((resolve, reject) => require('http').get({ socketPath: '/var/run/docker.sock', path: '/' }, resolve).on('error', reject));",
    });
    await expectRefused(server, "rebinding", "rebind", { url: String(targetPort) }, /rebind\.example \(127\.0\.0\.1\) is not allowed/);
    await expectRefused(server, "rebinding", "socket", {}, /local socket is not allowed/);
  });

  it("function code cannot call the service's own API", async () => {
    await expectRefused(server, "egress", "viaFetch", { url: `${server.url}/v2/functions` }, DENIED);
  });

  it.runIf(hasPython)("Python functions meet the same policy: loopback, the metadata service and the service's own API are refused", async () => {
    const get = { language: "python", code: "import urllib.request\nreturn urllib.request.urlopen(url, timeout=5).read().decode()", parameters: { url: {} } };
    expect((await server.deploy("py-egress", { functions: { get } })).status).toBe(200);
    for (const url of [`http://127.0.0.1:${targetPort}/`, `http://localhost:${targetPort}/`, `http://[::ffff:127.0.0.1]:${targetPort}/`, "http://169.254.169.254/latest/meta-data/", `${server.url}/v2/functions`]) {
      await expectRefused(server, "py-egress", "get", { url }, DENIED);
    }
  });
});

describe("egress policy with FUNCTIONS_EGRESS_ALLOW=127.0.0.1", () => {
  let allowing: RunningServer;
  beforeAll(async () => {
    allowing = await startServer({ FUNCTIONS_EGRESS_ALLOW: "127.0.0.1", FUNCTIONS_BUFFER_MAX_SIZE: String(BUFFER_LIMIT) });
    await deploy(allowing, "egress", { ...CLIENTS, bomb: "return (await (await fetch(url)).arrayBuffer()).byteLength;" });
  });
  afterAll(() => allowing?.stop());

  it("fetch, http and https reach the allowed address", async () => {
    const url = `http://127.0.0.1:${targetPort}/`;
    expect((await run(allowing, "egress", "viaFetch", { url })).body.result).toBe("reached");
    expect((await run(allowing, "egress", "viaHttp", { url: `http://localhost:${targetPort}/` })).body.result).toBe("reached");
    // The target speaks plain HTTP: the TLS handshake fails, which proves the connection was made.
    const https = await run(allowing, "egress", "viaHttps", { url });
    expect(https.body.message).not.toMatch(DENIED);
    expect(https.body.message).toMatch(/EPROTO|SSL|TLS|wrong version/i);
  });

  it("the service's own port stays denied", async () => {
    await expectRefused(allowing, "egress", "viaFetch", { url: `${allowing.url}/v2/functions` }, /this service's own API/);
    await expectRefused(allowing, "egress", "viaHttp", { url: `${allowing.url.replace("127.0.0.1", "localhost")}/sys/healthcheck` }, /this service's own API/);
  });

  it.runIf(hasPython)("Python functions reach the allowed address too, and the service's own port stays denied (FUNCTIONS_SERVICE_PORT)", async () => {
    const get = { language: "python", code: "import urllib.request\nreturn urllib.request.urlopen(url, timeout=5).read().decode()", parameters: { url: {} } };
    expect((await allowing.deploy("py-egress", { functions: { get } })).status).toBe(200);
    expect((await run(allowing, "py-egress", "get", { url: `http://127.0.0.1:${targetPort}/` })).body.result).toBe("reached");
    expect((await run(allowing, "py-egress", "get", { url: `http://localhost:${targetPort}/` })).body.result).toBe("reached");
    await expectRefused(allowing, "py-egress", "get", { url: `${allowing.url}/sys/healthcheck` }, /this service's own API/);
  });

  it("requests a run left in flight are closed when it answers: the server sees their connections end", async () => {
    await deploy(allowing, "leaves", {
      leave: "require('http').get(url).on('error', () => {});\nfetch(url).catch(() => {});\nawait new Promise((r) => setTimeout(r, 300));\nreturn 'answered';",
    });
    const before = { ...hanging };
    const url = `http://127.0.0.1:${targetPort}/hang`;
    expect((await run(allowing, "leaves", "leave", { url })).body.result).toBe("answered");
    expect(hanging.opened - before.opened).toBe(2);
    const deadline = Date.now() + 3000;
    while (hanging.closed - before.closed < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(hanging.closed - before.closed).toBe(2);
  });

  it("a gzip bomb fetched with Content-Encoding: gzip fails the run (undici's message: 'terminated')", async () => {
    await expectRefused(allowing, "egress", "bomb", { url: `http://127.0.0.1:${targetPort}/bomb` }, /^TypeError: terminated$/);
  });
});

describe("builtins without process-wide side effects", () => {
  it("function code cannot listen for connections", async () => {
    await deploy(server, "listen", {
      http: "require('http').createServer(() => {}).listen(0); return 'listening';",
      https: "require('https').createServer({}, () => {}).listen(0); return 'listening';",
    });
    await expectRefused(server, "listen", "http", {}, /cannot listen for connections/);
    await expectRefused(server, "listen", "https", {}, /cannot listen for connections/);
  });

  it("process-wide settings are refused: stream defaults, crypto engines and FIPS mode", async () => {
    await deploy(server, "settings", {
      highWaterMark: "require('stream').setDefaultHighWaterMark(false, 1); return 'changed';",
      engine: "require('crypto').setEngine('/tmp/evil.so'); return 'loaded';",
      fips: "require('crypto').setFips(true); return 'changed';",
    });
    await expectRefused(server, "settings", "highWaterMark", {}, /setDefaultHighWaterMark is not available/);
    await expectRefused(server, "settings", "engine", {}, /setEngine is disabled/);
    await expectRefused(server, "settings", "fips", {}, /setFips is disabled/);
  });

  it("modules are read-only views: global agents and members cannot be replaced, dns only answers queries", async () => {
    await deploy(server, "views", {
      agents: `const http = require('http'), https = require('https');
        const before = [http.globalAgent, https.globalAgent, http.request];
        try { http.globalAgent = null; https.globalAgent = null; http.request = null; } catch (error) { /* strict mode throws, sloppy ignores */ }
        return [http.globalAgent === before[0] && http.globalAgent !== null, https.globalAgent === before[1], http.request === before[2]];`,
      dns: "const dns = require('dns'); return [typeof dns.lookup, typeof dns.setServers, typeof dns.setDefaultResultOrder, typeof dns.promises.setServers];",
    });
    expect((await run(server, "views", "agents")).body.result).toEqual([true, true, true]);
    expect((await run(server, "views", "dns")).body.result).toEqual(["function", "undefined", "undefined", "undefined"]);
  });

  it("decompression output is capped at FUNCTIONS_BUFFER_MAX_SIZE in every form", async () => {
    const zeros = Buffer.alloc(2 * BUFFER_LIMIT);
    const data = { gzip: gzipSync(zeros).toString("base64"), brotli: brotliCompressSync(zeros).toString("base64"), small: gzipSync("fine").toString("base64") };
    const input = "const zlib = require('zlib'); const bytes = (name) => Buffer.from(data[name], 'base64');";
    await deploy(server, "zlib", {
      sync: `${input} return zlib.gunzipSync(bytes('gzip')).length;`,
      ownLimit: `${input} return zlib.gunzipSync(bytes('gzip'), { maxOutputLength: 2 ** 31 }).length;`,
      brotli: `${input} return zlib.brotliDecompressSync(bytes('brotli')).length;`,
      callback: `${input} return await new Promise((resolve, reject) => zlib.gunzip(bytes('gzip'), (error, out) => (error ? reject(error) : resolve(out.length))));`,
      // resume(), not a 'data' listener: chunks handed to the sandbox cross vm2's bridge slowly (seconds for 8 MiB).
      stream: `${input} return await new Promise((resolve, reject) => { const s = zlib.createGunzip(); s.on('end', () => resolve('ended')).on('error', reject).resume(); s.end(bytes('gzip')); });`,
      small: `${input} return zlib.gunzipSync(bytes('small')).toString();`,
    });
    for (const fn of ["sync", "ownLimit", "brotli", "callback", "stream"]) await expectRefused(server, "zlib", fn, { data }, /larger than 8388608 bytes/);
    expect((await run(server, "zlib", "small", { data })).body.result).toBe("fine");
  });
});

describe("secrets of the HTTP process", () => {
  it("the canary variable reaches no function code: process.env, require('process'), constructor escapes, stacks, logs", async () => {
    await deploy(server, "canary", {
      probe: `const probes = {
          env: () => JSON.stringify(process.env),
          requireProcess: () => JSON.stringify(require('process').env),
          constructorEscape: () => JSON.stringify(this.constructor.constructor('return process')().env),
          functionEscape: () => JSON.stringify(Function('return process')().env),
          asyncEscape: () => (async () => {}).constructor('return process')(),
          stack: () => new Error('where am I').stack,
          globals: () => Object.keys(globalThis).join(),
        };
        const out = {};
        for (const [name, probe] of Object.entries(probes)) {
          try { out[name] = String(probe()); } catch (error) { out[name] = 'refused: ' + error.message; }
        }
        console.log(out, new Error('logged'));
        return out;`,
      thrower: "throw new Error('failing on purpose');",
    });
    const probe = await run(server, "canary", "probe");
    expect(probe.status).toBe(200);
    expect(probe.body.result.env).toBe("{}");
    expect(probe.body.result.stack).toMatch(/^Error: where am I\n {4}at /);
    const thrown = await run(server, "canary", "thrower");
    expect(thrown.body.details.stack).toMatch(/^Error: failing on purpose\n {4}at thrower \(thrower:1:\d+\)$/);
  });

  it.runIf(hasPython)("a Python function cannot read the HTTP process's environment through /proc; the service and other workspaces keep answering", async () => {
    const pid = server.process.pid!;
    const reads = {
      io: `io.open('/proc/${pid}/environ', 'rb').read()`,
      pathlib: `pathlib.Path('/proc/${pid}/environ').read_bytes()`,
      throughRoot: `pathlib.Path('/proc/self/root/proc/${pid}/environ').read_bytes()`,
      pythonApi: "pathlib.Path('/proc/%d/environ' % tempfile._os.getppid()).read_bytes()",
      init: "pathlib.Path('/proc/1/environ').read_bytes()",
      cmdline: `pathlib.Path('/proc/${pid}/cmdline').read_bytes()`,
    };
    const code = [
      "import io, pathlib, tempfile",
      "out = {}",
      ...Object.entries(reads).flatMap(([name, read]) => ["try:", `    out['${name}'] = (${read}).decode('latin-1')`, "except Exception as e:", `    out['${name}'] = type(e).__name__ + ': ' + str(e)`]),
      "return out",
    ].join("\n");
    const functions = { environ: { language: "python", code }, ping: { language: "python", code: "return 'pong'" } };
    expect((await server.deploy("py-proc", { functions })).status).toBe(200);
    expect((await server.deploy("py-bystander", { functions: { ping: functions.ping } })).status).toBe(200);
    const reply = await run(server, "py-proc", "environ");
    expect(reply.status, JSON.stringify(reply.body)).toBe(200);
    expect(Object.keys(reply.body.result)).toEqual(Object.keys(reads));
    for (const [name, outcome] of Object.entries(reply.body.result)) expect(outcome, name).toMatch(/^PermissionError: /);
    expect((await run(server, "py-proc", "ping")).body.result).toBe("pong");
    expect((await run(server, "py-bystander", "ping")).body.result).toBe("pong");
    expect((await server.request("GET", "/sys/healthcheck")).status).toBe(200);
  });

  it("error answers name no host path: missing modules, syntax errors, bad JSON", async () => {
    const functions = { missing: { code: "return require('left-pad')('x', 3);" }, fs: { code: "return require('fs').readFileSync('/etc/passwd', 'utf8');" } };
    expect((await server.deploy("errors", { functions, disableNpmRegistry: true })).status).toBe(200);
    expect((await run(server, "errors", "missing")).body.message).toMatch(/left-pad/);
    expect((await run(server, "errors", "fs")).body.message).toMatch(/'fs'/);
    answers.push(await server.deploy("errors2", { functions: { broken: { code: "return (" } } }));
    answers.push(await server.request("POST", "/v2/functions/errors2", "{ not json"));
  });
});

describe("input hardening", () => {
  it("__proto__ and constructor keys in a deploy body are rejected by name, nothing stored", async () => {
    const bodies = [
      '{"functions": {"f": {"code": "return 1"}}, "__proto__": {"disableNpmRegistry": true}}',
      '{"functions": {"f": {"code": "return 1", "__proto__": {"language": "python"}}}}',
      '{"functions": {"__proto__": {"code": "return 1"}}}',
      '{"functions": {"constructor": {"code": "return 1"}}}',
      '{"functions": {"f": {"code": "return 1", "parameters": {"x": {"constructor": {"default": 1}}}}}}',
    ];
    for (const body of bodies) {
      const reply = await server.request("POST", "/v2/functions/proto", body);
      answers.push(reply);
      expect(reply.status, body).toBe(400);
      expect(reply.body.message).toMatch(/__proto__|constructor/);
    }
    expect((await server.request("GET", "/v2/functions/proto")).status).toBe(404);
  });

  it("__proto__ and constructor keys in a run body have no effect", async () => {
    await server.deploy("proto-run", { functions: { hello: { code: "return 'Hello ' + name + ' ' + typeof ({}).polluted;", parameters: { name: { default: "world" } } } } });
    for (const body of ['{"parameters": {"__proto__": {"name": "evil", "polluted": 1}}}', '{"__proto__": {"parameters": {"name": "evil"}}}', '{"parameters": {"constructor": {"prototype": {"name": "evil"}}}}']) {
      const reply = await server.request("POST", "/v2/functions/proto-run/run/hello", body);
      answers.push(reply);
      expect(reply.body.result, body).toBe("Hello world undefined");
    }
  });

  it("odd encodings and invalid UTF-8 in ids and function names are a 400, never a 500", async () => {
    const invalidUtf8 = ["%FF", "%C0%AF", "%ED%A0%80", "%E0%80%80", "%F4%90%80%80", "abc%"];
    const odd = ["a%00b", "%2e%2e", "..%2f..%2fetc", "%E2%80%AE", "%20", "a%0Ab"];
    for (const method of ["GET", "POST", "DELETE"]) {
      for (const id of invalidUtf8) expect((await server.rawRequest(method, `/v2/functions/${id}`, "{}")).status, `${method} ${id}`).toBe(400);
      for (const id of odd) expect((await server.rawRequest(method, `/v2/functions/${id}`, "{}")).status, `${method} ${id}`).toBe(400);
    }
    for (const name of invalidUtf8) expect((await server.rawRequest("POST", `/v2/functions/bystander/run/${name}`, "{}")).status, name).toBe(400);
    for (const name of odd) expect((await server.rawRequest("POST", `/v2/functions/bystander/run/${name}`, "{}")).status, name).toBeLessThan(500);
  });

  it("a body that is not valid UTF-8 is a 400", async () => {
    const response = await fetch(`${server.url}/v2/functions/bystander/run/ping`, { method: "POST", headers: { "content-type": "application/json" }, body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]) });
    expect(response.status).toBe(400);
    expect((await response.json()).error).toBe("RequestValidationError");
  });
});

describe("API key (FUNCTIONS_API_KEY)", () => {
  const KEY = `key-${randomUUID()}`;
  let guarded: RunningServer;
  beforeAll(async () => {
    guarded = await startServer({ FUNCTIONS_API_KEY: KEY });
  });
  afterAll(() => guarded?.stop());
  const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

  it("the health check needs no key", async () => {
    expect((await guarded.request("GET", "/sys/healthcheck")).status).toBe(200);
  });

  it("every other request without the right key is a 401, before any routing", async () => {
    for (const [method, path] of [["GET", "/v2/functions"], ["POST", "/v2/functions/ws"], ["POST", "/v2/functions/ws/run/f"], ["DELETE", "/v2/functions/ws"], ["GET", "/no/such/route"], ["GET", "/sys/healthcheck/../../v2/functions"]]) {
      for (const headers of [{}, bearer("wrong"), bearer(`${KEY}x`), { authorization: KEY }, { authorization: `Basic ${Buffer.from(`user:${KEY}`).toString("base64")}` }]) {
        const reply = await guarded.request(method, path, method === "POST" ? {} : undefined, headers);
        expect(reply.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(reply.body).toEqual({ error: "UnauthorizedError", message: expect.any(String) });
        expect(reply.headers.get("www-authenticate")).toBe('Bearer realm="functions"');
        expect(JSON.stringify(reply.body)).not.toContain(KEY);
      }
    }
  });

  it("with the key, the API works as usual", async () => {
    expect((await guarded.request("POST", "/v2/functions/ws", { functions: { f: { code: "return 42" } } }, bearer(KEY))).status).toBe(200);
    expect((await guarded.request("POST", "/v2/functions/ws/run/f", {}, { authorization: `bearer ${KEY}` })).body.result).toBe(42);
    expect((await guarded.request("GET", "/v2/functions", undefined, bearer(KEY))).body).toContain("ws");
  });

  it("a key that is too short, or a malformed egress entry, stops start-up naming the variable (not the value)", async () => {
    await expect(startServer({ FUNCTIONS_API_KEY: "short-secret" })).rejects.toThrow(/FUNCTIONS_API_KEY must be at least 16 characters(?![\s\S]*short-secret)/);
    await expect(startServer({ FUNCTIONS_EGRESS_ALLOW: "10.0.0.0/8, 10.0.0.0/99" })).rejects.toThrow(/FUNCTIONS_EGRESS_ALLOW has an invalid entry: "10.0.0.0\/99"/);
  });
});
