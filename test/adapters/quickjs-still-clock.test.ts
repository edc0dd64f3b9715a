/**
 * The run timeout where the clock stands still while code runs, as on deployed Cloudflare Workers
 * (`Date.now()` advances only between I/O there; locally, in workerd, it moves): the interrupt
 * handler then counts its polls instead of reading the clock (runtime/adapters/quickjs/engine.mjs,
 * `STILL_CLOCK_POLLS_PER_MS`). Fake timers freeze `Date` here; `performance.now()` still moves.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { createQuickJsAdapter } from "../../runtime/adapters/quickjs.ts";
import { compileWorkspace } from "../../runtime/script.ts";

describe("QuickJS under a clock that stands still during a run", () => {
  const adapter = createQuickJsAdapter();
  const workspace = compileWorkspace("still-clock", "v1", {
    functions: { spin: { code: "console.log('spinning'); while (true) {}" }, count: { code: "let i = 0; while (i < 1e6) i++; return i;" } },
  });
  const run = (functionName: string, timeoutMs: number) => adapter.run({ workspace, functionName, parameters: {} }, { timeoutMs });

  beforeAll(() => adapter.ready());
  afterEach(() => vi.useRealTimers());
  afterAll(() => adapter.dispose());

  it("ends a sync loop after about its timeout's worth of interrupt polls, with the logs so far", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    const started = performance.now();
    const outcome = await run("spin", 300);
    const elapsedMs = performance.now() - started;
    expect(outcome).toMatchObject({ ok: false, error: { kind: "timeout", name: "TimeoutError" }, logs: [{ message: "spinning" }] });
    // About 300 ms on the machine the poll rate was measured on; slower machines take longer.
    expect(elapsedMs).toBeLessThan(5000);
  });

  it("lets a loop that ends within its budget finish, and the workspace runs again after a timeout", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    expect(await run("count", 300)).toMatchObject({ ok: true, result: 1e6 });
  });
});
