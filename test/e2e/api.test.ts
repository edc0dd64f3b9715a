/**
 * The HTTP API over real HTTP against the built server: every route, every row of the SPEC's error
 * table, and the run-time guarantees callers depend on (isolation, timeouts, redeploys, workers).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { startServer, type RunningServer } from "./harness.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startServer({ FUNCTIONS_RUN_TIMEOUT: "1000", REQUEST_MAX_SIZE: "10kb", NODE_WORKER_MAX_OLD_GENERATION_SIZE_MB: "32" });
});
afterAll(async () => {
  await server?.stop();
});

const hello = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };

describe("workspace routes", () => {
  it("deploy, read back, list and delete a workspace", async () => {
    expect((await server.deploy("app.my-app.v3", hello)).status).toBe(200);
    const read = await server.request("GET", "/v2/functions/app.my-app.v3");
    expect(read.status).toBe(200);
    expect(read.body.functions).toEqual(hello.functions);
    expect(read.body.version).toMatch(/^[0-9a-f]{24}$/);
    expect((await server.request("GET", "/v2/functions")).body).toContain("app.my-app.v3");
    expect((await server.request("DELETE", "/v2/functions/app.my-app.v3")).status).toBe(204);
    expect((await server.request("GET", "/v2/functions/app.my-app.v3")).status).toBe(404);
    expect((await server.run("app.my-app.v3", "hello", {})).status).toBe(404);
    expect((await server.request("GET", "/v2/functions")).body).not.toContain("app.my-app.v3");
    expect(existsSync(resolve(server.storageDir, "app.my-app.v3"))).toBe(false);
  });

  it("a deploy replaces the whole workspace, and the very next run sees it", async () => {
    await server.deploy("replace", { functions: { a: { code: "return 1" }, b: { code: "return 'b1'" } } });
    expect((await server.run("replace", "b")).body.result).toBe("b1");
    await server.deploy("replace", { functions: { b: { code: "return 'b2'" } } });
    expect((await server.run("replace", "b")).body.result).toBe("b2");
    expect((await server.run("replace", "a")).status).toBe(404);
  });

  it("stores workspace.yaml and the generated script under the storage root", async () => {
    await server.deploy("files", hello);
    expect(readdirSync(resolve(server.storageDir, "files")).sort()).toEqual(["version", "workspace.js", "workspace.yaml"]);
  });

  it("answers the health check", async () => {
    const reply = await server.request("GET", "/sys/healthcheck");
    expect(reply.status).toBe(200);
    expect(reply.body.healthy).toBe(true);
  });
});

describe("runs", () => {
  it("passes values as sent, ignores undeclared parameters and applies defaults", async () => {
    await server.deploy("values", { functions: { echo: { code: "return { flag, obj, missing };", parameters: { flag: { type: "boolean" }, obj: { type: "object", default: "" }, missing: { default: 7 } } } } });
    const reply = await server.run("values", "echo", { flag: "false", obj: [1, 2], extra: true });
    expect(reply.body.result).toEqual({ flag: "false", obj: [1, 2], missing: 7 });
  });

  it("accepts a run without a body, and null values", async () => {
    await server.deploy("nobody", { functions: { f: { code: "return typeof x + ':' + x;", parameters: { x: { default: 1 } } } } });
    expect((await server.request("POST", "/v2/functions/nobody/run/f")).body.result).toBe("number:1");
    expect((await server.run("nobody", "f", { x: null })).body.result).toBe("object:null");
  });

  it("runs bodies as users write them: empty, comments only, imports, top-level await, local helpers named like siblings", async () => {
    await server.deploy("bodies", {
      functions: {
        empty: { code: "" },
        comment: { code: "// TODO" },
        imports: { code: "import { format } from 'util';\nimport URL from 'url';\nreturn format('%s-%s', typeof URL.parse, await Promise.resolve(2));" },
        imports2: { code: "import { format } from 'util';\nreturn format('%d', 3);" },
        processData: { code: "function processData(data) { return data * 2; }\nreturn processData(data);", parameters: { data: { type: "number" } } },
        big: { code: `const s = ${JSON.stringify("x".repeat(5000))};\nreturn s.length;` },
      },
    });
    expect((await server.run("bodies", "empty")).body.result).toBeNull();
    expect((await server.run("bodies", "comment")).body.result).toBeNull();
    expect((await server.run("bodies", "imports")).body.result).toBe("function-2");
    expect((await server.run("bodies", "imports2")).body.result).toBe("3");
    expect((await server.run("bodies", "processData", { data: 21 })).body.result).toBe(42);
    expect((await server.run("bodies", "big")).body.result).toBe(5000);
  });

  it("offers the extra globals", async () => {
    await server.deploy("globals", { functions: { g: { code: "return [typeof fetch, typeof URL, typeof URLSearchParams, typeof TextEncoder, typeof TextDecoder, typeof AbortController, typeof setTimeout, typeof clearTimeout, typeof Buffer, typeof structuredClone];" } } });
    expect((await server.run("globals", "g")).body.result).toEqual(Array(10).fill("function"));
  });

  it("returns console output as logs", async () => {
    await server.deploy("logs", { functions: { f: { code: "console.log('a', 1); console.warn({ b: 2 }); return null;" } } });
    const reply = await server.run("logs", "f");
    expect(reply.body.logs.map((l: { level: string; message: string }) => [l.level, l.message])).toEqual([["log", "a 1"], ["warn", "{ b: 2 }"]]);
  });

  it("keeps code generation and wasm off, and builtins to the allowed list", async () => {
    await server.deploy("locked", {
      functions: {
        ev: { code: "return eval('1 + 1');" },
        fn: { code: "return new Function('return 1')();" },
        wasm: { code: "return await WebAssembly.compile(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));" },
        fs: { code: "return require('fs').readdirSync('/');" },
        cp: { code: "return require('child_process').execSync('id').toString();" },
        crypto: { code: "return require('crypto').createHash('sha256').update('x').digest('hex').length;" },
      },
    });
    for (const fn of ["ev", "fn", "wasm", "fs", "cp"]) {
      const reply = await server.run("locked", fn);
      expect(reply.status, fn).toBe(500);
      expect(reply.body.error, fn).toBe("FunctionError");
    }
    expect((await server.run("locked", "crypto")).body.result).toBe(64);
  });

  it("caps Buffer allocations", async () => {
    await server.deploy("buffers", { functions: { f: { code: "return Buffer.alloc(512 * 1024 * 1024).length;" } } });
    const reply = await server.run("buffers", "f");
    expect(reply.status).toBe(500);
    expect(reply.body.message).toMatch(/bufferAllocLimit|exceeds/);
  });
});

describe("error table", () => {
  it("400 for malformed JSON", async () => {
    const reply = await server.request("POST", "/v2/functions/bad", "{ not json");
    expect(reply.status).toBe(400);
    expect(reply.body).toMatchObject({ error: "RequestValidationError" });
    expect(reply.body.message).toMatch(/not valid JSON/);
  });

  it("400 for invalid names and unknown keys, listing each with its path, and nothing is written", async () => {
    const reply = await server.deploy("rejected", { functions: { "bad-name": { code: "" }, ok: { code: "", colour: "red" } } });
    expect(reply.status).toBe(400);
    expect(reply.body.error).toBe("RequestValidationError");
    expect(reply.body.details.map((d: { path: string }) => d.path)).toEqual(["functions.bad-name", "functions.ok.colour"]);
    expect(existsSync(resolve(server.storageDir, "rejected"))).toBe(false);
  });

  it("400 for code that does not compile, naming the function and line; the previous version keeps running", async () => {
    await server.deploy("compile", hello);
    const reply = await server.deploy("compile", { functions: { hello: { code: "const a = 1;\nreturn a +;" } } });
    expect(reply.status).toBe(400);
    expect(reply.body.details[0].path).toBe("functions.hello.code");
    expect(reply.body.details[0].message).toMatch(/function 'hello', line 2/);
    expect((await server.run("compile", "hello", { name: "still" })).body.result).toBe("Hello still");
  });

  it("400 for workspace ids that could escape the storage root, whatever their spelling", async () => {
    for (const id of ["..", "%2e%2e", "%2E%2e", "a%2Fb", "a%5Cb", "%00", "x".repeat(200), "%ff%fe", ".hidden", "a:b"]) {
      const reply = await server.rawRequest("POST", `/v2/functions/${id}`, JSON.stringify(hello));
      expect(reply.status, id).not.toBe(200);
      expect(reply.status, id).toBeLessThan(500);
      if (reply.status !== 404) expect(reply.body.error, id).toBe("RequestValidationError");
    }
    expect(readdirSync(server.storageDir).every((name) => !name.startsWith("."))).toBe(true);
  });

  it("404 for an unknown workspace or function, and for unknown routes", async () => {
    expect((await server.run("nowhere", "hello", {})).body).toMatchObject({ error: "ObjectNotFoundError" });
    await server.deploy("known", hello);
    const reply = await server.run("known", "nope", {});
    expect(reply.status).toBe(404);
    expect(reply.body).toMatchObject({ error: "ObjectNotFoundError", message: "Function 'nope' not found in workspace 'known'" });
    expect((await server.run("known", "toString", {})).status).toBe(404);
    expect((await server.request("GET", "/v3/other")).status).toBe(404);
  });

  it("413 for a body over REQUEST_MAX_SIZE, by Content-Length", async () => {
    const reply = await server.deploy("large", { functions: { f: { code: `return "${"x".repeat(20_000)}"` } } });
    expect(reply.status).toBe(413);
    expect(reply.body.error).toBe("PayloadTooLargeError");
  });

  it("413 for a chunked body over REQUEST_MAX_SIZE, without reading the rest", async () => {
    const { port } = new URL(server.url);
    const status = await new Promise<number>((resolveStatus, reject) => {
      const req = httpRequest({ port, method: "POST", path: "/v2/functions/chunked", headers: { "content-type": "application/json", "transfer-encoding": "chunked" } }, (res) => {
        res.resume();
        resolveStatus(res.statusCode!);
      });
      // The server answers 413 and closes the connection while we are still writing: a write error
      // after that is expected, so the answer decides.
      req.on("error", (error) => setTimeout(() => reject(error), 2000));
      req.write('{"functions": {"f": {"code": "');
      let sent = 0;
      const pump = () => {
        // Keep sending well past the limit; the server answers 413 and closes without buffering it.
        while (sent < 5_000_000 && req.write("x".repeat(16_384))) sent += 16_384;
        if (sent < 5_000_000) req.once("drain", pump);
        else req.end('"}}}');
      };
      pump();
    });
    expect(status).toBe(413);
  });

  it("415 for a body that is not JSON", async () => {
    const reply = await server.request("POST", "/v2/functions/form", "a=1", { "content-type": "application/x-www-form-urlencoded" });
    expect(reply.status).toBe(415);
  });

  it("500 FunctionError with the user's own stack, logs and duration", async () => {
    await server.deploy("throws", { functions: { f: { code: "console.log('before');\nconst x = null;\nreturn x.y;" } } });
    const reply = await server.run("throws", "f");
    expect(reply.status).toBe(500);
    expect(reply.body.error).toBe("FunctionError");
    expect(reply.body.details).toMatchObject({ name: "TypeError" });
    expect(reply.body.details.stack).toContain("at f (f:3:");
    expect(reply.body.details.stack).not.toMatch(/node_modules|\/work\/|node:internal/);
    expect(reply.body.logs.map((l: { message: string }) => l.message)).toEqual(["before"]);
    expect(typeof reply.body.duration).toBe("number");
  });

  it("504 TimeoutError for a sync loop and for a promise that never settles; the next run works", async () => {
    await server.deploy("slow", { functions: { spin: { code: "while (true) {}" }, hang: { code: "await new Promise(() => {});" }, ok: { code: "return 'ok'" } } });
    for (const fn of ["spin", "hang"]) {
      const reply = await server.run("slow", fn);
      expect(reply.status, fn).toBe(504);
      expect(reply.body.error).toBe("TimeoutError");
      expect((await server.run("slow", "ok")).body.result).toBe("ok");
    }
  });

  it("500 MemoryLimitError when a worker runs out of heap; the next run works", async () => {
    await server.deploy("bomb", { functions: { f: { code: "const a = []; while (true) a.push(new Array(1e6).fill(Math.random()));" }, ok: { code: "return 'ok'" } } });
    const reply = await server.run("bomb", "f");
    expect(reply.status).toBe(500);
    expect(reply.body.error).toBe("MemoryLimitError");
    expect((await server.run("bomb", "ok")).body.result).toBe("ok");
  });
});

describe("isolation", () => {
  it("a timing-out workspace does not slow down another one", async () => {
    await server.deploy("victim", hello);
    await server.deploy("attacker", { functions: { spin: { code: "while (true) {}" } } });
    await server.run("victim", "hello", { name: "warm" });
    const attack = Promise.all([server.run("attacker", "spin"), server.run("attacker", "spin")]);
    const latencies: number[] = [];
    const deadline = Date.now() + 900;
    while (Date.now() < deadline) {
      const started = performance.now();
      const reply = await server.run("victim", "hello", { name: "x" });
      latencies.push(performance.now() - started);
      expect(reply.status).toBe(200);
    }
    expect((await attack).map((r) => r.status)).toEqual([504, 504]);
    latencies.sort((a, b) => a - b);
    expect(latencies.length).toBeGreaterThan(20);
    expect(latencies[Math.floor(latencies.length / 2)]).toBeLessThan(50);
  });

  it("a timer that spins after its run returned is stopped, and the workspace runs again", async () => {
    await server.deploy("late", { functions: { f: { code: "setTimeout(() => { while (true) {} }, 10);\nreturn 'returned';" }, ok: { code: "return 'ok'" } } });
    expect((await server.run("late", "f")).body.result).toBe("returned");
    await new Promise((r) => setTimeout(r, 2500));
    expect((await server.run("late", "ok")).body.result).toBe("ok");
  });

  it("an error thrown by a late timer fails nobody else, and the workspace runs again", async () => {
    await server.deploy("thrower", { functions: { f: { code: "setTimeout(() => { throw new Error('late'); }, 5);\nreturn 1;" }, ok: { code: "return 'ok'" } } });
    expect((await server.run("thrower", "f")).body.result).toBe(1);
    await new Promise((r) => setTimeout(r, 100));
    expect((await server.run("thrower", "ok")).body.result).toBe("ok");
    expect((await server.run("victim", "hello", { name: "y" })).body.result).toBe("Hello y");
  });

  it("runs of one workspace can be in flight at once", async () => {
    await server.deploy("parallel", { functions: { f: { code: "await new Promise((r) => setTimeout(r, 200)); return n;", parameters: { n: {} } } } });
    const started = performance.now();
    const replies = await Promise.all(Array.from({ length: 8 }, (_, n) => server.run("parallel", "f", { n })));
    expect(replies.map((r) => r.body.result)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(performance.now() - started).toBeLessThan(900);
  });

  it("function code cannot read the service's environment", async () => {
    await server.deploy("env", { functions: { f: { code: "return [typeof process === 'undefined' ? null : Object.keys(process.env || {}).length];" } } });
    expect((await server.run("env", "f")).body.result).toEqual([0]);
  });
});

describe("workers", () => {
  it("keeps at most FUNCTIONS_WORKERS_MAX_LRU workers: the least recently used is ended, and re-created on its next run", async () => {
    // One sandbox process, so its LRU holds the whole limit.
    const small = await startServer({ FUNCTIONS_WORKERS_MAX_LRU: "2", FUNCTIONS_SANDBOX_PROCESSES: "1" });
    try {
      const counter = { functions: { inc: { code: "cache.n = (cache.n || 0) + 1; return cache.n;" } } };
      for (const ws of ["w1", "w2", "w3"]) await small.deploy(ws, counter);
      expect((await small.run("w1", "inc")).body.result).toBe(1);
      expect((await small.run("w1", "inc")).body.result).toBe(2);
      expect((await small.run("w2", "inc")).body.result).toBe(1);
      expect((await small.run("w3", "inc")).body.result).toBe(1); // evicts w1, the least recently used
      expect((await small.run("w2", "inc")).body.result).toBe(2); // still warm
      expect((await small.run("w1", "inc")).body.result).toBe(1); // a fresh worker: its cache started over
    } finally {
      await small.stop();
    }
  });

  it("ends workers idle for INACTIVE_NODE_WORKER_DELETION_TIMEOUT seconds", async () => {
    const idle = await startServer({ INACTIVE_NODE_WORKER_DELETION_TIMEOUT: "1" });
    try {
      await idle.deploy("idle", { functions: { inc: { code: "cache.n = (cache.n || 0) + 1; return cache.n;" } } });
      expect((await idle.run("idle", "inc")).body.result).toBe(1);
      expect((await idle.run("idle", "inc")).body.result).toBe(2);
      await new Promise((r) => setTimeout(r, 2600));
      expect((await idle.run("idle", "inc")).body.result).toBe(1);
    } finally {
      await idle.stop();
    }
  });
});

describe("configuration", () => {
  it("a bad value stops start-up with a message naming the variable", () => {
    const result = spawnSync(process.execPath, [inject("serverEntry")], { env: { PATH: process.env.PATH, FUNCTIONS_RUN_TIMEOUT: "abc", PORT: "0" }, encoding: "utf8", timeout: 15_000 });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("FUNCTIONS_RUN_TIMEOUT");
  });

  it("UPDATE_SCRIPTS_ON_STARTUP regenerates scripts from workspace.yaml", async () => {
    const dir = resolve(server.storageDir, "..", `update-${process.pid}`);
    mkdirSync(resolve(dir, "migrated"), { recursive: true });
    writeFileSync(resolve(dir, "migrated", "workspace.yaml"), "functions:\n  f:\n    code: return 'migrated'\n");
    writeFileSync(resolve(dir, "migrated", "version"), "old");
    writeFileSync(resolve(dir, "migrated", "workspace.js"), "stale");
    const updated = await startServer({ FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: dir, UPDATE_SCRIPTS_ON_STARTUP: "yes" });
    try {
      expect(updated.output()).toMatch(/Scripts updated on start-up.*"updated":1/);
      expect((await updated.run("migrated", "f")).body.result).toBe("migrated");
    } finally {
      await updated.stop();
    }
  });

  it("a storage failure answers 500 InternalError without internals", async () => {
    const file = resolve(server.storageDir, "..", `not-a-dir-${process.pid}`);
    writeFileSync(file, "");
    const broken = await startServer({ FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: `${file}/sub` });
    try {
      const reply = await broken.deploy("ws", hello);
      expect(reply.status).toBe(500);
      expect(reply.body).toEqual({ error: "InternalError", message: "The service failed to handle the request" });
    } finally {
      await broken.stop();
    }
  });
});
