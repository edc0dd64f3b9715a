/**
 * Sandbox processes: the vm2 sandbox hosted in child processes, one crash domain each, under Node's
 * permission model with an empty environment. The conformance suite runs through them unchanged.
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkNodeSyntax, VM2_WORKER_URL } from "../../runtime/adapters/vm2/index.ts";
import { bundleSandboxChild } from "../../runtime/adapters/sandbox-process/bundle-child.mjs";
import { createSandboxProcessAdapter } from "../../runtime/adapters/sandbox-process/index.ts";
import { compileWorkspace } from "../../runtime/script.ts";
import { runConformance } from "./conformance.ts";

const childPath = resolve(`.tmp/sandbox-child-${process.pid}.mjs`);
writeFileSync(childPath, bundleSandboxChild());

function create(processes = 2, extra: { memoryLimitMb?: number; memoryCheckMs?: number; externalMemoryLimitMb?: number } = {}) {
  return createSandboxProcessAdapter({
    sandbox: { kind: "vm2", options: { workerUrl: VM2_WORKER_URL.href, maxWorkers: 16, memoryLimitMb: 64, externalMemoryLimitMb: extra.externalMemoryLimitMb } },
    memoryLimitMb: extra.memoryLimitMb,
    memoryCheckMs: extra.memoryCheckMs,
    flags: { languages: ["nodejs"], memoryLimit: true, builtins: true },
    checkSyntax: checkNodeSyntax,
    processes,
    childEntry: pathToFileURL(childPath),
    readableDirs: [process.cwd()],
  });
}

runConformance({ name: "vm2 in sandbox processes", create: () => create() });

afterAll(() => rmSync(childPath, { force: true }));

describe("sandbox processes", () => {
  let adapter: ReturnType<typeof create>;
  beforeAll(() => {
    adapter = create(2);
  });
  afterAll(async () => {
    await adapter.dispose();
  });

  /** Workspace ids that land on process 0 and on process 1. */
  function idsOnEachProcess(): [string, string] {
    const ids = Array.from({ length: 20 }, (_, i) => `proc-ws-${i}`);
    return [ids.find((id) => adapter.processOf(id) === 0)!, ids.find((id) => adapter.processOf(id) === 1)!];
  }

  const slow = (id: string) => compileWorkspace(id, "v1", { functions: { wait: { code: "await new Promise((r) => setTimeout(r, 300)); return 'done';" }, ok: { code: "return 'ok';" } } });

  it("start with an empty environment and under the permission model", async () => {
    const [a] = idsOnEachProcess();
    await adapter.run({ workspace: slow(a), functionName: "ok", parameters: {} }, { timeoutMs: 5000 });
    const pid = adapter.pids()[adapter.processOf(a)]!;
    // Nothing but the IPC channel Node itself describes to the child.
    const environment = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean);
    expect(environment.every((entry) => entry.startsWith("NODE_CHANNEL_"))).toBe(true);
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    expect(cmdline.some((arg) => arg === "--permission" || arg === "--experimental-permission")).toBe(true);
    expect(cmdline).toContain("--allow-worker");
    expect(cmdline.filter((arg) => arg.startsWith("--allow-fs-read="))).toEqual([`--allow-fs-read=${process.cwd()}/*`]);
    expect(cmdline.some((arg) => arg.startsWith("--allow-child-process"))).toBe(false);
  });

  it("a killed process fails only its own in-flight runs, with a typed error, and is replaced", async () => {
    const [a, b] = idsOnEachProcess();
    await Promise.all([a, b].map((id) => adapter.run({ workspace: slow(id), functionName: "ok", parameters: {} }, { timeoutMs: 5000 })));
    const victimPid = adapter.pids()[adapter.processOf(a)]!;
    const onVictim = adapter.run({ workspace: slow(a), functionName: "wait", parameters: {} }, { timeoutMs: 5000 });
    const onOther = adapter.run({ workspace: slow(b), functionName: "wait", parameters: {} }, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 50));
    process.kill(victimPid, "SIGKILL");
    const [victim, other] = await Promise.all([onVictim, onOther]);
    expect(victim).toMatchObject({ ok: false, error: { kind: "function", name: "SandboxProcessCrashedError" } });
    expect(other).toMatchObject({ ok: true, result: "done" });
    expect(await adapter.run({ workspace: slow(a), functionName: "ok", parameters: {} }, { timeoutMs: 5000 })).toMatchObject({ ok: true, result: "ok" });
    expect(adapter.pids()[adapter.processOf(a)]).not.toBe(victimPid);
  });
});

describe("sandbox processes: the process memory limit", () => {
  it("a process past its resident memory limit is stopped, its runs answer MemoryLimitError, the other process keeps answering", async () => {
    // 400 MB per process; each worker may hold 300 MB of Buffers, so two workspaces on one process pass it.
    const adapter = create(2, { memoryLimitMb: 400, memoryCheckMs: 100, externalMemoryLimitMb: 300 });
    try {
      const ids = Array.from({ length: 40 }, (_, i) => `mem-ws-${i}`);
      const [a1, a2] = ids.filter((id) => adapter.processOf(id) === 0);
      const other = ids.find((id) => adapter.processOf(id) === 1)!;
      const hoard = (id: string) =>
        compileWorkspace(id, "v1", {
          functions: {
            hoard: { code: "cache.keep = [];\nfor (let i = 0; i < 14; i++) cache.keep.push(Buffer.alloc(16 * 1024 * 1024, 1));\nawait new Promise((r) => setTimeout(r, 3000));\nreturn cache.keep.length;" },
            ok: { code: "return 'ok';" },
          },
        });
      const bystander = adapter.run({ workspace: hoard(other), functionName: "ok", parameters: {} }, { timeoutMs: 5000 });
      const outcomes = await Promise.all([a1, a2].map((id) => adapter.run({ workspace: hoard(id), functionName: "hoard", parameters: {} }, { timeoutMs: 10000 })));
      for (const outcome of outcomes) {
        expect(outcome).toMatchObject({ ok: false, error: { kind: "memory", name: "MemoryLimitError", message: expect.stringContaining("past its limit of 400 MB") } });
      }
      expect(await bystander).toMatchObject({ ok: true, result: "ok" });
      // Replaced: the workspace answers again, from a fresh process.
      expect(await adapter.run({ workspace: hoard(a1), functionName: "ok", parameters: {} }, { timeoutMs: 5000 })).toMatchObject({ ok: true, result: "ok" });
    } finally {
      await adapter.dispose();
    }
  }, 30_000);
});
