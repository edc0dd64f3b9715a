/**
 * The core's version check with instances sharing one store: each run reads the stored version and
 * runs exactly that, however loads, deploys and deletes through other instances interleave. The
 * sandbox is a stub answering the code it was given, so what a run executed is visible.
 */
import { createStorage } from "unstorage";
import memory from "unstorage/drivers/memory";
import { describe, expect, it } from "vitest";
import { createFunctionsService } from "../runtime/service.ts";
import type { RunOutcome, SandboxAdapter, WorkspaceSpec } from "../runtime/types.ts";
import { createWorkspaceStore, type WorkspaceStore } from "../storage/workspace-store.ts";

/** A sandbox that "runs" a function by answering its code; it records the workspaces it unloads. */
function echoSandbox() {
  const unloaded: string[] = [];
  const adapter: SandboxAdapter = {
    name: "echo",
    flags: { languages: ["nodejs"], memoryLimit: false, builtins: false },
    async load() {},
    async run({ workspace, functionName }): Promise<RunOutcome> {
      return { ok: true, result: workspace.spec.functions[functionName].code, logs: [], durationMs: 0 };
    },
    async unload(id) {
      unloaded.push(id);
    },
    async dispose() {},
  };
  return { adapter, unloaded };
}

const body = (code: string) => ({ functions: { f: { code } } });

/** One storage, and instances of the service over it (each its own store and sandbox unless given). */
function sharedStorage() {
  const storage = createStorage({ driver: memory() });
  const instance = ({ store = createWorkspaceStore<WorkspaceSpec>(storage), node = echoSandbox().adapter }: { store?: WorkspaceStore<WorkspaceSpec>; node?: SandboxAdapter } = {}) =>
    createFunctionsService({ store, node });
  return { storage, instance };
}

describe("the version check on every run", () => {
  it("a run that starts after a deploy elsewhere runs it, even while an older load is still in flight", async () => {
    const { storage, instance } = sharedStorage();
    const a = instance();
    // B's first read of the spec is held after it read, as a slow disk or network would.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const inner = createWorkspaceStore<WorkspaceSpec>(storage);
    let reads = 0;
    const b = instance({
      store: {
        ...inner,
        async get(id) {
          const stored = await inner.get(id);
          if (++reads === 1) await held;
          return stored;
        },
      },
    });

    await a.deploy("ws", body("return 'v1'"));
    const first = b.run("ws", "f"); // loads v1, held
    await new Promise((resolve) => setTimeout(resolve, 10));
    await a.deploy("ws", body("return 'v2'"));
    const second = b.run("ws", "f"); // sees v2: must not join the load of v1
    await new Promise((resolve) => setTimeout(resolve, 10));
    release();
    expect(await second).toMatchObject({ ok: true, result: "return 'v2'" });
    expect(await first).toMatchObject({ ok: true, result: "return 'v1'" });
    expect(await b.run("ws", "f")).toMatchObject({ ok: true, result: "return 'v2'" });
  });

  it("an instance that finds its warm workspace deleted elsewhere answers 404 and ends its workers for it", async () => {
    const { instance } = sharedStorage();
    const sandbox = echoSandbox();
    const a = instance();
    const b = instance({ node: sandbox.adapter });
    await a.deploy("ws", body("return 1"));
    expect(await b.run("ws", "f")).toMatchObject({ ok: true });
    await a.delete("ws");
    await expect(b.run("ws", "f")).rejects.toMatchObject({ code: "ObjectNotFoundError" });
    expect(sandbox.unloaded).toEqual(["ws"]);
  });

  it("an instance whose deploy lost a race to a later one elsewhere runs the later one", async () => {
    const { instance } = sharedStorage();
    const a = instance();
    const b = instance();
    for (let round = 0; round < 20; round++) {
      await Promise.all([a.deploy("ws", body(`return 'a${round}'`)), b.deploy("ws", body(`return 'b${round}'`))]);
      const stored = (await a.get("ws")).spec.functions.f.code;
      expect([`return 'a${round}'`, `return 'b${round}'`]).toContain(stored);
      expect(await a.run("ws", "f")).toMatchObject({ ok: true, result: stored });
      expect(await b.run("ws", "f")).toMatchObject({ ok: true, result: stored });
    }
  });
});
