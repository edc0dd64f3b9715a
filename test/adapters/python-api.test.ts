/**
 * The python-api adapter against a mocked Python API (msw): what it sends, when the code travels,
 * and how every way the API can fail becomes a `PythonApiError` or `TimeoutError` outcome, never a
 * throw. The real Python API runs in python-process.test.ts.
 */
import { createServer } from "node:net";
import { delay, http, HttpResponse } from "msw";
import { setupServer } from "msw/node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createPythonApiAdapter, createUnavailablePythonAdapter } from "../../runtime/adapters/python-api.ts";
import type { CompiledWorkspace, RunOutcome } from "../../runtime/types.ts";

const API = "http://python-api.test";
/** A port that was free a moment ago: nothing listens there (fetch refuses port 1 itself). */
const REFUSED = await new Promise<string>((resolve) => {
  const probe = createServer().listen(0, "127.0.0.1", () => {
    const { port } = probe.address() as { port: number };
    probe.close(() => resolve(`http://127.0.0.1:${port}`));
  });
});

/** Every /v1/run body the mock received, in order. */
let received: Array<Record<string, any>> = [];
/** (workspace, version) pairs the mock API holds, like the real one after a run with `functions`. */
let known = new Set<string>();

const okAnswer = (result: unknown) => ({ ok: true, result, logs: [{ level: "log", message: "hi", timestamp: "2026-01-01T00:00:00.000Z" }], durationMs: 1.5 });

const server = setupServer(
  http.post(`${API}/v1/run`, async ({ request }) => {
    const body = (await request.json()) as Record<string, any>;
    received.push(body);
    const key = `${body.workspace}@${body.version}`;
    if (body.functions) known.add(key);
    else if (!known.has(key)) return HttpResponse.json({ error: "VersionUnknown" }, { status: 409 });
    return HttpResponse.json(okAnswer({ echo: body.parameters }));
  }),
);

/** Replaces the mock's /v1/run for one test. */
function answerWith(resolver: Parameters<typeof http.post>[1]) {
  server.use(http.post(`${API}/v1/run`, resolver));
}

let versionCounter = 0;
function workspace(id = "ws-1", version = `v${++versionCounter}`): CompiledWorkspace {
  const spec = {
    functions: {
      hello: { code: "return 'Hello ' + name", parameters: { name: { type: "string" as const, default: "world" } }, language: "python" as const },
      helper: { code: "return 1", language: "python" as const },
      nodeOnly: { code: "return 2" },
    },
  };
  return { id, version, spec, script: "", lineMap: [] };
}

function upstreamError(outcome: RunOutcome) {
  if (outcome.ok) throw new Error(`expected a failure, got ${JSON.stringify(outcome.result)}`);
  expect(outcome.error.kind).toBe("upstream");
  expect(outcome.error.name).toBe("PythonApiError");
  return outcome.error;
}

beforeAll(() =>
  server.listen({
    // The refused-connection case goes to the network on purpose; anything else unmocked is a bug.
    onUnhandledRequest: (request, print) => {
      if (!request.url.startsWith(REFUSED)) print.error();
    },
  }),
);
afterEach(() => {
  server.resetHandlers();
  received = [];
  known = new Set();
});
afterAll(() => server.close());

describe("python-api adapter", () => {
  const adapter = createPythonApiAdapter({ baseUrl: `${API}/` });
  const run = (ws: CompiledWorkspace, parameters: Record<string, unknown> = { name: "you" }, timeoutMs = 20_000) =>
    adapter.run({ workspace: ws, functionName: "hello", parameters }, { timeoutMs });

  it("declares what it can do as data", () => {
    expect(adapter.name).toBe("python-api");
    expect(adapter.flags).toEqual({ languages: ["python"], memoryLimit: true, builtins: false });
  });

  it("forwards the run as protocol v1 and answers the API's outcome", async () => {
    const ws = workspace();
    const outcome = await run(ws, { name: "you" }, 5000);
    expect(outcome).toEqual(okAnswer({ echo: { name: "you" } }));
    expect(received).toHaveLength(1);
    expect(received[0]).toEqual({
      protocol: 1,
      workspace: "ws-1",
      version: ws.version,
      function: "hello",
      parameters: { name: "you" },
      timeoutMs: 5000,
      // Every Python function of the workspace, and only those.
      functions: {
        hello: { code: "return 'Hello ' + name", parameters: { name: { type: "string", default: "world" } } },
        helper: { code: "return 1", parameters: {} },
      },
    });
  });

  it("passes parameters as sent: defaults are the API's job", async () => {
    await run(workspace(), {});
    await run(workspace(), { name: null, extra: [1, "2"] });
    expect(received.map((body) => body.parameters)).toEqual([{}, { name: null, extra: [1, "2"] }]);
  });

  it("sends the functions only with the first run of a version", async () => {
    const v1 = workspace("ws-warm");
    await run(v1);
    await run(v1);
    await run(v1);
    const v2 = workspace("ws-warm");
    await run(v2);
    await run(v2);
    expect(received.map((body) => [body.version, "functions" in body])).toEqual([
      [v1.version, true],
      [v1.version, false],
      [v1.version, false],
      [v2.version, true],
      [v2.version, false],
    ]);
  });

  it("resends the request with the functions when the API answers 409 VersionUnknown", async () => {
    const ws = workspace("ws-409");
    await run(ws);
    known.clear(); // the API restarted and forgot every workspace
    const outcome = await run(ws, { name: "again" });
    expect(outcome.ok).toBe(true);
    expect(received.map((body) => "functions" in body)).toEqual([true, false, true]);
    expect(received[2]).toEqual({ ...received[1], functions: received[0].functions });
    await run(ws);
    expect(received.map((body) => "functions" in body)).toEqual([true, false, true, false]);
  });

  it("answers the API's own failures as they are", async () => {
    const failure = { ok: false, error: { kind: "function", name: "ZeroDivisionError", message: "division by zero", stack: "line 1" }, logs: [], durationMs: 0.2 };
    answerWith(() => HttpResponse.json(failure));
    expect(await run(workspace())).toEqual(failure);
  });

  it("answers PythonApiError when the API fails with a 5xx", async () => {
    answerWith(() => HttpResponse.json({ error: "KernelError", message: "the Python kernel is unavailable" }, { status: 500 }));
    const error = upstreamError(await run(workspace()));
    expect(error.message).toBe(`The Python API at ${API} (PYTHON_API_URL) answered HTTP 500: KernelError (the Python kernel is unavailable)`);
  });

  it("answers PythonApiError when the API's body is not JSON", async () => {
    answerWith(() => new HttpResponse("<html>Bad Gateway</html>", { status: 200, headers: { "content-type": "text/html" } }));
    expect(upstreamError(await run(workspace())).message).toMatch(/answered HTTP 200 with a body that is not JSON: "<html>Bad Gateway<\/html>"/);
  });

  it.each([
    ["no ok", { result: 1, logs: [], durationMs: 1 }, /no boolean `ok`/],
    ["no result", { ok: true, logs: [], durationMs: 1 }, /no `result`/],
    ["logs not a list", { ok: true, result: 1, logs: "hi", durationMs: 1 }, /`logs`/],
    ["a log entry without timestamp", { ok: true, result: 1, logs: [{ level: "log", message: "hi" }], durationMs: 1 }, /`logs`/],
    ["an unknown log level", { ok: true, result: 1, logs: [{ level: "fatal", message: "hi", timestamp: "t" }], durationMs: 1 }, /`logs`/],
    ["durationMs a string", { ok: true, result: 1, logs: [], durationMs: "1" }, /`durationMs`/],
    ["an error of unknown kind", { ok: false, error: { kind: "upstream", name: "X", message: "m" }, logs: [], durationMs: 1 }, /`error`/],
    ["an error without message", { ok: false, error: { kind: "function", name: "X" }, logs: [], durationMs: 1 }, /`error`/],
  ])("answers PythonApiError when the answer has %s", async (_, body, problem) => {
    answerWith(() => HttpResponse.json(body));
    expect(upstreamError(await run(workspace())).message).toMatch(problem);
  });

  it("answers PythonApiError when the API speaks another protocol", async () => {
    answerWith(() => HttpResponse.json({ error: "BadRequest", message: "unsupported protocol 1: this Python API speaks protocol 2" }, { status: 400 }));
    expect(upstreamError(await run(workspace())).message).toMatch(/HTTP 400: BadRequest \(unsupported protocol 1/);
  });

  it("answers PythonApiError, naming PYTHON_API_URL, when nothing listens", async () => {
    const down = createPythonApiAdapter({ baseUrl: REFUSED });
    const outcome = await down.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 5000 });
    expect(upstreamError(outcome).message).toBe(`The Python API at ${REFUSED} (PYTHON_API_URL) could not be reached: the connection was refused (is the Python API running?)`);
  });

  it("names where the URL came from", async () => {
    const bundled = createPythonApiAdapter({ baseUrl: REFUSED, source: "bundled, started by this service" });
    const outcome = await bundled.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 5000 });
    expect(upstreamError(outcome).message).toMatch(/\(bundled, started by this service\) could not be reached/);
  });

  it("answers TimeoutError at timeout + grace when the API hangs", async () => {
    answerWith(() => delay("infinite"));
    const quick = createPythonApiAdapter({ baseUrl: API, graceMs: 200 });
    const started = performance.now();
    const outcome = await quick.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 300 });
    const elapsed = performance.now() - started;
    expect(outcome).toMatchObject({ ok: false, error: { kind: "timeout", name: "TimeoutError" } });
    expect(elapsed).toBeGreaterThanOrEqual(490);
    expect(elapsed).toBeLessThan(1500);
  });

  it("stops waiting when the caller aborts", async () => {
    answerWith(() => delay("infinite"));
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const started = performance.now();
    const outcome = await adapter.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 20_000, signal: controller.signal });
    expect(outcome).toMatchObject({ ok: false, error: { kind: "timeout", name: "AbortError" } });
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it("does not even send a run whose signal is already aborted", async () => {
    const outcome = await adapter.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 1000, signal: AbortSignal.abort() });
    expect(outcome).toMatchObject({ ok: false, error: { name: "AbortError" } });
    expect(received).toHaveLength(0);
  });

  it("runs 20 requests concurrently, each with its own answer", async () => {
    answerWith(async ({ request }) => {
      const body = (await request.json()) as Record<string, any>;
      await delay(50 + Math.random() * 50);
      return HttpResponse.json(okAnswer(body.parameters.i));
    });
    const ws = workspace("ws-many");
    const started = performance.now();
    const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => run(ws, { i })));
    expect(outcomes.map((outcome) => (outcome.ok ? outcome.result : outcome.error.message))).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(performance.now() - started).toBeLessThan(1000); // in parallel, not one after another
  });

  it("forgets a workspace on unload: its next run sends the functions again", async () => {
    const ws = workspace("ws-unload");
    await run(ws);
    await adapter.unload("ws-unload");
    await run(ws);
    expect(received.map((body) => "functions" in body)).toEqual([true, true]);
  });
});

describe("python-api adapter lifetime", () => {
  it("rejects runs after dispose, and dispose is idempotent", async () => {
    const adapter = createPythonApiAdapter({ baseUrl: API });
    await adapter.dispose();
    await adapter.dispose();
    await expect(adapter.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 1000 })).rejects.toMatchObject({
      name: "AdapterDisposedError",
      message: "The python-api adapter was disposed",
    });
  });

  it("ends the runs in flight when disposed", async () => {
    answerWith(() => delay("infinite"));
    const adapter = createPythonApiAdapter({ baseUrl: API });
    const pending = adapter.run({ workspace: workspace(), functionName: "hello", parameters: {} }, { timeoutMs: 20_000 });
    await delay(50);
    await adapter.dispose();
    expect(await pending).toMatchObject({ ok: false, error: { kind: "upstream", name: "AdapterDisposedError" } });
  });

  it("stands in with a clear PythonApiError when there is no Python API at all", async () => {
    const adapter = createUnavailablePythonAdapter("python3 was not found");
    expect(adapter.flags.languages).toEqual(["python"]);
    expect(upstreamError(await adapter.run()).message).toBe("python3 was not found");
  });
});
