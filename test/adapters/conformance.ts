/**
 * The adapter conformance suite: the same cases against every sandbox adapter (vm2, QuickJS, the
 * Python API). Cases skip by the adapter's `flags`, never by its name. Each case states the
 * behaviour a function author can rely on, whichever sandbox runs their code.
 *
 * Use it from `<adapter>.test.ts`:
 *   runConformance({ name: "vm2", create: () => createVm2Adapter({ maxWorkers: 8 }) })
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileWorkspace } from "../../runtime/script.ts";
import type { CompiledWorkspace, FunctionSpec, Language, RunOutcome, SandboxAdapter } from "../../runtime/types.ts";

export interface ConformanceTarget {
  name: string;
  create(): SandboxAdapter | Promise<SandboxAdapter>;
  /** Run timeout used by the limit cases. @default 1000 */
  timeoutMs?: number;
}

/** One function in both languages; a case runs in the languages the adapter supports. */
type Code = Partial<Record<Language, string>>;

let versionCounter = 0;

function workspace(id: string, language: Language, functions: Record<string, { code: Code; parameters?: FunctionSpec["parameters"] }>): CompiledWorkspace {
  const spec = {
    functions: Object.fromEntries(
      Object.entries(functions).map(([name, fn]) => [name, { code: fn.code[language]!, parameters: fn.parameters, language }]),
    ),
  };
  return compileWorkspace(id, `v${++versionCounter}`, spec);
}

function expectOk(outcome: RunOutcome): Extract<RunOutcome, { ok: true }> {
  if (!outcome.ok) throw new Error(`expected success, got ${outcome.error.name}: ${outcome.error.message}\n${outcome.error.stack ?? ""}`);
  return outcome;
}

function expectFailure(outcome: RunOutcome, kind: string): Extract<RunOutcome, { ok: false }> {
  if (outcome.ok) throw new Error(`expected a ${kind} failure, got result ${JSON.stringify(outcome.result)}`);
  expect(outcome.error.kind).toBe(kind);
  return outcome;
}

export function runConformance(target: ConformanceTarget): void {
  const timeoutMs = target.timeoutMs ?? 1000;

  describe(`${target.name} adapter conformance`, () => {
    let adapter: SandboxAdapter;
    let language: Language;
    let wsCounter = 0;
    const newId = () => `conf-${target.name}-${++wsCounter}`;
    const run = (ws: CompiledWorkspace, functionName: string, parameters: Record<string, unknown> = {}, ms = timeoutMs) =>
      adapter.run({ workspace: ws, functionName, parameters }, { timeoutMs: ms });

    /** `it`, only when the adapter runs this case's language. */
    function itIn(code: Code, title: string, body: () => Promise<void>, timeout?: number) {
      const has = () => code[language] !== undefined;
      it(title, async (ctx) => {
        if (!has()) ctx.skip();
        await body();
      }, timeout);
    }

    beforeAll(async () => {
      adapter = await target.create();
      language = adapter.flags.languages[0];
    });
    afterAll(async () => {
      await adapter?.dispose();
    });

    const hello: Code = { nodejs: 'return "Hello " + name;', python: 'return "Hello " + name' };
    itIn(hello, "returns the function's value, with parameters as local variables", async () => {
      const ws = workspace(newId(), language, { hello: { code: hello, parameters: { name: { type: "string" } } } });
      const outcome = expectOk(await run(ws, "hello", { name: "world" }));
      expect(outcome.result).toBe("Hello world");
      expect(outcome.logs).toEqual([]);
      expect(outcome.durationMs).toBeGreaterThanOrEqual(0);
    });

    itIn(hello, "applies a parameter's default when the caller omits it, and ignores undeclared parameters", async () => {
      const ws = workspace(newId(), language, { hello: { code: hello, parameters: { name: { type: "string", default: "you" } } } });
      expect(expectOk(await run(ws, "hello", { extra: 1 })).result).toBe("Hello you");
      expect(expectOk(await run(ws, "hello", { name: "me" })).result).toBe("Hello me");
    });

    const values: Code = { nodejs: "return { list: [1, 2.5, 'x', null, true], nested: { a: {} }, given: value };", python: "return {'list': [1, 2.5, 'x', None, True], 'nested': {'a': {}}, 'given': value}" };
    itIn(values, "returns JSON values and passes values as sent, without coercion", async () => {
      const ws = workspace(newId(), language, { values: { code: values, parameters: { value: { type: "boolean" } } } });
      const outcome = expectOk(await run(ws, "values", { value: "false" }));
      expect(outcome.result).toEqual({ list: [1, 2.5, "x", null, true], nested: { a: {} }, given: "false" });
    });

    const nothing: Code = { nodejs: "// nothing to do", python: "pass" };
    itIn(nothing, "a body that returns nothing gives null", async () => {
      const ws = workspace(newId(), language, { nothing: { code: nothing } });
      expect(expectOk(await run(ws, "nothing")).result).toBeNull();
    });

    const logs: Code = {
      nodejs: "console.log('hello', 42, { a: 1 }); console.info('info'); console.warn('careful'); console.error('bad'); console.debug('dbg'); return 1;",
      python: "import logging\nprint('hello', 42, {'a': 1})\nlogging.info('info')\nlogging.warning('careful')\nlogging.error('bad')\nlogging.debug('dbg')\nreturn 1",
    };
    itIn(logs, "captures console output into logs, in order, with levels and timestamps", async () => {
      const ws = workspace(newId(), language, { logs: { code: logs } });
      const outcome = expectOk(await run(ws, "logs"));
      const levels = outcome.logs.map((entry) => entry.level);
      expect(levels).toEqual(language === "nodejs" ? ["log", "info", "warn", "error", "debug"] : ["log", "info", "warn", "error", "debug"].filter((l) => outcome.logs.some((e) => e.level === l)));
      expect(outcome.logs[0].message).toMatch(/^hello 42 \{ ?'?a'?: 1 ?\}$/);
      for (const entry of outcome.logs) expect(new Date(entry.timestamp).toISOString()).toBe(entry.timestamp);
    });

    const funcA: Code = { nodejs: 'return "world";', python: 'return "world"' };
    const funcB: Code = { nodejs: 'return "hello " + (await funcA());', python: 'return "hello " + funcA()' };
    itIn(funcB, "functions of a workspace call each other (shared execution context)", async () => {
      const ws = workspace(newId(), language, { funcA: { code: funcA }, funcB: { code: funcB } });
      expect(expectOk(await run(ws, "funcB")).result).toBe("hello world");
    });

    const greet: Code = { nodejs: "return 'hi ' + who;", python: "return 'hi ' + who" };
    const callGreet: Code = { nodejs: "return await greet({});", python: "return greet()" };
    itIn(callGreet, "a call between functions applies the callee's defaults", async () => {
      const ws = workspace(newId(), language, { greet: { code: greet, parameters: { who: { default: "there" } } }, callGreet: { code: callGreet } });
      expect(expectOk(await run(ws, "callGreet")).result).toBe("hi there");
    });

    const counterA: Code = { nodejs: "let counter = cache['counter']; counter = (counter || 0) + 1; cache['counter'] = counter; return counter;", python: "cache['counter'] = cache.get('counter', 0) + 1\nreturn cache['counter']" };
    const counterB: Code = { nodejs: "return 'Counter : ' + cache['counter'];", python: "return 'Counter : ' + str(cache['counter'])" };
    itIn(counterA, "cache is shared by the functions of a workspace and kept across runs", async () => {
      const ws = workspace(newId(), language, { funcA: { code: counterA }, funcB: { code: counterB } });
      expect(expectOk(await run(ws, "funcA")).result).toBe(1);
      expect(expectOk(await run(ws, "funcA")).result).toBe(2);
      expect(expectOk(await run(ws, "funcB")).result).toBe("Counter : 2");
    });

    itIn(counterA, "cache is not shared between workspaces", async () => {
      const first = workspace(newId(), language, { funcA: { code: counterA } });
      const second = workspace(newId(), language, { funcA: { code: counterA } });
      expect(expectOk(await run(first, "funcA")).result).toBe(1);
      expect(expectOk(await run(first, "funcA")).result).toBe(2);
      expect(expectOk(await run(second, "funcA")).result).toBe(1);
    });

    const local: Code = { nodejs: "if (typeof leaked !== 'undefined') return 'leaked'; var leaked = 1; let x = 1; return 'clean';", python: "if 'leaked' in globals():\n    return 'leaked'\nleaked = 1\nreturn 'clean'" };
    itIn(local, "local variables do not survive their run", async () => {
      const ws = workspace(newId(), language, { local: { code: local } });
      expect(expectOk(await run(ws, "local")).result).toBe("clean");
      expect(expectOk(await run(ws, "local")).result).toBe("clean");
    });

    const thrower: Code = { nodejs: "const x = 1;\nthrow new Error('bad ' + x);", python: "x = 1\nraise ValueError('bad ' + str(x))" };
    itIn(thrower, "a thrown error is a function failure naming the user's function and line", async () => {
      const ws = workspace(newId(), language, { thrower: { code: thrower } });
      const outcome = expectFailure(await run(ws, "thrower"), "function");
      expect(outcome.error.message).toBe("bad 1");
      expect(outcome.error.name).toBe(language === "nodejs" ? "Error" : "ValueError");
      expect(outcome.error.stack).toMatch(/thrower.*\b2\b/);
      expect(outcome.error.stack).not.toMatch(/\/work\/|node_modules|node:internal|\.py"/);
    });

    const rejecter: Code = { nodejs: "await new Promise((r) => setTimeout(r, 5));\nreturn Promise.reject(new TypeError('nope'));" };
    itIn(rejecter, "a rejected promise is a function failure", async () => {
      const ws = workspace(newId(), language, { rejecter: { code: rejecter } });
      const outcome = expectFailure(await run(ws, "rejecter"), "function");
      expect(outcome.error).toMatchObject({ name: "TypeError", message: "nope" });
    });

    const logThenThrow: Code = { nodejs: "console.log('before');\nthrow new Error('after');", python: "print('before')\nraise Exception('after')" };
    itIn(logThenThrow, "a failed run keeps the logs gathered before the failure", async () => {
      const ws = workspace(newId(), language, { f: { code: logThenThrow } });
      const outcome = expectFailure(await run(ws, "f"), "function");
      expect(outcome.logs.map((l) => l.message)).toEqual(["before"]);
    });

    const spin: Code = { nodejs: "while (true) {}", python: "while True:\n    pass" };
    const ok: Code = { nodejs: "return 'ok';", python: "return 'ok'" };
    itIn(spin, "a sync loop times out, and the next run of the workspace works", async () => {
      const ws = workspace(newId(), language, { spin: { code: spin }, ok: { code: ok } });
      const started = performance.now();
      const outcome = expectFailure(await run(ws, "spin"), "timeout");
      expect(outcome.error.name).toBe("TimeoutError");
      expect(performance.now() - started).toBeLessThan(timeoutMs + 3000);
      expect(expectOk(await run(ws, "ok")).result).toBe("ok");
    }, timeoutMs * 3 + 10_000);

    const pending: Code = { nodejs: "await new Promise(() => {});" };
    itIn(pending, "a promise that never settles times out, and the next run works", async () => {
      const ws = workspace(newId(), language, { pending: { code: pending }, ok: { code: ok } });
      expect(expectFailure(await run(ws, "pending"), "timeout").error.name).toBe("TimeoutError");
      expect(expectOk(await run(ws, "ok")).result).toBe("ok");
    }, timeoutMs * 3 + 10_000);

    const bomb: Code = { nodejs: "const a = []; while (true) a.push(new Array(1e5).fill('x'));", python: "a = []\nwhile True:\n    a.append('x' * 10_000_000)" };
    it("a memory bomb fails with a memory error, and the next run works", async (ctx) => {
      if (!adapter.flags.memoryLimit || bomb[language] === undefined) ctx.skip();
      const ws = workspace(newId(), language, { bomb: { code: bomb }, ok: { code: ok } });
      const outcome = await run(ws, "bomb", {}, 20_000);
      expect(outcome.ok).toBe(false);
      if (!outcome.ok) expect(outcome.error.kind).toBe("memory");
      expect(expectOk(await run(ws, "ok")).result).toBe("ok");
    }, 60_000);

    const recurse: Code = { nodejs: "function f(n) { return f(n + 1) + 1; }\nreturn f(0);", python: "def f(n):\n    return f(n + 1) + 1\nreturn f(0)" };
    itIn(recurse, "unbounded recursion fails the run cleanly, and the next run works", async () => {
      const ws = workspace(newId(), language, { recurse: { code: recurse }, ok: { code: ok } });
      const outcome = await run(ws, "recurse");
      expect(outcome.ok).toBe(false);
      expect(expectOk(await run(ws, "ok")).result).toBe("ok");
    });

    const escapes: Code = {
      nodejs: `const found = [];
        const tries = [
          () => this.constructor.constructor("return process")(),
          () => (function () {}).constructor("return process")(),
          () => Function("return process")(),
          () => (async function () {}).constructor("return process")(),
          () => eval("process"),
          () => cache.constructor.constructor("return process")(),
          () => Error.prepareStackTrace,
        ];
        for (const attempt of tries) {
          try { const p = attempt(); if (p && p.env && p.env.CONFORMANCE_CANARY) found.push(p.env.CONFORMANCE_CANARY); } catch (e) {}
        }
        try { if (typeof process !== "undefined" && process.env && process.env.CONFORMANCE_CANARY) found.push(process.env.CONFORMANCE_CANARY); } catch (e) {}
        return found;`,
      python: "found = []\ntry:\n    import os\n    found.append(os.environ.get('CONFORMANCE_CANARY'))\nexcept ImportError:\n    pass\nreturn [f for f in found if f]",
    };
    itIn(escapes, "host-escape attempts do not reach the host's process or environment", async () => {
      process.env.CONFORMANCE_CANARY = "canary-value-1f3a";
      try {
        const ws = workspace(newId(), language, { escape: { code: escapes } });
        const outcome = await run(ws, "escape");
        if (outcome.ok) expect(outcome.result).toEqual([]);
        expect(JSON.stringify(outcome)).not.toContain("canary-value-1f3a");
      } finally {
        delete process.env.CONFORMANCE_CANARY;
      }
    });

    const slow: Code = { nodejs: "await new Promise((r) => setTimeout(r, 20));\nconsole.log('run', n);\nreturn n * 2;", python: "import time\ntime.sleep(0.02)\nprint('run', n)\nreturn n * 2" };
    itIn(slow, "concurrent runs of one workspace each get their own result and logs", async () => {
      const ws = workspace(newId(), language, { slow: { code: slow, parameters: { n: { type: "number" } } } });
      const outcomes = await Promise.all(Array.from({ length: 10 }, (_, n) => run(ws, "slow", { n }, 10_000)));
      outcomes.forEach((outcome, n) => {
        const okOutcome = expectOk(outcome);
        expect(okOutcome.result).toBe(n * 2);
        expect(okOutcome.logs.map((l) => l.message)).toEqual([`run ${n}`]);
      });
    });

    const leaveTimer: Code = { nodejs: "setTimeout(() => { cache.late = true; }, 30);\nfunction tick() { cache.ticks = (cache.ticks || 0) + 1; setTimeout(tick, 10); }\nsetTimeout(tick, 10);\nreturn 'answered';" };
    const readLate: Code = { nodejs: "return [cache.late ?? false, cache.ticks ?? 0];" };
    itIn(leaveTimer, "a run ends when it answers: timers it did not wait for never fire", async () => {
      const ws = workspace(newId(), language, { leave: { code: leaveTimer }, read: { code: readLate } });
      expect(expectOk(await run(ws, "leave")).result).toBe("answered");
      await new Promise((r) => setTimeout(r, 150));
      expect(expectOk(await run(ws, "read")).result).toEqual([false, 0]);
    });

    const v1: Code = { nodejs: "return 'v1';", python: "return 'v1'" };
    const v2: Code = { nodejs: "return 'v2';", python: "return 'v2'" };
    itIn(v1, "a new version of a workspace is what the next run executes", async () => {
      const id = newId();
      const first = workspace(id, language, { f: { code: v1 } });
      expect(expectOk(await run(first, "f")).result).toBe("v1");
      const second = workspace(id, language, { f: { code: v2 } });
      expect(expectOk(await run(second, "f")).result).toBe("v2");
    });

    itIn(hello, "unload forgets a workspace; a later run loads it again", async () => {
      const ws = workspace(newId(), language, { hello: { code: hello, parameters: { name: {} } } });
      expectOk(await run(ws, "hello", { name: "a" }));
      await adapter.unload(ws.id);
      expect(expectOk(await run(ws, "hello", { name: "b" })).result).toBe("Hello b");
    });

    it("dispose is idempotent, and a run after it is refused with a named error", async () => {
      const other = await target.create();
      await other.dispose();
      await other.dispose();
      const ws = workspace(newId(), other.flags.languages[0], { hello: { code: hello } });
      await expect(other.run({ workspace: ws, functionName: "hello", parameters: {} }, { timeoutMs })).rejects.toMatchObject({ name: "AdapterDisposedError" });
    });
  });
}
