/**
 * npm dependencies over real HTTP against the built server, with the real npm client installing
 * from a fixture registry on loopback (test/fixtures/registry): installs, their reuse, pins,
 * failures, the package policy, shared packages, runs that arrive during an install, and restarts.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { copyFixturePackage, startFixtureRegistry, type FixtureRegistry } from "../fixtures/registry/index.mjs";
import { startServer, type RunningServer } from "./harness.ts";

let registry: FixtureRegistry;
let tmp: string;
let server: RunningServer;

/** Everything but the registry and the run timeout, so a restarted server finds the same disk. */
const serverEnv = () => ({
  NPM_CONFIG_REGISTRY: registry.url,
  NODE_MODULES_DIRECTORY: join(tmp, "node_modules"),
  FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: join(tmp, "functions"),
  SHARED_NODE_MODULES_DIRECTORY: join(tmp, "shared"),
  NODEJS_PACKAGES_WHITELIST_IMPORT: "fx-greet, fx-util, fx-slow, fx-esm, @fx/scoped, fx-missing, fx-shared, fx-banned",
  NODEJS_PACKAGES_BLACKLIST_IMPORT: "fx-banned, fx-shared-banned",
});

beforeAll(async () => {
  registry = await startFixtureRegistry();
  mkdirSync(resolve(".tmp"), { recursive: true });
  tmp = mkdtempSync(resolve(".tmp/e2e-dependencies-"));
  copyFixturePackage("fx-shared", "1.0.0", join(tmp, "shared", "node_modules"));
  server = await startServer(serverEnv());
});
afterAll(async () => {
  await server?.stop();
  await registry?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const tarballRequests = (name: string) => registry.requests.filter((path) => path.startsWith(`/${name}/-/`)).length;
const installs = () => readdirSync(join(tmp, "node_modules")).filter((name) => !name.startsWith("."));

async function waitForStatus(target: RunningServer, workspace: string, status: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 300; i++) {
    const { body } = await target.request("GET", `/v2/functions/${workspace}`);
    if (body.dependencyStatus.status === status) return body.dependencyStatus;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${workspace} never reached ${status}`);
}

describe("installing a workspace's packages", () => {
  it("a deploy answers at once; the first run waits for the install; GET tells the status", async () => {
    const deploy = await server.deploy("greet", { functions: { hello: { code: "const greet = require('fx-greet');\nreturn greet(name);", parameters: { name: {} } } } });
    expect(deploy.status).toBe(200);
    const read = await server.request("GET", "/v2/functions/greet");
    expect(read.body.dependencyStatus).toMatchObject({ status: expect.stringMatching(/^(installing|ready)$/), packages: { "fx-greet": "latest" } });
    expect(read.body.functions.hello.code).toContain("fx-greet");
    expect(read.body.version).toEqual(expect.any(String));
    const run = await server.run("greet", "hello", { name: "you" });
    expect(run.status).toBe(200);
    expect(run.body.result).toBe("hi you");
    expect((await server.request("GET", "/v2/functions/greet")).body.dependencyStatus).toEqual({ status: "ready", packages: { "fx-greet": "latest" } });
    expect(server.output()).toContain("Installing 1 modules...");
  });

  it("workspaces needing the same packages share one install", async () => {
    const before = installs().length;
    await server.deploy("util-a", { functions: { a: { code: "return require('fx-util').shout('a');" } } });
    await server.deploy("util-b", { functions: { b: { code: "const { shout } = require('fx-util');\nreturn shout('b');" } } });
    expect((await server.run("util-a", "a")).body.result).toBe("A!");
    expect((await server.run("util-b", "b")).body.result).toBe("B!");
    expect(installs().length - before).toBe(1);
    expect(tarballRequests("fx-util")).toBe(1);
  });

  it("pinned versions: two workspaces, two versions of one package", async () => {
    const code = { functions: { v: { code: "return require('fx-greet').version;" } } };
    await server.deploy("pin-1", { ...code, dependencies: { "fx-greet": "1.0.0" } });
    await server.deploy("pin-2", { ...code, dependencies: { "fx-greet": "^2.0.0" } });
    expect((await server.run("pin-1", "v")).body.result).toBe("1.0.0");
    expect((await server.run("pin-2", "v")).body.result).toBe("2.0.0");
    expect((await server.request("GET", "/v2/functions/pin-1")).body.dependencyStatus.packages).toEqual({ "fx-greet": "1.0.0" });
  });

  it("import syntax in the code installs and loads packages, scoped ones and subpaths included", async () => {
    await server.deploy("esm-syntax", {
      functions: { both: { code: "import greet from 'fx-greet';\nimport { name } from '@fx/scoped/sub';\nreturn greet(name);" } },
    });
    expect((await server.run("esm-syntax", "both")).body.result).toBe("hi scoped/sub");
  });

  it("an ES-module-only package fails with a clear error naming it", async () => {
    await server.deploy("pure-esm", { functions: { f: { code: "import esm from 'fx-esm';\nreturn esm();" } } });
    const run = await server.run("pure-esm", "f");
    expect(run.status).toBe(500);
    expect(run.body.message).toContain("Package 'fx-esm' cannot be loaded in the sandbox");
  });

  it("a package npm cannot install: runs answer 424 with npm's reason, GET shows it", async () => {
    await server.deploy("missing", { functions: { f: { code: "return require('fx-missing');" } } });
    const run = await server.run("missing", "f");
    expect(run.status).toBe(424);
    expect(run.body.error).toBe("DependencyError");
    expect(run.body.message).toMatch(/^Failed to install dependencies: .*404.*fx-missing/);
    expect((await server.request("GET", "/v2/functions/missing")).body.dependencyStatus).toMatchObject({ status: "failed", error: expect.stringContaining("404") });
    expect(server.output()).toContain("Failed npm install");
  });

  it("a run arriving during an install waits for it, within its timeout", async () => {
    registry.delay("fx-slow", 1500);
    try {
      await server.deploy("slow", { functions: { f: { code: "return require('fx-slow');" } } });
      const run = await server.run("slow", "f");
      expect(run.status).toBe(200);
      expect(run.body.result).toBe("slow but here");
    } finally {
      registry.delay("fx-slow", 0);
    }
  });

  it("past its timeout, a run during an install answers 503; a later run gets the package", async () => {
    const short = await startServer({ ...serverEnv(), NODE_MODULES_DIRECTORY: join(tmp, "node_modules-short"), FUNCTIONS_RUN_TIMEOUT: "3000" });
    registry.delay("fx-slow", 6000);
    try {
      await short.deploy("slow-short", { functions: { f: { code: "return require('fx-slow');" } } });
      const run = await short.run("slow-short", "f");
      expect(run.status).toBe(503);
      expect(run.body).toMatchObject({ error: "DependencyError", message: "Dependencies are still being installed" });
      expect(short.output()).toContain("Dependencies are still being installed");
      await waitForStatus(short, "slow-short", "ready");
      const later = await short.run("slow-short", "f");
      expect(later.body, JSON.stringify(later.body)).toMatchObject({ result: "slow but here" });
    } finally {
      registry.delay("fx-slow", 0);
      await short.stop();
    }
  });
});

describe("the package policy and shared packages", () => {
  it("a blacklisted package is refused at deploy, naming the package and the function", async () => {
    const reply = await server.deploy("banned", { functions: { uses: { code: "const b = require('fx-banned');" } } });
    expect(reply.status).toBe(400);
    expect(reply.body.error).toBe("RequestValidationError");
    expect(reply.body.details).toEqual([{ path: "functions.uses.code", message: "package 'fx-banned' is blocked on this service (function 'uses')" }]);
  });

  it("with a whitelist, any other package is refused at deploy, pins included", async () => {
    const reply = await server.deploy("other", { functions: { f: { code: "import x from 'fx-other';" } } });
    expect(reply.status).toBe(400);
    expect(reply.body.message).toContain("package 'fx-other' is not among the packages this service allows (function 'f')");
    expect((await server.deploy("other", { functions: { f: { code: "" } }, dependencies: { "fx-other": "1" } })).status).toBe(400);
  });

  it("shared packages need no install and no registry", async () => {
    const requests = registry.requests.length;
    await server.deploy("shared", { functions: { f: { code: "import { twice } from 'fx-shared';\nreturn twice('ab');" } } });
    expect((await server.run("shared", "f")).body.result).toBe("abab");
    expect((await server.request("GET", "/v2/functions/shared")).body.dependencyStatus).toEqual({ status: "none", packages: {} });
    expect(registry.requests.length).toBe(requests);
  });

  it("disableNpmRegistry: nothing is installed, shared packages still load, others fail naming the module", async () => {
    const requests = registry.requests.length;
    await server.deploy("offline", {
      functions: { greet: { code: "return require('fx-greet')('x');" }, shared: { code: "return require('fx-shared').twice('x');" } },
      disableNpmRegistry: true,
    });
    const run = await server.run("offline", "greet");
    expect(run.status).toBe(500);
    expect(run.body.message).toContain("Cannot find module 'fx-greet'");
    expect((await server.run("offline", "shared")).body.result).toBe("xx");
    expect(registry.requests.length).toBe(requests);
  });
});

describe("a restart", () => {
  it("finds the installs on disk and uses them without running npm", async () => {
    await server.stop();
    const requests = registry.requests.length;
    server = await startServer(serverEnv());
    expect((await server.run("greet", "hello", { name: "again" })).body.result).toBe("hi again");
    expect((await server.run("util-b", "b")).body.result).toBe("B!");
    expect((await server.request("GET", "/v2/functions/pin-1")).body.dependencyStatus.status).toBe("ready");
    expect(registry.requests.length).toBe(requests);
    expect(server.output()).not.toContain("Installing");
  });
});
