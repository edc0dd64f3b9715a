/**
 * The edge build end to end. `NITRO_PRESET=cloudflare-module` is built as `npm run build:cloudflare`
 * builds it, bundled by wrangler as `wrangler deploy` would upload it (`--dry-run --outdir`), and run
 * in workerd by Miniflare (wrangler's own dependency) with the project's wrangler.toml: its
 * compatibility date and flags, its vars, and its KV namespace, simulated on disk. Every request is
 * real HTTP to workerd.
 *
 * Miniflare rather than `wrangler dev`: wrangler dev puts a proxy worker in front of the worker, and
 * after a 413 that left a chunked body unread that proxy stalls the next request for minutes (the
 * worker behind it answers at once).
 *
 * Locally, workerd's clock moves while code runs, so a sync loop ends at its deadline by the clock;
 * on deployed Workers the clock stands still and the interrupt handler counts polls instead
 * (test/adapters/quickjs-still-clock.test.ts; docs/deployment.md, "Edge runtimes").
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { unstable_getMiniflareWorkerOptions } from "wrangler";
import { PythonNotFoundError, startBundledPythonApi, type BundledPythonApi } from "../../runtime/python-process.ts";

const execFileAsync = promisify(execFile);
const RUN_TIMEOUT_MS = 1000;
/** Set for every start, over wrangler.toml's vars. */
const TEST_VARS = { FUNCTIONS_RUN_TIMEOUT: String(RUN_TIMEOUT_MS), REQUEST_MAX_SIZE: "64kb", FUNCTIONS_QUICKJS_MEMORY_LIMIT_MB: "16" };
/** Offline: no `Request.cf` lookup, no metrics. */
const WRANGLER_ENV = { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false" };

interface Reply {
  status: number;
  body: any;
}

interface EdgeWorker {
  url: string;
  output(): string;
  request(method: string, path: string, body?: unknown, init?: RequestInit): Promise<Reply>;
  deploy(workspace: string, body: unknown): Promise<Reply>;
  run(workspace: string, fn: string, parameters?: Record<string, unknown>): Promise<Reply>;
  stop(): Promise<void>;
}

mkdirSync(resolve(".tmp"), { recursive: true });
const tmp = mkdtempSync(resolve(".tmp/e2e-edge-"));
const buildDir = join(tmp, "build");
const bundleDir = join(tmp, "bundle");
const kvDir = join(tmp, "kv");

/** workerd running the bundle; its KV namespace lives in `kvDir`, so a restart keeps the workspaces. */
async function startWorker(vars: Record<string, string> = {}): Promise<EdgeWorker> {
  const { workerOptions } = unstable_getMiniflareWorkerOptions(resolve("wrangler.toml"));
  let output = "";
  const mf = new Miniflare({
    ...(workerOptions as object),
    modules: true,
    scriptPath: join(bundleDir, "index.js"),
    modulesRules: [{ type: "ESModule", include: ["**/*.js"] }, ...(workerOptions.modulesRules ?? [])],
    bindings: { ...workerOptions.bindings, ...TEST_VARS, ...vars },
    kvPersist: kvDir,
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio(stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream) {
      stdout.on("data", (chunk: Buffer) => (output += chunk));
      stderr.on("data", (chunk: Buffer) => (output += chunk));
    },
  } as ConstructorParameters<typeof Miniflare>[0]);
  const ready = await mf.ready.catch(async (error: Error) => {
    await mf.dispose().catch(() => undefined);
    throw new Error(`${error.message}\n${output}`);
  });
  const url = ready.href.replace(/\/$/, "");

  async function request(method: string, path: string, body?: unknown, init: RequestInit = {}): Promise<Reply> {
    const headers = new Headers(init.headers);
    if (body !== undefined && !headers.has("content-type")) headers.set("content-type", "application/json");
    if (body !== undefined) init = { ...init, body: typeof body === "string" ? body : JSON.stringify(body) };
    const response = await fetch(url + path, { method, ...init, headers });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON: the raw text is the body.
    }
    return { status: response.status, body: parsed };
  }

  return {
    url,
    output: () => output,
    request,
    deploy: (workspace, body) => request("POST", `/v2/functions/${workspace}`, body),
    run: (workspace, fn, parameters = {}) => request("POST", `/v2/functions/${workspace}/run/${fn}`, { parameters }),
    stop: () => mf.dispose(),
  };
}

let worker: EdgeWorker;

beforeAll(async () => {
  const node = process.execPath;
  await execFileAsync(node, [resolve("node_modules/nitropack/dist/cli/index.mjs"), "build"], {
    env: { ...process.env, FX_BUILD_DIR: buildDir, NITRO_PRESET: "cloudflare-module" },
    maxBuffer: 64 * 1024 * 1024,
  });
  await execFileAsync(node, [resolve("node_modules/wrangler/bin/wrangler.js"), "deploy", "--dry-run", "--config", "wrangler.toml", "--outdir", bundleDir, join(buildDir, "server/index.mjs")], {
    env: WRANGLER_ENV,
    maxBuffer: 64 * 1024 * 1024,
  });
  mkdirSync(kvDir);
  worker = await startWorker();
}, 180_000);

afterAll(async () => {
  await worker?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe("the cloudflare-module bundle (what `wrangler deploy` uploads)", () => {
  it("leaves out vm2, worker threads, fs, the Python process starter and npm installs", () => {
    const script = readFileSync(join(bundleDir, "index.js"), "utf8");
    expect(script).not.toMatch(/\bNodeVM\b/);
    expect(script).not.toMatch(/(?:from|import|require)\s*\(?\s*["'](?:node:)?(?:fs|fs\/promises|worker_threads|child_process)["']/);
    expect(script).not.toContain("python-api listening on"); // runtime/python-process.ts
    expect(script).not.toContain("is not among the packages this service allows"); // runtime/dependencies.ts
    // Nor does the Nitro output ship the node build's worker scripts or the Python API.
    expect(existsSync(join(buildDir, "server/runtime"))).toBe(false);
    expect(existsSync(join(buildDir, "server/python"))).toBe(false);
  });

  it("ships QuickJS's wasm as a module of its own, all within the Workers free plan's 3 MB compressed", () => {
    const files = readdirSync(bundleDir).filter((name) => name.endsWith(".js") || name.endsWith(".wasm"));
    expect(files.filter((name) => name.endsWith(".wasm"))).toHaveLength(1);
    const gzipBytes = files.reduce((sum, name) => sum + gzipSync(readFileSync(join(bundleDir, name))).byteLength, 0);
    expect(gzipBytes).toBeLessThan(3 * 1024 * 1024);
  });
});

describe("the HTTP API in workerd", () => {
  it("answers the health check, naming the QuickJS sandbox, and logs JSON lines to the worker's console", async () => {
    const reply = await worker.request("GET", "/sys/healthcheck");
    expect(reply).toMatchObject({ status: 200, body: { healthy: true, sandbox: "quickjs" } });
    await vi.waitFor(() => expect(worker.output()).toMatch(/"msg":"Functions service ready".*"storage":"cloudflare-kv","sandbox":"quickjs"/));
  });

  it("refuses to start with a bad variable, naming it: there is no process to exit, the worker's start fails", async () => {
    await expect(startWorker({ FUNCTIONS_SANDBOX: "vm2" })).rejects.toThrow(/Invalid configuration: FUNCTIONS_SANDBOX must be one of quickjs/);
    await expect(startWorker({ FUNCTIONS_STORAGE_KV_BINDING: "MISSING_KV" })).rejects.toThrow(/Invalid configuration: FUNCTIONS_STORAGE_KV_BINDING names no KV namespace binding/);
  });

  it("deploys, reads back, lists and deletes a workspace", async () => {
    const spec = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };
    expect(await worker.deploy("crud", spec)).toMatchObject({ status: 200, body: spec });
    const read = await worker.request("GET", "/v2/functions/crud");
    expect(read.status).toBe(200);
    expect(read.body).toMatchObject({ ...spec, version: expect.stringMatching(/^[0-9a-f]{24}$/) });
    expect((await worker.request("GET", "/v2/functions")).body).toContain("crud");
    expect((await worker.request("DELETE", "/v2/functions/crud")).status).toBe(204);
    expect((await worker.request("GET", "/v2/functions/crud")).status).toBe(404);
  });

  it("runs a function with its parameters and defaults, and answers its logs and duration", async () => {
    await worker.deploy("values", {
      functions: { greet: { code: "console.log('greeting', name); console.warn('n is', n); return { greeting: 'Hello ' + name, n };", parameters: { name: { type: "string" }, n: { default: 7 } } } },
    });
    const reply = await worker.run("values", "greet", { name: "edge" });
    expect(reply.status).toBe(200);
    expect(reply.body.result).toEqual({ greeting: "Hello edge", n: 7 });
    expect(reply.body.logs).toMatchObject([
      { level: "log", message: "greeting edge" },
      { level: "warn", message: "n is 7" },
    ]);
    expect(reply.body.duration).toEqual(expect.any(Number));
  });

  it("lets functions of a workspace call each other (`await funcA()`) and keeps `cache` across runs, per workspace", async () => {
    const spec = {
      functions: {
        double: { code: "return x * 2;", parameters: { x: { type: "number" } } },
        count: { code: "cache.runs = (cache.runs ?? 0) + 1; return { doubled: await double({ x: cache.runs }), runs: cache.runs };" },
      },
    };
    await worker.deploy("shared-a", spec);
    await worker.deploy("shared-b", spec);
    expect((await worker.run("shared-a", "count")).body.result).toEqual({ doubled: 2, runs: 1 });
    expect((await worker.run("shared-a", "count")).body.result).toEqual({ doubled: 4, runs: 2 });
    expect((await worker.run("shared-b", "count")).body.result).toEqual({ doubled: 2, runs: 1 });
  });

  it("answers 400 for an invalid deploy or run body, 404 for an unknown workspace or function, 415 for a body that is not JSON", async () => {
    const invalid = await worker.deploy("invalid", { functions: { f: { code: "return 1", parameters: "none" } } });
    expect(invalid).toMatchObject({ status: 400, body: { error: "RequestValidationError" } });
    expect(await worker.deploy("syntax", { functions: { f: { code: "return (" } } })).toMatchObject({ status: 400, body: { error: "RequestValidationError" } });
    await worker.deploy("errors", { functions: { f: { code: "return 1" } } });
    expect(await worker.request("POST", "/v2/functions/errors/run/f", { parameters: [1] })).toMatchObject({ status: 400, body: { error: "RequestValidationError" } });
    expect(await worker.run("no-such-workspace", "f")).toMatchObject({ status: 404, body: { error: "ObjectNotFoundError" } });
    expect(await worker.run("errors", "nope")).toMatchObject({ status: 404, body: { error: "ObjectNotFoundError" } });
    expect(await worker.request("POST", "/v2/functions/errors/run/f", "x", { headers: { "content-type": "text/plain" } })).toMatchObject({ status: 415 });
  });

  it("answers a thrown error as FunctionError with the user's function and line", async () => {
    await worker.deploy("throws", { functions: { boom: { code: "const x = 1;\nconsole.log('before');\nthrow new Error('bad ' + x);" } } });
    const reply = await worker.run("throws", "boom");
    expect(reply.status).toBe(500);
    expect(reply.body).toMatchObject({ error: "FunctionError", message: "Error: bad 1", logs: [{ message: "before" }] });
    expect(reply.body.details.stack).toMatch(/at boom \(boom:3:\d+\)/);
  });

  it("has no Node builtins: require() says so", async () => {
    await worker.deploy("builtins", { functions: { f: { code: "return require('fs').readFileSync('/etc/passwd', 'utf8');" } } });
    const reply = await worker.run("builtins", "f");
    expect(reply).toMatchObject({ status: 500, body: { error: "FunctionError" } });
    expect(reply.body.message).toContain("no Node builtins");
  });

  it("answers 413 past REQUEST_MAX_SIZE, by Content-Length and while reading a chunked stream, and goes on serving", async () => {
    await worker.deploy("limit", { functions: { size: { code: "return text.length;", parameters: { text: { type: "string" } } } } });
    const big = JSON.stringify({ parameters: { text: "x".repeat(100 * 1024) } });
    expect(await worker.request("POST", "/v2/functions/limit/run/size", big)).toMatchObject({ status: 413, body: { error: "PayloadTooLargeError" } });
    const chunks = [big.slice(0, 40_000), big.slice(40_000)].map((part) => new TextEncoder().encode(part));
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next) controller.enqueue(next);
        else controller.close();
      },
    });
    const chunked = await worker.request("POST", "/v2/functions/limit/run/size", undefined, { body: stream, headers: { "content-type": "application/json" }, duplex: "half" } as RequestInit);
    expect(chunked).toMatchObject({ status: 413, body: { error: "PayloadTooLargeError" } });
    expect((await worker.run("limit", "size", { text: "x".repeat(1000) })).body.result).toBe(1000);
  });

  it("ends a `while (true) {}` at the run timeout with 504, and the workspace's next run works", async () => {
    await worker.deploy("loop", { functions: { spin: { code: "console.log('spinning');\nwhile (true) {}" }, ok: { code: "return 'fine';" } } });
    const started = performance.now();
    const reply = await worker.run("loop", "spin");
    expect(reply).toMatchObject({ status: 504, body: { error: "TimeoutError", logs: [{ message: "spinning" }] } });
    expect(performance.now() - started).toBeGreaterThanOrEqual(RUN_TIMEOUT_MS - 50);
    expect(performance.now() - started).toBeLessThan(RUN_TIMEOUT_MS + 3000);
    expect((await worker.run("loop", "ok")).body.result).toBe("fine");
  });

  it("ends a run whose promise never settles at the run timeout with 504", async () => {
    await worker.deploy("pending", { functions: { wait: { code: "await new Promise(() => {});" } } });
    expect(await worker.run("pending", "wait")).toMatchObject({ status: 504, body: { error: "TimeoutError" } });
  });

  it("answers a memory bomb with MemoryLimitError, and the worker goes on serving", async () => {
    await worker.deploy("bomb", { functions: { grow: { code: "const parts = [];\nwhile (true) parts.push('x'.repeat(65536) + parts.length);" } } });
    expect(await worker.run("bomb", "grow")).toMatchObject({ status: 500, body: { error: "MemoryLimitError" } });
    expect((await worker.request("GET", "/sys/healthcheck")).status).toBe(200);
  });

  it("bridges the function's fetch to the worker's", async () => {
    const server: Server = createServer((req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ path: req.url, method: req.method }));
    });
    await new Promise<void>((ready) => server.listen(0, "127.0.0.1", ready));
    try {
      const { port } = server.address() as AddressInfo;
      await worker.deploy("fetches", { functions: { get: { code: "const response = await fetch(url + '/hello?x=1', { method: 'POST', body: 'hi' });\nreturn { status: response.status, body: await response.json() };", parameters: { url: { type: "string" } } } } });
      const reply = await worker.run("fetches", "get", { url: `http://127.0.0.1:${port}` });
      expect(reply.body.result).toEqual({ status: 200, body: { path: "/hello?x=1", method: "POST" } });
    } finally {
      server.close();
    }
  });

  it("answers a Python run 502 PythonApiError when PYTHON_API_URL is not set", async () => {
    await worker.deploy("python", { functions: { add: { language: "python", code: "return a + b", parameters: { a: { type: "number" }, b: { type: "number" } } } } });
    const reply = await worker.run("python", "add", { a: 1, b: 2 });
    expect(reply).toMatchObject({ status: 502, body: { error: "PythonApiError" } });
    expect(reply.body.message).toContain("PYTHON_API_URL");
  });
});

describe("a restarted worker", () => {
  let python: BundledPythonApi | undefined;

  beforeAll(async () => {
    try {
      python = await startBundledPythonApi({ env: { PATH: process.env.PATH ?? "" } });
    } catch (error) {
      if (!(error instanceof PythonNotFoundError)) throw error;
    }
    await worker.deploy("survivor", { functions: { hello: { code: "return 'still here';" } } });
    await worker.stop();
    worker = await startWorker(python ? { PYTHON_API_URL: python.url } : {});
  }, 60_000);

  afterAll(async () => {
    await python?.stop();
  });

  it("finds its workspaces in the KV namespace", async () => {
    expect((await worker.run("survivor", "hello")).body.result).toBe("still here");
  });

  it("forwards Python runs to PYTHON_API_URL with the global fetch", async (context) => {
    if (!python) context.skip("python3 is not installed: no Python API to forward to");
    const reply = await worker.run("python", "add", { a: 1, b: 2 });
    expect(reply).toMatchObject({ status: 200, body: { result: 3 } });
  });
});
