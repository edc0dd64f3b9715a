import { describe, expect, it } from "vitest";
import { compileWorkspace } from "../../runtime/script.ts";
import { createVm2Adapter } from "../../runtime/adapters/vm2/index.ts";
import { runConformance } from "./conformance.ts";

runConformance({ name: "vm2", create: () => createVm2Adapter({ maxWorkers: 16, memoryLimitMb: 64 }) });

describe("vm2 run lifetime", () => {
  it("clears intervals and immediates a run left behind when it answers", async () => {
    const adapter = createVm2Adapter({ maxWorkers: 2 });
    try {
      const ws = compileWorkspace("vm2-interval", "v1", {
        functions: {
          leave: { code: "setInterval(() => { cache.ticks = (cache.ticks || 0) + 1; }, 5);\nsetImmediate(() => { cache.immediate = true; });\nreturn 1;" },
          read: { code: "return [cache.ticks ?? 0, cache.immediate ?? false];" },
        },
      });
      await adapter.run({ workspace: ws, functionName: "leave", parameters: {} }, { timeoutMs: 2000 });
      await new Promise((r) => setTimeout(r, 100));
      const outcome = await adapter.run({ workspace: ws, functionName: "read", parameters: {} }, { timeoutMs: 2000 });
      expect(outcome).toMatchObject({ ok: true, result: [0, false] });
    } finally {
      await adapter.dispose();
    }
  });
});
