/**
 * The `deno-server` build under Deno (the binary of the `deno` npm package), over real HTTP: built
 * as `npm run build:deno` builds it, started with the permissions of its deno.json task. On Deno the
 * service is the Node one with QuickJS in worker threads as its sandbox (vm2's worker fails on
 * Deno's Node compatibility) and no sandbox processes (Deno's child processes lack Node's IPC).
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer, type ServerCommand } from "./harness.ts";
import { hasPython } from "../fixtures/python.ts";


mkdirSync(resolve(".tmp"), { recursive: true });
const buildDir = mkdtempSync(resolve(".tmp/e2e-deno-"));
let deno: ServerCommand;
let server: RunningServer;

beforeAll(async () => {
  await promisify(execFile)(process.execPath, [resolve("node_modules/nitropack/dist/cli/index.mjs"), "build"], {
    env: { ...process.env, FX_BUILD_DIR: buildDir, NITRO_PRESET: "deno-server" },
    maxBuffer: 64 * 1024 * 1024,
  });
  // The deno.json task's own command line, on the real binary (the npm wrapper would not pass signals on).
  const task: string = JSON.parse(readFileSync(join(buildDir, "deno.json"), "utf8")).tasks.start;
  const [command, ...args] = task.split(" ");
  expect(command).toBe("deno");
  const binary: string = createRequire(import.meta.url)(resolve("node_modules/deno/install_api.cjs")).runInstall();
  deno = { file: binary, args: args.map((arg) => (arg.startsWith("./") ? join(buildDir, arg) : arg)) };
  server = await startServer({ FUNCTIONS_RUN_TIMEOUT: "1000", REQUEST_MAX_SIZE: "64kb" }, deno);
}, 120_000);

afterAll(async () => {
  await server?.stop();
  rmSync(buildDir, { recursive: true, force: true });
});

describe("the service under Deno", () => {
  it("answers the health check, naming the QuickJS sandbox", async () => {
    expect(await server.request("GET", "/sys/healthcheck")).toMatchObject({ status: 200, body: { healthy: true, sandbox: "quickjs" } });
  });

  it("deploys to the filesystem storage, runs with parameters, logs, `await funcA()` and `cache`", async () => {
    const spec = {
      functions: {
        double: { code: "return x * 2;", parameters: { x: { type: "number" } } },
        count: { code: "cache.runs = (cache.runs ?? 0) + 1;\nconsole.log('run', cache.runs);\nreturn await double({ x: cache.runs });" },
      },
    };
    expect((await server.deploy("deno", spec)).status).toBe(200);
    expect((await server.request("GET", "/v2/functions/deno")).body).toMatchObject(spec);
    expect((await server.run("deno", "count")).body).toMatchObject({ result: 2, logs: [{ message: "run 1" }] });
    expect((await server.run("deno", "count")).body).toMatchObject({ result: 4, logs: [{ message: "run 2" }] });
  });

  it("answers errors as on Node: 400, 404, FunctionError with the user's line, 413 while reading a chunked body", async () => {
    await server.deploy("deno-errors", { functions: { boom: { code: "const x = 1;\nthrow new Error('bad ' + x);" } } });
    expect(await server.deploy("deno-errors", { functions: { f: { code: "return (" } } })).toMatchObject({ status: 400, body: { error: "RequestValidationError" } });
    expect(await server.run("deno-errors", "nope")).toMatchObject({ status: 404, body: { error: "ObjectNotFoundError" } });
    const thrown = await server.run("deno-errors", "boom");
    expect(thrown).toMatchObject({ status: 500, body: { error: "FunctionError", message: "Error: bad 1" } });
    expect(thrown.body.details.stack).toMatch(/at boom \(boom:2:\d+\)/);
    const body = new TextEncoder().encode(JSON.stringify({ parameters: { text: "x".repeat(100 * 1024) } }));
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(body);
        controller.close();
      },
    });
    const response = await fetch(`${server.url}/v2/functions/deno-errors/run/boom`, { method: "POST", body: stream, headers: { "content-type": "application/json" }, duplex: "half" } as RequestInit);
    expect(response.status).toBe(413);
  });

  it("ends a sync loop and a long native builtin at the run timeout, and runs the workspace again", async () => {
    await server.deploy("deno-limits", { functions: { spin: { code: "while (true) {}" }, join: { code: "return new Array(1e8).join('x').length;" }, ok: { code: "return 'ok';" } } });
    expect(await server.run("deno-limits", "spin")).toMatchObject({ status: 504, body: { error: "TimeoutError" } });
    expect(await server.run("deno-limits", "join")).toMatchObject({ status: 504, body: { error: "TimeoutError" } });
    expect((await server.run("deno-limits", "ok")).body.result).toBe("ok");
  });

  it("runs Python functions on the Python API it starts itself", async (context) => {
    if (!hasPython) context.skip("python3 is not installed");
    await server.deploy("deno-python", { functions: { add: { language: "python", code: "return a + b", parameters: { a: { type: "number" }, b: { type: "number" } } } } });
    expect((await server.run("deno-python", "add", { a: 1, b: 2 })).body).toMatchObject({ result: 3 });
  });

  it("stops at start-up on a bad variable, naming it", async () => {
    await expect(startServer({ FUNCTIONS_SANDBOX: "vm2" }, deno)).rejects.toThrow(/Invalid configuration: FUNCTIONS_SANDBOX must be one of quickjs/);
  });
});
