/**
 * The QuickJS adapters: the shared conformance suite, then what a function sees inside QuickJS
 * (globals, console formatting, errors, results) and the deploy-time syntax check. Limits and
 * isolation are in quickjs-limits.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createQuickJsAdapter } from "../../runtime/adapters/quickjs.ts";
import { createQuickJsWorkerAdapter } from "../../runtime/adapters/quickjs/workers.ts";
import { compileWorkspace } from "../../runtime/script.ts";
import type { CompiledWorkspace, FunctionSpec, RunOutcome } from "../../runtime/types.ts";
import { runConformance } from "./conformance.ts";

/** Started before its first run: the suite's first case should not time the threads' start-up. */
async function ready<T extends { ready(): Promise<void> }>(adapter: T): Promise<T> {
  await adapter.ready();
  return adapter;
}

runConformance({ name: "quickjs-workers", create: () => ready(createQuickJsWorkerAdapter({ threads: 2 })) });
runConformance({ name: "quickjs-in-process", create: () => ready(createQuickJsAdapter()) });

let counter = 0;
function workspace(functions: Record<string, string | FunctionSpec>): CompiledWorkspace {
  const spec = { functions: Object.fromEntries(Object.entries(functions).map(([name, fn]) => [name, typeof fn === "string" ? { code: fn } : fn])) };
  return compileWorkspace(`qjs-${++counter}`, `v${counter}`, spec);
}

function result(outcome: RunOutcome): unknown {
  if (!outcome.ok) throw new Error(`${outcome.error.name}: ${outcome.error.message}`);
  return outcome.result;
}

const variants = [
  ["in worker threads", () => createQuickJsWorkerAdapter({ threads: 1 })],
  ["in-process", () => createQuickJsAdapter()],
] as const;

describe.each(variants)("QuickJS %s", (_variant, create) => {
  let adapter: ReturnType<typeof create>;
  const run = (ws: CompiledWorkspace, fn: string, parameters: Record<string, unknown> = {}) =>
    adapter.run({ workspace: ws, functionName: fn, parameters }, { timeoutMs: 2000 });

  beforeAll(async () => {
    adapter = create();
    await adapter.ready();
  });
  afterAll(() => adapter.dispose());

  it("has no Node builtins or packages: require() says so, naming the module", async () => {
    const ws = workspace({ f: "import fs from 'fs';\nreturn 1;" });
    const outcome = await run(ws, "f");
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) {
      expect(outcome.error).toMatchObject({ kind: "function", name: "Error" });
      expect(outcome.error.message).toBe("require('fs') is not available: the quickjs sandbox has no Node builtins or packages");
      expect(outcome.error.stack).toMatch(/^Error: require\('fs'\)[^\n]*\n {4}at f \(f:1:\d+\)/);
    }
  });

  it("formats console arguments like console.log", async () => {
    const ws = workspace({
      f: `console.log("%s is %d years", "Ann", 42, "extra");
          console.log({ a: 1, "b-c": ["x", null, undefined], d: { e: { f: { g: 1 } } } });
          console.log(new Map([["k", 1]]), new Set([1]), [1, 2], 1n, Symbol("s"), -0, function named() {});
          const circular = { name: "c" }; circular.self = circular; console.log(circular);
          console.log(new Error("boom").message, String(new TypeError("bad")));`,
    });
    const outcome = await run(ws, "f");
    expect(outcome.logs.map((entry) => entry.message)).toEqual([
      "Ann is 42 years extra",
      "{ a: 1, 'b-c': [ 'x', null, undefined ], d: { e: { f: [Object] } } }",
      "Map(1) { 'k' => 1 } Set(1) { 1 } [ 1, 2 ] 1n Symbol(s) -0 [Function: named]",
      "{ name: 'c', self: [Circular] }",
      "boom TypeError: bad",
    ]);
  });

  it("has fetch, URL, URLSearchParams, TextEncoder/Decoder, timers, structuredClone, atob/btoa", async () => {
    const ws = workspace({
      f: `const url = new URL("https://example.com/a/../b?x=1#h");
          url.searchParams.append("q", "a b&c");
          const params = new URLSearchParams({ k: "v", n: "1" });
          params.sort();
          const bytes = new TextEncoder().encode("héllo €");
          const started = Date.now();
          await new Promise((resolve) => setTimeout(resolve, 20));
          const cancelled = setTimeout(() => { throw new Error("must not fire"); }, 1);
          clearTimeout(cancelled);
          return {
            href: url.href, host: url.host, search: url.search, json: JSON.stringify({ url }),
            params: params.toString(), get: params.get("n"), entries: [...params],
            bytes: bytes.length, text: new TextDecoder().decode(bytes), invalid: new TextDecoder().decode(new Uint8Array([0xff])),
            waited: Date.now() - started >= 19,
            clone: structuredClone({ a: [1, { b: 2 }] }),
            base64: btoa("user:pass"), decoded: atob("dXNlcjpwYXNz"),
            types: [typeof fetch, typeof queueMicrotask, typeof process, typeof Buffer],
          };`,
    });
    expect(result(await run(ws, "f"))).toEqual({
      href: "https://example.com/b?x=1&q=a+b%26c#h",
      host: "example.com",
      search: "?x=1&q=a+b%26c",
      json: '{"url":"https://example.com/b?x=1&q=a+b%26c#h"}',
      params: "k=v&n=1",
      get: "1",
      entries: [["k", "v"], ["n", "1"]],
      bytes: 10,
      text: "héllo €",
      invalid: "\ufffd",
      waited: true,
      clone: { a: [1, { b: 2 }] },
      base64: "dXNlcjpwYXNz",
      decoded: "user:pass",
      types: ["function", "function", "undefined", "undefined"],
    });
  });

  it("rejects an invalid URL with a TypeError", async () => {
    const ws = workspace({ f: "try { new URL('not a url'); } catch (e) { return [e instanceof TypeError, e.message, URL.canParse('/x', 'http://h')]; }" });
    expect(result(await run(ws, "f"))).toEqual([true, "Invalid URL", true]);
  });

  it("a thrown error's stack names the user's functions and lines, through calls between functions", async () => {
    const ws = workspace({
      inner: "const a = 1;\nthrow new RangeError('deep ' + a);",
      outer: "// calls inner\nreturn await inner({});",
    });
    const outcome = await run(ws, "outer");
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) {
      expect(outcome.error).toMatchObject({ kind: "function", name: "RangeError", message: "deep 1" });
      expect(outcome.error.stack).toMatch(/^RangeError: deep 1\n {4}at inner \(inner:2:\d+\)\n {4}at outer \(outer:2:\d+\)$/);
    }
  });

  it("a thrown non-error value is reported as such", async () => {
    const ws = workspace({ f: "throw 'just a string';" });
    const outcome = await run(ws, "f");
    expect(outcome.ok === false && outcome.error).toMatchObject({ kind: "function", name: "Error", message: "Uncaught just a string" });
  });

  it("returns undefined as null; a result JSON cannot hold is a TypeError", async () => {
    const ws = workspace({ nothing: "return undefined;", big: "return 1n;", cyclic: "const o = {}; o.o = o; return o;" });
    expect(result(await run(ws, "nothing"))).toBeNull();
    for (const fn of ["big", "cyclic"]) {
      const outcome = await run(ws, fn);
      expect(outcome.ok === false && outcome.error).toMatchObject({ kind: "function", name: "TypeError" });
      expect(outcome.ok === false && outcome.error.message).toMatch(/^The function's result is not JSON-serialisable: /);
    }
  });

  it("an error thrown by a timer callback fails the run that set the timer", async () => {
    const ws = workspace({ f: "setTimeout(() => { throw new Error('from a timer'); }, 5);\nawait new Promise(() => {});" });
    const outcome = await run(ws, "f");
    expect(outcome.ok === false && outcome.error).toMatchObject({ kind: "function", name: "Error", message: "from a timer" });
  });

  it("a caller that aborts gets its answer at once, as a timeout", async () => {
    const ws = workspace({ f: "await new Promise(() => {});" });
    const controller = new AbortController();
    const started = performance.now();
    const pending = adapter.run({ workspace: ws, functionName: "f", parameters: {} }, { timeoutMs: 5000, signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    const outcome = await pending;
    expect(outcome.ok === false && outcome.error).toMatchObject({ kind: "timeout", name: "TimeoutError" });
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it("a run in flight finishes on its version while the next run already gets the new one", async () => {
    const first = workspace({ f: "await new Promise((r) => setTimeout(r, 50));\nreturn 'v1';" });
    const second = compileWorkspace(first.id, "v-next", { functions: { f: { code: "return 'v2';" } } });
    const slow = run(first, "f");
    await new Promise((r) => setTimeout(r, 10));
    expect(result(await run(second, "f"))).toBe("v2");
    expect(result(await slow)).toBe("v1");
  });
});

describe("checkSyntax (at deploy, without running the code)", () => {
  const adapter = createQuickJsAdapter();
  beforeAll(() => adapter.ready());
  afterAll(() => adapter.dispose());

  it("accepts function bodies: return, await, imports, a trailing comment", () => {
    expect(adapter.checkSyntax("import x from 'x';\nconst y = await x();\nreturn y // done")).toBeUndefined();
    expect(adapter.checkSyntax("")).toBeUndefined();
  });

  it("names the line of a syntax error, counted in the body", () => {
    expect(adapter.checkSyntax("const a = 1;\nconst b = ;\nreturn a;")).toEqual({ line: 2, message: "unexpected token in expression: ';'" });
  });

  it("refuses a body that closes its wrapper to add code around it", () => {
    expect(adapter.checkSyntax("}); evil(); (async () => {")?.message).toMatch(/the code must be a function body: it cannot close its wrapper/);
    for (const body of ["} + evil() + function () {", "} {", "})();\n(async () => {"]) expect(adapter.checkSyntax(body)).toBeDefined();
  });
});
