/**
 * Embedding: the package as an embedder gets it. `npm pack` (its `prepack` runs `npm run build:lib`),
 * the tarball installed into a fresh project outside this repository, then the example
 * (examples/embed-h3/server.mjs) started there and driven over real HTTP. Everything the project
 * touches comes through the package's public exports.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./harness.ts";

const exec = promisify(execFile);
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const repo = resolve(".");

let project: string;
let packedFiles: string[];
let example: ChildProcess;
let url: string;

async function post(path: string, body: unknown) {
  const response = await fetch(url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

/** Runs a script of the embedding project with node; its stdout. */
async function runInProject(file: string, source: string): Promise<string> {
  writeFileSync(join(project, file), source);
  return (await exec(process.execPath, [file], { cwd: project })).stdout;
}

beforeAll(async () => {
  project = mkdtempSync(join(tmpdir(), "fx-embed-"));
  const { stdout } = await exec(npm, ["pack", "--json", "--pack-destination", project], { cwd: repo, maxBuffer: 16 * 1024 * 1024 });
  const [packed] = JSON.parse(stdout);
  packedFiles = packed.files.map((file: { path: string }) => file.path);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "embedding-app", private: true, type: "module" }));
  // From npm's cache when it has everything, from the registry otherwise.
  await exec(npm, ["install", join(project, packed.filename), "--prefer-offline", "--no-audit", "--no-fund"], { cwd: project, maxBuffer: 16 * 1024 * 1024 });

  copyFileSync(resolve("examples/embed-h3/server.mjs"), join(project, "server.mjs"));
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  example = spawn(process.execPath, ["server.mjs"], {
    cwd: project,
    env: { PATH: process.env.PATH ?? "", PORT: String(port), FUNCTIONS_DIR: join(project, "data") },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  example.stderr!.on("data", (chunk) => (output += chunk));
  await new Promise<void>((ready, fail) => {
    example.stdout!.on("data", (chunk) => String(chunk).includes("listening") && ready());
    example.once("exit", (code) => fail(new Error(`the example exited with ${code}:\n${output}`)));
  });
}, 240_000);

afterAll(async () => {
  if (example && example.exitCode === null) {
    const exited = new Promise((done) => example.once("exit", done));
    example.kill("SIGTERM");
    await exited;
  }
  if (project) rmSync(project, { recursive: true, force: true });
});

describe("the packed package", () => {
  it("holds the compiled entry points, their type declarations and the vm2 worker, and nothing else", () => {
    for (const file of [
      "package.json",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/runtime/adapters/vm2/index.js",
      "dist/runtime/adapters/vm2/index.d.ts",
      "dist/runtime/adapters/vm2/worker.mjs",
      "dist/runtime/adapters/vm2/builtins.mjs",
      "dist/runtime/egress.mjs",
      "dist/storage/drivers/fs-atomic.js",
      "dist/storage/drivers/fs-atomic.d.ts",
    ]) {
      expect(packedFiles).toContain(file);
    }
    const unexpected = packedFiles.filter((path) => !/^(dist\/.+\.(js|d\.ts|mjs|d\.mts)|package\.json|README\.md|LICENSE)$/.test(path));
    expect(unexpected).toEqual([]);
  });

  it("exposes its API through `exports` only: the root and the vm2 and fs-atomic subpaths", async () => {
    const out = await runInProject(
      "exports.mjs",
      `const root = await import("functions-service");
       const vm2 = await import("functions-service/vm2");
       const fsAtomic = await import("functions-service/fs-atomic");
       const deep = await import("functions-service/dist/index.js").then(() => "importable", (error) => error.code);
       console.log(JSON.stringify({ root: Object.keys(root), vm2: Object.keys(vm2), fsAtomic: typeof fsAtomic.default, deep }));`,
    );
    const found = JSON.parse(out);
    expect(found.root).toEqual(expect.arrayContaining(["createApiHandler", "createFunctionsService", "createWorkspaceStore", "compileWorkspace", "ServiceError"]));
    expect(found.root).not.toContain("createVm2Adapter");
    expect(found.vm2).toContain("createVm2Adapter");
    expect(found.fsAtomic).toBe("function");
    expect(found.deep).toBe("ERR_PACKAGE_PATH_NOT_EXPORTED");
  });

  it("types an embedder's TypeScript through the declarations", async () => {
    writeFileSync(
      join(project, "check.ts"),
      `import { createFunctionsService, createWorkspaceStore, type RunOutcome, type WorkspaceSpec } from "functions-service";
       import { createVm2Adapter } from "functions-service/vm2";
       import fsAtomic from "functions-service/fs-atomic";
       import { createStorage } from "unstorage";
       const store = createWorkspaceStore<WorkspaceSpec>(createStorage({ driver: fsAtomic({ base: "data" }) }));
       const service = createFunctionsService({ store, node: createVm2Adapter({ maxWorkers: 2 }) });
       export const outcome: Promise<RunOutcome> = service.run("ws", "fn", {});
       // @ts-expect-error list() answers ids, not a number: the declarations are real types, not any
       export const count: number = await service.list();`,
    );
    const compilerOptions = { noEmit: true, strict: true, skipLibCheck: true, target: "es2022", module: "nodenext", types: [] };
    writeFileSync(join(project, "tsconfig.json"), JSON.stringify({ compilerOptions, files: ["check.ts"] }));
    // This repository's TypeScript compiler, run on the embedding project: non-zero exit on any error.
    await exec(process.execPath, [resolve("node_modules/typescript/bin/tsc"), "-p", "."], { cwd: project });
  });
});

describe("the example h3 app embedding the service", () => {
  const hello = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };

  it("serves the whole API under /functions: deploy, run, read back, list", async () => {
    expect(await post("/functions/v2/functions/test", hello)).toEqual({ status: 200, body: hello });
    const run = await post("/functions/v2/functions/test/run/hello", { parameters: { name: "world" } });
    expect(run.status).toBe(200);
    expect(run.body).toMatchObject({ result: "Hello world", logs: [] });
    expect(await (await fetch(`${url}/functions/v2/functions`)).json()).toEqual(["test"]);
    expect((await (await fetch(`${url}/functions/v2/functions/test`)).json()).functions).toEqual(hello.functions);
    expect(await (await fetch(`${url}/functions/sys/healthcheck`)).json()).toMatchObject({ healthy: true });
  });

  it("answers the service's errors under the prefix, and leaves the app's other paths alone", async () => {
    const missing = await post("/functions/v2/functions/nope/run/hello", {});
    expect(missing).toMatchObject({ status: 404, body: { error: "ObjectNotFoundError" } });
    expect((await fetch(`${url}/v2/functions`)).status).toBe(404);
  });

  it("runs code directly through the vm2 adapter, without store or HTTP API", async () => {
    expect(await (await fetch(`${url}/greet?name=you`)).json()).toEqual({ result: "Hello you from the sandbox" });
    expect(await (await fetch(`${url}/greet`)).json()).toEqual({ result: "Hello there from the sandbox" });
  });
});
