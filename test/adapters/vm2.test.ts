import { createServer, type Server } from "node:http";
import { createServer as createNetServer, type AddressInfo } from "node:net";
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

/**
 * A server that takes requests and never answers: it counts requests, and closes of the
 * connections that carried one. Raw TCP connections (no HTTP) go to `rawPort`, counted the same way.
 */
async function hangingServer() {
  let requests = 0;
  let requestsClosed = 0;
  let raw = 0;
  let rawClosed = 0;
  const server: Server = createServer((req) => {
    requests++;
    req.socket.once("close", () => requestsClosed++);
  });
  const rawServer = createNetServer((socket) => {
    raw++;
    socket.once("close", () => rawClosed++);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  await new Promise<void>((resolve) => rawServer.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    rawPort: (rawServer.address() as AddressInfo).port,
    counts: () => ({ requests, requestsClosed, raw, rawClosed }),
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await new Promise((resolve) => rawServer.close(resolve));
    },
  };
}

const until = async (check: () => boolean, ms = 2000) => {
  const end = Date.now() + ms;
  while (!check() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return check();
};

describe("vm2: what a run opens ends with its answer", () => {
  const run = (adapter: ReturnType<typeof createVm2Adapter>, ws: ReturnType<typeof compileWorkspace>, functionName: string, parameters = {}) =>
    adapter.run({ workspace: ws, functionName, parameters }, { timeoutMs: 3000 });

  it("an http request, a fetch and a raw socket still open at the answer are closed", async () => {
    const server = await hangingServer();
    const adapter = createVm2Adapter({ maxWorkers: 2, egress: { policy: "allow-all" }, builtinModules: ["http", "net"] });
    try {
      const ws = compileWorkspace("vm2-sockets", "v1", {
        functions: {
          leave: {
            code: [
              "require('http').get(url).on('error', () => {});",
              "fetch(url).catch(() => {});",
              "require('net').connect(rawPort, '127.0.0.1').on('error', () => {});",
              "await new Promise((r) => setTimeout(r, 200));",
              "return 'left';",
            ].join("\n"),
            parameters: { url: {}, rawPort: {} },
          },
        },
      });
      const parameters = { url: server.url, rawPort: server.rawPort };
      expect(await run(adapter, ws, "leave", parameters)).toMatchObject({ ok: true, result: "left" });
      expect(server.counts()).toMatchObject({ requests: 2, raw: 1 });
      expect(await until(() => server.counts().requestsClosed === 2 && server.counts().rawClosed === 1)).toBe(true);
      // The worker is not retired for it: its next run does the same, and is cleaned up the same.
      expect(await run(adapter, ws, "leave", parameters)).toMatchObject({ ok: true, result: "left" });
      expect(server.counts()).toMatchObject({ requests: 4, raw: 2 });
      expect(await until(() => server.counts().requestsClosed === 4 && server.counts().rawClosed === 2)).toBe(true);
    } finally {
      await adapter.dispose();
      await server.close();
    }
  });

  it("code of a run that has answered opens nothing: no request, no timer, no fetch", async () => {
    const server = await hangingServer();
    const adapter = createVm2Adapter({ maxWorkers: 2, egress: { policy: "allow-all" } });
    try {
      const ws = compileWorkspace("vm2-late", "v1", {
        functions: {
          start: {
            code: [
              "(async () => {",
              "  await new Promise((r) => { cache.wake = r; });",
              "  require('http').get(url).on('error', () => {});",
              "  setInterval(() => { cache.ticks = (cache.ticks || 0) + 1; }, 5);",
              "  cache.fetched = await fetch(url).then(() => 'fetched', (e) => e.message);",
              "})();",
              "return 'started';",
            ].join("\n"),
            parameters: { url: {} },
          },
          wake: { code: "cache.wake(); await new Promise((r) => setTimeout(r, 300)); return [cache.ticks ?? 0, cache.fetched];" },
        },
      });
      expect(await run(adapter, ws, "start", { url: server.url })).toMatchObject({ ok: true, result: "started" });
      const woken = await run(adapter, ws, "wake");
      expect(woken).toMatchObject({ ok: true, result: [0, "fetch refused: this run has already answered"] });
      await new Promise((r) => setTimeout(r, 100));
      expect(server.counts().requests).toBe(0);
    } finally {
      await adapter.dispose();
      await server.close();
    }
  });

  it("exit listeners are accepted and never kept", async () => {
    const adapter = createVm2Adapter({ maxWorkers: 2 });
    try {
      const ws = compileWorkspace("vm2-exit", "v1", {
        functions: { f: { code: "process.on('exit', () => {}).once('beforeExit', () => {});\nreturn process.listeners('exit').length + process.listeners('beforeExit').length;" } },
      });
      expect(await run(adapter, ws, "f")).toMatchObject({ ok: true, result: 0 });
    } finally {
      await adapter.dispose();
    }
  });
});

describe("vm2: memory outside the heap is capped in sum", () => {
  const MB = 1024 * 1024;

  it("large Buffers from host functions enter the sandbox whole and at once (vm2 alone aborts the process)", async () => {
    const adapter = createVm2Adapter({ maxWorkers: 2 });
    try {
      const ws = compileWorkspace("vm2-big-buffers", "v1", {
        functions: {
          big: { code: "const zlib = require('zlib');\nconst b = Buffer.alloc(32 * 1024 * 1024, 'a');\nconst z = zlib.gzipSync(b);\nreturn [b.length, zlib.gunzipSync(z).length, b.toString('utf8', 0, 3), Buffer.isBuffer(b), b instanceof Uint8Array];" },
        },
      });
      const outcome = await adapter.run({ workspace: ws, functionName: "big", parameters: {} }, { timeoutMs: 10000 });
      expect(outcome).toMatchObject({ ok: true, result: [32 * MB, 32 * MB, "aaa", true, true] });
    } finally {
      await adapter.dispose();
    }
  });

  it("typed arrays, ArrayBuffers and Buffers past the sum throw a RangeError at allocation", async () => {
    const adapter = createVm2Adapter({ maxWorkers: 2, externalMemoryLimitMb: 64 });
    const ws = compileWorkspace("vm2-external", "v1", {
      functions: {
        typed: { code: "const keep = [];\ntry { for (let i = 0; i < 10; i++) keep.push(new Float64Array(2 * 1024 * 1024)); } catch (e) { return [keep.length, e.name, e.message]; }\nreturn 'no limit';" },
        buffers: { code: "const keep = [];\ntry { for (let i = 0; i < 10; i++) keep.push(Buffer.alloc(16 * 1024 * 1024)); } catch (e) { return [keep.length, e.name]; }\nreturn 'no limit';" },
        arrayBuffers: { code: "const keep = [];\ntry { for (let i = 0; i < 10; i++) keep.push(new ArrayBuffer(16 * 1024 * 1024)); } catch (e) { return [keep.length, e.name]; }\nreturn 'no limit';" },
        species: { code: "const a = new Uint8Array(40 * 1024 * 1024);\ntry { return ['mapped', a.map((x) => x).length]; } catch (e) { return e.message; }" },
        dropped: { code: "let n = 0;\nfor (let i = 0; i < 50; i++) n += new Uint8Array(12 * 1024 * 1024).length;\nreturn n;" },
      },
    });
    // Each case in a fresh worker: garbage of an earlier case must not decide a later one.
    const fresh = async (functionName: string) => {
      await adapter.unload(ws.id);
      return adapter.run({ workspace: ws, functionName, parameters: {} }, { timeoutMs: 10000 });
    };
    try {
      // 16 MiB each under 64 MiB: the fourth or fifth fails, whatever the worker itself holds.
      const typed = await fresh("typed");
      expect(typed).toMatchObject({ ok: true, result: [expect.any(Number), "RangeError", expect.stringContaining("outside the heap would pass its limit of 67108864 bytes")] });
      expect((typed as { result: [number] }).result[0]).toBeGreaterThanOrEqual(3);
      expect((typed as { result: [number] }).result[0]).toBeLessThanOrEqual(4);
      for (const name of ["buffers", "arrayBuffers"]) {
        const outcome = await fresh(name);
        expect(outcome, name).toMatchObject({ ok: true, result: [expect.any(Number), "RangeError"] });
        expect((outcome as { result: [number] }).result[0], name).toBeLessThanOrEqual(4);
      }
      // map() makes its copy through the species constructor: guarded too.
      expect(await fresh("species")).toMatchObject({ ok: true, result: expect.stringContaining("outside the heap") });
      // Garbage does not count: 600 MB allocated one after another, few of them alive at once.
      expect(await fresh("dropped")).toMatchObject({ ok: true, result: 50 * 12 * MB });
    } finally {
      await adapter.dispose();
    }
  });

  it("memory that got past the allocation checks ends the worker at the next heartbeat with MemoryLimitError", async () => {
    const adapter = createVm2Adapter({ maxWorkers: 2, externalMemoryLimitMb: 64 });
    try {
      const ws = compileWorkspace("vm2-external-beat", "v1", {
        functions: {
          // TextEncoder allocates on the host side, where the per-allocation check does not look.
          hoard: { code: "const s = 'x'.repeat(1000 * 1000), encoder = new TextEncoder(); cache.keep = [];\nfor (let i = 0; i < 100; i++) cache.keep.push(encoder.encode(s));\nawait new Promise((r) => setTimeout(r, 1000));\nreturn cache.keep.length;" },
          after: { code: "return cache.keep ?? 'fresh worker';" },
        },
      });
      const hoard = await adapter.run({ workspace: ws, functionName: "hoard", parameters: {} }, { timeoutMs: 5000 });
      expect(hoard).toMatchObject({ ok: false, error: { kind: "memory", name: "MemoryLimitError", message: expect.stringContaining("outside the heap") } });
      expect(await adapter.run({ workspace: ws, functionName: "after", parameters: {} }, { timeoutMs: 5000 })).toMatchObject({ ok: true, result: "fresh worker" });
    } finally {
      await adapter.dispose();
    }
  });
});
