/**
 * QuickJS limits and isolation, on the worker-thread adapter (the QuickJS adapter Node uses): what
 * stops a runaway function, what hitting a limit costs (the workspace's sandbox starts over, with an
 * empty `cache`), what a function can reach, and how concurrent runs stay apart.
 */
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createQuickJsWorkerAdapter } from "../../runtime/adapters/quickjs/workers.ts";
import { compileWorkspace } from "../../runtime/script.ts";
import type { CompiledWorkspace, FunctionSpec, RunOutcome } from "../../runtime/types.ts";

const keep = "cache.kept = 'yes'; return 1;";
const kept = "return cache.kept ?? null;";

let counter = 0;
function workspace(functions: Record<string, string | FunctionSpec>): CompiledWorkspace {
  const spec = { functions: Object.fromEntries(Object.entries(functions).map(([name, fn]) => [name, typeof fn === "string" ? { code: fn } : fn])) };
  return compileWorkspace(`limits-${++counter}`, `v${counter}`, spec);
}

function result(outcome: RunOutcome): unknown {
  if (!outcome.ok) throw new Error(`${outcome.error.name}: ${outcome.error.message}`);
  return outcome.result;
}

function error(outcome: RunOutcome) {
  if (outcome.ok) throw new Error(`expected a failure, got ${JSON.stringify(outcome.result)}`);
  return outcome.error;
}

async function startedAdapter(options: Parameters<typeof createQuickJsWorkerAdapter>[0]) {
  const adapter = createQuickJsWorkerAdapter(options);
  await adapter.ready();
  return adapter;
}

describe("QuickJS limits", () => {
  let adapter: Awaited<ReturnType<typeof startedAdapter>>;
  const run = (ws: CompiledWorkspace, fn: string, parameters: Record<string, unknown> = {}, timeoutMs = 2000) =>
    adapter.run({ workspace: ws, functionName: fn, parameters }, { timeoutMs });

  beforeAll(async () => {
    adapter = await startedAdapter({ threads: 2, memoryLimitMb: 32 });
  });
  afterAll(() => adapter.dispose());

  it("a memory bomb fails with MemoryLimitError, and the workspace starts over with an empty cache", async () => {
    const ws = workspace({ keep, kept, bomb: "const a = [];\nwhile (true) a.push(new Array(1e5).fill(0));" });
    await run(ws, "keep");
    const started = performance.now();
    expect(error(await run(ws, "bomb", {}, 20_000))).toMatchObject({ kind: "memory", name: "MemoryLimitError" });
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(result(await run(ws, "kept"))).toBeNull();
  }, 30_000);

  it("one allocation larger than the limit fails at once", async () => {
    const ws = workspace({ huge: "return 'x'.repeat(2 ** 28).length;" });
    const started = performance.now();
    expect(error(await run(ws, "huge"))).toMatchObject({ kind: "memory", name: "MemoryLimitError" });
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it("memory piled up in cache over many runs is bounded too", async () => {
    const ws = workspace({ pile: "cache.blocks = cache.blocks || [];\ncache.blocks.push(new Array(5e5).fill(0));\nreturn cache.blocks.length;" });
    let failure: RunOutcome | undefined;
    for (let i = 0; i < 300 && !failure; i++) {
      const outcome = await run(ws, "pile");
      if (!outcome.ok) failure = outcome;
    }
    expect(failure && error(failure)).toMatchObject({ kind: "memory", name: "MemoryLimitError" });
    expect(result(await run(ws, "pile"))).toBe(1);
  }, 60_000);

  it("unbounded recursion is a stack overflow the function can see; the workspace keeps its cache", async () => {
    const ws = workspace({ keep, kept, recurse: "function f() { return f(); }\nreturn f();" });
    await run(ws, "keep");
    expect(error(await run(ws, "recurse"))).toMatchObject({ kind: "function", name: "InternalError", message: "stack overflow" });
    expect(result(await run(ws, "kept"))).toBe("yes");
  });

  it("a native builtin that ignores the interrupt handler is stopped at the deadline, and the host's event loop keeps turning", async () => {
    const ws = workspace({ join: "return new Array(1e8).join('x').length;", ok: "return 'ok';" });
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 10);
    const started = performance.now();
    const outcome = await run(ws, "join", {}, 500);
    const elapsed = performance.now() - started;
    clearInterval(ticker);
    expect(error(outcome)).toMatchObject({ kind: "timeout", name: "TimeoutError", message: "Function exceeded its 500 ms timeout" });
    expect(elapsed).toBeLessThan(1500);
    expect(ticks).toBeGreaterThan(elapsed / 10 / 3);
    expect(result(await run(ws, "ok"))).toBe("ok");
  });

  it("a run that hits a limit resets the sandbox under the workspace's other runs in flight", async () => {
    const ws = workspace({ wait: "await new Promise((r) => setTimeout(r, 300));\nreturn 'done';", spin: "while (true) {}" });
    const waiting = run(ws, "wait");
    expect(error(await run(ws, "spin", {}, 100))).toMatchObject({ kind: "timeout" });
    expect(error(await waiting)).toMatchObject({ kind: "function", name: "SandboxResetError" });
    expect(result(await run(ws, "wait"))).toBe("done");
  });

  it("host-escape attempts find neither the host's process nor the bridge to it", async () => {
    const ws = workspace({
      probe: `const tries = {
          constructorChain: () => this.constructor.constructor("return typeof process")(),
          functionCtor: () => Function("return typeof process + typeof host + typeof globalThis.host")(),
          viaConsole: () => console.log.constructor("return typeof process")(),
          evalGlobal: () => (0, eval)("typeof require('x')"),
        };
        const found = {};
        for (const [name, attempt] of Object.entries(tries)) {
          try { found[name] = attempt(); } catch (e) { found[name] = e.name + ": " + e.message; }
        }
        found.globals = Object.getOwnPropertyNames(globalThis).filter((name) => /^(process|host|Buffer|global|std|os)$/.test(name));
        return found;`,
    });
    expect(result(await run(ws, "probe"))).toEqual({
      constructorChain: "undefined",
      functionCtor: "undefinedundefinedundefined",
      viaConsole: "undefined",
      evalGlobal: "Error: require('x') is not available: the quickjs sandbox has no Node builtins or packages",
      globals: [],
    });
  });

  it("ten concurrent runs of one workspace keep their results and logs apart", async () => {
    const ws = workspace({
      step: { code: "console.log('step', n);\nreturn n;", parameters: { n: {} } },
      work: {
        code: "console.log('start', n);\nawait new Promise((r) => setTimeout(r, (n * 7) % 30));\nconst back = await step({ n });\nconsole.info('end', back);\nreturn back * 10;",
        parameters: { n: {} },
      },
    });
    const outcomes = await Promise.all(Array.from({ length: 10 }, (_, n) => run(ws, "work", { n })));
    outcomes.forEach((outcome, n) => {
      expect(result(outcome)).toBe(n * 10);
      expect(outcome.logs.map((entry) => `${entry.level} ${entry.message}`)).toEqual([`log start ${n}`, `log step ${n}`, `info end ${n}`]);
    });
  });
});

describe("QuickJS fetch, bridged to the host", () => {
  let adapter: Awaited<ReturnType<typeof startedAdapter>>;
  let server: Server;
  let base: string;
  let hangClosed = false;
  const run = (ws: CompiledWorkspace, fn: string, timeoutMs = 2000) => adapter.run({ workspace: ws, functionName: fn, parameters: { base } }, { timeoutMs });
  const fn = (code: string): FunctionSpec => ({ code, parameters: { base: {} } });

  beforeAll(async () => {
    server = createServer((request, response) => {
      if (request.url === "/hang") {
        request.on("close", () => (hangClosed = true));
        return;
      }
      let body = "";
      request.on("data", (chunk) => (body += chunk));
      request.on("end", () => {
        const status = request.url === "/missing" ? 404 : 200;
        response.writeHead(status, { "content-type": "application/json", "x-reply": "yes" });
        response.end(JSON.stringify({ method: request.method, url: request.url, type: request.headers["content-type"], test: request.headers["x-test"], body }));
      });
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // The test server is on loopback, which the egress policy denies unless allowed.
    adapter = await startedAdapter({ threads: 1, egress: { allow: ["127.0.0.1"] } });
  });
  afterAll(async () => {
    await adapter.dispose();
    server.closeAllConnections();
    server.close();
  });

  it("answers a Response-like object: status, ok, headers, json(), text()", async () => {
    const ws = workspace({
      post: fn(`const response = await fetch(base + "/echo?x=1", { method: "POST", headers: { "x-test": "1" }, body: new URLSearchParams({ a: "b c" }) });
        return { status: response.status, ok: response.ok, reply: response.headers.get("X-Reply"), type: response.headers["content-type"], body: await response.json() };`),
      missing: fn(`const response = await fetch(new URL("/missing", base));
        const text = await response.text();
        let again; try { await response.text(); } catch (e) { again = e.name; }
        return { status: response.status, ok: response.ok, text: JSON.parse(text).url, again };`),
    });
    expect(result(await run(ws, "post"))).toEqual({
      status: 200,
      ok: true,
      reply: "yes",
      type: "application/json",
      body: { method: "POST", url: "/echo?x=1", type: "application/x-www-form-urlencoded;charset=UTF-8", test: "1", body: "a=b+c" },
    });
    expect(result(await run(ws, "missing"))).toEqual({ status: 404, ok: false, text: "/missing", again: "TypeError" });
  });

  it("the egress policy applies to fetch: loopback is denied unless allowed", async () => {
    const denied = await startedAdapter({ threads: 1 });
    try {
      const ws = workspace({ local: fn("try { await fetch(base + '/echo'); return 'reached'; } catch (e) { return e.message; }") });
      const outcome = await denied.run({ workspace: ws, functionName: "local", parameters: { base } }, { timeoutMs: 5000 });
      expect(result(outcome)).toMatch(/egress policy/);
    } finally {
      await denied.dispose();
    }
  });

  it("a network failure rejects with a TypeError", async () => {
    const ws = workspace({ refused: fn("try { await fetch('http://127.0.0.1:1/'); } catch (e) { return [e instanceof TypeError, e.message.startsWith('fetch failed: ')]; }") });
    expect(result(await run(ws, "refused"))).toEqual([true, true]);
  });

  it("a fetch still pending at the deadline times the run out, and the host aborts the request", async () => {
    const ws = workspace({ hang: fn("await fetch(base + '/hang');") });
    expect(error(await run(ws, "hang", 300))).toMatchObject({ kind: "timeout", name: "TimeoutError" });
    await expect.poll(() => hangClosed, { timeout: 2000 }).toBe(true);
  });
});

describe("QuickJS worker threads", () => {
  it("a thread stopped for one workspace fails the runs of the others on it, which then start over", async () => {
    const adapter = await startedAdapter({ threads: 1 });
    try {
      const other = workspace({ keep, wait: "await new Promise((r) => setTimeout(r, 1000));\nreturn cache.kept ?? null;" });
      const runaway = workspace({ join: "return new Array(1e8).join('x').length;" });
      const run = (ws: CompiledWorkspace, fn: string, timeoutMs: number) => adapter.run({ workspace: ws, functionName: fn, parameters: {} }, { timeoutMs });
      await run(other, "keep", 2000);
      const waiting = run(other, "wait", 5000);
      expect(error(await run(runaway, "join", 300))).toMatchObject({ kind: "timeout" });
      expect(error(await waiting)).toMatchObject({ kind: "function", name: "WorkerCrashedError" });
      expect(result(await run(other, "wait", 5000))).toBeNull();
    } finally {
      await adapter.dispose();
    }
  });

  it("a worker that cannot start fails the run with WorkerCrashedError (and is started again only when needed)", async () => {
    const adapter = await startedAdapter({ threads: 1, workerUrl: new URL("./no-such-worker.mjs", import.meta.url) });
    try {
      const ws = workspace({ ok: "return 'ok';" });
      const outcome = await adapter.run({ workspace: ws, functionName: "ok", parameters: {} }, { timeoutMs: 5000 });
      expect(error(outcome)).toMatchObject({ kind: "function", name: "WorkerCrashedError" });
    } finally {
      await adapter.dispose();
    }
  });

  it("keeps at most maxRuntimes workspaces: the least recently used one starts over", async () => {
    const adapter = await startedAdapter({ threads: 1, maxRuntimes: 2 });
    try {
      const count = "cache.n = (cache.n || 0) + 1;\nreturn cache.n;";
      const [a, b, c] = [workspace({ count }), workspace({ count }), workspace({ count })];
      const run = (ws: CompiledWorkspace) => adapter.run({ workspace: ws, functionName: "count", parameters: {} }, { timeoutMs: 2000 }).then(result);
      expect([await run(a), await run(a), await run(b)]).toEqual([1, 2, 1]);
      expect(await run(c)).toBe(1);
      expect(adapter.stats()).toMatchObject({ workspaces: 2, threads: 1 });
      expect(await run(a)).toBe(1);
    } finally {
      await adapter.dispose();
    }
  });
});
